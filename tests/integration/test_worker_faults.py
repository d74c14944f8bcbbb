"""Workers under faults, with real scripts: a stop hands work back, a kill stops the process, a
lost worker's attempts run again elsewhere, a lagging watchdog abandons nothing alive, a
PostgreSQL outage reruns nothing that ended or ran through it, a worker cut off alone freezes
its scripts so they never run beside their retry, logs are recorded while a task runs, and work
directories do not pile up."""

from __future__ import annotations

import contextlib
import fcntl
import functools
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import urllib.parse
import uuid
from pathlib import Path
from typing import Any

import psycopg
import pytest
import trio

from engine import events as ev
from engine.commands import create_execution, deploy_flow, kill_execution, wait_for_end
from engine.db import Database, Notifier
from engine.embedded import EmbeddedPostgres
from engine.health import Health
from engine.server import ServerContext, run_server
from engine.store import CHANNEL, NO_STREAM, EventStore, StoredEvent
from engine.watchdog import CHECK
from engine.worker import Worker, record_process_group


@pytest.fixture
def ns() -> str:
    return f"test.faults.{uuid.uuid4().hex[:10]}"


async def _start(nursery: trio.Nursery, url: str, roles: tuple[str, ...], **kw: Any) -> Any:
    options = {"heartbeat_interval": 0.2, "heartbeat_timeout": 30.0, **kw}
    return await nursery.start(functools.partial(run_server, url, roles, **options))


class Running:
    """A worker started in a scope of its own, so a test can stop just that worker."""

    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self.scope = trio.CancelScope()
        self.done = trio.Event()

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        try:
            with self.scope:
                await self.worker.run(task_status=task_status)
        finally:
            self.done.set()

    async def stop(self) -> None:
        """What SIGTERM or Ctrl-C does to the process: cancel the worker's scope."""
        self.scope.cancel()
        await self.done.wait()


async def _worker(
    nursery: trio.Nursery, ctx: ServerContext, work_dir: Path, cls: type[Worker] = Worker, **kw: Any
) -> Running:
    options = {"heartbeat_interval": 0.2, "heartbeat_timeout": 30.0, **kw}
    running = Running(
        cls(ctx.store, ctx.notifier, work_dir=work_dir, storage=ctx.storage, **options)
    )
    await nursery.start(running.run)
    return running


def _shell_flow(ns: str, flow_id: str, commands: list[str]) -> str:
    lines = "\n".join(f"      - {c}" for c in commands)
    return (
        f"id: {flow_id}\nnamespace: {ns}\ntasks:\n"
        "  - id: work\n    type: io.kestra.plugin.scripts.shell.Commands\n"
        f"    commands:\n{lines}\n"
    )


def _side_effect(folder: Path) -> str:
    """A command that appends a line to a file of the execution's own, one line per run: the
    id of the script's process group."""
    return f'echo $$ >> "{folder}/{{{{ execution.id }}}}"'


def _runs(folder: Path, xid: str) -> int:
    path = folder / xid
    return len(path.read_text().splitlines()) if path.exists() else 0


async def _wait_until(predicate: Any, timeout: float, what: str) -> None:
    with trio.move_on_after(timeout) as waited:
        while not await predicate():
            await trio.sleep(0.05)
    assert not waited.cancelled_caught, f"not within {timeout}s: {what}"


def _attempt_events(history: list[StoredEvent], attempt: int = 1) -> list[StoredEvent]:
    return [e for e in history if "/a:" in e.stream_id and e.stream_id.endswith(f":{attempt}")]


def _stat(pid: str) -> list[str]:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return []


def _state(pid: int) -> str:
    """The process's state letter (R, S, T for stopped, Z...); "" when it is gone."""
    fields = _stat(str(pid))
    return fields[0] if fields else ""


def _alive(pid: int) -> bool:
    """Whether the process runs (a zombie waiting for its parent does not count)."""
    fields = _stat(str(pid))
    return bool(fields) and fields[0] != "Z"


def _group_alive(pgid: int) -> bool:
    """Whether any process of the group runs."""
    for entry in os.listdir("/proc"):
        fields = _stat(entry) if entry.isdigit() else []
        if len(fields) > 2 and fields[2] == str(pgid) and fields[0] != "Z":
            return True
    return False


async def test_stopped_worker_hands_running_attempts_back_and_they_run_again(
    database_url: str, ns: str, tmp_path: Path
) -> None:
    side = tmp_path / "side"
    side.mkdir()
    source = _shell_flow(ns, "f", [_side_effect(side), "sleep 3"])
    async with trio.open_nursery() as nursery:
        # The watchdog waits 30 s: whatever is handed back here, the stopping worker did it.
        ctx = await _start(nursery, database_url, ("executor",))
        await deploy_flow(ctx.store, source)
        ids = [await create_execution(ctx.store, ns, "f") for _ in range(10)]
        first = await _worker(nursery, ctx, tmp_path / "work")

        async def all_running() -> bool:
            return all(_runs(side, x) == 1 for x in ids)

        await _wait_until(all_running, 20, "all 10 tasks running")
        groups = [int((side / x).read_text().split()[0]) for x in ids]
        assert all(_group_alive(g) for g in groups)
        await first.stop()
        assert not any(_group_alive(g) for g in groups), "the stopped scripts are gone"
        rows = await ctx.db.fetchall(
            "SELECT 1 FROM engine_workers WHERE worker_id = %s", (first.worker.id,)
        )
        assert rows == [], "the stopped worker's liveness row is gone"
        stopped = await ctx.store.read_stream(ev.worker_stream(first.worker.id))
        assert [e.type for e in stopped] == ["WorkerStopped"]

        second = await _worker(nursery, ctx, tmp_path / "work")
        for xid in ids:
            state = await wait_for_end(ctx.store, ctx.notifier, xid, timeout=30)
            assert state.state == "SUCCESS"
            [run] = state.taskruns.values()
            assert [(a.state, a.workerId) for a in run.attempts] == [
                ("KILLED", first.worker.id),
                ("SUCCESS", second.worker.id),
            ]
            history = await ctx.store.read_execution(xid)
            [abandoned] = [e.event for e in history if isinstance(e.event, ev.AttemptAbandoned)]
            assert abandoned.reason == f"worker {first.worker.id} stopped"
            assert not any(
                e.type in ("AttemptSucceeded", "AttemptFailed") for e in _attempt_events(history)
            ), "the stopped attempt recorded no result"
            assert 1 <= _runs(side, xid) <= 2
        nursery.cancel_scope.cancel()


