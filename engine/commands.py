"""What the API and the CLI ask of the engine: deploy flows, start and inspect executions.

Writes are events; reads of one flow or one execution fold its stream, so they are always
current and can be answered as of any past position.
"""

from __future__ import annotations

import datetime as dt
import functools
import logging
import secrets
import weakref
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import msgspec
import trio

from engine import events as ev
from engine.batcher import CommitGroup
from engine.db import Notifier
from engine.errors import (
    Conflict,
    FlowValidationError,
    InvalidRequest,
    NotFound,
    Problem,
    WrongExpectedVersion,
)
from engine.execution import (
    Execution,
    as_of,
    attempt_definition,
    flow_of,
    iso,
    replay,
    short_id,
)
from engine.execution.actions import (
    FORCEABLE_STATES,
    force_plan,
    labels_with,
    replayed_runs,
    restart_plan,
)
from engine.execution.concurrency import limit_of
from engine.execution.planner import RULES
from engine.executor_shell import INPUT_TYPES, recorded
from engine.flow import Flow, Input, flow_to_dict, parse_flow
from engine.inputs import resolve_inputs, resolve_inputs_off_loop
from engine.plugin import TERMINAL_STATES
from engine.secrets import (
    destroy_key,
    encrypt_inputs,
    encrypt_secret_inputs,
    execution_key,
    share_key,
    shown,
)
from engine.storage import Storage, execution_prefix
from engine.store import NO_STREAM, Append, EventStore, StoredEvent

log = logging.getLogger(__name__)

_ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


def new_execution_id() -> str:
    """A random 22-character base62 id, as Kestra's."""
    # One draw from the OS for the whole id, not one per character (a burst of submissions
    # spent more time here than in parsing its flow). 192 bits modulo 62**22 (~2**131):
    # the bias is below 2**-60.
    n = secrets.randbits(192)
    out = []
    for _ in range(22):
        n, r = divmod(n, 62)
        out.append(_ALPHABET[r])
    return "".join(out)


class FlowRecord(msgspec.Struct, frozen=True):
    """One revision of a flow as stored."""

    namespace: str
    id: str
    revision: int
    source: str
    deleted: bool = False
    updated: str | None = None


def _revisions(history: list[StoredEvent]) -> list[FlowRecord]:
    out: list[FlowRecord] = []
    for e in history:
        event = e.event
        if isinstance(event, (ev.FlowCreated, ev.FlowUpdated)):
            out.append(
                FlowRecord(
                    event.namespace,
                    event.flowId,
                    event.revision,
                    event.source,
                    False,
                    iso(e.recorded_at),
                )
            )
        elif isinstance(event, ev.FlowDeleted) and out:
            out.append(
                msgspec.structs.replace(
                    out[-1], deleted=True, revision=event.revision, updated=iso(e.recorded_at)
                )
            )
    return out


async def deploy_flow(
    store: EventStore,
    source: str,
    *,
    expect: tuple[str, str] | None = None,
    create_only: bool = False,
    actor: str = "api",
) -> FlowRecord:
    """Validate `source` and record it as the flow's next revision (unchanged source: no-op).

    What the flow uses but Tiercel does not honour yet is logged as a warning, line by line."""
    warnings: list[Problem] = []
    flow = await trio.to_thread.run_sync(  # a large flow parses for a while
        functools.partial(parse_flow, source, warnings=warnings)
    )
    if expect is not None and (flow.namespace, flow.id) != expect:
        raise InvalidRequest(
            f"The flow's namespace and id ({flow.namespace}.{flow.id}) differ from the path "
            f"({expect[0]}.{expect[1]}): they cannot be changed by an update"
        )
    stream = ev.flow_stream(flow.namespace, flow.id)
    history = await store.read_stream(stream)
    revisions = _revisions(history)
    latest = revisions[-1] if revisions else None
    if create_only and latest is not None and not latest.deleted:
        raise Conflict(
            f"Flow {flow.namespace}.{flow.id} already exists: update it with "
            f"PUT /api/v1/flows/{flow.namespace}/{flow.id}"
        )
    if latest is not None and not latest.deleted and latest.source == source:
        return latest
    revision = (latest.revision + 1) if latest else 1
    event_type = ev.FlowUpdated if latest else ev.FlowCreated
    event = event_type(namespace=flow.namespace, flowId=flow.id, revision=revision, source=source)
    for warning in warnings:
        log.warning("Flow %s.%s revision %s: %s", flow.namespace, flow.id, revision, warning)
    written = await store.append(
        stream,
        [event],
        expected_version=history[-1].version if history else NO_STREAM,
        meta={"actor": actor},
    )
    # The revision's date as recorded (Kestra's `updated`), as a read of it will show it.
    row = await store.db.fetchone(
        "SELECT recorded_at FROM events WHERE seq = %s", (written.last_seq,)
    )
    updated = iso(row["recorded_at"]) if row else None
    return FlowRecord(flow.namespace, flow.id, revision, source, False, updated)


async def flow_revisions(store: EventStore, namespace: str, flow_id: str) -> list[FlowRecord]:
    """Every revision of a flow, oldest first; NotFound when it never existed."""
    history = await store.read_stream(ev.flow_stream(namespace, flow_id))
    revisions = _revisions(history)
    if not revisions:
        raise NotFound(f"Flow {namespace}.{flow_id} does not exist")
    _flows(store).learn(namespace, flow_id, history[-1].version, revisions)
    return revisions


