"""The watchdog: declares lost the workers that stopped heartbeating, and abandons the attempts
that no live worker holds.

Liveness is judged on the database's clock from `engine_workers`, the table workers heartbeat
in, never from how far the watchdog itself has read: a watchdog that lags or stalls abandons
nothing that is alive. A worker whose `last_seen` is older than the timeout is declared lost by
deleting its row and recording `WorkerLost`, in one transaction among the serialised appends,
so no claim of that worker commits afterwards and the loss is final (a worker that comes back
registers under a new id).

Time during which the watchdog could not reach the database is never counted against a worker:
a PostgreSQL outage silences every worker at once, and is nobody's fault. So the watchdog
declares a worker lost only once it has itself been checking without a failure, and on the
same PostgreSQL (its start time unchanged), for at least the timeout; on start, after a failed
check or after a restart of PostgreSQL, every worker thus gets a full timeout to heartbeat
again. That span is kept in memory on the monotonic clock; the heartbeat's age is still read
on the database's.

Which attempts are claimed and not ended is tracked from the event stream, in
`engine_attempts`, updated with the watchdog's checkpoint. An attempt whose worker has no row
is abandoned by appending `AttemptAbandoned` at the version last seen: if the worker reported
meanwhile, that append conflicts and the attempt is left alone. The executor then schedules a
new attempt (at-least-once work).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
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

CHECKPOINT = "watchdog"
CHECK = "watchdog:check"
"""The health component of the loop that looks for lost workers."""
ACTOR = {"actor": "watchdog"}
PACE = 0.25
"""The least time between two batches of the watchdog's subscription (at most its interval)."""
TYPES = (
    "AttemptClaimed",
    "AttemptLogged",
    "AttemptSucceeded",
    "AttemptFailed",
    "AttemptAbandoned",
    "AttemptKilled",
)


class _Raced(Exception):
    """A worker heartbeated between the watchdog's look and its verdict."""


