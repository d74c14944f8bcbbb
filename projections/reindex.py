"""Rebuilding read models from position 0 while the system runs (`tiercel sys reindex`).

A projection is rebuilt into tables of the same names in the schema `REBUILD_SCHEMA`, created
like the live ones (columns, defaults, generated columns, constraints, grants); the live
projection keeps serving and following the log meanwhile. The rebuild runs the projection's own
batched `apply` with that schema first on the search path, so every statement of the
projection writes the new tables and still reads `events` from the live schema.

1. The new tables get their primary key and unique indexes (the projections' `ON CONFLICT` and
   lookups need them); the other indexes are built once the bulk of the log is applied, which
   is much faster than maintaining them row by row, and carry the live indexes' names.
2. The rebuild reads the projection's events in batches from 0 to the head, its position in
   the checkpoint `rebuild:<name>` (one transaction per batch, as the live projection does).
3. Once caught up, one transaction swaps: it locks the live projection's checkpoint row (which
   the live projection locks first in each of its batches, so its batches wait, in the same
   order: no deadlock), then the live tables, applies the events appended since, drops the live
   tables, moves the new ones in, and sets the live checkpoint to the rebuild's position. The
   live projection then continues from there: its batches skip what the checkpoint already
   covers (projections/runner.py).

Cancelled or failed before the swap, the rebuild leaves the live tables as they were; its own
tables are dropped (or, if the process was killed, by the next reindex). When the failure is
the database going away (a PostgreSQL restart), dropping them waits for it to come back, for up
to `CLEANUP_TIMEOUT` seconds: left behind, the rebuild's checkpoint would show a rebuild under
way until the next one.

DDL needs the tables' owner: `sys reindex` connects as the owner (as `migrate` does), not as
the engine's runtime role.
"""

from __future__ import annotations

import logging
import re
import sys
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Any, TextIO

import psycopg
import trio
from psycopg import sql

from engine.backoff import Backoff, describe, is_transient
from engine.db import Database
from engine.errors import DatabaseUnavailable, Forbidden
from engine.execution import iso
from engine.health import PROJECTION_PREFIX
from engine.storage import Storage
from engine.store import _COLUMNS, EventStore, StoredEvent, _row_to_event, save_checkpoint
from projections.runner import Projection, all_projections

REBUILD_SCHEMA = "tiercel_rebuild"
"""Where rebuilt tables are built before they are swapped in."""
REBUILD_PREFIX = "rebuild:"
"""Checkpoints of rebuilds in progress are named `rebuild:<projection>`."""
BATCH_SIZE = 5000
"""Events read and applied per transaction by a rebuild."""
SWAP_LOCK_TIMEOUT = "60s"
"""How long the swap waits for the live tables (a long search holds them)."""
CLEANUP_TIMEOUT = 15.0
"""Seconds an unfinished rebuild waits for the database to drop its tables and checkpoint."""

log = logging.getLogger(__name__)


@dataclass
class Progress:
    """Where one rebuild stands, as the progress bar shows it."""

    projection: str
    done: int
    """The position reached (events of the log up to it are applied)."""
    total: int
    """The head of the log when the rebuild started."""
    started: float
    """`time.monotonic()` at the start."""


@dataclass
class Rebuilt:
    """A finished rebuild: its projection, the position it swapped in at, and how long it
    took in seconds."""

    projection: str
    position: int
    seconds: float


def projection_named(name: str) -> Projection:
    """The projection called `name`, or ValueError listing the known ones."""
    found = {p.name: p for p in all_projections()}
    if name not in found:
        raise ValueError(f"Unknown projection {name!r}; known: {', '.join(sorted(found))}")
    return found[name]


async def reindex(
    db: Database,
    projections: Sequence[Projection],
    *,
    storage: Storage | None = None,
    on_progress: Callable[[Progress], None] | None = None,
    batch_size: int = BATCH_SIZE,
) -> list[Rebuilt]:
    """Rebuild each of `projections` from position 0 and swap it in (see the module's
    docstring); `db` must connect as the owner of the read-model tables."""
    store = EventStore(db, storage)
    done = []
    for projection in projections:
        done.append(await _rebuild(store, projection, on_progress, batch_size))
    await db.run(_drop_schema_if_empty)
    return done


