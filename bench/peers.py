"""Prefect 3, the peer `bench.core --peers` measures beside Tiercel in the same run.

Prefect is installed from the package registry into a throwaway virtual environment (never into
the project's), and runs in a process of that environment's Python against its ephemeral local
server (no `PREFECT_API_URL`: the client starts a temporary server on a SQLite database in a temp
`PREFECT_HOME`). The process runs a small driver script written to a temp file; it answers one
JSON request per line on stdin with one JSON line on stdout, and every time it reports is taken
inside it: the wall time of the flow call (submit to result, what a caller waits for) and the
flow run's own record (`created` to `end_time` in Prefect's store).

Prefect runs tasks inside the calling process and records their states asynchronously, so a flow
run's record can end before its task runs are all in the store; the call's wall time includes
that flush, which is why both are reported.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REQUIREMENT = "prefect>=3,<4"
W2_CONCURRENCY = 4
"""Flow runs at a time in W2: Prefect's best setting on 2 cores (all at once, its SQLite store
refuses about half of them with "database is locked")."""

DRIVER = r'''
import json, os, statistics, sys, time
from concurrent.futures import ThreadPoolExecutor

# The protocol keeps the real stdout; Prefect's own console output goes to stderr (a log file).
proto = os.fdopen(os.dup(1), "w", buffering=1)
os.dup2(2, 1)

from prefect import __version__, flow, task
from prefect.client.orchestration import get_client


@task
def give(i: int) -> int:
    return i


@flow
def sequential(tasks: int) -> int:
    for i in range(tasks):
        give(i)
    return tasks


@flow
def single() -> int:
    return give(0)


def percentile(values, p):
    ordered = sorted(values)
    k = (len(ordered) - 1) * p
    low, high = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (k - low)


def call(fn, *args):
    started = time.perf_counter()
    try:
        state = fn(*args, return_state=True)
    except Exception as exc:  # a refused flow run: counted, not fatal
        return time.perf_counter() - started, None, repr(exc)
    wall = time.perf_counter() - started
    if not state.is_completed():
        return wall, None, f"{state.type.value}: {state.message}"
    return wall, state.state_details.flow_run_id, None


def records(ids):
    """(created, end_time) of each flow run, in seconds since the epoch, from Prefect's store."""
    with get_client(sync_client=True) as client:
        runs = [client.read_flow_run(i) for i in ids]
    return [(r.created.timestamp(), r.end_time.timestamp()) for r in runs if r.end_time]


def w1(runs, tasks):
    walls, ids, errors = [], [], []
    for _ in range(runs):
        wall, run_id, error = call(sequential, tasks)
        walls.append(wall)
        if run_id:
            ids.append(run_id)
        else:
            errors.append(error)
    spans = [end - created for created, end in records(ids)]
    return {
        "runs": runs,
        "tasks": tasks,
        "failed": len(errors),
        "errors": errors[:3],
        "median_ms": statistics.median(spans) * 1000 if spans else None,
        "call_median_ms": statistics.median(walls) * 1000,
    }


def w2(count, concurrency):
    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        results = list(pool.map(lambda _: call(single), range(count)))
    wall = time.perf_counter() - started
    ids = [run_id for _, run_id, _ in results if run_id]
    errors = [error for _, _, error in results if error]
    spans = records(ids)
    latencies = [(end - created) * 1000 for created, end in spans]
    calls = [w * 1000 for w, run_id, _ in results if run_id]
    out = {"count": count, "concurrency": concurrency, "completed": len(spans),
           "failed": len(errors), "errors": errors[:3], "wall_per_s": len(ids) / wall}
    if spans:
        first = min(created for created, _ in spans)
        last = max(end for _, end in spans)
        out.update(executions_per_s=len(spans) / (last - first),
                   p50_ms=percentile(latencies, 0.5), p95_ms=percentile(latencies, 0.95),
                   call_p50_ms=percentile(calls, 0.5), call_p95_ms=percentile(calls, 0.95))
    return out


# Warm up: the first call starts the temporary server and creates its database.
call(sequential, 2)
call(single)
proto.write(json.dumps({"ready": True, "version": __version__}) + "\n")
for line in sys.stdin:
    request = json.loads(line)
    try:
        if request["run"] == "w1":
            answer = w1(request["runs"], request["tasks"])
        else:
            answer = w2(request["count"], request["concurrency"])
    except Exception as exc:
        answer = {"error": repr(exc)}
    proto.write(json.dumps(answer) + "\n")
