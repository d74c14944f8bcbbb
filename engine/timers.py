"""The timer service: turns `TimerScheduled` into `TimerFired` when the time comes.

It keeps the pending timers in a table updated with its checkpoint, so a restart loses none,
and fires each timer with a command id, so firing twice records it once. Both of its loops wait
out database errors (reporting `timers` DOWN meanwhile) instead of ending, for the same reasons:
a timer fired twice is recorded once, and one left unfired is found again on the next pass.

A task's `timeout` is a timer too (see `engine.execution.planner.timeout_timer`): when it
fires, this service fails the attempt then current by appending `AttemptFailed` to the
attempt's own stream at the version it read, so that of the worker's end and the timeout,
exactly one is recorded (the worker's later append conflicts and is dropped, as after an
abandonment). The executor then retries or fails the task run as for any failed attempt. The
decision stays with the executor (the deadline, recorded as a timer); only its carrying out
needs the attempt stream, which the executor does not write. This service records no
`TimerFired` for such a timer (the failure is the fact); the executor records one, with
`attemptEnded`, once the attempt ends, which drops the timer here: most attempts end long
before their timeout, and their timers are not kept pending until then.

Idle, it costs nothing: its subscription reads only timer events and moves past the others
without committing anything, and the firing loop sleeps until the soonest timer is due or the
table changes (a look every `max_wait` seconds is the fallback), firing each timer once.
"""

from __future__ import annotations

import logging
from typing import Any

import psycopg
import trio

from engine import events as ev
from engine.backoff import Backoff, describe, is_transient, retry
from engine.db import Database, Notifier
from engine.execution.planner import parse_timeout_timer
from engine.health import Health
from engine.store import (
    NO_STREAM,
    Append,
    EventStore,
    StoredEvent,
    load_checkpoint,
    save_checkpoint,
)
from engine.subscription import Subscription

log = logging.getLogger(__name__)

CHECKPOINT = "timers"
FIRE = "timers:fire"
"""The health component of the loop that fires due timers."""
ACTOR = "timers"
"""Who records what this service does (`TimerFired`, an attempt failed on its timeout)."""
ENDS = ("AttemptSucceeded", "AttemptFailed", "AttemptAbandoned", "AttemptKilled")
RERUN_ENDS = ("AttemptAbandoned", "AttemptKilled")
"""Ends after which the executor runs the attempt again, on the same timeout's clock."""
TRIES = 20
"""How often a timeout's failure is appended again after a conflict (the worker logged)."""


