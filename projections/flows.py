"""The `flows` read model: the latest revision of every flow, for search and listing, and what
each flow names of other flows (the dependency graph's, api/topology_routes.py).

- `flows`: one row per flow (deleted flows stay, marked).
- `flow_calls`: one row per flow a flow's Subflow and ForEachItem tasks run.
- `flow_listeners`: one row per flow with Flow triggers, their requirements as JSON
  (engine/graph.listens_json).

A flow's links are those of its latest revision, parsed once when the revision is applied, in
the same transaction as its row; a deleted flow has none. Applying events again (the migration
that added the links resets this projection's checkpoint) changes nothing: a row only takes an
event's values when its revision is not older than the row's (revisions only grow).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import psycopg
import yaml

from engine import events as ev
from engine import graph
from engine.graph import FlowKey, Listens
from engine.store import StoredEvent


class FlowsProjection:
    """Latest revision of each flow (deleted flows stay, marked), and its links."""

    name = "flows"
    types = ("FlowCreated", "FlowUpdated", "FlowDeleted")
    tables = ("flows", "flow_calls", "flow_listeners")
    pace = 0.0
    """Applied at once: deploys are rare, and a client lists the flows right after one."""

    def apply(self, batch: list[StoredEvent], conn: psycopg.Connection[Any]) -> None:
        # The latest source written for each flow in this batch (None: deleted): its links
        # are replaced once, after the rows.
        touched: dict[FlowKey, str | None] = {}
        for e in batch:
            event = e.event
            if isinstance(event, (ev.FlowCreated, ev.FlowUpdated)):
                description, labels = _summary(event.source)
                written = conn.execute(
                    "INSERT INTO flows (namespace, flow_id, revision, source, deleted,"
                    " description, labels, updated) VALUES (%s, %s, %s, %s, false, %s, %s, %s)"
                    " ON CONFLICT (namespace, flow_id) DO UPDATE SET revision = EXCLUDED.revision,"
                    " source = EXCLUDED.source, deleted = false,"
                    " description = EXCLUDED.description, labels = EXCLUDED.labels,"
                    " updated = EXCLUDED.updated WHERE flows.revision <= EXCLUDED.revision"
                    " RETURNING true",
                    (
                        event.namespace,
                        event.flowId,
                        event.revision,
                        event.source,
                        description,
                        psycopg.types.json.Jsonb(labels),
                        e.recorded_at,
                    ),
                ).fetchone()
                if written:
                    touched[FlowKey(event.namespace, event.flowId)] = event.source
            elif isinstance(event, ev.FlowDeleted):
                written = conn.execute(
                    "UPDATE flows SET deleted = true, revision = %s, updated = %s"
                    " WHERE namespace = %s AND flow_id = %s AND revision <= %s RETURNING true",
                    (event.revision, e.recorded_at, event.namespace, event.flowId, event.revision),
                ).fetchone()
                if written:
                    touched[FlowKey(event.namespace, event.flowId)] = None
        if touched:
            _keep_links(conn, touched)


def _keep_links(conn: psycopg.Connection[Any], touched: dict[FlowKey, str | None]) -> None:
    """Replace the links of the flows of `touched` by those of their source (none: deleted)."""
    keys = list(touched)
    spread = ([k.namespace for k in keys], [k.id for k in keys])
    for table in ("flow_calls", "flow_listeners"):
        conn.execute(
            f"DELETE FROM {table} WHERE (namespace, flow_id) IN"
            " (SELECT * FROM unnest(%s::text[], %s::text[]))",
            spread,
        )
    calls: list[tuple[FlowKey, FlowKey]] = []
    listeners: list[tuple[FlowKey, str]] = []
    for key, source in touched.items():
        if source is None:
            continue
        links = graph.source_links(source)
        calls.extend((key, target) for target in sorted(links.calls))
        if links.listens:
            listeners.append((key, json.dumps(graph.listens_json(links.listens))))
    if calls:
        conn.execute(
            "INSERT INTO flow_calls (namespace, flow_id, target_namespace, target_flow_id)"
            " SELECT * FROM unnest(%s::text[], %s::text[], %s::text[], %s::text[])",
            (
                [c[0].namespace for c in calls],
                [c[0].id for c in calls],
                [c[1].namespace for c in calls],
                [c[1].id for c in calls],
            ),
        )
    if listeners:
        conn.execute(
            "INSERT INTO flow_listeners (namespace, flow_id, requirements)"
            " SELECT n, f, r::jsonb FROM unnest(%s::text[], %s::text[], %s::text[]) AS t(n, f, r)",
            (
                [k.namespace for k, _ in listeners],
                [k.id for k, _ in listeners],
                [r for _, r in listeners],
            ),
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


# --- reading the links (the dependency routes) --------------------------------------------------
#
# `scope` is a SQL condition on `f.namespace` and its parameters (the namespaces the caller may
# see, api/auth.namespace_filter("f.namespace")); `f` is always the row of `flows` whose flow
# must exist, not be deleted and be seen for a link to count.

Scope = tuple[str, list[Any]]


def _spread(keys: Sequence[FlowKey]) -> tuple[list[str], list[str]]:
    return [k.namespace for k in keys], [k.id for k in keys]


def visible(conn: psycopg.Connection[Any], flow: FlowKey, scope: Scope) -> bool:
    """Whether `flow` is in the read model, not deleted, and in `scope`."""
    where, params = scope
    row = conn.execute(
        "SELECT 1 FROM flows f WHERE f.namespace = %s AND f.flow_id = %s AND NOT f.deleted"
        f" AND {where}",
        [flow.namespace, flow.id, *params],
        prepare=False,
    ).fetchone()
    return row is not None


def callers(
    conn: psycopg.Connection[Any], targets: Sequence[FlowKey], scope: Scope
) -> list[tuple[FlowKey, FlowKey]]:
    """(caller, target) for each flow in `scope` whose Subflow or ForEachItem tasks run one of
    `targets` (a flow calling itself left out)."""
    where, params = scope
    rows = conn.execute(
        "SELECT c.namespace, c.flow_id, c.target_namespace, c.target_flow_id FROM flow_calls c"
        " JOIN flows f ON f.namespace = c.namespace AND f.flow_id = c.flow_id"
        " WHERE (c.target_namespace, c.target_flow_id) IN"
        " (SELECT * FROM unnest(%s::text[], %s::text[]))"
        " AND (c.namespace, c.flow_id) <> (c.target_namespace, c.target_flow_id)"
        f" AND NOT f.deleted AND {where}",
        [*_spread(targets), *params],
        prepare=False,
    ).fetchall()
    return [(FlowKey(r[0], r[1]), FlowKey(r[2], r[3])) for r in rows]


def callees(
    conn: psycopg.Connection[Any], sources: Sequence[FlowKey], scope: Scope
) -> list[tuple[FlowKey, FlowKey]]:
    """(source, callee) for each flow in `scope` that one of `sources` runs as a subflow (a
    flow calling itself left out; a callee that does not exist is not linked)."""
    where, params = scope
    rows = conn.execute(
        "SELECT c.namespace, c.flow_id, c.target_namespace, c.target_flow_id FROM flow_calls c"
        " JOIN flows f ON f.namespace = c.target_namespace AND f.flow_id = c.target_flow_id"
        " WHERE (c.namespace, c.flow_id) IN (SELECT * FROM unnest(%s::text[], %s::text[]))"
        " AND (c.namespace, c.flow_id) <> (c.target_namespace, c.target_flow_id)"
        f" AND NOT f.deleted AND {where}",
        [*_spread(sources), *params],
        prepare=False,
    ).fetchall()
    return [(FlowKey(r[0], r[1]), FlowKey(r[2], r[3])) for r in rows]


def call_component(
    conn: psycopg.Connection[Any], seeds: Sequence[FlowKey], scope: Scope, *, outgoing: bool
) -> set[FlowKey]:
    """The flows in `scope` that reach one of `seeds` through subflow calls, however many
    calls away (and, with `outgoing`, those the seeds reach), the seeds with them: one
    recursive query, where a walk of the graph step by step would make one per step."""
    where, params = scope
    edges = "SELECT target_namespace, target_flow_id, namespace, flow_id FROM flow_calls"
    if outgoing:
        edges += (
            " UNION ALL SELECT namespace, flow_id, target_namespace, target_flow_id FROM flow_calls"
        )
    rows = conn.execute(
        "WITH RECURSIVE reached(namespace, flow_id) AS ("
        " SELECT * FROM unnest(%s::text[], %s::text[])"
        " UNION SELECT e.to_ns, e.to_id FROM reached r"
        f" JOIN ({edges}) AS e(from_ns, from_id, to_ns, to_id)"
        " ON e.from_ns = r.namespace AND e.from_id = r.flow_id"
        " JOIN flows f ON f.namespace = e.to_ns AND f.flow_id = e.to_id"
        f" WHERE NOT f.deleted AND {where})"
        " SELECT namespace, flow_id FROM reached",
        [*_spread(seeds), *params],
        prepare=False,
    ).fetchall()
    return {FlowKey(r[0], r[1]) for r in rows}


def listeners(
    conn: psycopg.Connection[Any], scope: Scope, namespace: str | None = None
) -> dict[FlowKey, Listens]:
    """Every flow in `scope` (of `namespace` only, when given) with Flow triggers, and what
    they listen to."""
    where, params = scope
    if namespace is not None:
        where, params = f"{where} AND f.namespace = %s", [*params, namespace]
    rows = conn.execute(
        "SELECT l.namespace, l.flow_id, l.requirements FROM flow_listeners l"
        " JOIN flows f ON f.namespace = l.namespace AND f.flow_id = l.flow_id"
        f" WHERE NOT f.deleted AND {where}",
        params,
        prepare=False,
    ).fetchall()
    return {FlowKey(r[0], r[1]): graph.listens_from_json(r[2]) for r in rows}


def _like(value: str) -> str:
    return value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _match_sql(listens: Listens) -> tuple[str, list[Any]]:
    """A condition on `f` holding for the flows `listens` names (FlowMatch.matches in SQL)."""
    triggers, params = [], []
    for requirements in listens:
        needs = []
        for choice in requirements:
            options = []
            for m in choice:
                if m.comparison == "PREFIX":
                    part, value = "f.namespace LIKE %s", _like(m.namespace) + "%"
                elif m.comparison == "SUFFIX":
                    part, value = "f.namespace LIKE %s", "%" + _like(m.namespace)
                else:
                    part, value = "f.namespace = %s", m.namespace
                params.append(value)
                if m.flow_id is not None:
                    part += " AND f.flow_id = %s"
                    params.append(m.flow_id)
                options.append(f"({part})")
            needs.append("(" + (" OR ".join(options) or "false") + ")")
        triggers.append("(" + (" AND ".join(needs) or "true") + ")")
    return "(" + (" OR ".join(triggers) or "false") + ")", params


def listened_to_each(
    conn: psycopg.Connection[Any], listeners: Mapping[FlowKey, Listens], scope: Scope
) -> dict[FlowKey, list[FlowKey]]:
    """For each of `listeners`, the flows in `scope` its Flow triggers listen to (every one,
    when a trigger names no flow), in one query: a walk of a graph asks for a whole frontier's
    listeners at once, not one by one."""
    where, params = scope
    parts: list[str] = []
    values: list[Any] = []
    order = list(listeners)
    for i, listener in enumerate(order):
        match, match_params = _match_sql(listeners[listener])
        parts.append(
            f"SELECT {i} AS k, f.namespace, f.flow_id FROM flows f"
            f" WHERE NOT f.deleted AND {where} AND {match}"
        )
        values += [*params, *match_params]
    found: dict[FlowKey, list[FlowKey]] = {listener: [] for listener in order}
    if parts:
        rows = conn.execute(" UNION ALL ".join(parts), values, prepare=False).fetchall()
        for k, namespace, flow_id in rows:
            found[order[int(k)]].append(FlowKey(namespace, flow_id))
    return found


def namespace_flows(conn: psycopg.Connection[Any], namespace: str, scope: Scope) -> list[FlowKey]:
    """Every flow of `namespace` in `scope`, not deleted."""
    where, params = scope
    rows = conn.execute(
        f"SELECT f.namespace, f.flow_id FROM flows f WHERE f.namespace = %s AND NOT f.deleted"
        f" AND {where}",
        [namespace, *params],
        prepare=False,
    ).fetchall()
    return [FlowKey(r[0], r[1]) for r in rows]


def namespace_calls(
    conn: psycopg.Connection[Any], namespace: str, scope: Scope
) -> list[tuple[FlowKey, FlowKey]]:
    """(caller, callee) for each subflow call between two flows of `namespace` in `scope`."""
    where, params = scope
    rows = conn.execute(
        "SELECT c.namespace, c.flow_id, c.target_namespace, c.target_flow_id FROM flow_calls c"
        " JOIN flows f ON f.namespace = c.target_namespace AND f.flow_id = c.target_flow_id"
        " WHERE c.namespace = %s AND c.target_namespace = %s AND c.flow_id <> c.target_flow_id"
        f" AND NOT f.deleted AND {where}",
        [namespace, namespace, *params],
        prepare=False,
    ).fetchall()
    return [(FlowKey(r[0], r[1]), FlowKey(r[2], r[3])) for r in rows]
