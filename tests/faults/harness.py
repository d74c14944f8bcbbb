"""Tiercel's roles as real, separate processes on a private embedded PostgreSQL, and the faults
to inflict on them: kill -9, SIGTERM, a PostgreSQL restart, a dropped LISTEN connection.

A `Cluster` owns everything it starts, inside one root folder: the PostgreSQL cluster, one
`tiercel server <role>` process per role (each with a data dir and a log file of its own; the
internal storage is shared, as it would be on a shared volume), and what those processes leave
behind. `Cluster.close()` (or leaving its `with` block) kills every process it started, stops
PostgreSQL and sweeps away any process still running inside the root folder (a script a
killed worker left orphaned, a server that would not stop), so nothing outlives a test, even
a failed one.

The harness sees Tiercel the way an operator does: its command line, its REST API and its
tables. It imports only `engine.embedded` (to run PostgreSQL) and `engine.migrate`. It is
used by the fault tests (`tests/faults/`) and by `python -m bench.chaos`, and depends on no
test framework.

Each process connects with `application_name` = `tiercel-<name>-<incarnation>` (libpq reads
`PGAPPNAME`), so `pg_stat_activity` tells which process, and which start of it, holds which
connection. A process without an HTTP port counts as started once its LISTEN connection is
there, since the notifier is the first thing a server starts after migrating.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx
import psycopg

T = TypeVar("T")

TIERCEL = [sys.executable, "-m", "engine.cli"]
"""The `tiercel` command, run with this interpreter (so it works inside any virtualenv)."""

DEFAULT_ROLES = ("executor", "worker", "worker", "indexer", "webserver")
"""The processes of a scaled-out deployment: one of each role, two workers."""

TERMINAL_STATES = ("SUCCESS", "WARNING", "FAILED", "KILLED", "CANCELLED", "SKIPPED")
"""The states after which an execution never changes again (Kestra's names)."""


def keep_requested() -> bool:
    """True when `TIERCEL_FAULTS_KEEP` asks to keep clusters' folders (logs, database) for a
    post-mortem instead of deleting them."""
    return os.environ.get("TIERCEL_FAULTS_KEEP", "") not in ("", "0")


class HarnessError(RuntimeError):
    """The harness could not bring the system to the state a test needs (not a finding)."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(predicate: Callable[[], T], timeout: float, what: str, interval: float = 0.2) -> T:
    """Call `predicate` until it returns something truthy and return that; raise
    `HarnessError` naming `what` after `timeout` seconds. Exceptions count as "not yet",
    except a `HarnessError`, which the predicate raises when it knows it never will be."""
    deadline = time.monotonic() + timeout
    last_error: BaseException | None = None
    while True:
        try:
            result = predicate()
            if result:
                return result
        except HarnessError:
            raise  # a predicate that knows it will never be true
        except Exception as exc:  # noqa: BLE001 - "not yet", remembered for the message
            last_error = exc
        if time.monotonic() >= deadline:
            detail = f" (last error: {last_error!r})" if last_error else ""
            raise HarnessError(f"Timed out after {timeout:.0f}s waiting for {what}{detail}")
        time.sleep(interval)


@dataclass
class Exit:
    """A process that ended without the harness asking it to."""

    name: str
    incarnation: int
    returncode: int | None
    log_tail: str

    def __str__(self) -> str:
        return (
            f"{self.name} (start #{self.incarnation}) exited by itself with code "
            f"{self.returncode}; its log ends with:\n{self.log_tail}"
        )


@dataclass
class AttemptEvent:
    """One event of an attempt's stream, as recorded."""

    stream_id: str
    type: str
    data: dict[str, Any]
    meta: dict[str, Any]

    @property
    def attempt(self) -> int:
        """The attempt number."""
        return int(self.data.get("attempt", 0))

    @property
    def actor(self) -> str:
        """Who recorded it (`worker:<id>`, `watchdog`, ...)."""
        return str(self.meta.get("actor", ""))


@dataclass
class Stop:
    """How a process answered a SIGTERM: its exit code and how long it took."""

    name: str
    returncode: int | None
    seconds: float
    forced: bool
    """True when it did not exit in time and had to be killed."""


class TiercelProcess:
    """One `tiercel server <role>` process; restartable, its output appended to `log_path`."""

    def __init__(
        self,
        name: str,
        role: str,
        *,
        url: Callable[[], str],
        port: int,
        data_dir: Path,
        log_path: Path,
        config: Path,
        extra_args: Sequence[str],
        env: dict[str, str],
    ) -> None:
        self.name = name
        self.role = role
        self.port = port
        self.data_dir = data_dir
        self.log_path = log_path
        self._url = url
        self._config = config
        self._extra_args = list(extra_args)
        self._env = env
        self.popen: subprocess.Popen[bytes] | None = None
        self.incarnation = 0
        self.expected_down = True
        """False while the process should be running: the supervisor restarts it otherwise."""
        self.started_at = 0.0

    @property
    def app_name(self) -> str:
        """The `application_name` of the current start's database connections."""
        return f"tiercel-{self.name}-{self.incarnation}"

    @property
    def pid(self) -> int | None:
        """The process id of the current start, None before the first."""
        return self.popen.pid if self.popen else None

    @property
    def alive(self) -> bool:
        """True while the current start runs."""
        return self.popen is not None and self.popen.poll() is None

    def command(self) -> list[str]:
        """The command line of a start: each role takes only its own options."""
        flags = supported_flags(self.role)
        http = ["--host", "127.0.0.1", "--port", str(self.port)] if "--port" in flags else []
        extra = self._extra_args
        own = [
            arg
            for flag, value in zip(extra[::2], extra[1::2], strict=True)
            if flag in flags
            for arg in (flag, value)
        ]
        return [
            *TIERCEL,
            "--config",
            str(self._config),
            "server",
            self.role,
            "--database-url",
            self._url(),
            *http,
            "--data-dir",
            str(self.data_dir),
            *own,
        ]

    def start(self) -> None:
        """Start a new incarnation (the previous one must have ended)."""
        if self.alive:
            raise HarnessError(f"{self.name} is already running (pid {self.pid})")
        self.incarnation += 1
        self.data_dir.mkdir(parents=True, exist_ok=True)
        env = {**self._env, "PGAPPNAME": self.app_name, "PYTHONUNBUFFERED": "1"}
        with self.log_path.open("ab") as log:
            log.write(f"\n=== {self.name} start #{self.incarnation} ===\n".encode())
            log.flush()
            # A session of its own: a kill of the group reaches the server and nothing else.
            self.popen = subprocess.Popen(
                self.command(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
        self.started_at = time.monotonic()
        self.expected_down = False

    def kill(self) -> None:
        """kill -9 the process group and reap it."""
        self.expected_down = True
        if self.popen is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.popen.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(timeout=10)

    def send_term(self) -> None:
        """Send SIGTERM to the process, as a service manager would; see `wait_stopped`."""
        self.expected_down = True
        if self.popen is not None and self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.popen.pid, signal.SIGTERM)

    def wait_stopped(self, since: float, timeout: float = 20.0) -> Stop:
        """Wait for the process to exit after `send_term` (sent at monotonic time `since`);
        kill it when it still runs after `timeout` seconds."""
        if self.popen is None:
            return Stop(self.name, None, 0.0, False)
        try:
            code = self.popen.wait(timeout=max(since + timeout - time.monotonic(), 0.01))
            return Stop(self.name, code, time.monotonic() - since, False)
        except subprocess.TimeoutExpired:
            self.kill()
            return Stop(self.name, self.popen.returncode, time.monotonic() - since, True)

    def terminate(self, timeout: float = 20.0) -> Stop:
        """SIGTERM the process and wait for it to exit (killing it after `timeout` s)."""
        since = time.monotonic()
        self.send_term()
        return self.wait_stopped(since, timeout)

    def log_tail(self, lines: int = 30) -> str:
        """The last `lines` lines of the process's log."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.rstrip().splitlines()[-lines:])


def _cli_flags(role: str) -> str:
    """The help text of `tiercel server <role>`, to learn which flags this version has."""
    result = subprocess.run(
        [*TIERCEL, "server", role, "--help"], capture_output=True, text=True, timeout=60
    )
    return result.stdout


_flags_cache: dict[str, str] = {}


def supported_flags(role: str = "worker") -> str:
    """`tiercel server <role> --help`, read once per process and role."""
    if role not in _flags_cache:
        _flags_cache[role] = _cli_flags(role)
    return _flags_cache[role]


@dataclass
class Cluster:
    """PostgreSQL and Tiercel's processes, started and stopped together, with fault injection.

    `roles` names the processes to run (a role given twice runs twice, as `worker-1` and
    `worker-2`). Heartbeat settings are written to the config file every process reads and,
    when this version of the command line has them, passed as flags too.
    """

    root: Path
    roles: Sequence[str] = DEFAULT_ROLES
    worker_slots: int = 16
    heartbeat_interval: float = 0.5
    heartbeat_timeout: float = 6.0
    keep_root: bool = False
    """Leave the root folder (logs, database) in place after `close()`."""
    processes: dict[str, TiercelProcess] = field(default_factory=dict)
    exits: list[Exit] = field(default_factory=list)
    """Processes that ended by themselves, in order (each was restarted)."""
    url: str = ""

    def __post_init__(self) -> None:
        self.root = Path(self.root)
        self._postgres: Any = None
        self._lock = threading.RLock()
        self._stop_supervisor = threading.Event()
        self._supervisor: threading.Thread | None = None
        self._closed = False
        self._http: httpx.Client | None = None

    # --- lifecycle ------------------------------------------------------------------------------

    @classmethod
    def in_temp_dir(cls, **options: Any) -> Cluster:
        """A cluster in a new folder under the system's temp dir (short, so PostgreSQL's
        socket path stays under the Unix limit)."""
        return cls(Path(tempfile.mkdtemp(prefix="tiercel-faults-")), **options)

    def __enter__(self) -> Cluster:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self, timeout: float = 90.0) -> None:
        """Start PostgreSQL, migrate it, start every process and wait until each is up."""
        from engine.embedded import EmbeddedPostgres
        from engine.migrate import migrate

        self.root.mkdir(parents=True, exist_ok=True)
        self._postgres = EmbeddedPostgres(self.root / "db")
        self.url = self._postgres.start()
        migrate(self.url)
        config = self.root / "tiercel.yaml"
        config.write_text(
            "tiercel:\n"
            f"  heartbeat-interval: {self.heartbeat_interval}\n"
            f"  heartbeat-timeout: {self.heartbeat_timeout}\n"
            f"  worker-slots: {self.worker_slots}\n"
        )
        flags = supported_flags()
        extra: list[str] = ["--worker-slots", str(self.worker_slots)]
        if "--heartbeat-interval" in flags:
            extra += ["--heartbeat-interval", str(self.heartbeat_interval)]
        if "--heartbeat-timeout" in flags:
            extra += ["--heartbeat-timeout", str(self.heartbeat_timeout)]
        env = {k: v for k, v in os.environ.items() if not k.startswith(("TIERCEL_", "PG"))}
        env["TIERCEL_STORAGE_DIR"] = str(self.root / "storage")
        env["TIERCEL_ADMIN_PASSWORD"] = self.auth[1]
        counts = {r: self.roles.count(r) for r in self.roles}
        seen: dict[str, int] = {}
        for role in self.roles:
            seen[role] = seen.get(role, 0) + 1
            name = f"{role}-{seen[role]}" if counts[role] > 1 else role
            self.processes[name] = TiercelProcess(
                name,
                role,
                url=lambda: self.url,
                port=free_port(),
                data_dir=self.root / "procs" / name,
                log_path=self.root / "logs" / f"{name}.log",
                config=config,
                extra_args=extra,
                env=env,
            )
        (self.root / "logs").mkdir(exist_ok=True)
        for proc in self.processes.values():
            proc.start()
        for name in self.processes:
            self.wait_started(name, timeout)
        self._supervisor = threading.Thread(target=self._supervise, daemon=True)
        self._supervisor.start()

    def close(self) -> None:
        """Kill every process, stop PostgreSQL, and kill whatever still runs in the root
        folder. Safe to call twice; never raises."""
        if self._closed:
            return
        self._closed = True
        self._stop_supervisor.set()
        if self._supervisor is not None:
            self._supervisor.join(timeout=5)
        if self._http is not None:
            self._http.close()
        for proc in self.processes.values():
            with contextlib.suppress(Exception):
                proc.kill()
        if self._postgres is not None:
            with contextlib.suppress(Exception):
                self._postgres.stop()
        with contextlib.suppress(Exception):
            self.sweep()
        if not self.keep_root:
            import shutil

            shutil.rmtree(self.root, ignore_errors=True)

    def sweep(self) -> list[int]:
        """Kill (by pid) every process still running inside the root folder: its working
        directory or its command line is there. Returns the pids killed."""
        import psutil

        root = str(self.root.resolve())
        killed = []
        for proc in psutil.process_iter(["pid", "cmdline"]):
            if proc.pid == os.getpid():
                continue
            try:
                cwd = proc.cwd()
                inside = cwd == root or cwd.startswith(root + os.sep)
                inside = inside or any(root in arg for arg in proc.info["cmdline"] or ())
                if inside:
                    proc.kill()
                    killed.append(proc.pid)
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue
        return killed

    def _supervise(self) -> None:
        # What a service manager does: notice a process that died unasked, and start it again.
        while not self._stop_supervisor.wait(0.2):
            with self._lock:
                for proc in self.processes.values():
                    if proc.expected_down or proc.alive or proc.popen is None:
                        continue
                    self.exits.append(
                        Exit(proc.name, proc.incarnation, proc.popen.returncode, proc.log_tail())
                    )
                    # A process that cannot start (say, while the database is down) must not
                    # be restarted in a tight loop.
                    if time.monotonic() - proc.started_at < 1.0:
                        time.sleep(1.0)
                    proc.start()

    # --- processes ------------------------------------------------------------------------------

    def names(self, role: str | None = None) -> list[str]:
        """The process names, of one role or all."""
        return [n for n, p in self.processes.items() if role is None or p.role == role]

    def wait_started(self, name: str, timeout: float = 60.0) -> None:
        """Wait until the current start of `name` is up: its API answers ready (web server),
        or its LISTEN connection is open (other roles)."""
        proc = self.processes[name]

        def up() -> bool:
            if not proc.alive:
                raise HarnessError(
                    f"{name} exited with code {proc.popen.returncode if proc.popen else None} "
                    f"while starting; its log ends with:\n{proc.log_tail()}"
                )
            if proc.role == "webserver":
                r = httpx.get(f"http://127.0.0.1:{proc.port}/health/readiness", timeout=2)
                return r.status_code == 200
            return proc.app_name in self.listen_connections()

        try:
            wait_until(up, timeout, f"{name} to start")
        except HarnessError as exc:
            raise HarnessError(f"{exc}\n{name}'s log ends with:\n{proc.log_tail()}") from None

    def kill(self, name: str, *, restart: bool = True, wait: bool = False) -> None:
        """kill -9 `name`; start it again right away unless `restart` is False."""
        with self._lock:
            proc = self.processes[name]
            proc.kill()
            if restart:
                proc.start()
        if restart and wait:
            self.wait_started(name)

    def terminate(
        self, name: str, *, restart: bool = True, wait: bool = False, timeout: float = 20.0
    ) -> Stop:
        """SIGTERM `name` and wait for it to exit (see `TiercelProcess.terminate`); start it
        again unless `restart` is False."""
        proc = self.processes[name]
        with self._lock:
            proc.expected_down = True
        stop = proc.terminate(timeout)
        if restart:
            with self._lock:
                proc.start()
            if wait:
                self.wait_started(name)
        return stop

    def start_process(self, name: str, *, wait: bool = True) -> None:
        """Start `name` again after a `kill`/`terminate` with `restart=False`."""
        with self._lock:
            self.processes[name].start()
        if wait:
            self.wait_started(name)

    def stop_all(self, timeout: float = 20.0) -> list[Stop]:
        """SIGTERM every process at once and wait for each to exit."""
        since = time.monotonic()
        with self._lock:
            for proc in self.processes.values():
                proc.send_term()
        return [proc.wait_stopped(since, timeout) for proc in self.processes.values()]

    def orphans(self, under: Path) -> list[int]:
        """Pids of processes whose working directory is inside `under` (e.g. scripts left
        behind by a stopped worker)."""
        import psutil

        base = str(under.resolve())
        found = []
        for proc in psutil.process_iter(["pid"]):
            try:
                cwd = proc.cwd()
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue
            if (cwd == base or cwd.startswith(base + os.sep)) and proc.status() != "zombie":
                found.append(proc.pid)
        return found

    # --- the database ---------------------------------------------------------------------------

    @contextlib.contextmanager
    def connect(self) -> Iterator[psycopg.Connection[Any]]:
        """A short-lived autocommit connection of the harness itself."""
        with psycopg.Connection.connect(
            self.url, autocommit=True, connect_timeout=5, application_name="tiercel-harness"
        ) as conn:
            yield conn

    def query(self, sql: str, params: Any = None) -> list[tuple[Any, ...]]:
        """Rows of one query."""
        with self.connect() as conn:
            return conn.execute(sql, params).fetchall()

    def listen_connections(self) -> dict[str, int]:
        """Open LISTEN connections by application name."""
        rows = self.query(
            "SELECT application_name, count(*) FROM pg_stat_activity"
            " WHERE query ILIKE 'LISTEN%%' GROUP BY 1"
        )
        return {name: n for name, n in rows}

    def restart_postgres(self, down_for: float = 2.0) -> str:
        """Stop PostgreSQL (fast shutdown: every connection is cut), leave it down for
        `down_for` seconds, and start it again on the same data dir; return its URL, which
        must not change (the processes keep theirs)."""
        with self._lock:
            self._postgres.stop()
            time.sleep(down_for)
            url = str(self._postgres.start())
        if url != self.url:
            raise HarnessError(f"PostgreSQL came back at {url}, not {self.url}")
        return url

    def stop_postgres(self) -> None:
        """Stop PostgreSQL until `start_postgres`."""
        self._postgres.stop()

    def start_postgres(self) -> str:
        """Start PostgreSQL again on the same data dir; return its URL (must not change)."""
        url = str(self._postgres.start())
        if url != self.url:
            raise HarnessError(f"PostgreSQL came back at {url}, not {self.url}")
        return url

    def drop_listen_connections(self) -> int:
        """Terminate every LISTEN connection on the server; return how many there were."""
        rows = self.query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE query ILIKE 'LISTEN%%'"
        )
        return sum(1 for (done,) in rows if done)

    # --- the REST API ---------------------------------------------------------------------------

    @property
    def api(self) -> str:
        """The base URL of the (first) web server."""
        [web, *_] = self.names("webserver")
        return f"http://127.0.0.1:{self.processes[web].port}"

    auth = ("admin", "tiercel-faults-admin")
    """The credentials of the admin account the cluster's first web server creates."""

    @property
    def http(self) -> httpx.Client:
        """An HTTP client on the web server (one per cluster, not thread-safe to share:
        threads should open their own with `httpx.Client(base_url=cluster.api)`)."""
        if self._http is None:
            self._http = httpx.Client(base_url=self.api, timeout=30, auth=self.auth)
        return self._http

    def deploy(self, source: str) -> dict[str, Any]:
        """Create a flow from its YAML through the API; return the flow."""
        r = self.http.post(
            "/api/v1/flows", content=source, headers={"Content-Type": "application/x-yaml"}
        )
        if r.status_code != 200:
            raise HarnessError(f"Deploying the flow answered {r.status_code}: {r.text}")
        body: dict[str, Any] = r.json()
        return body

    def create_execution(self, namespace: str, flow_id: str) -> str:
        """Start an execution through the API; return its id."""
        r = self.http.post(f"/api/v1/executions/{namespace}/{flow_id}", json={})
        if r.status_code != 200:
            raise HarnessError(f"Creating an execution answered {r.status_code}: {r.text}")
        return str(r.json()["id"])

    def execution(self, execution_id: str) -> dict[str, Any]:
        """The execution as the API shows it now."""
        r = self.http.get(f"/api/v1/executions/{execution_id}")
        r.raise_for_status()
        body: dict[str, Any] = r.json()
        return body

    def wait_ended(self, execution_ids: Sequence[str], timeout: float) -> dict[str, str]:
        """Wait until every execution is terminal in the event log; return their states.
        Raises `HarnessError` listing those still running after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        states: dict[str, str] = {}
        while True:
            states = self.final_states(execution_ids)
            if all(states.get(x) in TERMINAL_STATES for x in execution_ids):
                return states
            if time.monotonic() >= deadline:
                running = {x: states.get(x, "(none)") for x in execution_ids}
                running = {x: s for x, s in running.items() if s not in TERMINAL_STATES}
                raise HarnessError(
                    f"{len(running)} execution(s) not terminal after {timeout:.0f}s: {running}"
                )
            time.sleep(0.25)

    def final_states(self, execution_ids: Sequence[str]) -> dict[str, str]:
        """Each execution's latest state in the event log (absent when it has none)."""
        rows = self.query(
            "SELECT DISTINCT ON (stream_id) data->>'executionId', data->>'state' FROM events"
            " WHERE type = 'ExecutionStateChanged' AND stream_id = ANY(%s)"
            " ORDER BY stream_id, version DESC",
            ([f"exec:{x}" for x in execution_ids],),
        )
        return {x: state for x, state in rows}

    def attempt_events(self, execution_id: str) -> list[AttemptEvent]:
        """Every event of the execution's attempts, in order."""
        base = f"exec:{execution_id}/a:"
        rows = self.query(
            "SELECT stream_id, type, data, meta FROM events"
            " WHERE stream_id >= %s AND stream_id < %s ORDER BY seq",
            (base, base[:-1] + ";"),  # ';' sorts right after ':'
        )
        return [AttemptEvent(*row) for row in rows]

    def attempt_history(self, execution_ids: Sequence[str]) -> str:
        """The attempts' events of some executions, one line each, for a failure message."""
        return "\n".join(
            f"{x} attempt {e.attempt}: {e.type} by {e.actor} {e.data.get('reason', '')}".rstrip()
            for x in execution_ids
            for e in self.attempt_events(x)
        )


def shell_effect_flow(namespace: str, flow_id: str, effects: Path, sleep: float | Path) -> str:
    """A flow of one shell task that appends its execution id to `effects` (the side effect
    whose repetitions a test counts), then sleeps `sleep` seconds, or, when `sleep` is a file,
    as many seconds as that file says when the task runs (so a test can hold tasks running,
    then let their next attempts finish quickly)."""
    pause = f"$(cat {sleep})" if isinstance(sleep, Path) else str(sleep)
    return f"""\
id: {flow_id}
namespace: {namespace}
tasks:
  - id: effect
    type: io.kestra.plugin.scripts.shell.Commands
    commands:
      - echo {{{{ execution.id }}}} >> {effects}
      - sleep {pause}
"""


def side_effects(effects: Path) -> dict[str, int]:
    """How many times each execution id appears in the `effects` file."""
    counts: dict[str, int] = {}
    try:
        text = effects.read_text()
    except FileNotFoundError:
        return counts
    for line in text.split():
        counts[line] = counts.get(line, 0) + 1
    return counts
