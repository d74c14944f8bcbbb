"""Bulk operations on executions: replay, restart, kill, delete, labels and state of many at once.

A bulk operation is a job with a stream of its own, `bulk:<jobId>`. Its first append holds the
request (`BulkJobSubmitted`: the action, how the items were chosen, its parameters, the request
id) and the item ids it resolved to, in chunks (`BulkItemsSelected`): the selection is fixed when
the job is submitted, so executions made later (a replay's own) are never picked up by it. Then a
runner (`BulkRunner`, in every process with the executor role) works the items chunk by chunk
and records what became of each (`BulkItemsDone`), until every item was worked
(`BulkJobEnded`). The job's state is the fold of that stream (`fold`), so it survives any
process, and any runner can take over a job left open.

Exactly once per item: each item's command carries the command id `bulk:<jobId>:<itemId>`. A
runner that dies after an item's command and before the chunk's outcomes are recorded works the
chunk again on restart (or another process does), and the item's command is then a no-op that
answers as the first one did. A runner holds a job through a PostgreSQL session advisory lock,
which the server releases the moment the runner's connection is gone (a process killed -9
included), so two runners never work one job at once and a new one takes over at once.

Runners are rate-limited (items per second, per job or `TIERCEL_BULK_RATE`): a bulk replay of
thousands of executions adds executions at a pace that leaves the live ones their share.
Pause, resume and cancel are events of the job's stream, appended by anyone; the runner reads
the stream's version between items and stops within one item of a pause or a cancel. A
cancelled job keeps what it did and may still be resumed: the items left are worked, the done
ones never again.
"""

from __future__ import annotations

import hashlib
import logging
import os
import secrets
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import msgspec
import psycopg
import trio

from engine import commands
from engine import events as ev
from engine.backoff import Backoff, describe, is_transient
from engine.db import connect
from engine.errors import Conflict, InvalidRequest, NotFound, TiercelError
from engine.execution import iso, short_id
from engine.execution.actions import FORCEABLE_STATES
from engine.plugin import TERMINAL_STATES
from engine.storage import Storage
from engine.store import ANY, NO_STREAM, Append, EventStore, StoredEvent

log = logging.getLogger(__name__)

ACTIONS = ("replay", "restart", "kill", "delete", "labels", "state")
"""What a bulk operation may do to each execution it selects."""

RUNNING, PAUSED, CANCELLED, SUCCESS = "RUNNING", "PAUSED", "CANCELLED", "SUCCESS"

CHUNK_SIZE = 100
"""Items per `BulkItemsSelected` event and per recorded chunk of outcomes."""
MAX_ITEMS = 100_000
"""The most items one job takes: a larger selection is refused, to be narrowed or split."""
DEFAULT_RATE = 50.0
"""Items per second a runner works by default (`TIERCEL_BULK_RATE` changes it): a replay adds
an execution that the executor and workers then run, and at this pace a two-core machine keeps
its live executions' latency (bench/bulk.py measures it)."""
MAX_RATE = 2000.0
RATE_ENV = "TIERCEL_BULK_RATE"
CONCURRENCY = 4
"""Items of a chunk worked at once (their commands wait on the database, not the CPU)."""
POLL_SECONDS = 0.5
"""How often an idle runner looks for jobs to work, and a busy one for a pause or cancel."""
STATE_CHANGES = FORCEABLE_STATES
"""The states the `state` action may give a task run."""
_BULK_PREFIX = "bulk:"
_LOCK_SPACE = b"tiercel-bulk"


class BulkJob(msgspec.Struct, kw_only=True):
    """A bulk job as its stream tells it."""

    id: str
    action: str
    selection: dict[str, Any]
    params: dict[str, Any]
    request_id: str | None
    total: int
    chunk_size: int
    rate: float
    skipped: dict[str, str]
    namespaces: list[str]
    actor: str
    created: str
    chunks: list[list[str]] = msgspec.field(default_factory=list)
    ok: dict[str, str] = msgspec.field(default_factory=dict)
    failed: dict[str, str] = msgspec.field(default_factory=dict)
    state: str = RUNNING
    updated: str = ""
    version: int = NO_STREAM

    @property
    def done(self) -> int:
        """Items worked so far, whatever their outcome."""
        return len(self.ok) + len(self.failed)

    @property
    def ended(self) -> bool:
        """True once every item was worked."""
        return self.state == SUCCESS

    def left(self, chunk: int) -> list[str]:
        """The items of `chunk` not worked yet."""
        return [i for i in self.chunks[chunk] if i not in self.ok and i not in self.failed]