async def _rebuild(
    store: EventStore,
    projection: Projection,
    on_progress: Callable[[Progress], None] | None,
    batch_size: int,
) -> Rebuilt:
    db = store.db
    started = time.monotonic()
    live = await db.run(_live_schema)
    deferred = await db.run(lambda conn: _create_tables(conn, projection, live))
    swapped = False
    try:
        head = await store.head()
        progress = Progress(projection.name, 0, head, started)
        position = await _catch_up(store, projection, live, 0, batch_size, progress, on_progress)
        # The other indexes once the bulk is in, then what was appended meanwhile.
        await db.run(lambda conn: _create_indexes(conn, deferred))
        position = await _catch_up(
            store, projection, live, position, batch_size, progress, on_progress
        )
        position = await db.run(
            lambda conn: _swap(conn, projection, live, position, store, batch_size)
        )
        swapped = True
        progress.done = max(progress.done, position)
        if on_progress is not None:
            on_progress(progress)
    finally:
        if not swapped:
            with trio.CancelScope(shield=True):
                await _clean_up(db, projection)
    return Rebuilt(projection.name, position, time.monotonic() - started)


async def _clean_up(db: Database, projection: Projection) -> None:
    """Drop what an unfinished rebuild made, waiting out a database outage (what often cut the
    rebuild short) for up to `CLEANUP_TIMEOUT` seconds; after that, the next rebuild drops
    it. A failure here is logged, not raised: the rebuild's own error is the one to report."""
    backoff = Backoff(maximum=2.0)
    with trio.move_on_after(CLEANUP_TIMEOUT):
        while True:
            try:
                await db.run(lambda conn: _drop_rebuild(conn, projection))
                return
            except Exception as exc:
                if not is_transient(exc):
                    log.warning(
                        "Could not drop the unfinished rebuild of %s: %s",
                        projection.name,
                        describe(exc),
                    )
                    return
                await trio.sleep(backoff.failed())
    log.warning(
        "The database stayed away %.0fs: the unfinished rebuild of %s is left for the next one"
        " to drop",
        CLEANUP_TIMEOUT,
        projection.name,
    )


def _live_schema(conn: psycopg.Connection[Any]) -> str:
    row = conn.execute("SELECT current_schema()").fetchone()
    assert row is not None and row[0] is not None
    return str(row[0])


def _use_rebuild_tables(conn: psycopg.Connection[Any], live: str) -> None:
    """For the current transaction: unqualified names find the rebuild's tables first."""
    path = sql.SQL("{}, {}").format(sql.Identifier(REBUILD_SCHEMA), sql.Identifier(live))
    conn.execute(
        sql.SQL("SELECT set_config('search_path', {}, true)").format(
            sql.Literal(path.as_string(conn))
        )
    )


@dataclass
class _Index:
    """A live index to build on a rebuilt table: its definition pointed at the new table."""

    table: str
    name: str
    definition: str


def _create_tables(
    conn: psycopg.Connection[Any], projection: Projection, live: str
) -> list[_Index]:
    """Create the rebuild's empty tables (dropping any left by a killed rebuild) with their
    unique indexes; return the other indexes, to build after the bulk load."""
    deferred: list[_Index] = []
    with conn.transaction():
        conn.execute(
            sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(REBUILD_SCHEMA))
        )
        _drop_tables(conn, projection)
        for table in projection.tables:
            new = sql.Identifier(REBUILD_SCHEMA, table)
            old = sql.Identifier(live, table)
            conn.execute(
                sql.SQL("CREATE TABLE {} (LIKE {} INCLUDING ALL EXCLUDING INDEXES)").format(
                    new, old
                )
            )
            _copy_settings(conn, live, table)
            _copy_grants(conn, live, table)
            for index in _indexes(conn, live, table):
                if index.definition.startswith(("ALTER", "CREATE UNIQUE")):
                    conn.execute(index.definition)
                else:
                    deferred.append(index)
        conn.execute("DELETE FROM checkpoints WHERE name = %s", (REBUILD_PREFIX + projection.name,))
    return deferred


