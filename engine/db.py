"""The one adapter between trio and psycopg 3.

psycopg has no trio support, so blocking calls run in `trio.to_thread` on pooled connections, and
LISTEN uses a non-blocking connection whose socket is awaited with `trio.lowlevel.wait_readable`.
The rest of the code sees plain `async` calls. Work that needs several statements on one
connection is passed as one synchronous function to `Database.run`, so it costs a single thread
hop.
"""

from __future__ import annotations

import hashlib
import logging
import os
import select
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import psycopg
import trio
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.rows import dict_row

from engine.backoff import Backoff, describe, is_transient
from engine.errors import DatabaseUnavailable
from engine.health import Health

log = logging.getLogger(__name__)

T = TypeVar("T")
Row = dict[str, Any]

LISTEN = "listen"
"""The health component of the LISTEN connection."""

SESSION_SETTINGS: Mapping[str, str] = {
    # A transaction that stops issuing statements (a bug, a thread that never returns) is
    # ended by the server instead of holding its locks, the append lock above all, for ever.
    # Engine transactions run their statements back to back: the longest gap is a few
    # milliseconds of Python between two statements.
    "idle_in_transaction_session_timeout": "20s",
    # Longer than the idle timeout, so a session waiting behind a stuck holder of the append
    # lock outlives it instead of failing first. Appends queue for milliseconds normally.
    "lock_timeout": "60s",
}
"""Settings every engine connection starts with (a URL's own `options` override them)."""

APPEND_STATEMENT_TIMEOUT = "60s"
"""The statement timeout of the append transaction (engine/store.py): its inserts take
milliseconds; far beyond that something is wrong, and every other append is waiting."""

RUNTIME_URL_ENV = "TIERCEL_RUNTIME_DATABASE_URL"
"""A URL that logs in as the runtime role itself; when set, runtime connections use it."""


class Database:
    """A small pool of psycopg connections used from trio.

    A connection goes back to the pool only when it is healthy and idle: one that broke, was
    closed, or was left inside a transaction is closed instead. When one connection turns out
    to be lost, the idle ones are dropped too, since a server restart or a terminated backend
    takes them all; the next calls connect afresh.
    """

    def __init__(
        self,
        url: str,
        *,
        max_size: int = 6,
        connect_timeout: int = 5,
        settings: Mapping[str, str] = SESSION_SETTINGS,
    ) -> None:
        self.url = url
        self.max_size = max_size
        self.connect_timeout = connect_timeout
        self.settings = settings
        self._idle: list[psycopg.Connection[Any]] = []
        self._slots = trio.Semaphore(max_size)
        self._closed = False

    def _connect(self) -> psycopg.Connection[Any]:
        return connect(self.url, connect_timeout=self.connect_timeout, settings=self.settings)

    async def run(self, fn: Callable[[psycopg.Connection[Any]], T]) -> T:
        """Run `fn(connection)` in a worker thread on a pooled autocommit connection.

        `fn` opens its own transaction (`with conn.transaction():`) when it needs one. A
        connection that fails is dropped, not returned to the pool, and a server that cannot
        be reached raises `DatabaseUnavailable` at once (callers back off and retry).
        """
        if self._closed:
            raise DatabaseUnavailable("The database pool is closed")
        async with self._slots:
            conn = self._idle.pop() if self._idle else None

            def work() -> T:
                nonlocal conn
                if conn is not None and _stale(conn):
                    _close_quietly(conn)
                    conn = None
                if conn is None:
                    conn = self._connect()
                return fn(conn)

            try:
                result = await trio.to_thread.run_sync(work)
            except BaseException as exc:
                if conn is not None and _reusable(conn) and not self._closed:
                    self._idle.append(conn)
                elif conn is not None:
                    _close_quietly(conn)
                    if conn.broken:
                        self._drop_idle()
                if isinstance(exc, psycopg.errors.IdleInTransactionSessionTimeout):
                    # The server ended a session whose transaction went quiet: its transaction
                    # rolled back with it, so a retry starts afresh.
                    raise DatabaseUnavailable(
                        "PostgreSQL ended a transaction left idle longer than "
                        "idle_in_transaction_session_timeout; nothing of it was written"
                    ) from exc
                raise
            assert conn is not None
            if _reusable(conn) and not self._closed:
                self._idle.append(conn)
            else:
                _close_quietly(conn)
            return result

    def _drop_idle(self) -> None:
        idle, self._idle = self._idle, []
        for conn in idle:
            _close_quietly(conn)

    async def fetchall(self, sql: str, params: Any = None) -> list[Row]:
        """Run one query and return its rows as dicts."""

        def q(conn: psycopg.Connection[Any]) -> list[Row]:
            with conn.cursor(row_factory=dict_row) as cur:
                cur.execute(sql, params)
                return cur.fetchall() if cur.description else []

        return await self.run(q)

    async def fetchone(self, sql: str, params: Any = None) -> Row | None:
        """Run one query and return its first row as a dict, or None."""
        rows = await self.fetchall(sql, params)
        return rows[0] if rows else None

    async def execute(self, sql: str, params: Any = None) -> None:
        """Run one statement in autocommit mode."""

        def q(conn: psycopg.Connection[Any]) -> None:
            conn.execute(sql, params)

        await self.run(q)

    async def ping(self) -> bool:
        """True when the database answers a trivial query."""
        try:
            with trio.fail_after(5):
                await self.fetchone("SELECT 1 AS ok")
            return True
        except (DatabaseUnavailable, psycopg.Error, trio.TooSlowError):
            return False

    async def close(self) -> None:
        """Close every idle connection; later calls fail."""
        self._closed = True
        self._drop_idle()