def fold(history: Sequence[StoredEvent]) -> BulkJob | None:
    """The job a bulk stream tells of (None for an empty stream)."""
    job: BulkJob | None = None
    for stored in history:
        e = stored.event
        if isinstance(e, ev.BulkJobSubmitted):
            job = BulkJob(
                id=e.jobId,
                action=e.action,
                selection=e.selection,
                params=e.params,
                request_id=e.requestId,
                total=e.total,
                chunk_size=e.chunkSize,
                rate=e.rate,
                skipped=e.skipped,
                namespaces=e.namespaces,
                actor=str(stored.meta.get("actor") or "anonymous"),
                created=iso(stored.recorded_at),
            )
        elif job is None:
            continue
        elif isinstance(e, ev.BulkItemsSelected):
            while len(job.chunks) <= e.chunk:
                job.chunks.append([])
            job.chunks[e.chunk] = list(e.itemIds)
        elif isinstance(e, ev.BulkItemsDone):
            for item, result in e.ok.items():
                job.failed.pop(item, None)
                job.ok[item] = result
            for item, why in e.failed.items():
                if item not in job.ok:
                    job.failed[item] = why
        elif isinstance(e, ev.BulkJobPaused):
            job.state = PAUSED
        elif isinstance(e, ev.BulkJobResumed):
            job.state = RUNNING
        elif isinstance(e, ev.BulkJobCancelled):
            job.state = CANCELLED
        elif isinstance(e, ev.BulkJobEnded):
            job.state = SUCCESS
        job.updated = iso(stored.recorded_at)
        job.version = stored.version
    return job


def job_json(job: BulkJob, *, items: bool = False) -> dict[str, Any]:
    """A job as the API shows it; with `items`, the outcome of each item (the report)."""
    out: dict[str, Any] = {
        "id": job.id,
        "action": job.action,
        "state": job.state,
        "total": job.total,
        "done": job.done,
        "succeeded": len(job.ok),
        "failed": len(job.failed),
        "skipped": len(job.skipped),
        "selection": job.selection,
        "params": job.params,
        "requestId": job.request_id,
        "ratePerSecond": job.rate or None,
        "namespaces": job.namespaces,
        "actor": job.actor,
        "created": job.created,
        "updated": job.updated,
    }
    if items:
        report: list[dict[str, Any]] = []
        for chunk in job.chunks:
            for item in chunk:
                if item in job.ok:
                    entry: dict[str, Any] = {"id": item, "outcome": "SUCCESS"}
                    if job.ok[item]:
                        entry["result"] = job.ok[item]
                elif item in job.failed:
                    entry = {"id": item, "outcome": "FAILED", "message": job.failed[item]}
                else:
                    pending = "NOT_DONE" if job.state == CANCELLED else "PENDING"
                    entry = {"id": item, "outcome": pending}
                report.append(entry)
        for item, why in job.skipped.items():
            report.append({"id": item, "outcome": "SKIPPED", "message": why})
        out["items"] = report
    return out


# --- what an action needs and would do ---------------------------------------------------------


