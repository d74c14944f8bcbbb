"""Bulk operations on executions (engine/bulk.py runs them as jobs with streams of their own).

- `POST /api/v1/executions/bulk/{action}` (replay, restart, kill, delete, labels, state): the
  body chooses the executions, by `ids: [...]`, by `query: "state:FAILED namespace:a.b"` (as
  `tiercel executions ... --query` takes it), or by `filters: {namespace: ..., state: [...]}`
  (the parameters of `GET /api/v1/executions/search`); with `requestId` (a re-submitted request
  finds the job it made), `dryRun` (the count and a sample of what would happen; nothing is
  recorded), `ratePerSecond`, and what the action takes (`labels`, `state`, `revision`,
  `deleteLogs`, `deleteStorage`). Answers the job (202), or the dry run (200).
- `GET /api/v1/bulk`: the latest jobs; `GET /api/v1/bulk/{jobId}`: one job's progress, and
  once it ended (or was cancelled) the outcome of each item; `GET /api/v1/bulk/{jobId}/follow`:
  its progress as server-sent events until it ends.
- `POST /api/v1/bulk/{jobId}/pause|resume|cancel`.
- Kestra's bulk paths, each made a job: `POST /api/v1/executions/{replay|restart|labels}/by-ids`
  and `.../by-query`, `DELETE /api/v1/executions/kill/by-ids|by-query`, `DELETE
  /api/v1/executions/by-query`. They answer Kestra's `{count}`, and `jobId`.

A selection is limited to the caller's namespaces: a query only finds executions in them, and
ids outside them (or unknown) are skipped and reported, never acted on. A job may be seen and
steered by whoever reaches every namespace of its items.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import trio
from quart import Blueprint, Response, request

from api import bodies, execution_filters
from api.auth import access, actor, namespace_filter, principal
from engine import bulk
from engine.errors import Forbidden, InvalidRequest
from engine.server import ServerContext
from projections import executions as executions_model

SAMPLE_SIZE = 20
"""Items a dry run describes one by one."""
FOLLOW_EVERY = 0.5
"""Seconds between two looks at a followed job."""
FOLLOW_HEARTBEAT = 15.0
MAX_ID_LENGTH = 200
_SELECTORS = ("ids", "query", "filters")
_KNOWN = {
    *_SELECTORS,
    "requestId",
    "dryRun",
    "ratePerSecond",
    "labels",
    "state",
    "revision",
    "deleteLogs",
    "deleteStorage",
    "reason",
}


def _json(body: Any, status: int = 200) -> Response:
    return Response(bodies.json_bytes(body), status=status, content_type="application/json")


def _bool_arg(name: str, default: bool) -> bool:
    raw = request.args.get(name)
    if raw is None or raw == "":
        return default
    if raw.lower() not in ("true", "false"):
        raise InvalidRequest(f"Query parameter '{name}' must be true or false, got {raw!r}")
    return raw.lower() == "true"


def _ids(value: Any, what: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(i, str) and i for i in value):
        raise InvalidRequest(f'{what} must be a list of execution ids: ["id", ...]')
    if len(value) > bulk.MAX_ITEMS:
        raise InvalidRequest(f"{what} holds {len(value)} ids; a bulk job takes {bulk.MAX_ITEMS}")
    if any(len(i) > MAX_ID_LENGTH for i in value):
        raise InvalidRequest(f"An execution id holds at most {MAX_ID_LENGTH} characters")
    return list(dict.fromkeys(value))


def _no_nul(value: Any, where: str = "the body") -> None:
    """Refuse a NUL character anywhere in a request (PostgreSQL's text and jsonb cannot hold
    one: it would fail the query, not name what is wrong)."""
    if isinstance(value, str):
        if "\x00" in value:
            raise InvalidRequest(f"{where} holds a NUL character")
    elif isinstance(value, dict):
        for k, v in value.items():
            _no_nul(k, where)
            _no_nul(v, f"{where}.{k}" if isinstance(k, str) and "\x00" not in k else where)
    elif isinstance(value, list):
        for v in value:
            _no_nul(v, where)


def _filter_pairs(filters: Any) -> list[tuple[str, str]]:
    """The `filters` object of a body as the search's query-string pairs."""
    if not isinstance(filters, dict):
        raise InvalidRequest(
            "filters must be an object of the executions search's parameters, e.g. "
            '{"namespace": "company.team", "state": ["FAILED"]}'
        )
    pairs: list[tuple[str, str]] = []
    for name, value in filters.items():
        if name in ("page", "size", "sort", "after"):
            raise InvalidRequest(f"filters.{name}: a bulk operation takes every match, not a page")
        values = value if isinstance(value, list) else [value]
        for v in values:
            if not isinstance(v, (str, int, float, bool)):
                raise InvalidRequest(f"filters.{name} must be a string or a list of strings")
            pairs.append((str(name), str(v).lower() if isinstance(v, bool) else str(v)))
    return pairs


