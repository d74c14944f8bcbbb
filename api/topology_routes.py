"""Topology routes, as Kestra serves them: the task graph of a flow revision, and the
dependencies between flows (engine/graph.py builds both).

- `GET /api/v1/flows/{namespace}/{id}/graph?revision=`: the revision's FlowGraph (the latest
  by default).
- `POST /api/v1/flows/graph`: the FlowGraph of a flow sent as YAML (what an editor shows before
  saving), validated as a deploy would.
- `GET /api/v1/flows/{namespace}/{id}/dependencies?destinationOnly=&expandAll=`: the flows
  leading to this one (subflow tasks, Flow triggers) and, unless `destinationOnly`, those it
  leads to; `expandAll` follows them recursively.
- `GET /api/v1/namespaces/{namespace}/dependencies`: every flow of the namespace and the
  dependencies between them.

A dependency graph is read from the flows read model (projections/flows.py), which keeps what
each flow names of other flows as it applies its revisions: the flows a flow calls and those
calling it are two indexed queries, the flows a Flow trigger listens to one query of its
conditions; the listeners are few and read whole. Nothing is parsed per request and no number
of flows is left out; `expandAll` walks the graph breadth first, one round of queries per step.
Only flows that exist, are not deleted and are in the caller's namespaces are linked.
"""

from __future__ import annotations

from typing import Any

import psycopg
from quart import Blueprint, Response, request

from api import bodies
from api.auth import access, namespace_filter
from engine import commands, graph
from engine.errors import InvalidRequest
from engine.flow import parse_flow
from engine.graph import Dependency, FlowKey, Listens
from engine.server import ServerContext
from projections import flows as flows_model


def _answer(body: Any) -> Response:
    return Response(bodies.json_bytes(body), status=200, content_type="application/json")


def _bool_arg(name: str) -> bool:
    raw = (request.args.get(name) or "false").lower()
    if raw not in ("true", "false"):
        raise InvalidRequest(f"Query parameter '{name}' must be true or false, got {raw!r}")
    return raw == "true"


def _revision_arg() -> int | None:
    raw = request.args.get("revision")
    if raw is None or raw == "":
        return None
    if not raw.isdigit() or not 1 <= int(raw) <= 2**31 - 1:
        raise InvalidRequest(f"Query parameter 'revision' must be a revision number, got {raw!r}")
    return int(raw)


def _edges(found: dict[tuple[FlowKey, FlowKey], str]) -> list[Dependency]:
    return sorted(Dependency(s, d, r) for (s, d), r in found.items())


def _link(
    found: dict[tuple[FlowKey, FlowKey], str], source: FlowKey, destination: FlowKey, relation: str
) -> None:
    # One dependency per pair: a subflow call says more than a Flow trigger listening.
    if found.get((source, destination)) != "FLOW_TASK":
        found[(source, destination)] = relation


def _touching(
    conn: psycopg.Connection[Any],
    frontier: list[FlowKey],
    scope: flows_model.Scope,
    listening: dict[FlowKey, Listens],
    *,
    outgoing: bool,
) -> dict[tuple[FlowKey, FlowKey], str]:
    """Every dependency leading to a flow of `frontier` (and, with `outgoing`, from one), among
    the flows of `scope`; `listening` is every listener of the scope."""
    found: dict[tuple[FlowKey, FlowKey], str] = {}
    for caller, target in flows_model.callers(conn, frontier, scope):
        _link(found, caller, target, "FLOW_TASK")
    heard = {flow: listening[flow] for flow in frontier if listening.get(flow)}
    for flow, sources in flows_model.listened_to_each(conn, heard, scope).items():
        for source in sources:
            if source != flow:
                _link(found, source, flow, "FLOW_TRIGGER")
    if outgoing:
        for source, callee in flows_model.callees(conn, frontier, scope):
            _link(found, source, callee, "FLOW_TASK")
        for listener, listens in listening.items():
            for flow in frontier:
                if flow != listener and graph.listens_to(listens, flow):
                    _link(found, flow, listener, "FLOW_TRIGGER")
    return found


def _snapshot(conn: psycopg.Connection[Any]) -> None:
    """For the current transaction: every query of one graph sees the same flows."""
    conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")