def _indexes(conn: psycopg.Connection[Any], live: str, table: str) -> list[_Index]:
    """The indexes of the live `table`, as statements that build them on the rebuild's table
    under the same names (constraints as constraints)."""
    rows = conn.execute(
        "SELECT i.relname, pg_get_indexdef(x.indexrelid), c.conname, pg_get_constraintdef(c.oid)"
        " FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid"
        " LEFT JOIN pg_constraint c ON c.conindid = x.indexrelid AND c.conrelid = x.indrelid"
        " WHERE x.indrelid = %s::regclass ORDER BY x.indisprimary DESC, i.relname",
        (sql.Identifier(live, table).as_string(conn),),
    ).fetchall()
    found = []
    target = sql.Identifier(REBUILD_SCHEMA, table).as_string(conn)
    for name, definition, constraint, constraint_def in rows:
        if constraint is not None:
            statement = sql.SQL("ALTER TABLE {} ADD CONSTRAINT {} {}").format(
                sql.Identifier(REBUILD_SCHEMA, table),
                sql.Identifier(constraint),
                sql.SQL(constraint_def),
            )
            found.append(_Index(table, name, statement.as_string(conn)))
            continue
        # "CREATE [UNIQUE] INDEX name ON [ONLY] schema.table USING ...": the new table instead.
        pointed, n = re.subn(r" ON (ONLY )?\S+ USING ", f" ON {target} USING ", definition, count=1)
        if n != 1:
            raise RuntimeError(f"Cannot read the definition of index {name}: {definition}")
        found.append(_Index(table, name, pointed))
    return found


def _create_indexes(conn: psycopg.Connection[Any], indexes: Sequence[_Index]) -> None:
    for index in indexes:
        conn.execute(index.definition)
    for table in dict.fromkeys(i.table for i in indexes):
        conn.execute(sql.SQL("ANALYZE {}").format(sql.Identifier(REBUILD_SCHEMA, table)))


def _copy_settings(conn: psycopg.Connection[Any], live: str, table: str) -> None:
    """What `LIKE` leaves out: the table's storage parameters and each column's statistics
    target (migrations raise it where the planner needs finer statistics)."""
    old = sql.Identifier(live, table).as_string(conn)
    new = sql.Identifier(REBUILD_SCHEMA, table)
    row = conn.execute(
        "SELECT reloptions FROM pg_class WHERE oid = %s::regclass", (old,)
    ).fetchone()
    if row and row[0]:
        conn.execute(sql.SQL("ALTER TABLE {} SET ({})").format(new, sql.SQL(", ".join(row[0]))))
    for column, target in conn.execute(
        "SELECT attname, attstattarget FROM pg_attribute WHERE attrelid = %s::regclass"
        " AND attnum > 0 AND NOT attisdropped AND attstattarget >= 0",
        (old,),
    ).fetchall():
        conn.execute(
            sql.SQL("ALTER TABLE {} ALTER COLUMN {} SET STATISTICS {}").format(
                new, sql.Identifier(column), sql.Literal(int(target))
            )
        )


def _copy_grants(conn: psycopg.Connection[Any], live: str, table: str) -> None:
    """Give every role the rights it has on the live table (the runtime role's above all)."""
    rows = conn.execute(
        "SELECT CASE WHEN a.grantee = 0 THEN NULL ELSE a.grantee::regrole::text END,"
        " a.privilege_type FROM pg_class c, aclexplode(c.relacl) AS a"
        " WHERE c.oid = %s::regclass AND a.grantee <> c.relowner",
        (sql.Identifier(live, table).as_string(conn),),
    ).fetchall()
    for grantee, privilege in rows:
        conn.execute(
            sql.SQL("GRANT {} ON {} TO {}").format(
                sql.SQL(privilege),
                sql.Identifier(REBUILD_SCHEMA, table),
                sql.SQL("PUBLIC") if grantee is None else sql.SQL(grantee),
            )
        )