async def test_killed_execution_stops_its_script_within_two_seconds(
    database_url: str, ns: str, tmp_path: Path
) -> None:
    pidfile = tmp_path / "pid"
    source = _shell_flow(ns, "f", [f'sleep 30 & echo $! > "{pidfile}"; wait'])
    async with trio.open_nursery() as nursery:
        ctx = await _start(nursery, database_url, ("executor", "worker"), data_dir=tmp_path)
        await deploy_flow(ctx.store, source)
        xid = await create_execution(ctx.store, ns, "f")

        async def started() -> bool:
            return pidfile.exists() and pidfile.read_text().strip().isdigit()

        await _wait_until(started, 20, "the script started")
        pid = int(pidfile.read_text())
        assert _alive(pid)
        await kill_execution(ctx.store, xid)

        async def gone() -> bool:
            return not _alive(pid)

        await _wait_until(gone, 2, "the killed script's process is gone")
        state = await wait_for_end(ctx.store, ctx.notifier, xid, timeout=10)
        assert state.state == "KILLED"
        await trio.sleep(0.5)  # a late result would land now
        attempt = [e.type for e in _attempt_events(await ctx.store.read_execution(xid))]
        assert attempt[0] == "AttemptClaimed" and attempt[-1] == "AttemptKilled"
        assert "AttemptSucceeded" not in attempt and "AttemptFailed" not in attempt
        nursery.cancel_scope.cancel()


async def test_exit_task_stops_a_script_still_running_in_another_branch(
    engine: ServerContext, ns: str, tmp_path: Path
) -> None:
    pidfile = tmp_path / "pid"
    source = f"""
id: f
namespace: {ns}
tasks:
  - id: both
    type: io.kestra.plugin.core.flow.Parallel
    tasks:
      - id: long
        type: io.kestra.plugin.scripts.shell.Commands
        commands:
          - sleep 30 & echo $! > "{pidfile}"; wait
      - id: then
        type: io.kestra.plugin.core.flow.Sequential
        tasks:
          - id: started
            type: io.kestra.plugin.scripts.shell.Commands
            commands:
              - while [ ! -s "{pidfile}" ]; do sleep 0.05; done
          - id: leave
            type: io.kestra.plugin.core.execution.Exit
            state: FAILED
"""
    await deploy_flow(engine.store, source)
    xid = await create_execution(engine.store, ns, "f")
    state = await wait_for_end(engine.store, engine.notifier, xid, timeout=30)
    assert state.state == "FAILED"
    runs = {r.taskId: r for r in state.taskruns.values()}
    assert runs["long"].state == "KILLED"
    pid = int(pidfile.read_text())

    async def gone() -> bool:
        return not _alive(pid)

    await _wait_until(gone, 2, "the killed task run's process is gone")

    async def recorded() -> bool:
        history = await engine.store.read_execution(xid)
        return any(isinstance(e.event, ev.AttemptKilled) for e in history)

    await _wait_until(recorded, 2, "the worker recorded the attempt as killed")
    history = await engine.store.read_execution(xid)
    [killed] = [e.event for e in history if isinstance(e.event, ev.AttemptKilled)]
    assert killed.taskRunId == runs["long"].id and "killed" in killed.reason


async def test_worker_declared_lost_has_its_attempt_abandoned_and_run_again(
    database_url: str, ns: str, tmp_path: Path
) -> None:
    side = tmp_path / "side"
    side.mkdir()
    source = _shell_flow(ns, "f", [_side_effect(side), "sleep 2"])
    async with trio.open_nursery() as nursery:
        ctx = await _start(nursery, database_url, ("executor",), heartbeat_timeout=1.0)
        running = await _worker(nursery, ctx, tmp_path / "work", heartbeat_timeout=1.0)
        lost_id = running.worker.id
        await deploy_flow(ctx.store, source)
        xid = await create_execution(ctx.store, ns, "f")

        async def started() -> bool:
            return _runs(side, xid) == 1

        await _wait_until(started, 20, "the task started")
        # What the watchdog does to a worker it declares lost.
        await ctx.db.execute("DELETE FROM engine_workers WHERE worker_id = %s", (lost_id,))

        async def abandoned() -> bool:
            history = await ctx.store.read_execution(xid)
            return any(isinstance(e.event, ev.AttemptAbandoned) for e in history)

        await _wait_until(abandoned, 1.5, "the lost worker's attempt is abandoned")
        state = await wait_for_end(ctx.store, ctx.notifier, xid, timeout=30)
        assert state.state == "SUCCESS"
        [run] = state.taskruns.values()
        assert (run.attempts[0].state, run.attempts[0].workerId) == ("KILLED", lost_id)
        assert run.attempts[-1].state == "SUCCESS"
        assert run.attempts[-1].workerId == running.worker.id != lost_id, "it registered anew"
        assert _runs(side, xid) == 2
        lost = await ctx.store.read_stream(ev.worker_stream(lost_id))
        assert [e.type for e in lost] == ["WorkerLost"]
        nursery.cancel_scope.cancel()