class _FlowCache:
    """The flows a store has been asked for, so that a burst of submissions reads and parses
    each flow once.

    A recorded revision never changes, so revisions are kept by (namespace, id, revision) and
    never invalidated. Which revision is the latest is known from the version of the flow's
    stream at the time it was read: a lookup of the latest probes that version (one index
    probe, no event read) and reads the stream again only when it moved, so an update or a
    deletion recorded by any process is seen by the next lookup.
    """

    SIZE = 512
    """Revisions kept (least recently used first out); parsed flows are kept with them."""

    def __init__(self) -> None:
        self.latest: dict[tuple[str, str], tuple[int, FlowRecord]] = {}
        self.revisions: OrderedDict[tuple[str, str, int], FlowRecord] = OrderedDict()
        self.parsed: dict[tuple[str, str, int], tuple[Flow, dict[str, Any]]] = {}

    def learn(self, namespace: str, flow_id: str, version: int, records: list[FlowRecord]) -> None:
        """Keep what a read of the flow's stream, up to `version`, found."""
        if not records:
            return
        self.latest[(namespace, flow_id)] = (version, records[-1])
        if len(self.latest) > self.SIZE:
            del self.latest[next(iter(self.latest))]
        for record in records:
            if not record.deleted:
                self._keep((namespace, flow_id, record.revision), record)

    def revision(self, namespace: str, flow_id: str, revision: int) -> FlowRecord | None:
        """A revision read before, if any."""
        key = (namespace, flow_id, revision)
        record = self.revisions.get(key)
        if record is not None:
            self.revisions.move_to_end(key)
        return record

    def _keep(self, key: tuple[str, str, int], record: FlowRecord) -> None:
        self.revisions[key] = record
        self.revisions.move_to_end(key)
        while len(self.revisions) > self.SIZE:
            old, _ = self.revisions.popitem(last=False)
            self.parsed.pop(old, None)


class _Probe:
    __slots__ = ("stream", "version", "done")

    def __init__(self, stream: str) -> None:
        self.stream = stream
        self.version = NO_STREAM
        self.done = False


class _FlowVersions:
    """The versions of flow streams, for concurrent lookups of the latest revision: the
    lookup that finds no query in flight asks for every stream queued meanwhile, in one
    query. A lookup is only answered by a query begun after it was queued, so a submission
    sees every flow update that committed before it began."""

    def __init__(self, store: EventStore) -> None:
        self.store = store
        self._queue: list[_Probe] = []
        self._lock = trio.Lock()

    async def version(self, stream: str) -> int:
        """The stream's last version, as a query begun after this call saw it."""
        probe = _Probe(stream)
        self._queue.append(probe)
        try:
            while not probe.done:
                async with self._lock:
                    if not probe.done:
                        await self._look()
        except BaseException:
            if probe in self._queue:
                self._queue.remove(probe)
            raise
        return probe.version

    async def _look(self) -> None:
        batch, self._queue = self._queue, []
        try:
            versions = await self.store.stream_versions(p.stream for p in batch)
        except BaseException:
            self._queue[:0] = batch  # each looks again (and hears of the failure) itself
            raise
        for p in batch:
            p.version = versions[p.stream]
            p.done = True


class _Submissions:
    """What the commands of one store share: the flows it was asked for, the lookups of
    their latest versions and the commits that concurrent submissions share."""

    def __init__(self, store: EventStore) -> None:
        self.flows = _FlowCache()
        self.versions = _FlowVersions(store)
        self.commits = CommitGroup(store)


_shared: weakref.WeakKeyDictionary[EventStore, _Submissions] = weakref.WeakKeyDictionary()


def _submissions(store: EventStore) -> _Submissions:
    shared = _shared.get(store)
    if shared is None:
        shared = _shared[store] = _Submissions(store)
    return shared


def _flows(store: EventStore) -> _FlowCache:
    return _submissions(store).flows


async def get_flow(
    store: EventStore, namespace: str, flow_id: str, revision: int | None = None
) -> FlowRecord:
    """The latest (or a given) revision of a flow; NotFound when deleted or unknown.

    A revision read before is answered from memory; the latest costs one index probe of the
    flow's stream version while it has not changed (concurrent lookups share one query)."""
    shared = _submissions(store)
    cache = shared.flows
    if revision is not None:
        record = cache.revision(namespace, flow_id, revision)
        if record is not None:
            return record
    else:
        known = cache.latest.get((namespace, flow_id))
        if known is not None:
            version = await shared.versions.version(ev.flow_stream(namespace, flow_id))
            if version == known[0]:
                if known[1].deleted:
                    raise NotFound(f"Flow {namespace}.{flow_id} was deleted")
                return known[1]
    revisions = await flow_revisions(store, namespace, flow_id)
    if revision is None:
        latest = revisions[-1]
        if latest.deleted:
            raise NotFound(f"Flow {namespace}.{flow_id} was deleted")
        return latest
    for record in revisions:
        if record.revision == revision and not record.deleted:
            return record
    raise NotFound(
        f"Flow {namespace}.{flow_id} has no revision {revision}; it has "
        + ", ".join(str(r.revision) for r in revisions if not r.deleted)
    )


async def flow_to_run(
    store: EventStore, namespace: str, flow_id: str, revision: int | None = None
) -> tuple[FlowRecord, Flow]:
    """The latest (or a given) revision of a flow, parsed (once per revision and store: the
    result is shared, do not change it); NotFound as `get_flow`."""
    record, flow, _ = await _flow_to_run(store, namespace, flow_id, revision)
    return record, flow


async def _flow_to_run(
    store: EventStore, namespace: str, flow_id: str, revision: int | None
) -> tuple[FlowRecord, Flow, dict[str, Any]]:
    record = await get_flow(store, namespace, flow_id, revision)
    cache = _flows(store)
    key = (namespace, flow_id, record.revision)
    parsed = cache.parsed.get(key)
    if parsed is None:
        flow = await trio.to_thread.run_sync(parse_flow, record.source)  # off the event loop
        # What the execution records: the flow with its revision.
        recorded = flow_to_dict(msgspec.structs.replace(flow, revision=record.revision))
        parsed = (flow, recorded)
        if key in cache.revisions:  # kept as long as its revision is
            cache.parsed[key] = parsed
    return record, parsed[0], parsed[1]


async def delete_flow(store: EventStore, namespace: str, flow_id: str, actor: str = "api") -> None:
    """Delete a flow; its revisions and executions stay readable."""
    stream = ev.flow_stream(namespace, flow_id)
    history = await store.read_stream(stream)
    revisions = _revisions(history)
    if not revisions or revisions[-1].deleted:
        raise NotFound(f"Flow {namespace}.{flow_id} does not exist")
    await store.append(
        stream,
        [ev.FlowDeleted(namespace=namespace, flowId=flow_id, revision=revisions[-1].revision + 1)],
        expected_version=history[-1].version,
        meta={"actor": actor},
    )


