"""A private PostgreSQL server in a data directory, for `tiercel server local`.

This module owns the server's whole lifecycle: it runs `initdb`, `pg_ctl start` and
`pg_ctl stop -m fast` itself, with the PostgreSQL binaries shipped inside the `pgserver` wheel (or
`initdb`/`pg_ctl` found on PATH). Nothing outside the data directory is created or changed (no
handle files, no parent directory's mode), except a private socket directory in the temp dir when
the data directory's path is too long for a Unix socket, and the service account below.

- One owner at a time: `start()` holds an exclusive `flock` on `<data_dir>/tiercel.lock` (which
  holds the owner's PID) until `stop()`. The kernel drops it when the owner dies, even by SIGKILL.
- Crash recovery: a server left running by an owner that died is adopted (and stopped by the new
  owner's `stop()`); a `postmaster.pid` left by a server that is gone is removed.
- The server listens on a Unix socket in `<data_dir>/postgres` only, never on TCP.
- PostgreSQL refuses to run as root. As root, its programs run as the unprivileged `nobody` inside
  a user namespace whose only mapping is root itself: files stay owned by root, directories keep
  their modes, and the server can reach exactly what root's owner permissions reach, without any
  capability. Only its owner can connect (the socket sits in the 0700 cluster directory), and that
  owner already runs as root, so this grants no one anything new. Without user namespaces (a
  container that forbids them), they run as the system account `tiercel-postgres`, created when
  absent, which then owns the cluster; a parent directory it cannot traverse is reported, never
  widened.
- Two roles: `postgres`, made by initdb, owns the cluster and what migrations create; the
  runtime role of the `postgres` database (`engine.db.runtime_role`) is created here as a LOGIN
  role, so the engine's sessions log in as it and may only add to and read `events` (migrations
  grant its rights; see docs/audit-log.md).

Throwaway servers (`tiercel flow test`) start from a template: `seed_from_template` makes, once,
a cluster already set up (initdb, then the caller's setup such as migrations) in the user's cache
directory, and copies it into each new data directory, so a throwaway server costs a copy and a
start rather than an initdb. The copy is the cost that remains, so the template is kept small
(about 10 MB instead of 40): 1 MB WAL segments instead of 16, no segments recycled ahead, and no
`template0`/`template1` databases, which a throwaway server never creates a database from.
"""

from __future__ import annotations

import atexit
import contextlib
import enum
import fcntl
import functools
import hashlib
import importlib.util
import logging
import os
import pwd
import shlex
import shutil
import signal
import stat
import subprocess
import tempfile
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import platformdirs

from engine.errors import DatabaseUnavailable

log = logging.getLogger(__name__)

LOCK_FILE = "tiercel.lock"
"""The file in the data directory whose exclusive lock marks its owner (it holds the PID)."""

SERVICE_ACCOUNT = "tiercel-postgres"
"""The system account PostgreSQL runs as when Tiercel runs as root without user namespaces."""

TEMPLATE_KEEP_SECONDS = 86400.0
"""A template cluster unused for this long is removed when another one is built."""

TEMPLATE_LAYOUT = "slim-1"
"""Part of a template's name: a change in how templates are made makes a new one."""

_TEMPLATE_WAL_SEGMENT_MB = 1

_PORT = 5432  # only names the socket file; the server listens on no TCP port
_SOCKET_PATH_MAX = 107  # bytes of a Unix socket path (sun_path is 108 with its NUL)
_START_TIMEOUT = 60
_STOP_TIMEOUT = 30


def default_data_dir() -> Path:
    """Where `tiercel server local` keeps its data unless told otherwise."""
    return Path(platformdirs.user_data_dir("tiercel"))


def template_cache_dir() -> Path:
    """Where template clusters are kept (`TIERCEL_CACHE_DIR`, else the user's cache dir)."""
    configured = os.environ.get("TIERCEL_CACHE_DIR")
    return Path(configured) if configured else Path(platformdirs.user_cache_dir("tiercel"))


