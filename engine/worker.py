"""The worker: claims task-run attempts, runs them and records their logs and results.

An attempt is claimed by appending `AttemptClaimed` as the first event of the attempt's own
stream: the unique (stream, version) pair lets exactly one worker win, whatever the number of
workers. Every later append to that stream names the version the worker last wrote, so once
anyone else ended the attempt (the watchdog abandoning it, say) nothing the worker still has to
say about it is recorded.

Liveness is a row in `engine_workers`, not history: the worker inserts it before it claims
anything and refreshes `last_seen` on the database's clock every `heartbeat_interval`. A claim
commits only while that row exists, and the watchdog declares a worker lost by deleting it, so
a worker never runs an attempt nobody watches. The row's presence, not its age, is what a
worker goes by: a heartbeat that finds its row, however stale, means nobody declared the worker
lost (the watchdog does not count its own outages against workers), and one that finds it gone
means it was declared lost: it stops what it runs and registers again under a new id.
Stopping is cancellation of `run`: running attempts are stopped (a script's whole process
group), handed back with `AttemptAbandoned`, and the worker records `WorkerStopped` and removes
its row. A killed execution or task run stops its attempts within moments, recorded as
`AttemptKilled`.

While it cannot reach the database, a worker cannot tell a PostgreSQL outage (everyone is cut
off, the watchdog abandons nothing, and the work should go on) from its own partition (the
watchdog, judging by the same `heartbeat_timeout`, may abandon its attempts and have them run
elsewhere, and the work must not go on beside its retry). So once it could not heartbeat for
`heartbeat_timeout` it *freezes* the process groups of its running scripts (SIGSTOP): a frozen
script runs no instruction, so it never runs beside a retry, and it loses nothing either. When
the database answers again, the heartbeat settles it: the row is there, so this was an outage
and the scripts go on (SIGCONT) and finish once; the row is gone, so the attempts may be
running elsewhere, and the frozen groups are killed (SIGKILL, never resumed). Work without a
process of its own, which cannot be frozen, is stopped at `heartbeat_timeout` and handed back,
as is any attempt still frozen after `LAST_RESORT` times the timeout: a frozen script still
holds its files, locks and connections, which its retry may need, and a worker cut off that
long is as good as lost. A PostgreSQL outage shorter than that thus costs nothing but time; a
longer one runs the scripts it caught again (at-least-once work), never two at once.

Results are never dropped by the worker on its own: computed while the database is away, they
wait in the group committer and are appended, with their command ids and at the attempt
stream's expected version, once it answers. Only an append that conflicts (the watchdog
abandoned the attempt meanwhile) is dropped. Logs are recorded while a task runs, as
`AttemptLogged` batches at least every `LOG_FLUSH_SECONDS`, the same way: a repeated append
is recorded once.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import functools
import io
import logging
import os
import re
import shutil
import signal
import socket
import tarfile
import tempfile
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import msgspec
import psycopg
import trio

from engine import events as ev
from engine import kv, secrets, templating
from engine.backoff import Backoff, describe, is_transient, retry
from engine.batcher import GroupCommitter
from engine.db import Notifier
from engine.duration import parse_duration
from engine.errors import InvalidRequest, TemplateError, TiercelError
from engine.handoff import ClaimRefused, Handoff, claim_append
from engine.health import Health
from engine.plugin import RunnableTask, TaskFailure, TaskWarning, task_type
from engine.storage import LocalStorage, Storage, task_prefix, to_uri
from engine.store import Append, AppendResult, EventStore, StoredEvent, save_checkpoint
from engine.store import load_checkpoint as _load_checkpoint
from engine.subscription import Subscription
from engine.timers import timeout_elapsed

log = logging.getLogger(__name__)

CHECKPOINT = "worker"
TIMERS = "timers"
"""The actor of the timer service, which fails an attempt whose `timeout` passed."""
KILLS = "worker:kills"
"""The health component of the subscription that follows kills."""
HEARTBEAT = "worker:heartbeat"
"""The health component of the heartbeat loop."""
MAX_OUTPUT_BYTES = 16 * 1024 * 1024
"""The largest outputs a task may return (above 256 KB the event store keeps them in internal
storage); every later task's context holds them, so anything bigger belongs in a file."""
LEVELS = ("TRACE", "DEBUG", "INFO", "WARN", "ERROR")
LOG_FLUSH_SECONDS = 0.5
"""The longest a running task's log line waits before it is recorded."""
MAX_LOG_LINE_BYTES = 64 * 1024
"""A longer line is cut in its event; its full text goes to internal storage."""
MAX_LOG_BATCH_BYTES = 200 * 1024
"""The lines of one `AttemptLogged` stay under this, so the event stays under 256 KB."""
STOP_SECONDS = 5.0
"""How long a stopping worker tries to record the hand-back of its attempts."""
LAST_RESORT = 2.0
"""After this many heartbeat timeouts without a heartbeat, a worker stops its frozen scripts
(see the module's docstring)."""
KILL_MEMORY = 10_000
"""How many recent kills are remembered for attempts claimed just before they arrive."""
GROUP_RECORD = ".group"
"""Suffix of the file, in a worker's directory, recording a process group one of its attempts
started (named by the group's id)."""

_json = msgspec.json.Encoder()


def _now() -> str:
    at = dt.datetime.now(dt.UTC)
    return at.strftime("%Y-%m-%dT%H:%M:%S.") + f"{at.microsecond // 1000:03d}Z"


def _new_id() -> str:
    return uuid.uuid4().hex[:12]


