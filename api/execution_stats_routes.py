"""Execution statistics per time bucket, read from the rollups of the executions projection
(`execution_stats`, `execution_durations`; projections/executions.py keeps them).

- `GET /api/v1/executions/stats/daily?namespace=&flowId=&state=&startDate=&endDate=&groupBy=`:
  per day (or hour with `groupBy=hour`), the executions started then by current state and the
  durations of the ended ones.
- `POST /api/v1/stats/executions/daily` with `{namespace, flowId, startDate, endDate}`: the
  same per day, as Kestra's dashboard asks for it.

Both answer Kestra's `DailyExecutionStatistics` list: `[{startDate, groupBy, executionCounts:
{STATE: n, ...}, duration: {count, sum, avg, min, max}}]`, one entry per bucket of the range,
empty ones included. Dates are UTC; the range covers whole buckets, from the one holding
`startDate` to the one holding `endDate` (by default the last 30 days). A caller scoped to some
namespaces counts only their executions.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from quart import Blueprint, Response, request

from api import bodies
from api.auth import access, namespace_filter
from engine.errors import InvalidRequest, Problem
from engine.execution import iso
from engine.server import ServerContext
from projections import executions as executions_model

DEFAULT_DAYS = 30
"""The range when no start date is given: this many days up to the end date."""
PARAMETERS = ("namespace", "flowId", "state", "startDate", "endDate", "groupBy")


def _answer(body: Any) -> Response:
    return Response(bodies.json_bytes(body), status=200, content_type="application/json")


def _bad(message: str, path: str) -> InvalidRequest:
    return InvalidRequest(message, [Problem(message, path)])


def _text(value: Any, path: str) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise _bad(f"{path} must be a string, got {value!r}", path)
    return value


def stats_query(
    *,
    namespace: Any = None,
    flow_id: Any = None,
    states: list[str] | None = None,
    start: Any = None,
    end: Any = None,
    unit: str = "day",
    now: dt.datetime,
) -> executions_model.StatsQuery:
    """The statistics asked for, checked: whole buckets, at most
    `executions_model.MAX_STAT_BUCKETS` of them."""
    if unit not in ("day", "hour"):
        raise _bad(f"groupBy must be day or hour, got {unit!r}", "groupBy")
    end_text, start_text = _text(end, "endDate"), _text(start, "startDate")
    last = executions_model.parse_date(end_text, "endDate") if end_text else now
    first = (
        executions_model.parse_date(start_text, "startDate")
        if start_text
        else last - dt.timedelta(days=DEFAULT_DAYS - 1)
    )
    if first > last:
        raise _bad(f"startDate {iso(first)} is after endDate {iso(last)}", "startDate")
    step = dt.timedelta(days=1) if unit == "day" else dt.timedelta(hours=1)
    start_bucket = _truncate(first, unit)
    end_bucket = _truncate(last, unit) + step
    if (end_bucket - start_bucket) / step > executions_model.MAX_STAT_BUCKETS:
        raise _bad(
            f"The range from {iso(first)} to {iso(last)} holds more than "
            f"{executions_model.MAX_STAT_BUCKETS} {unit}s: narrow it",
            "startDate",
        )
    return executions_model.StatsQuery(
        start=start_bucket,
        end=end_bucket,
        unit=unit,
        namespace=_text(namespace, "namespace"),
        flow_id=_text(flow_id, "flowId"),
        states=sorted(executions_model.parse_states(states, "state")) if states else (),
    )


def _truncate(at: dt.datetime, unit: str) -> dt.datetime:
    at = at.astimezone(dt.UTC).replace(minute=0, second=0, microsecond=0)
    return at.replace(hour=0) if unit == "day" else at


def blueprint(ctx: ServerContext) -> Blueprint:
    """The routes, on `ctx`'s database."""
    routes = Blueprint("execution_stats", __name__)
    db = ctx.db

    async def answer(query: executions_model.StatsQuery) -> Response:
        scope, params = namespace_filter()
        rows = await db.run(lambda conn: executions_model.daily_stats(conn, scope, params, query))
        return _answer(rows)

    @routes.get("/api/v1/executions/stats/daily")
    @access("viewer")
    async def executions_daily() -> Response:
        """Executions per day (or hour) by current state, and their durations"""
        for name in request.args:
            if name not in PARAMETERS:
                raise _bad(
                    f"Unknown query parameter {name!r}; the statistics take "
                    f"{', '.join(PARAMETERS)}",
                    name,
                )
        states = [
            s.strip() for raw in request.args.getlist("state") for s in raw.split(",") if s.strip()
        ]
        query = stats_query(
            namespace=request.args.get("namespace"),
            flow_id=request.args.get("flowId"),
            states=states,
            start=request.args.get("startDate"),
            end=request.args.get("endDate"),
            unit=(request.args.get("groupBy") or "day").lower(),
            now=dt.datetime.now(dt.UTC),
        )
        return await answer(query)

    @routes.post("/api/v1/stats/executions/daily")
    @access("viewer")
    async def kestra_executions_daily() -> Response:
        """Kestra's daily execution statistics: {namespace, flowId, startDate, endDate}"""
        body = await bodies.json_object('{"namespace": "company", "startDate": "2025-01-01"}')
        unknown = sorted(set(body) - {"namespace", "flowId", "startDate", "endDate", "state"})
        if unknown:
            raise _bad(
                f"Unknown field {unknown[0]!r}; the body takes namespace, flowId, startDate, "
                "endDate",
                unknown[0],
            )
        states = body.get("state")
        if states is not None and (
            not isinstance(states, list) or not all(isinstance(s, str) for s in states)
        ):
            raise _bad("state must be a list of execution states", "state")
        query = stats_query(
            namespace=body.get("namespace"),
            flow_id=body.get("flowId"),
            states=states,
            start=body.get("startDate"),
            end=body.get("endDate"),
            now=dt.datetime.now(dt.UTC),
        )
        return await answer(query)

    return routes
