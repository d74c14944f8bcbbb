"""The event store: appends with optimistic concurrency and idempotency, reads by position.

Appends are serialised by one transaction-level advisory lock taken before the sequence is
touched, so events become visible in `seq` order and a reader that reads `seq > checkpoint`
never passes a position whose event commits later (invariant 2). Under that lock the version
and command-id checks cannot race, so one transaction can carry the appends of many streams and
report, for each, whether it was written, already written (same command id) or in conflict.
Under the same lock a trigger chains each row's hash to the row before it
(migrations/0006_event_chain.sql, checked by `tiercel sys verify --chain`). The lock is held for
the transaction's queries only: everything costly (offloading large values, encoding JSON) is
done before it is taken, and its statements go out pipelined, in two round trips (the lock with
the checks, then the inserts with the commit), since while it is held every other append waits:
each round trip more costs a thread's wait for the GIL too, often longer than the query.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import msgspec
import psycopg
from psycopg.types.json import Jsonb

from engine import audit
from engine import events as ev
from engine.db import APPEND_STATEMENT_TIMEOUT, Database
from engine.errors import TiercelError, WrongExpectedVersion
from engine.storage import Storage

log = logging.getLogger(__name__)

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

LARGE_VALUE_BYTES = 256 * 1024
"""Above this size an input, output or flow of an event is kept in internal storage and the
event carries its `kestra://` URI (`ev.LARGE_VALUES` lists the fields)."""
VALUES_PREFIX = "_events"
"""Where, in internal storage, the large values of events live (one folder per execution)."""


def _offload(event: ev.Event, storage: Storage) -> ev.Event:
    fields = ev.LARGE_VALUES.get(type(event))
    if not fields:
        return event
    changes: dict[str, Any] = {}
    for name in fields:
        value = getattr(event, name)
        if not value:
            continue
        data = _json.encode(value)
        if len(data) <= LARGE_VALUE_BYTES:
            continue
        # Named by content: a retried append stores the same file once.
        digest = hashlib.sha256(data).hexdigest()[:32]
        owner = getattr(event, "executionId", "") or "unknown"
        uri = storage.put(f"{VALUES_PREFIX}/{owner}", f"{name}-{digest}.json", data, overwrite=True)
        changes[name] = _EMPTY.get((type(event), name), {})
        changes[f"{name}Uri"] = uri
    return msgspec.structs.replace(event, **changes) if changes else event


_EMPTY: dict[tuple[type[ev.Event], str], Any] = {
    (cls, f.name): f.default if f.default is not msgspec.NODEFAULT else f.default_factory()
    for cls in ev.LARGE_VALUES
    for f in msgspec.structs.fields(cls)
    if f.default is not msgspec.NODEFAULT or f.default_factory is not msgspec.NODEFAULT
}
"""What an offloaded field holds in the event: its default, an empty list for a list (a
required one holds `{}`)."""


def _hydrate(event: ev.AnyEvent, storage: Storage | None) -> ev.AnyEvent:
    fields = ev.LARGE_VALUES.get(type(event))
    if not fields or storage is None:
        return event
    changes: dict[str, Any] = {}
    for name in fields:
        uri = getattr(event, f"{name}Uri")
        if uri is None:
            continue
        try:
            changes[name] = msgspec.json.decode(storage.read_bytes(uri))
        except (OSError, TiercelError, msgspec.DecodeError) as exc:
            # Left unresolved (URI kept, value empty): `unresolved` tells readers, which fail
            # that one execution rather than stop for everyone.
            log.warning("Cannot read %s of %s from %s: %s", name, type(event).__name__, uri, exc)
            continue
        changes[f"{name}Uri"] = None
    return msgspec.structs.replace(event, **changes) if changes else event


def unresolved(event: ev.Event) -> str | None:
    """Why a value of `event` kept in internal storage could not be read back, or a sealed
    value could not be opened (None when every value of the event is in it)."""
    for name in ev.LARGE_VALUES.get(type(event), ()):
        uri = getattr(event, f"{name}Uri")
        if uri is not None:
            return (
                f"The {name} of {type(event).__name__} is kept in internal storage at {uri} and "
                "cannot be read there: check that every process shares the same storage"
            )
    sealed: str | None = _secrets().unopened(event)
    return sealed


def _secrets() -> Any:
    from engine import secrets  # not at the top: it imports this module

    return secrets


def _opened(
    conn: psycopg.Connection[Any],
    events: list[StoredEvent],
    keys: dict[str, bytes] | None = None,
) -> list[StoredEvent]:
    """`events` with the sealed values of their executions opened (engine.secrets)."""
    opened: list[StoredEvent] = _secrets().open_events(conn, events, keys)
    return opened


class _Encoded(msgspec.Struct, frozen=True):
    """One request's events as the INSERT sends them, encoded before the append lock."""

    types: list[str]
    data: list[Jsonb]
    meta: Jsonb