'''


class Unavailable(Exception):
    """Prefect could not be installed or started; the message says why."""


class Prefect:
    """One Prefect process with its ephemeral server, warmed up, answering W1 and W2 runs.

    `install()` makes the throwaway environment; `close()` ends the process and removes it.
    """

    def __init__(self, python: Path, work: Path, *, owns_work: bool) -> None:
        self.python = python
        self.work = work
        self.owns_work = owns_work
        self.version = ""
        self.log = work / "prefect.log"
        self._proc: subprocess.Popen[bytes] | None = None
        self._buffer = b""

    @classmethod
    def install(
        cls, requirement: str = REQUIREMENT, *, python: str | None = None, timeout: float = 900
    ) -> Prefect:
        """A Prefect ready to `start()`: `python` when given (an interpreter that has Prefect),
        else a new virtual environment in a temp folder with `requirement` installed by pip.
        Raises `Unavailable` saying why when that fails."""
        work = Path(tempfile.mkdtemp(prefix="tiercel-bench-prefect-"))
        if python:
            return cls(Path(python), work, owns_work=True)
        venv = work / "venv"
        try:
            subprocess.run(
                [sys.executable, "-m", "venv", str(venv)],
                check=True, capture_output=True, timeout=300,
            )  # fmt: skip
            subprocess.run(
                [str(venv / "bin" / "python"), "-m", "pip", "install", "-q",
                 "--disable-pip-version-check", requirement],
                check=True, capture_output=True, timeout=timeout,
            )  # fmt: skip
        except subprocess.CalledProcessError as exc:
            shutil.rmtree(work, ignore_errors=True)
            lines = (exc.stderr or b"").decode(errors="replace").strip().splitlines()
            errors = [line for line in lines if "error" in line.lower()] or lines
            raise Unavailable(
                f"could not install {requirement}: {errors[-1] if errors else exc}"
            ) from exc
        except (OSError, subprocess.TimeoutExpired) as exc:
            shutil.rmtree(work, ignore_errors=True)
            raise Unavailable(f"could not install {requirement}: {exc}") from exc
        return cls(venv / "bin" / "python", work, owns_work=True)

    def start(self, timeout: float = 300) -> None:
        """Start the driver process and wait until its warm-up flow runs are done."""
        script = self.work / "driver.py"
        script.write_text(DRIVER)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "PYTHON"))}
        env.update(
            PREFECT_HOME=str(self.work / "home"),  # a fresh SQLite database, nothing of the user's
            PREFECT_SERVER_ANALYTICS_ENABLED="false",  # no telemetry leaves the machine
            PREFECT_UI_ENABLED="false",  # the temporary server serves no UI
        )
        try:
            with self.log.open("ab") as log:
                self._proc = subprocess.Popen(
                    [str(self.python), str(script)],
                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log,
                    env=env, cwd=self.work,
                )  # fmt: skip
        except OSError as exc:
            raise Unavailable(f"could not start {self.python}: {exc}") from exc
        ready = self._answer(timeout)
        self.version = str(ready.get("version", ""))

    def w1(self, runs: int, tasks: int, timeout: float = 900) -> dict[str, Any]:
        """`runs` flow runs of `tasks` sequential tasks returning a value, one after another."""
        return self._ask({"run": "w1", "runs": runs, "tasks": tasks}, timeout)

    def w2(self, count: int, concurrency: int = W2_CONCURRENCY, timeout: float = 1800) -> Any:
        """A burst of `count` one-task flow runs, `concurrency` at a time."""
        return self._ask({"run": "w2", "count": count, "concurrency": concurrency}, timeout)

    def close(self) -> None:
        """End the process (its temporary server with it) and remove the temp folder."""
        proc, self._proc = self._proc, None
        if proc is not None:
            if proc.stdin:
                proc.stdin.close()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self.owns_work:
            shutil.rmtree(self.work, ignore_errors=True)

    def _ask(self, request: dict[str, Any], timeout: float) -> dict[str, Any]:
        proc = self._proc
        if proc is None or proc.stdin is None:
            raise Unavailable("Prefect is not running")
        try:
            proc.stdin.write(json.dumps(request).encode() + b"\n")
            proc.stdin.flush()
        except OSError as exc:
            raise Unavailable(f"Prefect's process is gone: {exc}; {self._tail()}") from exc
        answer = self._answer(timeout)
        if "error" in answer:
            raise Unavailable(f"Prefect's run failed: {answer['error']}")
        return answer

    def _answer(self, timeout: float) -> dict[str, Any]:
        """The next JSON line of the driver, or `Unavailable` if none comes within `timeout`."""
        proc = self._proc
        assert proc is not None and proc.stdout is not None
        fd = proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise Unavailable(f"Prefect did not answer within {timeout:.0f} s; {self._tail()}")
            readable, _, _ = select.select([fd], [], [], left)
            if readable:
                chunk = os.read(fd, 65536)
                if not chunk:
                    raise Unavailable(f"Prefect's process exited ({proc.poll()}); {self._tail()}")
                self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        answer: dict[str, Any] = json.loads(line)
        return answer

    def _tail(self) -> str:
        try:
            lines = self.log.read_text(errors="replace").strip().splitlines()
        except OSError:
            return "no log"
        return "its log ends: " + (" | ".join(lines[-3:]) if lines else "(empty)")
