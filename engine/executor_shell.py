"""The executor's imperative shell: reads the log, calls the pure core, appends its decisions.

Every batch of events is folded and decided at once, and all decisions are appended with the
executor's checkpoint in one transaction (group commit). Decisions are applied to the cached
state as soon as they are made, and skipped when read back. A restart reloads an execution's
history and replays it to the exact point it had reached, so nothing is decided twice (and the
command id of each decision makes a repeated append a no-op anyway).

Folding and deciding run in a worker thread, one hop per batch: deciding renders templates
(conditions, values, flow outputs), and however long one takes within its limits, the event loop
of the process (the API, heartbeats, the worker beside it) goes on answering meanwhile. Nothing
is rendered inside a database transaction: the batch's appends start once every decision is made.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import msgspec
import psycopg
import trio

from engine import events as ev
from engine.backoff import retry
from engine.concurrency import ACTOR as CONCURRENCY_ACTOR
from engine.concurrency import LedgerMoved, Ledgers
from engine.concurrency import check as ledger_check
from engine.db import Notifier
from engine.errors import TiercelError
from engine.execution import Execution, Recorded, decide, evolve, replay
from engine.execution.concurrency import Arrival, Change, Departure, limit_of
from engine.execution.context import attempt_definition
from engine.execution.planner import RULES
from engine.handoff import ClaimRefused, Handoff, claim_append
from engine.plugin import TERMINAL_STATES
from engine.secrets import decrypt_values, encrypt_inputs, has_encrypted, share_key
from engine.store import (
    NO_STREAM,
    Append,
    EventStore,
    StoredEvent,
    load_checkpoint,
    read_execution_sync,
    save_checkpoint,
    unresolved,
)
from engine.subscription import Subscription

log = logging.getLogger(__name__)

CHECKPOINT = "executor"
ACTOR = "executor"
INPUT_TYPES = (
    "ExecutionCreated",
    "ExecutionKillRequested",
    "TaskRunCreated",
    "TaskRunStateChanged",
    "ExecutionStateChanged",
    "AttemptScheduled",
    "TimerScheduled",
    "TimerFired",
    "AttemptClaimed",
    "AttemptSucceeded",
    "AttemptFailed",
    "AttemptAbandoned",
    "AttemptKilled",
    "ExecutionLabelsChanged",
    "TaskRunRestarted",
    "ExecutionPurged",
    "ExecutionRetried",
    "ExecutionResumeRequested",
    "SubflowExecutionRequested",
    "SubflowExecutionEnded",
    "ConcurrencySlotGranted",
    "ConcurrencyLimitReached",
    "ExecutionReplayed",
    "ExecutionRestarted",
    "TaskRunStateForced",
    "ExecutionPauseRequested",
)
SUBFLOW_ACTOR = "executor:subflow"
"""Who writes child executions and their results: an input to the executor, not a decision."""


def recorded(e: StoredEvent) -> Recorded:
    """A stored event as the pure replay sees it."""
    cause = e.meta.get("causation") if e.meta.get("actor") == ACTOR else None
    return Recorded(e.seq, e.event, e.recorded_at, cause)


def _correlation(state: Execution) -> str:
    """The id shared by an execution and every execution it starts (Kestra's correlation id)."""
    return dict(state.labels).get("system.correlationId", state.id)


class ExecutorShell:
    """Drives every execution forward; run several for availability (decisions are idempotent)."""

    def __init__(
        self,
        store: EventStore,
        notifier: Notifier,
        *,
        cache_size: int = 20_000,
        handoff: Handoff | None = None,
    ) -> None:
        self.store = store
        self.notifier = notifier
        self.handoff = handoff
        """Where attempts' definitions go for a worker in this process (none: no such worker)."""
        self.cache: OrderedDict[str, Execution] = OrderedDict()
        self.cache_size = cache_size
        self.parked: set[str] = set()
        self._unreadable: dict[str, str] = {}
        """Executions whose history holds a value that internal storage could not give back."""
        self.ledgers = Ledgers(store)
        """The flows' concurrency ledgers, as read so far."""
        self._changes: list[tuple[str, str, Change]] = []
        """What the batch being decided asks of the flows' concurrency ledgers."""

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Handle events from the checkpoint on, until cancelled."""
        # Cached states may be ahead of the checkpoint if an earlier run failed mid-batch.
        self.cache.clear()
        db = self.store.db
        position = await retry(lambda: load_checkpoint(db, CHECKPOINT), what="executor checkpoint")
        rows = await retry(
            lambda: db.fetchall("SELECT execution_id FROM engine_parked"), what="parked executions"
        )
        self.parked = {r["execution_id"] for r in rows}
        # A failed batch's decisions were applied to cached states but may not be durable:
        # forget them, so its retry starts from what the log holds.
        sub = Subscription(
            self.store,
            self.notifier,
            position=position,
            types=INPUT_TYPES,
            name="executor",
            on_retry=self.cache.clear,
        )
        await sub.run(self._handle, task_status=task_status)

    async def _load(self, batch: list[StoredEvent]) -> dict[str, tuple[list[StoredEvent], int]]:
        """The histories of the batch's executions that are not cached yet, each with the
        position the batch takes it up at (read here; replayed with the batch, off the loop)."""
        first: dict[str, int] = {}
        for e in batch:
            xid = e.execution_id
            if e.meta.get("actor") == ACTOR:
                # Its own decisions coming back, of an execution they may have ended (and so
                # dropped from the cache): nothing to decide on them, nothing to load.
                continue
            if xid and xid not in self.cache and xid not in first:
                # A new execution starts with its creation: there is nothing to load.
                first[xid] = -1 if isinstance(e.event, ev.ExecutionCreated) else e.seq
        first = {xid: seq for xid, seq in first.items() if seq >= 0}
        if not first:
            return {}

        storage = self.store.storage

        def load(conn: psycopg.Connection[Any]) -> dict[str, tuple[list[StoredEvent], int]]:
            return {xid: (read_execution_sync(conn, xid, storage), first[xid]) for xid in first}

        return await self.store.db.run(load)

    def _replay(self, histories: dict[str, tuple[list[StoredEvent], int]]) -> None:
        """Cache the state each loaded execution had just before the batch."""
        for xid, (history, before) in histories.items():
            reason = next((r for e in history if (r := unresolved(e.event))), None)
            if reason is not None:
                self._unreadable[xid] = reason
                continue
            state = replay([recorded(e) for e in history if e.type in INPUT_TYPES], before=before)
            if state is not None:
                self.cache[xid] = state

    async def _handle(self, batch: list[StoredEvent]) -> None:
        batch = [e for e in batch if e.execution_id not in self.parked]
        if not batch:
            return
        histories = await self._load(batch)
        # Not abandoned on cancellation: the thread updates the cached states, which must not
        # change under a later batch; it ends within the renders' own time limits.
        decisions, parked = await trio.to_thread.run_sync(self._decide, histories, batch)
        changes, self._changes = self._changes, []
        appends: list[Append] = []
        for append, state, decided, cause in decisions:
            appends.append(append)
            appends.extend(await self._effects(state, decided, cause))
        last = batch[-1].seq
        meta = {"actor": CONCURRENCY_ACTOR, "causation": last}
        ledger, commands = await self.ledgers.appends(changes, meta) if changes else ([], [])
        if not appends and not ledger and not parked:
            # Nothing decided (its own decisions coming back, a claim): the checkpoint trails
            # until the next decision is appended. Committing it alone would take the append
            # lock for nothing, twice per task; reprocessing from a trailing checkpoint after a
            # restart appends nothing twice, since each decision carries a command id.
            return

        def finish(conn: psycopg.Connection[Any]) -> None:
            for xid, seq, error in parked:
                conn.execute(
                    "INSERT INTO engine_parked (execution_id, seq, error) VALUES (%s, %s, %s)"
                    " ON CONFLICT (execution_id) DO NOTHING",
                    (xid, seq, error),
                )
            save_checkpoint(conn, CHECKPOINT, last)

        for _ in range(100):
            try:
                await self._append([*appends, *ledger], decisions, finish, ledger_check(commands))
                return
            except LedgerMoved:
                # Another writer (an executor, `sys submit-queued`) moved a ledger after it
                # was read: nothing of the batch was written; plan the slots again.
                ledger, commands = await self.ledgers.appends(changes, meta)
        raise LedgerMoved("a flow's concurrency ledger kept changing; the batch is tried again")

    async def _append(
        self,
        appends: list[Append],
        decisions: list[tuple[Append, Execution, list[ev.Event], int]],
        finish: Callable[[psycopg.Connection[Any]], None],
        guard: Callable[[psycopg.Connection[Any]], None] | None = None,
    ) -> None:
        """Append the decisions, and with them the claims of the attempts they schedule for
        the worker of this process while it has free slots (see `engine.handoff`);
        `guard` rolls it all back when a concurrency ledger moved meanwhile."""
        if guard is not None:
            finish = _then(finish, guard)
        claimer = self.handoff.claimer if self.handoff is not None else None
        riding: list[tuple[ev.AttemptScheduled, str]] = []
        if claimer is not None:
            scheduled = [
                e for _, _, decided, _ in decisions for e in decided
                if isinstance(e, ev.AttemptScheduled)
            ]  # fmt: skip
            for event in scheduled:
                worker_id = claimer.reserve()
                if worker_id is None:
                    break
                riding.append((event, worker_id))
        if claimer is None or not riding:
            await self.store.append_many(appends, extra=finish)
            return
        checks = [claimer.claim_check(w) for w in sorted({w for _, w in riding})]

        def finish_and_check(conn: psycopg.Connection[Any]) -> None:
            finish(conn)
            for check in checks:
                check(conn)

        written: list[StoredEvent] = []
        claims = [claim_append(event, worker_id) for event, worker_id in riding]
        try:
            results = await self.store.append_many(
                appends + claims, extra=finish_and_check, written=written
            )
        except ClaimRefused:
            # The worker was declared lost: the decisions go without its claims, and the
            # worker claims (or not) once registered again.
            for _ in riding:
                claimer.release()
            await self.store.append_many(appends, extra=finish)
            return
        except BaseException:
            for _ in riding:
                claimer.release()
            raise
        found = {
            (e.event.executionId, e.event.taskRunId, e.event.attempt): e
            for e in written
            if isinstance(e.event, ev.AttemptScheduled)
        }
        for (event, worker_id), result in zip(riding, results[len(appends) :], strict=True):
            key = (event.executionId, event.taskRunId, event.attempt)
            stored = found.get(key)
            if stored is None and result.status == "written":
                # Claimed along with a decision recorded before (handled again after a
                # restart): the scheduling event is read back.
                history = await self.store.read_execution(event.executionId)
                stored = next(
                    (
                        e for e in history
                        if isinstance(e.event, ev.AttemptScheduled)
                        and (e.event.executionId, e.event.taskRunId, e.event.attempt) == key
                    ),
                    None,
                )  # fmt: skip
            if result.status == "written" and stored is not None:
                claimer.start_claimed(stored, result.version, worker_id)
            else:
                claimer.release()

    def _decide(
        self, histories: dict[str, tuple[list[StoredEvent], int]], batch: list[StoredEvent]
    ) -> tuple[list[tuple[Append, Execution, list[ev.Event], int]], list[tuple[str, int, str]]]:
        """Fold and decide the whole batch (in a worker thread): per event that decided
        something, its append, the state after it and what it decided (for `_effects`); and
        the executions parked on the way."""
        self._replay(histories)
        self._changes = []
        decisions: list[tuple[Append, Execution, list[ev.Event], int]] = []
        parked: list[tuple[str, int, str]] = []
        for e in batch:
            if e.meta.get("actor") == ACTOR:
                continue  # our own decision, applied when it was made
            xid = e.execution_id
            if xid is None or xid in self.parked:
                continue
            reason = unresolved(e.event) or self._unreadable.pop(xid, None)
            if reason is not None:
                # Folding without the value would decide on wrong data: set it aside.
                log.error("Execution %s parked at event %s: %s", xid, e.seq, reason)
                parked.append((xid, e.seq, reason))
                self.parked.add(xid)
                self.cache.pop(xid, None)
                continue
            try:
                state = evolve(self.cache.get(xid), e.event, e.recorded_at)
                if state is None:
                    continue
                if isinstance(e.event, ev.ExecutionCreated):
                    self._arrival(state)
                decided = decide(state, e.event, e.recorded_at)
            except Exception as exc:  # a bug must not wedge every other execution behind it
                # evolve and decide are total, so this is a defect: set the execution aside
                # rather than retry it in a crash loop, and say so where operators look.
                log.exception("Execution %s parked at event %s: it cannot be folded", xid, e.seq)
                parked.append((xid, e.seq, f"{type(exc).__name__}: {exc}"))
                self.parked.add(xid)
                self.cache.pop(xid, None)
                continue
            if decided:
                append = Append(
                    ev.execution_stream(xid),
                    decided,
                    command_id=f"decide:{e.seq}",
                    meta={"actor": ACTOR, "causation": e.seq},
                )
                for new in decided:
                    state = evolve(state, new, e.recorded_at)
                    assert state is not None
                    if isinstance(new, ev.ExecutionStateChanged) and new.state in TERMINAL_STATES:
                        self._departure(state)
                    if self.handoff is not None and isinstance(new, ev.AttemptScheduled):
                        self._hand_over(state, new)
                decisions.append((append, state, decided, e.seq))
            self._keep(xid, state)
        return decisions, parked

    async def _effects(self, state: Execution, decided: list[ev.Event], cause: int) -> list[Append]:
        """What decisions ask of the world beyond this execution: child executions and, when
        a child ends, the news for its parent."""
        out: list[Append] = []
        meta = {"actor": SUBFLOW_ACTOR, "causation": cause}
        for event in decided:
            if isinstance(event, ev.SubflowExecutionRequested):
                out.append(await self._start_child(state, event, meta))
            elif isinstance(event, ev.ExecutionRetried):
                if has_encrypted(state.inputs):  # the retry records the same encrypted inputs
                    await share_key(self.store.db, state.id, event.newExecutionId)
                out.append(
                    Append(
                        ev.execution_stream(event.newExecutionId),
                        [
                            ev.ExecutionCreated(
                                executionId=event.newExecutionId,
                                namespace=state.namespace,
                                flowId=state.flowId,
                                flowRevision=state.flowRevision,
                                flow=state.flow,
                                inputs=state.inputs,
                                labels=[{"key": k, "value": v} for k, v in state.labels],
                                trigger=state.trigger,
                                parentId=state.parentId,
                                parentTaskRunId=state.parentTaskRunId,
                                originalId=state.originalId,
                                attempt=event.attempt,
                                concurrencyLimited=state.limited,
                                rules=RULES,
                            )
                        ],
                        NO_STREAM,
                        command_id=f"retry:{event.newExecutionId}",
                        meta=meta,
                    )
                )
            elif isinstance(event, ev.ExecutionStateChanged) and event.state == "KILLED":
                # A kill reaches the child executions of Subflow tasks still running.
                for run_id, child in state.subflows.items():
                    if len(child) == 1 and state.taskruns.get(run_id) is not None:
                        out.append(
                            Append(
                                ev.execution_stream(child[0]),
                                [ev.ExecutionKillRequested(executionId=child[0])],
                                command_id=f"kill-child:{child[0]}",
                                meta=meta,
                            )
                        )
            if (
                isinstance(event, ev.ExecutionStateChanged)
                and event.state in TERMINAL_STATES
                and state.parentId
                and state.parentTaskRunId
                and not any(isinstance(d, ev.ExecutionRetried) for d in decided)
            ):
                out.append(
                    Append(
                        ev.execution_stream(state.parentId),
                        [
                            ev.SubflowExecutionEnded(
                                executionId=state.parentId,
                                taskRunId=state.parentTaskRunId,
                                childId=state.id,
                                state=event.state,
                                outputs=event.outputs,
                            )
                        ],
                        command_id=f"subflow-end:{state.id}",
                        meta=meta,
                    )
                )
        return out

    async def _start_child(
        self, parent: Execution, request: ev.SubflowExecutionRequested, meta: dict[str, Any]
    ) -> Append:
        from engine.commands import get_flow, merge_labels
        from engine.flow import flow_to_dict, parse_flow
        from engine.inputs import resolve_inputs_off_loop

        try:
            record = await get_flow(self.store, request.namespace, request.flowId, request.revision)
            flow = parse_flow(record.source)
            if flow.disabled:
                raise TiercelError(f"Flow {request.namespace}.{request.flowId} is disabled")
            # Secrets the parent passes on are encrypted again, with the child's own key.
            given, passed = await decrypt_values(self.store.db, parent.id, request.inputs)
            values = await resolve_inputs_off_loop(flow, given)
            values = await encrypt_inputs(self.store.db, flow, values, request.childId, also=passed)
        except TiercelError as exc:
            return Append(
                ev.execution_stream(parent.id),
                [
                    ev.SubflowExecutionEnded(
                        executionId=parent.id,
                        taskRunId=request.taskRunId,
                        childId=request.childId,
                        state="FAILED",
                        message=f"Subflow {request.namespace}.{request.flowId}: {exc}",
                    )
                ],
                command_id=f"subflow-end:{request.childId}",
                meta=meta,
            )
        created = ev.ExecutionCreated(
            executionId=request.childId,
            namespace=request.namespace,
            flowId=request.flowId,
            flowRevision=record.revision,
            flow=flow_to_dict(msgspec.structs.replace(flow, revision=record.revision)),
            inputs=values,
            labels=merge_labels(
                flow,
                [
                    *request.labels,
                    {"key": "system.correlationId", "value": _correlation(parent)},
                ],
            ),
            trigger={
                # Kestra's trigger id for a subflow: the id of the task that started it.
                "id": run.taskId if (run := parent.taskruns.get(request.taskRunId)) else None,
                "type": "io.kestra.plugin.core.flow.Subflow",
                "variables": {
                    "executionId": parent.id,
                    "namespace": parent.namespace,
                    "flowId": parent.flowId,
                    "flowRevision": parent.flowRevision,
                },
            },
            parentId=parent.id,
            parentTaskRunId=request.taskRunId,
            originalId=request.childId,
            concurrencyLimited=limit_of(flow.concurrency) is not None,
            rules=RULES,
        )
        return Append(
            ev.execution_stream(request.childId),
            [created],
            NO_STREAM,
            command_id=f"subflow:{request.childId}",
            meta=meta,
        )

    def _hand_over(self, state: Execution, scheduled: ev.AttemptScheduled) -> None:
        """Give the worker of this process what it would rebuild for `scheduled` (the state
        is the one the attempt was scheduled from)."""
        assert self.handoff is not None
        try:
            value = attempt_definition(state, scheduled.taskRunId, scheduled.attempt)
        except Exception:  # the worker rebuilds it from the history and reports any error
            return
        self.handoff.offer(scheduled.executionId, scheduled.taskRunId, scheduled.attempt, value)

    def _arrival(self, state: Execution) -> None:
        """A new execution of a flow with a concurrency limit asks its ledger for a slot."""
        if not state.limited or state.definition is None:
            return
        limit = limit_of(state.definition.concurrency)
        if limit is not None:
            self._changes.append((state.namespace, state.flowId, Arrival(state.id, limit)))

    def _departure(self, state: Execution) -> None:
        """An execution of a flow with a concurrency limit ended: its ledger frees what it
        held (in the commit that ends it)."""
        if state.limited:
            self._changes.append((state.namespace, state.flowId, Departure(state.id, state.state)))

    def _keep(self, xid: str, state: Execution) -> None:
        if state.terminal:
            self.cache.pop(xid, None)
            return
        self.cache[xid] = state
        self.cache.move_to_end(xid)
        while len(self.cache) > self.cache_size:
            self.cache.popitem(last=False)


def _then(
    first: Callable[[psycopg.Connection[Any]], None],
    second: Callable[[psycopg.Connection[Any]], None],
) -> Callable[[psycopg.Connection[Any]], None]:
    def both(conn: psycopg.Connection[Any]) -> None:
        first(conn)
        second(conn)

    return both
