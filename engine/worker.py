"""The worker: claims task-run attempts, runs them and records their logs and results.

An attempt is claimed by appending `AttemptClaimed` as the first event of the attempt's own
stream: the unique (stream, version) pair lets exactly one worker win, whatever the number of
workers. Results go out through a group committer, so concurrent attempts share commits. A
worker heartbeats; the watchdog abandons the attempts of one that stops doing so.
"""

from __future__ import annotations

import base64
import datetime as dt
import functools
import io
import logging
import os
import re
import shutil
import socket
import tarfile
import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import psycopg
import trio

from engine import events as ev
from engine import kv, templating
from engine.batcher import GroupCommitter
from engine.db import Notifier
from engine.duration import parse_duration
from engine.errors import DatabaseUnavailable, InvalidRequest, TemplateError, TiercelError
from engine.plugin import RunnableTask, TaskFailure, TaskWarning, task_type
from engine.storage import LocalStorage, Storage, task_prefix, to_uri
from engine.store import NO_STREAM, Append, EventStore, save_checkpoint
from engine.store import load_checkpoint as _load_checkpoint
from engine.subscription import Subscription

log = logging.getLogger(__name__)

CHECKPOINT = "worker"
MAX_OUTPUT_BYTES = 1024 * 1024
"""Outputs ride inside events; anything bigger belongs in internal storage."""
LEVELS = ("TRACE", "DEBUG", "INFO", "WARN", "ERROR")


def _now() -> str:
    at = dt.datetime.now(dt.UTC)
    return at.strftime("%Y-%m-%dT%H:%M:%S.") + f"{at.microsecond // 1000:03d}Z"