def connect(
    url: str,
    *,
    connect_timeout: int = 5,
    settings: Mapping[str, str] = SESSION_SETTINGS,
) -> psycopg.Connection[Any]:
    """An autocommit connection to `url`, or `DatabaseUnavailable` saying why there is none.

    The session starts with `settings` (sent in the startup packet, so they cost no round
    trip; `-c` options already in `url` come after them and win). TCP keepalives make a
    connection to a server that vanished without closing its sockets fail within a minute
    instead of hanging.
    """
    try:
        return psycopg.Connection.connect(
            url,
            autocommit=True,
            connect_timeout=connect_timeout,
            keepalives=1,
            keepalives_idle=20,
            keepalives_interval=5,
            keepalives_count=4,
            options=_options(url, settings),
        )
    except psycopg.Error as exc:
        raise DatabaseUnavailable(f"Cannot connect to PostgreSQL: {exc}".strip()) from exc


def _escape_option(value: str) -> str:
    # libpq splits `options` on unescaped spaces; a backslash escapes the next character.
    return value.replace("\\", "\\\\").replace(" ", "\\ ")


def _options(url: str, settings: Mapping[str, str]) -> str:
    ours = " ".join(f"-c {name}={_escape_option(value)}" for name, value in settings.items())
    theirs = conninfo_to_dict(url).get("options") or ""
    return f"{ours} {theirs}".strip()


# --- the runtime role ----------------------------------------------------------------------------

_ROLE_PREFIX = "tiercel_runtime_"
_NAME_MAX = 63  # bytes of a PostgreSQL identifier


def runtime_role(dbname: str) -> str:
    """The role the engine's runtime connections to database `dbname` act as.

    Roles belong to the whole cluster, so each database gets its own: a runtime session of one
    database then holds no right in another. A name too long for an identifier ends with a
    hash of the database name instead.
    """
    name = _ROLE_PREFIX + dbname
    if len(name.encode()) <= _NAME_MAX:
        return name
    return _ROLE_PREFIX + hashlib.sha256(dbname.encode()).hexdigest()[:24]