class AttemptContext:
    """What a running task sees: its variables, a renderer, a logger, files and metrics."""

    def __init__(
        self,
        scheduled: ev.AttemptScheduled,
        task: dict[str, Any],
        context: dict[str, Any],
        working_dir: Path,
        min_level: str,
        storage: Storage,
        store: EventStore | None = None,
        process_groups: Path | None = None,
    ) -> None:
        self.execution_id = scheduled.executionId
        self.task_run_id = scheduled.taskRunId
        self.attempt = scheduled.attempt
        self.variables: dict[str, Any] = dict(context)
        flow = self.variables.get("flow") or {}
        self.namespace = str(flow.get("namespace", ""))
        self.flow_id = str(flow.get("id", ""))
        self.task_id = str(task.get("id") or scheduled.taskId)
        self.working_dir = working_dir
        self.storage = storage
        self.store = store
        self.lines: list[dict[str, Any]] = []
        """Log lines not recorded yet; the worker takes them as it records them."""
        self.metrics: list[dict[str, Any]] = []
        self._min = LEVELS.index(min_level) if min_level in LEVELS else 0
        self._process_groups = process_groups
        """Where the process groups the task starts are recorded: the worker's directory."""
        self._groups: set[int] = set()
        """The process groups the task started and has not stopped yet."""
        self.frozen = False
        """Its process groups are stopped with SIGSTOP until `thaw` or `kill_frozen`."""
        self.masker = secrets.Masker()
        """The secret values the task could see, masked in what it logs, returns or fails with."""

    def render(self, value: Any) -> Any:
        """Render templates inside `value` with the attempt's variables, here on the event loop,
        within the limits of one render (`engine.templating`): prefer `render_async`."""
        return templating.render_value(value, self.variables)

    async def render_async(self, value: Any) -> Any:
        """Render templates inside `value` with the attempt's variables, in a worker thread:
        however long a render takes within its limits, the worker's other attempts, its
        heartbeats and, in a one-process server, the API go on meanwhile."""
        if value is None or isinstance(value, bool | int | float):
            return value
        if isinstance(value, str) and not templating.is_template(value):
            return value
        # Abandoned when the attempt is cancelled (killed, timed out): the render only reads
        # the variables, and ends by itself within its time limit.
        return await trio.to_thread.run_sync(self.render, value, abandon_on_cancel=True)

    def log(self, level: str, message: str) -> None:
        """Keep one log line (dropped when below the task's `logLevel`)."""
        level = "WARN" if level == "WARNING" else level
        if level in LEVELS and LEVELS.index(level) < self._min:
            return
        self.lines.append({"timestamp": _now(), "level": level, "message": message})

    def take_lines(self) -> list[dict[str, Any]]:
        """The lines logged since the last call, in order."""
        lines, self.lines = self.lines, []
        return lines

    def metric(
        self, name: str, value: float, type: str = "counter", tags: dict[str, str] | None = None
    ) -> None:
        """Keep one metric; it is recorded with the attempt's result."""
        entry: dict[str, Any] = {"name": name, "type": type, "value": value}
        if tags:
            entry["tags"] = tags
        self.metrics.append(entry)

    async def put_file(self, source: Path | bytes, name: str | None = None) -> str:
        """Store a file of this task run; return its `kestra://` URI."""
        prefix = task_prefix(
            self.namespace, self.flow_id, self.execution_id, self.task_id, self.task_run_id
        )
        if isinstance(source, Path):
            _check_inside(self.working_dir, source)
        filename = name or (source.name if isinstance(source, Path) else uuid.uuid4().hex)
        return await trio.to_thread.run_sync(self.storage.put, prefix, filename, source)

    def _store(self) -> EventStore:
        if self.store is None:
            raise TaskFailure("This task needs the event store, which this worker does not have")
        return self.store

    async def kv_get(self, namespace: str, key: str) -> tuple[bool, Any]:
        """(found, value) of a key of a namespace's KV store."""
        return await kv.kv_get(self._store(), namespace, key)

    async def kv_set(
        self,
        namespace: str,
        key: str,
        value: Any,
        *,
        ttl: str | None = None,
        overwrite: bool = True,
        kv_type: str | None = None,
    ) -> None:
        """Set a key of a namespace's KV store (the task's secret values masked: a KV value is
        an event, kept and shown for good; secrets belong in the secret store)."""
        await kv.kv_set(
            self._store(),
            namespace,
            key,
            self.masker.value(value),
            ttl=parse_duration(ttl) if ttl else None,
            overwrite=overwrite,
            actor=f"task:{self.execution_id}/{self.task_id}",
            kv_type=kv_type,
        )

    async def kv_delete(self, namespace: str, key: str) -> bool:
        """Delete a key; False when there was none."""
        return await kv.kv_delete(
            self._store(), namespace, key, actor=f"task:{self.execution_id}/{self.task_id}"
        )

    async def kv_entries(self, namespace: str, prefix: str = "") -> dict[str, Any]:
        """The live keys of a namespace starting with `prefix`, with their values."""
        return await kv.kv_entries(self._store(), namespace, prefix)

    async def read_logs(
        self, execution_id: str, namespace: str | None = None, flow_id: str | None = None
    ) -> list[dict[str, Any]]:
        """Every log line of an execution so far, in order, as Kestra's log entries."""
        history = await self._store().read_execution(execution_id)
        created = next((e.event for e in history if isinstance(e.event, ev.ExecutionCreated)), None)
        if created is None:
            raise TaskFailure(f"No execution '{execution_id}': check the executionId")
        elsewhere = namespace and namespace != created.namespace
        if elsewhere or (flow_id and flow_id != created.flowId):
            raise TaskFailure(
                f"Execution '{execution_id}' belongs to flow {created.namespace}.{created.flowId}, "
                f"not {namespace}.{flow_id}: set namespace and flowId to that flow's"
            )
        lines = []
        for e in history:
            if isinstance(e.event, ev.AttemptLogged):
                for line in e.event.lines:
                    lines.append(
                        {
                            "namespace": created.namespace,
                            "flowId": created.flowId,
                            "executionId": execution_id,
                            "taskId": e.event.taskId,
                            "taskRunId": e.event.taskRunId,
                            "attemptNumber": e.event.attempt,
                            **line,
                        }
                    )
        return lines

    async def purge_executions(self, **filters: Any) -> dict[str, int]:
        """Purge ended executions; recorded once per attempt, whatever reruns it."""
        from engine import purge

        done = await purge.purge_executions(
            self._store(),
            self.storage,
            ev.purge_stream(self.task_run_id, self.attempt),
            actor=f"task:{self.execution_id}/{self.task_id}",
            **filters,
        )
        return dict(vars(done))

    async def purge_logs(self, **filters: Any) -> int:
        """Delete log lines from the logs read model; how many it held."""
        from engine import purge

        return await purge.purge_logs(
            self._store(),
            ev.purge_stream(self.task_run_id, self.attempt),
            actor=f"task:{self.execution_id}/{self.task_id}",
            **filters,
        )

    async def purge_kv(self, **filters: Any) -> int:
        """Delete KV keys; how many."""
        from engine import purge

        return await purge.purge_kv(
            self._store(), actor=f"task:{self.execution_id}/{self.task_id}", **filters
        )

    async def resume_execution(self, execution_id: str, inputs: dict[str, Any]) -> None:
        """Resume a paused execution."""
        from engine.commands import resume_execution

        await resume_execution(
            self._store(), execution_id, inputs, actor=f"task:{self.execution_id}/{self.task_id}"
        )

    async def toggle_trigger(
        self, namespace: str, flow_id: str, trigger_id: str, enabled: bool
    ) -> None:
        """Enable or disable a trigger of a flow."""
        from engine.commands import toggle_trigger

        await toggle_trigger(
            self._store(),
            namespace,
            flow_id,
            trigger_id,
            enabled,
            actor=f"task:{self.execution_id}/{self.task_id}",
        )

    def process_group_started(self, pgid: int) -> None:
        """Record a process group the task started in the worker's directory, where the
        next worker of this host finds it should this one die (`stop_process_groups_left_in`).
        One started while the attempt is frozen is frozen at once."""
        self._groups.add(pgid)
        if self.frozen:
            _signal_group(pgid, signal.SIGSTOP)
        if self._process_groups is None:
            return
        try:
            record_process_group(self._process_groups, pgid)
        except OSError as exc:  # the task runs all the same, only less guarded
            log.warning("Process group %d of %s is not recorded: %s", pgid, self.task_run_id, exc)

    def process_group_ended(self, pgid: int) -> None:
        """Forget a process group recorded by `process_group_started`: it is stopped."""
        self._groups.discard(pgid)
        if self._process_groups is not None:
            with contextlib.suppress(OSError):
                (self._process_groups / f"{pgid}{GROUP_RECORD}").unlink(missing_ok=True)

    def freeze(self) -> bool:
        """Stop (SIGSTOP) every process group the task runs; False when it runs none, as a
        task working inside the worker does, which cannot be frozen."""
        if not self._groups:
            return False
        self.frozen = True
        for pgid in self._groups:
            _signal_group(pgid, signal.SIGSTOP)
        return True

    def thaw(self) -> None:
        """Let the frozen process groups go on (SIGCONT)."""
        if self.frozen:
            self.frozen = False
            for pgid in self._groups:
                _signal_group(pgid, signal.SIGCONT)

    def kill_frozen(self) -> None:
        """SIGKILL the frozen process groups: they must end without running again, which a
        SIGTERM they could handle only once resumed would not ensure."""
        if self.frozen:
            self.frozen = False
            for pgid in self._groups:
                _signal_group(pgid, signal.SIGKILL)

    async def get_file(self, uri: str, target: Path | None = None) -> Path:
        """Copy the stored file at `uri` into the working directory (or to `target`)."""
        source = self.storage.local_path(uri)
        destination = target or (self.working_dir / source.name)
        destination.parent.mkdir(parents=True, exist_ok=True)
        await trio.to_thread.run_sync(shutil.copyfile, source, destination)
        return destination