class Watchdog:
    """Abandons the attempts of lost workers until cancelled."""

    def __init__(
        self,
        store: EventStore,
        notifier: Notifier,
        *,
        timeout: float = 15.0,
        interval: float | None = None,
        health: Health | None = None,
    ) -> None:
        self.store = store
        self.notifier = notifier
        self.timeout = timeout
        self.interval = interval if interval is not None else min(max(timeout / 4, 0.05), 2.0)
        self.health = health if health is not None else notifier.health
        self._healthy_since: float | None = None
        """Since when (trio's clock) every check succeeded; None until one does."""
        self._postmaster: Any = None
        """The start time of the PostgreSQL those checks reached."""
        self.subscription: Subscription | None = None
        """The subscription it tracks the log with, once running."""

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Track attempts and look for lost workers until cancelled."""
        self._healthy_since = None
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
            types=TYPES,
            name=CHECKPOINT,
            health=self.health,
            # Tracking attempts can lag a little (a check abandons at the version it saw, and
            # a later look catches up): a transaction per quarter second, not per commit.
            pace=min(self.interval, PACE),
        )
        self.subscription = sub
        async with trio.open_nursery() as nursery:
            await nursery.start(sub.run, self._handle)
            nursery.start_soon(self._check_loop)
            task_status.started()

    async def _handle(self, batch: list[StoredEvent]) -> None:
        await self.store.db.run(_tracker(batch))

    async def _check_loop(self) -> None:
        backoff = Backoff()
        while True:
            await trio.sleep(self.interval)
            try:
                await self.check()
            except Exception as exc:
                if is_transient(exc):
                    log.warning("Looking for lost workers failed: %s", describe(exc))
                else:
                    log.exception("Looking for lost workers failed")
                self.health.down(CHECK, describe(exc))
                await trio.sleep(backoff.failed())
                continue
            backoff.reset()
            self.health.up(CHECK)

    async def check(self) -> int:
        """Declare lost the workers silent for longer than the timeout (once the watchdog has
        been checking successfully for that long itself), then abandon every tracked attempt
        whose worker has no row; return how many were abandoned.

        One query looks for both; when it finds nothing, that is all a check costs."""
        try:
            look = await self.store.db.fetchone(
                "SELECT pg_postmaster_start_time() AS started,"
                " EXISTS (SELECT 1 FROM engine_workers"
                "  WHERE last_seen < clock_timestamp() - make_interval(secs => %s)) AS stale,"
                " EXISTS (SELECT 1 FROM engine_attempts a WHERE NOT EXISTS"
                "  (SELECT 1 FROM engine_workers w WHERE w.worker_id = a.worker_id)) AS orphans",
                (self.timeout,),
            )
            assert look is not None
            if self._trusted(look["started"]) and look["stale"]:
                await self.declare_lost()
                return await self.abandon_orphans()
            return await self.abandon_orphans() if look["orphans"] else 0
        except BaseException:
            self._healthy_since = None  # whatever failed, the next success starts over
            raise

    def _trusted(self, started: Any) -> bool:
        """Whether the watchdog has been checking, without a failure and on the same
        PostgreSQL (started at `started`), for at least the timeout: only then may a stale
        heartbeat be the worker's fault rather than an outage's."""
        now = trio.current_time()
        if self._healthy_since is None or started != self._postmaster:
            if self._healthy_since is not None:
                # Restarted between two checks: its outage was too short to fail one.
                log.warning(
                    "PostgreSQL restarted: every worker gets %gs to heartbeat", self.timeout
                )
            self._healthy_since, self._postmaster = now, started
        return now - self._healthy_since >= self.timeout

    async def declare_lost(self) -> list[str]:
        """Delete the rows of workers whose last heartbeat is older than the timeout and record
        `WorkerLost` for each; return their ids."""
        stale = await self.store.db.fetchall(
            "SELECT worker_id FROM engine_workers"
            " WHERE last_seen < clock_timestamp() - make_interval(secs => %s) ORDER BY worker_id",
            (self.timeout,),
        )
        ids = [r["worker_id"] for r in stale]
        if not ids:
            return []
        appends = [
            Append(
                ev.worker_stream(w),
                [ev.WorkerLost(workerId=w)],
                command_id=f"lost:{w}",
                meta=ACTOR,
            )
            for w in ids
        ]
        try:
            await self.store.append_many(appends, extra=_forget(ids, self.timeout))
        except _Raced:
            return []  # looked again next round
        log.warning("Declared lost: worker(s) %s", ", ".join(ids))
        return ids

    async def abandon_orphans(self) -> int:
        """Abandon the claimed, unended attempts whose worker has no row (never had one, was
        declared lost, or stopped without handing them back)."""
        orphans = await self.store.db.fetchall(
            "SELECT a.stream_id, a.execution_id, a.task_run_id, a.attempt, a.worker_id, a.version"
            " FROM engine_attempts a WHERE NOT EXISTS"
            " (SELECT 1 FROM engine_workers w WHERE w.worker_id = a.worker_id)"
            " ORDER BY a.stream_id"
        )
        if not orphans:
            return 0
        appends = [
            Append(
                r["stream_id"],
                [
                    ev.AttemptAbandoned(
                        executionId=r["execution_id"],
                        taskRunId=r["task_run_id"],
                        attempt=r["attempt"],
                        reason=f"worker {r['worker_id']} was lost",
                    )
                ],
                r["version"],
                f"abandon:{r['stream_id']}",
                ACTOR,
            )
            for r in orphans
        ]
        results = await self.store.append_many(appends)
        lost = sorted(
            {
                r["worker_id"]
                for r, res in zip(orphans, results, strict=True)
                if res.status == "written"
            }
        )
        if lost:
            # Once per worker: a worker that died before it registered, or whose row went away
            # without a word, is recorded lost here (the command id makes it once).
            await self.store.append_many(
                [
                    Append(
                        ev.worker_stream(w),
                        [ev.WorkerLost(workerId=w)],
                        command_id=f"lost:{w}",
                        meta=ACTOR,
                    )
                    for w in lost
                ]
            )
        abandoned = sum(1 for res in results if res.status == "written")
        if abandoned:
            log.warning("Abandoned %d attempt(s) of lost workers", abandoned)
        return abandoned


def _forget(ids: list[str], timeout: float) -> Callable[[psycopg.Connection[Any]], None]:
    """In the `WorkerLost` transaction: delete the rows, still stale, of the workers `ids`."""

    def forget(conn: psycopg.Connection[Any]) -> None:
        gone = conn.execute(
            "DELETE FROM engine_workers WHERE worker_id = ANY(%s)"
            " AND last_seen < clock_timestamp() - make_interval(secs => %s) RETURNING worker_id",
            (ids, timeout),
        ).fetchall()
        if len(gone) != len(ids):
            raise _Raced()

    return forget


def _tracker(batch: list[StoredEvent]) -> Callable[[psycopg.Connection[Any]], None]:
    """What `batch` changes in `engine_attempts`, with the checkpoint, in one transaction of
    three statements (one round trip): the claims, then the versions of the attempts that
    logged, then the attempts that ended. Per attempt stream a claim comes first and an end
    last, so this order is the batch's."""
    claims: list[tuple[str, str, str, int, str, int]] = []
    logged: dict[str, int] = {}
    ended: list[str] = []
    for e in batch:
        event = e.event
        if isinstance(event, ev.AttemptClaimed):
            claims.append(
                (
                    e.stream_id,
                    event.executionId,
                    event.taskRunId,
                    event.attempt,
                    event.workerId,
                    e.version,
                )
            )
        elif isinstance(event, ev.AttemptLogged):
            logged[e.stream_id] = max(logged.get(e.stream_id, e.version), e.version)
        else:
            ended.append(e.stream_id)
    position = batch[-1].seq

    def apply(conn: psycopg.Connection[Any]) -> None:
        with conn.pipeline(), conn.transaction():
            if claims:
                conn.execute(
                    "INSERT INTO engine_attempts (stream_id, execution_id, task_run_id,"
                    " attempt, worker_id, version) SELECT * FROM unnest(%s::text[], %s::text[],"
                    " %s::text[], %s::int[], %s::text[], %s::int[]) ON CONFLICT DO NOTHING",
                    [list(column) for column in zip(*claims, strict=True)],
                )
            if logged:
                conn.execute(
                    "UPDATE engine_attempts a SET version = greatest(a.version, l.version)"
                    " FROM unnest(%s::text[], %s::int[]) AS l(stream_id, version)"
                    " WHERE a.stream_id = l.stream_id",
                    (list(logged), list(logged.values())),
                )
            if ended:
                conn.execute("DELETE FROM engine_attempts WHERE stream_id = ANY(%s)", (ended,))
            save_checkpoint(conn, CHECKPOINT, position)

    return apply