def _encode(requests: Sequence[Append]) -> list[_Encoded]:
    # Encoding is the costly part of an append (a large value takes seconds); done here, the
    # transaction that holds the append lock only runs its queries.
    return [
        _Encoded(
            [ev.type_name(e) for e in r.events],
            [Jsonb(_json.encode(e), dumps=_same) for e in r.events],
            Jsonb(_json.encode(r.meta), dumps=_same),
        )
        for r in requests
    ]


def _same(data: bytes) -> bytes:
    return data


def _append_sync(
    conn: psycopg.Connection[Any],
    requests: Sequence[Append],
    extra: Extra | None,
    storage: Storage | None = None,
    echo: list[StoredEvent] | None = None,
) -> list[AppendResult]:
    """Append `requests` in one transaction; with `echo`, also put there the events written,
    as a reader of the log would read them back."""
    # What users gave an execution is sealed with its key first (engine.secrets), before the
    # lock, and before a large value goes to internal storage.
    requests, keys = _secrets().seal_appends(conn, requests)
    if storage is not None:
        requests = [
            msgspec.structs.replace(r, events=[_offload(e, storage) for e in r.events])
            for r in requests
        ]
    encoded = _encode(requests)
    # Pipelined: the statements of a round trip are sent together and their results read once
    # (a fetch sends what is queued, the end of the block the rest). The transaction is begun
    # and ended by statements of the pipeline, not by `conn.transaction()`, which in a pipeline
    # costs a round trip at each end of its own.
    try:
        with conn.pipeline():
            conn.execute("BEGIN")
            # The statement timeout bounds the inserts that run while every other append
            # waits; the session's lock_timeout bounds the wait for the lock itself. The checks
            # are separate statements, so they see every append committed before the lock came.
            conn.execute(
                "SELECT set_config('statement_timeout', %s, true), pg_advisory_xact_lock(%s)",
                (APPEND_STATEMENT_TIMEOUT, _APPEND_LOCK),
            )
            finish = _append_locked(conn, requests, encoded, echo is not None)
            if extra is not None:
                extra(conn)
            conn.execute("COMMIT")
    except BaseException:
        # A statement that failed left the transaction aborted, anything raised here left it
        # open: either way nothing of it is kept.
        _roll_back(conn)
        raise
    # Committed: the positions the inserts returned can be read now.
    results, rows = finish()
    if echo is not None:
        written = sorted((_row_to_event(r, storage) for r in rows), key=lambda e: e.seq)
        echo.extend(_opened(conn, written, keys))
    return results


def _roll_back(conn: psycopg.Connection[Any]) -> None:
    if conn.closed or conn.broken:
        return
    try:
        if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
            conn.execute("ROLLBACK")
    except psycopg.Error:  # the connection is lost: the server rolls back, the pool drops it
        pass


