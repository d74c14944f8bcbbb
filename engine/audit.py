"""The audit trail: who did what to which resource, read from the commands' events.

Every command's events carry in their `meta` the actor that made it (`user:alice`,
`token:ci (abc123)`, `anonymous`, or a component such as `scheduler`); appends made while an
API request is handled also carry the client's address and the reason it gave, from
`request_meta` (the API sets it before each request; `EventStore.append_many` merges it in).

`entry(event)` says what one recorded event means to the audit trail (resource kind and id,
namespace, action) or None when the event is no command: the engine's own reactions (the
executor's decisions, workers' attempts, timers) are facts of an execution's life, found in
its timeline, not actions of anyone. It is pure, so the audit read model
(projections/audit.py) gives the same rows on every rebuild.
"""

from __future__ import annotations

import contextvars
import re
from collections.abc import Mapping
from typing import Any

import msgspec

from engine import events as ev

request_meta: contextvars.ContextVar[dict[str, Any]] = contextvars.ContextVar(
    "tiercel_request_meta"
)
"""What the current API request adds to the `meta` of every event appended while it is
handled: `clientAddress`, and `reason` when the caller gave one. Never mutated: set a new dict.
Read it with `current()` (unset outside a request)."""

_NONE: dict[str, Any] = {}


def current() -> dict[str, Any]:
    """What the current API request adds to events' meta (empty outside a request)."""
    return request_meta.get(_NONE)


MAX_REASON = 1000
"""The longest reason a command may carry, in characters."""

ENGINE_ACTORS = ("executor", "worker:", "watchdog", "timers")
"""Actors of the engine's reactions (and the prefixes of those with a suffix: `executor:subflow`,
`worker:<id>`): their events are decisions of a running execution, not commands, unless their
type is in `ALWAYS`."""

ACTIONS: dict[str, str] = {
    "FlowCreated": "create",
    "FlowUpdated": "update",
    "FlowDeleted": "delete",
    "ExecutionCreated": "create",
    "ExecutionKillRequested": "kill",
    "ExecutionResumeRequested": "resume",
    "ExecutionLabelsChanged": "labels",
    "ExecutionPurged": "purge",
    "TaskRunRestarted": "restart",
    "ExecutionRetried": "retry",
    "LogsPurged": "purge_logs",
    "KVSet": "set",
    "KVDeleted": "delete",
    "SecretSet": "set",
    "SecretDeleted": "delete",
    "BackfillStarted": "backfill_start",
    "BackfillPaused": "backfill_pause",
    "BackfillResumed": "backfill_resume",
    "BackfillEnded": "backfill_end",
    "UserCreated": "create",
    "UserUpdated": "update",
    "UserRevoked": "revoke",
    "TokenCreated": "create",
    "TokenRevoked": "revoke",
    "LoginSucceeded": "login",
    "LoginRefused": "login_refused",
    "ExecutionReplayed": "replay",
    "ExecutionRestarted": "restart",
    "ExecutionPauseRequested": "pause",
    "TaskRunStateForced": "change_task_run_state",
    "DashboardCreated": "create",
    "DashboardUpdated": "update",
    "DashboardDeleted": "delete",
    "BulkJobSubmitted": "submit",
    "BulkJobPaused": "pause",
    "BulkJobResumed": "resume",
    "BulkJobCancelled": "cancel",
    "BulkJobEnded": "end",
}
"""The action of the known command events; any other event a person's command records is
named by its type in snake case (`ExecutionReplayed` -> `execution_replayed`)."""

ALWAYS = frozenset({"ExecutionCreated", "FlowCreated", "FlowUpdated", "FlowDeleted"})
"""Events audited whoever recorded them: an execution a Subflow task started is created by
the executor, and that is worth finding too."""

NEVER = frozenset(
    {
        "AttemptScheduled",
        "AttemptClaimed",
        "AttemptLogged",
        "AttemptSucceeded",
        "AttemptFailed",
        "AttemptKilled",
        "AttemptAbandoned",
        "TimerScheduled",
        "TimerFired",
        "TaskRunCreated",
        "ExecutionStateChanged",
        "TaskRunStateChanged",
        "SubflowExecutionRequested",
        "SubflowExecutionEnded",
        "ConcurrencySlotGranted",
        "ConcurrencyLimitReached",
        "ConcurrencySlotTaken",
        "ConcurrencyQueued",
        "ConcurrencyRefused",
        "ConcurrencySlotReleased",
        "TriggerFired",
        "TriggerPolled",
        "TriggerSkipped",
        "TriggerConditionMet",
        "WorkerHeartbeat",
        "WorkerStopped",
        "WorkerLost",
        "BulkItemsSelected",
        "BulkItemsDone",
    }
)
"""Event types that are never a command (the engine's bookkeeping, by far the most events):
the audit read model does not even read them. State moves are the executor's decisions; a
person's change of state is recorded as its own event (kill requested, restarted, forced). A trigger's tick is audited as the execution it
created (`ExecutionCreated` by `scheduler`); a bulk job's progress as the job's submission and
end, and each item as the command the job made for it."""