def check_params(action: str, params: dict[str, Any]) -> dict[str, Any]:
    """The parameters `action` takes, checked and normalised; `InvalidRequest` naming what is
    wrong otherwise."""
    if action not in ACTIONS:
        raise InvalidRequest(f"Unknown bulk action {action!r}: it is one of {', '.join(ACTIONS)}")
    out: dict[str, Any] = {}
    if action == "labels":
        labels = params.get("labels")
        pairs: list[dict[str, str]] = []
        if isinstance(labels, dict):
            pairs = [{"key": str(k), "value": str(v)} for k, v in labels.items()]
        elif isinstance(labels, list):
            for item in labels:
                if isinstance(item, dict) and isinstance(item.get("key"), str):
                    pairs.append({"key": item["key"], "value": str(item.get("value", ""))})
                elif isinstance(item, str) and ":" in item:
                    key, _, value = item.partition(":")
                    pairs.append({"key": key, "value": value})
                else:
                    raise InvalidRequest(
                        "labels must be a list of {key, value} (or 'key:value' strings), or an "
                        f"object of key: value; got {item!r}"
                    )
        if not pairs or any(not p["key"] for p in pairs):
            raise InvalidRequest("The labels action needs labels: [{key, value}, ...]")
        for p in pairs:
            if p["key"].startswith("system."):
                raise InvalidRequest(f"Label {p['key']}: system labels are set by Tiercel")
        out["labels"] = pairs
    elif action == "state":
        state = params.get("state")
        if not isinstance(state, str) or state.upper() not in STATE_CHANGES:
            raise InvalidRequest(
                f"The state action needs state: one of {', '.join(STATE_CHANGES)}; got {state!r}"
            )
        out["state"] = state.upper()
    elif action == "replay":
        revision = params.get("revision")
        if revision is not None:
            if not isinstance(revision, int) or isinstance(revision, bool) or revision < 1:
                raise InvalidRequest(f"revision must be a flow revision number, got {revision!r}")
            out["revision"] = revision
    elif action == "delete":
        for flag in ("deleteLogs", "deleteStorage"):
            value = params.get(flag, True)
            if not isinstance(value, bool):
                raise InvalidRequest(f"{flag} must be true or false, got {value!r}")
            out[flag] = value
    return out


def expected_refusal(action: str, state: str) -> str | None:
    """Why `action` would be refused on an execution in `state` (None when it would be done):
    what a dry run tells before anything is changed."""
    ended = state in TERMINAL_STATES
    if action == "kill" and ended:
        return f"already ended in {state}"
    if action in ("replay", "delete", "labels", "state") and not ended:
        return f"is {state}: it has not ended"
    if action == "restart" and state not in ("FAILED", "KILLED"):
        return f"is {state}: only FAILED or KILLED executions restart"
    return None


def rate_of(job: BulkJob, default: float | None = None) -> float:
    """Items per second the job is worked at."""
    if job.rate > 0:
        return min(job.rate, MAX_RATE)
    if default is not None:
        return default
    try:
        configured = float(os.environ.get(RATE_ENV, "") or DEFAULT_RATE)
    except ValueError:
        configured = DEFAULT_RATE
    return min(max(configured, 0.1), MAX_RATE)


# --- commands on jobs ----------------------------------------------------------------------------


def request_job_id(actor: str, request_id: str) -> str:
    """The id of the job a request id makes: the same request id of the same caller always
    names the same job, so a re-submitted request finds it instead of starting another."""
    return short_id("bulk-request", actor, request_id)


async def submit(
    store: EventStore,
    *,
    action: str,
    selection: dict[str, Any],
    item_ids: Sequence[str],
    params: dict[str, Any],
    actor: str,
    request_id: str | None = None,
    skipped: dict[str, str] | None = None,
    namespaces: Sequence[str] = (),
    rate: float = 0.0,
    chunk_size: int = CHUNK_SIZE,
    reason: str | None = None,
) -> tuple[BulkJob, bool]:
    """Record a bulk job over `item_ids` (in that order); return it and whether it is new.

    With a `request_id` already used by this actor, nothing is recorded and the job it made is
    returned (a `Conflict` when that job does another action)."""
    params = check_params(action, params)
    if not 0 <= rate <= MAX_RATE:
        raise InvalidRequest(f"ratePerSecond must be between 0 and {MAX_RATE:g}, got {rate:g}")
    items = list(dict.fromkeys(item_ids))
    if len(items) > MAX_ITEMS:
        raise InvalidRequest(
            f"The selection holds {len(items)} executions; one bulk job takes at most "
            f"{MAX_ITEMS}: narrow the query or split it"
        )
    job_id = request_job_id(actor, request_id) if request_id else new_job_id()
    stream = ev.bulk_stream(job_id)
    size = max(1, min(chunk_size, 1000))
    chunks = [items[i : i + size] for i in range(0, len(items), size)]
    events: list[ev.Event] = [
        ev.BulkJobSubmitted(
            jobId=job_id,
            action=action,
            selection=selection,
            total=len(items),
            params=params,
            requestId=request_id,
            chunkSize=size,
            rate=rate,
            skipped=dict(skipped or {}),
            namespaces=sorted(set(namespaces)),
        ),
        *(ev.BulkItemsSelected(jobId=job_id, chunk=n, itemIds=c) for n, c in enumerate(chunks)),
    ]
    if not chunks:
        events.append(ev.BulkJobEnded(jobId=job_id, done=0, failed=0))
    meta: dict[str, Any] = {"actor": actor}
    if reason:
        meta["reason"] = reason
    [result] = await store.append_many([Append(stream, events, NO_STREAM, None, meta)])
    job = await load_job(store, job_id)
    if result.status == "conflict":
        if job.action != action:
            raise Conflict(
                f"Request id {request_id!r} was used for bulk job {job_id} ({job.action}); "
                "use another request id for another operation"
            )
        return job, False
    return job, True


