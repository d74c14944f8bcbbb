"""The `flows` read model: the latest revision of every flow, for search and listing."""

from __future__ import annotations

from typing import Any

import psycopg
import yaml

from engine import events as ev
from engine.store import StoredEvent


class FlowsProjection:
    """Latest revision of each flow (deleted flows stay, marked)."""

    name = "flows"
    types = ("FlowCreated", "FlowUpdated", "FlowDeleted")
    tables = ("flows",)
    pace = 0.0
    """Applied at once: deploys are rare, and a client lists the flows right after one."""

    def apply(self, batch: list[StoredEvent], conn: psycopg.Connection[Any]) -> None:
        for e in batch:
            event = e.event
            if isinstance(event, (ev.FlowCreated, ev.FlowUpdated)):
                description, labels = _summary(event.source)
                conn.execute(
                    "INSERT INTO flows (namespace, flow_id, revision, source, deleted,"
                    " description, labels, updated) VALUES (%s, %s, %s, %s, false, %s, %s, %s)"
                    " ON CONFLICT (namespace, flow_id) DO UPDATE SET revision = EXCLUDED.revision,"
                    " source = EXCLUDED.source, deleted = false,"
                    " description = EXCLUDED.description, labels = EXCLUDED.labels,"
                    " updated = EXCLUDED.updated",
                    (
                        event.namespace,
                        event.flowId,
                        event.revision,
                        event.source,
                        description,
                        psycopg.types.json.Jsonb(labels),
                        e.recorded_at,
                    ),
                )
            elif isinstance(event, ev.FlowDeleted):
                conn.execute(
                    "UPDATE flows SET deleted = true, revision = %s, updated = %s"
                    " WHERE namespace = %s AND flow_id = %s",
                    (event.revision, e.recorded_at, event.namespace, event.flowId),
                )


def _summary(source: str) -> tuple[str | None, dict[str, Any]]:
    try:
        raw = yaml.safe_load(source)
    except yaml.YAMLError:
        return None, {}
    if not isinstance(raw, dict):
        return None, {}
    labels = raw.get("labels") if isinstance(raw.get("labels"), dict) else {}
    return raw.get("description"), {str(k): str(v) for k, v in (labels or {}).items()}


LINK_HINTS = ("%flowId%", "%.Flow%")
"""What the source of a flow naming other flows holds: a Subflow or ForEachItem task needs a
`flowId`, a Flow trigger's type ends in `.Flow`. Other sources are not sent to be parsed."""


def latest_for_links(
    conn: psycopg.Connection[Any], where: str, params: list[Any], limit: int
) -> list[tuple[str, str, int, str | None]]:
    """The latest revision of every flow `where` keeps (a condition on `namespace`), at most
    `limit`, by namespace and id: (namespace, id, revision, source), the source only when it
    may name other flows (`LINK_HINTS`)."""
    rows = conn.execute(
        "SELECT namespace, flow_id, revision,"
        " CASE WHEN source LIKE %s OR source LIKE %s THEN source END"
        f" FROM flows WHERE NOT deleted AND {where} ORDER BY namespace, flow_id LIMIT %s",
        [*LINK_HINTS, *params, limit],
        prepare=False,
    ).fetchall()
    return [(r[0], r[1], int(r[2]), r[3]) for r in rows]