def runtime_url(url: str) -> str:
    """The URL of the engine's runtime connections, given the owner's `url` (see
    docs/audit-log.md).

    In order: `TIERCEL_RUNTIME_DATABASE_URL` when set; the same server logged in as the
    database's runtime role when that role may log in and the server lets it in without a
    password of its own (the embedded PostgreSQL, or one in `.pgpass`); the owner's login
    switched to the runtime role at connect (`-c role=...`) when the owner may; otherwise
    `url` itself, with a warning, since its sessions may change or drop the append-only
    trigger.
    """
    configured = os.environ.get(RUNTIME_URL_ENV)
    if configured:
        return configured
    with connect(url, settings={}) as conn:
        dbname = conn.info.dbname
        role = runtime_role(dbname)
        member = "SET" if conn.info.server_version >= 160000 else "MEMBER"
        row = conn.execute(
            "SELECT r.rolcanlogin, r.rolname = current_user, pg_has_role(r.oid, %s)"
            " FROM pg_roles r WHERE r.rolname = %s",
            (member, role),
        ).fetchone()
        owner = conn.info.user
    if row is None:
        log.warning(
            "The runtime role %s does not exist, so the engine connects as %s, which may change "
            "or drop the append-only trigger of events. Apply the migrations as a role that may "
            "create roles, or create it (see docs/audit-log.md).",
            role,
            owner,
        )
        return url
    can_login, is_current, may_set = row
    if is_current:
        return url
    if can_login:
        candidate = _with_params(url, user=role, password=None)
        try:
            connect(candidate, settings={}).close()
        except DatabaseUnavailable as exc:
            log.info("Cannot log in as %s (%s); switching roles at connect instead", role, exc)
        else:
            return candidate
    if may_set:
        options = f"{conninfo_to_dict(url).get('options') or ''} -c role={_escape_option(role)}"
        return _with_params(url, options=options.strip())
    log.warning(
        "%s may not act as the runtime role %s, so the engine connects as %s, which may change "
        "or drop the append-only trigger of events. As a superuser: GRANT %s TO %s.",
        owner,
        role,
        owner,
        role,
        owner,
    )
    return url


def _with_params(url: str, **params: str | None) -> str:
    info = {k: v for k, v in conninfo_to_dict(url).items() if v is not None}
    for key, value in params.items():
        if value is None:
            info.pop(key, None)
        else:
            info[key] = value
    return make_conninfo("", **info)


def _reusable(conn: psycopg.Connection[Any]) -> bool:
    """True when `conn` is open and idle outside any transaction."""
    return (
        not conn.closed
        and not conn.broken
        and conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
    )


def _stale(conn: psycopg.Connection[Any]) -> bool:
    """True when an idle pooled connection cannot serve a query any more.

    An idle connection receives nothing unless the server is ending it (a terminated backend
    or a shutdown sends a FATAL message and closes the socket), so a readable socket means the
    connection is gone; checking costs no round trip.
    """
    if not _reusable(conn):
        return True
    try:
        poller = select.poll()
        poller.register(conn.pgconn.socket, select.POLLIN)
        return bool(poller.poll(0))
    except (OSError, ValueError, psycopg.Error):
        return True


def _close_quietly(conn: psycopg.Connection[Any]) -> None:
    try:
        conn.close()
    except Exception:  # noqa: BLE001 - closing a broken connection may fail; nothing to do
        pass


