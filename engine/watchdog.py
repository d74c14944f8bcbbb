"""The watchdog: notices workers that stopped heartbeating and abandons their attempts.

It keeps which worker holds which attempt (and at which stream version) in tables updated with
its checkpoint. When a worker has been silent longer than the timeout, each attempt it held is
abandoned by appending `AttemptAbandoned` at the version last seen: if the worker reported
meanwhile, that append conflicts and the attempt is left alone. The executor then schedules a
new attempt (at-least-once work). Times are compared on the database's clock.
"""

from __future__ import annotations

import logging
from typing import Any

import psycopg
import trio

from engine import events as ev
from engine.db import Notifier
from engine.store import Append, EventStore, StoredEvent, load_checkpoint, save_checkpoint
from engine.subscription import Subscription

log = logging.getLogger(__name__)

CHECKPOINT = "watchdog"
TYPES = (
    "AttemptClaimed",
    "AttemptLogged",
    "AttemptSucceeded",
    "AttemptFailed",
    "AttemptAbandoned",
    "WorkerHeartbeat",
    "WorkerStopped",
    "WorkerLost",
)


class Watchdog:
    """Abandons the attempts of lost workers until cancelled."""

    def __init__(self, store: EventStore, notifier: Notifier, *, timeout: float = 30.0) -> None:
        self.store = store
        self.notifier = notifier
        self.timeout = timeout

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Track leases and check for silent workers until cancelled."""
        position = await load_checkpoint(self.store.db, CHECKPOINT)
        sub = Subscription(self.store, self.notifier, position=position, types=TYPES)
        async with trio.open_nursery() as nursery:
            await nursery.start(sub.run, self._handle)
            nursery.start_soon(self._check_loop)
            task_status.started()

    async def _handle(self, batch: list[StoredEvent]) -> None:
        def apply(conn: psycopg.Connection[Any]) -> None:
            with conn.transaction():
                for e in batch:
                    _apply_one(conn, e)
                save_checkpoint(conn, CHECKPOINT, batch[-1].seq)

        await self.store.db.run(apply)

    async def _check_loop(self) -> None:
        while True:
            await trio.sleep(max(self.timeout / 4, 0.05))
            await self.check()

    async def check(self) -> int:
        """Abandon the attempts of every worker silent for longer than the timeout."""
        lost = await self.store.db.fetchall(
            "SELECT w.worker_id, w.last_seen, a.stream_id, a.execution_id, a.task_run_id, a.attempt, a.version"
            " FROM engine_workers w LEFT JOIN engine_attempts a ON a.worker_id = w.worker_id"
            " WHERE w.last_seen < clock_timestamp() - make_interval(secs => %s)",
            (self.timeout,),
        )
        if not lost:
            return 0
        appends = [
            Append(
                ev.worker_stream(worker),
                [ev.WorkerLost(workerId=worker)],
                command_id=f"lost:{worker}:{last_seen.isoformat()}",
                meta={"actor": "watchdog"},
            )
            for worker, last_seen in sorted({(r["worker_id"], r["last_seen"]) for r in lost})
        ]
        for r in lost:
            if r["stream_id"] is None:
                continue
            appends.append(
                Append(
                    r["stream_id"],
                    [
                        ev.AttemptAbandoned(
                            executionId=r["execution_id"],
                            taskRunId=r["task_run_id"],
                            attempt=r["attempt"],
                            reason=f"worker {r['worker_id']} stopped heartbeating",
                        )
                    ],
                    r["version"],
                    meta={"actor": "watchdog"},
                )
            )
        results = await self.store.append_many(appends)
        abandoned = sum(
            1
            for a, res in zip(appends, results, strict=True)
            if res.status == "written" and "/a:" in a.stream_id
        )
        if abandoned:
            log.warning("Abandoned %d attempt(s) of lost workers", abandoned)
        return abandoned


def _apply_one(conn: psycopg.Connection[Any], e: StoredEvent) -> None:
    event = e.event
    if isinstance(event, ev.WorkerHeartbeat):
        conn.execute(
            "INSERT INTO engine_workers (worker_id, last_seen, hostname) VALUES (%s, %s, %s)"
            " ON CONFLICT (worker_id) DO UPDATE SET last_seen = greatest("
            " engine_workers.last_seen, EXCLUDED.last_seen)",
            (event.workerId, e.recorded_at, event.hostname),
        )
    elif isinstance(event, (ev.WorkerStopped, ev.WorkerLost)):
        conn.execute("DELETE FROM engine_workers WHERE worker_id = %s", (event.workerId,))
    elif isinstance(event, ev.AttemptClaimed):
        conn.execute(
            "INSERT INTO engine_attempts (stream_id, execution_id, task_run_id, attempt,"
            " worker_id, version) VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
            (
                e.stream_id,
                event.executionId,
                event.taskRunId,
                event.attempt,
                event.workerId,
                e.version,
            ),
        )
    elif isinstance(event, ev.AttemptLogged):
        conn.execute(
            "UPDATE engine_attempts SET version = greatest(version, %s) WHERE stream_id = %s",
            (e.version, e.stream_id),
        )
    else:
        conn.execute("DELETE FROM engine_attempts WHERE stream_id = %s", (e.stream_id,))
