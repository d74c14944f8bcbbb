"""The one adapter between trio and psycopg 3.

psycopg has no trio support, so blocking calls run in `trio.to_thread` on pooled connections, and
LISTEN uses a non-blocking connection whose socket is awaited with `trio.lowlevel.wait_readable`.
The rest of the code sees plain `async` calls. Work that needs several statements on one
connection is passed as one synchronous function to `Database.run`, so it costs a single thread
hop.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import psycopg
import trio
from psycopg.rows import dict_row

from engine.errors import DatabaseUnavailable

log = logging.getLogger(__name__)

T = TypeVar("T")
Row = dict[str, Any]


class Database:
    """A small pool of psycopg connections used from trio."""

    def __init__(self, url: str, *, max_size: int = 6) -> None:
        self.url = url
        self.max_size = max_size
        self._idle: list[psycopg.Connection[Any]] = []
        self._slots = trio.Semaphore(max_size)
        self._closed = False

    def _connect(self) -> psycopg.Connection[Any]:
        try:
            return psycopg.Connection.connect(self.url, autocommit=True, connect_timeout=10)
        except psycopg.OperationalError as exc:
            raise DatabaseUnavailable(
                f"Cannot connect to PostgreSQL: {exc}".strip(),
            ) from exc

    async def run(self, fn: Callable[[psycopg.Connection[Any]], T]) -> T:
        """Run `fn(connection)` in a worker thread on a pooled autocommit connection.

        `fn` opens its own transaction (`with conn.transaction():`) when it needs one. A
        connection that fails is dropped, not returned to the pool.
        """
        if self._closed:
            raise DatabaseUnavailable("The database pool is closed")
        async with self._slots:
            conn = self._idle.pop() if self._idle else None

            def work() -> T:
                nonlocal conn
                if conn is None or conn.closed:
                    conn = self._connect()
                return fn(conn)

            try:
                result = await trio.to_thread.run_sync(work)
            except BaseException:
                if conn is not None and not conn.closed and conn.info.transaction_status == 0:
                    self._idle.append(conn)
                elif conn is not None:
                    _close_quietly(conn)
                raise
            assert conn is not None
            if conn.closed or conn.broken:
                _close_quietly(conn)
            else:
                self._idle.append(conn)
            return result

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
        idle, self._idle = self._idle, []
        for conn in idle:
            _close_quietly(conn)


def _close_quietly(conn: psycopg.Connection[Any]) -> None:
    try:
        conn.close()
    except Exception:  # noqa: BLE001 - closing a broken connection may fail; nothing to do
        pass


class Notifier:
    """LISTENs on one channel and wakes every waiter when a notification arrives.

    A notification carries no data: it only says "read again". After a lost connection the
    notifier reconnects and wakes everyone, since notifications sent meanwhile are gone.
    """

    def __init__(self, url: str, channel: str) -> None:
        self.url = url
        self.channel = channel
        self.generation = 0
        self.connected = trio.Event()
        self._changed = trio.Event()
        self._conn: psycopg.Connection[Any] | None = None
        self.reconnects = 0

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
        """Listen until cancelled, reconnecting with a growing delay when the server is lost."""
        started = False
        delay = 0.05
        while True:
            try:
                conn = await trio.to_thread.run_sync(self._connect_and_listen)
            except (psycopg.OperationalError, DatabaseUnavailable) as exc:
                log.warning("LISTEN connection failed (%s); retrying in %.1fs", exc, delay)
                await trio.sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            self._conn = conn
            delay = 0.05
            self.connected.set()
            self._wake()
            if not started:
                task_status.started()
                started = True
            try:
                await self._pump(conn)
            except psycopg.OperationalError as exc:
                log.warning("LISTEN connection lost (%s); reconnecting", exc)
                self.reconnects += 1
                self.connected = trio.Event()
            finally:
                self._conn = None
                _close_quietly(conn)

    def _connect_and_listen(self) -> psycopg.Connection[Any]:
        conn = psycopg.Connection.connect(self.url, autocommit=True, connect_timeout=10)
        conn.execute(f'LISTEN "{self.channel}"')
        return conn

    async def _pump(self, conn: psycopg.Connection[Any]) -> None:
        pgconn = conn.pgconn
        while True:
            await trio.lowlevel.wait_readable(pgconn.socket)
            pgconn.consume_input()
            if pgconn.status != psycopg.pq.ConnStatus.OK:
                raise psycopg.OperationalError("connection closed by the server")
            woke = False
            while pgconn.notifies() is not None:
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