def _append_locked(
    conn: psycopg.Connection[Any],
    requests: Sequence[Append],
    encoded: Sequence[_Encoded],
    echo: bool = False,
) -> Callable[[], tuple[list[AppendResult], list[tuple[Any, ...]]]]:
    """Check and queue the inserts of `requests` (the append lock is queued before); return
    what gives their results once the transaction's statements have run, with the rows
    written (as `_COLUMNS`) when `echo`."""
    commands = [r.command_id for r in requests if r.command_id]
    streams = sorted({r.stream_id for r in requests})
    known = (
        conn.execute(
            "SELECT command_id, stream_id, seq, version FROM events WHERE command_id = ANY(%s)",
            (commands,),
        )
        if commands
        else None
    )
    heads = conn.execute(
        "SELECT s, (SELECT max(version) FROM events WHERE stream_id = s)"
        " FROM unnest(%s::text[]) AS s",
        (streams,),
    )
    # The first fetch sends the lock and both checks in one round trip.
    done: dict[str, tuple[str, int, int]] = {}
    for command_id, stream_id, seq, version in known.fetchall() if known is not None else []:
        done[command_id] = (stream_id, seq, version)
    current: dict[str, int] = dict.fromkeys(streams, NO_STREAM)
    for stream_id, version in heads.fetchall():
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
    for req, enc in zip(requests, encoded, strict=True):
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
        n = len(req.events)
        rows[0].extend([req.stream_id] * n)
        rows[1].extend(range(head + 1, head + 1 + n))
        rows[2].extend(enc.types)
        rows[3].extend(enc.data)
        rows[4].extend([enc.meta] * n)
        rows[5].append(req.command_id)
        rows[5].extend([None] * (n - 1))
        pending.append((len(results), req.stream_id, head + 1, n))
        current[req.stream_id] = head + n
        if req.command_id:
            done[req.command_id] = (req.stream_id, -1, head + 1)
        results.append(None)

    if not pending:
        return lambda: ([r for r in results if r is not None], [])
    # Binary parameters: the text form of an array escapes every quote and backslash of every
    # value, in Python, seconds for a large value while the lock is held.
    inserted = conn.execute(
        "INSERT INTO events (stream_id, version, type, data, meta, command_id)"
        " SELECT * FROM unnest(%b::text[], %b::int[], %b::text[], %b::jsonb[],"
        " %b::jsonb[], %b::text[]) RETURNING stream_id, version, seq"
        # The rows as a reader reads them: jsonb orders the keys of objects its own way, and
        # the events a process hands its own consumers must be the ones a replay reads.
        + (f", {_COLUMNS}" if echo else ""),
        rows,
    )
    # The payload is the last position written (under the lock, the highest one), so a process
    # that already knows it (it made the commit) need not read again when the notification
    # comes back.
    conn.execute("SELECT pg_notify(%s, (SELECT max(seq) FROM events)::text)", (CHANNEL,))

    def finish() -> tuple[list[AppendResult], list[tuple[Any, ...]]]:
        written = inserted.fetchall()
        seqs = {(row[0], row[1]): row[2] for row in written}
        for index, stream_id, first, n in pending:
            results[index] = AppendResult(
                stream_id,
                "written",
                first + n - 1,
                seqs[(stream_id, first)],
                seqs[(stream_id, first + n - 1)],
            )
        return [r for r in results if r is not None], [row[3:] for row in written]

    return finish


def _row_to_event(row: tuple[Any, ...], storage: Storage | None = None) -> StoredEvent:
    seq, stream_id, version, type_, data, meta, recorded_at = row
    event = ev.decode(data)
    if type(event) in ev.LARGE_VALUES:
        event = _hydrate(event, storage)
    return StoredEvent(seq, stream_id, version, type_, event, meta, recorded_at)


_COLUMNS = "seq, stream_id, version, type, data::text, meta, recorded_at"


