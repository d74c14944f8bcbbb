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
from collections.abc import Callable
from typing import Any

import msgspec
import psycopg
import trio

from engine import events as ev
from engine.backoff import Backoff, describe, is_transient
from engine.db import Notifier
from engine.errors import TiercelError
from engine.execution import short_id
from engine.flow import Flow, flow_to_dict, parse_flow
from engine.health import Health
from engine.inputs import resolve_inputs_off_loop
from engine.plugin import TERMINAL_STATES
from engine.secrets import encrypt_inputs
from engine.store import NO_STREAM, Append, EventStore, StoredEvent
from engine.templating import render_typed, render_value
from engine.triggers import ConditionContext, ScheduledTrigger

log = logging.getLogger(__name__)

COMPONENT = "scheduler"
ACTOR = "scheduler"
GRACE = dt.timedelta(seconds=60)
"""A tick due less than this long ago is on time, not missed (a slow pass, a short outage)."""
MAX_TICKS_PER_PASS = 200
"""Ticks of one trigger fired in one pass at most (a long catch-up goes on in the next)."""
MAX_TICKS_LOOKED_AT = 100_000
"""Ticks of one trigger evaluated in one pass at most (conditions that hold rarely)."""
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
    watched: list[str] = dataclasses.field(default_factory=list)
    """Executions it started since it was last enabled (for `stopAfter`)."""


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
        elif isinstance(event, ev.TriggerFired):
            state.last = _parse(event.date)
            if event.executionId:
                state.watched = [*state.watched[-49:], event.executionId]
        elif isinstance(event, ev.TriggerSkipped):
            state.last = _parse(event.date)
    return state


def _parse(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00"))


def execution_id_for(stream: str, tick: dt.datetime) -> str:
    """The id of the execution a tick starts: the same tick always gives the same id."""
    return short_id("trigger", stream, tick.astimezone(dt.UTC).isoformat())


@dataclasses.dataclass
class Plan:
    """What one pass decided for one trigger: ticks to pass over, then ticks to fire."""

    skipped: list[dt.datetime]
    fire: list[dt.datetime]
    cursor: dt.datetime | None
    """Ticks up to here were evaluated (conditions that did not hold included)."""


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
    looked = 0
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
            due = due[-MAX_TICKS_PER_PASS:]
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
    if mode == "LAST" and skipped and not any(now - t <= GRACE for t in fire):
        last = skipped[-1]
        if late is None or now - last <= late:
            skipped, fire = skipped[:-1], [last, *fire]
    kept = [t for t in fire if holds(t)]
    return Plan(skipped, kept, cursor)


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

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Fire due ticks until cancelled; database errors are waited out."""
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
        cursor = self._cursors.get(stream)
        evaluated_from = max(base, cursor) if cursor is not None else base
        decided = plan(trigger, evaluated_from, now, lambda tick: self._holds(entry, trigger, tick))
        if decided.skipped or decided.fire:
            await self._append(stream, entry, trigger, state, decided, now)
        if decided.cursor is not None:
            self._cursors[stream] = decided.cursor
        self._failing.pop(stream, None)
        return trigger.next_fire(decided.cursor or evaluated_from)

    def _variables(self, trigger: ScheduledTrigger, tick: dt.datetime) -> dict[str, Any]:
        following = trigger.next_fire(tick)
        before = trigger.previous_fire(tick)
        return {
            "date": trigger.local(tick).isoformat(),
            "next": trigger.local(following).isoformat() if following else None,
            "previous": trigger.local(before).isoformat() if before else None,
        }

    def _holds(self, entry: FlowEntry, trigger: ScheduledTrigger, tick: dt.datetime) -> bool:
        if not trigger.conditions:
            return True
        variables = {
            "trigger": self._variables(trigger, tick),
            "flow": {"id": entry.flow_id, "namespace": entry.namespace},
        }
        ctx = ConditionContext(
            date=trigger.local(tick), variables=variables, render=lambda e, v: render_typed(e, v)
        )
        return all(condition.test(ctx) for condition in trigger.conditions)

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
                    count=len(decided.skipped),
                    reason=f"missed while no scheduler ran (recoverMissedSchedules "
                    f"{trigger.recover_mode()})",
                )
            )
        requests: list[Append] = []
        mine: list[str] = []
        version = state.version
        meta = {"actor": ACTOR}
        for i, tick in enumerate(decided.fire):
            fired, created = await self._fire(stream, entry, trigger, tick)
            events: list[ev.Event] = [*head, fired] if i == 0 else [fired]
            command = f"trigger-fire:{stream}:{tick.astimezone(dt.UTC).isoformat()}"
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
        if not decided.fire:
            command = f"trigger-skip:{stream}:{decided.skipped[-1].astimezone(dt.UTC).isoformat()}"
            requests.append(Append(stream, head, version, command, meta))
            mine.append(command)
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
        state.last = decided.fire[-1] if decided.fire else decided.skipped[-1]
        started = [r.stream_id.removeprefix("exec:") for r in results if r.stream_id != stream]
        state.watched = [*state.watched, *started][-50:]
        if decided.fire:
            log.info(
                "Trigger %s fired %d tick(s), the last %s",
                stream.removeprefix("trigger:"),
                len(decided.fire),
                trigger.local(decided.fire[-1]).isoformat(),
            )

    async def _fire(
        self, stream: str, entry: FlowEntry, trigger: ScheduledTrigger, tick: dt.datetime
    ) -> tuple[ev.TriggerFired, ev.ExecutionCreated | None]:
        """The tick's event and the execution it starts (None, with the reason recorded on the
        tick, when the execution cannot be made: its inputs fail, say)."""
        flow = entry.flow
        assert flow is not None
        variables = self._variables(trigger, tick)
        execution_id = execution_id_for(stream, tick)
        fired = ev.TriggerFired(
            namespace=entry.namespace,
            flowId=entry.flow_id,
            triggerId=trigger.id,
            date=variables["date"],
            next=variables["next"],
            executionId=execution_id,
        )
        try:
            created = await self._execution(entry, flow, trigger, execution_id, variables)
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
    ) -> ev.ExecutionCreated:
        context = {
            "trigger": variables,
            "flow": {"id": entry.flow_id, "namespace": entry.namespace, "revision": entry.revision},
            "execution": {"id": execution_id},
        }
        given = render_value(dict(trigger.execution_inputs()), context)
        values = await resolve_inputs_off_loop(flow, given)
        values = await encrypt_inputs(self.store.db, flow, values, execution_id)
        if entry.recorded is None:
            entry.recorded = flow_to_dict(msgspec.structs.replace(flow, revision=entry.revision))
        labels = dict(flow.labels)
        labels.update(_labels(trigger.labels))
        labels["system.correlationId"] = execution_id
        return ev.ExecutionCreated(
            executionId=execution_id,
            namespace=entry.namespace,
            flowId=entry.flow_id,
            flowRevision=entry.revision,
            flow=entry.recorded,
            inputs=values,
            labels=[{"key": k, "value": v} for k, v in labels.items()],
            trigger={"id": trigger.id, "type": trigger.type, "variables": variables},
        )

    # --- stopAfter -----------------------------------------------------------------------------

    async def _stop_after(self, active: list[tuple[str, FlowEntry, ScheduledTrigger]]) -> None:
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
