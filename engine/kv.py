"""The key-value store of namespaces, kept as events: one stream per key.

Every write is an event on `kv:<namespace>/<key>`, so a key's whole history stays readable and
its current value is its stream's last event. A value with an `expiresAt` stops being readable
at that time; nothing has to delete it. A write that depends on what it read (`overwrite=False`,
a delete) appends at the version it read, so a concurrent write cannot slip in between.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Any

from engine import events as ev
from engine.errors import Conflict, InvalidRequest, WrongExpectedVersion
from engine.store import ANY, NO_STREAM, EventStore

_KEY = re.compile(r"^[A-Za-z0-9_.\-/]+$")
# No slash in a namespace: it separates the namespace from the key in the stream id, which is
# what makes a namespace's keys one contiguous range of stream ids.
_NAMESPACE = re.compile(r"^[A-Za-z0-9_.\-]+$")
_AFTER_EVERY_KEY = "\x7f"
"""Sorts after every character a key may hold (stream ids compare bytewise, COLLATE "C")."""
_RETRIES = 5


def _check_namespace(namespace: str) -> None:
    if not namespace or not _NAMESPACE.match(namespace):
        raise InvalidRequest(
            f"Invalid KV namespace {namespace!r}: use letters, digits and . _ - only"
        )


def _check(namespace: str, key: str) -> None:
    _check_namespace(namespace)
    if not key or not _KEY.match(key):
        raise InvalidRequest(
            f"Invalid KV key {key!r} in namespace {namespace}: use letters, digits and . _ - / only"
        )


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _live(event: ev.AnyEvent | None, now: dt.datetime) -> ev.KVSet | None:
    """The value an entry's last event leaves readable at `now`, if any."""
    if not isinstance(event, ev.KVSet):
        return None
    if event.expiresAt and dt.datetime.fromisoformat(event.expiresAt) <= now:
        return None
    return event


async def _last(store: EventStore, stream: str) -> tuple[int, ev.AnyEvent | None]:
    """A key's stream version (NO_STREAM when it has none) and its last event: one row read,
    however long the key's history."""
    row = await store.db.fetchone(
        "SELECT version, data::text AS data FROM events WHERE stream_id = %s"
        " ORDER BY version DESC LIMIT 1",
        (stream,),
    )
    if row is None:
        return NO_STREAM, None
    return int(row["version"]), ev.decode(row["data"])


async def kv_get(store: EventStore, namespace: str, key: str) -> tuple[bool, Any]:
    """(found, value) of a key; a missing, deleted or expired key gives (False, None). The
    flag tells a stored JSON null apart from a missing key."""
    _check(namespace, key)
    _, last = await _last(store, ev.kv_stream(namespace, key))
    current = _live(last, _now())
    return (True, current.value) if current is not None else (False, None)


async def kv_entry(store: EventStore, namespace: str, key: str) -> ev.KVSet | None:
    """The event that set a key's live value (with its type and description), or None for a
    missing, deleted or expired key."""
    _check(namespace, key)
    _, last = await _last(store, ev.kv_stream(namespace, key))
    return _live(last, _now())


async def kv_set(
    store: EventStore,
    namespace: str,
    key: str,
    value: Any,
    *,
    ttl: dt.timedelta | None = None,
    overwrite: bool = True,
    actor: str = "api",
    kv_type: str | None = None,
    description: str | None = None,
) -> None:
    """Set a key to any JSON value, readable for `ttl` when given (forever otherwise), with
    its Kestra type (`kv_type`) and a `description` when given.

    With `overwrite=False` a key that holds a live value is left alone and `Conflict` is
    raised."""
    _check(namespace, key)
    if ttl is not None and ttl <= dt.timedelta(0):
        raise InvalidRequest(f"The ttl of KV key {key!r} must be positive, not {ttl}")
    stream = ev.kv_stream(namespace, key)
    expires = (_now() + ttl).isoformat() if ttl is not None else None
    event = ev.KVSet(
        namespace=namespace,
        key=key,
        value=value,
        expiresAt=expires,
        kvType=kv_type,
        description=description,
    )
    meta = {"actor": actor}
    if overwrite:
        await store.append(stream, [event], expected_version=ANY, meta=meta)
        return
    for _ in range(_RETRIES):
        version, last = await _last(store, stream)
        if _live(last, _now()) is not None:
            raise Conflict(
                f"KV key {key!r} already exists in namespace {namespace} and overwrite is "
                "false: delete it first or allow overwriting"
            )
        try:
            await store.append(stream, [event], expected_version=version, meta=meta)
            return
        except WrongExpectedVersion:
            continue
    raise Conflict(f"KV key {key!r} of namespace {namespace} keeps changing; try again")