class EventStore:
    """Append to and read from the `events` table.

    With a `storage`, large inputs, outputs and flows go to internal storage when appended and
    come back when read, so events stay small and readers see whole values.
    """

    def __init__(self, db: Database, storage: Storage | None = None) -> None:
        self.db = db
        self.storage = storage
        self.feed: Any = None
        """The process's `engine.feed.Feed`, when one runs: subscriptions read from it."""
        self.committed: Callable[[int], None] | None = None
        """Told the last position of each commit this process makes (wakes its consumers at
        once, without waiting for the notification to come back from the server)."""

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
        self,
        requests: Sequence[Append],
        *,
        extra: Extra | None = None,
        written: list[StoredEvent] | None = None,
    ) -> list[AppendResult]:
        """Append to many streams in one transaction; `extra(conn)` runs in it too.

        Conflicting requests are reported and skipped; the others are written. `written`, when
        given, receives the events written, as a reader would read them.
        """
        if audit.current():
            # Made while an API request is handled: the client's address and reason go with it.
            requests = [msgspec.structs.replace(r, meta=audit.merged(r.meta)) for r in requests]
        feed = self.feed
        echo: list[StoredEvent] | None = written
        if echo is None and feed is not None:
            echo = []
        if feed is not None:
            feed.appending += 1
        try:
            results = await self.db.run(
                lambda conn: _append_sync(conn, requests, extra, self.storage, echo)
            )
        finally:
            if feed is not None:
                feed.appended()
        if feed is not None and echo:
            # This process's consumers get what it wrote without reading it back.
            feed.offer(echo)
        if self.committed is not None:
            last = max((r.last_seq for r in results if r.last_seq is not None), default=None)
            if last is not None:
                self.committed(last)
        return results

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
            return _opened(conn, [_row_to_event(r, self.storage) for r in cur.fetchall()])

        return await self.db.run(q)

    async def stream_versions(self, stream_ids: Iterable[str]) -> dict[str, int]:
        """The last version of each stream (`NO_STREAM` when it has no event): one index probe
        each, in one query."""
        streams = sorted(set(stream_ids))
        rows = await self.db.fetchall(
            "SELECT s AS stream_id, (SELECT max(version) FROM events WHERE stream_id = s)"
            " AS version FROM unnest(%s::text[]) AS s",
            (streams,),
        )
        found = {r["stream_id"]: r["version"] for r in rows}
        return {s: NO_STREAM if found.get(s) is None else int(found[s]) for s in streams}

    async def read_after(
        self, after: int, limit: int, types: Iterable[str] | None = None
    ) -> tuple[list[StoredEvent], int]:
        """`read_all`, and the position a reader is at once it handled what was read.

        With `types`, a batch shorter than `limit` takes the reader to the head of the log as
        the same query saw it (appends commit in position order, so every event up to it was
        looked at): a reader of rare types then moves past everything else instead of scanning
        it again after each notification."""
        if types is None:
            batch = await self.read_all(after, limit)
            return batch, batch[-1].seq if batch else after
        type_list = list(types)

        def q(conn: psycopg.Connection[Any]) -> tuple[list[StoredEvent], int]:
            # One statement, so the head and the rows come from one snapshot.
            rows = conn.execute(
                f"SELECT h.head, e.* FROM (SELECT coalesce(max(seq), 0) AS head FROM events) h"
                f" LEFT JOIN LATERAL (SELECT {_COLUMNS} FROM events WHERE seq > %s"
                " AND type = ANY(%s) ORDER BY seq LIMIT %s) e ON true ORDER BY e.seq",
                (after, type_list, limit),
            ).fetchall()
            head = int(rows[0][0]) if rows else after
            batch = [_row_to_event(r[1:], self.storage) for r in rows if r[1] is not None]
            batch = _opened(conn, batch)
            if len(batch) >= limit:
                return batch, batch[-1].seq
            return batch, max(after, head, batch[-1].seq if batch else after)

        return await self.db.run(q)

    async def read_stream(self, stream_id: str) -> list[StoredEvent]:
        """Every event of one stream, in version order."""
        return await self.db.run(lambda conn: read_stream_sync(conn, stream_id, self.storage))

    async def read_execution(self, execution_id: str) -> list[StoredEvent]:
        """Every event of an execution and of its attempts, in `seq` order."""
        return await self.db.run(lambda conn: read_execution_sync(conn, execution_id, self.storage))

    async def head(self) -> int:
        """The highest position written so far (0 when empty)."""
        row = await self.db.fetchone("SELECT coalesce(max(seq), 0) AS head FROM events")
        assert row is not None
        return int(row["head"])


def read_stream_sync(
    conn: psycopg.Connection[Any], stream_id: str, storage: Storage | None = None
) -> list[StoredEvent]:
    """`EventStore.read_stream` on a connection the caller holds."""
    cur = conn.execute(
        f"SELECT {_COLUMNS} FROM events WHERE stream_id = %s ORDER BY version", (stream_id,)
    )
    return _opened(conn, [_row_to_event(r, storage) for r in cur.fetchall()])


def read_execution_sync(
    conn: psycopg.Connection[Any], execution_id: str, storage: Storage | None = None
) -> list[StoredEvent]:
    """`EventStore.read_execution` on a connection the caller holds (large values are read
    back from `storage`)."""
    base = ev.execution_stream(execution_id)
    # Sub-streams are "<base>/..."; '0' sorts right after '/', so this range is exactly them.
    cur = conn.execute(
        f"SELECT {_COLUMNS} FROM events WHERE stream_id >= %s AND stream_id < %s ORDER BY seq",
        (base, base + "0"),
    )
    return _opened(conn, [_row_to_event(r, storage) for r in cur.fetchall()])


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