def new_job_id() -> str:
    """A random job id."""
    return short_id("bulk", secrets.token_hex(16))


async def load_job(store: EventStore, job_id: str) -> BulkJob:
    """The job `job_id`; `NotFound` when there is none."""
    job = fold(await store.read_stream(ev.bulk_stream(job_id)))
    if job is None:
        raise NotFound(f"Bulk job {job_id} does not exist")
    return job


async def list_jobs(store: EventStore, *, limit: int = 100) -> list[BulkJob]:
    """The latest jobs, newest first."""
    rows = await store.db.fetchall(
        "SELECT stream_id FROM events WHERE stream_id >= %s AND stream_id < %s AND version = 0"
        " ORDER BY seq DESC LIMIT %s",
        (_BULK_PREFIX, _BULK_PREFIX[:-1] + ";", limit),
    )
    jobs = []
    for row in rows:
        job = fold(await store.read_stream(row["stream_id"]))
        if job is not None:
            jobs.append(job)
    return jobs


_STEERING: dict[str, tuple[tuple[str, ...], Callable[[str], ev.Event]]] = {
    "pause": ((RUNNING,), lambda j: ev.BulkJobPaused(jobId=j)),
    "resume": ((PAUSED, CANCELLED), lambda j: ev.BulkJobResumed(jobId=j)),
    "cancel": ((RUNNING, PAUSED), lambda j: ev.BulkJobCancelled(jobId=j)),
}


async def steer(store: EventStore, job_id: str, command: str, *, actor: str) -> BulkJob:
    """Pause, resume or cancel a job (`command`); `Conflict` when its state does not allow it."""
    allowed, make = _STEERING[command]
    for _ in range(20):
        job = await load_job(store, job_id)
        if job.state not in allowed:
            raise Conflict(
                f"Bulk job {job_id} is {job.state}: only a {' or '.join(allowed)} job can be "
                f"{'resumed' if command == 'resume' else command + ('led' if command == 'cancel' else 'd')}"
            )
        [result] = await store.append_many(
            [Append(ev.bulk_stream(job_id), [make(job_id)], job.version, None, {"actor": actor})]
        )
        if result.ok:
            return await load_job(store, job_id)
    raise Conflict(f"Bulk job {job_id} is changing too fast; try again")


# --- the runner ----------------------------------------------------------------------------------


def item_command_id(job_id: str, item_id: str) -> str:
    """The command id of a job's command on one item: the same on every try."""
    return f"bulk:{job_id}:{item_id}"


Worker = Callable[[BulkJob, str], Awaitable[str]]


