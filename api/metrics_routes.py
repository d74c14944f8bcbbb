"""Routes of the metrics read model, as Kestra's `/api/v1/metrics` (projections/metrics.py).

- `GET /api/v1/metrics/{executionId}`: a page of the execution's metric points
  (`{"results": [MetricEntry...], "total": n}`): `taskRunId`, `taskId`, `tags` (`key:value`,
  repeat for several: every one must match), `page`, `size`, `sort` (`field:asc|desc`, repeat;
  fields: namespace, flowId, taskId, executionId, taskRunId, name, type, timestamp, value).
- `GET /api/v1/metrics/names/{namespace}/{flowId}`: the names of the metrics of a flow.
- `GET /api/v1/metrics/names/{namespace}/{flowId}/{taskId}`: the names of one task's metrics.
- `GET /api/v1/metrics/tasks/{namespace}/{flowId}`: the tasks of a flow that reported metrics.
- `GET /api/v1/metrics/aggregates/{namespace}/{flowId}/{metric}` and
  `.../aggregates/{namespace}/{flowId}/{taskId}/{metric}`: `{"groupBy", "aggregations": [{"name",
  "value", "date"}]}`, one entry per bucket from `startDate` (default: 30 days ago) to `endDate`
  (default: now), buckets sized from the range as Kestra sizes them (minute up to 6 hours, hour
  up to a day, day up to 180 days, week up to a year, month beyond), `aggregation` one of sum
  (default), avg, min, max, count, and `tags` filters. A bucket without points is 0 for sum
  and count and null for the others.

A timer's value is in milliseconds, as Kestra's are. Any parameter the routes cannot answer is
a 400 naming it.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import trio
from quart import Blueprint, Response, request

from api import bodies
from api.auth import access, require_namespace
from engine import commands
from engine import events as ev
from engine.errors import InvalidRequest, NotFound, Problem
from engine.execution import iso
from engine.server import ServerContext
from engine.store import load_checkpoint
from projections import metrics as metrics_model
from projections.executions import parse_date

MAX_PAGE_SIZE = 1000
MAX_OFFSET = 100_000
MAX_TAG_FILTERS = 20
LONGEST = 1000
DEFAULT_RANGE = dt.timedelta(days=30)
LONGEST_RANGE = dt.timedelta(days=100 * 366)
"""The widest aggregate range: a century of months."""
EARLIEST = dt.datetime(1900, 1, 1, tzinfo=dt.UTC)
LATEST = dt.datetime(9000, 1, 1, tzinfo=dt.UTC)
CATCH_UP_SECONDS = 5.0
"""How long a read of one execution's points waits for the projection to hold them."""

EXECUTION_PARAMETERS = ("page", "size", "sort", "taskRunId", "taskId", "tags")
AGGREGATE_PARAMETERS = ("startDate", "endDate", "aggregation", "tags")
_ENDS = ("AttemptSucceeded", "AttemptFailed", "AttemptKilled", "ExecutionStateChanged")


def _bad(message: str, name: str) -> InvalidRequest:
    return InvalidRequest(message, [Problem(message, name)])


def _only(allowed: tuple[str, ...], what: str) -> None:
    for name in request.args:
        if name not in allowed:
            raise _bad(f"Unknown query parameter {name!r}; {what} takes {', '.join(allowed)}", name)


def _text(name: str) -> str | None:
    value = request.args.get(name) or None
    if value is not None and len(value) > LONGEST:
        raise _bad(f"{name} holds at most {LONGEST} characters", name)
    return value


def _int(name: str, default: int, minimum: int, maximum: int) -> int:
    raw = request.args.get(name) or str(default)
    try:
        number = int(raw)
    except ValueError:
        raise _bad(f"{name} must be an integer, got {raw!r}", name) from None
    if not minimum <= number <= maximum:
        raise _bad(f"{name} must be between {minimum} and {maximum}, got {raw!r}", name)
    return number


def read_tags(values: list[str]) -> list[tuple[str, str]]:
    """`tags=key:value` filters as (key, value) pairs, or a 400 naming the bad one."""
    if len(values) > MAX_TAG_FILTERS:
        raise _bad(f"tags: at most {MAX_TAG_FILTERS} filters", "tags")
    pairs = []
    for value in values:
        key, colon, tag = value.partition(":")
        if not colon or not key or len(value) > LONGEST:
            raise _bad(f"tags must be written key:value, got {value[:100]!r}", "tags")
        pairs.append((key, tag))
    return pairs