async def _catch_up(
    store: EventStore,
    projection: Projection,
    live: str,
    position: int,
    batch_size: int,
    progress: Progress,
    on_progress: Callable[[Progress], None] | None,
) -> int:
    """Apply the projection's events after `position` to the rebuild's tables, batch by batch,
    until a batch comes back short (the head, as its query saw it); return the position."""
    name = REBUILD_PREFIX + projection.name
    while True:
        batch, reached = await store.read_after(position, batch_size, projection.types)

        def work(
            conn: psycopg.Connection[Any], batch: list[StoredEvent] = batch, reached: int = reached
        ) -> None:
            with conn.transaction():
                _use_rebuild_tables(conn, live)
                if batch:
                    projection.apply(batch, conn)
                save_checkpoint(conn, name, reached)

        await store.db.run(work)
        position = reached
        progress.done = position
        progress.total = max(progress.total, position)
        if on_progress is not None:
            on_progress(progress)
        if len(batch) < batch_size:
            return position


def _swap(
    conn: psycopg.Connection[Any],
    projection: Projection,
    live: str,
    position: int,
    store: EventStore,
    batch_size: int,
) -> int:
    """In one transaction: apply the last events under the locks, move the rebuilt tables in
    and the live checkpoint to where they are; return that position."""
    checkpoint = PROJECTION_PREFIX + projection.name
    with conn.transaction():
        conn.execute(sql.SQL("SET LOCAL lock_timeout = {}").format(sql.Literal(SWAP_LOCK_TIMEOUT)))
        # The checkpoint row first: the live projection locks it first too (runner.py).
        conn.execute(
            "INSERT INTO checkpoints (name, position) VALUES (%s, 0) ON CONFLICT DO NOTHING",
            (checkpoint,),
        )
        conn.execute("SELECT position FROM checkpoints WHERE name = %s FOR UPDATE", (checkpoint,))
        tables = sql.SQL(", ").join(sql.Identifier(live, t) for t in projection.tables)
        # Searches wait from here to the commit: a few batches at most.
        conn.execute(sql.SQL("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE").format(tables))
        _use_rebuild_tables(conn, live)
        # The head before the last reads: appends commit in position order, so they see every
        # event up to it (one read after them could see a head whose events they missed).
        head = conn.execute("SELECT coalesce(max(seq), 0) FROM events").fetchone()
        while True:
            rows = conn.execute(
                f"SELECT {_COLUMNS} FROM events WHERE seq > %s AND type = ANY(%s)"
                " ORDER BY seq LIMIT %s",
                (position, list(projection.types), batch_size),
            ).fetchall()
            batch = [_row_to_event(r, store.storage) for r in rows]
            if batch:
                projection.apply(batch, conn)
                position = batch[-1].seq
            if len(batch) < batch_size:
                break
        # Every event of its types up to `position` is applied; the others up to the head
        # change nothing.
        position = max(position, int(head[0]) if head else 0)
        conn.execute(sql.SQL("DROP TABLE {}").format(tables))
        for table in projection.tables:
            conn.execute(
                sql.SQL("ALTER TABLE {} SET SCHEMA {}").format(
                    sql.Identifier(REBUILD_SCHEMA, table), sql.Identifier(live)
                )
            )
        conn.execute(
            "UPDATE checkpoints SET position = %s, updated_at = now() WHERE name = %s",
            (position, checkpoint),
        )
        conn.execute("DELETE FROM checkpoints WHERE name = %s", (REBUILD_PREFIX + projection.name,))
    return position


def _drop_tables(conn: psycopg.Connection[Any], projection: Projection) -> None:
    for table in projection.tables:
        conn.execute(
            sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(REBUILD_SCHEMA, table))
        )


def _drop_rebuild(conn: psycopg.Connection[Any], projection: Projection) -> None:
    """Drop what an unfinished rebuild made: its tables and its checkpoint."""
    with conn.transaction():
        _drop_tables(conn, projection)
        conn.execute("DELETE FROM checkpoints WHERE name = %s", (REBUILD_PREFIX + projection.name,))
    _drop_schema_if_empty(conn)