async def test_worker_started_again_after_a_crash_has_the_dead_ones_attempt_rerun_at_once(
    database_url: str, ns: str, tmp_path: Path
) -> None:
    work = tmp_path / "work"
    work.mkdir()
    body = "  - id: one\n    type: io.kestra.plugin.core.debug.Return\n    format: done\n"
    async with trio.open_nursery() as nursery:
        # The watchdog alone would wait 30 s for the dead worker's heartbeat to go stale.
        ctx = await _start(nursery, database_url, ("executor",))
        await deploy_flow(ctx.store, f"id: f\nnamespace: {ns}\ntasks:\n{body}")
        xid = await create_execution(ctx.store, ns, "f")

        async def scheduled() -> bool:
            history = await ctx.store.read_execution(xid)
            return any(isinstance(e.event, ev.AttemptScheduled) for e in history)

        await _wait_until(scheduled, 10, "the attempt is scheduled")
        [run_id] = [
            e.event.taskRunId
            for e in await ctx.store.read_execution(xid)
            if isinstance(e.event, ev.AttemptScheduled)
        ]
        # What a worker killed with SIGKILL on this host leaves: a fresh row, a claimed
        # attempt, its directory and its lock file, which no process holds any more.
        dead = f"dead{uuid.uuid4().hex[:8]}"
        await ctx.db.execute(
            "INSERT INTO engine_workers (worker_id, last_seen) VALUES (%s, clock_timestamp())",
            (dead,),
        )
        await ctx.store.append(
            ev.attempt_stream(xid, run_id, 1),
            [ev.AttemptClaimed(executionId=xid, taskRunId=run_id, attempt=1, workerId=dead)],
            expected_version=NO_STREAM,
        )
        (work / "crashed01" / "run-1").mkdir(parents=True)
        (work / "crashed01.lock").write_text(dead)

        restarted = await _worker(nursery, ctx, work)
        state = await wait_for_end(ctx.store, ctx.notifier, xid, timeout=10)
        assert state.state == "SUCCESS"
        [run] = state.taskruns.values()
        assert [(a.state, a.workerId) for a in run.attempts] == [
            ("KILLED", dead),
            ("SUCCESS", restarted.worker.id),
        ]
        assert not (work / "crashed01").exists()
        lost = await ctx.store.read_stream(ev.worker_stream(dead))
        assert [e.type for e in lost] == ["WorkerLost"]
        nursery.cancel_scope.cancel()