def _label_list(given: dict[str, str] | list[dict[str, str]] | None) -> list[dict[str, str]]:
    if isinstance(given, list):
        return list(given)
    return [{"key": str(k), "value": str(v)} for k, v in (given or {}).items()]


def merge_labels(
    flow: Flow, given: dict[str, str] | list[dict[str, str]] | None
) -> list[dict[str, str]]:
    """The flow's labels overridden by the given ones, as Kestra's key/value list."""
    merged = dict(flow.labels)
    if isinstance(given, list):
        for item in given:
            merged[str(item["key"])] = str(item["value"])
    elif given:
        merged.update({str(k): str(v) for k, v in given.items()})
    return [{"key": k, "value": v} for k, v in merged.items()]


async def create_execution(
    store: EventStore,
    namespace: str,
    flow_id: str,
    inputs: dict[str, Any] | None = None,
    *,
    labels: dict[str, str] | list[dict[str, str]] | None = None,
    revision: int | None = None,
    trigger: dict[str, Any] | None = None,
    actor: str = "api",
    execution_id: str | None = None,
    command_id: str | None = None,
) -> str:
    """Check the inputs and record a new execution of the flow; return its id (`execution_id`
    when given, e.g. because its input files were stored under it first). The inputs are
    recorded sealed with a key of the execution, made in the append's own round trip (or by
    `encrypt_inputs` when SECRET ones need it first): see `engine.secrets`.

    With a `command_id`, a retried request creates nothing new and returns the id of the
    execution the first one created. `WrongExpectedVersion` when an execution with the given
    `execution_id` exists already.

    The flow is read and parsed once per revision (see `get_flow`), and concurrent calls on
    one store share their commits."""
    record, flow, recorded = await _flow_to_run(store, namespace, flow_id, revision)
    if flow.disabled:
        raise Conflict(f"Flow {namespace}.{flow_id} is disabled: enable it to execute it")
    values = await resolve_inputs_off_loop(flow, inputs or {})
    execution_id = execution_id or new_execution_id()
    values = await encrypt_inputs(store.db, flow, values, execution_id)
    stream = ev.execution_stream(execution_id)
    created = ev.ExecutionCreated(
        executionId=execution_id,
        namespace=namespace,
        flowId=flow_id,
        flowRevision=record.revision,
        flow=recorded,
        inputs=values,
        labels=merge_labels(
            flow,
            [*_label_list(labels), {"key": "system.correlationId", "value": execution_id}],
        ),
        trigger=trigger,
        concurrencyLimited=limit_of(flow.concurrency) is not None,
        rules=RULES,
    )
    result = await _submissions(store).commits.append(
        Append(stream, [created], NO_STREAM, command_id, {"actor": actor})
    )
    if result.status == "conflict":
        raise WrongExpectedVersion(
            f"Execution {execution_id} exists already: a new execution needs a new id"
        )
    return result.stream_id.removeprefix("exec:")


def idempotent_execution_id(namespace: str, flow_id: str, key: str) -> str:
    """The id of the execution that a create request with idempotency key `key` makes: the
    same key gives the same execution, so a retried request finds the first one."""
    return short_id("idempotency-key", namespace, flow_id, key)


async def _command(
    store: EventStore,
    execution_id: str,
    decide_command: Callable[[Execution], list[ev.Event]],
    *,
    actor: str,
    command_id: str | None = None,
    reason: str | None = None,
) -> Execution:
    """Run a user command through the decider at the stream's expected version: load the
    execution, let `decide_command` check and decide, append at the version it was decided
    on (reloading and deciding again when the stream moved meanwhile)."""
    stream = ev.execution_stream(execution_id)
    if command_id is not None and await store.db.fetchone(
        "SELECT 1 AS done FROM events WHERE command_id = %s", (command_id,)
    ):
        # A retried request: it was carried out already, whatever the state is now.
        return state_of(await execution_history(store, execution_id))
    for _ in range(20):
        history = await execution_history(store, execution_id)
        state = state_of(history)
        if state.purged:
            raise NotFound(f"Execution {execution_id} was purged")
        version = max((e.version for e in history if e.stream_id == stream), default=NO_STREAM)
        decided = decide_command(state)
        try:
            await store.append(
                stream,
                decided,
                expected_version=version,
                command_id=command_id,
                meta=_meta(actor, reason),
            )
        except WrongExpectedVersion:
            continue
        return state
    raise Conflict(f"Execution {execution_id} is changing too fast; try again")


def _kill(state: Execution) -> list[ev.Event]:
    if state.terminal:
        raise Conflict(f"Execution {state.id} already ended in {state.state}")
    return [ev.ExecutionKillRequested(executionId=state.id)]


async def kill_execution(
    store: EventStore, execution_id: str, actor: str = "api", command_id: str | None = None
) -> None:
    """Ask the executor to kill a running execution (its running attempts stop, and so do
    its Subflow executions)."""
    await _command(store, execution_id, _kill, actor=actor, command_id=command_id)


# --- actions on one execution: replay, restart, pause, labels, a task run's state ------------


