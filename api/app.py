"""The REST API: Kestra-compatible paths over the event store and the read models.

Reads of one execution replay its events, so they are always current (and can be taken as of
any past position with `?at=`). Searches read the projections, which follow the events closely.
"""

from __future__ import annotations

import datetime as dt
import logging
import secrets
import urllib.parse
from pathlib import Path
from typing import Any

import msgspec
import trio
from quart import Response, request, send_file
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException

from api import (
    accounts_routes,
    bodies,
    bulk_routes,
    dashboards_routes,
    execution_actions,
    execution_filters,
    execution_stats_routes,
    flows_routes,
    history_routes,
    kv_routes,
    logs_routes,
    metrics,
    metrics_routes,
    openapi,
    projections_routes,
    tenant,
    topology_routes,
    triggers,
    webhooks,
)
from api import secrets as secrets_routes
from api import ui as ui_pages
from api.auth import access, actor, install, namespace_filter, public, require_namespace
from engine import commands
from engine.backoff import is_transient
from engine.errors import InvalidRequest, NotFound, Problem, TiercelError, WrongExpectedVersion
from engine.execution import iso
from engine.flow import Flow, flow_to_dict, parse_flow
from engine.health import readiness as readiness_report
from engine.inputs import resolve_inputs_off_loop
from engine.plugin import describe, plugin_list, plugin_type, property_docs, schema
from engine.secrets import shown
from engine.server import ServerContext
from engine.storage import SCHEME, Storage, execution_prefix, input_prefix, to_uri, uri_path
from projections import executions as executions_model

log = logging.getLogger(__name__)

MAX_PAGE_SIZE = 1000
MAX_WAIT_SECONDS = 86_400
"""The longest `?wait=true&timeout=` a request may ask for."""
ENDED_HEADER = "X-Tiercel-Execution-Ended"
"""Says whether the execution a `?wait=true` answer shows had ended (false: it paused, or the
wait timed out)."""
MAX_BULK_IDS = 1000
FOLLOW_HEARTBEAT = 15.0
"""Seconds of quiet after which a followed execution's stream sends a comment, so proxies
keep the connection open."""


def _json(body: Any, status: int = 200) -> Response:
    return Response(
        bodies.json_bytes(body, _default),
        status=status,
        content_type="application/json",
    )


def _default(value: Any) -> Any:
    if isinstance(value, dt.datetime):
        return iso(value)
    if isinstance(value, msgspec.Struct):
        return msgspec.to_builtins(value)
    if isinstance(value, frozenset | set | tuple):
        return list(value)
    raise TypeError(f"Cannot encode {type(value).__name__}")


MAX_QUERY_INT = 2**63 - 1
"""The largest integer a query parameter may hold: PostgreSQL's bigint."""


def _int_arg(
    name: str, default: int | None, *, minimum: int = 0, maximum: int = MAX_QUERY_INT
) -> Any:
    raw = request.args.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise InvalidRequest(
            f"Query parameter '{name}' must be an integer, got {raw!r}",
            [Problem(f"not an integer: {raw!r}", name)],
        ) from None
    if value < minimum or value > maximum:
        raise InvalidRequest(
            f"Query parameter '{name}' must be between {minimum} and {maximum}, got {raw!r}"
        )
    return value


def _bool_arg(name: str, default: bool = False) -> bool:
    raw = (request.args.get(name) or "").lower()
    if raw == "":
        return default
    if raw in ("false", "0", "no"):
        return False
    if raw in ("true", "1", "yes"):
        return True
    raise InvalidRequest(f"Query parameter '{name}' must be true or false, got {raw!r}")


def _labels_arg() -> dict[str, str]:
    labels: dict[str, str] = {}
    for item in request.args.getlist("labels"):
        key, sep, value = item.partition(":")
        if not sep or not key:
            raise InvalidRequest(
                f"Label filter {item!r} must be written key:value",
                [Problem("expected key:value", "labels")],
            )
        labels[key] = value
    return labels


async def _yaml_body() -> str:
    return await bodies.yaml_text()


async def _parse(source: str) -> Flow:
    """The flow, parsed and validated off the event loop."""
    return await bodies.off_loop(parse_flow, source)