class Notifier:
    """LISTENs on one channel and wakes every waiter when a notification arrives.

    A notification carries no data: it only says "read again". After a lost connection the
    notifier reconnects and wakes everyone, since notifications sent meanwhile are gone.

    The notifier is the one object every consumer of a process shares, so it also carries the
    process's `health` registry, where it reports its own connection as `listen`.
    """

    def __init__(self, url: str, channel: str, *, health: Health | None = None) -> None:
        self.url = url
        self.channel = channel
        self.health = health if health is not None else Health()
        self.generation = 0
        self.latest = 0
        """The highest position this process knows was committed (from notifications' payload
        and from its own commits)."""
        self.connected = trio.Event()
        """Set while the LISTEN connection is up; replaced by a fresh event when it is lost."""
        self._changed = trio.Event()
        self._conn: psycopg.Connection[Any] | None = None
        self.reconnects = 0
        self.blind = 0
        """Counts the wake-ups that came without a position (a connection made, when the
        notifications sent meanwhile are gone; a notification without a payload): a reader that
        skips reading when `latest` says nothing is new must read after each of these."""

    @property
    def is_connected(self) -> bool:
        """True while the LISTEN connection is up."""
        return self.connected.is_set()

    def committed(self, position: int) -> None:
        """This process committed up to `position`: wake its consumers now (the notification
        of that commit, when it comes back, then wakes no one)."""
        if position > self.latest:
            self.latest = position
            self._wake()

    def _wake(self) -> None:
        self.generation += 1
        self._changed.set()
        self._changed = trio.Event()

    async def wait(self, seen_generation: int, timeout: float) -> None:
        """Return when the generation moved past `seen_generation`, or after `timeout` s."""
        with trio.move_on_after(timeout):
            while self.generation <= seen_generation:
                await self._changed.wait()

    def backend_pid(self) -> int | None:
        """The server process id of the LISTEN connection (tests use it to force a reconnect)."""
        conn = self._conn
        return conn.info.backend_pid if conn is not None and not conn.closed else None

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Listen until cancelled, reconnecting with a growing delay when the server is lost.

        Startup waits (logging why) until the first connection is made. Any error of the
        connection, transient or not, leads to a reconnect: without this task no consumer of
        the process would be woken, so it must never end on its own.
        """
        started = False
        backoff = Backoff(initial=0.05)
        while True:
            try:
                conn = await trio.to_thread.run_sync(self._connect_and_listen)
            except Exception as exc:
                reason = describe(exc)
                delay = backoff.failed()
                self.health.down(LISTEN, reason)
                log.warning("LISTEN connection failed (%s); retrying in %.1fs", reason, delay)
                await trio.sleep(delay)
                continue
            self._conn = conn
            backoff.reset()
            self.connected.set()
            self.health.up(LISTEN)
            self.blind += 1
            self._wake()
            if not started:
                task_status.started()
                started = True
            try:
                await self._pump(conn)
            except Exception as exc:
                reason = describe(exc)
                if is_transient(exc):
                    log.warning("LISTEN connection lost (%s); reconnecting", reason)
                else:
                    log.exception("LISTEN connection failed unexpectedly; reconnecting")
                self.reconnects += 1
                self.health.down(LISTEN, reason)
            finally:
                self._conn = None
                self.connected = trio.Event()
                _close_quietly(conn)

    def _connect_and_listen(self) -> psycopg.Connection[Any]:
        conn = connect(self.url)
        try:
            conn.execute(f'LISTEN "{self.channel}"')
        except BaseException:
            _close_quietly(conn)
            raise
        return conn

    async def _pump(self, conn: psycopg.Connection[Any]) -> None:
        pgconn = conn.pgconn
        while True:
            await trio.lowlevel.wait_readable(pgconn.socket)
            pgconn.consume_input()
            if pgconn.status != psycopg.pq.ConnStatus.OK:
                raise psycopg.OperationalError("connection closed by the server")
            woke = False
            while (note := pgconn.notifies()) is not None:
                try:
                    position = int(note.extra)
                except ValueError:  # no position given: read again to find out
                    self.blind += 1
                    woke = True
                    continue
                if position > self.latest:
                    self.latest = position
                    woke = True
            if woke:
                self._wake()


@asynccontextmanager
async def open_database(url: str, *, max_size: int = 6) -> AsyncIterator[Database]:
    """A `Database` that is closed when the block ends."""
    db = Database(url, max_size=max_size)
    try:
        yield db
    finally:
        await db.close()