class AttemptContext:
    """What a running task sees: its variables, a renderer, a logger, files and metrics."""

    def __init__(
        self,
        scheduled: ev.AttemptScheduled,
        working_dir: Path,
        min_level: str,
        storage: Storage,
        store: EventStore | None = None,
    ) -> None:
        self.execution_id = scheduled.executionId
        self.task_run_id = scheduled.taskRunId
        self.attempt = scheduled.attempt
        self.variables: dict[str, Any] = dict(scheduled.context)
        flow = self.variables.get("flow") or {}
        self.namespace = str(flow.get("namespace", ""))
        self.flow_id = str(flow.get("id", ""))
        self.task_id = str(scheduled.task.get("id", ""))
        self.working_dir = working_dir
        self.storage = storage
        self.store = store
        self.lines: list[dict[str, Any]] = []
        self.metrics: list[dict[str, Any]] = []
        self._min = LEVELS.index(min_level) if min_level in LEVELS else 0

    def render(self, value: Any) -> Any:
        """Render templates inside `value` with the attempt's variables."""
        return templating.render_value(value, self.variables)

    def log(self, level: str, message: str) -> None:
        """Keep one log line (dropped when below the task's `logLevel`)."""
        level = "WARN" if level == "WARNING" else level
        if level in LEVELS and LEVELS.index(level) < self._min:
            return
        self.lines.append({"timestamp": _now(), "level": level, "message": message})

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
    ) -> None:
        """Set a key of a namespace's KV store."""
        await kv.kv_set(
            self._store(),
            namespace,
            key,
            value,
            ttl=parse_duration(ttl) if ttl else None,
            overwrite=overwrite,
            actor=f"task:{self.execution_id}/{self.task_id}",
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

    async def get_file(self, uri: str, target: Path | None = None) -> Path:
        """Copy the stored file at `uri` into the working directory (or to `target`)."""
        source = self.storage.local_path(uri)
        destination = target or (self.working_dir / source.name)
        destination.parent.mkdir(parents=True, exist_ok=True)
        await trio.to_thread.run_sync(shutil.copyfile, source, destination)
        return destination


class Worker:
    """Runs attempts until cancelled; cancellation abandons what is running, cleanly."""

    def __init__(
        self,
        store: EventStore,
        notifier: Notifier,
        *,
        worker_id: str | None = None,
        slots: int = 16,
        heartbeat_interval: float = 3.0,
        work_dir: Path | None = None,
        storage: Storage | None = None,
    ) -> None:
        self.store = store
        self.notifier = notifier
        self.id = worker_id or uuid.uuid4().hex[:12]
        self.slots = slots
        self.free = slots
        self.heartbeat_interval = heartbeat_interval
        self.work_dir = work_dir or Path(tempfile.gettempdir()) / "tiercel-work"
        self.storage = storage or LocalStorage(Path(tempfile.gettempdir()) / "tiercel-storage")
        self.committer = GroupCommitter(store)
        self._capacity = trio.Event()
        self._meta = {"actor": f"worker:{self.id}"}
        self._running: dict[str, tuple[ev.AttemptScheduled, int]] = {}

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Heartbeat, claim and run attempts until cancelled."""
        stream = ev.worker_stream(self.id)
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                await nursery.start(self.committer.run)
                await self._beat()
                nursery.start_soon(self._heartbeats)
                position = await _load_checkpoint(self.store.db, CHECKPOINT)
                sub = Subscription(
                    self.store, self.notifier, position=position, types=["AttemptScheduled"]
                )
                await nursery.start(sub.run, self._handle)
                task_status.started()
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(10):
                await self._stop(stream)

    async def _stop(self, stream: str) -> None:
        abandons = [
            Append(
                ev.attempt_stream(s.executionId, s.taskRunId, s.attempt),
                [
                    ev.AttemptAbandoned(
                        executionId=s.executionId,
                        taskRunId=s.taskRunId,
                        attempt=s.attempt,
                        reason=f"worker {self.id} stopped",
                    )
                ],
                version,
                meta=self._meta,
            )
            for s, version in self._running.values()
        ]
        abandons.append(Append(stream, [ev.WorkerStopped(workerId=self.id)], meta=self._meta))
        try:
            await self.store.append_many(abandons)
        except (psycopg.Error, OSError, DatabaseUnavailable) as exc:
            # The watchdog will find the attempts of a worker that stopped heartbeating.
            log.warning("Worker %s could not record its stop: %s", self.id, exc)

    async def _beat(self) -> None:
        await self.committer.append(
            Append(
                ev.worker_stream(self.id),
                [ev.WorkerHeartbeat(workerId=self.id, hostname=socket.gethostname())],
                meta=self._meta,
            )
        )

    async def _heartbeats(self) -> None:
        while True:
            await trio.sleep(self.heartbeat_interval)
            try:
                await self._beat()
            except psycopg.Error as exc:
                log.warning("Heartbeat of worker %s failed: %s", self.id, exc)

    async def _handle(self, batch: list[Any]) -> None:
        todo = [e for e in batch if isinstance(e.event, ev.AttemptScheduled)]
        while todo:
            while self.free <= 0:
                await self._capacity.wait()
            take, todo = todo[: self.free], todo[self.free :]
            claims = [
                Append(
                    ev.attempt_stream(e.event.executionId, e.event.taskRunId, e.event.attempt),
                    [
                        ev.AttemptClaimed(
                            executionId=e.event.executionId,
                            taskRunId=e.event.taskRunId,
                            attempt=e.event.attempt,
                            workerId=self.id,
                        )
                    ],
                    NO_STREAM,
                    f"claim:{e.event.executionId}:{e.event.taskRunId}:{e.event.attempt}:{self.id}",
                    self._meta,
                )
                for e in take
            ]
            last = take[-1].seq
            results = await self.store.append_many(claims, extra=_checkpoint_at(last))
            for stored, result in zip(take, results, strict=True):
                if result.ok:
                    self.free -= 1
                    self._nursery.start_soon(self._run_attempt, stored.event, result.version)

    async def _run_attempt(self, scheduled: ev.AttemptScheduled, version: int) -> None:
        scheduled = await self._with_definition(scheduled)
        stream = ev.attempt_stream(scheduled.executionId, scheduled.taskRunId, scheduled.attempt)
        self._running[stream] = (scheduled, version)
        workdir = self.work_dir / f"{scheduled.taskRunId}-{scheduled.attempt}"
        shared = scheduled.context.get("_workingDirectory")
        try:
            scheduled = await self._prepare(scheduled, workdir, shared)
            result, ctx = await self._execute(scheduled, workdir)
            if shared:
                await self._save_directory(scheduled, workdir, shared)
                if isinstance(result, ev.AttemptSucceeded) and shared.get("outputFiles"):
                    files = await self._keep_output_files(scheduled, workdir, shared)
                    result = msgspec.structs.replace(result, workingDirectoryFiles=files)
            events: list[ev.Event] = []
            if ctx.lines:
                events.append(
                    ev.AttemptLogged(
                        executionId=scheduled.executionId,
                        taskRunId=scheduled.taskRunId,
                        taskId=scheduled.task.get("id", ""),
                        attempt=scheduled.attempt,
                        lines=ctx.lines,
                    )
                )
            events.append(result)
            outcome = await self.committer.append(
                Append(stream, events, version, f"result:{stream}", self._meta)
            )
            if not outcome.ok:
                log.warning("Result of %s dropped: the attempt was abandoned meanwhile", stream)
        finally:
            self._running.pop(stream, None)
            shutil.rmtree(workdir, ignore_errors=True)
            self.free += 1
            self._capacity.set()
            self._capacity = trio.Event()

    async def _with_definition(self, scheduled: ev.AttemptScheduled) -> ev.AttemptScheduled:
        """The scheduled attempt with its task definition and render context, which the
        worker rebuilds from the execution's history (older events embedded them)."""
        if scheduled.task:
            return scheduled
        from engine.commands import scheduled_attempt

        try:
            task, context = await scheduled_attempt(
                self.store, scheduled.executionId, scheduled.taskRunId, scheduled.attempt
            )
        except TiercelError as exc:
            # Runs as a task that fails at once, saying why.
            task = {"id": scheduled.taskId, "type": f"(unreadable: {exc.message})"}
            context = {}
        return msgspec.structs.replace(scheduled, task=task, context=context)

    async def _prepare(
        self, scheduled: ev.AttemptScheduled, workdir: Path, shared: dict[str, Any] | None
    ) -> ev.AttemptScheduled:
        """Set up what the attempt needs before it runs: the shared directory of a
        WorkingDirectory, and the template functions that read the execution's history."""
        workdir.mkdir(parents=True, exist_ok=True)
        if shared:
            await self._restore_directory(scheduled, workdir, shared)
        definition = msgspec.json.encode(scheduled.task).decode()
        extra: dict[str, Any] = {"read": self._read, "secret": _secret}
        if "errorLogs(" in definition:
            lines = await self._error_logs(scheduled.executionId)
            extra["errorLogs"] = lambda: lines
        if "kv(" in definition:
            namespace = str((scheduled.context.get("flow") or {}).get("namespace", ""))
            extra["kv"] = await self._kv_snapshot(namespace, scheduled.task)
        return msgspec.structs.replace(scheduled, context={**scheduled.context, **extra})

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

    def _snapshot(self, scheduled: ev.AttemptScheduled, shared: dict[str, Any]) -> tuple[str, str]:
        flow = scheduled.context.get("flow") or {}
        prefix = task_prefix(
            str(flow.get("namespace", "")),
            str(flow.get("id", "")),
            scheduled.executionId,
            str(shared["taskId"]),
            str(shared["taskRunId"]),
        )
        return prefix, "working-directory.tar"

    async def _restore_directory(
        self, scheduled: ev.AttemptScheduled, workdir: Path, shared: dict[str, Any]
    ) -> None:
        prefix, name = self._snapshot(scheduled, shared)
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
            variables = dict(scheduled.context)
            for relative, content in files.items():
                target = (workdir / str(relative)).resolve()
                if workdir.resolve() not in target.parents:
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_text(str(templating.render_value(content, variables)))

    async def _save_directory(
        self, scheduled: ev.AttemptScheduled, workdir: Path, shared: dict[str, Any]
    ) -> None:
        prefix, name = self._snapshot(scheduled, shared)

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
        self, scheduled: ev.AttemptScheduled, workdir: Path, shared: dict[str, Any]
    ) -> dict[str, str]:
        """Store the WorkingDirectory's `outputFiles` as they are now (one place per name, so
        the last task's version wins)."""
        prefix, _ = self._snapshot(scheduled, shared)
        variables = dict(scheduled.context)
        files: dict[str, str] = {}
        for pattern in shared.get("outputFiles") or []:
            glob = str(templating.render(str(pattern), variables))
            for path in sorted(workdir.glob(glob)):
                if path.is_file():
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

    async def _execute(
        self, scheduled: ev.AttemptScheduled, workdir: Path
    ) -> tuple[ev.Event, AttemptContext]:
        ids: dict[str, Any] = {
            "executionId": scheduled.executionId,
            "taskRunId": scheduled.taskRunId,
            "attempt": scheduled.attempt,
        }
        type_name = str(scheduled.task.get("type"))
        level = str(scheduled.task.get("logLevel") or "TRACE")
        ctx = AttemptContext(scheduled, workdir, level, self.storage, self.store)
        cls = task_type(type_name)
        if cls is None or not issubclass(cls, RunnableTask):
            message = f"No worker plugin for task type '{type_name}': install it on the workers"
            ctx.log("ERROR", message)
            return ev.AttemptFailed(**ids, message=message), ctx
        task = msgspec.convert(scheduled.task, cls)
        timeout = _timeout_seconds(task.timeout)
        workdir.mkdir(parents=True, exist_ok=True)
        try:
            with trio.fail_after(timeout) if timeout else _no_limit():
                outputs = await task.run(ctx)
        except TaskWarning as exc:
            ctx.log("WARN", str(exc))
            return (
                ev.AttemptSucceeded(
                    **ids, state="WARNING", outputs=exc.outputs, metrics=ctx.metrics
                ),
                ctx,
            )
        except TaskFailure as exc:
            ctx.log("ERROR", str(exc))
            return (
                ev.AttemptFailed(**ids, message=str(exc), outputs=exc.outputs, metrics=ctx.metrics),
                ctx,
            )
        except trio.TooSlowError:
            message = f"Timeout: the task ran longer than {task.timeout}"
            ctx.log("ERROR", message)
            return ev.AttemptFailed(**ids, message=message), ctx
        except Exception as exc:  # a task's bug fails its attempt, not the worker
            message = str(exc) or type(exc).__name__
            ctx.log("ERROR", message)
            return ev.AttemptFailed(**ids, message=message), ctx
        size = len(msgspec.json.encode(outputs or {}))
        if size > MAX_OUTPUT_BYTES:
            message = (
                f"The outputs are {size} bytes, over the {MAX_OUTPUT_BYTES} bytes an event may "
                "carry: write large data to a file (outputFiles, put_file) and output its URI"
            )
            ctx.log("ERROR", message)
            return ev.AttemptFailed(**ids, message=message), ctx
        return ev.AttemptSucceeded(**ids, outputs=outputs or {}, metrics=ctx.metrics), ctx


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


def _secret(name: str) -> str:
    """A secret, by Kestra's open-source convention: env var SECRET_<NAME>, base64-encoded."""
    raw = os.environ.get(f"SECRET_{name}")
    if raw is None:
        raise TemplateError(
            f"secret('{name}') is not set: give the workers the environment variable "
            f"SECRET_{name} holding its value in base64"
        )
    try:
        return base64.b64decode(raw).decode()
    except (ValueError, UnicodeDecodeError):
        raise TemplateError(f"SECRET_{name} is not valid base64") from None


def _checkpoint_at(position: int) -> Callable[[psycopg.Connection[Any]], None]:
    def save(conn: psycopg.Connection[Any]) -> None:
        save_checkpoint(conn, CHECKPOINT, position)

    return save


def _timeout_seconds(value: str | None) -> float | None:
    return parse_duration(value).total_seconds() if value else None


class _no_limit:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None
