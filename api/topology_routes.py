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

A dependency graph is computed from one query of the flows read model (the latest revision of
every flow the caller may see, at most `MAX_FLOWS`); what each revision names is parsed once
and kept, since a revision never changes.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

from quart import Blueprint, Response, request

from api import bodies
from api.auth import access, namespace_filter
from engine import commands, graph, safe_yaml
from engine.errors import InvalidRequest, TiercelError
from engine.flow import flow_from_dict, parse_flow
from engine.graph import FlowKey, FlowLinks
from engine.server import ServerContext
from projections import flows as flows_model

MAX_FLOWS = 20_000
"""Flows one dependency graph reads at most; beyond it the answer says it is partial
(`X-Tiercel-Partial: true`)."""
KEPT_LINKS = 50_000
"""Revisions whose links are kept in memory (least recently used first out)."""
PARTIAL_HEADER = "X-Tiercel-Partial"


def _answer(body: Any, headers: dict[str, str] | None = None) -> Response:
    return Response(
        bodies.json_bytes(body), status=200, content_type="application/json", headers=headers
    )


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


def _links_of(source: str) -> FlowLinks:
    """What a recorded revision names; nothing when it can no longer be read."""
    try:
        document = safe_yaml.load(source)
        if not isinstance(document, dict):
            return graph.NO_LINKS
        return graph.flow_links(flow_from_dict(document), document)
    except (TiercelError, ValueError, TypeError):
        return graph.NO_LINKS


def blueprint(ctx: ServerContext) -> Blueprint:
    """The routes, on `ctx`'s store and database."""
    routes = Blueprint("topology", __name__)
    store, db = ctx.store, ctx.db
    kept: OrderedDict[tuple[str, str, int], FlowLinks] = OrderedDict()

    async def dependencies(
        namespace: str | None = None,
    ) -> tuple[list[FlowKey], list[graph.Dependency], bool]:
        """Every flow the caller may see (of `namespace` only, when given), the dependencies
        between them, and whether there were more flows than one graph reads."""
        allowed, params = namespace_filter()
        if namespace is not None:
            allowed, params = f"{allowed} AND namespace = %s", [*params, namespace]
        rows = await db.run(
            lambda conn: flows_model.latest_for_links(conn, allowed, params, MAX_FLOWS + 1)
        )
        partial = len(rows) > MAX_FLOWS
        rows = rows[:MAX_FLOWS]
        unread = [r for r in rows if r[3] is not None and (r[0], r[1], r[2]) not in kept]

        def parse() -> list[FlowLinks]:
            return [_links_of(str(r[3])) for r in unread]

        for r, read in zip(unread, await bodies.off_loop(parse), strict=True):
            kept[(r[0], r[1], r[2])] = read
        links: dict[FlowKey, FlowLinks] = {}
        for namespace, flow_id, revision, source in rows:
            key = (namespace, flow_id, revision)
            found = kept.get(key) if source is not None else None
            if found is not None:
                kept.move_to_end(key)
            links[FlowKey(namespace, flow_id)] = found or graph.NO_LINKS
        while len(kept) > KEPT_LINKS:
            kept.popitem(last=False)
        edges = await bodies.off_loop(graph.dependency_edges, links)
        return list(links), edges, partial

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
        flows, edges, partial = await dependencies()
        focus = FlowKey(namespace, flow_id)
        if focus not in flows and not partial:
            # The read model may not hold a flow deployed a moment ago: its stream says
            # whether it exists (NotFound when it does not, or was deleted).
            await commands.get_flow(store, namespace, flow_id)
        body = graph.flow_dependencies(
            edges,
            focus,
            destination_only=destination_only,
            expand_all=expand_all,
            tenant=commands.TENANT,
        )
        return _answer(body, {PARTIAL_HEADER: "true"} if partial else None)

    @routes.get("/api/v1/namespaces/<namespace>/dependencies")
    @access("viewer")
    async def namespace_dependencies(namespace: str) -> Response:
        """Every flow of a namespace and the dependencies between them."""
        flows, edges, partial = await dependencies(namespace)
        body = graph.namespace_dependencies(edges, flows, namespace, commands.TENANT)
        return _answer(body, {PARTIAL_HEADER: "true"} if partial else None)

    return routes
