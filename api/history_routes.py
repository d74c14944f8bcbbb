"""History routes: time travel, an execution's timeline, the audit trail, flow revision diffs.

- `GET /api/v1/executions/{id}?asOf=<position or ISO time>` and `GET /api/v1/flows/{ns}/{id}
  ?asOf=...` (served by api/app.py's routes, which call `execution_as_of` / `flow_as_of`
  here): the object as it stood then, folded from its stream up to that point; the answer's
  `X-Tiercel-As-Of-Position` header names the last position folded.
- `GET /api/v1/executions/{id}/timeline?page=&size=&after=`: one entry per event of the
  execution and of its attempts (position, time, actor, type, what changed), oldest first;
  each entry's `position` may be passed as `asOf`.
- `GET /api/v1/audit?kind=&resourceId=&namespace=&actor=&action=&type=&startDate=&endDate=
  &page=&size=&before=`: the commands recorded in the log, newest first, from the `audit`
  read model (projections/audit.py); `GET /api/v1/audit/export` (or `Accept:
  application/x-ndjson` on the search) streams every match as JSON Lines.
- `GET /api/v1/flows/{ns}/{id}/revisions/{a}/diff/{b}`: who deployed each revision, when, and
  the unified diff of their sources.

Who sees the audit trail: an admin whose account reaches every namespace sees every row; any
other principal (viewer and up) sees the rows of the namespaces it reaches, and never those
that belong to no namespace (users, tokens, logins).

`install_request_meta` makes every event appended while a request is handled carry the
client's address and the reason the caller gave (`reason` query parameter or
`X-Tiercel-Reason` header), through `engine.audit.request_meta`.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from typing import Any

import msgspec
from quart import Blueprint, Response, request
from quart_trio import QuartTrio

from api import bodies
from api.auth import access, namespace_filter, principal
from engine import accounts, audit, commands, history
from engine import events as ev
from engine.errors import InvalidRequest, NotFound, Problem
from engine.execution import Execution, iso
from engine.server import ServerContext
from engine.store import EventStore
from projections import audit as audit_model

AS_OF_HEADER = "X-Tiercel-As-Of-Position"
REASON_HEADER = "X-Tiercel-Reason"
NDJSON = "application/x-ndjson"
MAX_PAGE_SIZE = 1000
MAX_OFFSET = 100_000
"""Rows a page may start at, at most: deeper, continue with `before=<next>`."""
EXPORT_BATCH = 1000
MAX_FILTER = 500
"""Characters of a filter value, at most."""


def _query(name: str, description: str, **schema: Any) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "description": description,
        "schema": schema or {"type": "string"},
    }


_AS_OF = _query(
    "asOf",
    "A past moment: a position of the log (as the timeline lists them) or an ISO-8601 time; "
    "the answer is the object as it stood then (header X-Tiercel-As-Of-Position)",
)
_AUDIT_FILTERS = [
    _query("kind", "Resource kind: flow, execution, trigger, user, token, secret, kv, ..."),
    _query("resourceId", "The resource's id (a flow's id, an execution's id, a KV key, ...)"),
    _query("namespace", "This namespace and those under it"),
    _query("actor", "Who: user:alice, token:ci (abc123), anonymous, scheduler, ..."),
    _query("action", "create, update, delete, kill, resume, labels, purge, set, login, ..."),
    _query("type", "The event type (FlowUpdated, ExecutionKillRequested, ...)"),
    _query("startDate", "Recorded at or after (ISO-8601)", type="string", format="date-time"),
    _query("endDate", "Recorded at or before (ISO-8601)", type="string", format="date-time"),
    _query("before", "Only entries older than this position (the `next` of a page)"),
]
_PAGE = [
    _query("page", "Page number, from 1", type="integer", minimum=1),
    _query("size", "Entries per page (at most 1000)", type="integer", minimum=1),
]
QUERY_PARAMETERS: dict[tuple[str, str], list[dict[str, Any]]] = {
    ("GET", "/api/v1/executions/{execution_id}"): [_AS_OF],
    ("GET", "/api/v1/flows/{namespace}/{flow_id}"): [_AS_OF],
    ("GET", "/api/v1/executions/{execution_id}/timeline"): [
        *_PAGE,
        _query("after", "Only entries after this position", type="integer"),
    ],
    ("GET", "/api/v1/audit"): [*_AUDIT_FILTERS, *_PAGE],
    ("GET", "/api/v1/audit/export"): _AUDIT_FILTERS,
}
"""The query parameters of the history routes (and of `asOf` on the routes of api/app.py),
as the OpenAPI document lists them."""


# --- the request's meta ----------------------------------------------------------------------


def install_request_meta(app: QuartTrio) -> None:
    """Before each request: what events appended while it is handled add to their meta."""

    async def set_meta() -> None:
        meta: dict[str, Any] = {}
        if request.remote_addr:
            meta["clientAddress"] = request.remote_addr
        reason = request.args.get("reason")
        if reason is None:
            reason = request.headers.get(REASON_HEADER)
        if reason is not None:
            reason = reason.strip()
            if len(reason) > audit.MAX_REASON:
                raise InvalidRequest(
                    f"The reason holds {len(reason)} characters; at most {audit.MAX_REASON}",
                    [Problem("too long", "reason")],
                )
            if any(ord(ch) < 32 and ch not in "\t\n" for ch in reason):
                raise InvalidRequest(
                    "The reason may not hold control characters", [Problem("invalid", "reason")]
                )
            if reason:
                meta["reason"] = reason
        # Set on every request, so nothing of an earlier request served by the same task
        # is carried over.
        audit.request_meta.set(meta)

    # Before the access checks: a login they record carries the client's address too.
    app.before_request_funcs.setdefault(None, []).insert(0, set_meta)


# --- time travel ------------------------------------------------------------------------------


def _as_of_arg() -> history.AsOf:
    raw = request.args.get("asOf", "")
    if not raw.strip():
        raise InvalidRequest(
            "Query parameter 'asOf' is empty: give a position or an ISO-8601 time",
            [Problem("empty", "asOf")],
        )
    if request.args.get("at"):
        raise InvalidRequest(
            "Give either 'at' or 'asOf', not both ('asOf' takes a position too)",
            [Problem("both given", "at")],
        )
    return history.parse_as_of(raw)


async def execution_as_of(store: EventStore, execution_id: str) -> tuple[Execution, dict[str, str]]:
    """The execution as it stood at the request's `asOf`, and the answer's headers."""
    point = _as_of_arg()
    events = await commands.execution_history(store, execution_id)
    position = history.execution_position(events, execution_id, point)
    state = commands.state_of(events, at_seq=position)
    if state.purged:
        raise NotFound(f"Execution {execution_id} had been purged by {point.describe()}")
    return state, {AS_OF_HEADER: str(position)}


async def flow_as_of(
    store: EventStore, namespace: str, flow_id: str
) -> tuple[commands.FlowRecord, dict[str, str]]:
    """The flow as it stood at the request's `asOf` (deleted or not), and the answer's
    headers (the position of the event that made it so, and who recorded it)."""
    point = _as_of_arg()
    events = await store.read_stream(ev.flow_stream(namespace, flow_id))
    found = history.flow_as_of(events, namespace, flow_id, point)
    record = commands.FlowRecord(
        found.namespace, found.id, found.revision, found.source, found.deleted, iso(found.updated)
    )
    headers = {AS_OF_HEADER: str(found.position)}
    if found.actor:
        headers["X-Tiercel-Actor"] = found.actor
    return record, headers


# --- routes -------------------------------------------------------------------------------------


def _answer(body: Any, status: int = 200) -> Response:
    return Response(bodies.json_bytes(body), status=status, content_type="application/json")


def _int_arg(name: str, default: int | None, minimum: int, maximum: int) -> int | None:
    raw = request.args.get(name)
    if raw is None or raw == "":
        return default
    if not raw.strip().isdigit() or not minimum <= int(raw) <= maximum:
        raise InvalidRequest(
            f"Query parameter '{name}' must be an integer from {minimum} to {maximum}, got "
            f"{raw[:40]!r}",
            [Problem("not an integer in range", name)],
        )
    return int(raw)


def _text_arg(name: str) -> str | None:
    value = request.args.get(name)
    if value is None or value == "":
        return None
    if len(value) > MAX_FILTER:
        raise InvalidRequest(
            f"Query parameter '{name}' holds at most {MAX_FILTER} characters",
            [Problem("too long", name)],
        )
    return value


def _time_arg(name: str) -> dt.datetime | None:
    raw = request.args.get(name)
    if raw is None or raw == "":
        return None
    point = history.parse_as_of(raw, name)
    if point.time is None:
        raise InvalidRequest(
            f"Query parameter '{name}' must be an ISO-8601 time such as 2024-05-01T12:00:00Z, "
            f"got {raw[:40]!r}",
            [Problem("not a time", name)],
        )
    return point.time


def _search() -> audit_model.Search:
    kind = _text_arg("kind")
    return audit_model.Search(
        kind=kind.lower() if kind else None,
        resource_id=_text_arg("resourceId"),
        namespace=_text_arg("namespace"),
        actor=_text_arg("actor"),
        action=_text_arg("action"),
        event_type=_text_arg("type"),
        start=_time_arg("startDate"),
        end=_time_arg("endDate"),
        before=_int_arg("before", None, 1, history.MAX_POSITION),
    )


def _scope() -> tuple[str, list[Any]]:
    """The audit rows the principal may see (see the module's description)."""
    who = principal()
    if who.role == accounts.ADMIN and not who.namespaces:
        return "true", []
    allowed, params = namespace_filter()
    return f"namespace IS NOT NULL AND {allowed}", params


def entry_json(row: dict[str, Any]) -> dict[str, Any]:
    """One audit row as the API shows it."""
    out: dict[str, Any] = {
        "position": row["seq"],
        "date": iso(row["recorded_at"]),
        "actor": row["actor"],
        "kind": row["kind"],
        "resourceId": row["resource_id"],
        "namespace": row["namespace"],
        "action": row["action"],
        "type": row["event_type"],
        "stream": row["stream_id"],
        "version": row["version"],
        "clientAddress": row["client_address"],
        "reason": row["reason"],
        "details": row["details"],
    }
    details = row["details"] or {}
    if row["kind"] == "flow" and row["namespace"]:
        base = f"/api/v1/flows/{row['namespace']}/{row['resource_id']}"
        links = {"asOf": f"{base}?asOf={row['seq']}"}
        previous = details.get("previousRevision")
        if row["event_type"] == "FlowUpdated" and isinstance(previous, int):
            links["diff"] = f"{base}/revisions/{previous}/diff/{details.get('revision')}"
        out["links"] = links
    elif row["kind"] == "execution":
        base = f"/api/v1/executions/{row['resource_id']}"
        out["links"] = {"asOf": f"{base}?asOf={row['seq']}", "timeline": f"{base}/timeline"}
    return out


def blueprint(ctx: ServerContext) -> Blueprint:
    """The history routes, on `ctx`'s store and database."""
    routes = Blueprint("history", __name__)
    store, db = ctx.store, ctx.db

    @routes.get("/api/v1/executions/<execution_id>/timeline")
    @access("viewer")
    async def execution_timeline(execution_id: str) -> Response:
        """One entry per event of an execution and its attempts, oldest first."""
        page = _int_arg("page", 1, 1, MAX_OFFSET) or 1
        size = _int_arg("size", 100, 1, MAX_PAGE_SIZE) or 100
        after = _int_arg("after", None, 0, history.MAX_POSITION)
        events = await commands.execution_history(store, execution_id)
        entries = await bodies.off_loop(history.timeline, events)
        if after is not None:
            entries = [e for e in entries if e.position > after]
        start = (page - 1) * size
        chosen = entries[start : start + size]
        more = start + size < len(entries)
        return _answer(
            {
                "results": msgspec.to_builtins(chosen),
                "total": len(entries),
                "next": chosen[-1].position if more and chosen else None,
            }
        )

    @routes.get("/api/v1/audit")
    @access("viewer")
    async def audit_search() -> Response:
        """The commands recorded in the log, newest first (JSON Lines with Accept:
        application/x-ndjson)."""
        search = _search()
        if _wants_ndjson():
            return _export(search)
        page = _int_arg("page", 1, 1, MAX_OFFSET) or 1
        size = _int_arg("size", 50, 1, MAX_PAGE_SIZE) or 50
        offset = (page - 1) * size
        if offset > MAX_OFFSET:
            raise InvalidRequest(
                f"Page {page} of size {size} starts at row {offset}; pages start at most at "
                f"row {MAX_OFFSET}: continue with before=<next> instead"
            )
        allowed, params = _scope()
        rows, total, estimated = await db.run(
            lambda conn: audit_model.page(conn, search, allowed, params, offset=offset, size=size)
        )
        return _answer(
            {
                "results": [entry_json(r) for r in rows],
                "total": total,
                "totalIsEstimate": estimated,
                "next": rows[-1]["seq"] if len(rows) == size else None,
            }
        )

    @routes.get("/api/v1/audit/export")
    @access("viewer")
    async def audit_export() -> Response:
        """Every matching command as JSON Lines, newest first."""
        return _export(_search())

    def _export(search: audit_model.Search) -> Response:
        allowed, params = _scope()

        async def lines() -> AsyncIterator[bytes]:
            before = search.before
            while True:
                query = audit_model.Search(**{**search.__dict__, "before": before})
                rows = await db.run(
                    lambda conn, q=query: audit_model.batch(conn, q, allowed, params, EXPORT_BATCH)
                )
                if rows:
                    yield b"".join(bodies.json_bytes(entry_json(r)) + b"\n" for r in rows)
                if len(rows) < EXPORT_BATCH:
                    return
                before = rows[-1]["seq"]

        response = Response(lines(), content_type=NDJSON)
        response.timeout = None  # a large export takes a while
        response.headers["Content-Disposition"] = 'attachment; filename="audit.jsonl"'
        return response

    @routes.get("/api/v1/flows/<namespace>/<flow_id>/revisions/<a>/diff/<b>")
    @access("viewer")
    async def flow_revision_diff(namespace: str, flow_id: str, a: str, b: str) -> Response:
        """Who deployed two revisions of a flow, when, and the line diff of their sources."""
        numbers = []
        for name, raw in (("a", a), ("b", b)):
            if not raw.isdigit() or not 1 <= int(raw) <= 2**31 - 1:
                raise InvalidRequest(
                    f"Revision {raw[:40]!r} is not a revision number (1, 2, ...)",
                    [Problem("not a revision number", name)],
                )
            numbers.append(int(raw))
        events = await store.read_stream(ev.flow_stream(namespace, flow_id))
        old, new, diff = history.revision_diff(events, namespace, flow_id, *numbers)
        return _answer(
            {
                "namespace": namespace,
                "flowId": flow_id,
                "from": _revision_json(old),
                "to": _revision_json(new),
                "diff": diff,
            }
        )

    return routes


def _revision_json(revision: history.Revision) -> dict[str, Any]:
    return {
        "revision": revision.revision,
        "actor": revision.actor,
        "date": iso(revision.time),
        "position": revision.position,
        "clientAddress": revision.client_address,
        "reason": revision.reason,
        "source": revision.source,
    }


def _wants_ndjson() -> bool:
    accepted = request.accept_mimetypes
    return bool(accepted) and accepted.best_match(["application/json", NDJSON]) == NDJSON


def register(app: QuartTrio, ctx: ServerContext) -> None:
    """Serve the history routes on `app` and record each request's client address and
    reason with the events it appends."""
    install_request_meta(app)
    app.register_blueprint(blueprint(ctx))
