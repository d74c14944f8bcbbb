"""The event store: appends with optimistic concurrency and idempotency, reads by position.

Appends are serialised by one transaction-level advisory lock taken before the sequence is
touched, so events become visible in `seq` order and a reader that reads `seq > checkpoint`
never passes a position whose event commits later (invariant 2). Under that lock the version
and command-id checks cannot race, so one transaction can carry the appends of many streams and
report, for each, whether it was written, already written (same command id) or in conflict.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import msgspec
import psycopg
from psycopg.types.json import Jsonb

from engine import events as ev
from engine.db import Database
from engine.errors import WrongExpectedVersion

CHANNEL = "tiercel_events"
_APPEND_LOCK = 0x6576656E7473  # "events"

ANY = -2
"""Expected version that accepts the stream at any version."""
NO_STREAM = -1
"""Expected version of a stream that must not exist yet."""

_json = msgspec.json.Encoder()


class StoredEvent(msgspec.Struct, frozen=True):
    """One recorded event as read back: its position, stream, version and decoded payload."""

    seq: int
    stream_id: str
    version: int
    type: str
    event: ev.AnyEvent
    meta: dict[str, Any]
    recorded_at: dt.datetime

    @property
    def execution_id(self) -> str | None:
        """The execution this event belongs to, if any."""
        return getattr(self.event, "executionId", None)


class Append(msgspec.Struct, frozen=True):
    """A request to append `events` to `stream_id`.

    `expected_version` is the stream's current last version (`NO_STREAM` when it must not
    exist, `ANY` to skip the check); `command_id` makes a retried append a no-op.
    """

    stream_id: str
    events: Sequence[ev.Event]
    expected_version: int = ANY
    command_id: str | None = None
    meta: dict[str, Any] = {}


class AppendResult(msgspec.Struct, frozen=True):
    """What became of one `Append`: `written`, `duplicate` (done before) or `conflict`."""

    stream_id: str
    status: str
    version: int
    first_seq: int | None = None
    last_seq: int | None = None

    @property
    def ok(self) -> bool:
        """True when the events are in the store (now or from an earlier try)."""
        return self.status != "conflict"


Extra = Callable[[psycopg.Connection[Any]], None]


def _append_sync(
    conn: psycopg.Connection[Any], requests: Sequence[Append], extra: Extra | None
) -> list[AppendResult]:
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_APPEND_LOCK,))
        results = _append_locked(conn, requests)
        if extra is not None:
            extra(conn)
        return results


def _append_locked(conn: psycopg.Connection[Any], requests: Sequence[Append]) -> list[AppendResult]:
    commands = [r.command_id for r in requests if r.command_id]
    done: dict[str, tuple[str, int, int]] = {}
    if commands:
        for command_id, stream_id, seq, version in conn.execute(
            "SELECT command_id, stream_id, seq, version FROM events WHERE command_id = ANY(%s)",
            (commands,),
        ):
            done[command_id] = (stream_id, seq, version)
    streams = sorted({r.stream_id for r in requests})
    current: dict[str, int] = dict.fromkeys(streams, NO_STREAM)
    for stream_id, version in conn.execute(
        "SELECT s, (SELECT max(version) FROM events WHERE stream_id = s)"
        " FROM unnest(%s::text[]) AS s",
        (streams,),
    ):
        if version is not None:
            current[stream_id] = version

    results: list[AppendResult | None] = []
    rows: tuple[list[str], list[int], list[str], list[Jsonb], list[Jsonb], list[str | None]] = (
        [],
        [],
        [],
        [],
        [],
        [],
    )
    pending: list[tuple[int, str, int, int]] = []  # (result index, stream, first version, n)
    for req in requests:
        if req.command_id and req.command_id in done:
            stream_id, seq, version = done[req.command_id]
            last = version + len(req.events) - 1
            results.append(AppendResult(stream_id, "duplicate", last, seq, None))
            continue
        head = current[req.stream_id]
        if req.expected_version != ANY and req.expected_version != head:
            results.append(AppendResult(req.stream_id, "conflict", head))
            continue
        if not req.events:
            results.append(AppendResult(req.stream_id, "written", head))
            continue
        meta = Jsonb(req.meta)
        for i, event in enumerate(req.events):
            rows[0].append(req.stream_id)
            rows[1].append(head + 1 + i)
            rows[2].append(ev.type_name(event))
            rows[3].append(Jsonb(event, dumps=_dumps))
            rows[4].append(meta)
            rows[5].append(req.command_id if i == 0 else None)
        pending.append((len(results), req.stream_id, head + 1, len(req.events)))
        current[req.stream_id] = head + len(req.events)
        if req.command_id:
            done[req.command_id] = (req.stream_id, -1, head + 1)
        results.append(None)

    if pending:
        seqs: dict[tuple[str, int], int] = {}
        with conn.cursor() as cur:
            cur.execute(
                "INSERT INTO events (stream_id, version, type, data, meta, command_id)"
                " SELECT * FROM unnest(%s::text[], %s::int[], %s::text[], %s::jsonb[],"
                " %s::jsonb[], %s::text[]) RETURNING stream_id, version, seq",
                rows,
            )
            for stream_id, version, seq in cur.fetchall():
                seqs[(stream_id, version)] = seq
        for index, stream_id, first, n in pending:
            results[index] = AppendResult(
                stream_id,
                "written",
                first + n - 1,
                seqs[(stream_id, first)],
                seqs[(stream_id, first + n - 1)],
            )
        conn.execute("SELECT pg_notify(%s, '')", (CHANNEL,))
    return [r for r in results if r is not None]


def _dumps(obj: Any) -> str:
    return _json.encode(obj).decode()


def _row_to_event(row: tuple[Any, ...]) -> StoredEvent:
    seq, stream_id, version, type_, data, meta, recorded_at = row
    return StoredEvent(seq, stream_id, version, type_, ev.decode(data), meta, recorded_at)


_COLUMNS = "seq, stream_id, version, type, data::text, meta, recorded_at"


class EventStore:
    """Append to and read from the `events` table."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def append(
        self,
        stream_id: str,
        events: Sequence[ev.Event],
        *,
        expected_version: int = ANY,
        command_id: str | None = None,
        meta: dict[str, Any] | None = None,
    ) -> AppendResult:
        """Append to one stream; raise `WrongExpectedVersion` when the stream moved."""
        [result] = await self.append_many(
            [Append(stream_id, events, expected_version, command_id, meta or {})]
        )
        if result.status == "conflict":
            raise WrongExpectedVersion(
                f"Stream {stream_id} is at version {result.version}, "
                f"not {expected_version}: it changed meanwhile; reload it and try again."
            )
        return result

    async def append_many(
        self, requests: Sequence[Append], *, extra: Extra | None = None
    ) -> list[AppendResult]:
        """Append to many streams in one transaction; `extra(conn)` runs in it too.

        Conflicting requests are reported and skipped; the others are written.
        """
        return await self.db.run(lambda conn: _append_sync(conn, requests, extra))

    async def read_all(
        self, after: int, limit: int = 1000, types: Iterable[str] | None = None
    ) -> list[StoredEvent]:
        """Events with `seq > after` in order, at most `limit`, optionally only some types."""
        type_list = list(types) if types is not None else None

        def q(conn: psycopg.Connection[Any]) -> list[StoredEvent]:
            if type_list is None:
                cur = conn.execute(
                    f"SELECT {_COLUMNS} FROM events WHERE seq > %s ORDER BY seq LIMIT %s",
                    (after, limit),
                )
            else:
                cur = conn.execute(
                    f"SELECT {_COLUMNS} FROM events WHERE seq > %s AND type = ANY(%s)"
                    " ORDER BY seq LIMIT %s",
                    (after, type_list, limit),
                )
            return [_row_to_event(r) for r in cur.fetchall()]

        return await self.db.run(q)

    async def read_stream(self, stream_id: str) -> list[StoredEvent]:
        """Every event of one stream, in version order."""
        return await self.db.run(lambda conn: read_stream_sync(conn, stream_id))

    async def read_execution(self, execution_id: str) -> list[StoredEvent]:
        """Every event of an execution and of its attempts, in `seq` order."""
        return await self.db.run(lambda conn: read_execution_sync(conn, execution_id))

    async def head(self) -> int:
        """The highest position written so far (0 when empty)."""
        row = await self.db.fetchone("SELECT coalesce(max(seq), 0) AS head FROM events")
        assert row is not None
        return int(row["head"])