KINDS = {"exec": "execution", "login": "user"}
"""Resource kinds by stream prefix, where the kind is not the prefix itself."""

_HIDDEN = frozenset(
    {
        "source",
        "flow",
        "inputs",
        "outputs",
        "passwordHash",
        "secretHash",
        "value",
        "lines",
        "context",
        "task",
        "metrics",
    }
)
"""Fields kept out of an audit entry's details: large (a flow's source, inputs) or sensitive
(hashes, values); the event itself keeps them."""
MAX_DETAIL = 500
"""Characters of one detail value kept (longer ones are cut, ending in `…`)."""


class Entry(msgspec.Struct, frozen=True):
    """What one event means to the audit trail."""

    kind: str
    """Resource kind: flow, execution, trigger, user, token, secret, kv, dashboard, bulk, ..."""
    resource_id: str
    """The resource's id within its namespace (a flow's id, an execution's id, a KV key)."""
    namespace: str | None
    action: str
    actor: str
    client_address: str | None
    reason: str | None
    details: dict[str, Any]


def audited_types(all_types: list[str]) -> tuple[str, ...]:
    """The event types the audit read model reads: every type that may be a command."""
    return tuple(t for t in all_types if t not in NEVER)


def is_engine_actor(actor: str) -> bool:
    """Whether `actor` names one of the engine's reacting components."""
    return any(
        actor == a or actor.startswith(a if a.endswith(":") else a + ":") for a in ENGINE_ACTORS
    )


def entry(
    stream_id: str,
    type_name: str,
    event: ev.Event,
    meta: Mapping[str, Any],
    namespace_hint: str | None = None,
) -> Entry | None:
    """The audit entry of one recorded event, None when it is no command (see the module's
    description). `namespace_hint` is the namespace of the stream when the event does not
    name it (the execution of a kill request)."""
    actor = meta.get("actor")
    if not isinstance(actor, str) or not actor or type_name in NEVER:
        return None
    if type_name not in ALWAYS and is_engine_actor(actor):
        return None
    prefix, _, rest = stream_id.partition(":")
    kind = KINDS.get(prefix, prefix)
    namespace = getattr(event, "namespace", None) or namespace_hint
    resource_id = rest
    if kind == "execution":
        resource_id = rest.split("/", 1)[0]
    elif namespace and rest.startswith(namespace + "/"):
        resource_id = rest[len(namespace) + 1 :]
    if kind == "user" and prefix == "login":
        principal = getattr(event, "principal", rest)
        kind = "token" if principal.startswith("token:") else "user"
        resource_id = principal.split(":", 1)[-1]
    action = ACTIONS.get(type_name) or _snake(type_name)
    if type_name == "TriggerToggled":
        action = "enable" if getattr(event, "enabled", False) else "disable"
    reason = meta.get("reason")
    address = meta.get("clientAddress")
    return Entry(
        kind=kind,
        resource_id=resource_id,
        namespace=namespace if isinstance(namespace, str) else None,
        action=action,
        actor=actor,
        client_address=address if isinstance(address, str) else None,
        reason=reason if isinstance(reason, str) else getattr(event, "reason", None) or None,
        details=details(event),
    )


def details(event: ev.Event) -> dict[str, Any]:
    """The small facts of an event worth showing beside its audit entry."""
    data = msgspec.to_builtins(event)
    out: dict[str, Any] = {}
    if not isinstance(data, dict):
        return out
    for key, value in data.items():
        if key == "type" or key in _HIDDEN or key.endswith("Uri"):
            continue
        if isinstance(value, str) and len(value) > MAX_DETAIL:
            value = value[:MAX_DETAIL] + "…"
        elif isinstance(value, (dict, list)) and len(msgspec.json.encode(value)) > MAX_DETAIL:
            value = "…"
        out[key] = value
    return out


_CAPITAL = re.compile(r"(?<!^)(?=[A-Z])")


def _snake(name: str) -> str:
    return _CAPITAL.sub("_", name).lower()


def merged(meta: dict[str, Any]) -> dict[str, Any]:
    """`meta` with what the current request adds (what `meta` says itself wins, unless it
    says None)."""
    extra = current()
    if not extra:
        return meta
    return {**extra, **{k: v for k, v in meta.items() if v is not None or k not in extra}}