async def replay_execution(
    store: EventStore,
    execution_id: str,
    *,
    task_run_id: str | None = None,
    revision: int | None = None,
    actor: str,
    reason: str | None = None,
    command_id: str | None = None,
) -> str:
    """Start a new execution from an ended one's history: the task runs before `task_run_id`
    are kept with their outputs, that one and everything after it run again (from the start
    when no task run is given), on the flow's `revision` when given (else the revision the
    execution ran). Returns the new execution's id; the origin lists it among its replays,
    recorded in the same commit. A retried `command_id` answers the first replay's id."""
    stream = ev.execution_stream(execution_id)
    new_id = short_id("replay", execution_id, command_id) if command_id else new_execution_id()
    done = f"replay:{new_id}"
    if await store.db.fetchone("SELECT 1 AS done FROM events WHERE command_id = %s", (done,)):
        return new_id  # a retried request: it was carried out already
    for _ in range(20):
        history = await execution_history(store, execution_id)
        state = state_of(history)
        if state.purged:
            raise NotFound(f"Execution {execution_id} was purged")
        if not state.terminal:
            raise Conflict(
                f"Execution {execution_id} is {state.state}: only an ended execution can be "
                "replayed; kill it or let it end first"
            )
        if task_run_id is not None and task_run_id not in state.taskruns:
            raise NotFound(
                f"Execution {execution_id} has no task run {task_run_id}: its task runs are in "
                f"GET /api/v1/executions/{execution_id} (taskRunList)"
            )
        if revision is None:
            flow_dict, flow_revision = state.flow, state.flowRevision
            limited = state.limited
        else:
            record, flow, flow_dict = await _flow_to_run(
                store, state.namespace, state.flowId, revision
            )
            flow_revision, limited = record.revision, limit_of(flow.concurrency) is not None
        kept = replayed_runs(state, task_run_id, new_id)
        created = ev.ExecutionCreated(
            executionId=new_id,
            namespace=state.namespace,
            flowId=state.flowId,
            flowRevision=flow_revision,
            flow=flow_dict,
            inputs=state.inputs,
            labels=labels_with(state.labels, "system.replay", "true"),
            trigger=state.trigger,
            originalId=state.originalId or state.id,
            concurrencyLimited=limited,
            rules=RULES,
            replayOf=execution_id,
            replayTaskRunId=task_run_id,
            taskRuns=[msgspec.to_builtins(k) for k in kept],
        )
        replayed = ev.ExecutionReplayed(
            executionId=execution_id,
            newExecutionId=new_id,
            taskRunId=task_run_id,
            revision=revision,
            reason=reason,
        )
        # The replay reads the values encrypted for its origin (the same recorded inputs).
        await share_key(store.db, execution_id, new_id)
        version = max((e.version for e in history if e.stream_id == stream), default=NO_STREAM)
        meta = _meta(actor, reason)
        try:
            await store.append_many(
                [
                    Append(stream, [replayed], version, done, meta),
                    Append(ev.execution_stream(new_id), [created], NO_STREAM, f"{done}:new", meta),
                ],
                extra=_written(done),
            )
        except WrongExpectedVersion:
            continue
        return new_id
    raise Conflict(f"Execution {execution_id} is changing too fast; try again")


def _written(command_id: str) -> Callable[[Any], None]:
    """A check, inside the appending transaction, that the append of `command_id` was made
    (or had been): else the stream moved, and the whole transaction is rolled back."""

    def check(conn: Any) -> None:
        row = conn.execute("SELECT 1 FROM events WHERE command_id = %s", (command_id,)).fetchone()
        if row is None:
            raise WrongExpectedVersion("the execution changed meanwhile")

    return check


def _meta(actor: str, reason: str | None) -> dict[str, Any]:
    return {"actor": actor, **({"reason": reason} if reason else {})}


async def restart_execution(
    store: EventStore,
    execution_id: str,
    *,
    actor: str,
    reason: str | None = None,
    command_id: str | None = None,
) -> None:
    """Run the failed and killed task runs of a FAILED or KILLED execution again, as new
    attempts in the same execution (state RESTARTED, then RUNNING); their flowable parents go
    on, and its errors, finally and afterExecution branches run again as the new outcome
    calls for them. Labelled `system.restarted: true`, as Kestra does."""

    def restart(state: Execution) -> list[ev.Event]:
        if state.restarting:
            raise Conflict(f"Execution {execution_id} is being restarted already")
        if state.state not in ("FAILED", "KILLED"):
            raise Conflict(
                f"Execution {execution_id} is {state.state}: only a FAILED or KILLED execution "
                "can be restarted (replay it to run it again from a task)"
            )
        plan = restart_plan(state)
        return [
            ev.ExecutionRestarted(
                executionId=execution_id,
                taskRunIds=plan.run,
                reopened=plan.reopened,
                removed=plan.removed,
                reason=reason,
            ),
            ev.ExecutionLabelsChanged(
                executionId=execution_id,
                labels=labels_with(state.labels, "system.restarted", "true"),
            ),
        ]

    await _command(store, execution_id, restart, actor=actor, command_id=command_id, reason=reason)


async def pause_execution(
    store: EventStore,
    execution_id: str,
    *,
    actor: str,
    reason: str | None = None,
    command_id: str | None = None,
) -> None:
    """Pause a running execution: no new task run starts (attempts already running end as
    they would) until it is resumed (`resume_execution`); it is PAUSED meanwhile."""

    def pause(state: Execution) -> list[ev.Event]:
        if state.hold is not None or state.state != "RUNNING":
            raise Conflict(
                f"Execution {execution_id} is {state.state}"
                + (" and paused already" if state.hold == "pause" else "")
                + ": only a RUNNING execution can be paused"
            )
        return [ev.ExecutionPauseRequested(executionId=execution_id, reason=reason)]

    await _command(store, execution_id, pause, actor=actor, command_id=command_id, reason=reason)


async def set_labels(
    store: EventStore,
    execution_id: str,
    labels: list[dict[str, str]],
    *,
    actor: str,
    reason: str | None = None,
    command_id: str | None = None,
) -> None:
    """Set the labels of an ended execution (Kestra's list of {key, value}, replacing those
    it had); its `system.` labels stay and cannot be set this way."""
    given: dict[str, str] = {}
    for i, item in enumerate(labels):
        if not isinstance(item, dict) or not isinstance(item.get("key"), str):
            raise InvalidRequest(f"Label {i + 1} must be an object {{key, value}} of strings")
        key, value = item["key"].strip(), item.get("value")
        if not key or not isinstance(value, str):
            raise InvalidRequest(f"Label {i + 1} needs a non-empty key and a string value")
        if key.startswith("system."):
            raise InvalidRequest(f"Label {key}: system labels are set by Tiercel, not by hand")
        given[key] = value

    def relabel(state: Execution) -> list[ev.Event]:
        if not state.terminal:
            raise Conflict(
                f"Execution {execution_id} is {state.state}: the labels of an execution are set "
                "once it has ended (while it runs, a Labels task sets them)"
            )
        kept = [(k, v) for k, v in state.labels if k.startswith("system.")]
        merged = [{"key": k, "value": v} for k, v in [*kept, *given.items()]]
        return [ev.ExecutionLabelsChanged(executionId=execution_id, labels=merged)]

    await _command(store, execution_id, relabel, actor=actor, command_id=command_id, reason=reason)