def _drop_schema_if_empty(conn: psycopg.Connection[Any]) -> None:
    try:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {}").format(sql.Identifier(REBUILD_SCHEMA)))
    except psycopg.errors.DependentObjectsStillExist:
        pass  # another projection's rebuild is under way


async def rebuild_as_owner(
    owner_url: str,
    projection: Projection,
    *,
    storage: Storage | None = None,
    on_progress: Callable[[Progress], None] | None = None,
) -> Rebuilt:
    """Rebuild `projection` on a connection of the database's owner opened for it and closed
    after (the API's rebuild: the server's own connections act as the runtime role, which may
    not create or swap tables). Cancelled, it leaves the live tables serving."""
    db = Database(owner_url, max_size=2)
    try:
        (done,) = await reindex(db, [projection], storage=storage, on_progress=on_progress)
        return done
    except psycopg.errors.InsufficientPrivilege as exc:
        raise Forbidden(
            f"The server's database login may not create or replace the read-model tables "
            f"({exc}); rebuild with `tiercel sys reindex` as their owner"
        ) from exc
    finally:
        with trio.CancelScope(shield=True):
            await db.close()


def command(url: str, storage: Storage | None, projection: str | None) -> list[Rebuilt]:
    """`tiercel sys reindex`: rebuild `projection` (all when None) on the database at `url`
    (the owner's), with a progress bar on stderr."""
    chosen = [projection_named(projection)] if projection else all_projections()
    bar = ProgressBar()

    async def main() -> list[Rebuilt]:
        db = Database(url, max_size=2)
        try:
            return await reindex(db, chosen, storage=storage, on_progress=bar)
        finally:
            await db.close()

    try:
        return trio.run(main)
    except psycopg.errors.InsufficientPrivilege as exc:
        raise Forbidden(
            f"This role may not create or replace the read-model tables ({exc}); connect as "
            "their owner, the role `tiercel migrate` runs as"
        ) from exc
    except (psycopg.OperationalError, psycopg.InterfaceError, ConnectionError) as exc:
        # A restart of PostgreSQL midway: said in one line, not a traceback.
        raise DatabaseUnavailable(
            f"The database went away during the rebuild ({describe(exc)}); the live tables "
            "still serve: run `tiercel sys reindex` again (it drops whatever this one left)"
        ) from exc


# --- progress bar ----------------------------------------------------------------------------


class ProgressBar:
    """A one-line progress bar on a terminal (or a line every few seconds elsewhere): events
    done of the total, the rate and the time left."""

    def __init__(self, out: TextIO = sys.stderr, width: int = 30) -> None:
        self.out = out
        self.width = width
        self.tty = out.isatty()
        self._last = 0.0

    def __call__(self, p: Progress) -> None:
        now = time.monotonic()
        finished = p.done >= p.total
        if not finished and now - self._last < (0.1 if self.tty else 5.0):
            return
        self._last = now
        elapsed = max(now - p.started, 1e-6)
        rate = p.done / elapsed
        share = p.done / p.total if p.total else 1.0
        left = (p.total - p.done) / rate if rate > 0 else float("inf")
        filled = int(self.width * min(share, 1.0))
        bar = "#" * filled + "-" * (self.width - filled)
        eta = "--:--" if left == float("inf") else _clock(left)
        line = (
            f"{p.projection:<12} [{bar}] {p.done:,}/{p.total:,} events"
            f" {share:6.1%} {rate:,.0f} ev/s ETA {eta}"
        )
        if self.tty:
            self.out.write("\r" + line + ("\n" if finished else ""))
        else:
            self.out.write(line + "\n")
        self.out.flush()


def _clock(seconds: float) -> str:
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes:02d}:{secs:02d}"


# --- status ----------------------------------------------------------------------------------