def read_sort(values: list[str]) -> list[tuple[str, bool]]:
    """`sort=field:asc|desc` values as (column, ascending) pairs, or a 400."""
    order = []
    for value in values:
        for part in value.split(","):
            if not part.strip():
                continue  # `sort=` is no sort
            field, _, direction = part.strip().partition(":")
            if field not in metrics_model.SORTS:
                raise _bad(
                    f"sort: unknown field {field!r}; sort by "
                    f"{', '.join(k for k in metrics_model.SORTS if k != 'taskrunId')}",
                    "sort",
                )
            if direction.lower() not in ("", "asc", "desc"):
                raise _bad(f"sort: {part!r} must end with :asc or :desc", "sort")
            order.append((metrics_model.SORTS[field], direction.lower() != "desc"))
    return order or [("timestamp", True)]


def metric_json(row: dict[str, Any]) -> dict[str, Any]:
    """A metric point in the shape of Kestra's `MetricEntry`."""
    return {
        "tenantId": commands.TENANT,
        "namespace": row["namespace"],
        "flowId": row["flow_id"],
        "taskId": row["task_id"],
        "executionId": row["execution_id"],
        "taskRunId": row["task_run_id"],
        "type": row["type"],
        "name": row["name"],
        "value": row["value"],
        "timestamp": iso(row["timestamp"]),
        "tags": row["tags"] or {},
        "deleted": False,
    }


def _answer(body: Any, status: int = 200) -> Response:
    return Response(bodies.json_bytes(body), status=status, content_type="application/json")


def _range(now: dt.datetime) -> tuple[dt.datetime, dt.datetime]:
    start = parse_date(request.args["startDate"], "startDate") if _text("startDate") else None
    end = parse_date(request.args["endDate"], "endDate") if _text("endDate") else None
    for at, name in ((start, "startDate"), (end, "endDate")):
        if at is not None and not EARLIEST <= at <= LATEST:
            raise _bad(f"{name} must be between 1900 and 9000", name)
    if end is None:
        end = now if start is None or start <= now else start + DEFAULT_RANGE
    if start is None:
        start = end - DEFAULT_RANGE
    if start > end:
        raise _bad("startDate must be before endDate", "startDate")
    if end - start > LONGEST_RANGE:
        raise _bad("The range from startDate to endDate holds at most 100 years", "startDate")
    return start, end