async def kv_delete(store: EventStore, namespace: str, key: str, *, actor: str = "api") -> bool:
    """Delete a key; False when it held no live value (nothing is recorded then)."""
    _check(namespace, key)
    stream = ev.kv_stream(namespace, key)
    for _ in range(_RETRIES):
        version, last = await _last(store, stream)
        if _live(last, _now()) is None:
            return False
        try:
            await store.append(
                stream,
                [ev.KVDeleted(namespace=namespace, key=key)],
                expected_version=version,
                meta={"actor": actor},
            )
            return True
        except WrongExpectedVersion:
            continue
    raise Conflict(f"KV key {key!r} of namespace {namespace} keeps changing; try again")


async def kv_entries(store: EventStore, namespace: str, prefix: str = "") -> dict[str, Any]:
    """Every live key of a namespace that starts with `prefix`, with its value, sorted by key.

    One range scan over the namespace's streams, reading only each stream's last event."""
    _check_namespace(namespace)
    if prefix and not _KEY.match(prefix):
        raise InvalidRequest(f"Invalid KV key prefix {prefix!r}: use letters, digits and . _ - /")
    low = ev.kv_stream(namespace, prefix)
    # Newest first on both columns, so the (stream_id, version) index is read backwards with
    # no sort, and DISTINCT ON keeps each stream's last event.
    rows = await store.db.fetchall(
        "SELECT DISTINCT ON (stream_id) stream_id, data::text AS data FROM events"
        " WHERE stream_id >= %s AND stream_id < %s ORDER BY stream_id DESC, version DESC",
        (low, low + _AFTER_EVERY_KEY),
    )
    now = _now()
    out: dict[str, Any] = {}
    for row in rows:
        current = _live(ev.decode(row["data"]), now)
        if current is not None:
            out[current.key] = current.value
    return dict(sorted(out.items()))


async def kv_keys(store: EventStore, namespace: str, prefix: str = "") -> list[str]:
    """The live keys of a namespace that start with `prefix`, sorted."""
    return list(await kv_entries(store, namespace, prefix))


async def kv_described(
    store: EventStore, namespace: str
) -> list[tuple[ev.KVSet, dt.datetime, dt.datetime]]:
    """Every live key of a namespace with when it was set first (since it was last deleted)
    and last: `(event, created, updated)`, sorted by key."""
    _check_namespace(namespace)
    low = ev.kv_stream(namespace, "")
    rows = await store.db.fetchall(
        "SELECT last.stream_id, last.data, last.recorded_at AS updated, ("
        "  SELECT e.recorded_at FROM events e WHERE e.stream_id = last.stream_id"
        "  AND e.version > coalesce((SELECT d.version FROM events d"
        "    WHERE d.stream_id = last.stream_id AND d.type = 'KVDeleted'"
        "    ORDER BY d.version DESC LIMIT 1), 0)"
        "  ORDER BY e.version LIMIT 1) AS created"
        " FROM (SELECT DISTINCT ON (stream_id) stream_id, data::text AS data, recorded_at, type"
        "  FROM events WHERE stream_id >= %s AND stream_id < %s"
        "  ORDER BY stream_id DESC, version DESC) AS last"
        " WHERE last.type = 'KVSet'",
        (low, low + _AFTER_EVERY_KEY),
    )
    now = _now()
    out = []
    for row in rows:
        current = _live(ev.decode(row["data"]), now)
        if current is not None:
            updated = row["updated"]
            created = row["created"] or updated
            out.append((current, created, updated))
    return sorted(out, key=lambda item: item[0].key)