def statuses(
    conn: psycopg.Connection[Any],
    positions: dict[str, int],
    running: Collection[str] = (),
) -> list[dict[str, Any]]:
    """Each projection's name, position, the head of the log, its lag (events between them)
    and status (`UP_TO_DATE` or `CATCHING_UP`), the position of a rebuild in progress, and
    the last rebuild asked for through the API (`lastRebuild`).

    `positions` are those known in this process (projections it runs), more recent than their
    checkpoints, which move only when they write; `running` the projections this process
    rebuilds now.
    """
    head_row = conn.execute("SELECT coalesce(max(seq), 0) FROM events").fetchone()
    head = int(head_row[0]) if head_row else 0
    checkpoints = dict(
        conn.execute(
            "SELECT name, position FROM checkpoints WHERE name LIKE %s OR name LIKE %s",
            (PROJECTION_PREFIX + "%", REBUILD_PREFIX + "%"),
        ).fetchall()
    )
    lasts = _last_rebuilds(conn, [p.name for p in all_projections()])
    answer = []
    for projection in all_projections():
        name = PROJECTION_PREFIX + projection.name
        position = max(positions.get(name, 0), int(checkpoints.get(name, 0)))
        lag = max(0, head - position)
        entry: dict[str, Any] = {
            "name": projection.name,
            "position": position,
            "head": head,
            "lag": lag,
            "status": "UP_TO_DATE" if lag == 0 else "CATCHING_UP",
        }
        rebuild = checkpoints.get(REBUILD_PREFIX + projection.name)
        if rebuild is not None:
            entry["rebuild"] = {"position": int(rebuild), "lag": max(0, head - int(rebuild))}
        last = lasts.get(projection.name)
        if last is not None:
            if last["outcome"] == "RUNNING" and projection.name not in running and rebuild is None:
                # Asked for, no end recorded, and no rebuild under way: its process stopped
                # without recording one (killed); the live tables were left as they were.
                last["outcome"] = "INTERRUPTED"
            entry["lastRebuild"] = last
        answer.append(entry)
    return answer


_OUTCOMES = {"ProjectionRebuilt": "SUCCESS", "ProjectionRebuildFailed": "FAILED"}


def _last_rebuilds(conn: psycopg.Connection[Any], names: Sequence[str]) -> dict[str, Any]:
    """The last rebuild of each projection asked for through the API, from its stream: when
    it started and ended, who asked, its outcome (RUNNING, SUCCESS, FAILED, CANCELLED) and
    what its end said."""
    rows = conn.execute(
        "SELECT s.name, e.type, e.data, e.meta, e.recorded_at FROM unnest(%s::text[]) AS s(name)"
        " CROSS JOIN LATERAL (SELECT type, data, meta, recorded_at FROM events"
        " WHERE stream_id = 'projection:' || s.name ORDER BY version DESC LIMIT 2) AS e",
        (list(names),),
    ).fetchall()
    found: dict[str, list[tuple[str, dict[str, Any], dict[str, Any], Any]]] = {}
    for name, type_, data, meta, recorded_at in rows:
        found.setdefault(name, []).insert(0, (type_, data, meta, recorded_at))
    answer: dict[str, Any] = {}
    for name, events in found.items():
        ending = events[-1] if events[-1][0] in _OUTCOMES else None
        requested = [e for e in events if e[0] == "ProjectionRebuildRequested"]
        if not requested:
            continue
        _, _, meta, started = requested[-1]
        last: dict[str, Any] = {
            "startedAt": iso(started),
            "endedAt": None,
            "outcome": "RUNNING",
            "message": None,
            "actor": meta.get("actor"),
        }
        if ending is not None and ending[3] >= started:
            _, data, _, ended = ending
            last["endedAt"] = iso(ended)
            if ending[0] == "ProjectionRebuilt":
                last["outcome"] = "SUCCESS"
                last["position"] = data.get("position")
                last["message"] = (
                    f"Swapped in at position {data.get('position')} in"
                    f" {float(data.get('seconds') or 0):.1f}s"
                )
            else:
                last["outcome"] = "CANCELLED" if data.get("cancelled") else "FAILED"
                last["message"] = data.get("message")
        answer[name] = last
    return answer
