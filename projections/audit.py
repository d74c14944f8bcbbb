"""The `audit` read model: one row per command recorded in the log, for `GET /api/v1/audit`.

Which events are commands, and what each means (resource kind and id, namespace, action), is
`engine.audit.entry`: events whose meta names an actor that is not one of the engine's
reacting components (or that create an execution or a flow revision, whoever did). The
projection reads every event type that may be one (`engine.audit.NEVER` lists those that
never are, the bulk of the log), so the commands of event types added later are audited
without a change here.
"""

from __future__ import annotations

import datetime as dt
import typing
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from engine import audit
from engine import events as ev
from engine.store import StoredEvent

MAX_TOTAL = 10_000
"""Matches counted at most for a page's `total` (beyond: `totalIsEstimate`)."""


class AuditProjection:
    """Commands, by position."""

    name = "audit"
    tables = ("audit",)

    def __init__(self) -> None:
        self.types = audit.audited_types([t.__name__ for t in typing.get_args(ev.AnyEvent)])

    def apply(self, batch: list[StoredEvent], conn: psycopg.Connection[Any]) -> None:
        rows = []
        namespaces: dict[str, str | None] = {}
        for e in batch:
            if isinstance(e.event, ev.ExecutionCreated):
                namespaces[e.stream_id] = e.event.namespace
            hint = None
            if e.stream_id.startswith("exec:") and getattr(e.event, "namespace", None) is None:
                hint = _execution_namespace(conn, e.stream_id.split("/", 1)[0], namespaces)
            found = audit.entry(e.stream_id, e.type, e.event, e.meta, hint)
            if found is None:
                continue
            if isinstance(e.event, ev.FlowUpdated):
                # What the update is compared with: the revision deployed before it (a deletion
                # in between is no revision of its own source).
                previous = _previous_revision(conn, e.stream_id, e.version)
                if previous is not None:
                    found.details["previousRevision"] = previous
            rows.append(
                (
                    e.seq,
                    e.recorded_at,
                    found.actor,
                    found.kind,
                    found.resource_id,
                    found.namespace,
                    found.action,
                    e.type,
                    e.stream_id,
                    e.version,
                    found.client_address,
                    found.reason,
                    Jsonb(found.details),
                )
            )
        if rows:
            with conn.cursor() as cur:
                cur.executemany(
                    "INSERT INTO audit (seq, recorded_at, actor, kind, resource_id, namespace,"
                    " action, event_type, stream_id, version, client_address, reason, details)"
                    " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
                    " ON CONFLICT (seq) DO NOTHING",
                    rows,
                )


def _previous_revision(conn: psycopg.Connection[Any], stream: str, version: int) -> int | None:
    row = conn.execute(
        "SELECT (data->>'revision')::int FROM events WHERE stream_id = %s AND version < %s"
        " AND type IN ('FlowCreated', 'FlowUpdated') ORDER BY version DESC LIMIT 1",
        (stream, version),
    ).fetchone()
    return int(row[0]) if row and row[0] is not None else None


def _execution_namespace(
    conn: psycopg.Connection[Any], stream: str, known: dict[str, str | None]
) -> str | None:
    """The namespace of an execution's stream, from its first event (one index probe)."""
    if stream not in known:
        row = conn.execute(
            "SELECT data->>'namespace' FROM events WHERE stream_id = %s ORDER BY version LIMIT 1",
            (stream,),
        ).fetchone()
        known[stream] = row[0] if row else None
    return known[stream]


@dataclass
class Search:
    """What `GET /api/v1/audit` filters on (each optional)."""

    kind: str | None = None
    resource_id: str | None = None
    namespace: str | None = None
    """This namespace and those under it."""
    actor: str | None = None
    action: str | None = None
    event_type: str | None = None
    start: dt.datetime | None = None
    end: dt.datetime | None = None
    before: int | None = None
    """Only rows older than this position (the `next` of a previous page)."""


COLUMNS = (
    "seq, recorded_at, actor, kind, resource_id, namespace, action, event_type, stream_id,"
    " version, client_address, reason, details"
)


def where(search: Search, allowed: str, params: Sequence[Any]) -> tuple[str, list[Any]]:
    """The SQL condition (and parameters) of `search` within `allowed` (the caller's scope)."""
    parts = [allowed]
    values = list(params)
    for column, value in (
        ("kind", search.kind),
        ("resource_id", search.resource_id),
        ("actor", search.actor),
        ("action", search.action),
        ("event_type", search.event_type),
    ):
        if value is not None:
            parts.append(f"{column} = %s")
            values.append(value)
    if search.namespace is not None:
        parts.append("(namespace = %s OR namespace LIKE %s)")
        values += [search.namespace, _like_prefix(search.namespace) + ".%"]
    if search.start is not None:
        parts.append("recorded_at >= %s")
        values.append(search.start)
    if search.end is not None:
        parts.append("recorded_at <= %s")
        values.append(search.end)
    if search.before is not None:
        parts.append("seq < %s")
        values.append(search.before)
    return " AND ".join(parts), values


def _like_prefix(value: str) -> str:
    return value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def page(
    conn: psycopg.Connection[Any],
    search: Search,
    allowed: str,
    params: Sequence[Any],
    *,
    offset: int,
    size: int,
) -> tuple[list[dict[str, Any]], int, bool]:
    """One page of matching rows, newest first, with the number of matches (counted up to
    `MAX_TOTAL`; whether it is an estimate beyond that)."""
    clause, values = where(search, allowed, params)
    rows = _rows(
        conn,
        f"SELECT {COLUMNS} FROM audit WHERE {clause} ORDER BY seq DESC LIMIT %s OFFSET %s",
        [*values, size, offset],
    )
    if len(rows) < size and (rows or offset == 0):
        return rows, offset + len(rows), False
    counted = conn.execute(
        f"SELECT count(*) FROM (SELECT 1 FROM audit WHERE {clause} LIMIT %s) AS m",
        [*values, MAX_TOTAL + 1],
    ).fetchone()
    total = int(counted[0]) if counted else 0
    return rows, min(total, MAX_TOTAL), total > MAX_TOTAL


def batch(
    conn: psycopg.Connection[Any],
    search: Search,
    allowed: str,
    params: Sequence[Any],
    size: int,
) -> list[dict[str, Any]]:
    """Up to `size` matching rows older than `search.before`, newest first (an export reads
    batch after batch, each before the last row of the one before)."""
    clause, values = where(search, allowed, params)
    return _rows(
        conn,
        f"SELECT {COLUMNS} FROM audit WHERE {clause} ORDER BY seq DESC LIMIT %s",
        [*values, size],
    )


def _rows(conn: psycopg.Connection[Any], query: str, params: list[Any]) -> list[dict[str, Any]]:
    cur = conn.execute(query, params)
    names = [c.name for c in cur.description or ()]
    return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]
