"""The timer service: turns `TimerScheduled` into `TimerFired` when the time comes.

It keeps the pending timers in a table updated with its checkpoint, so a restart loses none,
and fires each timer with a command id, so firing twice records it once. Both of its loops wait
out database errors (reporting `timers` DOWN meanwhile) instead of ending, for the same reasons:
a timer fired twice is recorded once, and one left unfired is found again on the next pass.

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
from engine.db import Notifier
from engine.health import Health
from engine.store import Append, EventStore, StoredEvent, load_checkpoint, save_checkpoint
from engine.subscription import Subscription

log = logging.getLogger(__name__)

CHECKPOINT = "timers"
FIRE = "timers:fire"
"""The health component of the loop that fires due timers."""


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
        if ready:
            await self.store.append_many(
                [
                    Append(
                        ev.execution_stream(r["execution_id"]),
                        [ev.TimerFired(executionId=r["execution_id"], timerId=r["timer_id"])],
                        command_id=f"timer:{r['execution_id']}:{r['timer_id']}",
                        meta={"actor": "timers"},
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
