"""How CLI commands that act on the database (users, tokens, secrets) reach it.

With `--database-url` (or TIERCEL_DATABASE_URL) they use that database. Otherwise they use the
embedded PostgreSQL of the data directory: they start it themselves when no server runs there,
and use the running one when a `server local` holds the directory.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import trio

from engine.errors import DatabaseUnavailable, TiercelError

T = TypeVar("T")


def running_server_url(pgdata: Path) -> str | None:
    """The URL of the PostgreSQL a `server local` runs on `pgdata`, if one is ready."""
    from engine.embedded import _read_postmaster_pid

    info = _read_postmaster_pid(pgdata)
    if info is None or info.status != "ready" or not info.socket_dir:
        return None
    host = urllib.parse.quote(info.socket_dir, safe="/")
    return f"postgresql://postgres@/postgres?host={host}&port={info.port}"


def run_on_database(
    database_url: str | None,
    data_dir: str | None,
    work: Callable[[Any], Awaitable[T]],
    prepare: Callable[[str | None, Path], None] | None = None,
) -> T:
    """Run `work(store)` against the database; `prepare(url, data dir)` runs first.

    A domain error is printed and ends the command with status 1.
    """
    from engine.cli import _default_data_dir, _fail, _setting
    from engine.db import Database
    from engine.embedded import EmbeddedPostgres
    from engine.migrate import migrate
    from engine.store import EventStore

    url = _setting("database-url", database_url)
    folder = Path(_setting("data-dir", data_dir) or _default_data_dir())
    embedded = None
    try:
        if prepare is not None:
            prepare(url, folder)
        if not url:
            embedded = EmbeddedPostgres(folder)
            try:
                url = embedded.start()
            except DatabaseUnavailable:
                # A `server local` holds the data directory: use its database.
                url = running_server_url(embedded.pgdata)
                embedded = None
                if url is None:
                    raise
        migrate(url)
        target = url

        async def main() -> T:
            db = Database(target, max_size=2)
            try:
                return await work(EventStore(db))
            finally:
                await db.close()

        return trio.run(main)
    except TiercelError as exc:
        _fail(exc)
        raise AssertionError("unreachable") from exc
    finally:
        if embedded is not None:
            embedded.stop()
