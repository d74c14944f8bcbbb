"""The scheduler: fires the ticks of every enabled scheduled trigger of every deployed flow.

Each trigger's state lives in its own stream (`ev.trigger_stream`): `TriggerToggled` (enabled or
not), `TriggerFired` (a tick and the execution it started), `TriggerSkipped` (ticks passed
over after downtime). The scheduler folds that stream, computes which ticks are due, and appends
the tick's `TriggerFired` at the stream's expected version together with the tick's
`ExecutionCreated` in one transaction. The expected version is the lock: any number of
schedulers may run against one database, and the one whose append lands fires the tick; the
others get a conflict, read the stream again and move on. The execution's id is derived from the
trigger and the tick, and its stream must not exist yet, so a tick never starts two executions,
whatever the schedulers saw.

A flow whose trigger cannot be read, or whose inputs fail to render, costs only that trigger:
the problem is logged (and recorded on the tick), and every other trigger goes on. Database
errors are waited out with backoff, as the timer service does.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
from collections.abc import Callable, Sequence
from typing import Any

import msgspec
import psycopg
import trio

from engine import events as ev
from engine.backoff import Backoff, describe, is_transient
from engine.db import Notifier
from engine.errors import Conflict, InvalidRequest, NotFound, TiercelError, WrongExpectedVersion
from engine.execution import short_id
from engine.execution.concurrency import limit_of
from engine.execution.planner import RULES
from engine.flow import Flow, flow_to_dict, parse_flow
from engine.health import Health
from engine.inputs import resolve_inputs_off_loop
from engine.plugin import TERMINAL_STATES
from engine.secrets import encrypt_inputs
from engine.store import ANY, NO_STREAM, Append, AppendResult, EventStore, StoredEvent
from engine.templating import render_typed, render_value
from engine.triggers import (
    ConditionContext,
    ConditionGroup,
    ExecutionTrigger,
    PollContext,
    PollingTrigger,
    ScheduledTrigger,
    Trigger,
)

log = logging.getLogger(__name__)

COMPONENT = "scheduler"
ACTOR = "scheduler"
GRACE = dt.timedelta(seconds=60)
"""A tick due less than this long ago is on time, not missed (a slow pass, a short outage)."""
MAX_TICKS_PER_PASS = 200
"""Ticks of one trigger fired in one pass at most (a long catch-up goes on in the next)."""
MAX_TICKS_LOOKED_AT = 10_000
"""Ticks of one trigger evaluated in one pass at most (conditions that hold rarely)."""
BACKFILL_BATCH = 10
"""Ticks of one backfill fired in one pass at most."""
BACKFILL_PACE = dt.timedelta(seconds=0.25)
"""The pause between two batches of a backfill: at most 40 of its executions a second, so
that live ticks and other executions keep their share."""
_FLOW_TYPES = ("FlowCreated", "FlowUpdated", "FlowDeleted")


class _Unowned(Exception):
    """The trigger stream moved under this scheduler's append: another fired the tick."""


@dataclasses.dataclass
class FlowEntry:
    """The latest revision of one flow, as the scheduler uses it."""

    namespace: str
    flow_id: str
    revision: int
    deployed_at: dt.datetime
    flow: Flow | None
    """None when deleted, or when the revision no longer parses (its triggers are skipped)."""
    recorded: dict[str, Any] | None = None
    """What its executions record as their flow (made on first use)."""


@dataclasses.dataclass
class TriggerState:
    """A trigger's stream folded: what the scheduler decides from."""

    version: int = NO_STREAM
    enabled: bool = True
    enabled_at: dt.datetime | None = None
    """When it was last enabled by a toggle (ticks before are not owed)."""
    last: dt.datetime | None = None
    """The last tick fired or passed over."""
    expected: dt.datetime | None = None
    """The tick after `last` as the schedule then said (when the schedule is changed, the
    ticks it would have had before the change are not owed)."""
    watched: list[str] = dataclasses.field(default_factory=list)
    """Executions it started since it was last enabled (for `stopAfter`)."""
    backfill: BackfillState | None = None
    """Its latest backfill, running, paused or ended."""
    polled: dt.datetime | None = None
    """When a polling trigger last polled (the next poll is due `interval` after)."""


@dataclasses.dataclass
class BackfillState:
    """A backfill as its events tell it."""

    id: str
    start: dt.datetime
    end: dt.datetime
    total: int
    inputs: dict[str, Any]
    labels: list[dict[str, str]]
    paused: bool = False
    ended: bool = False
    cancelled: bool = False
    cursor: dt.datetime | None = None
    """The last tick it fired."""
    fired: int = 0

    def json(self, trigger: ScheduledTrigger | None) -> dict[str, Any]:
        """Kestra's `backfill` object of a trigger, with its progress."""
        shown = trigger.local if trigger is not None else (lambda at: at)
        return {
            "start": shown(self.start).isoformat(),
            "end": shown(self.end).isoformat(),
            "currentDate": shown(self.cursor).isoformat() if self.cursor else None,
            "paused": self.paused,
            "inputs": self.inputs,
            "labels": self.labels,
            "total": self.total,
            "fired": self.fired,
            "ended": self.ended,
            "cancelled": self.cancelled,
        }


def fold(history: list[StoredEvent]) -> TriggerState:
    """A trigger's state from its stream."""
    state = TriggerState()
    for stored in history:
        state.version = stored.version
        event = stored.event
        if isinstance(event, ev.TriggerToggled):
            state.enabled = event.enabled
            if event.enabled:
                state.enabled_at = stored.recorded_at
                state.watched = []
        elif isinstance(event, ev.TriggerFired) and event.backfill:
            if state.backfill is not None:
                state.backfill.cursor = _parse(event.date)
                state.backfill.fired += 1
        elif isinstance(event, ev.TriggerFired):
            state.last = _parse(event.date)
            state.expected = _parse(event.next) if event.next else None
            if event.executionId:
                state.watched = [*state.watched[-49:], event.executionId]
        elif isinstance(event, ev.TriggerSkipped):
            state.last = _parse(event.date)
            state.expected = None
        elif isinstance(event, ev.TriggerPolled):
            state.polled = _parse(event.date)
        elif isinstance(event, ev.BackfillStarted):
            state.backfill = BackfillState(
                event.backfillId,
                _parse(event.start),
                _parse(event.end),
                event.total,
                dict(event.inputs),
                list(event.labels),
            )
        elif state.backfill is not None and isinstance(event, ev.BackfillPaused):
            state.backfill.paused = True
        elif state.backfill is not None and isinstance(event, ev.BackfillResumed):
            state.backfill.paused = False
        elif state.backfill is not None and isinstance(event, ev.BackfillEnded):
            state.backfill.ended = True
            state.backfill.cancelled = event.cancelled
    return state