class _Attempt:
    """One attempt this worker claimed, from its claim until its end is recorded."""

    def __init__(self, stored: StoredEvent, version: int, worker_id: str) -> None:
        scheduled = stored.event
        assert isinstance(scheduled, ev.AttemptScheduled)
        self.stored = stored
        self.scheduled = scheduled
        self.stream = ev.attempt_stream(
            scheduled.executionId, scheduled.taskRunId, scheduled.attempt
        )
        self.version = version
        """The stream's version as this worker last wrote it."""
        self.worker_id = worker_id
        self.meta = {"actor": f"worker:{worker_id}"}
        self.scope = trio.CancelScope()
        """Cancelled to stop the task (a kill, or this worker declared lost)."""
        self.outcome: ev.Event | None = None
        """What to record instead of a result once the task stopped."""
        self.ctx: AttemptContext | None = None
        self.inflight: Append | None = None
        """An append sent whose fate is unknown while it is in flight."""
        self.inflight_ends = False
        self.ended = False
        """Its end is recorded (or someone else ended it): nothing left to hand back."""
        self.ran = False
        """The task has returned: what is left is recording its result."""
        self.claimed = trio.current_time()
        """When it was claimed (just committed): the task's `timeout` counts from there, as
        the executor's timer of it does from the claim's recorded time."""
        self.long_lines = 0

    @property
    def ids(self) -> dict[str, Any]:
        s = self.scheduled
        return {"executionId": s.executionId, "taskRunId": s.taskRunId, "attempt": s.attempt}

    def stop(self, outcome: ev.Event) -> None:
        """Stop the task, and record `outcome` instead of its result (the first one given)."""
        if self.outcome is None:
            self.outcome = outcome
        self.scope.cancel()
        if self.ctx is not None:
            self.ctx.kill_frozen()

    def drop(self) -> None:
        """Someone else ended the attempt: stop the task, and record nothing more."""
        self.ended = True
        self.scope.cancel()
        if self.ctx is not None:
            self.ctx.kill_frozen()

    def freeze(self) -> bool:
        """Freeze the task's processes (see `AttemptContext.freeze`)."""
        return self.ctx is not None and not self.ran and self.ctx.freeze()

    def thaw(self) -> None:
        """Let the task's frozen processes go on."""
        if self.ctx is not None:
            self.ctx.thaw()


class _NotRegistered(Exception):
    """The worker's liveness row is gone: it was declared lost."""