async def test_worker_started_after_a_crash_kills_the_scripts_the_dead_one_left_and_nothing_else(
    database_url: str, tmp_path: Path
) -> None:
    work = tmp_path / "work"
    home = work / "crashed02"
    (home / "run-1").mkdir(parents=True)
    (work / "crashed02.lock").write_text("crashed02")
    # What a dead worker's attempt may leave running: its script, in a session of its own.
    left = subprocess.Popen(["sleep", "60"], cwd=home / "run-1", start_new_session=True)
    record_process_group(home, left.pid)
    # A script whose shell has ended, leaving what it started in the background.
    shell = subprocess.Popen(
        ["sh", "-c", "sleep 60 & echo $!; read line"],
        cwd=home / "run-1",
        start_new_session=True,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    assert shell.stdin is not None and shell.stdout is not None
    background = int(shell.stdout.readline())
    record_process_group(home, shell.pid)
    shell.stdin.close()
    shell.wait()
    # A recorded group whose id now names an unrelated process (its leader's pid was reused).
    unrelated = subprocess.Popen(["sleep", "60"], cwd=tmp_path, start_new_session=True)
    record_process_group(home, unrelated.pid)
    record = home / f"{unrelated.pid}.group"
    reused = json.loads(record.read_text())
    reused["start"] -= 1
    record.write_text(json.dumps(reused))
    try:
        async with trio.open_nursery() as nursery:
            ctx = await _start(nursery, database_url, ("executor",))
            await _worker(nursery, ctx, work)

            async def stopped() -> bool:
                return left.poll() is not None

            await _wait_until(stopped, 2, "the dead worker's script is killed")
            assert left.returncode == -signal.SIGKILL

            async def background_stopped() -> bool:
                return not _alive(background)

            await _wait_until(background_stopped, 2, "what the dead worker's script left is killed")
            assert unrelated.poll() is None, "a process that merely has a recorded id is spared"
            assert not home.exists()
            nursery.cancel_scope.cancel()
    finally:
        for process in (left, unrelated):
            process.kill()
            process.wait()
        with contextlib.suppress(ProcessLookupError):
            os.kill(background, signal.SIGKILL)


async def test_script_of_a_worker_killed_with_kill_9_dies_with_it_when_no_worker_comes_back(
    database_url: str, ns: str, tmp_path: Path
) -> None:
    side = tmp_path / "side"
    side.mkdir()
    command = [sys.executable, "-m", "engine.cli", "server", "worker"]
    command += ["--database-url", database_url, "--data-dir", str(tmp_path / "worker")]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TIERCEL_", "PG"))}
    log = tmp_path / "worker.log"
    async with trio.open_nursery() as nursery:
        ctx = await _start(nursery, database_url, ("executor",))
        await deploy_flow(ctx.store, _shell_flow(ns, "f", [_side_effect(side), "sleep 60"]))
        with log.open("wb") as out:
            # A session of its own, as a service manager runs it: the kill reaches it alone.
            worker = subprocess.Popen(
                command, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )
        try:
            xid = await create_execution(ctx.store, ns, "f")

            async def running() -> bool:
                assert worker.poll() is None, log.read_text()
                return _runs(side, xid) == 1

            await _wait_until(running, 30, "the script runs on the worker process")
            group = int((side / xid).read_text().split()[0])
            assert _group_alive(group)
        finally:
            worker.kill()
            worker.wait()

        async def gone() -> bool:
            return not _group_alive(group)

        await _wait_until(gone, 2, "the killed worker's script is gone with it")
        # Not to be run again by the workers of later tests.
        await kill_execution(ctx.store, xid)
        state = await wait_for_end(ctx.store, ctx.notifier, xid, timeout=10)
        assert state.state == "KILLED"
        nursery.cancel_scope.cancel()


class _SilentWorker(Worker):
    """A worker whose heartbeats stop after it registered (hung, or cut off)."""

    async def _heartbeats(self) -> None:
        await trio.sleep_forever()


async def test_silent_worker_is_declared_lost_and_its_late_result_is_not_recorded(
    database_url: str, ns: str, tmp_path: Path
) -> None:
    side = tmp_path / "side"
    side.mkdir()
    source = _shell_flow(ns, "f", [_side_effect(side), "sleep 2"])
    async with trio.open_nursery() as nursery:
        ctx = await _start(nursery, database_url, ("executor",), heartbeat_timeout=1.0)
        silent = await _worker(nursery, ctx, tmp_path / "work", _SilentWorker)
        await deploy_flow(ctx.store, source)
        xid = await create_execution(ctx.store, ns, "f")

        async def started() -> bool:
            return _runs(side, xid) == 1

        await _wait_until(started, 20, "the task started on the silent worker")
        healthy = await _worker(nursery, ctx, tmp_path / "work", heartbeat_timeout=1.0)
        state = await wait_for_end(ctx.store, ctx.notifier, xid, timeout=30)
        assert state.state == "SUCCESS"
        [run] = state.taskruns.values()
        assert [(a.state, a.workerId) for a in run.attempts] == [
            ("KILLED", silent.worker.id),
            ("SUCCESS", healthy.worker.id),
        ]
        await trio.sleep(2.5)  # the silent worker's script has ended by now
        history = await ctx.store.read_execution(xid)
        first = [e.type for e in _attempt_events(history, 1)]
        assert first == ["AttemptClaimed", "AttemptAbandoned"], "the late result was not recorded"
        lost = await ctx.store.read_stream(ev.worker_stream(silent.worker.id))
        assert [e.type for e in lost] == ["WorkerLost"]
        nursery.cancel_scope.cancel()


async def test_lagging_watchdog_does_not_abandon_a_live_worker(
    database_url: str, ns: str, tmp_path: Path
) -> None:
    source = _shell_flow(ns, "f", ["sleep 3"])
    async with trio.open_nursery() as nursery:
        ctx = await _start(
            nursery, database_url, ("executor", "worker"), heartbeat_timeout=1.0, data_dir=tmp_path
        )
        await deploy_flow(ctx.store, source)
        xid = await create_execution(ctx.store, ns, "f")

        async def tracked() -> bool:
            rows = await ctx.db.fetchall(
                "SELECT 1 FROM engine_attempts WHERE execution_id = %s", (xid,)
            )
            return bool(rows)

        await _wait_until(tracked, 20, "the watchdog tracks the claimed attempt")
        # Block the watchdog's event processing for longer than the timeout: its checkpoint
        # falls behind while the worker's heartbeats stay fresh.
        conn = await trio.to_thread.run_sync(functools.partial(psycopg.connect, database_url))
        try:
            await trio.to_thread.run_sync(
                conn.execute, "SELECT * FROM checkpoints WHERE name = 'watchdog' FOR UPDATE"
            )
            await trio.sleep(2.0)
        finally:
            await trio.to_thread.run_sync(conn.close)
        state = await wait_for_end(ctx.store, ctx.notifier, xid, timeout=30)
        assert state.state == "SUCCESS"
        [run] = state.taskruns.values()
        assert [a.state for a in run.attempts] == ["SUCCESS"]
        history = await ctx.store.read_execution(xid)
        assert not any(isinstance(e.event, ev.AttemptAbandoned) for e in history)
        nursery.cancel_scope.cancel()


async def test_running_task_logs_are_recorded_before_it_ends(
    engine: ServerContext, ns: str
) -> None:
    source = _shell_flow(ns, "f", ["echo started", "sleep 3", "echo finished"])
    await deploy_flow(engine.store, source)
    xid = await create_execution(engine.store, ns, "f")
    seen: list[str] = []

    async def logged_while_running() -> bool:
        history = await engine.store.read_execution(xid)
        if any(e.type in ("AttemptSucceeded", "AttemptFailed") for e in history):
            raise AssertionError("the task ended before its first line was recorded")
        seen[:] = [
            line["message"]
            for e in history
            if isinstance(e.event, ev.AttemptLogged)
            for line in e.event.lines
        ]
        return "started" in seen

    await _wait_until(logged_while_running, 2.5, "the first line is recorded while running")
    assert "finished" not in seen
    state = await wait_for_end(engine.store, engine.notifier, xid, timeout=30)
    assert state.state == "SUCCESS"
    history = await engine.store.read_execution(xid)
    lines = [
        line["message"]
        for e in history
        if isinstance(e.event, ev.AttemptLogged)
        for line in e.event.lines
    ]
    assert lines == ["started", "finished"]


async def test_overlong_log_line_is_cut_and_kept_whole_in_storage(
    engine: ServerContext, ns: str
) -> None:
    source = _shell_flow(ns, "f", ["yes x | head -n 200000 | tr -d '\\n'; echo", "echo after"])
    await deploy_flow(engine.store, source)
    xid = await create_execution(engine.store, ns, "f")
    state = await wait_for_end(engine.store, engine.notifier, xid, timeout=30)
    assert state.state == "SUCCESS", [r.message for r in state.taskruns.values()]
    history = await engine.store.read_execution(xid)
    lines = [
        line["message"]
        for e in history
        if isinstance(e.event, ev.AttemptLogged)
        for line in e.event.lines
    ]
    assert len(lines) == 2 and lines[1] == "after"
    long = lines[0]
    assert long.startswith("x" * 60_000) and len(long.encode()) < 70 * 1024
    found = re.search(r"(kestra://[^\]\s]+)", long)
    assert found, long[-300:]
    assert engine.storage is not None
    assert engine.storage.read_bytes(found.group(1)) == b"x" * 200_000
    sizes = await engine.db.fetchall(
        "SELECT octet_length(data::text) AS n FROM events"
        " WHERE stream_id LIKE %s AND type = 'AttemptLogged'",
        (f"exec:{xid}/%",),
    )
    assert sizes and all(r["n"] < 256 * 1024 for r in sizes)


async def test_result_and_logs_of_a_task_ending_during_a_postgres_restart_are_recorded_once(
    ns: str, tmp_path: Path
) -> None:
    side = tmp_path / "side"
    side.mkdir()
    source = _shell_flow(ns, "f", [_side_effect(side), "echo hello", "sleep 1", "echo bye"])
    pg = EmbeddedPostgres(tmp_path / "pg")  # a PostgreSQL of this test's own, to restart
    url = pg.start()
    try:
        async with trio.open_nursery() as nursery:
            ctx = await _start(
                nursery, url, ("executor", "worker"), heartbeat_timeout=15.0, data_dir=tmp_path
            )
            await deploy_flow(ctx.store, source)
            xid = await create_execution(ctx.store, ns, "f")

            async def started() -> bool:
                return _runs(side, xid) == 1

            await _wait_until(started, 20, "the task started")
            # The task logs, ends and reports while the database is away.
            await trio.to_thread.run_sync(pg.stop)
            await trio.sleep(2.5)
            assert await trio.to_thread.run_sync(pg.start) == url
            state = await wait_for_end(ctx.store, ctx.notifier, xid, timeout=60)
            assert state.state == "SUCCESS"
            [run] = state.taskruns.values()
            assert [a.state for a in run.attempts] == ["SUCCESS"]
            history = await ctx.store.read_execution(xid)
            assert [e.type for e in history].count("AttemptSucceeded") == 1
            messages = [
                line["message"]
                for e in history
                if isinstance(e.event, ev.AttemptLogged)
                for line in e.event.lines
            ]
            assert messages == ["hello", "bye"]
            assert _runs(side, xid) == 1
            nursery.cancel_scope.cancel()
    finally:
        await trio.to_thread.run_sync(pg.stop)


async def test_script_frozen_through_a_postgres_outage_of_twice_the_timeout_is_stopped_and_rerun(
    ns: str, tmp_path: Path
) -> None:
    side, delay, pidfile = tmp_path / "side", tmp_path / "delay", tmp_path / "pid"
    side.mkdir()
    delay.write_text("30")
    run = f'sleep "$(cat "{delay}")" & echo $! > "{pidfile}"; wait'
    source = _shell_flow(ns, "f", [_side_effect(side), run])
    pg = EmbeddedPostgres(tmp_path / "pg")
    url = pg.start()
    try:
        async with trio.open_nursery() as nursery:
            ctx = await _start(
                nursery, url, ("executor", "worker"), heartbeat_timeout=1.0, data_dir=tmp_path
            )
            await deploy_flow(ctx.store, source)
            xid = await create_execution(ctx.store, ns, "f")

            async def started() -> bool:
                return pidfile.exists() and pidfile.read_text().strip().isdigit()

            await _wait_until(started, 20, "the script started")
            pid = int(pidfile.read_text())
            await trio.to_thread.run_sync(pg.stop)

            async def frozen() -> bool:
                return _state(pid) == "T"

            await _wait_until(frozen, 1.5, "the cut-off worker froze its script")

            async def gone() -> bool:
                return not _alive(pid)

            # Cut off for that long, the worker takes itself for lost: a frozen script holds
            # what its retry may need.
            await _wait_until(gone, 2, "the worker stopped its frozen script")
            delay.write_text("0.1")
            assert await trio.to_thread.run_sync(pg.start) == url
            state = await wait_for_end(ctx.store, ctx.notifier, xid, timeout=60)
            assert state.state == "SUCCESS"
            [run_] = state.taskruns.values()
            assert [a.state for a in run_.attempts] == ["KILLED", "SUCCESS"]
            assert _runs(side, xid) == 2
            first = [e.type for e in _attempt_events(await ctx.store.read_execution(xid), 1)]
            assert first == ["AttemptClaimed", "AttemptAbandoned"]
            nursery.cancel_scope.cancel()
    finally:
        await trio.to_thread.run_sync(pg.stop)


async def test_work_directories_of_ended_attempts_and_dead_workers_are_removed(
    database_url: str, ns: str, tmp_path: Path
) -> None:
    work = tmp_path / "work"
    # A worker that died with an attempt's directory left behind: its lock is free.
    (work / "deadworker01" / "run-1").mkdir(parents=True)
    (work / "deadworker01" / "run-1" / "data").write_text("left over")
    (work / "deadworker01.lock").touch()
    # A live worker of another process on this host: it holds its lock.
    (work / "liveworker01" / "run-1").mkdir(parents=True)
    held = os.open(work / "liveworker01.lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
    try:
        async with trio.open_nursery() as nursery:
            ctx = await _start(nursery, database_url, ("executor",), data_dir=tmp_path)
            running = await _worker(nursery, ctx, work)
            assert not (work / "deadworker01").exists()
            assert not (work / "deadworker01.lock").exists()
            assert (work / "liveworker01" / "run-1").exists()
            await deploy_flow(ctx.store, _shell_flow(ns, "f", ["echo hi > file.txt"]))
            xid = await create_execution(ctx.store, ns, "f")
            state = await wait_for_end(ctx.store, ctx.notifier, xid, timeout=30)
            assert state.state == "SUCCESS"
            home = work / running.worker.id

            async def emptied() -> bool:
                return list(home.iterdir()) == []

            await _wait_until(emptied, 2, "the ended attempt's directory is removed")
            await running.stop()
            assert not home.exists()
            assert sorted(p.name for p in work.iterdir()) == ["liveworker01", "liveworker01.lock"]
            nursery.cancel_scope.cancel()
    finally:
        os.close(held)


def _group_states(pgid: int) -> set[str]:
    """The state letters of the live processes of a group (T: stopped, i.e. frozen)."""
    states = set()
    for entry in os.listdir("/proc"):
        fields = _stat(entry) if entry.isdigit() else []
        if len(fields) > 2 and fields[2] == str(pgid) and fields[0] != "Z":
            states.add(fields[0])
    return states


def _lines(path: Path) -> list[str]:
    return path.read_text().split() if path.exists() else []


async def test_tasks_ending_during_a_postgres_outage_longer_than_the_timeout_are_recorded_once(
    ns: str, tmp_path: Path
) -> None:
    started, side = tmp_path / "started", tmp_path / "side"
    started.mkdir()
    side.mkdir()
    # The side effect comes last: it has happened once the task ends.
    source = _shell_flow(ns, "f", [_side_effect(started), "sleep 0.5", _side_effect(side)])
    pg = EmbeddedPostgres(tmp_path / "pg")
    url = pg.start()
    try:
        async with trio.open_nursery() as nursery:
            ctx = await _start(nursery, url, ("executor",), heartbeat_timeout=2.0)
            running = await _worker(nursery, ctx, tmp_path / "work", heartbeat_timeout=2.0)
            worker_id = running.worker.id
            await deploy_flow(ctx.store, source)
            ids = [await create_execution(ctx.store, ns, "f") for _ in range(5)]

            async def all_started() -> bool:
                return all(_runs(started, x) == 1 for x in ids)

            await _wait_until(all_started, 20, "the 5 tasks started")
            await trio.to_thread.run_sync(pg.stop)
            down = trio.current_time()
            with trio.move_on_after(5):
                while not all(_runs(side, x) for x in ids):
                    await trio.sleep(0.05)
            assert all(_runs(side, x) == 1 for x in ids), "the 5 tasks ended during the outage"
            # Down for more than twice the timeout: longer than anything the worker waits for.
            await trio.sleep(max(0.0, down + 4.5 - trio.current_time()))
            assert await trio.to_thread.run_sync(pg.start) == url
            for xid in ids:
                state = await wait_for_end(ctx.store, ctx.notifier, xid, timeout=60)
                assert state.state == "SUCCESS"
                [run] = state.taskruns.values()
                assert [(a.state, a.workerId) for a in run.attempts] == [("SUCCESS", worker_id)]
            await trio.sleep(2.0)  # a watchdog abandoning them, or a rerun, would show by now
            for xid in ids:
                history = await ctx.store.read_execution(xid)
                assert [e.type for e in history].count("AttemptSucceeded") == 1
                assert not any(isinstance(e.event, ev.AttemptAbandoned) for e in history)
                assert _runs(side, xid) == 1, "the side effect ran once"
            assert running.worker.id == worker_id, "the worker was never taken for lost"
            assert await ctx.store.read_stream(ev.worker_stream(worker_id)) == []
            nursery.cancel_scope.cancel()
    finally:
        await trio.to_thread.run_sync(pg.stop)


async def test_task_running_across_a_postgres_outage_longer_than_the_timeout_finishes_once(
    ns: str, tmp_path: Path
) -> None:
    side, ticks, done = tmp_path / "side", tmp_path / "ticks", tmp_path / "done"
    for folder in (side, ticks, done):
        folder.mkdir()
    work = f"for i in $(seq 40); do {_side_effect(ticks)}; sleep 0.1; done"
    source = _shell_flow(ns, "f", [_side_effect(side), work, _side_effect(done)])
    pg = EmbeddedPostgres(tmp_path / "pg")
    url = pg.start()
    try:
        async with trio.open_nursery() as nursery:
            ctx = await _start(nursery, url, ("executor",), heartbeat_timeout=3.0)
            running = await _worker(nursery, ctx, tmp_path / "work", heartbeat_timeout=3.0)
            await deploy_flow(ctx.store, source)
            xid = await create_execution(ctx.store, ns, "f")

            async def ticking() -> bool:
                return _runs(ticks, xid) >= 3

            await _wait_until(ticking, 20, "the task runs")
            [group] = {int(p) for p in _lines(side / xid)}
            await trio.to_thread.run_sync(pg.stop)
            down = trio.current_time()

            async def frozen() -> bool:
                return _group_states(group) == {"T"}

            # The worker cannot tell this outage from its own partition: past the timeout it
            # freezes the script, which thus cannot run beside a retry, and loses nothing.
            await _wait_until(frozen, 4, "the worker froze its script")
            seen = _runs(ticks, xid)
            await trio.sleep(0.5)
            assert _runs(ticks, xid) == seen, "a frozen script does nothing"
            assert seen < 40
            await trio.sleep(max(0.0, down + 3.5 - trio.current_time()))
            assert await trio.to_thread.run_sync(pg.start) == url
            state = await wait_for_end(ctx.store, ctx.notifier, xid, timeout=60)
            assert state.state == "SUCCESS"
            [run] = state.taskruns.values()
            assert [(a.state, a.workerId) for a in run.attempts] == [("SUCCESS", running.worker.id)]
            assert (_runs(side, xid), _runs(ticks, xid), _runs(done, xid)) == (1, 40, 1)
            history = await ctx.store.read_execution(xid)
            assert not any(isinstance(e.event, ev.AttemptAbandoned) for e in history)
            nursery.cancel_scope.cancel()
    finally:
        await trio.to_thread.run_sync(pg.stop)


async def test_watchdog_back_from_a_postgres_outage_gives_every_worker_a_full_timeout(
    ns: str, tmp_path: Path
) -> None:
    body = "  - id: one\n    type: io.kestra.plugin.core.debug.Return\n    format: done\n"
    pg = EmbeddedPostgres(tmp_path / "pg")
    url = pg.start()
    try:
        async with trio.open_nursery() as nursery:
            ctx = await _start(nursery, url, ("executor",), heartbeat_timeout=1.5)
            await deploy_flow(ctx.store, f"id: f\nnamespace: {ns}\ntasks:\n{body}")
            xid = await create_execution(ctx.store, ns, "f")

            async def scheduled() -> list[str]:
                history = await ctx.store.read_execution(xid)
                return [
                    e.event.taskRunId for e in history if isinstance(e.event, ev.AttemptScheduled)
                ]

            await _wait_until(scheduled, 10, "the attempt is scheduled")
            [run_id] = await scheduled()
            # A worker of another process, whose heartbeats this test sends by hand.
            alive = f"w{uuid.uuid4().hex[:8]}"
            await ctx.db.execute(
                "INSERT INTO engine_workers (worker_id, last_seen) VALUES (%s, clock_timestamp())",
                (alive,),
            )
            await ctx.store.append(
                ev.attempt_stream(xid, run_id, 1),
                [ev.AttemptClaimed(executionId=xid, taskRunId=run_id, attempt=1, workerId=alive)],
                expected_version=NO_STREAM,
            )

            async def tracked() -> bool:
                return bool(
                    await ctx.db.fetchall(
                        "SELECT 1 FROM engine_attempts WHERE worker_id = %s", (alive,)
                    )
                )

            await _wait_until(tracked, 10, "the watchdog tracks the claimed attempt")
            await trio.to_thread.run_sync(pg.stop)
            await trio.sleep(2.5)
            check = ctx.health.get(CHECK)
            assert check is not None and check.status == "DOWN"
            assert await trio.to_thread.run_sync(pg.start) == url

            async def stale() -> bool:
                return bool(
                    await ctx.db.fetchall(
                        "SELECT 1 FROM engine_workers WHERE worker_id = %s"
                        " AND last_seen < clock_timestamp() - interval '1.5 seconds'",
                        (alive,),
                    )
                )

            assert await stale(), "its heartbeat is older than the timeout"

            async def watchdog_looked() -> bool:
                check = ctx.health.get(CHECK)
                return check is not None and check.status == "UP"

            # The worker is slower to come back than the watchdog, which looks meanwhile: it
            # must not take that silence for a loss.
            await _wait_until(watchdog_looked, 5, "the watchdog looks for lost workers again")
            assert await stale()
            await ctx.db.execute(
                "UPDATE engine_workers SET last_seen = clock_timestamp() WHERE worker_id = %s",
                (alive,),
            )
            for _ in range(10):
                await trio.sleep(0.2)
                await ctx.db.execute(
                    "UPDATE engine_workers SET last_seen = clock_timestamp() WHERE worker_id = %s",
                    (alive,),
                )
            history = await ctx.store.read_execution(xid)
            assert not any(isinstance(e.event, ev.AttemptAbandoned) for e in history)
            assert await ctx.store.read_stream(ev.worker_stream(alive)) == []

            # Silent from now on, with the watchdog long back: lost after the timeout.
            async def abandoned() -> bool:
                history = await ctx.store.read_execution(xid)
                return any(isinstance(e.event, ev.AttemptAbandoned) for e in history)

            await _wait_until(abandoned, 4, "the silent worker's attempt is abandoned")
            lost = await ctx.store.read_stream(ev.worker_stream(alive))
            assert [e.type for e in lost] == ["WorkerLost"]
            nursery.cancel_scope.cancel()
    finally:
        await trio.to_thread.run_sync(pg.stop)


class Relay:
    """A Unix-socket relay in front of a PostgreSQL: whoever connects through it can be cut
    off alone, as a network partition cuts off one host, while others still reach it."""

    def __init__(self, url: str) -> None:
        parts = urllib.parse.urlsplit(url)
        query = urllib.parse.parse_qs(parts.query)
        self.port = query["port"][0]
        self.target = Path(query["host"][0]) / f".s.PGSQL.{self.port}"
        # A short folder: a socket's path must fit in 108 bytes.
        self.folder = Path(tempfile.mkdtemp(prefix="relay-"))
        host = urllib.parse.quote(str(self.folder), safe="/")
        self.url = f"postgresql://postgres@/postgres?host={host}&port={self.port}"
        self.cut = False
        self._links: set[trio.CancelScope] = set()

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        await sock.bind(str(self.folder / f".s.PGSQL.{self.port}"))
        sock.listen()
        listener = trio.SocketListener(sock)
        try:
            async with trio.open_nursery() as nursery:
                task_status.started()
                while True:
                    client = await listener.accept()
                    nursery.start_soon(self._link, client)
        finally:
            await listener.aclose()
            shutil.rmtree(self.folder, ignore_errors=True)

    def sever(self) -> None:
        """Close every link, and every new one at once, until `mend`."""
        self.cut = True
        for link in self._links:
            link.cancel()

    def mend(self) -> None:
        self.cut = False

    async def _link(self, client: trio.SocketStream) -> None:
        async with client:
            if self.cut:
                return
            with trio.CancelScope() as link:
                self._links.add(link)
                try:
                    server = await trio.open_unix_socket(str(self.target))
                    async with server, trio.open_nursery() as nursery:
                        nursery.start_soon(self._pump, client, server)
                        await self._pump(server, client)
                        nursery.cancel_scope.cancel()
                finally:
                    self._links.discard(link)

    @staticmethod
    async def _pump(source: trio.SocketStream, sink: trio.SocketStream) -> None:
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            async for chunk in source:
                await sink.send_all(chunk)


async def test_worker_cut_off_alone_freezes_its_script_so_it_never_runs_beside_its_retry(
    ns: str, tmp_path: Path
) -> None:
    side, ticks, count = tmp_path / "side", tmp_path / "ticks", tmp_path / "count"
    side.mkdir()
    ticks.mkdir()
    count.write_text("100")
    work = f'for i in $(seq "$(cat "{count}")"); do {_side_effect(ticks)}; sleep 0.1; done'
    source = _shell_flow(ns, "f", [_side_effect(side), work])
    pg = EmbeddedPostgres(tmp_path / "pg")
    url = pg.start()
    try:
        async with trio.open_nursery() as nursery:
            ctx = await _start(nursery, url, ("executor",), heartbeat_timeout=1.5)
            relay = Relay(url)
            await nursery.start(relay.run)
            # The worker to be cut off reaches PostgreSQL only through the relay.
            db = Database(relay.url)
            notifier = Notifier(relay.url, CHANNEL, health=Health())
            await nursery.start(notifier.run)
            cut_off = Running(
                Worker(
                    EventStore(db, ctx.storage),
                    notifier,
                    heartbeat_interval=0.2,
                    heartbeat_timeout=1.5,
                    work_dir=tmp_path / "work",
                    storage=ctx.storage,
                )
            )
            await nursery.start(cut_off.run)
            first_id = cut_off.worker.id
            await deploy_flow(ctx.store, source)
            xid = await create_execution(ctx.store, ns, "f")

            async def ticking() -> bool:
                return _runs(ticks, xid) >= 3

            await _wait_until(ticking, 20, "the task runs on the worker to be cut off")
            [old] = _lines(side / xid)
            count.write_text("5")  # for the retry: the running script read its count
            healthy = await _worker(nursery, ctx, tmp_path / "work", heartbeat_timeout=1.5)
            relay.sever()

            async def frozen() -> bool:
                return _group_states(int(old)) == {"T"}

            # Frozen by the worker's own clock before the watchdog may abandon the attempt.
            await _wait_until(frozen, 2.5, "the cut-off worker froze its script")
            frozen_at = _lines(ticks / xid).count(old)
            state = await wait_for_end(ctx.store, ctx.notifier, xid, timeout=30)
            assert state.state == "SUCCESS"
            [run] = state.taskruns.values()
            assert [(a.state, a.workerId) for a in run.attempts] == [
                ("KILLED", first_id),
                ("SUCCESS", healthy.worker.id),
            ]
            relay.mend()

            async def gone() -> bool:
                return not _group_states(int(old))

            await _wait_until(gone, 5, "the frozen script is killed, never resumed")
            lines = _lines(ticks / xid)
            retry = [p for p in lines if p != old]
            assert len(retry) == 5 and _lines(side / xid) == [old, retry[0]]
            assert lines == [old] * frozen_at + retry, "the old script never ran beside its retry"

            async def registered_anew() -> bool:
                return cut_off.worker.id != first_id

            await _wait_until(registered_anew, 5, "the cut-off worker learns it was lost")
            lost = await ctx.store.read_stream(ev.worker_stream(first_id))
            assert [e.type for e in lost] == ["WorkerLost"]
            first = [e.type for e in _attempt_events(await ctx.store.read_execution(xid), 1)]
            assert first == ["AttemptClaimed", "AttemptAbandoned"]
            nursery.cancel_scope.cancel()
    finally:
        await trio.to_thread.run_sync(pg.stop)
