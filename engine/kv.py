"""The key-value store of namespaces, kept as events (one stream per key).

Every write is an event on `kv:<namespace>/<key>`, so a value's whole history stays readable;
the current value is the last event's. Values expire at their `expiresAt` when given.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Any

from engine import events as ev
from engine.errors import InvalidRequest
from engine.store import ANY, EventStore, StoredEvent

_KEY = re.compile(r"^[A-Za-z0-9_.\-/]+$")


def kv_stream(namespace: str, key: str) -> str:
    """The stream of one key."""
    return f"kv:{namespace}/{key}"


def _check(namespace: str, key: str) -> None:
    if not namespace:
        raise InvalidRequest("A KV entry needs a namespace")
    if not key or not _KEY.match(key):
        raise InvalidRequest(f"Invalid KV key {key!r}: use letters, digits and . _ - / only")


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _current(history: list[StoredEvent], now: dt.datetime) -> ev.KVSet | None:
    if not history:
        return None
    last = history[-1].event
    if not isinstance(last, ev.KVSet):
        return None
    if last.expiresAt and dt.datetime.fromisoformat(last.expiresAt) <= now:
        return None
    return last


async def kv_get(store: EventStore, namespace: str, key: str) -> tuple[bool, Any]:
    """(found, value) of a key; an expired or deleted key is not found."""
    _check(namespace, key)
    current = _current(await store.read_stream(kv_stream(namespace, key)), _now())
    return (True, current.value) if current is not None else (False, None)


async def kv_set(
    store: EventStore,
    namespace: str,
    key: str,
    value: Any,
    *,
    ttl: dt.timedelta | None = None,
    overwrite: bool = True,
    actor: str = "api",
) -> None:
    """Set a key (to any JSON value), optionally expiring after `ttl`."""
    _check(namespace, key)
    if not overwrite:
        found, _ = await kv_get(store, namespace, key)
        if found:
            raise InvalidRequest(
                f"KV key {key!r} already exists in {namespace} and overwrite is false"
            )
    expires = (_now() + ttl).isoformat() if ttl else None
    await store.append(
        kv_stream(namespace, key),
        [ev.KVSet(namespace=namespace, key=key, value=value, expiresAt=expires)],
        expected_version=ANY,
        meta={"actor": actor},
    )


async def kv_delete(store: EventStore, namespace: str, key: str, *, actor: str = "api") -> bool:
    """Delete a key; False when it did not exist."""
    found, _ = await kv_get(store, namespace, key)
    if not found:
        return False
    await store.append(
        kv_stream(namespace, key),
        [ev.KVDeleted(namespace=namespace, key=key)],
        expected_version=ANY,
        meta={"actor": actor},
    )
    return True


async def kv_entries(store: EventStore, namespace: str, prefix: str = "") -> dict[str, Any]:
    """Every live key of a namespace (starting with `prefix`) and its value."""
    base = kv_stream(namespace, prefix)
    rows = await store.db.fetchall(
        "SELECT DISTINCT stream_id FROM events WHERE stream_id >= %s AND stream_id < %s",
        (base, kv_stream(namespace, "") + "\U0010ffff"),
    )
    now = _now()
    out: dict[str, Any] = {}
    for row in rows:
        stream = row["stream_id"]
        key = stream[len(kv_stream(namespace, "")) :]
        if not key.startswith(prefix):
            continue
        current = _current(await store.read_stream(stream), now)
        if current is not None:
            out[key] = current.value
    return dict(sorted(out.items()))