def read_stream_sync(conn: psycopg.Connection[Any], stream_id: str) -> list[StoredEvent]:
    """`EventStore.read_stream` on a connection the caller holds."""
    cur = conn.execute(
        f"SELECT {_COLUMNS} FROM events WHERE stream_id = %s ORDER BY version", (stream_id,)
    )
    return [_row_to_event(r) for r in cur.fetchall()]


def read_execution_sync(conn: psycopg.Connection[Any], execution_id: str) -> list[StoredEvent]:
    """`EventStore.read_execution` on a connection the caller holds."""
    base = ev.execution_stream(execution_id)
    # Sub-streams are "<base>/..."; '0' sorts right after '/', so this range is exactly them.
    cur = conn.execute(
        f"SELECT {_COLUMNS} FROM events WHERE stream_id >= %s AND stream_id < %s ORDER BY seq",
        (base, base + "0"),
    )
    return [_row_to_event(r) for r in cur.fetchall()]


def save_checkpoint(conn: psycopg.Connection[Any], name: str, position: int) -> None:
    """Record that consumer `name` has handled every event up to `position`."""
    conn.execute(
        "INSERT INTO checkpoints (name, position) VALUES (%s, %s) ON CONFLICT (name) DO UPDATE"
        " SET position = greatest(checkpoints.position, EXCLUDED.position), updated_at = now()",
        (name, position),
    )


async def load_checkpoint(db: Database, name: str) -> int:
    """The position consumer `name` has handled up to (0 when it never ran)."""
    row = await db.fetchone("SELECT position FROM checkpoints WHERE name = %s", (name,))
    return int(row["position"]) if row else 0