class BulkRunner:
    """Works the open bulk jobs of the database, one at a time, each under a session lock."""

    def __init__(
        self,
        store: EventStore,
        *,
        storage: Storage | None = None,
        rate: float | None = None,
        concurrency: int | None = None,
        poll: float = POLL_SECONDS,
    ) -> None:
        self.store = store
        self.storage = storage if storage is not None else store.storage
        self.rate = rate
        self.concurrency = max(1, concurrency or CONCURRENCY)
        self.poll = poll
        self._lock_conn: psycopg.Connection[Any] | None = None
        self.broken: set[str] = set()
        """Jobs this runner met a bug on, left alone until the process restarts."""

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Work jobs until cancelled; database outages are waited out."""
        task_status.started()
        backoff = Backoff()
        try:
            while True:
                try:
                    worked = await self.pass_once()
                    backoff.reset()
                except Exception as exc:
                    if not is_transient(exc):
                        raise
                    self._drop_lock_connection()
                    delay = backoff.failed()
                    log.warning("Bulk runner: %s; trying again in %.1fs", describe(exc), delay)
                    await trio.sleep(delay)
                    continue
                if not worked:
                    await trio.sleep(self.poll)
        finally:
            self._drop_lock_connection()

    async def pass_once(self) -> bool:
        """Work every open job this runner can take; True when one was worked."""
        worked = False
        for job_id in await self.open_jobs():
            if job_id in self.broken or not await self._lock(job_id):
                continue
            try:
                job = await load_job(self.store, job_id)
                if job.state == RUNNING:
                    await self.work(job)
                    worked = True
            except Exception as exc:
                if is_transient(exc):
                    raise
                # A bug met on one job stops that job in this process, not the process nor
                # the other jobs; another process (or this one, restarted) tries it again.
                log.exception("Bulk job %s cannot be worked; leaving it", job_id)
                self.broken.add(job_id)
            finally:
                await self._unlock(job_id)
        return worked

    async def open_jobs(self) -> list[str]:
        """Ids of the jobs that are running (oldest first)."""
        rows = await self.store.db.fetchall(
            "SELECT s.stream_id, (SELECT type FROM events l WHERE l.stream_id = s.stream_id"
            " ORDER BY version DESC LIMIT 1) AS last FROM events s"
            " WHERE s.stream_id >= %s AND s.stream_id < %s AND s.version = 0 ORDER BY s.seq",
            (_BULK_PREFIX, _BULK_PREFIX[:-1] + ";"),
        )
        return [
            r["stream_id"][len(_BULK_PREFIX) :]
            for r in rows
            if r["last"] not in ("BulkJobEnded", "BulkJobPaused", "BulkJobCancelled")
        ]

    async def work(self, job: BulkJob) -> None:
        """Work the items of `job` left, chunk by chunk, until it ends, or is paused or
        cancelled."""
        stream = ev.bulk_stream(job.id)
        rate = rate_of(job, self.rate)
        limiter = trio.CapacityLimiter(self.concurrency)
        next_start = trio.current_time()
        for chunk in range(len(job.chunks)):
            left = job.left(chunk)
            if not left:
                continue
            ok: dict[str, str] = {}
            failed: dict[str, str] = {}
            stopped = False
            last_check = trio.current_time()
            async with trio.open_nursery() as nursery:
                for item in left:
                    now = trio.current_time()
                    if now - last_check >= self.poll:
                        last_check = now
                        versions = await self.store.stream_versions([stream])
                        if versions[stream] != job.version:
                            latest = await load_job(self.store, job.id)
                            if latest.state != RUNNING:
                                stopped = True
                                break
                            job.version = latest.version
                    # Paced on the start of each item: `rate` items a second at most.
                    next_start = max(next_start, now)
                    await trio.sleep_until(next_start)
                    next_start += 1.0 / rate
                    await limiter.acquire()
                    limiter.release()
                    nursery.start_soon(self._one, limiter, job, item, ok, failed)
            # The outcomes of a chunk's items are recorded once they are all known: a runner
            # that dies before works them again, and their command ids make that a no-op.
            if ok or failed:
                await self.store.append_many(
                    [
                        Append(
                            stream,
                            [ev.BulkItemsDone(jobId=job.id, chunk=chunk, ok=ok, failed=failed)],
                            ANY,
                            None,
                            {"actor": job.actor},
                        )
                    ]
                )
            job = await load_job(self.store, job.id)
            if stopped or job.state != RUNNING:
                return
        if job.state == RUNNING and all(not job.left(c) for c in range(len(job.chunks))):
            await self.store.append_many(
                [
                    Append(
                        stream,
                        [ev.BulkJobEnded(jobId=job.id, done=len(job.ok), failed=len(job.failed))],
                        job.version,
                        None,
                        {"actor": job.actor},
                    )
                ]
            )

    async def _one(
        self,
        limiter: trio.CapacityLimiter,
        job: BulkJob,
        item: str,
        ok: dict[str, str],
        failed: dict[str, str],
    ) -> None:
        async with limiter:
            outcome, value = await self._item(job, item)
        (ok if outcome else failed)[item] = value

    async def _item(self, job: BulkJob, item: str) -> tuple[bool, str]:
        """Do the job's action on one item: (True, what it gave) or (False, why not).

        A transient database error is raised (the chunk is worked again once the database is
        back); any other error fails this item only."""
        try:
            return True, await apply(self.store, self.storage, job, item)
        except TiercelError as exc:
            if is_transient(exc):
                raise
            return False, exc.message
        except Exception as exc:
            if is_transient(exc):
                raise
            log.exception("Bulk job %s: %s on %s failed", job.id, job.action, item)
            return False, f"{type(exc).__name__}: {exc}"

    # A session advisory lock on a connection of its own: the server releases it when that
    # connection goes, so a runner that dies holds no job.
    def _lock_key(self, job_id: str) -> int:
        digest = hashlib.sha256(_LOCK_SPACE + job_id.encode()).digest()
        return int.from_bytes(digest[:8], "big", signed=True)

    def _lock_connection(self) -> psycopg.Connection[Any]:
        conn = self._lock_conn
        if conn is None or conn.closed or conn.broken:
            conn = connect(self.store.db.url, settings={})
            conn.autocommit = True
            self._lock_conn = conn
        return conn

    def _drop_lock_connection(self) -> None:
        conn, self._lock_conn = self._lock_conn, None
        if conn is not None:
            try:
                conn.close()
            except psycopg.Error:
                pass

    async def _lock(self, job_id: str) -> bool:
        key = self._lock_key(job_id)

        def take() -> bool:
            row = (
                self._lock_connection()
                .execute("SELECT pg_try_advisory_lock(%s)", (key,))
                .fetchone()
            )
            return bool(row and row[0])

        return await trio.to_thread.run_sync(take)

    async def _unlock(self, job_id: str) -> None:
        key = self._lock_key(job_id)
        conn = self._lock_conn
        if conn is None or conn.closed:
            return
        await trio.to_thread.run_sync(lambda: conn.execute("SELECT pg_advisory_unlock(%s)", (key,)))


async def apply(store: EventStore, storage: Storage | None, job: BulkJob, item: str) -> str:
    """Do `job`'s action on execution `item`, idempotently (its command id is the same on every
    try); return what it gave (a replay's new execution id, or empty)."""
    command_id = item_command_id(job.id, item)
    reason = f"bulk job {job.id}"
    actor = job.actor
    if job.action == "replay":
        revision = job.params.get("revision")
        return await commands.replay_execution(
            store, item, revision=revision, actor=actor, reason=reason, command_id=command_id
        )
    if job.action == "restart":
        await commands.restart_execution(
            store, item, actor=actor, reason=reason, command_id=command_id
        )
        return ""
    if job.action == "kill":
        await commands.kill_execution(store, item, actor=actor, command_id=command_id)
        return ""
    if job.action == "delete":
        history = await commands.execution_history(store, item)
        if commands.state_of(history).purged:
            # Deleting is done once the execution is out of the read models, whoever did it
            # (this job's earlier try, after which the runner died, included).
            return ""
        await commands.purge_execution(
            store,
            storage,
            item,
            logs=bool(job.params.get("deleteLogs", True)),
            files=bool(job.params.get("deleteStorage", True)),
            actor=actor,
        )
        return ""
    if job.action == "labels":
        if await _done(store, command_id):
            return ""
        state = await commands.load_execution(store, item)
        # Added to those it has; its system labels are kept by `set_labels` itself.
        merged = {k: v for k, v in state.labels if not k.startswith("system.")}
        merged.update({p["key"]: p["value"] for p in job.params["labels"]})
        await commands.set_labels(
            store,
            item,
            [{"key": k, "value": v} for k, v in merged.items()],
            actor=actor,
            reason=reason,
            command_id=command_id,
        )
        return ""
    if job.action == "state":
        if await _done(store, command_id):
            return ""
        state = await commands.load_execution(store, item)
        runs = [r for r in state.taskruns.values() if r.state in ("FAILED", "KILLED", "WARNING")]
        if not runs:
            raise Conflict(f"Execution {item} has no failed, killed or warning task run to change")
        run = max(runs, key=lambda r: r.histories[-1][1] if r.histories else "")
        await commands.change_task_run_state(
            store,
            item,
            run.id,
            job.params["state"],
            actor=actor,
            reason=reason,
            command_id=command_id,
        )
        return run.id
    raise InvalidRequest(f"Unknown bulk action {job.action!r}")


async def _done(store: EventStore, command_id: str) -> bool:
    return (
        await store.db.fetchone("SELECT 1 AS done FROM events WHERE command_id = %s", (command_id,))
        is not None
    )


def summary(job: BulkJob) -> dict[str, Any]:
    """The progress of a job, as the follow stream sends it."""
    return {
        "id": job.id,
        "state": job.state,
        "total": job.total,
        "done": job.done,
        "failed": len(job.failed),
        "skipped": len(job.skipped),
    }
