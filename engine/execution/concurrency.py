"""Flow concurrency limits: the per-flow ledger of slots and its pure decisions.

A limit spans executions, so whether a new execution may run cannot be read from its own
history. The decision is taken on a per-flow stream, the ledger
(``concurrency:<namespace>/<flowId>``), whose events say which executions hold a slot and which
wait, in arrival order; it is appended at the ledger's expected version, so two writers cannot
both take the last slot. The outcome is also recorded in the execution's own stream, as an
input event (`ConcurrencySlotGranted` or `ConcurrencyLimitReached`), so that replaying one
execution needs no other stream.

Everything here is pure: the shell reads the ledger, calls `plan_ledger`, and appends what it
returns in the same transaction as the decisions that caused it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import msgspec

from engine import events as ev

BEHAVIORS = ("QUEUE", "CANCEL", "FAIL")
"""What happens to an execution that arrives while the limit is reached (Kestra's values)."""


class Limit(msgspec.Struct, frozen=True):
    """A flow's `concurrency` property, as the engine reads it."""

    limit: int
    behavior: str = "QUEUE"


def limit_of(raw: Mapping[str, Any] | None) -> Limit | None:
    """The limit a flow's `concurrency` mapping sets (None: no limit). Lenient, for recorded
    flows: a value that is not a positive integer sets no limit (saving such a flow is refused
    by validation)."""
    if not isinstance(raw, Mapping):
        return None
    limit = raw.get("limit")
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        return None
    behavior = str(raw.get("behavior") or "QUEUE").upper()
    return Limit(limit, behavior if behavior in BEHAVIORS else "QUEUE")


def limit_problems(raw: Any) -> list[tuple[str, str]]:
    """What is wrong with a flow's `concurrency` value, as (path, message) pairs."""
    if raw is None:
        return []
    if not isinstance(raw, Mapping):
        return [("concurrency", "`concurrency` must be a mapping with `limit` and `behavior`")]
    found: list[tuple[str, str]] = []
    for key in raw:
        if key not in ("limit", "behavior"):
            found.append(
                (
                    f"concurrency.{key}",
                    f"Unknown concurrency property `{key}`: use `limit` and `behavior`",
                )
            )
    limit = raw.get("limit")
    if limit is None:
        found.append(("concurrency", "`concurrency` needs a `limit`: how many may run at once"))
    elif isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        found.append(
            (
                "concurrency.limit",
                f"`limit` must be a whole number of 1 or more (how many executions of the "
                f"flow may run at once), not {limit!r}",
            )
        )
    behavior = raw.get("behavior")
    if behavior is not None and (not isinstance(behavior, str) or behavior not in BEHAVIORS):
        found.append(
            (
                "concurrency.behavior",
                f"Unknown concurrency behavior {behavior!r}: use one of {', '.join(BEHAVIORS)}",
            )
        )
    return found


def refusal(limit: Limit, namespace: str, flow_id: str) -> str:
    """The reason an execution is cancelled or failed because the limit was reached."""
    return (
        f"Flow {namespace}.{flow_id} allows at most {limit.limit} concurrent "
        f"execution{'s' if limit.limit != 1 else ''} (concurrency.limit) and that many were "
        f"running: with behavior {limit.behavior} a new one is not run"
    )


class Ledger(msgspec.Struct, frozen=True):
    """The fold of a flow's ledger: who holds a slot, who waits (in arrival order)."""

    running: tuple[str, ...] = ()
    queued: tuple[str, ...] = ()
    limits: dict[str, int] = {}
    """The limit each queued execution arrived with (its flow revision's)."""


def evolve_ledger(ledger: Ledger, event: ev.Event) -> Ledger:
    """The ledger after one of its events (total: an event that does not apply changes
    nothing)."""
    if isinstance(event, ev.ConcurrencySlotTaken):
        xid = event.executionId
        if xid in ledger.running:
            return ledger
        limits = {k: v for k, v in ledger.limits.items() if k != xid}
        queued = tuple(q for q in ledger.queued if q != xid)
        return Ledger((*ledger.running, xid), queued, limits)
    if isinstance(event, ev.ConcurrencyQueued):
        xid = event.executionId
        if xid in ledger.queued or xid in ledger.running:
            return ledger
        return Ledger(ledger.running, (*ledger.queued, xid), {**ledger.limits, xid: event.limit})
    if isinstance(event, ev.ConcurrencySlotReleased):
        xid = event.executionId
        limits = {k: v for k, v in ledger.limits.items() if k != xid}
        return Ledger(
            tuple(r for r in ledger.running if r != xid),
            tuple(q for q in ledger.queued if q != xid),
            limits,
        )
    return ledger


def fold_ledger(events: Iterable[ev.Event], ledger: Ledger | None = None) -> Ledger:
    """The ledger after `events`, from `ledger` (default: empty)."""
    state = ledger or Ledger()
    for event in events:
        state = evolve_ledger(state, event)
    return state


class Arrival(msgspec.Struct, frozen=True):
    """An execution of a limited flow was created and asks for a slot."""

    executionId: str
    limit: Limit


class Departure(msgspec.Struct, frozen=True):
    """An execution of a limited flow ended (its slot, or its place in the queue, is freed)."""

    executionId: str
    state: str


class Release(msgspec.Struct, frozen=True):
    """Queued executions are started by hand, whatever the limit (`sys submit-queued`)."""


Change = Arrival | Departure | Release


def plan_ledger(
    ledger: Ledger, namespace: str, flow_id: str, changes: Sequence[Change]
) -> tuple[list[ev.Event], list[ev.Event]]:
    """What the ledger records for `changes` (in order), and the input events for the
    executions concerned: (ledger events, execution events)."""
    out: list[ev.Event] = []
    told: list[ev.Event] = []
    state = ledger

    def record(event: ev.Event) -> None:
        nonlocal state
        out.append(event)
        state = evolve_ledger(state, event)

    def grant(xid: str, forced: bool) -> None:
        record(
            ev.ConcurrencySlotTaken(
                namespace=namespace, flowId=flow_id, executionId=xid, forced=forced
            )
        )
        told.append(ev.ConcurrencySlotGranted(executionId=xid, forced=forced))

    for change in changes:
        if isinstance(change, Arrival):
            xid, limit = change.executionId, change.limit
            if xid in state.running or xid in state.queued:
                continue
            if len(state.running) < limit.limit and not state.queued:
                grant(xid, False)
                continue
            if limit.behavior == "QUEUE":
                record(
                    ev.ConcurrencyQueued(
                        namespace=namespace, flowId=flow_id, executionId=xid, limit=limit.limit
                    )
                )
            else:
                # Recorded in the ledger too, so that a writer racing on the same arrival
                # finds the ledger moved and reads that it was handled.
                record(ev.ConcurrencyRefused(namespace=namespace, flowId=flow_id, executionId=xid))
            told.append(
                ev.ConcurrencyLimitReached(
                    executionId=xid,
                    limit=limit.limit,
                    behavior=limit.behavior,
                    message=refusal(limit, namespace, flow_id)
                    if limit.behavior != "QUEUE"
                    else None,
                )
            )
        elif isinstance(change, Departure):
            xid = change.executionId
            if xid not in state.running and xid not in state.queued:
                continue
            record(
                ev.ConcurrencySlotReleased(
                    namespace=namespace, flowId=flow_id, executionId=xid, state=change.state
                )
            )
            # Freed slots go to the oldest waiting executions, each within the limit it
            # arrived with.
            while state.queued and len(state.running) < state.limits.get(state.queued[0], 1):
                grant(state.queued[0], False)
        else:
            for xid in state.queued:
                grant(xid, True)
    return out, told