def seed_from_template(
    data_dir: Path,
    setup: Callable[[str], object],
    key: str,
    cache_dir: Path | None = None,
) -> None:
    """Give the empty `data_dir` a copy of a cluster made once and set up by `setup(url)`.

    The template is kept in `cache_dir` (default `template_cache_dir()`) under a name derived
    from `key` (what `setup` does, e.g. a digest of the migrations) and the PostgreSQL binaries,
    so a new version of either makes a new template. Concurrent callers build it once: the
    first holds a lock while the others wait. `EmbeddedPostgres(data_dir).start()` then starts
    the copy.
    """
    binaries = _binaries()
    named = f"{binaries.initdb}\0{key}\0{TEMPLATE_LAYOUT}"
    digest = hashlib.sha256(named.encode()).hexdigest()[:16]
    root = (cache_dir or template_cache_dir()).absolute()
    template = root / f"cluster-{digest}"
    if not (template / "postgres" / "PG_VERSION").is_file():
        root.mkdir(parents=True, exist_ok=True)
        fd = os.open(root / "template.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # another process may be building it right now
            if not (template / "postgres" / "PG_VERSION").is_file():
                _build_template(template, setup)
        finally:
            os.close(fd)
    target = Path(data_dir).absolute() / "postgres"
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(template / "postgres", target, symlinks=True)
    with contextlib.suppress(OSError):
        os.utime(template)  # in use: kept when templates of other versions are cleared


def _build_template(template: Path, setup: Callable[[str], object]) -> None:
    # Built beside its final place and renamed into it, so a build that dies halfway is never
    # taken for a template.
    staging = template.with_name(f"{template.name}.build-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    server = EmbeddedPostgres(staging, wal_segment_mb=_TEMPLATE_WAL_SEGMENT_MB)
    try:
        url = server.start()
        setup(url)
        _drop_template_databases(url)
    finally:
        server.stop()
    _drop_recycled_wal(staging / "postgres")
    (staging / "postgres" / "log").unlink(missing_ok=True)
    (staging / LOCK_FILE).unlink(missing_ok=True)
    shutil.rmtree(template, ignore_errors=True)
    staging.rename(template)
    # Templates of older migrations or binaries would pile up (tens of MB each) with every
    # upgrade; one unused for a day is removed (another version rebuilds it if it needs it).
    for other in template.parent.glob("cluster-*"):
        if other != template and time.time() - other.stat().st_mtime > TEMPLATE_KEEP_SECONDS:
            shutil.rmtree(other, ignore_errors=True)


def _drop_template_databases(url: str) -> None:
    # A third of a fresh cluster's bytes (copied on every `flow test`); a throwaway server only
    # uses the `postgres` database and never creates another.
    import psycopg

    with psycopg.connect(url, autocommit=True, connect_timeout=10) as conn:
        for name in ("template0", "template1"):
            conn.execute(f"ALTER DATABASE {name} IS_TEMPLATE false")
            conn.execute(f"DROP DATABASE {name}")
        conn.execute("CHECKPOINT")


def _drop_recycled_wal(pgdata: Path) -> None:
    """Remove the WAL segments a cleanly stopped cluster recycled ahead of its last checkpoint.

    PostgreSQL renames old segments into future ones to reuse them; after a clean shutdown they
    hold nothing it needs (it makes new segments when it gets there), only bytes to copy. The
    segment of the checkpoint and the next one (where its record may end) are kept.
    """
    runner = _runner()
    controldata = str(Path(_binaries().pg_ctl).with_name("pg_controldata"))
    result = runner.run([controldata, "-D", str(pgdata)], timeout=30)
    redo = ""
    for line in result.stdout.splitlines():
        if line.startswith("Latest checkpoint's REDO WAL file:"):
            redo = line.partition(":")[2].strip()
        if line.startswith("Database cluster state:") and "shut down" not in line:
            return  # not a clean shutdown: every segment may matter
    if result.returncode != 0 or len(redo) != 24:
        return
    timeline, segment = redo[:8], int(redo[8:], 16)
    for path in (pgdata / "pg_wal").iterdir():
        name = path.name
        if len(name) == 24 and name.startswith(timeline) and path.is_file():
            with contextlib.suppress(ValueError):
                if int(name[8:], 16) > segment + 1:
                    path.unlink()


@dataclass(frozen=True)
class _Binaries:
    initdb: str
    pg_ctl: str


def _binaries() -> _Binaries:
    # find_spec locates the wheel without importing it: importing pgserver sets up its own
    # server-sharing machinery, which is exactly what must not run here.
    spec = importlib.util.find_spec("pgserver")
    for location in (spec.submodule_search_locations or []) if spec else []:
        bin_dir = Path(location) / "pginstall" / "bin"
        if (bin_dir / "initdb").is_file() and (bin_dir / "pg_ctl").is_file():
            return _Binaries(str(bin_dir / "initdb"), str(bin_dir / "pg_ctl"))
    initdb, pg_ctl = shutil.which("initdb"), shutil.which("pg_ctl")
    if initdb and pg_ctl:
        return _Binaries(initdb, pg_ctl)
    raise DatabaseUnavailable(
        "No PostgreSQL binaries found: install the `pgserver` package (pip install pgserver), "
        "put initdb and pg_ctl on PATH, or pass --database-url to use another server."
    )


@dataclass(frozen=True)
class _Runner:
    """How PostgreSQL's programs are run, and which account must own the cluster's files."""

    owner: tuple[int, int]
    prefix: tuple[str, ...] = ()
    account: str | None = None

    def run(self, argv: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
        uid = gid = None
        if self.account is not None:
            uid, gid = self.owner
        # cwd="/": an account switched to may not be allowed in the caller's directory.
        return subprocess.run(
            [*self.prefix, *argv],
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd="/",
            user=uid,
            group=gid,
            extra_groups=[] if uid is not None else None,
            check=False,
        )


@functools.cache
def _user_namespace_prefix() -> tuple[str, ...] | None:
    """The `unshare` command that runs a program as `nobody` in a user namespace mapping only the
    caller's own uid and gid, or None when user namespaces are unavailable here."""
    unshare = shutil.which("unshare")
    if unshare is None:
        return None
    try:
        nobody = pwd.getpwnam("nobody")
    except KeyError:
        return None
    prefix = (unshare, "--user", f"--map-user={nobody.pw_uid}", f"--map-group={nobody.pw_gid}")
    try:
        probe = subprocess.run([*prefix, "true"], capture_output=True, timeout=10, cwd="/")
    except (OSError, subprocess.TimeoutExpired):
        return None
    return prefix if probe.returncode == 0 else None


def _service_account() -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(SERVICE_ACCOUNT)
    except KeyError:
        pass
    useradd = shutil.which("useradd")
    result = None
    if useradd is not None:
        result = subprocess.run(
            [useradd, "--system", "--user-group", "--no-create-home", "--home-dir"]
            + ["/nonexistent", "--shell", "/usr/sbin/nologin", SERVICE_ACCOUNT],
            capture_output=True,
            text=True,
            check=False,
        )
    try:
        return pwd.getpwnam(SERVICE_ACCOUNT)
    except KeyError:
        reason = result.stderr.strip() if result is not None else "useradd is not installed"
        raise DatabaseUnavailable(
            "PostgreSQL refuses to run as root, user namespaces are unavailable here, and the "
            f"account {SERVICE_ACCOUNT!r} could not be created ({reason}). Run Tiercel as an "
            "unprivileged user, or pass --database-url to use another server."
        ) from None


def _runner() -> _Runner:
    if os.geteuid() != 0:
        return _Runner(owner=(os.geteuid(), os.getegid()))
    prefix = _user_namespace_prefix()
    if prefix is not None:
        return _Runner(owner=(os.geteuid(), os.getegid()), prefix=prefix)
    account = _service_account()
    return _Runner(owner=(account.pw_uid, account.pw_gid), account=account.pw_name)


def _blocking_ancestor(path: Path, uid: int, gid: int) -> Path | None:
    """The top-most directory above `path` that `uid`/`gid` may not traverse, if any."""
    for directory in reversed(path.parents):
        st = directory.stat()
        if st.st_uid == uid:
            allowed = st.st_mode & stat.S_IXUSR
        elif st.st_gid == gid:
            allowed = st.st_mode & stat.S_IXGRP
        else:
            allowed = st.st_mode & stat.S_IXOTH
        if not allowed:
            return directory
    return None


def _check_reachable(runner: _Runner, *paths: Path) -> None:
    if runner.account is None:
        return
    for path in paths:
        blocked = _blocking_ancestor(path, *runner.owner)
        if blocked is not None:
            mode = stat.S_IMODE(blocked.stat().st_mode)
            raise DatabaseUnavailable(
                f"The embedded PostgreSQL cannot reach {path}: {blocked} (mode {mode:04o}) does "
                f"not let the account {runner.account!r} through. PostgreSQL refuses to run as "
                f"root and user namespaces are unavailable here, so it runs as {runner.account!r}. "
                "Choose a --data-dir that account can reach, run Tiercel as an unprivileged "
                "user, or pass --database-url to use another server."
            )


def _chown_tree(root: Path, owner: tuple[int, int]) -> None:
    # A cluster made under another account (pgserver's `pgserver` user, or the service account
    # before user namespaces became available) is handed to the account that runs it now; only
    # files inside the cluster are touched.
    if os.geteuid() != 0:
        return
    st = root.lstat()
    if (st.st_uid, st.st_gid) == owner:
        return
    for dirpath, dirnames, filenames in os.walk(root):
        for name in (*dirnames, *filenames):
            os.lchown(os.path.join(dirpath, name), *owner)
    os.lchown(root, *owner)


@dataclass(frozen=True)
class _Postmaster:
    """What a server wrote in its `postmaster.pid`."""

    pid: int
    port: int
    socket_dir: str
    status: str


def _read_postmaster_pid(pgdata: Path) -> _Postmaster | None:
    try:
        lines = (pgdata / "postmaster.pid").read_text().splitlines()
    except FileNotFoundError:
        return None
    # Lines: pid, data dir, start time, port, socket dir, listen address, shmem key, status.
    lines += [""] * (8 - len(lines))
    pid = int(lines[0]) if lines[0].strip().isdigit() else 0
    port = int(lines[3]) if lines[3].strip().isdigit() else _PORT
    return _Postmaster(pid, port, lines[4].strip(), lines[7].strip())


class _Process(enum.Enum):
    GONE = "gone"
    POSTMASTER = "the postmaster of this data directory"
    OTHER = "another program"
    UNKNOWN = "a process this user may not inspect"


def _inspect(pid: int, pgdata: Path) -> _Process:
    """Whether `pid` is a live postmaster of `pgdata`. A postmaster works in its data directory,
    so its cwd tells it apart from a process that reused the PID after a reboot."""
    if pid <= 0:
        return _Process.GONE
    proc = Path("/proc") / str(pid)
    if not Path("/proc/self").exists():
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return _Process.GONE
        except PermissionError:
            return _Process.UNKNOWN
        return _Process.POSTMASTER
    try:
        state = (proc / "stat").read_text().rpartition(")")[2].split()[0]
        if state in ("Z", "X"):  # exited, waiting to be reaped
            return _Process.GONE
        cwd = os.readlink(proc / "cwd")
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return _Process.GONE
    except PermissionError:
        return _Process.UNKNOWN
    return _Process.POSTMASTER if cwd == str(pgdata.resolve()) else _Process.OTHER


def _processes_in(directory: Path) -> list[int]:
    """PIDs of live processes working in `directory` (a server's backends work in its data dir)."""
    target = str(directory.resolve())
    pids = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            if os.readlink(proc / "cwd") == target:
                pids.append(int(proc.name))
        except OSError:
            continue
    return [pid for pid in pids if _inspect(pid, directory) is not _Process.GONE]


def _wait_gone(pid: int, pgdata: Path, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while _inspect(pid, pgdata) is _Process.POSTMASTER:
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.02)
    return True


def _acquire_lock(data_dir: Path) -> int:
    path = data_dir / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = ""
        # The holder writes its PID just after taking the lock: give it a moment.
        for _ in range(20):
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
            if holder:
                break
            time.sleep(0.01)
        os.close(fd)
        if holder.isdigit():
            raise DatabaseUnavailable(
                f"The data directory {data_dir} is in use by another Tiercel (PID {holder}), "
                f"which runs its embedded PostgreSQL. Stop that process first (`kill {holder}`), "
                "or pass another --data-dir."
            ) from None
        raise DatabaseUnavailable(
            f"The data directory {data_dir} is in use by another process holding {path}. "
            "Stop it first, or pass another --data-dir."
        ) from None
    except BaseException:
        os.close(fd)
        raise
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def _ensure_runtime_login(url: str) -> None:
    """Make the runtime role of the `postgres` database a LOGIN role (created when missing).

    Only this cluster's owner reaches its socket, whose logins are trusted, so a LOGIN role
    needs no password here; the engine's sessions then log in as it rather than switching to it
    from the superuser, and no statement in them can switch back.
    """
    import psycopg
    from psycopg import sql

    from engine.db import runtime_role

    role = sql.Identifier(runtime_role("postgres"))
    try:
        with psycopg.connect(url, autocommit=True, connect_timeout=10) as conn:
            exists = conn.execute(
                "SELECT 1 FROM pg_roles WHERE rolname = %s", (runtime_role("postgres"),)
            ).fetchone()
            verb = "ALTER" if exists else "CREATE"
            conn.execute(sql.SQL(verb + " ROLE {} LOGIN").format(role))
    except psycopg.Error as exc:
        log.warning("Could not make the runtime role of the embedded PostgreSQL: %s", exc)


class EmbeddedPostgres:
    """Start, adopt and stop a PostgreSQL server whose cluster lives in `data_dir/postgres`."""

    def __init__(self, data_dir: Path, *, wal_segment_mb: int | None = None) -> None:
        """`wal_segment_mb` sets the WAL segment size of a cluster this server initialises
        (PostgreSQL's default, 16 MB, when None)."""
        self.data_dir = Path(data_dir).absolute()
        self._wal_segment_mb = wal_segment_mb
        self.pgdata = self.data_dir / "postgres"
        self.url = ""
        self._lock_fd: int | None = None
        self._runner: _Runner | None = None
        self._binaries: _Binaries | None = None

    def start(self) -> str:
        """Take the data directory, make sure its server runs, and return the server's URL.

        Initialises the cluster the first time, adopts a server left running by an owner that
        died, and removes a stale `postmaster.pid`. Raises `DatabaseUnavailable` when another
        process owns the data directory (naming its PID) or the server cannot start.
        """
        if self._lock_fd is not None:
            return self.url
        try:
            self.data_dir.mkdir(parents=True, exist_ok=True)
            self._lock_fd = _acquire_lock(self.data_dir)
        except OSError as exc:
            raise DatabaseUnavailable(
                f"Cannot use the data directory {self.data_dir}: {exc}. "
                "Pass another --data-dir, or --database-url to use another server."
            ) from exc
        atexit.register(self.stop)
        try:
            self._binaries = _binaries()
            self._runner = _runner()
            _check_reachable(self._runner, self.pgdata, Path(self._binaries.pg_ctl))
            postmaster = self._adopt_or_clear()
            if postmaster is None:
                self._ensure_cluster(self._runner, self._binaries)
                postmaster = self._start_server(self._runner, self._binaries)
        except OSError as exc:
            self.stop()
            raise DatabaseUnavailable(
                f"Could not start the embedded PostgreSQL in {self.pgdata}: {exc}. "
                "Pass another --data-dir, or --database-url to use another server."
            ) from exc
        except BaseException:
            self.stop()
            raise
        host = urllib.parse.quote(postmaster.socket_dir, safe="/")
        self.url = f"postgresql://postgres@/postgres?host={host}&port={postmaster.port}"
        _ensure_runtime_login(self.url)
        return self.url

    def _adopt_or_clear(self) -> _Postmaster | None:
        """The running server of this data directory, once it is ready; None when none runs."""
        deadline = time.monotonic() + _START_TIMEOUT
        while True:
            info = _read_postmaster_pid(self.pgdata)
            if info is None:
                return None
            found = _inspect(info.pid, self.pgdata)
            if found in (_Process.GONE, _Process.OTHER):
                # Left by a server that died; its owner's lock is ours now, so no other server
                # can be starting here. PostgreSQL would refuse both files while their PID
                # answers a signal, which a reused PID or an unreaped process still does.
                log.debug(
                    "Removing the stale postmaster.pid of PID %s in %s", info.pid, self.pgdata
                )
                self._remove_stale_lock_files(info)
                # Backends of a killed postmaster exit as soon as they notice; until then they
                # hold its shared memory, and a new server would refuse to start.
                settle = time.monotonic() + 5
                while _processes_in(self.pgdata) and time.monotonic() < settle:
                    time.sleep(0.02)
                return None
            if found is _Process.UNKNOWN:
                raise DatabaseUnavailable(
                    f"PostgreSQL (PID {info.pid}) may still run on {self.pgdata} under another "
                    "account. Stop it, or pass another --data-dir."
                )
            if info.status == "ready":
                if not info.socket_dir:
                    raise DatabaseUnavailable(
                        f"The PostgreSQL (PID {info.pid}) running on {self.pgdata} has no Unix "
                        "socket. Stop it, then start Tiercel again."
                    )
                log.debug("Adopting the PostgreSQL (PID %s) running on %s", info.pid, self.pgdata)
                return info
            # Still starting (crash recovery) or stopping: wait for it to settle.
            if time.monotonic() >= deadline:
                raise DatabaseUnavailable(
                    f"The PostgreSQL (PID {info.pid}) running on {self.pgdata} stayed "
                    f"{info.status or 'starting'!r} for {_START_TIMEOUT} s. "
                    f"See {self.pgdata / 'log'}, stop it, then start Tiercel again."
                )
            time.sleep(0.05)

    def _remove_stale_lock_files(self, info: _Postmaster) -> None:
        if info.socket_dir:
            socket_lock = Path(info.socket_dir) / f".s.PGSQL.{info.port}.lock"
            try:
                holder = socket_lock.read_text().split("\n", 1)[0].strip()
            except OSError:
                holder = ""
            if holder == str(info.pid):
                socket_lock.unlink(missing_ok=True)
        (self.pgdata / "postmaster.pid").unlink(missing_ok=True)

    def _ensure_cluster(self, runner: _Runner, binaries: _Binaries) -> None:
        if (self.pgdata / "PG_VERSION").is_file():
            _chown_tree(self.pgdata, runner.owner)
            return
        if self.pgdata.exists():
            if any(self.pgdata.iterdir()):
                raise DatabaseUnavailable(
                    f"{self.pgdata} is not empty but holds no PostgreSQL cluster (no "
                    "PG_VERSION). Move it away, then start Tiercel again."
                )
            self.pgdata.rmdir()
        # initdb works in a side directory renamed into place when complete, so an interrupted
        # initdb never leaves a half-made cluster where the next start would trust it.
        staging = self.data_dir / "postgres.initdb"
        if staging.is_symlink() or staging.is_file():
            staging.unlink()
        elif staging.exists():
            shutil.rmtree(staging)
        staging.mkdir(mode=0o700)
        if os.geteuid() == 0:
            os.chown(staging, *runner.owner)
        argv = [binaries.initdb, "-D", str(staging), "-U", "postgres", "--auth=trust", "-E", "UTF8"]
        if self._wal_segment_mb is not None:
            argv.append(f"--wal-segsize={self._wal_segment_mb}")
        result = runner.run(argv, timeout=120)
        if result.returncode != 0:
            shutil.rmtree(staging, ignore_errors=True)
            raise DatabaseUnavailable(
                f"initdb could not create the embedded PostgreSQL cluster in {self.pgdata}: "
                f"{result.stderr.strip() or result.stdout.strip()}"
            )
        staging.rename(self.pgdata)

    def _socket_dir(self, runner: _Runner) -> Path:
        if len(os.fsencode(self.pgdata / f".s.PGSQL.{_PORT}")) <= _SOCKET_PATH_MAX:
            return self.pgdata
        # The path is too long for a Unix socket: use a private directory in the temp dir.
        socket_dir = Path(tempfile.mkdtemp(prefix="tiercel-pg-"))
        if os.geteuid() == 0:
            os.chown(socket_dir, *runner.owner)
        return socket_dir

    def _start_server(self, runner: _Runner, binaries: _Binaries) -> _Postmaster:
        socket_dir = self._socket_dir(runner)
        options = f"-p {_PORT} -k {shlex.quote(str(socket_dir))} -c listen_addresses=''"
        log_file = self.pgdata / "log"
        try:
            result = runner.run(
                [binaries.pg_ctl, "-D", str(self.pgdata), "-l", str(log_file), "-o", options]
                + ["-w", "-t", str(_START_TIMEOUT), "start"],
                timeout=_START_TIMEOUT + 30,
            )
            failure = result.stderr.strip() if result.returncode != 0 else ""
        except subprocess.TimeoutExpired:
            failure = f"pg_ctl did not return in {_START_TIMEOUT + 30} s"
        info = _read_postmaster_pid(self.pgdata)
        if failure or info is None or info.status != "ready":
            if socket_dir != self.pgdata:
                shutil.rmtree(socket_dir, ignore_errors=True)
            try:
                tail = "\n".join(log_file.read_text(errors="replace").splitlines()[-5:])
            except OSError:
                tail = ""
            raise DatabaseUnavailable(
                f"Could not start the embedded PostgreSQL in {self.pgdata}: "
                f"{failure or 'the server did not become ready'}\n{tail}\n"
                f"See {log_file}, or pass --database-url to use another server."
            )
        return info

    def stop(self) -> None:
        """Stop the server (started or adopted) and release the data directory; safe to call
        twice, and a no-op when `start()` did not take the data directory."""
        if self._lock_fd is None:
            return
        try:
            self._stop_server()
        finally:
            fd, self._lock_fd = self._lock_fd, None
            os.close(fd)  # closing the only descriptor releases the flock
            atexit.unregister(self.stop)
            self.url = ""

    def _stop_server(self) -> None:
        info = _read_postmaster_pid(self.pgdata)
        if info is None or _inspect(info.pid, self.pgdata) is not _Process.POSTMASTER:
            return
        stopped = False
        if self._runner is not None and self._binaries is not None:
            try:
                result = self._runner.run(
                    [self._binaries.pg_ctl, "-D", str(self.pgdata), "-m", "fast", "-w"]
                    + ["-t", str(_STOP_TIMEOUT), "stop"],
                    timeout=_STOP_TIMEOUT + 10,
                )
            except subprocess.TimeoutExpired:
                pass
            else:
                # pg_ctl returns once postmaster.pid is gone; the process exits just after.
                stopped = result.returncode == 0 and _wait_gone(info.pid, self.pgdata, 5)
        # pg_ctl may not be allowed to signal a server adopted from another account: signal it
        # from here (fast shutdown, then immediate shutdown, then kill).
        for signum, wait in (
            (signal.SIGINT, _STOP_TIMEOUT),
            (signal.SIGQUIT, 5),
            (signal.SIGKILL, 5),
        ):
            if stopped:
                break
            try:
                os.kill(info.pid, signum)
            except ProcessLookupError:
                break
            stopped = _wait_gone(info.pid, self.pgdata, wait)
        if not stopped:
            raise DatabaseUnavailable(
                f"The embedded PostgreSQL (PID {info.pid}) on {self.pgdata} did not stop."
            )
        socket_dir = Path(info.socket_dir)
        if socket_dir != self.pgdata and socket_dir.name.startswith("tiercel-pg-"):
            shutil.rmtree(socket_dir, ignore_errors=True)

    def __enter__(self) -> EmbeddedPostgres:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