async def change_task_run_state(
    store: EventStore,
    execution_id: str,
    task_run_id: str,
    state: str,
    *,
    actor: str,
    reason: str | None = None,
    command_id: str | None = None,
) -> None:
    """Set an ended task run's state by hand (Kestra's "change status": SUCCESS, WARNING or
    FAILED), so that the execution goes on or ends from there: its ended parents run again,
    and an ended execution is RESTARTED and runs on."""
    wanted = state.strip().upper() if isinstance(state, str) else ""
    if wanted not in FORCEABLE_STATES:
        raise InvalidRequest(
            f"A task run's state can be set to {', '.join(FORCEABLE_STATES)}, not {state!r}"
        )

    def force(current: Execution) -> list[ev.Event]:
        run = current.taskruns.get(task_run_id)
        if run is None:
            raise NotFound(f"Execution {execution_id} has no task run {task_run_id}")
        if run.state not in TERMINAL_STATES:
            raise Conflict(
                f"Task run {task_run_id} ({run.taskId}) is {run.state}: only an ended task run's "
                "state can be changed (kill the execution to stop it)"
            )
        if run.state == wanted:
            raise Conflict(f"Task run {task_run_id} ({run.taskId}) is {wanted} already")
        plan = force_plan(current, task_run_id)
        return [
            ev.TaskRunStateForced(
                executionId=execution_id,
                taskRunId=task_run_id,
                state=wanted,
                reopened=plan.reopened,
                removed=plan.removed,
                reason=reason,
            )
        ]

    await _command(store, execution_id, force, actor=actor, command_id=command_id, reason=reason)


async def execution_history(store: EventStore, execution_id: str) -> list[StoredEvent]:
    """Every event of an execution and its attempts; NotFound when there are none."""
    history = await store.read_execution(execution_id)
    if not history:
        raise NotFound(f"Execution {execution_id} does not exist")
    return history


def state_of(history: list[StoredEvent], *, at_seq: int | None = None) -> Execution:
    """An execution's state as the executor held it, optionally as of position `at_seq`."""
    inputs = [recorded(e) for e in history if e.type in INPUT_TYPES]
    state = replay(inputs) if at_seq is None else as_of(inputs, at_seq)
    if state is None:
        raise NotFound("The execution did not exist yet at that position")
    return state


async def scheduled_attempt(
    store: EventStore, execution_id: str, task_run_id: str, attempt: int
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The task definition and render context of a scheduled attempt, rebuilt from the
    execution's history as it stood when the attempt was scheduled (events carry no snapshot
    of them). `NotFound` when the history holds no such attempt."""
    history = await execution_history(store, execution_id)
    at = next(
        (
            e.seq
            for e in history
            if isinstance(e.event, ev.AttemptScheduled)
            and e.event.taskRunId == task_run_id
            and e.event.attempt == attempt
        ),
        None,
    )
    if at is None:
        raise NotFound(
            f"Execution {execution_id} never scheduled attempt {attempt} of {task_run_id}"
        )
    state = as_of([recorded(e) for e in history if e.type in INPUT_TYPES], at)
    if state is None:
        raise NotFound(f"Execution {execution_id} does not exist")
    try:
        return attempt_definition(state, task_run_id, attempt)
    except ValueError as exc:
        raise NotFound(str(exc)) from None


async def load_execution(
    store: EventStore, execution_id: str, *, at_seq: int | None = None
) -> Execution:
    """An execution's state now, or as it stood at position `at_seq`; NotFound once purged
    (its events stay readable as the audit trail)."""
    return _loaded(execution_id, await execution_history(store, execution_id), at_seq=at_seq)


def _loaded(
    execution_id: str, history: list[StoredEvent], *, at_seq: int | None = None
) -> Execution:
    state = state_of(history, at_seq=at_seq)
    if state.purged:
        raise NotFound(
            f"Execution {execution_id} was purged; its history is still at "
            f"/api/v1/executions/{execution_id}/events"
        )
    return state


def state_json(current: str, histories: Sequence[tuple[str, str]]) -> dict[str, Any]:
    """A state in Kestra's shape (current, histories, startDate, and once ended endDate and
    duration), from its (state, date) history: the one source of an execution's dates, for
    its own answer and the search's rows alike."""
    start = histories[0][1] if histories else None
    end = histories[-1][1] if histories and current in TERMINAL_STATES else None
    out: dict[str, Any] = {
        "current": current,
        "histories": [{"state": s, "date": d} for s, d in histories],
        "startDate": start,
    }
    if end and start:
        out["endDate"] = end
        delta = _parse(end) - _parse(start)
        out["duration"] = f"PT{delta.total_seconds():.3f}S"
    return out