class TimerService:
    """Fires due timers until cancelled."""

    def __init__(
        self,
        store: EventStore,
        notifier: Notifier,
        *,
        max_wait: float = 60.0,
        health: Health | None = None,
    ) -> None:
        self.store = store
        self.notifier = notifier
        self.max_wait = max_wait
        self.health = health if health is not None else notifier.health
        self._changed = trio.Event()
        self._fired: set[tuple[str, str]] = set()
        """Timers fired by this service whose `TimerFired` was not read back yet."""
        self.subscription: Subscription | None = None
        """The subscription it tracks the log with, once running."""

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Track and fire timers until cancelled; startup waits for the database."""
        position = await retry(
            lambda: load_checkpoint(self.store.db, CHECKPOINT),
            what=f"loading checkpoint {CHECKPOINT}",
            health=self.health,
            component=CHECKPOINT,
        )
        sub = Subscription(
            self.store,
            self.notifier,
            position=position,
            types=["TimerScheduled", "TimerFired"],
            name=CHECKPOINT,
            health=self.health,
        )
        self.subscription = sub
        async with trio.open_nursery() as nursery:
            await nursery.start(sub.run, self._handle)
            nursery.start_soon(self._fire_loop)
            task_status.started()

    async def _handle(self, batch: list[StoredEvent]) -> None:
        def apply(conn: psycopg.Connection[Any]) -> None:
            with conn.transaction():
                for e in batch:
                    event = e.event
                    if isinstance(event, ev.TimerScheduled):
                        conn.execute(
                            "INSERT INTO engine_timers (timer_id, execution_id, fire_at)"
                            " VALUES (%s, %s, %s) ON CONFLICT DO NOTHING",
                            (event.timerId, event.executionId, event.fireAt),
                        )
                    elif isinstance(event, ev.TimerFired):
                        conn.execute(
                            "DELETE FROM engine_timers WHERE execution_id = %s AND timer_id = %s",
                            (event.executionId, event.timerId),
                        )
                save_checkpoint(conn, CHECKPOINT, batch[-1].seq)

        await self.store.db.run(apply)
        for e in batch:
            if isinstance(e.event, ev.TimerFired):
                self._fired.discard((e.event.executionId, e.event.timerId))
        self._changed.set()

    async def _fire_loop(self) -> None:
        transient = Backoff()
        bug = Backoff(initial=1.0, maximum=30.0)
        while True:
            try:
                pause = await self._fire_due()
            except Exception as exc:
                reason = describe(exc)
                if is_transient(exc):
                    delay = transient.failed()
                    log.warning("Firing timers failed (%s); retrying in %.1fs", reason, delay)
                else:
                    delay = bug.failed()
                    log.exception("Firing timers failed; retrying in %.1fs", delay)
                self.health.down(FIRE, reason)
                await trio.sleep(delay)
                continue
            transient.reset()
            bug.reset()
            self.health.up(FIRE)
            with trio.move_on_after(max(pause, 0.001)):
                await self._changed.wait()

    async def _fire_due(self) -> float:
        """Fire every due timer; return how long to wait before looking again."""
        self._changed = trio.Event()
        due = await self.store.db.fetchall(
            "SELECT timer_id, execution_id,"
            " extract(epoch FROM fire_at - clock_timestamp()) AS wait"
            " FROM engine_timers ORDER BY fire_at LIMIT 500"
        )
        # A timer fired before stays in the table until its `TimerFired` is read back; it is
        # not fired again meanwhile (that would only be recorded once, after a wait for the
        # append lock).
        ready = [
            r
            for r in due
            if r["wait"] <= 0 and (r["execution_id"], r["timer_id"]) not in self._fired
        ]
        timeouts = [r for r in ready if parse_timeout_timer(r["timer_id"]) is not None]
        if timeouts:
            for r in timeouts:
                await self._time_out(r["execution_id"], r["timer_id"])
            # Their fact is the attempt's failure (or nothing: it ended first, the common
            # case, and its execution may have ended long ago): no `TimerFired` to record.
            await self.store.db.execute(
                "DELETE FROM engine_timers e USING unnest(%s::text[], %s::text[]) AS d(xid, tid)"
                " WHERE e.execution_id = d.xid AND e.timer_id = d.tid",
                (
                    [r["execution_id"] for r in timeouts],
                    [r["timer_id"] for r in timeouts],
                ),
            )
            ready = [r for r in ready if parse_timeout_timer(r["timer_id"]) is None]
        if ready:
            await self.store.append_many(
                [
                    Append(
                        ev.execution_stream(r["execution_id"]),
                        [ev.TimerFired(executionId=r["execution_id"], timerId=r["timer_id"])],
                        command_id=f"timer:{r['execution_id']}:{r['timer_id']}",
                        meta={"actor": ACTOR},
                    )
                    for r in ready
                ]
            )
            self._fired.update((r["execution_id"], r["timer_id"]) for r in ready)
        waits = [float(r["wait"]) for r in due if r["wait"] > 0]
        if ready and len(due) >= 500 and not waits:
            return 0.0  # more may be due than one look takes
        # Until the soonest is due; a timer scheduled or fired meanwhile wakes the loop.
        return min([self.max_wait, *waits])

    async def _time_out(self, execution_id: str, timer_id: str) -> None:
        """Fail the attempt a fired timeout timer covers, unless it ended first. Before the
        timer's `TimerFired`: a crash in between fires the timer again, which records the
        failure once (a command id) or finds the attempt ended."""
        parsed = parse_timeout_timer(timer_id)
        assert parsed is not None
        run_id, first, limit = parsed
        message = f"Timeout: the task ran longer than {limit}"
        for _ in range(TRIES):
            target = await self._timed_out_attempt(execution_id, run_id, first)
            if target is None:
                return
            attempt, version = target
            [result] = await self.store.append_many(
                [
                    Append(
                        ev.attempt_stream(execution_id, run_id, attempt),
                        [
                            ev.AttemptFailed(
                                executionId=execution_id,
                                taskRunId=run_id,
                                attempt=attempt,
                                message=message,
                            )
                        ],
                        version,
                        f"timeout:{execution_id}:{run_id}:{attempt}",
                        {"actor": ACTOR},
                    )
                ]
            )
            if result.ok:
                return
        log.warning("Could not record the timeout of %s in %s: it kept logging", run_id, timer_id)

    async def _timed_out_attempt(
        self, execution_id: str, run_id: str, first: int
    ) -> tuple[int, int] | None:
        """The attempt of task run `run_id` a timeout counting from attempt `first` ends now,
        with its stream's version (`NO_STREAM` when not claimed yet): `first`, or the attempt
        that runs it again after a lost worker, and so on. None when that chain has ended."""
        prefix = ev.attempt_stream(execution_id, run_id, 0)[:-1]
        rows = await self.store.db.fetchall(
            "SELECT stream_id, max(version) AS version,"
            " (array_agg(type ORDER BY version DESC))[1] AS last_type"
            " FROM events WHERE stream_id >= %s AND stream_id < %s GROUP BY stream_id",
            (prefix, prefix[:-1] + ";"),  # ';' sorts right after ':'
        )
        streams = {str(r["stream_id"]): r for r in rows}
        scheduled = await self.store.db.fetchall(
            "SELECT max((data->>'attempt')::int) AS last FROM events"
            " WHERE stream_id = %s AND type = 'AttemptScheduled' AND data->>'taskRunId' = %s",
            (ev.execution_stream(execution_id), run_id),
        )
        last = scheduled[0]["last"] if scheduled and scheduled[0]["last"] is not None else 0
        for attempt in range(first, int(last) + 1):
            row = streams.get(prefix + str(attempt))
            if row is None:
                return attempt, NO_STREAM  # scheduled, not claimed: it may not start now
            if row["last_type"] not in ENDS:
                return attempt, int(row["version"])
            if row["last_type"] not in RERUN_ENDS:
                return None  # it ended on its own before the timeout
        return None


async def timeout_elapsed(db: Database, execution_id: str, run_id: str, attempt: int) -> float:
    """Seconds, on the database's clock, since the claim the `timeout` of attempt `attempt`
    counts from when that is an earlier attempt's: the one it runs again after a lost worker
    (and so on back). 0 when the count starts with this attempt's own claim."""
    if attempt <= 1:
        return 0.0
    prefix = ev.attempt_stream(execution_id, run_id, 0)[:-1]
    rows = await db.fetchall(
        "SELECT stream_id, (array_agg(type ORDER BY version DESC))[1] AS last_type,"
        " extract(epoch FROM clock_timestamp()"
        "  - min(recorded_at) FILTER (WHERE type = 'AttemptClaimed'))::float8 AS since"
        " FROM events WHERE stream_id >= %s AND stream_id < %s GROUP BY stream_id",
        (prefix, prefix[:-1] + ";"),
    )
    streams = {str(r["stream_id"]): r for r in rows}
    elapsed = 0.0
    for earlier in range(attempt - 1, 0, -1):
        row = streams.get(prefix + str(earlier))
        if row is None or row["last_type"] not in RERUN_ENDS:
            break
        if row["since"] is not None:
            elapsed = float(row["since"])
    return elapsed