def _walk(
    conn: psycopg.Connection[Any],
    focus: FlowKey,
    scope: flows_model.Scope,
    *,
    destination_only: bool,
    expand_all: bool,
) -> list[Dependency] | None:
    """The dependencies touching `focus` (leading to it only, with `destination_only`), and
    with `expand_all` those of every flow they reach; None when the read model
    has no `focus` the caller may see."""
    if not flows_model.visible(conn, focus, scope):
        return None
    listening = flows_model.listeners(conn, scope)
    outgoing = not destination_only
    seen = {focus}
    if expand_all:
        # The flows reached: through subflow calls in one recursive query, then through Flow
        # triggers (the sources of the listeners reached, and unless `destination_only` the
        # listeners of the flows reached), again until nothing new is reached. A chain of
        # calls costs one query, not one per flow along it.
        frontier = [focus]
        while frontier:
            new = flows_model.call_component(conn, frontier, scope, outgoing=outgoing) - seen
            new |= set(frontier)
            seen |= new
            heard = {f: listening[f] for f in new if listening.get(f)}
            reached = {s for sources in flows_model.listened_to_each(conn, heard, scope).values()
                       for s in sources}  # fmt: skip
            if outgoing:
                reached |= {
                    listener
                    for listener, listens in listening.items()
                    if any(graph.listens_to(listens, f) for f in new)
                }
            frontier = sorted(reached - seen)
    found = _touching(conn, sorted(seen), scope, listening, outgoing=outgoing)
    return _edges(found)


def _namespace_graph(
    conn: psycopg.Connection[Any], namespace: str, scope: flows_model.Scope
) -> tuple[list[FlowKey], list[Dependency]]:
    """Every flow of `namespace` the caller may see, and the dependencies between them."""
    flows = flows_model.namespace_flows(conn, namespace, scope)
    found: dict[tuple[FlowKey, FlowKey], str] = {}
    for caller, callee in flows_model.namespace_calls(conn, namespace, scope):
        _link(found, caller, callee, "FLOW_TASK")
    for listener, listens in flows_model.listeners(conn, scope, namespace).items():
        for flow in flows:
            if flow != listener and graph.listens_to(listens, flow):
                _link(found, flow, listener, "FLOW_TRIGGER")
    return flows, _edges(found)


def blueprint(ctx: ServerContext) -> Blueprint:
    """The routes, on `ctx`'s store and database."""
    routes = Blueprint("topology", __name__)
    store, db = ctx.store, ctx.db

    @routes.get("/api/v1/flows/<namespace>/<flow_id>/graph")
    @access("viewer")
    async def flow_graph(namespace: str, flow_id: str) -> Response:
        """The task graph of a flow revision (Kestra's FlowGraph), the latest by default."""
        _record, flow = await commands.flow_to_run(store, namespace, flow_id, _revision_arg())
        return _answer(await bodies.off_loop(graph.flow_graph, flow))

    @routes.post("/api/v1/flows/graph")
    @access("viewer")
    async def source_graph() -> Response:
        """The task graph of a flow sent as YAML (validated as a deploy would)."""
        source = await bodies.yaml_text()
        flow = await bodies.off_loop(parse_flow, source)
        return _answer(await bodies.off_loop(graph.flow_graph, flow))

    @routes.get("/api/v1/flows/<namespace>/<flow_id>/dependencies")
    @access("viewer")
    async def flow_dependencies(namespace: str, flow_id: str) -> Response:
        """The dependencies of a flow (Kestra's FlowTopologyGraph).

        The flows leading to it and, unless `destinationOnly`, those it leads to; `expandAll`
        follows them recursively."""
        destination_only, expand_all = _bool_arg("destinationOnly"), _bool_arg("expandAll")
        focus = FlowKey(namespace, flow_id)
        scope = namespace_filter("f.namespace")

        def read(conn: psycopg.Connection[Any]) -> list[Dependency] | None:
            with conn.transaction():
                _snapshot(conn)
                return _walk(
                    conn, focus, scope, destination_only=destination_only, expand_all=expand_all
                )

        edges = await db.run(read)
        if edges is None:
            # The read model may not hold a flow deployed a moment ago: its stream says
            # whether it exists (NotFound when it does not, or was deleted).
            await commands.get_flow(store, namespace, flow_id)
            edges = []
        body = graph.flow_dependencies(
            edges,
            focus,
            destination_only=destination_only,
            expand_all=expand_all,
            tenant=commands.TENANT,
        )
        return _answer(body)

    @routes.get("/api/v1/namespaces/<namespace>/dependencies")
    @access("viewer")
    async def namespace_dependencies(namespace: str) -> Response:
        """Every flow of a namespace and the dependencies between them."""
        scope = namespace_filter("f.namespace")

        def read(conn: psycopg.Connection[Any]) -> tuple[list[FlowKey], list[Dependency]]:
            with conn.transaction():
                _snapshot(conn)
                return _namespace_graph(conn, namespace, scope)

        flows, edges = await db.run(read)
        body = graph.namespace_dependencies(edges, flows, namespace, commands.TENANT)
        return _answer(body)

    return routes