def _parse(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00"))


TENANT = "main"
"""The tenant every object belongs to (Tiercel has one), as Kestra's `tenantId`."""


def trigger_json(trigger: dict[str, Any] | None) -> dict[str, Any] | None:
    """An execution's trigger in Kestra's shape: `id`, `type`, `variables`. A subflow's
    trigger recorded before it carried its task's id shows `id` as null."""
    if trigger is None:
        return None
    return {"id": None, "type": None, "variables": {}, **trigger}


def execution_json(state: Execution) -> dict[str, Any]:
    """An execution in Kestra's JSON shape (its client model `Execution`, with `TaskRun` and
    `TaskRunAttempt`)."""
    return {
        "id": state.id,
        "tenantId": TENANT,
        "namespace": state.namespace,
        "flowId": state.flowId,
        "flowRevision": state.flowRevision,
        "state": state_json(state.state, state.histories),
        "taskRunList": [
            {
                "id": run.id,
                "tenantId": TENANT,
                "executionId": state.id,
                "namespace": state.namespace,
                "flowId": state.flowId,
                "parentTaskRunId": run.parentTaskRunId,
                "taskId": run.taskId,
                "value": run.value,
                "iteration": run.iteration,
                "state": state_json(run.state, run.histories),
                "outputs": shown(run.outputs or {}),
                "attempts": [
                    {"state": state_json(a.state, a.histories), "workerId": a.workerId}
                    for a in run.attempts
                ],
                **({"message": run.message} if run.message else {}),
            }
            for run in state.taskruns.values()
        ],
        "inputs": shown(state.inputs),
        "outputs": shown(state.outputs or {}),
        "labels": [{"key": k, "value": v} for k, v in state.labels],
        "parentId": state.parentId,
        "originalId": state.originalId,
        "replayOf": state.replayOf,
        "replays": list(state.replays),
        "trigger": trigger_json(state.trigger),
        "deleted": False,
        # Kestra counts a restart (or a task run's state set by hand) as one more attempt.
        "metadata": {
            "attemptNumber": state.attempt + state.generation,
            "originalCreatedDate": state.start_date,
        },
        **({"message": state.message} if state.message else {}),
    }


class _Waiter:
    """One `wait_for_end` call: the execution's stream and how far it was looked at."""

    __slots__ = ("stream", "version", "ended", "covered", "position")

    def __init__(self, stream: str, version: int) -> None:
        self.stream = stream
        self.version = version
        """The stream's last version looked at."""
        self.ended = False
        """Whether the events after the previous `version` hold a terminal state change."""
        self.covered = -1
        """The notifier's generation when the last look that included this waiter began."""
        self.position: int | None = None
        """The log position every event up to which was looked at (from the feed), once a
        look at the database gave a start."""


class _EndWatch:
    """Looks, for every `wait_for_end` of a process at once, whether the executions waited on
    recorded a terminal state: one indexed query per notification, however many wait."""

    def __init__(self) -> None:
        self.waiters: set[_Waiter] = set()
        self.lock = trio.Lock()

    async def look(self, store: EventStore, notifier: Notifier, waiter: _Waiter) -> None:
        """Update `waiter` (and every other) with what was recorded up to at least the
        notifier's current generation."""
        wanted = notifier.generation
        async with self.lock:
            if waiter.covered >= wanted:
                return  # a look that began after `wanted` was reached included it
            began = notifier.generation
            waiters = list(self.waiters)
            feed = store.feed
            if feed is not None and await self._look_in_feed(feed, notifier, waiters):
                for w in waiters:
                    w.covered = began
                return
            start = feed.head if feed is not None else None
            after: dict[str, int] = {}
            for w in waiters:
                after[w.stream] = min(after.get(w.stream, w.version), w.version)
            rows = await store.db.fetchall(
                "SELECT w.stream_id, max(e.version) AS version, bool_or(e.type ="
                " 'ExecutionStateChanged' AND e.data->>'state' = ANY(%s)) AS ended"
                " FROM unnest(%s::text[], %s::int[]) AS w(stream_id, after)"
                " JOIN events e ON e.stream_id = w.stream_id AND e.version > w.after"
                " GROUP BY w.stream_id",
                (sorted(TERMINAL_STATES | {"PAUSED"}), list(after), list(after.values())),
            )
            found = {r["stream_id"]: (int(r["version"]), bool(r["ended"])) for r in rows}
            for w in waiters:
                version, ended = found.get(w.stream, (w.version, False))
                # Rows after this waiter's own version hold the terminal change only when it
                # comes after what this waiter had seen; that is checked by folding anyway.
                if version > w.version:
                    w.ended = w.ended or ended
                    w.version = version
                w.covered = began
                w.position = start

    async def _look_in_feed(self, feed: Any, notifier: Notifier, waiters: list[_Waiter]) -> bool:
        """Look at the state changes the process's feed holds (no round trip); False when the
        feed cannot tell (a waiter not yet started from the database, the feed behind the
        notifications or no longer holding what is needed)."""
        if any(w.position is None for w in waiters):
            return False
        with trio.move_on_after(0.5):
            while feed.head < notifier.latest:  # another process's commit, not yet read
                await feed.wait(feed.generation, 0.5)
        if feed.head < notifier.latest:
            return False
        lowest = min(w.position for w in waiters if w.position is not None)
        found = feed.after(lowest, ["ExecutionStateChanged"], 1_000_000)
        if found is None:
            return False
        events, position = found
        by_stream: dict[str, list[_Waiter]] = {}
        for w in waiters:
            by_stream.setdefault(w.stream, []).append(w)
        targets = TERMINAL_STATES | {"PAUSED"}
        for e in events:
            for w in by_stream.get(e.stream_id, ()):
                assert w.position is not None
                if e.seq > w.position and e.version > w.version:
                    w.version = e.version
                    w.ended = w.ended or getattr(e.event, "state", None) in targets
        for w in waiters:
            w.position = position
        return True


_watches: weakref.WeakKeyDictionary[Notifier, _EndWatch] = weakref.WeakKeyDictionary()


async def wait_for_end(
    store: EventStore,
    notifier: Notifier,
    execution_id: str,
    *,
    timeout: float = 300.0,
    until_paused: bool = False,
) -> Execution:
    """Wait until the execution is terminal (or, with `until_paused`, PAUSED), or `timeout`
    seconds passed, and return it as it is then.

    The execution is folded when the wait begins and once a terminal (or paused) state is
    recorded, not on every notification meanwhile: each notification costs one indexed look at
    the new events of the streams waited on, shared by every waiter of the process."""
    stream = ev.execution_stream(execution_id)

    def done(state: Execution) -> bool:
        return state.terminal or (until_paused and state.state == "PAUSED")

    with trio.move_on_after(timeout):
        history = await execution_history(store, execution_id)
        state = _loaded(execution_id, history)
        if done(state):
            return state
        version = max((e.version for e in history if e.stream_id == stream), default=NO_STREAM)
        watch = _watches.get(notifier)
        if watch is None:
            watch = _watches[notifier] = _EndWatch()
        waiter = _Waiter(stream, version)
        watch.waiters.add(waiter)
        try:
            while True:
                seen = notifier.generation
                await watch.look(store, notifier, waiter)
                if waiter.ended:
                    state = await load_execution(store, execution_id)
                    if done(state):
                        return state
                    # Ended and started again (a restart), or paused and resumed, or paused
                    # while only an end is waited for: wait on.
                    waiter.ended = False
                await notifier.wait(seen, 1.0)
        finally:
            watch.waiters.discard(waiter)
    return await load_execution(store, execution_id)


async def resume_execution(
    store: EventStore,
    execution_id: str,
    inputs: dict[str, Any] | None = None,
    actor: str = "api",
    command_id: str | None = None,
) -> Execution:
    """Resume a paused execution with the values its Pause tasks ask for (`onResume`); they
    are recorded sealed with the execution's key (a SECRET one encrypted with it, see
    `engine.secrets`), so a purge erases them."""
    key = None
    if inputs:
        await execution_history(store, execution_id)  # no key is made for an unknown id
        # Made (or read) here for the SECRET values; the store seals the others with it too.
        key = await execution_key(store.db, execution_id, create=True)

    def resume(state: Execution) -> list[ev.Event]:
        if state.hold == "pause":  # paused by hand: it runs on (its Pause tasks ask nothing)
            return [ev.ExecutionResumeRequested(executionId=execution_id)]
        if state.hold == "resume":
            raise Conflict(
                f"Execution {execution_id} is already being resumed: wait until it runs again"
            )
        values = _resume_values(state, inputs or {}, key)
        paused = [r.id for r in state.taskruns.values() if r.state == "PAUSED"]
        return [
            ev.ExecutionResumeRequested(executionId=execution_id, inputs=values, taskRunIds=paused)
        ]

    return await _command(store, execution_id, resume, actor=actor, command_id=command_id)


def _resume_values(
    state: Execution, inputs: dict[str, Any], key: bytes | None = None
) -> dict[str, Any]:
    execution_id = state.id
    if state.state != "PAUSED":
        raise Conflict(
            f"Execution {execution_id} is {state.state}, not PAUSED: only a paused execution "
            "can be resumed"
        )
    if state.resume_inputs is not None:
        raise Conflict(
            f"Execution {execution_id} is already being resumed: wait until it pauses again "
            "before resuming it once more"
        )
    flow = flow_of(state)
    asked: list[Input] = []
    for run in state.taskruns.values():
        task = flow.find_task(run.taskId) if run.state == "PAUSED" else None
        for definition in getattr(task, "onResume", None) or []:
            try:
                asked.append(msgspec.convert(definition, Input))
            except msgspec.ValidationError as exc:
                raise InvalidRequest(
                    f"Pause task {run.taskId} has a bad onResume input: {exc}"
                ) from None
    paused = msgspec.structs.replace(flow, inputs=asked)
    values = resolve_inputs(paused, inputs)
    return encrypt_secret_inputs(key, paused, values) if key is not None else values


async def purge_execution(
    store: EventStore,
    storage: Storage | None,
    execution_id: str,
    *,
    logs: bool = True,
    files: bool = True,
    actor: str = "api",
) -> int:
    """Delete an ended execution from the read models, with its logs and files when asked;
    return how many files were deleted. Its events stay: they are the audit trail."""
    state = await load_execution(store, execution_id)
    if not state.terminal:
        raise Conflict(
            f"Execution {execution_id} is {state.state}: kill it or let it end before purging it"
        )
    await store.append(
        ev.execution_stream(execution_id),
        [ev.ExecutionPurged(executionId=execution_id, logs=logs, files=files)],
        meta={"actor": actor},
    )
    await destroy_key(store.db, execution_id)  # its recorded SECRET values are gone for good
    if not files or storage is None:
        return 0
    prefix = execution_prefix(state.namespace, state.flowId, execution_id)
    return await trio.to_thread.run_sync(storage.delete_prefix, prefix)


async def toggle_trigger(
    store: EventStore,
    namespace: str,
    flow_id: str,
    trigger_id: str,
    enabled: bool,
    actor: str = "api",
) -> None:
    """Enable or disable one trigger of a flow; NotFound when the flow has no such trigger."""
    record = await get_flow(store, namespace, flow_id)
    ids = [t.id for t in parse_flow(record.source).triggers]
    if trigger_id not in ids:
        raise NotFound(
            f"Flow {namespace}.{flow_id} has no trigger '{trigger_id}'"
            + (f"; it has {', '.join(map(str, ids))}" if ids else "; it has no triggers")
        )
    await store.append(
        ev.trigger_stream(namespace, flow_id, trigger_id),
        [
            ev.TriggerToggled(
                namespace=namespace, flowId=flow_id, triggerId=trigger_id, enabled=enabled
            )
        ],
        meta={"actor": actor},
    )


async def trigger_enabled(store: EventStore, namespace: str, flow_id: str, trigger_id: str) -> bool:
    """Whether a trigger is enabled (its last toggle; enabled when never toggled)."""
    history = await store.read_stream(ev.trigger_stream(namespace, flow_id, trigger_id))
    toggles = [e.event for e in history if isinstance(e.event, ev.TriggerToggled)]
    return toggles[-1].enabled if toggles else True


# --- a namespace's flows as a whole (the CI/CD deploy) ----------------------------------------

MAX_DOCUMENTS = 1000
"""Flows one namespace deploy or import may hold."""

_AFTER_EVERY_ID = "\x7f"
"""Sorts after every character a flow id may hold (stream ids compare bytewise)."""


class FlowDocument(msgspec.Struct, frozen=True):
    """One YAML document of a body that holds several flows."""

    source: str
    name: str
    """How answers name it: `document 2`, or the file it came from."""
    line: int = 1
    """The line of the body (or file) where the document starts."""


def split_documents(body: str, name: str = "document") -> list[FlowDocument]:
    """The YAML documents of a body (flows separated by `---` lines), each with the line it
    starts at; empty documents are skipped. One document is named `name`, several
    `name 1`, `name 2`, ... in order."""
    found: list[tuple[str, int]] = []
    current: list[str] = []
    start = 1
    for number, line in enumerate(body.splitlines(keepends=True), start=1):
        if line.rstrip() == "---":
            if "".join(current).strip():
                found.append(("".join(current), start))
            current, start = [], number + 1
        else:
            current.append(line)
    if "".join(current).strip():
        found.append(("".join(current), start))
    if len(found) == 1:
        return [FlowDocument(found[0][0], name, found[0][1])]
    return [FlowDocument(text, f"{name} {i}", line) for i, (text, line) in enumerate(found, 1)]


def check_documents(
    documents: list[FlowDocument], namespace: str | None = None
) -> list[tuple[FlowDocument, Flow]]:
    """Parse every document; `FlowValidationError` listing every problem of every document
    (its name, and lines counted in the whole body) when any is not a valid flow, is not in
    `namespace` (when given), or repeats another's id. Nothing is deployed here."""
    if not documents:
        # Never read as "the namespace has no flows": that would delete every one of them.
        raise InvalidRequest("The request holds no flow: send at least one flow's YAML")
    if len(documents) > MAX_DOCUMENTS:
        raise InvalidRequest(
            f"The body holds {len(documents)} flows; at most {MAX_DOCUMENTS} are deployed at "
            "once: send them in several requests"
        )
    parsed: list[tuple[FlowDocument, Flow]] = []
    problems: list[Problem] = []
    bad: list[str] = []
    seen: dict[str, str] = {}
    for doc in documents:
        try:
            flow = parse_flow(doc.source)
        except FlowValidationError as exc:
            bad.append(doc.name)
            problems += [_in_document(doc, p) for p in exc.details]
            continue
        mine: list[Problem] = []
        if namespace is not None and flow.namespace != namespace:
            mine.append(
                Problem(
                    f"{doc.name}: flow {flow.id} is in namespace {flow.namespace}, not "
                    f"{namespace}: a namespace deploy holds only that namespace's flows",
                    "namespace",
                    doc.line,
                )
            )
        if flow.id in seen:
            mine.append(
                Problem(
                    f"{doc.name}: flow id {flow.id} is already used by {seen[flow.id]}",
                    "id",
                    doc.line,
                )
            )
        seen.setdefault(flow.id, doc.name)
        if mine:
            bad.append(doc.name)
            problems += mine
        else:
            parsed.append((doc, flow))
    if problems:
        raise FlowValidationError(problems, ", ".join(bad) + " (nothing was deployed)")
    return parsed


def _in_document(doc: FlowDocument, problem: Problem) -> Problem:
    line = problem.line + doc.line - 1 if problem.line is not None else doc.line
    return Problem(f"{doc.name}: {problem.message}", problem.path, line, problem.column)


async def namespace_flows(store: EventStore, namespace: str) -> list[FlowRecord]:
    """The latest revision of every flow of `namespace` (not of the namespaces under it),
    sorted by id. Read from the flows' streams, so a deploy that just returned is included."""
    low = ev.flow_stream(namespace, "")
    rows = await store.db.fetchall(
        "SELECT DISTINCT ON (stream_id) stream_id, data::text AS data, recorded_at FROM events"
        " WHERE stream_id >= %s AND stream_id < %s ORDER BY stream_id DESC, version DESC",
        (low, low + _AFTER_EVERY_ID),
    )
    out = []
    for row in rows:
        event = ev.decode(row["data"])
        if isinstance(event, ev.FlowCreated | ev.FlowUpdated) and event.namespace == namespace:
            out.append(
                FlowRecord(
                    event.namespace,
                    event.flowId,
                    event.revision,
                    event.source,
                    False,
                    iso(row["recorded_at"]),
                )
            )
    return sorted(out, key=lambda r: r.id)


async def deploy_namespace(
    store: EventStore,
    namespace: str,
    documents: list[FlowDocument],
    *,
    delete: bool = True,
    actor: str = "api",
) -> tuple[list[FlowRecord], list[FlowRecord]]:
    """Make `documents` the flows of `namespace`: every one is validated first (nothing is
    changed when any is invalid, see `check_documents`), then each is created or updated (an
    unchanged one keeps its revision) and, with `delete`, the namespace's flows not among them
    are deleted. Returns (deleted, deployed)."""
    parsed = await trio.to_thread.run_sync(check_documents, documents, namespace)
    deployed = [await deploy_flow(store, doc.source, actor=actor) for doc, _ in parsed]
    deleted: list[FlowRecord] = []
    if delete:
        keep = {flow.id for _, flow in parsed}
        for record in await namespace_flows(store, namespace):
            if record.id in keep:
                continue
            try:
                await delete_flow(store, namespace, record.id, actor=actor)
            except NotFound:
                continue  # deleted meanwhile
            deleted.append(
                msgspec.structs.replace(record, deleted=True, revision=record.revision + 1)
            )
    return deleted, deployed


def task_definition(flow: Flow, task_id: str) -> dict[str, Any]:
    """A task of a flow (wherever it is nested) as its JSON definition; NotFound naming the
    task when the flow has none with that id."""
    task = flow.find_task(task_id)
    if task is None:
        raise NotFound(f"Flow {flow.namespace}.{flow.id} has no task '{task_id}'")
    definition: dict[str, Any] = msgspec.to_builtins(task)
    return definition


# --- following an execution -------------------------------------------------------------------


async def _execution_position(store: EventStore, execution_id: str) -> int:
    """The position of the last event of an execution or of its attempts (0 when none)."""
    base = ev.execution_stream(execution_id)
    row = await store.db.fetchone(
        "SELECT coalesce(max(seq), 0) AS last FROM events"
        " WHERE stream_id = %s OR (stream_id > %s AND stream_id < %s)",
        (base, base + "/", base + "0"),
    )
    return int(row["last"]) if row is not None else 0


async def follow_execution(
    store: EventStore, notifier: Notifier, execution_id: str, *, heartbeat: float = 15.0
) -> AsyncIterator[Execution | None]:
    """The execution now, then again each time an event of it (or of its attempts) is
    recorded, until it is terminal: the last state yielded is the terminal one. `None` is
    yielded after `heartbeat` seconds without a change, so the caller can keep its connection
    alive. Woken by the notifier; each wake-up costs one indexed look at the execution's last
    position, and the execution is folded only when it moved. NotFound before the first yield
    when there is no such execution."""
    position = await _execution_position(store, execution_id)
    state = await load_execution(store, execution_id)
    yield state
    quiet = 0.0
    while not state.terminal:
        seen = notifier.generation
        began = trio.current_time()
        await notifier.wait(seen, min(1.0, heartbeat))
        now = await _execution_position(store, execution_id)
        if now == position:
            quiet += trio.current_time() - began
            if quiet >= heartbeat:
                quiet = 0.0
                yield None
            continue
        position, quiet = now, 0.0
        state = await load_execution(store, execution_id)
        yield state