class Selection:
    """The executions a request chose: the ids to act on, in order, with their namespace and
    state, and those skipped with why."""

    def __init__(self) -> None:
        self.items: list[tuple[str, str, str, str]] = []  # id, namespace, flow id, state
        self.skipped: dict[str, str] = {}

    @property
    def namespaces(self) -> list[str]:
        return sorted({r[1] for r in self.items})


def blueprint(ctx: ServerContext) -> Blueprint:
    """The routes, on `ctx`'s store and database."""
    routes = Blueprint("bulk", __name__)
    store, db = ctx.store, ctx.db

    async def select_ids(ids: list[str]) -> Selection:
        allowed, params = namespace_filter()
        rows = await db.fetchall(
            f"SELECT id, namespace, flow_id, state, {allowed} AS reachable FROM executions"
            " WHERE id = ANY(%s::text[])",
            (*params, ids),
        )
        found = {r["id"]: r for r in rows}
        out = Selection()
        for i in ids:
            row = found.get(i)
            if row is None:
                out.skipped[i] = "execution not found"
            elif not row["reachable"]:
                out.skipped[i] = f"namespace {row['namespace']} is outside your namespaces"
            else:
                out.items.append((i, row["namespace"], row["flow_id"], row["state"]))
        return out

    async def select_search(search: executions_model.Search) -> Selection:
        allowed, params = namespace_filter()

        def q(conn: Any) -> list[tuple[Any, ...]]:
            where = executions_model.prepare(conn, allowed, params, search)
            return conn.execute(
                f"SELECT id, namespace, flow_id, state FROM executions WHERE {where.sql}"
                " ORDER BY start_date, id LIMIT %s",
                [*where.params, bulk.MAX_ITEMS + 1],
                prepare=False,
            ).fetchall()

        rows = await db.run(q)
        if len(rows) > bulk.MAX_ITEMS:
            raise InvalidRequest(
                f"The query finds more than {bulk.MAX_ITEMS} executions, the most one bulk job "
                "takes: narrow it (a namespace, a time range) or split it"
            )
        out = Selection()
        out.items = [(r[0], r[1], r[2], r[3]) for r in rows]
        return out

    async def selection_of(body: dict[str, Any]) -> tuple[Selection, dict[str, Any]]:
        given = [k for k in _SELECTORS if body.get(k) not in (None, "", [], {})]
        if len(given) != 1:
            raise InvalidRequest(
                'Choose the executions with one of ids: [...], query: "state:FAILED ..." '
                "or filters: {...}" + (f" (got {', '.join(given)})" if given else "")
            )
        key = given[0]
        if key == "ids":
            ids = _ids(body["ids"], "ids")
            return await select_ids(ids), {"ids": len(ids)}
        if key == "query":
            text = body["query"]
            if not isinstance(text, str) or len(text) > 4096:
                raise InvalidRequest("query must be a string of at most 4096 characters")
            search = executions_model.parse_query(text)
            return await select_search(search), {"query": text}
        pairs = _filter_pairs(body["filters"])
        filters = execution_filters.read_filters(pairs, dt.datetime.now(dt.UTC))
        if filters.nothing:
            return Selection(), {"filters": body["filters"]}
        return await select_search(filters.search), {"filters": body["filters"]}

    def check_role(action: str) -> None:
        # Deleting an execution needs what deleting one needs (DELETE /executions/{id}).
        if action == "delete" and not principal().has_role("editor"):
            who = principal()
            raise Forbidden(f"{who.actor} has the role {who.role}; this needs editor or above")

    async def start(action: str, body: dict[str, Any], selection: Selection, chosen: dict[str, Any],
                    *, kestra: bool = False) -> Response:  # fmt: skip
        check_role(action)
        params = bulk.check_params(action, body)
        rate = body.get("ratePerSecond", 0) or 0
        if not isinstance(rate, (int, float)) or isinstance(rate, bool):
            raise InvalidRequest(f"ratePerSecond must be a number, got {rate!r}")
        # The Idempotency-Key header, which other POSTs of the API take, works as a requestId.
        request_id = body.get("requestId") or request.headers.get("Idempotency-Key")
        if request_id is not None and (
            not isinstance(request_id, str) or not 0 < len(request_id) <= 255
        ):
            raise InvalidRequest("requestId must be a string of 1 to 255 characters")
        reason = body.get("reason")
        if reason is not None and (not isinstance(reason, str) or len(reason) > 1000):
            raise InvalidRequest("reason must be a string of at most 1000 characters")
        if body.get("dryRun") is True:
            return _json(dry_run(action, params, selection))
        job, created = await bulk.submit(
            store,
            action=action,
            selection=chosen,
            item_ids=[r[0] for r in selection.items],
            params=params,
            actor=actor(),
            request_id=request_id,
            skipped=selection.skipped,
            namespaces=selection.namespaces,
            rate=float(rate),
            reason=reason,
        )
        answer = bulk.job_json(job)
        answer["created"] = created
        if kestra:
            answer = {"count": job.total, "jobId": job.id, **answer}
        return _json(answer, 202 if created else 200)

    def dry_run(action: str, params: dict[str, Any], selection: Selection) -> dict[str, Any]:
        refused = 0
        sample = []
        for xid, namespace, flow_id, state in selection.items:
            why = bulk.expected_refusal(action, state)
            refused += why is not None
            if len(sample) < SAMPLE_SIZE:
                entry = {
                    "id": xid,
                    "namespace": namespace,
                    "flowId": flow_id,
                    "state": state,
                    "outcome": "REFUSED" if why else "WOULD_" + action.upper(),
                }
                if why:
                    entry["message"] = why
                sample.append(entry)
        return {
            "dryRun": True,
            "action": action,
            "params": params,
            "count": len(selection.items),
            "wouldApply": len(selection.items) - refused,
            "wouldBeRefused": refused,
            "skipped": [{"id": k, "message": v} for k, v in selection.skipped.items()],
            "sample": sample,
        }

    def action_of(action: str) -> str:
        if action not in bulk.ACTIONS:
            raise InvalidRequest(
                f"Unknown bulk action {action!r}: it is one of {', '.join(bulk.ACTIONS)}"
            )
        return action

    async def job_for_caller(job_id: str) -> bulk.BulkJob:
        if not job_id or len(job_id) > MAX_ID_LENGTH or "\x00" in job_id:
            raise InvalidRequest("A bulk job id holds 1 to 200 characters, none of them NUL")
        job = await bulk.load_job(store, job_id)
        who = principal()
        outside = [n for n in job.namespaces if not who.reaches(n)]
        if outside:
            raise Forbidden(
                f"{who.actor} may not reach namespace {outside[0]!r} of bulk job {job_id} "
                f"(allowed: {', '.join(who.namespaces)})"
            )
        return job

    @routes.post("/api/v1/executions/bulk/<action>")
    @access("runner")
    async def submit_bulk(action: str) -> Response:
        """Start a bulk operation on executions chosen by ids, query or filters (or, with
        dryRun, tell what it would do)."""
        action = action_of(action)
        check_role(action)
        body = await bodies.json_object(
            "{ids|query|filters, requestId, dryRun, ratePerSecond, labels, state, ...}"
        )
        _no_nul(body)
        unknown = sorted(set(body) - _KNOWN)
        if unknown:
            raise InvalidRequest(
                f"Unknown field(s) {', '.join(unknown)} in a bulk request; it takes "
                f"{', '.join(sorted(_KNOWN))}"
            )
        if "dryRun" in body and not isinstance(body["dryRun"], bool):
            raise InvalidRequest("dryRun must be true or false")
        bulk.check_params(action, body)
        selection, chosen = await selection_of(body)
        return await start(action, body, selection, chosen)

    @routes.get("/api/v1/bulk")
    @access("viewer")
    async def list_bulk_jobs() -> Response:
        """The latest bulk jobs the caller may see, newest first."""
        who = principal()
        jobs = await bulk.list_jobs(store, limit=200)
        visible = [j for j in jobs if all(who.reaches(n) for n in j.namespaces)]
        return _json({"results": [bulk.job_json(j) for j in visible], "total": len(visible)})

    @routes.get("/api/v1/bulk/<job_id>")
    @access("viewer")
    async def get_bulk_job(job_id: str) -> Response:
        """A bulk job's progress (done, failed, total, state); once it ended or was cancelled,
        the outcome of each item."""
        job = await job_for_caller(job_id)
        return _json(bulk.job_json(job, items=job.state in (bulk.SUCCESS, bulk.CANCELLED)))

    @routes.get("/api/v1/bulk/<job_id>/follow")
    @access("viewer")
    async def follow_bulk_job(job_id: str) -> Response:
        """A bulk job's progress as server-sent events (`progress`, then `end`) until it ends,
        is paused or is cancelled."""
        first = await job_for_caller(job_id)

        async def stream() -> Any:
            job = first
            sent: dict[str, Any] | None = None
            quiet = 0.0
            while True:
                now = bulk.summary(job)
                if now != sent:
                    final = job.state != bulk.RUNNING
                    kind = b"end" if final else b"progress"
                    yield b"event: " + kind + b"\ndata: " + bodies.json_bytes(now) + b"\n\n"
                    sent, quiet = now, 0.0
                    if final:
                        return
                elif quiet >= FOLLOW_HEARTBEAT:
                    yield b": keep-alive\n\n"
                    quiet = 0.0
                await trio.sleep(FOLLOW_EVERY)
                quiet += FOLLOW_EVERY
                job = await bulk.load_job(store, job_id)

        response = Response(stream(), content_type="text/event-stream")
        response.timeout = None
        response.headers["Cache-Control"] = "no-cache"
        response.headers["X-Accel-Buffering"] = "no"
        return response

    async def steer(job_id: str, command: str) -> Response:
        await job_for_caller(job_id)
        return _json(bulk.job_json(await bulk.steer(store, job_id, command, actor=actor())))

    @routes.post("/api/v1/bulk/<job_id>/pause")
    @access("runner")
    async def pause_bulk_job(job_id: str) -> Response:
        """Pause a running bulk job (within one item)."""
        return await steer(job_id, "pause")

    @routes.post("/api/v1/bulk/<job_id>/resume")
    @access("runner")
    async def resume_bulk_job(job_id: str) -> Response:
        """Resume a paused or cancelled bulk job where it stopped."""
        return await steer(job_id, "resume")

    @routes.post("/api/v1/bulk/<job_id>/cancel")
    @access("runner")
    async def cancel_bulk_job(job_id: str) -> Response:
        """Cancel a bulk job: what is done stays done, the rest is not worked."""
        return await steer(job_id, "cancel")

    # --- Kestra's bulk paths, each made a job ----------------------------------------------------

    async def kestra_ids(action: str, extra: dict[str, Any] | None = None) -> Response:
        check_role(action)
        if (request.mimetype or "") != "application/json":
            raise InvalidRequest(
                'Send the execution ids as a JSON list (Content-Type: application/json): ["id"]'
            )
        data = await request.get_data()
        raw = await bodies.off_loop(bodies.parse_json, data) if data.strip() else None
        _no_nul(raw)
        body: dict[str, Any] = dict(extra or {})
        if action == "labels":
            # Kestra's body: {executionsId: [...], executionLabels: [{key, value}]}.
            if not isinstance(raw, dict):
                raise InvalidRequest(
                    "The body must be {executionsId: [...], executionLabels: [{key, value}]}"
                )
            ids = _ids(raw.get("executionsId"), "executionsId")
            body["labels"] = raw.get("executionLabels")
        else:
            ids = _ids(raw, "The body")
        bulk.check_params(action, body)
        return await start(action, body, await select_ids(ids), {"ids": len(ids)}, kestra=True)

    async def kestra_query(action: str, extra: dict[str, Any] | None = None) -> Response:
        check_role(action)
        body: dict[str, Any] = dict(extra or {})
        if action == "labels":
            data = await request.get_data()
            raw = await bodies.off_loop(bodies.parse_json, data) if data.strip() else None
            _no_nul(raw)
            body["labels"] = raw
        bulk.check_params(action, body)
        pairs = [
            (k, v)
            for k, v in request.args.items(multi=True)
            if k not in ("deleteLogs", "deleteStorage", "deleteMetrics", "revision")
        ]
        _no_nul([x for pair in pairs for x in pair], "the query string")
        filters = execution_filters.read_filters(pairs, dt.datetime.now(dt.UTC))
        selection = Selection() if filters.nothing else await select_search(filters.search)
        chosen = {"filters": {k: v for k, v in pairs}}
        return await start(action, body, selection, chosen, kestra=True)

    def delete_flags() -> dict[str, Any]:
        return {
            "deleteLogs": _bool_arg("deleteLogs", True),
            "deleteStorage": _bool_arg("deleteStorage", True),
        }

    def revision_arg() -> dict[str, Any]:
        raw = request.args.get("revision")
        if not raw:
            return {}
        if not raw.isdigit() or not 1 <= int(raw) <= 2**31 - 1:
            raise InvalidRequest(f"Query parameter 'revision' must be a revision number: {raw!r}")
        return {"revision": int(raw)}

    @routes.post("/api/v1/executions/replay/by-ids")
    @access("runner")
    async def replay_by_ids() -> Response:
        """Replay a list of executions (Kestra's path; a bulk job)."""
        return await kestra_ids("replay", revision_arg())

    @routes.post("/api/v1/executions/replay/by-query")
    @access("runner")
    async def replay_by_query() -> Response:
        """Replay the executions the search's parameters find (Kestra's path; a bulk job)."""
        return await kestra_query("replay", revision_arg())

    @routes.post("/api/v1/executions/restart/by-ids")
    @access("runner")
    async def restart_by_ids() -> Response:
        """Restart a list of executions (Kestra's path; a bulk job)."""
        return await kestra_ids("restart")

    @routes.post("/api/v1/executions/restart/by-query")
    @access("runner")
    async def restart_by_query() -> Response:
        """Restart the executions the search's parameters find (Kestra's path; a bulk job)."""
        return await kestra_query("restart")

    @routes.delete("/api/v1/executions/kill/by-ids")
    @access("runner")
    async def kill_by_ids() -> Response:
        """Kill a list of executions (Kestra's path; a bulk job)."""
        return await kestra_ids("kill")

    @routes.delete("/api/v1/executions/kill/by-query")
    @access("runner")
    async def kill_by_query() -> Response:
        """Kill the executions the search's parameters find (Kestra's path; a bulk job)."""
        return await kestra_query("kill")

    @routes.post("/api/v1/executions/labels/by-ids")
    @access("runner")
    async def labels_by_ids() -> Response:
        """Set labels on a list of executions (Kestra's path; a bulk job)."""
        return await kestra_ids("labels")

    @routes.post("/api/v1/executions/labels/by-query")
    @access("runner")
    async def labels_by_query() -> Response:
        """Set labels on the executions the search's parameters find (Kestra's path; the body
        is the list of labels; a bulk job)."""
        return await kestra_query("labels")

    @routes.delete("/api/v1/executions/by-query")
    @access("editor")
    async def delete_by_query() -> Response:
        """Delete the executions the search's parameters find from the read models; their
        events stay (Kestra's path; a bulk job)."""
        return await kestra_query("delete", delete_flags())

    return routes