def _parse(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00"))


def execution_id_for(stream: str, tick: dt.datetime, backfill: str | None = None) -> str:
    """The id of the execution a tick starts: the same tick always gives the same id (and the
    same tick of one backfill another one)."""
    at = tick.astimezone(dt.UTC).isoformat()
    return (
        short_id("backfill", backfill, stream, at) if backfill else short_id("trigger", stream, at)
    )


def tick_variables(trigger: ScheduledTrigger, tick: dt.datetime) -> dict[str, Any]:
    """What `{{ trigger.* }}` holds for a tick: its date, the next and the previous one."""
    following = trigger.next_fire(tick)
    before = trigger.previous_fire(tick)
    return {
        "date": trigger.local(tick).isoformat(),
        "next": trigger.local(following).isoformat() if following else None,
        "previous": trigger.local(before).isoformat() if before else None,
    }


def holds(namespace: str, flow_id: str, trigger: ScheduledTrigger, tick: dt.datetime) -> bool:
    """Whether every condition of the trigger holds on `tick`."""
    if not trigger.conditions:
        return True
    variables = {
        "trigger": tick_variables(trigger, tick),
        "flow": {"id": flow_id, "namespace": namespace},
    }
    ctx = ConditionContext(
        date=trigger.local(tick), variables=variables, render=lambda e, v: render_typed(e, v)
    )
    return all(condition.test(ctx) for condition in trigger.conditions)


def render_inputs(
    trigger: ScheduledTrigger,
    namespace: str,
    flow_id: str,
    revision: int,
    execution_id: str,
    variables: dict[str, Any],
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A tick's execution inputs as given (before the flow checks them): the trigger's
    `inputs` (with a backfill's on top), rendered with `trigger.*`."""
    context = {
        "trigger": variables,
        "flow": {"id": flow_id, "namespace": namespace, "revision": revision},
        "execution": {"id": execution_id},
    }
    given = {**trigger.execution_inputs(), **(extra or {})}
    rendered: dict[str, Any] = render_value(given, context)
    return rendered


@dataclasses.dataclass
class Plan:
    """What one pass decided for one trigger: ticks to pass over, then ticks to fire."""

    skipped: list[dt.datetime]
    fire: list[dt.datetime]
    cursor: dt.datetime | None
    """Ticks up to here were evaluated (conditions that did not hold included)."""
    dropped: int = 0
    """Missed ticks passed over besides `skipped` (counted, not listed)."""


def plan(
    trigger: ScheduledTrigger,
    base: dt.datetime,
    now: dt.datetime,
    holds: Callable[[dt.datetime], bool],
) -> Plan:
    """Which ticks after `base` and up to `now` fire, following `recoverMissedSchedules` and
    `lateMaximumDelay`: a tick due more than `GRACE` ago was missed; ALL fires every missed
    tick, LAST only the latest one, NONE none of them (ticks on time always fire). A tick
    whose conditions do not hold (`holds`) is passed over without a trace."""
    mode = trigger.recover_mode()
    late = trigger.late_limit()
    due: list[dt.datetime] = []
    tick = trigger.next_fire(base)
    looked = dropped = 0
    cursor: dt.datetime | None = None
    while tick is not None and tick <= now and looked < MAX_TICKS_LOOKED_AT:
        looked += 1
        due.append(tick)
        cursor = tick
        if mode == "ALL" and len(due) >= MAX_TICKS_PER_PASS:
            break
        tick = trigger.next_fire(tick)
        if mode != "ALL" and len(due) > 2 * MAX_TICKS_PER_PASS:
            # Only the latest missed ones can fire: keep the count, not every tick.
            dropped += len(due) - MAX_TICKS_PER_PASS
            due = due[-MAX_TICKS_PER_PASS:]
    # Whether every due tick was looked at (else the next pass goes on from `cursor`).
    complete = tick is None or tick > now
    skipped: list[dt.datetime] = []
    fire: list[dt.datetime] = []
    for tick in due:
        on_time = now - tick <= GRACE
        if late is not None and now - tick > late:
            skipped.append(tick)
        elif on_time or mode == "ALL":
            fire.append(tick)
        else:
            skipped.append(tick)
    if mode == "LAST" and complete and skipped:
        last = skipped[-1]
        if late is None or now - last <= late:
            skipped, fire = skipped[:-1], [last, *fire]
    kept = [t for t in fire if holds(t)]
    return Plan(skipped, kept, cursor, dropped)


class Scheduler:
    """Evaluates every enabled scheduled trigger and fires its due ticks, until cancelled."""

    def __init__(
        self,
        store: EventStore,
        notifier: Notifier | None = None,
        *,
        health: Health | None = None,
        max_wait: float = 1.0,
        clock: Callable[[], dt.datetime] | None = None,
        namespace: str | None = None,
    ) -> None:
        self.store = store
        self.namespace = namespace
        """Only the flows of this namespace and its children (None: every flow)."""
        self.health = health if health is not None else (notifier.health if notifier else Health())
        self.max_wait = max_wait
        self.clock = clock or (lambda: dt.datetime.now(dt.UTC))
        self.flows: dict[tuple[str, str], FlowEntry] = {}
        self._flow_position = 0
        self.states: dict[str, TriggerState] = {}
        self._cursors: dict[str, dt.datetime] = {}
        """Per trigger stream: ticks evaluated up to here by this scheduler (in memory)."""
        self._broken: set[tuple[str, str, int]] = set()
        """Flow revisions already reported as unreadable (reported once)."""
        self._failing: dict[str, str] = {}
        """Per trigger stream: the last error reported (reported once until it changes)."""
        self.fired = 0
        """Ticks this scheduler fired (live ones)."""
        self.lost = 0
        """Appends refused because another scheduler had moved the trigger's stream first."""
        self.flow_triggers = FlowTriggers(self, notifier)
        """The section that starts flows when other executions end (Flow triggers)."""

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Fire due ticks and Flow triggers until cancelled; database errors are waited out."""
        async with trio.open_nursery() as nursery:
            self._poll_nursery = nursery  # polls run beside the passes, not in them
            await nursery.start(self.flow_triggers.run)
            await nursery.start(self._run_ticks)
            task_status.started()

    async def _run_ticks(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        transient = Backoff()
        bug = Backoff(initial=1.0, maximum=30.0)
        while True:
            try:
                pause = await self.run_once()
            except Exception as exc:
                reason = describe(exc)
                if is_transient(exc):
                    delay = transient.failed()
                    log.warning("Scheduling failed (%s); retrying in %.1fs", reason, delay)
                else:
                    delay = bug.failed()
                    log.exception("Scheduling failed; retrying in %.1fs", delay)
                self.health.down(COMPONENT, reason)
                await trio.sleep(delay)
                continue
            transient.reset()
            bug.reset()
            self.health.up(COMPONENT)
            await trio.sleep(max(pause, 0.005))

    async def run_once(self) -> float:
        """One pass: read new flow revisions and trigger states, fire what is due, disable the
        triggers whose `stopAfter` says so. Returns how long to wait before the next pass."""
        await self._refresh_flows()
        active = self._active()
        await self._refresh_states([stream for stream, _, _ in active])
        await self._stop_after(active)
        now = self.clock()
        soonest = now + dt.timedelta(seconds=self.max_wait)
        for stream, entry, trigger in active:
            state = self.states.get(stream, TriggerState())
            if not state.enabled:
                continue
            try:
                upcoming = await self._evaluate(stream, entry, trigger, state, now)
            except _Unowned:
                self.lost += 1
                self.states.pop(stream, None)  # read again next pass
                soonest = now
                continue
            except Exception as exc:
                if is_transient(exc):
                    raise  # the database is away: the whole pass is retried
                self._report(stream, exc)  # one bad trigger must not stop the others
                continue
            if upcoming is not None:
                soonest = min(soonest, upcoming)
        for stream, entry, trigger in active:
            state = self.states.get(stream, TriggerState())
            try:
                more = await self._backfill(stream, entry, trigger, state)
            except _Unowned:
                self.states.pop(stream, None)
                continue
            except Exception as exc:
                if is_transient(exc):
                    raise
                self._report(stream, exc)
                continue
            if more:
                soonest = min(soonest, now + BACKFILL_PACE)
        soonest = await self._polls(now, soonest)
        return max((soonest - self.clock()).total_seconds(), 0.0)

    def _mine(self, namespace: str) -> bool:
        wanted = self.namespace
        return wanted is None or namespace == wanted or namespace.startswith(wanted + ".")

    def _report(self, stream: str, exc: Exception) -> None:
        reason = describe(exc)
        if self._failing.get(stream) != reason:
            self._failing[stream] = reason
            log.error("Trigger %s skipped: %s", stream.removeprefix("trigger:"), reason)

    # --- flows ---------------------------------------------------------------------------------

    async def _refresh_flows(self) -> None:
        changed: dict[tuple[str, str], StoredEvent] = {}
        while True:
            batch = await self.store.read_all(self._flow_position, 1000, types=_FLOW_TYPES)
            if not batch:
                break
            for stored in batch:
                event = stored.event
                if isinstance(event, ev.FlowCreated | ev.FlowUpdated | ev.FlowDeleted):
                    changed[(event.namespace, event.flowId)] = stored
            self._flow_position = batch[-1].seq
        for key, stored in changed.items():
            event = stored.event
            if isinstance(event, ev.FlowDeleted):
                self.flows[key] = FlowEntry(
                    key[0], key[1], event.revision, stored.recorded_at, None
                )
                continue
            assert isinstance(event, ev.FlowCreated | ev.FlowUpdated)
            flow: Flow | None = None
            if "triggers" not in event.source or not self._mine(key[0]):
                # Most flows have no trigger: not parsed at all.
                self.flows[key] = FlowEntry(
                    key[0], key[1], event.revision, stored.recorded_at, None
                )
                continue
            try:
                flow = await trio.to_thread.run_sync(parse_flow, event.source)
            except Exception as exc:
                if is_transient(exc):
                    raise
                flow = None
                marker = (key[0], key[1], event.revision)
                if marker not in self._broken:
                    self._broken.add(marker)
                    details = getattr(exc, "details", None)
                    log.error(
                        "Flow %s.%s revision %s no longer validates; its triggers are skipped: %s",
                        key[0],
                        key[1],
                        event.revision,
                        "; ".join(str(p) for p in details) if details else describe(exc),
                    )
            self.flows[key] = FlowEntry(key[0], key[1], event.revision, stored.recorded_at, flow)

    def _active(self) -> list[tuple[str, FlowEntry, ScheduledTrigger]]:
        found = []
        for entry in self.flows.values():
            flow = entry.flow
            if flow is None or flow.disabled or not self._mine(entry.namespace):
                continue
            for trigger in flow.triggers:
                if isinstance(trigger, ScheduledTrigger) and not trigger.disabled:
                    stream = ev.trigger_stream(entry.namespace, entry.flow_id, trigger.id)
                    found.append((stream, entry, trigger))
        return found

    async def _refresh_states(self, streams: list[str]) -> None:
        if not streams:
            return
        versions = await self.store.stream_versions(streams)
        for stream in streams:
            known = self.states.get(stream)
            if known is not None and known.version == versions.get(stream, NO_STREAM):
                continue
            self.states[stream] = fold(await self.store.read_stream(stream))

    # --- firing --------------------------------------------------------------------------------

    async def _evaluate(
        self,
        stream: str,
        entry: FlowEntry,
        trigger: ScheduledTrigger,
        state: TriggerState,
        now: dt.datetime,
    ) -> dt.datetime | None:
        """Fire what is due for one trigger; return its next tick."""
        # Ticks are owed from the last one fired; a trigger never fired owes them from when its
        # revision was deployed (the same instant for every scheduler), and a trigger enabled
        # again owes none from while it was disabled.
        base = state.last if state.last is not None else entry.deployed_at
        if state.enabled_at is not None and state.enabled_at > base:
            base = state.enabled_at
        if (
            state.last is not None
            and state.expected is not None
            and trigger.next_fire(state.last) != state.expected
            and entry.deployed_at > base
        ):
            # The schedule changed since its last tick (a new cron, another time zone): the
            # new one owes ticks from the revision that changed it, as a new trigger would.
            base = entry.deployed_at
        cursor = self._cursors.get(stream)
        evaluated_from = max(base, cursor) if cursor is not None else base
        decided = plan(
            trigger,
            evaluated_from,
            now,
            lambda tick: holds(entry.namespace, entry.flow_id, trigger, tick),
        )
        if decided.skipped or decided.fire:
            await self._append(stream, entry, trigger, state, decided, now)
        if decided.cursor is not None:
            self._cursors[stream] = decided.cursor
        self._failing.pop(stream, None)
        return trigger.next_fire(decided.cursor or evaluated_from)

    async def _append(
        self,
        stream: str,
        entry: FlowEntry,
        trigger: ScheduledTrigger,
        state: TriggerState,
        decided: Plan,
        now: dt.datetime,
    ) -> None:
        head: list[ev.Event] = []
        if decided.skipped:
            head.append(
                ev.TriggerSkipped(
                    namespace=entry.namespace,
                    flowId=entry.flow_id,
                    triggerId=trigger.id,
                    date=trigger.local(decided.skipped[-1]).isoformat(),
                    count=len(decided.skipped) + decided.dropped,
                    reason=f"missed while no scheduler ran (recoverMissedSchedules "
                    f"{trigger.recover_mode()})",
                )
            )
        items: list[tuple[list[ev.Event], str, ev.ExecutionCreated | None]] = []
        for i, tick in enumerate(decided.fire):
            fired, created = await self._fire(stream, entry, trigger, tick)
            events: list[ev.Event] = [*head, fired] if i == 0 else [fired]
            items.append((events, f"trigger-fire:{stream}:{_utc(tick)}", created))
        if not decided.fire:
            items.append((head, f"trigger-skip:{stream}:{_utc(decided.skipped[-1])}", None))
        results = await self._commit(stream, state, items)
        state.last = decided.fire[-1] if decided.fire else decided.skipped[-1]
        state.expected = trigger.next_fire(state.last) if decided.fire else None
        # A tick another scheduler fired first is answered `duplicate` (same command id): it
        # is in the store once, and counted here as lost, not fired.
        mine = [r for r in results if r.stream_id == stream][: len(decided.fire)]
        written = sum(1 for r in mine if r.status == "written")
        self.fired += written
        self.lost += len(mine) - written
        started = [r.stream_id.removeprefix("exec:") for r in results if r.stream_id != stream]
        state.watched = [*state.watched, *started][-50:]
        if decided.fire:
            log.info(
                "Trigger %s fired %d tick(s), the last %s",
                stream.removeprefix("trigger:"),
                len(decided.fire),
                trigger.local(decided.fire[-1]).isoformat(),
            )

    async def _commit(
        self,
        stream: str,
        state: TriggerState,
        items: list[tuple[list[ev.Event], str, ev.ExecutionCreated | None]],
    ) -> list[AppendResult]:
        """Append each item's trigger events (at the versions that follow the state's) and its
        execution, in one transaction; `_Unowned` when the trigger stream moved meanwhile."""
        requests: list[Append] = []
        mine: list[str] = []
        version = state.version
        meta = {"actor": ACTOR}
        for events, command, created in items:
            requests.append(Append(stream, events, version, command, meta))
            mine.append(command)
            version += len(events)
            if created is not None:
                requests.append(
                    Append(
                        ev.execution_stream(created.executionId),
                        [created],
                        NO_STREAM,
                        f"trigger-exec:{created.executionId}",
                        meta,
                    )
                )
        first = state.version + 1

        def owned(conn: psycopg.Connection[Any]) -> None:
            # In the append's transaction: every trigger event of this pass landed where it was
            # decided, or nothing is kept (an execution never outlives its tick's event).
            conn.execute(
                "SELECT 1 / (SELECT CASE WHEN count(*) = %s THEN 1 ELSE 0 END FROM events"
                " WHERE stream_id = %s AND version >= %s AND command_id = ANY(%s))",
                (len(mine), stream, first, mine),
            )

        try:
            results = await self.store.append_many(requests, extra=owned)
        except psycopg.errors.DivisionByZero:
            raise _Unowned(stream) from None
        if any(r.status == "conflict" for r in results if r.stream_id == stream):
            raise _Unowned(stream)
        for result in results:
            if result.stream_id == stream:
                state.version = max(state.version, result.version)
        return results

    async def _backfill(
        self, stream: str, entry: FlowEntry, trigger: ScheduledTrigger, state: TriggerState
    ) -> bool:
        """Fire the next ticks of the trigger's running backfill, a few per pass so that live
        work keeps its share; whether more remain."""
        backfill = state.backfill
        if backfill is None or backfill.ended or backfill.paused:
            return False
        after = backfill.cursor or (backfill.start - dt.timedelta(microseconds=1))
        ticks: list[dt.datetime] = []
        tick = trigger.next_fire(after)
        looked = 0
        while tick is not None and tick < backfill.end and len(ticks) < BACKFILL_BATCH:
            looked += 1
            if holds(entry.namespace, entry.flow_id, trigger, tick):
                ticks.append(tick)
            elif looked > MAX_TICKS_LOOKED_AT:
                break
            tick = trigger.next_fire(tick)
        done = tick is None or tick >= backfill.end
        items: list[tuple[list[ev.Event], str, ev.ExecutionCreated | None]] = []
        for at in ticks:
            fired, created = await self._fire(stream, entry, trigger, at, backfill)
            items.append(([fired], f"backfill-fire:{backfill.id}:{_utc(at)}", created))
        if done:
            ended = ev.BackfillEnded(
                namespace=entry.namespace,
                flowId=entry.flow_id,
                triggerId=trigger.id,
                backfillId=backfill.id,
                fired=backfill.fired + len(ticks),
            )
            items.append(([ended], f"backfill-end:{backfill.id}", None))
        if not items:
            return False
        await self._commit(stream, state, items)
        if ticks:
            backfill.cursor = ticks[-1]
            backfill.fired += len(ticks)
        backfill.ended = done
        return not done

    async def _fire(
        self,
        stream: str,
        entry: FlowEntry,
        trigger: ScheduledTrigger,
        tick: dt.datetime,
        backfill: BackfillState | None = None,
    ) -> tuple[ev.TriggerFired, ev.ExecutionCreated | None]:
        """The tick's event and the execution it starts (None, with the reason recorded on the
        tick, when the execution cannot be made: its inputs fail, say)."""
        flow = entry.flow
        assert flow is not None
        variables = tick_variables(trigger, tick)
        execution_id = execution_id_for(stream, tick, backfill.id if backfill else None)
        fired = ev.TriggerFired(
            namespace=entry.namespace,
            flowId=entry.flow_id,
            triggerId=trigger.id,
            date=variables["date"],
            next=variables["next"],
            executionId=execution_id,
            backfill=backfill is not None,
        )
        try:
            created = await self._execution(entry, flow, trigger, execution_id, variables, backfill)
        except (TiercelError, ValueError, TypeError) as exc:
            if is_transient(exc):
                raise
            reason = describe(exc)
            log.warning(
                "Trigger %s: no execution for tick %s: %s",
                stream.removeprefix("trigger:"),
                variables["date"],
                reason,
            )
            return msgspec.structs.replace(fired, executionId=None, error=reason[:2000]), None
        return fired, created

    async def _execution(
        self,
        entry: FlowEntry,
        flow: Flow,
        trigger: ScheduledTrigger,
        execution_id: str,
        variables: dict[str, Any],
        backfill: BackfillState | None = None,
    ) -> ev.ExecutionCreated:
        given = render_inputs(
            trigger,
            entry.namespace,
            entry.flow_id,
            entry.revision,
            execution_id,
            variables,
            backfill.inputs if backfill else None,
        )
        return await trigger_execution(
            self.store,
            entry,
            flow,
            trigger,
            execution_id,
            variables,
            given,
            backfill_labels=backfill.labels if backfill is not None else None,
        )

    # --- stopAfter -----------------------------------------------------------------------------

    async def _stop_after(self, active: Sequence[tuple[str, FlowEntry, Trigger]]) -> None:
        """Disable each trigger one of whose executions ended in a state of its `stopAfter`."""
        watched = {
            stream: (entry, trigger, self.states[stream])
            for stream, entry, trigger in active
            if trigger.stopAfter
            and stream in self.states
            and self.states[stream].enabled
            and self.states[stream].watched
        }
        if not watched:
            return
        streams = [
            ev.execution_stream(e) for _, _, state in watched.values() for e in state.watched
        ]
        rows = await self.store.db.fetchall(
            "SELECT stream_id, data->>'state' AS state FROM events"
            " WHERE stream_id = ANY(%s) AND type = 'ExecutionStateChanged'"
            " AND data->>'state' = ANY(%s)",
            (streams, sorted(TERMINAL_STATES)),
        )
        ended = {r["stream_id"].removeprefix("exec:"): r["state"] for r in rows}
        for stream, (entry, trigger, state) in watched.items():
            stops = {s.upper() for s in trigger.stopAfter or []}
            hit = next((e for e in state.watched if ended.get(e) in stops), None)
            if hit is None:
                continue
            toggled = ev.TriggerToggled(
                namespace=entry.namespace,
                flowId=entry.flow_id,
                triggerId=trigger.id,
                enabled=False,
                reason=f"stopAfter: execution {hit} ended in {ended[hit]}",
            )
            results = await self.store.append_many(
                [Append(stream, [toggled], state.version, None, {"actor": ACTOR})]
            )
            self.states.pop(stream, None)  # read again next pass
            if results and results[0].status == "written":
                log.info("Trigger %s disabled: %s", stream, toggled.reason)

    # --- polling triggers (an HTTP endpoint, ...) ----------------------------------------------

    _poll_nursery: trio.Nursery | None = None
    """Where `run` makes polls, beside the passes (a slow endpoint never delays a tick); a
    pass run on its own (`run_once`) waits for its polls instead."""

    async def _polls(self, now: dt.datetime, soonest: dt.datetime) -> dt.datetime:
        """Poll every enabled polling trigger whose `interval` has passed since its last poll
        (all at once, each in a worker thread); return when the next poll is due (or `soonest`
        when sooner)."""
        if not hasattr(self, "_in_flight"):
            self._in_flight: set[str] = set()
        polling: list[tuple[str, FlowEntry, Trigger]] = []
        for entry in self.flows.values():
            flow = entry.flow
            if flow is None or flow.disabled or not self._mine(entry.namespace):
                continue
            for trigger in flow.triggers:
                if isinstance(trigger, PollingTrigger) and not trigger.disabled:
                    stream = ev.trigger_stream(entry.namespace, entry.flow_id, trigger.id)
                    polling.append((stream, entry, trigger))
        if not polling:
            return soonest
        await self._refresh_states([stream for stream, _, _ in polling])
        await self._stop_after(polling)
        due: list[tuple[str, FlowEntry, PollingTrigger, TriggerState]] = []
        for stream, entry, trigger in polling:
            assert isinstance(trigger, PollingTrigger)
            state = self.states.get(stream, TriggerState())
            if not state.enabled or stream in self._in_flight:
                continue
            every = trigger.poll_interval()
            # The first poll is made at once; the next ones `interval` after the last, whichever
            # scheduler made it.
            at = state.polled + every if state.polled is not None else now
            if at > now:
                soonest = min(soonest, at)
                continue
            due.append((stream, entry, trigger, state))
            soonest = min(soonest, now + every)
        if due and self._poll_nursery is not None:
            for stream, entry, trigger, state in due:
                self._in_flight.add(stream)
                self._poll_nursery.start_soon(self._poll_aside, stream, entry, trigger, state, now)
        elif due:
            async with trio.open_nursery() as nursery:
                for stream, entry, trigger, state in due:
                    nursery.start_soon(self._poll, stream, entry, trigger, state, now)
        return soonest

    async def _poll_aside(
        self,
        stream: str,
        entry: FlowEntry,
        trigger: PollingTrigger,
        state: TriggerState,
        now: dt.datetime,
    ) -> None:
        """`_poll` beside the passes: a database error costs this poll only (the next pass
        sees the database away and waits it out)."""
        try:
            await self._poll(stream, entry, trigger, state, now)
        except Exception as exc:
            self._report(stream, exc)
            self.states.pop(stream, None)
        finally:
            self._in_flight.discard(stream)

    async def _poll(
        self,
        stream: str,
        entry: FlowEntry,
        trigger: PollingTrigger,
        state: TriggerState,
        now: dt.datetime,
    ) -> None:
        """Take one poll (its record appended at the stream's expected version: when another
        scheduler took it first, nothing is done), make it, and when it answers, record the
        fire and its execution in one commit."""
        date = _utc(now)
        claim = ev.TriggerPolled(
            namespace=entry.namespace, flowId=entry.flow_id, triggerId=trigger.id, date=date
        )
        try:
            taken = await self.store.append(
                stream, [claim], expected_version=state.version, meta={"actor": ACTOR}
            )
        except WrongExpectedVersion:
            self.lost += 1
            self.states.pop(stream, None)  # read again next pass
            return
        state.version = taken.version
        state.polled = now
        variables = {
            "flow": {"id": entry.flow_id, "namespace": entry.namespace},
            "trigger": {"date": date},
        }
        ctx = PollContext(variables=variables, render=render_typed)
        try:
            with trio.fail_after(trigger.poll_timeout()):
                found = await trio.to_thread.run_sync(trigger.poll, ctx, abandon_on_cancel=True)
            if found is None or not self._poll_holds(entry, trigger, now, found):
                self._failing.pop(stream, None)
                return
            await self._poll_fire(stream, entry, trigger, state, date, found)
        except _Unowned:
            self.lost += 1
            self.states.pop(stream, None)
        except trio.TooSlowError:
            self._report(stream, TimeoutError(f"the poll took over {trigger.poll_timeout()}s"))
        except Exception as exc:
            if is_transient(exc):
                raise
            self._report(stream, exc)  # the next poll comes at its interval
        else:
            self._failing.pop(stream, None)

    def _poll_holds(
        self, entry: FlowEntry, trigger: PollingTrigger, now: dt.datetime, found: dict[str, Any]
    ) -> bool:
        """Whether every condition of the trigger holds for a poll that matched; one that
        cannot be evaluated does not."""
        if not trigger.conditions:
            return True
        variables = {
            "trigger": {**found, "date": _utc(now)},
            "flow": {"id": entry.flow_id, "namespace": entry.namespace},
        }
        ctx = ConditionContext(date=now, variables=variables, render=render_typed)
        try:
            return all(condition.test(ctx) for condition in trigger.conditions)
        except Exception as exc:
            if is_transient(exc):
                raise
            return False

    async def _poll_fire(
        self,
        stream: str,
        entry: FlowEntry,
        trigger: PollingTrigger,
        state: TriggerState,
        date: str,
        found: dict[str, Any],
    ) -> None:
        flow = entry.flow
        assert flow is not None
        execution_id = short_id("poll", stream, date)
        variables = {**found, "date": date}
        fired = ev.TriggerFired(
            namespace=entry.namespace,
            flowId=entry.flow_id,
            triggerId=trigger.id,
            date=date,
            executionId=execution_id,
        )
        created: ev.ExecutionCreated | None = None
        try:
            created = await trigger_execution(
                self.store, entry, flow, trigger, execution_id, variables, {}
            )
        except (TiercelError, ValueError, TypeError) as exc:
            if is_transient(exc):
                raise
            reason = describe(exc)
            fired = msgspec.structs.replace(fired, executionId=None, error=reason[:2000])
        await self._commit(stream, state, [([fired], f"trigger-poll:{stream}:{date}", created)])
        if created is not None:
            self.fired += 1
            state.watched = [*state.watched, execution_id][-50:]
            log.info(
                "Trigger %s fired: execution %s", stream.removeprefix("trigger:"), execution_id
            )


def _utc(at: dt.datetime) -> str:
    return at.astimezone(dt.UTC).isoformat()


async def trigger_execution(
    store: EventStore,
    entry: FlowEntry,
    flow: Flow,
    trigger: Trigger,
    execution_id: str,
    variables: dict[str, Any],
    given: dict[str, Any],
    correlation: str | None = None,
    *,
    backfill_labels: Any = None,
) -> ev.ExecutionCreated:
    """The creation of an execution a trigger starts: its inputs checked and encrypted, the
    labels of the flow, the trigger (and backfill) and the correlation id (its own id unless
    given), and Kestra's trigger shape with `variables`."""
    values = await resolve_inputs_off_loop(flow, given)
    values = await encrypt_inputs(store.db, flow, values, execution_id)
    if entry.recorded is None:
        entry.recorded = flow_to_dict(msgspec.structs.replace(flow, revision=entry.revision))
    labels = {**flow.labels, **_labels(trigger.labels)}
    if backfill_labels is not None:
        labels.update(_labels(backfill_labels))
    labels["system.correlationId"] = correlation or execution_id
    return ev.ExecutionCreated(
        executionId=execution_id,
        namespace=entry.namespace,
        flowId=entry.flow_id,
        flowRevision=entry.revision,
        flow=entry.recorded,
        inputs=values,
        labels=[{"key": k, "value": v} for k, v in labels.items()],
        trigger={"id": trigger.id, "type": trigger.type, "variables": variables},
        concurrencyLimited=limit_of(flow.concurrency) is not None,
        rules=RULES,
    )


def _labels(given: Any) -> dict[str, str]:
    if isinstance(given, dict):
        return {str(k): str(v) for k, v in given.items()}
    if isinstance(given, list):
        return {
            str(item["key"]): str(item.get("value"))
            for item in given
            if isinstance(item, dict) and "key" in item
        }
    return {}


# --- backfills and trigger state, as commands (the API's) ----------------------------------------

MAX_BACKFILL_TICKS = 100_000
"""Ticks one backfill may fire at most."""


async def _scheduled(
    store: EventStore, namespace: str, flow_id: str, trigger_id: str
) -> tuple[int, Flow, ScheduledTrigger]:
    from engine.commands import flow_to_run

    record, flow = await flow_to_run(store, namespace, flow_id)
    ids = [t.id for t in flow.triggers]
    trigger = next((t for t in flow.triggers if t.id == trigger_id), None)
    if trigger is None:
        raise NotFound(
            f"Flow {namespace}.{flow_id} has no trigger '{trigger_id}'"
            + (f"; it has {', '.join(ids)}" if ids else "; it has no triggers")
        )
    if not isinstance(trigger, ScheduledTrigger):
        raise InvalidRequest(
            f"Trigger '{trigger_id}' of {namespace}.{flow_id} is a {trigger.type}: only "
            "scheduled triggers (Schedule) have ticks to backfill"
        )
    return record.revision, flow, trigger


async def start_backfill(
    store: EventStore,
    namespace: str,
    flow_id: str,
    trigger_id: str,
    *,
    start: dt.datetime,
    end: dt.datetime | None = None,
    inputs: dict[str, Any] | None = None,
    labels: list[dict[str, str]] | None = None,
    actor: str = "api",
) -> dict[str, Any]:
    """Ask for one execution per tick of a scheduled trigger from `start` (included) to `end`
    (excluded; now by default), fired by the scheduler at its pace; return the trigger's
    state. `InvalidRequest` for an empty or too long range or inputs the flow refuses,
    `Conflict` while another backfill of the trigger has not ended."""
    revision, flow, trigger = await _scheduled(store, namespace, flow_id, trigger_id)
    end = end or dt.datetime.now(dt.UTC)
    if start.tzinfo is None or end.tzinfo is None:
        raise InvalidRequest("`start` and `end` need a time zone offset (2024-01-01T00:00:00Z)")
    if end <= start:
        raise InvalidRequest(f"The backfill's end ({end.isoformat()}) must come after its start")

    def count() -> list[dt.datetime]:
        found: list[dt.datetime] = []
        tick = trigger.next_fire(start - dt.timedelta(microseconds=1))
        while tick is not None and tick < end and len(found) <= MAX_BACKFILL_TICKS:
            if holds(namespace, flow_id, trigger, tick):
                found.append(tick)
            tick = trigger.next_fire(tick)
        return found

    # A long range of a fine cron takes seconds to walk: not on the event loop.
    ticks = await trio.to_thread.run_sync(count)
    if not ticks:
        raise InvalidRequest(
            f"Trigger '{trigger_id}' has no tick between {start.isoformat()} and "
            f"{end.isoformat()}: nothing to backfill"
        )
    if len(ticks) > MAX_BACKFILL_TICKS:
        raise InvalidRequest(
            f"The backfill would start more than {MAX_BACKFILL_TICKS} executions: "
            "split it into shorter ranges"
        )
    stream = ev.trigger_stream(namespace, flow_id, trigger_id)
    history = await store.read_stream(stream)
    state = fold(history)
    running = state.backfill
    if running is not None and not running.ended:
        raise Conflict(
            f"Trigger '{trigger_id}' has a backfill that has not ended ({running.fired} of "
            f"{running.total} fired{', paused' if running.paused else ''}): wait for it"
        )
    backfill_id = short_id("backfill", stream, str(state.version), _utc(start), _utc(end))
    # The inputs are checked once now, on the first tick: a backfill the flow refuses is
    # refused here rather than recorded tick after tick.
    first = ticks[0]
    execution_id = execution_id_for(stream, first, backfill_id)
    given = render_inputs(
        trigger, namespace, flow_id, revision, execution_id, tick_variables(trigger, first), inputs
    )
    await resolve_inputs_off_loop(flow, given)
    started = ev.BackfillStarted(
        namespace=namespace,
        flowId=flow_id,
        triggerId=trigger_id,
        backfillId=backfill_id,
        start=trigger.local(start).isoformat(),
        end=trigger.local(end).isoformat(),
        total=len(ticks),
        inputs=dict(inputs or {}),
        labels=list(labels or []),
    )
    try:
        await store.append(stream, [started], expected_version=state.version, meta={"actor": actor})
    except WrongExpectedVersion:
        raise Conflict(
            f"Trigger '{trigger_id}' changed while the backfill was being asked for: try again"
        ) from None
    return await trigger_status(store, namespace, flow_id, trigger_id)


async def pause_backfill(
    store: EventStore,
    namespace: str,
    flow_id: str,
    trigger_id: str,
    paused: bool,
    *,
    actor: str = "api",
) -> dict[str, Any]:
    """Pause (or resume) the trigger's running backfill; return the trigger's state.
    `NotFound` when it has no backfill that has not ended."""
    await _scheduled(store, namespace, flow_id, trigger_id)
    stream = ev.trigger_stream(namespace, flow_id, trigger_id)
    for _ in range(20):
        state = fold(await store.read_stream(stream))
        backfill = state.backfill
        if backfill is None or backfill.ended:
            raise NotFound(
                f"Trigger '{trigger_id}' of {namespace}.{flow_id} has no running backfill"
            )
        if backfill.paused == paused:
            break
        kind = ev.BackfillPaused if paused else ev.BackfillResumed
        event = kind(
            namespace=namespace, flowId=flow_id, triggerId=trigger_id, backfillId=backfill.id
        )
        try:
            await store.append(
                stream, [event], expected_version=state.version, meta={"actor": actor}
            )
        except WrongExpectedVersion:
            continue  # the scheduler fired a tick meanwhile
        break
    return await trigger_status(store, namespace, flow_id, trigger_id)


async def trigger_status(
    store: EventStore, namespace: str, flow_id: str, trigger_id: str
) -> dict[str, Any]:
    """A trigger's state in the shape of Kestra's trigger context: its last tick, its next
    one, whether it is disabled, and its backfill with its progress."""
    _, _, trigger = await _scheduled(store, namespace, flow_id, trigger_id)
    state = fold(await store.read_stream(ev.trigger_stream(namespace, flow_id, trigger_id)))
    following = trigger.next_fire(state.last or dt.datetime.now(dt.UTC))
    return {
        "namespace": namespace,
        "flowId": flow_id,
        "triggerId": trigger_id,
        "type": trigger.type,
        "date": trigger.local(state.last).isoformat() if state.last else None,
        "nextExecutionDate": trigger.local(following).isoformat() if following else None,
        "disabled": trigger.disabled or not state.enabled,
        "backfill": state.backfill.json(trigger) if state.backfill else None,
    }


# --- Flow triggers: executions that end start other flows ---------------------------------------

FLOW_TRIGGERS = "scheduler:flow-triggers"
"""The checkpoint (and health component) of the Flow trigger subscription."""
MAX_FLOW_TRIGGER_TRIES = 20
"""Appends to one trigger stream retried at most, when another scheduler moved it meanwhile."""


@dataclasses.dataclass
class GroupedState:
    """A Flow trigger's stream folded: whether it is enabled, and which grouped conditions
    were met (since it last fired, for groups that reset)."""

    version: int = NO_STREAM
    enabled: bool = True
    met: list[ev.TriggerConditionMet] = dataclasses.field(default_factory=list)
    """Conditions met since the trigger last fired."""
    kept: list[ev.TriggerConditionMet] = dataclasses.field(default_factory=list)
    """Every condition met (for groups that do not reset)."""
    handled: set[str] = dataclasses.field(default_factory=set)
    """Ended executions already recorded in the stream (each is judged once)."""


def fold_grouped(history: list[StoredEvent]) -> GroupedState:
    """A Flow trigger's state from its stream."""
    state = GroupedState()
    for stored in history:
        state.version = stored.version
        event = stored.event
        if isinstance(event, ev.TriggerToggled):
            state.enabled = event.enabled
        elif isinstance(event, ev.TriggerConditionMet):
            state.met.append(event)
            state.kept = [*state.kept[-999:], event]
            state.handled.add(event.executionId)
        elif isinstance(event, ev.TriggerFired):
            state.met = []
    return state


def groups_met(
    groups: list[ConditionGroup], state: GroupedState, new: list[ev.TriggerConditionMet]
) -> bool:
    """Whether every key of every group was met within the window of the latest condition
    met (`new`, all of the same ended execution)."""
    at = _parse(new[0].date)
    for group in groups:
        bounds = group.window.bounds(at)
        if bounds is None:
            return False
        start, end = bounds
        seen = [*(state.met if group.reset else state.kept), *new]
        keys = {m.key for m in seen if m.condition == group.id and start <= _parse(m.date) <= end}
        if not set(group.keys) <= keys:
            return False
    return True


class FlowTriggers:
    """Starts the flows whose Flow triggers an ended execution satisfies (a section of the
    scheduler, with a subscription of its own to `ExecutionStateChanged`).

    The started execution's id is derived from the ended execution and the trigger, and its
    stream must not exist yet: each pair starts at most one execution, whatever the number of
    schedulers and restarts. The conditions of a `MultipleCondition` (or `preconditions`) that
    an execution meets are recorded in the trigger's stream (`TriggerConditionMet`), at its
    expected version; the event that completes the group appends `TriggerFired` with them and
    the execution in the same commit.
    """

    def __init__(self, scheduler: Scheduler, notifier: Notifier | None) -> None:
        self.scheduler = scheduler
        self.store = scheduler.store
        self.notifier = notifier
        self.name = FLOW_TRIGGERS + (f":{scheduler.namespace}" if scheduler.namespace else "")
        self.started = 0
        """Executions this scheduler started through Flow triggers."""
        self._cache: Scheduler | None = None
        """The latest revision of every flow, kept apart from the tick loop's (each refreshes
        its own, at its own pace, without waiting on the other)."""

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Follow ended executions until cancelled (needs a notifier)."""
        from engine.subscription import Subscription

        if self.notifier is None:
            task_status.started()
            return
        position = await self._position()
        sub = Subscription(
            self.store,
            self.notifier,
            position=position,
            types=["ExecutionStateChanged"],
            name=self.name,
            health=self.scheduler.health,
        )
        await sub.run(self.handle, task_status=task_status)

    async def _position(self) -> int:
        row = await self.store.db.fetchone(
            "SELECT position FROM checkpoints WHERE name = %s", (self.name,)
        )
        if row is not None:
            return int(row["position"])
        # A first start judges the executions that end from now on, not the whole history.
        head = await self.store.db.fetchone("SELECT coalesce(max(seq), 0) AS seq FROM events")
        position = int(head["seq"]) if head else 0
        await self._save(position)
        return position

    async def _save(self, position: int) -> None:
        await self.store.db.execute(
            "INSERT INTO checkpoints (name, position) VALUES (%s, %s) ON CONFLICT (name) DO UPDATE"
            " SET position = greatest(checkpoints.position, EXCLUDED.position), updated_at = now()",
            (self.name, position),
        )

    def _triggers(self) -> list[tuple[FlowEntry, ExecutionTrigger]]:
        found = []
        assert self._cache is not None
        for entry in self._cache.flows.values():
            flow = entry.flow
            if flow is None or flow.disabled or not self.scheduler._mine(entry.namespace):
                continue
            for trigger in flow.triggers:
                if isinstance(trigger, ExecutionTrigger) and not trigger.disabled:
                    found.append((entry, trigger))
        return found

    async def handle(self, batch: list[StoredEvent]) -> None:
        """Judge every execution of the batch that ended (or reached a state a trigger's
        `states` names, RUNNING or PAUSED) against every Flow trigger."""
        changes = [s for s in batch if isinstance(s.event, ev.ExecutionStateChanged)]
        if changes:
            if self._cache is None:
                self._cache = Scheduler(
                    self.store,
                    None,
                    health=self.scheduler.health,
                    namespace=self.scheduler.namespace,
                )
            await self._cache._refresh_flows()
            triggers = self._triggers()
            watched = set(TERMINAL_STATES).union(*(t.states_watched() for _, t in triggers))
            ended = [
                s
                for s in changes
                if isinstance(s.event, ev.ExecutionStateChanged) and s.event.state in watched
            ]
            if triggers and ended:
                await self._judge(ended, triggers)
        await self._save(batch[-1].seq)

    async def _judge(
        self, ended: list[StoredEvent], triggers: list[tuple[FlowEntry, ExecutionTrigger]]
    ) -> None:
        ids = [s.event.executionId for s in ended if isinstance(s.event, ev.ExecutionStateChanged)]
        rows = await self.store.db.fetchall(
            "SELECT stream_id, data FROM events WHERE stream_id = ANY(%s)"
            " AND type = 'ExecutionCreated'",
            ([ev.execution_stream(i) for i in ids],),
        )
        created = {r["stream_id"].removeprefix("exec:"): r["data"] for r in rows}
        for stored in ended:
            event = stored.event
            assert isinstance(event, ev.ExecutionStateChanged)
            upstream = created.get(event.executionId)
            if upstream is None:
                continue
            await self._stop_after(upstream, event, triggers)
            for entry, trigger in triggers:
                if (entry.namespace, entry.flow_id) == (upstream["namespace"], upstream["flowId"]):
                    continue  # a flow is not started by its own executions (no loop)
                stream = ev.trigger_stream(entry.namespace, entry.flow_id, trigger.id)
                try:
                    await self._one(stream, entry, trigger, stored, event, upstream)
                except Exception as exc:
                    if is_transient(exc):
                        raise  # the database is away: the batch is handled again
                    self.scheduler._report(stream, exc)  # one bad trigger never stops others

    async def _stop_after(
        self,
        upstream: dict[str, Any],
        event: ev.ExecutionStateChanged,
        triggers: list[tuple[FlowEntry, ExecutionTrigger]],
    ) -> None:
        """Disable the Flow trigger that started this execution when it ended in a state of
        the trigger's `stopAfter`."""
        started_by = upstream.get("trigger") or {}
        for entry, trigger in triggers:
            if (
                (entry.namespace, entry.flow_id) != (upstream["namespace"], upstream["flowId"])
                or trigger.id != started_by.get("id")
                or event.state not in {s.upper() for s in trigger.stopAfter or []}
            ):
                continue
            stream = ev.trigger_stream(entry.namespace, entry.flow_id, trigger.id)
            toggled = ev.TriggerToggled(
                namespace=entry.namespace,
                flowId=entry.flow_id,
                triggerId=trigger.id,
                enabled=False,
                reason=f"stopAfter: execution {event.executionId} ended in {event.state}",
            )
            # Once per execution: a restart reading it again adds nothing.
            command = f"stop-after:{stream}:{event.executionId}"
            await self.store.append_many(
                [Append(stream, [toggled], ANY, command, {"actor": ACTOR})]
            )
            log.info("Trigger %s disabled: %s", stream.removeprefix("trigger:"), toggled.reason)

    async def _one(
        self,
        stream: str,
        entry: FlowEntry,
        trigger: ExecutionTrigger,
        stored: StoredEvent,
        event: ev.ExecutionStateChanged,
        upstream: dict[str, Any],
    ) -> None:
        labels = _labels(upstream.get("labels"))
        variables = {
            "executionId": event.executionId,
            "namespace": upstream["namespace"],
            "flowId": upstream["flowId"],
            "flowRevision": upstream.get("flowRevision"),
            "state": event.state,
            "outputs": event.outputs or {},
        }
        ctx = ConditionContext(
            date=stored.recorded_at,
            variables={
                "trigger": variables,
                "labels": labels,
                "flow": {"id": entry.flow_id, "namespace": entry.namespace},
            },
            render=lambda e, v: render_typed(e, v),
        )
        terminal = event.state in TERMINAL_STATES
        if not terminal and event.state not in trigger.states_watched():
            return
        if not trigger.accepts(ctx):
            return
        # Only ended executions count towards a window.
        groups = trigger.groups() if terminal else []
        # An execution starts a trigger once when it ends (and once per other state named).
        at_state = () if terminal else (event.state,)
        execution_id = short_id("flow-trigger", stream, event.executionId, *at_state)
        correlation = labels.get("system.correlationId", event.executionId)
        if not groups:
            state = fold_grouped(await self.store.read_stream(stream))
            if not state.enabled:
                return
            new = await self._execution(entry, trigger, execution_id, variables, correlation)
            results = await self.store.append_many([self._create(new)])
            self._count(results)
            return
        date = _utc(stored.recorded_at)
        met = [
            ev.TriggerConditionMet(
                namespace=entry.namespace,
                flowId=entry.flow_id,
                triggerId=trigger.id,
                condition=group.id,
                key=key,
                executionId=event.executionId,
                date=date,
            )
            for group in groups
            for key, test in group.keys.items()
            if test(ctx)
        ]
        if not met:
            return
        for _ in range(MAX_FLOW_TRIGGER_TRIES):
            state = fold_grouped(await self.store.read_stream(stream))
            if not state.enabled or event.executionId in state.handled:
                return  # judged already (by another scheduler, or before a restart)
            events: list[ev.Event] = list(met)
            requests = []
            if groups_met(groups, state, met):
                new = await self._execution(entry, trigger, execution_id, variables, correlation)
                events.append(
                    ev.TriggerFired(
                        namespace=entry.namespace,
                        flowId=entry.flow_id,
                        triggerId=trigger.id,
                        date=date,
                        executionId=execution_id,
                    )
                )
                requests.append(self._create(new))
            command = f"flow-trigger:{stream}:{event.executionId}"
            requests.insert(0, Append(stream, events, state.version, command, {"actor": ACTOR}))

            def owned(
                conn: psycopg.Connection[Any], version: int = state.version, command: str = command
            ) -> None:
                # In the append's transaction: the conditions and the firing landed where they
                # were decided, or nothing is kept (no execution without its trigger events).
                conn.execute(
                    "SELECT 1 / (SELECT count(*) FROM events WHERE stream_id = %s"
                    " AND version > %s AND command_id = %s)",
                    (stream, version, command),
                )

            try:
                results = await self.store.append_many(requests, extra=owned)
            except psycopg.errors.DivisionByZero:
                self.scheduler.lost += 1
                continue  # another scheduler moved the stream: judge again on its state
            self._count(results[1:])
            return
        raise Conflict(f"Trigger {stream} kept moving: execution {event.executionId} not judged")

    def _count(self, results: list[AppendResult]) -> None:
        written = sum(1 for r in results if r.status == "written")
        self.started += written
        self.scheduler.fired += written

    @staticmethod
    def _create(created: ev.ExecutionCreated) -> Append:
        return Append(
            ev.execution_stream(created.executionId),
            [created],
            NO_STREAM,
            f"trigger-exec:{created.executionId}",
            {"actor": ACTOR},
        )

    async def _upstream_context(self, variables: dict[str, Any]) -> dict[str, Any]:
        """What a Flow trigger's `inputs` render with, as in Kestra: the ended execution's
        context (its task `outputs`, `execution`, `flow`, `labels`) and `trigger`."""
        from engine.commands import load_execution
        from engine.execution.context import labels_view, outputs_view

        upstream = await load_execution(self.store, variables["executionId"])
        return {
            "trigger": variables,
            "outputs": outputs_view(upstream),
            "labels": labels_view(upstream.labels),
            "flow": {
                "id": variables["flowId"],
                "namespace": variables["namespace"],
                "revision": variables["flowRevision"],
            },
            "execution": {"id": variables["executionId"], "state": variables["state"]},
        }

    async def _execution(
        self,
        entry: FlowEntry,
        trigger: ExecutionTrigger,
        execution_id: str,
        variables: dict[str, Any],
        correlation: str,
    ) -> ev.ExecutionCreated:
        flow = entry.flow
        assert flow is not None
        written = trigger.execution_inputs()
        given: dict[str, Any] = {}
        if written:
            given = render_value(written, await self._upstream_context(variables))
        return await trigger_execution(
            self.store, entry, flow, trigger, execution_id, variables, given, correlation
        )