class Worker:
    """Runs attempts until cancelled; cancellation hands back what is running, cleanly."""

    def __init__(
        self,
        store: EventStore,
        notifier: Notifier,
        *,
        worker_id: str | None = None,
        slots: int = 16,
        heartbeat_interval: float = 2.0,
        heartbeat_timeout: float = 15.0,
        work_dir: Path | None = None,
        storage: Storage | None = None,
        health: Health | None = None,
        handoff: Handoff | None = None,
        variables: Mapping[str, Any] | None = None,
    ) -> None:
        self.store = store
        self.variables = dict(variables or {})
        """Roots every task renders with besides its execution's (`globals`, `envs`): this
        process's settings, never recorded, so the executor's decisions cannot depend on them."""
        self.notifier = notifier
        self.handoff = handoff
        """What the executor of this process hands over (attempts' definitions), if any."""
        self.id = worker_id or _new_id()
        self.slots = slots
        self.free = slots
        self.heartbeat_interval = heartbeat_interval
        self.heartbeat_timeout = heartbeat_timeout
        self.work_dir = work_dir or Path(tempfile.gettempdir()) / "tiercel-work"
        self.storage = storage or LocalStorage(Path(tempfile.gettempdir()) / "tiercel-storage")
        self.health = health if health is not None else notifier.health
        self.committer = GroupCommitter(store)
        self._capacity = trio.Event()
        self._running: dict[str, _Attempt] = {}
        self._started: dict[str, None] = {}
        self._kills: dict[tuple[str, str | None], int] = {}
        self._timed_out: dict[str, str] = {}
        """Recent attempts the timer service failed on their timeout, by stream, with why."""
        self._live = False
        """It may run attempts: it heartbeated within `heartbeat_timeout`."""
        self._gave_up = False
        """It stopped its attempts after `LAST_RESORT` timeouts without a heartbeat."""
        self._changed = trio.Event()
        self._check_now = trio.Event()
        self._last_beat = 0.0
        self._home = self.work_dir / self.id
        self._lock: int | None = None
        self._runs = 0
        self._registered = False

    @property
    def _meta(self) -> dict[str, str]:
        return {"actor": f"worker:{self.id}"}

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Register, heartbeat, claim and run attempts until cancelled; then hand back what
        is still running and deregister."""
        if self._runs:
            self.id = _new_id()  # a new life: the old id was deregistered for good
        self._runs += 1
        self.committer = GroupCommitter(
            self.store, health=self.health, name=f"{CHECKPOINT}:appends"
        )
        self._running = {}
        self._registered = False
        self.free = self.slots
        self._home = self.work_dir / self.id
        dead = await trio.to_thread.run_sync(self._take_home)
        try:
            await retry(
                self._register,
                what=f"registering worker {self.id}",
                health=self.health,
                component=HEARTBEAT,
            )
            if dead:
                await retry(
                    functools.partial(self._bury, dead),
                    what="recording the workers found dead on this host",
                    health=self.health,
                    component=HEARTBEAT,
                )
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                await nursery.start(self.committer.run)
                nursery.start_soon(self._heartbeats)
                nursery.start_soon(self._deadline)
                position = await retry(
                    lambda: _load_checkpoint(self.store.db, CHECKPOINT),
                    what=f"loading checkpoint {CHECKPOINT}",
                    health=self.health,
                    component=CHECKPOINT,
                )
                kills = Subscription(
                    self.store,
                    self.notifier,
                    position=position,
                    types=["ExecutionKillRequested", "TaskRunStateChanged", "AttemptFailed"],
                    name=KILLS,
                    health=self.health,
                )
                await nursery.start(kills.run, self._follow_kills)
                claims = Subscription(
                    self.store,
                    self.notifier,
                    position=position,
                    types=["AttemptScheduled"],
                    name=CHECKPOINT,
                    health=self.health,
                )
                # Not awaited: a backlog larger than the slots must not hold up startup.
                nursery.start_soon(claims.run, self._handle)
                if self.handoff is not None:
                    self.handoff.claimer = self
                task_status.started()
        finally:
            if self.handoff is not None and self.handoff.claimer is self:
                self.handoff.claimer = None
            with trio.CancelScope(shield=True):
                with trio.move_on_after(STOP_SECONDS) as budget:
                    await self._stop()
                if budget.cancelled_caught:
                    log.warning(
                        "Worker %s could not record its stop within %.0fs; the watchdog will "
                        "abandon what it held",
                        self.id,
                        STOP_SECONDS,
                    )
                await trio.to_thread.run_sync(self._leave_home)
                for name in (CHECKPOINT, KILLS, HEARTBEAT, f"{CHECKPOINT}:appends"):
                    self.health.forget(name)

    # --- liveness ------------------------------------------------------------------------------

    async def _register(self) -> None:
        if self._lock is not None:  # the id a sweeper finds when this process is gone
            os.ftruncate(self._lock, 0)
            os.pwrite(self._lock, self.id.encode(), 0)
        await self.store.db.execute(
            "INSERT INTO engine_workers (worker_id, hostname, pid, started_at, last_seen)"
            " VALUES (%s, %s, %s, clock_timestamp(), clock_timestamp())"
            " ON CONFLICT (worker_id) DO NOTHING",
            (self.id, socket.gethostname(), os.getpid()),
        )
        self._last_beat = trio.current_time()
        self._registered = True
        self._set_live()

    async def _beat(self) -> bool:
        """Refresh this worker's row; False when it is gone (declared lost). A stale row is
        still this worker's: stale only because the database was away, since the watchdog
        deletes, in the same transaction as it records `WorkerLost`, the rows it judges stale
        (and leaves alone one refreshed meanwhile)."""
        rows = await self.store.db.fetchall(
            "UPDATE engine_workers SET last_seen = clock_timestamp() WHERE worker_id = %s"
            " RETURNING worker_id",
            (self.id,),
        )
        return bool(rows)

    async def _heartbeats(self) -> None:
        while True:
            with trio.move_on_after(self.heartbeat_interval):
                await self._check_now.wait()
            self._check_now = trio.Event()
            sent = trio.current_time()
            try:
                alive = await self._beat()
            except Exception as exc:  # the loop outlives any error; `_deadline` keeps time
                if is_transient(exc):
                    log.warning("Heartbeat of worker %s failed: %s", self.id, describe(exc))
                else:
                    log.exception("Heartbeat of worker %s failed", self.id)
                self.health.down(HEARTBEAT, describe(exc))
                continue
            if not alive:
                await self._lost("was declared lost")
                continue
            # Counted from before the update: the database clock stamped it later.
            self._last_beat = sent
            self.health.up(HEARTBEAT)
            if self._live:
                continue
            # It could not heartbeat for a while, and was not declared lost. The answer proves
            # that only as of `sent`: one that took longer than the timeout to come back leaves
            # the watchdog time to have declared it lost since, so it asks again at once.
            if trio.current_time() - sent < self.heartbeat_timeout:
                self._set_live()
            else:
                self._check_now.set()

    async def _deadline(self) -> None:
        """Once this worker could not heartbeat for `heartbeat_timeout` (the watchdog, judging
        by the same timeout, may be abandoning its attempts), freeze its scripts and stop the
        rest; after `LAST_RESORT` timeouts, stop the frozen ones too. Kept apart from the
        heartbeat loop, whose database call may hang for longer than that."""
        while True:
            changed = self._changed
            silent = trio.current_time() - self._last_beat
            if silent >= self.heartbeat_timeout * LAST_RESORT:
                if not self._gave_up:
                    self._gave_up = True
                    why = f"could not heartbeat for {silent:.0f}s"
                    if any(not a.ran and not a.ended for a in self._running.values()):
                        log.warning("Worker %s %s: stopping its attempts", self.id, why)
                    self._stop_attempts(f"worker {self.id} {why}")
                await changed.wait()  # a heartbeat, at last
                continue
            if silent >= self.heartbeat_timeout:
                if self._live:
                    self._suspend()
                left = self.heartbeat_timeout * LAST_RESORT - silent
            else:
                left = self.heartbeat_timeout - silent
            with trio.move_on_after(left):
                await changed.wait()

    def _suspend(self) -> None:
        """Claim nothing more, freeze the running scripts and stop the attempts that run none,
        until a heartbeat says whether this worker was declared lost."""
        self._live = False
        why = f"could not heartbeat for {self.heartbeat_timeout:g}s"
        frozen = stopped = 0
        for attempt in self._running.values():
            if attempt.ran or attempt.ended:
                continue  # only its result is left to record, which waits for the database
            if attempt.freeze():
                frozen += 1
            else:
                attempt.stop(ev.AttemptAbandoned(**attempt.ids, reason=f"worker {self.id} {why}"))
                stopped += 1
        log.warning(
            "Worker %s %s: it claims nothing until it can; froze %d running script(s) until "
            "then, stopped %d attempt(s) running no script",
            self.id,
            why,
            frozen,
            stopped,
        )

    def _set_live(self) -> None:
        """This worker heartbeated (or registered): its frozen scripts go on."""
        thawed = 0
        for attempt in self._running.values():
            if attempt.ctx is not None and attempt.ctx.frozen:
                attempt.thaw()
                thawed += 1
        if thawed:
            log.warning("Worker %s heartbeats again: %d frozen script(s) go on", self.id, thawed)
        self._live = True
        self._gave_up = False
        self._changed.set()
        self._changed = trio.Event()

    def _stop_attempts(self, reason: str) -> None:
        """Stop every running attempt (its frozen scripts killed), to be recorded as abandoned."""
        for attempt in self._running.values():
            attempt.stop(ev.AttemptAbandoned(**attempt.ids, reason=reason))

    async def _lost(self, why: str) -> None:
        """This worker's row is gone, so its attempts were (or may be) abandoned: stop them
        (killing frozen scripts), record the loss and register again under a new id. Results
        already computed are still appended: they are recorded unless abandoned first."""
        old = self.id
        self._live = False
        log.warning("Worker %s %s: stopping its attempts and registering anew", old, why)
        self._stop_attempts(f"worker {old} {why}")
        # Recorded by the watchdog already, unless the row went some other way: once either way.
        lost = Append(
            ev.worker_stream(old),
            [ev.WorkerLost(workerId=old)],
            command_id=f"lost:{old}",
            meta={"actor": f"worker:{old}"},
        )
        await retry(
            lambda: self.store.append_many([lost]),
            what=f"recording that worker {old} was lost",
            health=self.health,
            component=HEARTBEAT,
        )
        self.id = _new_id()
        await retry(
            self._register,
            what=f"registering worker {self.id}",
            health=self.health,
            component=HEARTBEAT,
        )
        log.warning("Worker %s registered again as %s", old, self.id)

    # --- claims and kills ----------------------------------------------------------------------

    # --- claims made by the executor of this process (engine.handoff.Claimer) ----------------

    def reserve(self) -> str | None:
        """Take a slot for an attempt the executor is about to claim for this worker."""
        if not self._live or not self._registered or self.free <= 0:
            return None
        self.free -= 1
        return self.id

    def release(self) -> None:
        """Give back a slot taken by `reserve` for a claim that was not written."""
        self.free += 1
        self._capacity.set()
        self._capacity = trio.Event()

    def claim_check(self, worker_id: str) -> Callable[[psycopg.Connection[Any]], None]:
        """In the executor's transaction: refuse its claims when `worker_id` was declared
        lost (see `_claim_check`)."""

        def check(conn: psycopg.Connection[Any]) -> None:
            if not _registered(conn, worker_id):
                raise ClaimRefused(worker_id)

        return check

    def start_claimed(self, scheduled: StoredEvent, version: int, worker_id: str) -> None:
        """Run an attempt the executor claimed for this worker, in the slot it reserved."""
        s = scheduled.event
        assert isinstance(s, ev.AttemptScheduled)
        self.free += 1  # `_start` takes the slot again
        stream = ev.attempt_stream(s.executionId, s.taskRunId, s.attempt)
        try:
            self._start(scheduled, AppendResult(stream, "written", version), worker_id)
        except RuntimeError:  # the worker stopped meanwhile: the watchdog abandons the claim
            log.warning("Worker %s stopped before it could start %s", worker_id, stream)

    async def _handle(self, batch: list[StoredEvent]) -> None:
        # Attempts the executor of this process claimed for this worker are running already.
        todo = [
            e
            for e in batch
            if isinstance(e.event, ev.AttemptScheduled)
            and ev.attempt_stream(e.event.executionId, e.event.taskRunId, e.event.attempt)
            not in self._started
        ]
        while todo:
            while self.free <= 0:
                await self._capacity.wait()
            take, todo = todo[: self.free], todo[self.free :]
            await self._claim(take)

    async def _claim(self, take: list[StoredEvent]) -> None:
        """Claim the attempts `take` schedules and start those won; wait out database errors
        and this worker being declared lost meanwhile."""
        backoff = Backoff()
        while True:
            while not self._live:
                await self._changed.wait()
            worker_id = self.id
            claims = [_claim_request(e, worker_id) for e in take]
            try:
                results = await self.store.append_many(
                    claims, extra=_claim_check(worker_id, take[-1].seq)
                )
            except _NotRegistered:
                self._check_now.set()  # the heartbeat loop finds out and registers again
                while self._live and self.id == worker_id:
                    await self._changed.wait()
                continue
            except Exception as exc:
                if not is_transient(exc):
                    raise
                delay = backoff.failed()
                log.warning(
                    "Claiming %d attempt(s) failed (%s); retrying", len(take), describe(exc)
                )
                self.health.down(CHECKPOINT, describe(exc))
                await trio.sleep(delay)
                continue
            break
        for stored, result in zip(take, results, strict=True):
            self._start(stored, result, worker_id)

    def _start(self, stored: StoredEvent, result: AppendResult, worker_id: str) -> None:
        attempt = _Attempt(stored, result.version, worker_id)
        # A duplicate is our own claim whose commit we did not see (a retry), unless it is one
        # we already started (a batch handled again after an error).
        if not result.ok or attempt.stream in self._started:
            return
        self._started[attempt.stream] = None
        while len(self._started) > KILL_MEMORY:
            del self._started[next(iter(self._started))]
        self._running[attempt.stream] = attempt
        reason = self._killed(attempt)
        if reason is not None:
            attempt.stop(ev.AttemptKilled(**attempt.ids, reason=reason))
        elif attempt.stream in self._timed_out:
            attempt.drop()
        elif not self._live or self.id != worker_id:
            # Claimed just as this worker lost its liveness: not to run unwatched.
            reason = f"worker {worker_id} lost its liveness as it claimed the attempt"
            attempt.stop(ev.AttemptAbandoned(**attempt.ids, reason=reason))
        self.free -= 1
        self._nursery.start_soon(self._run_attempt, attempt)

    async def _follow_kills(self, batch: list[StoredEvent]) -> None:
        """Stop the attempts of killed executions and task runs, and remember recent kills for
        attempts whose claim is still on its way."""
        for e in batch:
            event = e.event
            if isinstance(event, ev.AttemptFailed):
                if e.meta.get("actor") == TIMERS:
                    self._follow_timeout(event)
                continue
            if isinstance(event, ev.ExecutionKillRequested):
                key: tuple[str, str | None] = (event.executionId, None)
            elif isinstance(event, ev.TaskRunStateChanged) and event.state == "KILLED":
                key = (event.executionId, event.taskRunId)
            else:
                continue
            self._kills[key] = e.seq
            while len(self._kills) > KILL_MEMORY:
                del self._kills[next(iter(self._kills))]
            for attempt in self._running.values():
                reason = self._killed(attempt)
                if reason is not None:
                    attempt.stop(ev.AttemptKilled(**attempt.ids, reason=reason))

    def _follow_timeout(self, event: ev.AttemptFailed) -> None:
        """The timer service failed an attempt whose `timeout` passed, in the attempt's
        stream: its end is recorded, so stop the task now (rather than at the next append,
        which would be refused) and record nothing more of it."""
        stream = ev.attempt_stream(event.executionId, event.taskRunId, event.attempt)
        self._timed_out[stream] = event.message
        while len(self._timed_out) > KILL_MEMORY:
            del self._timed_out[next(iter(self._timed_out))]
        attempt = self._running.get(stream)
        if attempt is not None:
            log.info("%s: %s", stream, event.message)
            attempt.drop()

    def _killed(self, attempt: _Attempt) -> str | None:
        """Why `attempt` must stop, when a kill recorded after it was scheduled covers it."""
        s = attempt.scheduled
        if self._kills.get((s.executionId, None), 0) > attempt.stored.seq:
            return f"execution {s.executionId} was killed"
        if self._kills.get((s.executionId, s.taskRunId), 0) > attempt.stored.seq:
            return f"task run {s.taskRunId} was killed"
        return None

    # --- running an attempt --------------------------------------------------------------------

    async def _definition(self, stored: StoredEvent) -> tuple[dict[str, Any], dict[str, Any]]:
        """The task definition and the render context of the attempt `stored` schedules.

        The one place that reads them: older events embedded both; newer ones only name the
        attempt, and the execution's history up to `stored.seq` holds them.
        """
        scheduled = stored.event
        assert isinstance(scheduled, ev.AttemptScheduled)
        if scheduled.task:
            return scheduled.task, scheduled.context
        if self.handoff is not None:
            handed = self.handoff.take(
                scheduled.executionId, scheduled.taskRunId, scheduled.attempt
            )
            if handed is not None:
                return handed
        from engine.commands import scheduled_attempt

        try:
            return await retry(
                lambda: scheduled_attempt(
                    self.store, scheduled.executionId, scheduled.taskRunId, scheduled.attempt
                ),
                what=f"reading the definition of attempt {scheduled.attempt} of {scheduled.taskRunId}",
            )
        except TiercelError as exc:
            # Runs as a task that fails at once, saying why.
            return {"id": scheduled.taskId, "type": f"(unreadable: {exc.message})"}, {}

    async def _run_attempt(self, attempt: _Attempt) -> None:
        scheduled = attempt.scheduled
        workdir = self._home / f"{scheduled.taskRunId}-{scheduled.attempt}"
        result: ev.Event | None = None
        try:
            async with trio.open_nursery() as nursery:
                done = trio.Event()
                nursery.start_soon(self._flush_logs, attempt, done)
                try:
                    with attempt.scope:
                        result = await self._attempt(attempt, workdir)
                finally:
                    attempt.ran = True
                    done.set()
            if attempt.ended:
                return  # someone else ended it: nothing of ours may be recorded now
            if attempt.scope.cancelled_caught or result is None:
                result = attempt.outcome
            assert result is not None
            await self._finish(attempt, result)
        finally:
            if attempt.ended:
                self._running.pop(attempt.stream, None)
            # else the worker is stopping, and hands the attempt back
            self.free += 1
            self._capacity.set()
            self._capacity = trio.Event()
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(
                    functools.partial(shutil.rmtree, workdir, ignore_errors=True)
                )

    async def _attempt(self, attempt: _Attempt, workdir: Path) -> ev.Event:
        """Run the attempt's task; its result, as the event to record."""
        ids = attempt.ids
        try:
            task, context = await self._definition(attempt.stored)
        except Exception as exc:  # the definition cannot be read: the attempt fails, not us
            log.exception("Reading the definition of %s failed", attempt.stream)
            return ev.AttemptFailed(**ids, message=f"The task's definition cannot be read: {exc}")
        try:
            # SECRET inputs are recorded encrypted: the task gets their values, masked wherever
            # it would show them.
            context, revealed = await retry(
                lambda: secrets.decrypt_values(self.store.db, ids["executionId"], context),
                what=f"reading the key of execution {ids['executionId']}",
            )
        except TiercelError as exc:
            return ev.AttemptFailed(**ids, message=f"The execution's secret values: {exc.message}")
        context = {**context, **self.variables}
        level = str(task.get("logLevel") or "TRACE")
        ctx = AttemptContext(
            attempt.scheduled,
            task,
            context,
            workdir,
            level,
            self.storage,
            self.store,
            process_groups=self._home,
        )
        attempt.ctx = ctx
        for value in revealed:
            ctx.masker.add(value)
        shared = context.get("_workingDirectory")
        try:
            workdir.mkdir(parents=True, exist_ok=True)
            ctx.variables.update(await self._prepare(attempt, task, context, workdir, shared))
        except Exception as exc:
            message = f"Preparing the task failed: {exc}"
            ctx.log("ERROR", message)
            return ev.AttemptFailed(**ids, message=message)
        result = await self._execute(attempt, task, ctx)
        if shared:
            try:
                await self._save_directory(attempt, context, workdir, shared)
                if isinstance(result, ev.AttemptSucceeded) and shared.get("outputFiles"):
                    files = await self._keep_output_files(attempt, context, workdir, shared)
                    result = msgspec.structs.replace(result, workingDirectoryFiles=files)
            except Exception as exc:
                message = f"Keeping the working directory failed: {exc}"
                ctx.log("ERROR", message)
                return ev.AttemptFailed(**ids, message=message)
        return result

    async def _flush_logs(self, attempt: _Attempt, done: trio.Event) -> None:
        """Record the task's log lines while it runs, every `LOG_FLUSH_SECONDS`."""
        while True:
            with trio.move_on_after(LOG_FLUSH_SECONDS):
                await done.wait()
            if done.is_set() or attempt.ended:
                return
            if attempt.ctx is None or not attempt.ctx.lines:
                continue
            events: list[ev.Event] = list(await self._log_events(attempt))
            request = Append(
                attempt.stream,
                events,
                attempt.version,
                f"log:{attempt.stream}:{attempt.version}",
                attempt.meta,
            )
            if await self._send(attempt, request, ends=False):
                return

    async def _finish(self, attempt: _Attempt, outcome: ev.Event) -> None:
        """Record the attempt's last log lines and its outcome."""
        events: list[ev.Event] = [*await self._log_events(attempt), _masked(attempt, outcome)]
        request = Append(
            attempt.stream, events, attempt.version, f"end:{attempt.stream}", attempt.meta
        )
        await self._send(attempt, request, ends=True)

    async def _send(self, attempt: _Attempt, request: Append, *, ends: bool) -> bool:
        """Append `request` to the attempt's stream; True when the attempt has ended."""
        attempt.inflight, attempt.inflight_ends = request, ends
        try:
            result = await self.committer.append(request)
        except Exception:  # not an outage (the committer waits those out): a bug
            log.exception("Recording events of %s failed; they are dropped", attempt.stream)
            attempt.inflight = None
            return False
        attempt.inflight = None
        if not result.ok:
            log.warning("%s was ended meanwhile (abandoned or killed): stopping it", attempt.stream)
            attempt.drop()
            return True
        attempt.version = result.version
        if ends:
            attempt.ended = True
        return ends

    async def _log_events(self, attempt: _Attempt) -> list[ev.AttemptLogged]:
        """The lines the task logged since last asked, as `AttemptLogged` events of bounded
        size: an overlong line is cut, its full text kept in internal storage."""
        ctx = attempt.ctx
        if ctx is None or not ctx.lines:
            return []
        events: list[ev.AttemptLogged] = []
        batch: list[dict[str, Any]] = []
        size = 0
        for line in ctx.take_lines():
            if ctx.masker:
                line = {**line, "message": ctx.masker.text(str(line.get("message", "")))}
            line = await self._bounded(attempt, ctx, line)
            n = len(_json.encode(line))
            if batch and size + n > MAX_LOG_BATCH_BYTES:
                events.append(_logged(attempt, ctx, batch))
                batch, size = [], 0
            batch.append(line)
            size += n
        if batch:
            events.append(_logged(attempt, ctx, batch))
        return events

    async def _bounded(
        self, attempt: _Attempt, ctx: AttemptContext, line: dict[str, Any]
    ) -> dict[str, Any]:
        message = str(line.get("message", ""))
        if len(_json.encode(message)) <= MAX_LOG_LINE_BYTES:
            return line
        full = message.encode("utf-8", errors="replace")
        attempt.long_lines += 1
        name = f"log-line-{attempt.scheduled.attempt}-{attempt.long_lines}.txt"
        try:
            uri = await ctx.put_file(full, name)
            where = f"full text at {uri}"
        except Exception as exc:  # a full storage must not lose the line's start too
            where = f"the full text could not be stored: {exc}"
        cut = _cut(message, MAX_LOG_LINE_BYTES)
        note = f" [line cut at {len(cut.encode('utf-8', errors='replace'))} of {len(full)} bytes; {where}]"
        return {**line, "message": cut + note}

    async def _stop(self) -> None:
        """Hand back what is unfinished (its process is stopped by now), record the stop and
        remove this worker's row; retried while the database is away, within the caller's
        time budget."""
        unfinished = [a for a in self._running.values() if not a.ended]
        if not self._registered and not unfinished:
            return  # it never got to register: nothing to hand back or record
        backoff = Backoff()
        # First what was in flight: it may or may not have landed; its command id tells.
        while resend := [a for a in unfinished if a.inflight is not None]:
            try:
                results = await self.store.append_many([a.inflight for a in resend if a.inflight])
            except Exception as exc:
                if not is_transient(exc):
                    log.exception("Worker %s could not record its stop", self.id)
                    return
                await trio.sleep(backoff.failed())
                continue
            for a, r in zip(resend, results, strict=True):
                if not r.ok or a.inflight_ends:
                    a.ended = True
                else:
                    a.version = r.version
                a.inflight = None
        appends: list[Append] = []
        for a in unfinished:
            if a.ended:
                continue
            outcome = a.outcome or ev.AttemptAbandoned(
                **a.ids, reason=f"worker {a.worker_id} stopped"
            )
            events: list[ev.Event] = [*await self._log_events(a), _masked(a, outcome)]
            appends.append(Append(a.stream, events, a.version, f"end:{a.stream}", a.meta))
        appends.append(
            Append(
                ev.worker_stream(self.id),
                [ev.WorkerStopped(workerId=self.id)],
                command_id=f"stopped:{self.id}",
                meta=self._meta,
            )
        )
        worker_id = self.id

        def deregister(conn: psycopg.Connection[Any]) -> None:
            conn.execute("DELETE FROM engine_workers WHERE worker_id = %s", (worker_id,))

        while True:
            try:
                results = await self.store.append_many(appends, extra=deregister)
            except Exception as exc:
                if not is_transient(exc):
                    log.exception("Worker %s could not record its stop", self.id)
                    return
                log.warning("Worker %s could not record its stop yet: %s", self.id, describe(exc))
                await trio.sleep(backoff.failed())
                continue
            break
        handed = sum(1 for r in results[:-1] if r.status == "written")
        if handed:
            log.info("Worker %s stopped and handed back %d attempt(s)", self.id, handed)
        self._running.clear()

    # --- the work directory --------------------------------------------------------------------

    async def _bury(self, dead: list[str]) -> None:
        """Declare lost, at once, the workers whose process is known dead (their lock on this
        host is free) but whose row is still there: the watchdog then abandons their attempts
        now rather than after the heartbeat timeout (a worker killed and started again)."""
        rows = await self.store.db.fetchall(
            "SELECT worker_id FROM engine_workers WHERE worker_id = ANY(%s)", (dead,)
        )
        ids = [r["worker_id"] for r in rows]
        if not ids:
            return

        def forget(conn: psycopg.Connection[Any]) -> None:
            conn.execute("DELETE FROM engine_workers WHERE worker_id = ANY(%s)", (ids,))

        await self.store.append_many(
            [
                Append(
                    ev.worker_stream(w),
                    [ev.WorkerLost(workerId=w)],
                    command_id=f"lost:{w}",
                    meta=self._meta,
                )
                for w in ids
            ],
            extra=forget,
        )
        log.warning("Worker(s) %s died on this host: declared lost", ", ".join(ids))

    def _take_home(self) -> list[str]:
        """Lock this worker's directory under `work_dir`, and remove those of workers of this
        host that are gone (their lock is free: the process ended or it stopped); return the
        ids those workers last registered under."""
        dead: list[str] = []
        self.work_dir.mkdir(parents=True, exist_ok=True)
        # Locked before it is in place under its name, so no sweeper ever finds it free.
        staging = self.work_dir / f".{self.id}.lock.new"
        lock = os.open(staging, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.replace(staging, self.work_dir / f"{self.id}.lock")
        self._lock = lock
        self._home.mkdir(exist_ok=True)
        for other in self.work_dir.glob("*.lock"):
            if other.stem == self.id:
                continue
            try:
                fd = os.open(other, os.O_RDWR)
            except OSError:
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                continue  # a live worker holds it
            try:
                last_id = os.pread(fd, 64, 0).decode(errors="replace").strip()
                if last_id:
                    dead.append(last_id)
                # Before its attempts are declared lost and run again: scripts run in sessions
                # of their own, which the death of their worker may not have reached.
                stopped = stop_process_groups_left_in(self.work_dir / other.stem)
                if stopped:
                    log.warning(
                        "Killed process group(s) %s that dead worker %s left running",
                        ", ".join(map(str, stopped)),
                        last_id or other.stem,
                    )
                shutil.rmtree(self.work_dir / other.stem, ignore_errors=True)
                other.unlink(missing_ok=True)
            finally:
                os.close(fd)
        return dead

    def _leave_home(self) -> None:
        shutil.rmtree(self._home, ignore_errors=True)
        if self._lock is not None:
            (self._home.parent / f"{self._home.name}.lock").unlink(missing_ok=True)
            os.close(self._lock)
            self._lock = None

    # --- preparing and running the task --------------------------------------------------------

    async def _prepare(
        self,
        attempt: _Attempt,
        task: dict[str, Any],
        context: dict[str, Any],
        workdir: Path,
        shared: dict[str, Any] | None,
    ) -> dict[str, Any]:
        """Set up what the attempt needs before it runs: the shared directory of a
        WorkingDirectory; return the template functions that read the execution's history."""
        if shared:
            await self._restore_directory(attempt, context, workdir, shared)
        definition = msgspec.json.encode(task).decode()
        extra: dict[str, Any] = {"read": self._read}
        if "secret(" in definition and attempt.ctx is not None:
            namespace = str((context.get("flow") or {}).get("namespace", ""))
            stored, unreadable = await secrets.namespace_values(self.store.db, namespace)
            extra["secret"] = secrets.lookup(namespace, stored, unreadable, attempt.ctx.masker.add)
        if "errorLogs(" in definition:
            lines = await self._error_logs(attempt.scheduled.executionId)
            extra["errorLogs"] = lambda: lines
        if "kv(" in definition:
            namespace = str((context.get("flow") or {}).get("namespace", ""))
            extra["kv"] = await self._kv_snapshot(namespace, task)
        return extra

    def _read(self, uri: Any) -> str:
        # Rendering is synchronous; stored files read this way are expected to be small.
        try:
            return self.storage.read_bytes(str(uri)).decode("utf-8", errors="replace")
        except TiercelError as exc:
            raise TemplateError(f"read({uri!r}): {exc.message}") from None

    async def _kv_snapshot(self, flow_namespace: str, task: dict[str, Any]) -> Callable[..., Any]:
        """`kv()` for templates, served from the entries read before the task runs (rendering
        cannot wait for the database): those of the flow's namespace and of every namespace
        the task's expressions name as a literal string."""
        wanted = {flow_namespace, *_kv_namespaces(task)}
        entries: dict[str, dict[str, Any]] = {}
        refused: dict[str, str] = {}
        for ns in sorted(n for n in wanted if n):
            try:
                entries[ns] = await kv.kv_entries(self.store, ns)
            except InvalidRequest as exc:  # a bad namespace fails the expression, not the worker
                refused[ns] = exc.message

        def lookup(key: str, namespace: str | None = None, errorOnMissing: bool = True) -> Any:
            ns = str(namespace) if namespace else flow_namespace
            call = f"kv('{key}', '{ns}')"
            if ns in refused:
                raise TemplateError(f"{call}: {refused[ns]}")
            if ns not in entries:
                raise TemplateError(
                    f"{call}: the entries of namespace {ns} were not read before the task ran; "
                    "write the namespace as a literal string in the expression"
                )
            values = entries[ns]
            if key in values:
                return values[key]
            if errorOnMissing:
                raise TemplateError(
                    f"{call}: no such key (or it expired); set it with a kv.Set task "
                    "or pass errorOnMissing=false"
                )
            return None

        return lookup

    def _snapshot(
        self, attempt: _Attempt, context: dict[str, Any], shared: dict[str, Any]
    ) -> tuple[str, str]:
        flow = context.get("flow") or {}
        prefix = task_prefix(
            str(flow.get("namespace", "")),
            str(flow.get("id", "")),
            attempt.scheduled.executionId,
            str(shared["taskId"]),
            str(shared["taskRunId"]),
        )
        return prefix, "working-directory.tar"

    async def _restore_directory(
        self, attempt: _Attempt, context: dict[str, Any], workdir: Path, shared: dict[str, Any]
    ) -> None:
        prefix, name = self._snapshot(attempt, context, shared)
        uri = to_uri(f"{prefix}/{name}")
        if self.storage.exists(uri):
            archive = self.storage.local_path(uri)

            def unpack() -> None:
                with tarfile.open(archive) as tar:
                    tar.extractall(workdir, filter="data")

            await trio.to_thread.run_sync(unpack)
            return
        # The first task of the directory: lay out the WorkingDirectory's own inputFiles.
        files = shared.get("inputFiles")
        if isinstance(files, dict):
            variables = dict(context)

            def lay_out(files: dict[str, Any]) -> None:  # renders: off the event loop
                for relative, content in files.items():
                    target = (workdir / str(relative)).resolve()
                    if workdir.resolve() not in target.parents:
                        continue
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_text(str(templating.render_value(content, variables)))

            await trio.to_thread.run_sync(lay_out, files)

    async def _save_directory(
        self, attempt: _Attempt, context: dict[str, Any], workdir: Path, shared: dict[str, Any]
    ) -> None:
        prefix, name = self._snapshot(attempt, context, shared)

        def pack() -> bytes:
            buffer = io.BytesIO()
            with tarfile.open(fileobj=buffer, mode="w") as tar:
                tar.add(workdir, arcname=".")
            return buffer.getvalue()

        data = await trio.to_thread.run_sync(pack)
        await trio.to_thread.run_sync(
            functools.partial(self.storage.put, prefix, name, data, overwrite=True)
        )

    async def _keep_output_files(
        self, attempt: _Attempt, context: dict[str, Any], workdir: Path, shared: dict[str, Any]
    ) -> dict[str, str]:
        """Store the WorkingDirectory's `outputFiles` as they are now (one place per name, so
        the last task's version wins)."""
        prefix, _ = self._snapshot(attempt, context, shared)
        variables = dict(context)
        files: dict[str, str] = {}
        patterns = [str(p) for p in shared.get("outputFiles") or []]
        globs = await trio.to_thread.run_sync(templating.render_value, patterns, variables)
        for glob in globs:
            for path in sorted(workdir.glob(str(glob))):
                if path.is_file():
                    _check_inside(workdir, path)
                    name = path.relative_to(workdir).as_posix()
                    put = functools.partial(
                        self.storage.put,
                        f"{prefix}/outputFiles",
                        name.replace("/", "__"),
                        path,
                        overwrite=True,
                    )
                    files[name] = await trio.to_thread.run_sync(put)
        return files

    async def _error_logs(self, execution_id: str) -> list[dict[str, Any]]:
        history = await self.store.read_execution(execution_id)
        failed = {e.event.taskRunId for e in history if isinstance(e.event, ev.AttemptFailed)}
        lines = []
        for e in history:
            event = e.event
            if isinstance(event, ev.AttemptLogged) and event.taskRunId in failed:
                for line in event.lines:
                    if line.get("level") == "ERROR":
                        lines.append({**line, "taskId": event.taskId, "taskRunId": event.taskRunId})
        return lines

    async def _timeout_used(self, attempt: _Attempt) -> float:
        """How long ago, when the attempt runs again one whose worker was lost, the claim its
        `timeout` counts from was made (it goes on with that clock, as the executor's timer
        of the timeout does); 0 when it counts from its own claim."""
        s = attempt.scheduled
        if s.attempt <= 1:
            return 0.0
        try:
            return await retry(
                lambda: timeout_elapsed(self.store.db, s.executionId, s.taskRunId, s.attempt),
                what=f"reading when attempt {s.attempt} of {s.taskRunId} started to count",
            )
        except Exception:  # not worth failing the attempt for: the executor's timer holds
            log.exception("Reading how long %s has run failed", attempt.stream)
            return 0.0

    async def _execute(
        self, attempt: _Attempt, definition: dict[str, Any], ctx: AttemptContext
    ) -> ev.Event:
        ids = attempt.ids
        type_name = str(definition.get("type") or attempt.scheduled.taskType)
        cls = task_type(type_name)
        if cls is None or not issubclass(cls, RunnableTask):
            message = f"No worker plugin for task type '{type_name}': install it on the workers"
            ctx.log("ERROR", message)
            return ev.AttemptFailed(**ids, message=message)
        try:
            task = msgspec.convert(definition, cls)
        except msgspec.ValidationError as exc:
            message = f"Invalid task definition: {exc}"
            ctx.log("ERROR", message)
            return ev.AttemptFailed(**ids, message=message)
        timeout = _timeout_seconds(task.timeout)
        deadline = None
        if timeout is not None:
            used = await self._timeout_used(attempt)
            # From the claim of the attempt it counts from (its own, or one it runs again).
            deadline = trio.current_time() - used + timeout if used else attempt.claimed + timeout
        try:
            left = None if deadline is None else deadline - trio.current_time()
            with trio.fail_after(max(left, 0.0)) if left is not None else _no_limit():
                outputs = await task.run(ctx)
        except TaskWarning as exc:
            ctx.log("WARN", str(exc))
            return ev.AttemptSucceeded(
                **ids, state="WARNING", outputs=exc.outputs, metrics=ctx.metrics
            )
        except TaskFailure as exc:
            ctx.log("ERROR", str(exc))
            return ev.AttemptFailed(
                **ids, message=str(exc), outputs=exc.outputs, metrics=ctx.metrics
            )
        except trio.TooSlowError:
            message = f"Timeout: the task ran longer than {task.timeout}"
            ctx.log("ERROR", message)
            return ev.AttemptFailed(**ids, message=message)
        except Exception as exc:  # a task's bug fails its attempt, not the worker
            message = str(exc) or type(exc).__name__
            ctx.log("ERROR", message)
            return ev.AttemptFailed(**ids, message=message)
        size = len(msgspec.json.encode(outputs or {}))
        if size > MAX_OUTPUT_BYTES:
            message = (
                f"The outputs are {size} bytes, over the {MAX_OUTPUT_BYTES} bytes a task may "
                "return: write large data to a file (outputFiles, put_file) and output its URI"
            )
            ctx.log("ERROR", message)
            return ev.AttemptFailed(**ids, message=message)
        return ev.AttemptSucceeded(**ids, outputs=outputs or {}, metrics=ctx.metrics)


def record_process_group(home: Path, pgid: int) -> None:
    """Record in `home` (a worker's directory) that process group `pgid` runs a script of
    one of its attempts: the group's id, the start time of its leader and the host's boot id,
    which tell a later reader whether that pgid still names the same group."""
    start = _start_ticks(pgid)
    if start is None:
        return  # gone already, or no /proc: nothing a later reader could check
    record = {"pgid": pgid, "start": start, "boot": _boot_id()}
    (home / f"{pgid}{GROUP_RECORD}").write_bytes(_json.encode(record))


def stop_process_groups_left_in(home: Path) -> list[int]:
    """SIGKILL the process groups recorded in `home`, the directory of a worker that died,
    and return their ids. Pids are reused, so a group is killed only while it is verifiably
    the one recorded: its leader has the recorded start time, or one of its processes still
    works inside `home`; a group that merely has the recorded id is left alone."""
    records: dict[int, int] = {}
    boot = _boot_id()
    for path in home.glob(f"*{GROUP_RECORD}"):
        try:
            record = msgspec.json.decode(path.read_bytes())
            if record["boot"] == boot:
                records[int(record["pgid"])] = int(record["start"])
        except (OSError, msgspec.DecodeError, KeyError, TypeError, ValueError):
            continue  # cut short as its worker died: nothing to check it against
    if not records:
        return []
    inside = os.path.realpath(home) + os.sep
    ours: set[int] = set()
    for pid, pgid, start in _processes():
        if pgid not in records or pgid in ours:
            continue
        if pid == pgid and start == records[pgid]:
            ours.add(pgid)
            continue
        try:
            cwd = os.readlink(f"/proc/{pid}/cwd")
        except OSError:
            continue
        if cwd.removesuffix(" (deleted)").startswith(inside):
            ours.add(pgid)
    stopped = []
    for pgid in sorted(ours):
        try:
            os.killpg(pgid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            continue
        stopped.append(pgid)
    return stopped


def _signal_group(pgid: int, signum: int) -> None:
    """Send `signum` to process group `pgid`; one already gone, or no longer ours, is left."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signum)


def _stat(pid: int | str) -> list[str]:
    """The fields of /proc/<pid>/stat from the third (the state) on; [] when it is gone."""
    try:
        # The command name, in parentheses, may itself hold spaces and parentheses.
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return []


def _start_ticks(pid: int) -> int | None:
    """When the process started, in clock ticks after boot (field 22 of its stat)."""
    fields = _stat(pid)
    return int(fields[19]) if len(fields) > 19 else None


def _processes() -> list[tuple[int, int, int]]:
    """(pid, process group, start ticks) of every live process of the host (not zombies)."""
    try:
        entries = os.listdir("/proc")
    except OSError:
        return []
    found = []
    for entry in entries:
        fields = _stat(entry) if entry.isdigit() else []
        if len(fields) > 19 and fields[0] != "Z":
            found.append((int(entry), int(fields[2]), int(fields[19])))
    return found


@functools.cache
def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def _claim_request(stored: StoredEvent, worker_id: str) -> Append:
    s = stored.event
    assert isinstance(s, ev.AttemptScheduled)
    return claim_append(s, worker_id)


def _claim_check(worker_id: str, position: int) -> Callable[[psycopg.Connection[Any]], None]:
    """In the claims' transaction: move the checkpoint, and refuse the claims when the worker's
    row is gone. Appends are serialised, and the watchdog deletes the row in an append's
    transaction, so a claim never commits after its worker was declared lost."""

    def check(conn: psycopg.Connection[Any]) -> None:
        save_checkpoint(conn, CHECKPOINT, position)
        if not _registered(conn, worker_id):
            raise _NotRegistered(worker_id)

    return check


def _registered(conn: psycopg.Connection[Any], worker_id: str) -> bool:
    row = conn.execute("SELECT 1 FROM engine_workers WHERE worker_id = %s", (worker_id,))
    return row.fetchone() is not None


def _logged(
    attempt: _Attempt, ctx: AttemptContext, lines: list[dict[str, Any]]
) -> ev.AttemptLogged:
    return ev.AttemptLogged(**attempt.ids, taskId=ctx.task_id, lines=lines)


def _cut(message: str, limit: int) -> str:
    """The longest start of `message` whose JSON encoding fits in `limit` bytes."""
    n = min(len(message), limit)
    while n > 0:
        size = len(_json.encode(message[:n]))
        if size <= limit:
            return message[:n]
        n = min(n - 1, n * limit // size)
    return ""


_KV_CALL = re.compile(r"\bkv\(([^()]*)\)")
_KV_NAMESPACE_ARG = re.compile(r"\bnamespace\s*=\s*(['\"])([^'\"]+)\1")
_KV_SECOND_ARG = re.compile(r"^\s*(?:key\s*=\s*)?(['\"])[^'\"]*\1\s*,\s*(['\"])([^'\"]+)\2")


def _kv_namespaces(value: Any) -> set[str]:
    """The namespaces that `kv(...)` calls inside a task definition name as literal strings,
    positionally (`kv('k', 'ns')`) or by name (`kv('k', namespace='ns')`)."""
    found: set[str] = set()
    if isinstance(value, str):
        for call in _KV_CALL.finditer(value):
            args = call.group(1)
            if named := _KV_NAMESPACE_ARG.search(args):
                found.add(named.group(2))
            elif second := _KV_SECOND_ARG.match(args):
                found.add(second.group(3))
    elif isinstance(value, dict):
        for item in value.values():
            found |= _kv_namespaces(item)
    elif isinstance(value, list):
        for item in value:
            found |= _kv_namespaces(item)
    return found


def _masked(attempt: _Attempt, outcome: ev.Event) -> ev.Event:
    """`outcome` with the attempt's secret values masked in whatever the task gave it."""
    masker = attempt.ctx.masker if attempt.ctx is not None else None
    if not masker:
        return outcome
    changes = {
        name: masker.value(getattr(outcome, name))
        for name in ("outputs", "metrics", "message", "reason")
        if hasattr(outcome, name)
    }
    return msgspec.structs.replace(outcome, **changes)


def _check_inside(root: Path, path: Path) -> None:
    """Refuse to store a file that resolves outside the attempt's directory: a script could
    otherwise link one of its outputs to a file only the worker may read (its /proc/self/environ,
    the master key), and have the worker copy it into storage."""
    resolved = path.resolve()
    if resolved != root.resolve() and root.resolve() not in resolved.parents:
        raise TaskFailure(
            f"{path.name} leads outside the working directory (a link?): only files inside it "
            "can be kept"
        )


def _timeout_seconds(value: str | None) -> float | None:
    return parse_duration(value).total_seconds() if value else None


class _no_limit:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None