def blueprint(ctx: ServerContext) -> Blueprint:
    """The metrics routes, on `ctx`'s database."""
    routes = Blueprint("metrics_read_model", __name__)
    db = ctx.db

    async def caught_up(execution_id: str) -> None:
        """NotFound for no execution; else wait (briefly) until the read model holds every
        point of the execution recorded so far."""
        base = ev.execution_stream(execution_id)
        if not await db.fetchone("SELECT 1 FROM events WHERE stream_id = %s LIMIT 1", (base,)):
            raise NotFound(f"Execution {execution_id} does not exist")
        last = await db.fetchone(
            "SELECT max(seq) AS last FROM events WHERE (stream_id = %s"
            " OR (stream_id > %s AND stream_id < %s)) AND type = ANY(%s)",
            (base, base + "/", base + "0", list(_ENDS)),
        )
        wanted = int(last["last"]) if last and last["last"] is not None else 0
        name = "projection:" + metrics_model.MetricsProjection.name
        with trio.move_on_after(CATCH_UP_SECONDS):
            while True:
                seen = ctx.notifier.generation
                if await load_checkpoint(db, name) >= wanted:
                    return
                await ctx.notifier.wait(seen, 0.2)

    @routes.get("/api/v1/metrics/<execution_id>")
    @access("viewer")
    async def execution_metrics(execution_id: str) -> Response:
        """The metrics of an execution, a page at a time (taskRunId, taskId, tags, sort)."""
        _only(EXECUTION_PARAMETERS, "the metrics of an execution")
        page = _int("page", 1, 1, MAX_OFFSET + 1)
        size = _int("size", 10, 1, MAX_PAGE_SIZE)
        if (page - 1) * size > MAX_OFFSET:
            raise _bad(f"page {page} of {size} starts past row {MAX_OFFSET}", "page")
        order = read_sort(request.args.getlist("sort"))
        tags = read_tags(request.args.getlist("tags"))
        task_id, task_run_id = _text("taskId"), _text("taskRunId")
        await caught_up(execution_id)
        rows, total = await db.run(
            lambda conn: metrics_model.execution_points(
                conn,
                execution_id,
                task_id=task_id,
                task_run_id=task_run_id,
                tags=tags,
                order=order,
                offset=(page - 1) * size,
                limit=size,
            )
        )
        return _answer({"results": [metric_json(r) for r in rows], "total": total})

    @routes.get("/api/v1/metrics/names/<namespace>/<flow_id>")
    @access("viewer")
    async def flow_metric_names(namespace: str, flow_id: str) -> Response:
        """The names of the metrics a flow's executions reported."""
        _only((), "this route")
        require_namespace(namespace)
        names = await db.run(lambda conn: metrics_model.flow_names(conn, namespace, flow_id))
        return _answer(names)

    @routes.get("/api/v1/metrics/names/<namespace>/<flow_id>/<task_id>")
    @access("viewer")
    async def task_metric_names(namespace: str, flow_id: str, task_id: str) -> Response:
        """The names of the metrics one task of a flow reported."""
        _only((), "this route")
        require_namespace(namespace)
        names = await db.run(
            lambda conn: metrics_model.task_names(conn, namespace, flow_id, task_id)
        )
        return _answer(names)

    @routes.get("/api/v1/metrics/tasks/<namespace>/<flow_id>")
    @access("viewer")
    async def flow_metric_tasks(namespace: str, flow_id: str) -> Response:
        """The ids of the tasks of a flow that reported metrics (deleted or renamed ones too)."""
        _only((), "this route")
        require_namespace(namespace)
        tasks = await db.run(lambda conn: metrics_model.flow_tasks(conn, namespace, flow_id))
        return _answer(tasks)

    async def aggregates(
        namespace: str, flow_id: str, task_id: str | None, metric: str
    ) -> Response:
        _only(AGGREGATE_PARAMETERS, "a metric's aggregates")
        require_namespace(namespace)
        start, end = _range(dt.datetime.now(dt.UTC))
        how = (request.args.get("aggregation") or "sum").strip().lower()
        if how not in metrics_model.AGGREGATIONS:
            raise _bad(
                f"aggregation must be one of {', '.join(metrics_model.AGGREGATIONS)}, "
                f"got {request.args.get('aggregation')!r}",
                "aggregation",
            )
        tags = read_tags(request.args.getlist("tags"))
        group, rows = await db.run(
            lambda conn: metrics_model.aggregate(
                conn, namespace, flow_id, metric, start, end, task_id=task_id, tags=tags
            )
        )
        found = {at: (n, s, lo, hi) for at, n, s, lo, hi in rows}
        empty: float | None = 0.0 if how in ("sum", "count") else None
        out = []
        for at in metrics_model.bucket_starts(group, start, end):
            value: float | None = empty
            if at in found:
                n, s, lo, hi = found[at]
                value = {"sum": s, "count": float(n), "min": lo, "max": hi, "avg": s / n}[how]
            out.append({"name": metric, "value": value, "date": iso(at)})
        return _answer({"groupBy": group, "aggregations": out})

    @routes.get("/api/v1/metrics/aggregates/<namespace>/<flow_id>/<metric>")
    @access("viewer")
    async def flow_metric_aggregates(namespace: str, flow_id: str, metric: str) -> Response:
        """A flow's metric aggregated per time bucket (startDate, endDate, aggregation, tags)."""
        return await aggregates(namespace, flow_id, None, metric)

    @routes.get("/api/v1/metrics/aggregates/<namespace>/<flow_id>/<task_id>/<metric>")
    @access("viewer")
    async def task_metric_aggregates(
        namespace: str, flow_id: str, task_id: str, metric: str
    ) -> Response:
        """A task's metric aggregated per time bucket (startDate, endDate, aggregation, tags)."""
        return await aggregates(namespace, flow_id, task_id, metric)

    return routes