async def _flow_answer(records: list[commands.FlowRecord]) -> list[dict[str, Any]]:
    """The flows as the API shows them, parsed off the event loop."""
    return await bodies.off_loop(lambda: [_flow_json(r) for r in records])


def _flow_json(record: commands.FlowRecord) -> dict[str, Any]:
    try:
        out = flow_to_dict(parse_flow(record.source))
        bodies.json_bytes(out, _default)
    except (TiercelError, TypeError, ValueError) as exc:
        # Recorded under rules since changed: shown with why it no longer validates (as Kestra
        # shows a flow with an exception) instead of failing the whole list.
        out = {"exception": str(exc) if isinstance(exc, TiercelError) else "cannot be shown"}
    out.update(
        {
            "id": record.id,
            "namespace": record.namespace,
            "revision": record.revision,
            "deleted": record.deleted,
            "source": record.source,
            "tenantId": commands.TENANT,
        }
    )
    # Kestra's client model: labels a list of {key, value}, `disabled` always there.
    labels = out.get("labels")
    out["labels"] = (
        [{"key": k, "value": v} for k, v in labels.items()] if isinstance(labels, dict) else []
    )
    out["disabled"] = bool(out.get("disabled", False))
    if record.updated:
        out["updated"] = record.updated
    return out


def _page() -> tuple[int, int]:
    # (page - 1) * size is the query's OFFSET: a bigint too.
    page = _int_arg("page", 1, minimum=1, maximum=MAX_QUERY_INT // MAX_PAGE_SIZE)
    size = _int_arg("size", 10, minimum=1, maximum=MAX_PAGE_SIZE)
    return page, size


def create_app(ctx: ServerContext) -> QuartTrio:
    """The API application, bound to one server's database, store and notifier."""
    app = QuartTrio("tiercel")
    limits = bodies.body_limits(ctx)
    app.request_class = bodies.request_class(limits)
    app.config["MAX_CONTENT_LENGTH"] = limits.body
    app.config["MAX_FORM_MEMORY_SIZE"] = limits.body
    store, db, storage = ctx.store, ctx.db, ctx.storage
    guard = install(app, ctx)
    # Before the guard too, which reads the execution a path names.
    app.before_request_funcs.setdefault(None, []).insert(0, bodies.refuse_nul_in_url)
    app.after_request(bodies.drain)
    accounts_routes.register(app, guard)
    app.register_blueprint(secrets_routes.blueprint(ctx))
    app.register_blueprint(kv_routes.blueprint(ctx))
    app.register_blueprint(flows_routes.blueprint(ctx, _flow_answer))
    app.register_blueprint(webhooks.blueprint(ctx))
    app.register_blueprint(triggers.blueprint(ctx))
    app.register_blueprint(logs_routes.blueprint(ctx))
    app.register_blueprint(execution_stats_routes.blueprint(ctx))
    app.register_blueprint(metrics_routes.blueprint(ctx))
    app.register_blueprint(projections_routes.blueprint(ctx))
    app.register_blueprint(topology_routes.blueprint(ctx))
    history_routes.register(app, ctx)
    app.register_blueprint(bulk_routes.blueprint(ctx))
    app.register_blueprint(dashboards_routes.blueprint(ctx))
    app.register_blueprint(execution_actions.blueprint(ctx))
    app.register_blueprint(ui_pages.blueprint(ctx))
    tenant.install(app)
    metrics.register(app, ctx)
    openapi.register(app)

    @app.errorhandler(TiercelError)
    async def domain_error(exc: TiercelError) -> Response:
        response = _json(exc.to_json(), exc.status)
        response.headers.update(getattr(exc, "headers", {}))
        return response

    @app.errorhandler(HTTPException)
    async def http_error(exc: HTTPException) -> Response:
        message = {
            404: tenant.not_found_message(),
            405: f"{request.method} is not allowed on {request.path}",
            413: bodies.too_large_message(limits),
        }.get(exc.code or 500, exc.description or exc.name)
        return _json({"message": message, "details": []}, exc.code or 500)

    @app.errorhandler(Exception)
    async def unexpected(exc: Exception) -> Response:
        if is_transient(exc):
            # The database is restarting or unreachable: the client may retry.
            log.warning("%s %s: database unavailable: %s", request.method, request.path, exc)
            return _json(
                {
                    "message": "The database is unavailable right now; retry in a few seconds",
                    "details": [],
                },
                503,
            )
        # The trace (and whatever paths or values it holds) goes to the log only.
        error_id = secrets.token_hex(6)
        log.exception("Unexpected error %s on %s %s", error_id, request.method, request.path)
        return _json(
            {
                "message": f"Internal error {error_id}: the server failed to answer this "
                "request; the server's log holds the details under this id",
                "details": [],
            },
            500,
        )

    # --- health -------------------------------------------------------------------------------

    async def health_report(starting: bool) -> tuple[bool, dict[str, Any]]:
        """Whether the process is ready, and the body that says so and why not."""
        db_up = await db.ping()
        head, checkpoints = None, None
        if db_up:
            try:
                head, checkpoints = await metrics.log_positions(db)
            except Exception as exc:
                if not is_transient(exc):
                    raise
                db_up = False
        ready, body = readiness_report(
            ctx.health,
            database_up=db_up,
            head=head,
            started=ctx.ready.is_set() or not starting,
            checkpoints=checkpoints,
        )
        if db_up:
            # Executions the executor set aside: reported, not a reason to take the node out.
            parked = await db.fetchall(
                'SELECT execution_id AS "executionId", seq AS position, error FROM engine_parked'
                " ORDER BY seq LIMIT 50"
            )
            if parked:
                body["parkedExecutions"] = parked
        return ready, body

    @app.get("/health")
    @public
    async def health() -> Response:
        up, body = await health_report(starting=False)
        return _json(body, 200 if up else 503)

    @app.get("/health/liveness")
    @public
    async def liveness() -> Response:
        return _json({"status": "UP"})

    @app.get("/health/readiness")
    @public
    async def readiness() -> Response:
        up, body = await health_report(starting=True)
        return _json(body, 200 if up else 503)

    # --- flows --------------------------------------------------------------------------------

    @app.post("/api/v1/flows")
    @access("editor")
    async def create_flow() -> Response:
        source = await _yaml_body()
        warnings: list[Problem] = []
        parsed = await bodies.off_loop(lambda: parse_flow(source, warnings=warnings))
        require_namespace(parsed.namespace)
        record = await commands.deploy_flow(store, source, create_only=True, actor=actor())
        answer = (await _flow_answer([record]))[0]
        # What the flow uses but Tiercel does not honour yet, each at its line.
        answer["warnings"] = [str(w) for w in warnings]
        return _json(answer)

    @app.post("/api/v1/flows/validate")
    @access("viewer")
    async def validate_flows() -> Response:
        documents = _documents(await _yaml_body())
        if len(documents) > bodies.MAX_DOCUMENTS:
            raise InvalidRequest(
                f"The body holds {len(documents)} flows; at most {bodies.MAX_DOCUMENTS} are "
                "validated at once: send them in several requests"
            )
        return _json(await bodies.off_loop(_validate_all, documents))

    @app.get("/api/v1/flows/search")
    @access("viewer")
    async def search_flows() -> Response:
        page, size = _page()
        allowed, params = namespace_filter()
        where = ["NOT deleted", allowed]

        def like(value: str) -> str:
            return value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")

        if ns := request.args.get("namespace"):
            where.append("(namespace = %s OR namespace LIKE %s)")
            params += [ns, like(ns) + ".%"]
        if q := request.args.get("q"):
            where.append("(flow_id ILIKE %s OR namespace ILIKE %s OR description ILIKE %s)")
            params += [f"%{like(q)}%"] * 3
        for key, value in _labels_arg().items():
            where.append("labels ->> %s = %s")
            params += [key, value]
        clause = " AND ".join(where)
        offset = (page - 1) * size
        if offset > executions_model.MAX_OFFSET:
            raise InvalidRequest(
                f"Page {page} of size {size} starts at row {offset}; pages start at most at "
                f"row {executions_model.MAX_OFFSET}: narrow the search"
            )
        rows = await db.fetchall(
            f"SELECT namespace, flow_id, revision, source, updated FROM flows WHERE {clause}"
            " ORDER BY namespace, flow_id LIMIT %s OFFSET %s",
            [*params, size, offset],
        )
        records = [
            commands.FlowRecord(
                r["namespace"], r["flow_id"], r["revision"], r["source"], False, iso(r["updated"])
            )
            for r in rows
        ]
        results = await _flow_answer(records)
        if len(rows) < size and (rows or offset == 0):
            total, estimated = offset + len(rows), False
        else:
            total, estimated = await db.run(
                lambda conn: executions_model.count(conn, clause, params, table="flows")
            )
        return _json({"results": results, "total": total, "totalIsEstimate": estimated})

    @app.get("/api/v1/flows/<namespace>/<flow_id>")
    @access("viewer")
    async def get_flow(namespace: str, flow_id: str) -> Response:
        if "asOf" in request.args:  # the flow as it stood then (api/history_routes.py)
            record, headers = await history_routes.flow_as_of(store, namespace, flow_id)
            response = _json((await _flow_answer([record]))[0])
            response.headers.update(headers)
            return response
        revision = _int_arg("revision", None, minimum=1)
        record = await commands.get_flow(store, namespace, flow_id, revision)
        return _json((await _flow_answer([record]))[0])

    @app.get("/api/v1/flows/<namespace>/<flow_id>/revisions")
    @access("viewer")
    async def flow_revisions(namespace: str, flow_id: str) -> Response:
        records = await commands.flow_revisions(store, namespace, flow_id)
        return _json(await _flow_answer([r for r in records if not r.deleted]))

    @app.put("/api/v1/flows/<namespace>/<flow_id>")
    @access("editor")
    async def update_flow(namespace: str, flow_id: str) -> Response:
        await commands.get_flow(store, namespace, flow_id)  # 404 when it does not exist
        record = await commands.deploy_flow(
            store, await _yaml_body(), expect=(namespace, flow_id), actor=actor()
        )
        return _json((await _flow_answer([record]))[0])

    @app.delete("/api/v1/flows/<namespace>/<flow_id>")
    @access("editor")
    async def delete_flow(namespace: str, flow_id: str) -> Response:
        await commands.delete_flow(store, namespace, flow_id, actor=actor())
        return Response("", status=204)

    # --- executions -------------------------------------------------------------------------

    @app.post("/api/v1/executions/<namespace>/<flow_id>")
    @access("runner")
    async def create_execution(namespace: str, flow_id: str) -> Response:
        inputs, uploads = await _execution_inputs_and_files()
        labels = _labels_arg()
        revision = _int_arg("revision", None, minimum=1)
        # Read and parsed once per revision, shared with the command below (which is given the
        # revision found here, so the inputs are checked against the flow that runs).
        record, flow = await commands.flow_to_run(store, namespace, flow_id, revision)
        key = _idempotency_key()
        if key is None:
            execution_id = commands.new_execution_id()
        else:
            # A retried request (same key) answers with the execution the first one made.
            execution_id = commands.idempotent_execution_id(namespace, flow_id, key)
            if await store.read_execution(execution_id):
                return await _execution_answer(execution_id)
        files = _input_files(flow, inputs, uploads)
        bodies.check_value(inputs, "The inputs")
        # Check every input first, with the URIs the files will get, so that a bad request
        # stores nothing; the files are then stored under the execution before it is created.
        planned = {
            key: to_uri(input_prefix(namespace, flow_id, execution_id, key) + "/" + name)
            for key, (name, _) in files.items()
        }
        await resolve_inputs_off_loop(flow, {**inputs, **planned})
        if files and storage is None:
            raise InvalidRequest("This server has no internal storage for FILE inputs")
        try:
            if files and storage is not None:
                inputs.update(await _store_files(storage, execution_id, flow, files))
            execution_id = await commands.create_execution(
                store,
                namespace,
                flow_id,
                inputs,
                labels=labels,
                revision=record.revision,
                execution_id=execution_id,
                actor=actor(),
            )
        except WrongExpectedVersion:
            if key is None:
                raise
            return await _execution_answer(execution_id)  # the same request, a moment earlier
        except BaseException:
            if files and storage is not None:
                prefix = execution_prefix(namespace, flow_id, execution_id)
                with trio.CancelScope(shield=True):
                    await trio.to_thread.run_sync(storage.delete_prefix, prefix)
            raise
        return await _execution_answer(execution_id)

    def _idempotency_key() -> str | None:
        key = request.headers.get("Idempotency-Key")
        if key is None:
            return None
        key = key.strip()
        if not key or len(key) > 255:
            raise InvalidRequest(
                "The Idempotency-Key header must hold 1 to 255 bytes (a UUID is a good key)"
            )
        return key

    async def _execution_answer(execution_id: str) -> Response:
        if not _bool_arg("wait"):
            return _json(
                commands.execution_json(await commands.load_execution(store, execution_id))
            )
        # Kestra's clients wait on the request: answered once the execution ends or pauses
        # (it waits on a person then), and after `timeout` seconds at most, with what it is.
        timeout = _int_arg("timeout", 60, minimum=1, maximum=MAX_WAIT_SECONDS)
        state = await commands.wait_for_end(
            store, ctx.notifier, execution_id, timeout=timeout, until_paused=True
        )
        response = _json(commands.execution_json(state))
        response.headers[ENDED_HEADER] = "true" if state.terminal else "false"
        return response

    @app.get("/api/v1/executions/search")
    @access("viewer")
    async def search_executions() -> Response:
        page, size = _page()
        # Kestra's sort parameter, `field:asc|desc`, on one column (executions_model.SORTS).
        sort_by, ascending = execution_filters.read_sort(request.args.getlist("sort"))
        allowed, params = namespace_filter()
        # Both the plain parameters and Kestra's filters[field][OPERATION]=value form.
        filters = execution_filters.read_filters(
            request.args.items(multi=True), dt.datetime.now(dt.UTC)
        )
        if filters.nothing:
            return _json({"results": [], "total": 0, "totalIsEstimate": False, "next": None})
        search = filters.search
        after = request.args.get("after") or None
        found = await db.run(
            lambda conn: executions_model.search(
                conn,
                allowed,
                params,
                search,
                page=page,
                size=size,
                after=after,
                ascending=ascending,
                sort=sort_by,
            )
        )
        return _json(
            {
                "results": [_execution_row(r) for r in found.rows],
                "total": found.total,
                "totalIsEstimate": found.estimated,
                "next": found.next,
            }
        )

    @app.get("/api/v1/executions/<execution_id>")
    @access("viewer")
    async def get_execution(execution_id: str) -> Response:
        if "asOf" in request.args:  # a position or a time (api/history_routes.py)
            state, headers = await history_routes.execution_as_of(store, execution_id)
            response = _json(commands.execution_json(state))
            response.headers.update(headers)
            return response
        at = _int_arg("at", None, minimum=1)
        state = await commands.load_execution(store, execution_id, at_seq=at)
        return _json(commands.execution_json(state))

    @app.get("/api/v1/executions/<execution_id>/events")
    @access("viewer")
    async def execution_events(execution_id: str) -> Response:
        history = await commands.execution_history(store, execution_id)
        return _json(
            [
                {
                    "seq": e.seq,
                    "stream": e.stream_id,
                    "version": e.version,
                    "type": e.type,
                    "data": _event_data(e.event),
                    "actor": e.meta.get("actor"),
                    "time": iso(e.recorded_at),
                    **({"causedBy": e.meta["causation"]} if "causation" in e.meta else {}),
                }
                for e in history
            ]
        )

    async def _stored_file(execution_id: str) -> tuple[str, Path]:
        path = request.args.get("path")
        if not path:
            raise InvalidRequest(
                "Query parameter 'path' is required: the kestra:// URI of one of the "
                "execution's files",
                [Problem("missing", "path")],
            )
        state = await commands.load_execution(store, execution_id)
        prefix = execution_prefix(state.namespace, state.flowId, execution_id)
        inside = str(uri_path(path))
        if not inside.startswith(prefix + "/"):
            raise InvalidRequest(
                f"{path} is not a file of execution {execution_id}: its files are under "
                f"kestra://{prefix}/",
                [Problem("outside the execution's files", "path")],
            )
        if storage is None:
            raise NotFound("This server has no internal storage")
        try:
            return path, await trio.to_thread.run_sync(storage.local_path, path)
        except OSError:  # a name no file system holds (too long): no such file, and no path shown
            raise NotFound(f"No file at {path} in the internal storage") from None

    @app.get("/api/v1/executions/<execution_id>/file")
    @access("viewer")
    async def execution_file(execution_id: str) -> Response:
        uri, local = await _stored_file(execution_id)
        response = await send_file(local, mimetype="application/octet-stream")
        response.headers["Content-Disposition"] = _attachment(local.name)
        return response

    @app.get("/api/v1/executions/<execution_id>/file/metas")
    @access("viewer")
    async def execution_file_metas(execution_id: str) -> Response:
        uri, local = await _stored_file(execution_id)
        size = (await trio.to_thread.run_sync(local.stat)).st_size
        return _json({"uri": uri, "size": size})

    @app.delete("/api/v1/executions/<execution_id>")
    @access("editor")
    async def purge_execution(execution_id: str) -> Response:
        await commands.purge_execution(
            store,
            storage,
            execution_id,
            logs=_bool_arg("deleteLogs", default=True),
            files=_bool_arg("deleteStorage", default=True),
            actor=actor(),
        )
        return Response("", status=204)

    @app.delete("/api/v1/executions/by-ids")
    @access("editor")
    async def purge_executions() -> Response:
        ids = await _id_list()
        # Kestra's bulk delete: every execution is checked first, and none is deleted when one
        # cannot be (unknown, or not ended); the answer lists those with why.
        invalids = []
        for execution_id in ids:
            try:
                state = await commands.load_execution(store, execution_id)
            except NotFound:
                invalids.append(_invalid(execution_id, "execution not found"))
                continue
            require_namespace(state.namespace)
            if not state.terminal:
                invalids.append(
                    _invalid(
                        execution_id,
                        f"execution not terminated: it is {state.state}; kill it or let it end",
                    )
                )
        if invalids:
            return _json(
                {
                    "message": f"invalid bulk delete: {len(invalids)} of {len(ids)} executions "
                    "cannot be deleted; nothing was deleted",
                    "invalids": invalids,
                    "details": [
                        {"message": i["message"], "path": i["invalidValue"]} for i in invalids
                    ],
                },
                400,
            )
        logs = _bool_arg("deleteLogs", default=True)
        files = _bool_arg("deleteStorage", default=True)
        for execution_id in ids:
            await commands.purge_execution(
                store, storage, execution_id, logs=logs, files=files, actor=actor()
            )
        return _json({"count": len(ids)})

    async def _id_list() -> list[str]:
        if (request.mimetype or "") != "application/json":
            raise InvalidRequest(
                "Send the execution ids as a JSON list (Content-Type: application/json): "
                '["id", ...]'
            )
        data = await request.get_data()
        ids = await bodies.off_loop(bodies.parse_json, data) if data.strip() else None
        if not isinstance(ids, list) or not all(isinstance(i, str) and i for i in ids):
            raise InvalidRequest('The body must be a JSON list of execution ids: ["id", ...]')
        if len(ids) > MAX_BULK_IDS:
            raise InvalidRequest(
                f"The body holds {len(ids)} ids; at most {MAX_BULK_IDS} executions are deleted "
                "at once"
            )
        if any(len(i) > 200 for i in ids):
            raise InvalidRequest("An execution id holds at most 200 characters")
        return list(dict.fromkeys(ids))

    @app.get("/api/v1/executions/<execution_id>/follow")
    @access("viewer")
    async def follow_execution(execution_id: str) -> Response:
        changes = commands.follow_execution(
            store, ctx.notifier, execution_id, heartbeat=FOLLOW_HEARTBEAT
        )
        try:
            first = await anext(changes)  # NotFound here, before the stream begins
        except BaseException:
            await changes.aclose()
            raise

        async def stream() -> Any:
            # Server-sent events as Kestra's: the execution as JSON, `id: start` first,
            # `progress` on each change, `end` once it ended (and the stream closes).
            sent = None
            state = first
            try:
                while True:
                    if state is None:
                        yield b": keep-alive\n\n"
                    else:
                        body = commands.execution_json(state)
                        if body != sent:
                            if state.terminal:
                                kind = b"end"
                            else:
                                kind = b"start" if sent is None else b"progress"
                            sent = body
                            data = bodies.json_bytes(body, _default)
                            yield b"id: " + kind + b"\ndata: " + data + b"\n\n"
                        if state.terminal:
                            return
                    state = await anext(changes)
            finally:
                await changes.aclose()

        response = Response(stream(), content_type="text/event-stream")
        response.timeout = None  # it lasts as long as the execution runs
        response.headers["Cache-Control"] = "no-cache"
        response.headers["X-Accel-Buffering"] = "no"
        return response

    # --- plugins ------------------------------------------------------------------------------

    @app.get("/api/v1/plugins")
    @access("viewer")
    async def list_plugins() -> Response:
        return _json(plugin_list())

    @app.get("/api/v1/plugins/<path:type_name>")
    @access("viewer")
    async def plugin_schema(type_name: str) -> Response:
        cls = plugin_type(type_name)
        if cls is None:
            raise NotFound(
                f"No plugin type '{type_name}': GET /api/v1/plugins lists the installed ones"
            )
        return _json({**describe(cls), "schema": _documented_schema(cls)})

    @app.post("/api/v1/executions/<execution_id>/resume")
    @access("runner")
    async def resume_execution(execution_id: str) -> Response:
        key = _idempotency_key()
        await commands.resume_execution(
            store,
            execution_id,
            await _execution_inputs(),
            actor=actor(),
            command_id=f"api:resume:{execution_id}:{key}" if key else None,
        )
        return Response("", status=204)

    @app.delete("/api/v1/executions/<execution_id>/kill")
    @access("runner")
    async def kill_execution(execution_id: str) -> Response:
        key = _idempotency_key()
        await commands.kill_execution(
            store,
            execution_id,
            actor=actor(),
            command_id=f"api:kill:{execution_id}:{key}" if key else None,
        )
        return _json({"id": execution_id, "message": "Kill requested"}, 202)

    async def _execution_inputs() -> dict[str, Any]:
        inputs, uploads = await _execution_inputs_and_files()
        for key, (_, data) in uploads.items():
            inputs[key] = data.decode("utf-8", errors="replace")
        bodies.check_value(inputs, "The inputs")
        return inputs

    async def _execution_inputs_and_files() -> tuple[dict[str, Any], dict[str, tuple[str, bytes]]]:
        content_type = request.mimetype or ""
        if content_type in ("multipart/form-data", "application/x-www-form-urlencoded"):
            form = await request.form
            inputs: dict[str, Any] = {}
            for key in form:
                given = form.getlist(key)
                inputs[key] = given[0] if len(given) == 1 else given  # repeated: a list
            bodies.check_value(inputs, "The form")
            files = await request.files
            # Spooled to disk when large: read off the event loop.
            uploads = await bodies.off_loop(
                lambda: {key: (files[key].filename or key, files[key].read()) for key in files}
            )
            return inputs, uploads
        return await _json_inputs(), {}

    async def _json_inputs() -> dict[str, Any]:
        content_type = request.mimetype or ""
        if content_type == "application/json":
            return await bodies.json_object("the inputs, by input id")
        data = await request.get_data()
        if data:
            raise InvalidRequest(
                f"Unsupported Content-Type {content_type or 'none'!r} for inputs: send "
                "application/json or multipart/form-data"
            )
        return {}

    return app


def _invalid(execution_id: str, message: str) -> dict[str, Any]:
    """One entry of a bulk answer's `invalids`, as Kestra's constraint violations."""
    return {"message": message, "invalidValue": execution_id, "path": "executionId"}


def _documents(body: str) -> list[str]:
    """The YAML documents of a body (flows separated by `---` lines)."""
    docs: list[str] = []
    current: list[str] = []
    for line in body.splitlines(keepends=True):
        if line.rstrip() == "---":
            if "".join(current).strip():
                docs.append("".join(current))
            current = []
        else:
            current.append(line)
    if "".join(current).strip():
        docs.append("".join(current))
    return docs


def _validate_all(documents: list[str]) -> list[dict[str, Any]]:
    """The answer of `flows/validate`: one entry per document."""
    results = []
    for index, source in enumerate(documents):
        entry: dict[str, Any] = {
            "index": index,
            "outdated": False,
            "deprecationPaths": [],
            "warnings": [],
        }
        warnings: list[Problem] = []
        try:
            flow = parse_flow(source, warnings=warnings)
            entry.update(flow=flow.id, namespace=flow.namespace)
            # Kestra's answer lists warnings as texts; each names its line here.
            entry["warnings"] = [str(w) for w in warnings]
        except TiercelError as exc:
            entry["constraints"] = str(exc)
            entry["details"] = [d.to_json() for d in exc.details]
        results.append(entry)
    return results


def _input_files(
    flow: Flow, inputs: dict[str, Any], uploads: dict[str, tuple[str, bytes]]
) -> dict[str, tuple[str, bytes]]:
    """The files to store for the flow's FILE inputs, by input id: the uploaded ones, and a
    plain text given for a FILE input (stored as a file too). An upload for another input gives
    its text as the value."""
    declared = {i.id_: i for i in flow.inputs}
    files: dict[str, tuple[str, bytes]] = {}
    for key, (name, data) in uploads.items():
        inp = declared.get(key)
        if inp is not None and inp.type == "FILE":
            files[key] = (bodies.file_name(name, key), data)
        else:  # an unknown input is reported by the input check
            inputs[key] = data.decode("utf-8", errors="replace")
    for key, inp in declared.items():
        value = inputs.get(key)
        if inp.type != "FILE" or key in files or not isinstance(value, str) or not value:
            continue
        if not value.startswith(SCHEME):
            extension = inp.extension or ".txt"
            files[key] = (
                key + ("" if extension.startswith(".") else ".") + extension,
                value.encode(),
            )
    return files


async def _store_files(
    storage: Storage, execution_id: str, flow: Flow, files: dict[str, tuple[str, bytes]]
) -> dict[str, str]:
    """Store each FILE input's file under the execution; return their URIs by input id."""
    uris = {}
    for key, (name, data) in files.items():
        prefix = input_prefix(flow.namespace, flow.id, execution_id, key)
        uris[key] = await trio.to_thread.run_sync(storage.put, prefix, name, data)
    return uris


def _attachment(name: str) -> str:
    """A Content-Disposition naming the file, readable by old and new clients alike."""
    plain = "".join(ch if 32 <= ord(ch) < 127 and ch not in '"\\' else "_" for ch in name)
    return f"attachment; filename=\"{plain}\"; filename*=UTF-8''{urllib.parse.quote(name)}"


def _documented_schema(cls: type[Any]) -> dict[str, Any]:
    """The type's JSON schema, with the attribute docstrings of the structs it nests (child task
    lists, option objects) as their properties' descriptions too."""
    generated = schema(cls)
    definitions = generated.get("$defs", {})
    for struct in _nested_structs(msgspec.inspect.type_info(cls), set()):
        target = definitions.get(struct.__name__)
        if struct is cls or not isinstance(target, dict):
            continue
        docs = property_docs(struct)
        for field in msgspec.structs.fields(struct):
            prop = target.get("properties", {}).get(field.encode_name)
            if isinstance(prop, dict) and field.name in docs and "description" not in prop:
                prop["description"] = docs[field.name]
    return generated


def _nested_structs(info: Any, seen: set[type]) -> list[type]:
    found: list[type] = []
    if isinstance(info, msgspec.inspect.StructType):
        if info.cls in seen:
            return found
        seen.add(info.cls)
        found.append(info.cls)
        for field in info.fields:
            found += _nested_structs(field.type, seen)
        return found
    for attr in ("item_type", "key_type", "value_type"):
        if hasattr(info, attr):
            found += _nested_structs(getattr(info, attr), seen)
    for inner in getattr(info, "types", ()) or ():
        found += _nested_structs(inner, seen)
    return found


def _event_data(event: Any) -> dict[str, Any]:
    data = msgspec.to_builtins(event)
    if isinstance(data, dict):
        data.pop("type", None)
        return data
    return {"value": data}


def _execution_row(row: dict[str, Any]) -> dict[str, Any]:
    histories = [(h["state"], h["date"]) for h in row["histories"]]
    return {
        "id": row["id"],
        "tenantId": commands.TENANT,
        "namespace": row["namespace"],
        "flowId": row["flow_id"],
        "flowRevision": row["flow_revision"],
        "state": commands.state_json(row["state"], histories),
        "labels": row["labels"],
        "inputs": shown(row["inputs"]),
        "outputs": shown(row["outputs"] or {}),
        "trigger": commands.trigger_json(row["trigger"]),
        "parentId": row["parent_id"],
        "originalId": row["original_id"],
        "taskRunCount": row["task_run_count"],
        "deleted": False,
    }
