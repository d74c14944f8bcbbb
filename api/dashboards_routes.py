"""Dashboards: the default dashboard's figures, and custom dashboards as Kestra's YAML.

- `GET /api/v1/dashboards/default/stats`: the home page's figures over a range (`startDate`,
  `endDate`, or `timeRange`, P30D by default) for `namespace` (and those under it), `flowId`
  and `state` (several): executions per state per time bucket with an "All" total per bucket,
  per namespace and per flow, the success ratio, duration percentiles and the latest failures.
  Read from the hourly rollups of the executions projection, so the range is widened to whole
  hours (the answer's `startDate` and `endDate` say which). Kestra serves the same figures at
  several `POST /api/v1/stats/executions/...` routes; this one answers them in one read.
- `GET /api/v1/dashboards` (page, size, q, sort), `POST /api/v1/dashboards` (YAML),
  `GET/PUT/DELETE /api/v1/dashboards/{id}`, `POST /api/v1/dashboards/validate` and
  `/validate/chart` (YAML; answer what is wrong, as Kestra's validation does, without saving).
- `POST /api/v1/dashboards/{id}/charts/{chartId}`: a chart's rows. JSON body, every key
  optional: `startDate`, `endDate` (ISO-8601; the dashboard's `timeWindow.default` up to now
  otherwise, at most `timeWindow.max` long), `timeRange` (PT1H: the last hour), `page` (or
  Kestra's `pageNumber`), `pageSize`, and `filters`: Kestra's `[{field, operation, value}]`
  (fields namespace, flowId, state, labels, level, executionId, taskId, triggerExecutionId,
  startDate, endDate, timeRange). A filter narrows the chart's own `where`, never replaces it;
  one on a field the chart's source does not have (state, for logs) leaves that chart as it is.
- `POST /api/v1/dashboards/{id}/charts/{chartId}/export/to-csv`: the same rows as CSV.
- `POST /api/v1/dashboards/charts/preview`: the rows of a chart not saved: `{"chart": YAML,
  "globalFilter": {...the keys above...}}`.

Rows are Kestra's PagedResults, `{results: [{column: value}], total}`; a KPI's one row is
`{value, numerator, total}`, a Markdown chart's `{content}` or `{description}`. Every chart
reads only what the caller's namespaces hold.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
from typing import Any

import msgspec
from quart import Blueprint, Response, request

from api import bodies
from api.auth import access, actor, namespace_filter, require_namespace
from engine import dashboards, safe_yaml
from engine.dashboards import Chart, Condition, Dashboard, DashboardRecord
from engine.duration import parse_duration
from engine.errors import InvalidRequest, NotFound, Problem, TiercelError
from engine.execution import iso
from engine.server import ServerContext
from projections import dashboards as model
from projections.dashboards import StatsFilter

MAX_PAGE_SIZE = model.MAX_ROWS
DEFAULT_STATS_RANGE = dt.timedelta(days=30)
MAX_STATS_RANGE = dt.timedelta(days=366)
MAX_FAILURES = 100

FILTER_FIELDS: dict[str, dict[str, str]] = {
    "namespace": {"executions": "NAMESPACE", "logs": "NAMESPACE", "metrics": "NAMESPACE"},
    "flowId": {"executions": "FLOW_ID", "logs": "FLOW_ID", "metrics": "FLOW_ID"},
    "state": {"executions": "STATE"},
    "labels": {"executions": "LABELS"},
    "level": {"logs": "LEVEL"},
    "executionId": {"executions": "ID", "logs": "EXECUTION_ID", "metrics": "EXECUTION_ID"},
    "taskId": {"logs": "TASK_ID", "metrics": "TASK_ID"},
    "triggerExecutionId": {"executions": "TRIGGER_EXECUTION_ID"},
}
"""The fields of Kestra's QueryFilter a chart request may filter on, as each source names
them."""
FILTER_OPERATIONS = {
    "EQUALS": "EQUAL_TO",
    "NOT_EQUALS": "NOT_EQUAL_TO",
    "IN": "IN",
    "NOT_IN": "NOT_IN",
    "STARTS_WITH": "STARTS_WITH",
    "ENDS_WITH": "ENDS_WITH",
    "CONTAINS": "CONTAINS",
    "REGEX": "REGEX",
    "PREFIX": "PREFIX",
    "GREATER_THAN_OR_EQUAL_TO": "GREATER_THAN_OR_EQUAL_TO",
}
"""Kestra's QueryFilter operations, as `where` filter types (PREFIX: the namespace and those
under it; GREATER_THAN_OR_EQUAL_TO: a minimum log level)."""
DATE_FIELDS = ("startDate", "endDate", "timeRange")
BODY_KEYS = ("startDate", "endDate", "timeRange", "page", "pageNumber", "pageSize", "filters")


def _answer(body: Any, status: int = 200) -> Response:
    return Response(bodies.json_bytes(body), status=status, content_type="application/json")


def _bad(message: str, path: str) -> InvalidRequest:
    return InvalidRequest(message, [Problem(message, path)])


def _date(value: Any, path: str) -> dt.datetime:
    found = dashboards.parse_date(value) if isinstance(value, str) else None
    if found is None:
        raise _bad(f"{path} must be an ISO-8601 date-time, got {str(value)[:60]!r}", path)
    return found


def _duration(value: Any, path: str) -> dt.timedelta:
    try:
        found = parse_duration(str(value))
    except ValueError as exc:
        raise _bad(f"{path}: {exc}", path) from None
    if found <= dt.timedelta(0):
        raise _bad(f"{path} must be longer than zero", path)
    return found


def _int(value: Any, path: str, minimum: int, maximum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise _bad(f"{path} must be an integer", path)
    try:
        number = int(value)
    except ValueError:
        raise _bad(f"{path} must be an integer, got {value!r}", path) from None
    if not minimum <= number <= maximum:
        raise _bad(f"{path} must be between {minimum} and {maximum}, got {number}", path)
    return number


# --- the request of a chart --------------------------------------------------------------------


class ChartRequest:
    """What a chart request asks: its range, page and filters (checked, not yet applied)."""

    def __init__(self, body: dict[str, Any], now: dt.datetime) -> None:
        unknown = sorted(set(body) - set(BODY_KEYS))
        if unknown:
            raise _bad(
                f"Unknown key {unknown[0]!r} in the chart request; it takes "
                + ", ".join(BODY_KEYS),
                unknown[0],
            )
        self.now = now
        self.start: dt.datetime | None = None
        self.end: dt.datetime | None = None
        self.since: dt.timedelta | None = None
        if body.get("startDate") is not None:
            self.start = _date(body["startDate"], "startDate")
        if body.get("endDate") is not None:
            self.end = _date(body["endDate"], "endDate")
        if body.get("timeRange") is not None:
            self.since = _duration(body["timeRange"], "timeRange")
        page = body.get("page", body.get("pageNumber"))
        self.page = 1 if page is None else _int(page, "page", 1, 1_000_000)
        size = body.get("pageSize")
        self.size = MAX_PAGE_SIZE if size is None else _int(size, "pageSize", 1, MAX_PAGE_SIZE)
        if (self.page - 1) * self.size > 100_000:
            raise _bad("page starts beyond row 100,000: narrow the range instead", "page")
        raw_filters = body.get("filters") or []
        if not isinstance(raw_filters, list) or len(raw_filters) > dashboards.MAX_FILTERS:
            raise _bad(
                f"filters must be a list of at most {dashboards.MAX_FILTERS} "
                "{field, operation, value}",
                "filters",
            )
        self.filters: list[tuple[str, str, Any, str]] = []
        for i, item in enumerate(raw_filters):
            self._filter(item, f"filters[{i}]")

    def _filter(self, item: Any, path: str) -> None:
        if not isinstance(item, dict):
            raise _bad(f"{path} must be an object {{field, operation, value}}", path)
        name = item.get("field")
        operation = str(item.get("operation") or "EQUALS").upper()
        value = item.get("value")
        if name in DATE_FIELDS:
            if name == "timeRange":
                self.since = _duration(value, f"{path}.value")
            elif name == "startDate":
                self.start = _date(value, f"{path}.value")
            else:
                self.end = _date(value, f"{path}.value")
            return
        if name not in FILTER_FIELDS:
            raise _bad(
                f"Unknown filter field {str(name)[:60]!r} in {path}; a chart filters on "
                + ", ".join([*FILTER_FIELDS, *DATE_FIELDS]),
                f"{path}.field",
            )
        if operation not in FILTER_OPERATIONS:
            raise _bad(
                f"Unknown or unsupported operation {operation[:40]!r} in {path}; the "
                f"operations are {', '.join(FILTER_OPERATIONS)}",
                f"{path}.operation",
            )
        if operation == "GREATER_THAN_OR_EQUAL_TO" and name != "level":
            raise _bad(f"GREATER_THAN_OR_EQUAL_TO in {path} applies to level only", path)
        if value is None or value == "" or value == []:
            raise _bad(f"{path} has no value", f"{path}.value")
        self.filters.append((str(name), operation, value, path))

    def window(self, dashboard: Dashboard | None) -> tuple[dt.datetime, dt.datetime]:
        """The range asked, or the dashboard's default window up to now; at most its max."""
        default = dt.timedelta(seconds=dashboard.window) if dashboard else dt.timedelta(days=8)
        longest = dt.timedelta(seconds=dashboard.maxWindow) if dashboard else MAX_STATS_RANGE
        if self.since is not None and self.since > longest:
            raise _bad(f"timeRange is longer than the longest range, {longest}", "timeRange")
        end = self.end or self.now
        try:
            start = self.start or (end - (self.since or default))
            if self.since is not None and self.start is None and self.end is None:
                start = self.now - self.since
        except OverflowError:
            raise _bad("endDate is too early for this range", "endDate") from None
        if end < start:
            raise _bad("endDate is before startDate", "endDate")
        if end - start > longest:
            raise _bad(
                f"The range asked ({end - start}) is longer than the dashboard's "
                f"timeWindow.max ({longest}): ask for a shorter one",
                "startDate",
            )
        return start, end

    def conditions(self, source: str) -> list[Condition]:
        """The request's filters as `where` filters over `source` (those on fields the source
        does not have are left out), checked as a dashboard's are."""
        out: list[Condition] = []
        for name, operation, value, path in self.filters:
            field = FILTER_FIELDS[name].get(source)
            if field is None:
                continue
            out += _conditions(source, field, FILTER_OPERATIONS[operation], value, path)
        return out


def _conditions(source: str, field: str, operation: str, value: Any, path: str) -> list[Condition]:
    if field == "LABELS":
        return _label_conditions(source, operation, value, path)
    if operation == "PREFIX":
        text = _scalar(value, path)
        return [
            Condition(
                type="OR",
                anyOf=[
                    _checked(source, field, "EQUAL_TO", text, path),
                    _checked(source, field, "STARTS_WITH", text + ".", path),
                ],
            )
        ]
    if operation == "GREATER_THAN_OR_EQUAL_TO":
        level = str(value).upper().replace("WARNING", "WARN")
        if level not in dashboards.LEVELS:
            raise _bad(f"{path}: unknown level {str(value)[:20]!r}", f"{path}.value")
        return [_checked(source, field, "IN", model.levels_from(level), path)]
    if operation in ("IN", "NOT_IN"):
        values = value if isinstance(value, list) else str(value).split(",")
        return [_checked(source, field, operation, [_scalar(v, path) for v in values], path)]
    return [_checked(source, field, operation, _scalar(value, path), path)]


def _label_conditions(source: str, operation: str, value: Any, path: str) -> list[Condition]:
    if operation not in ("EQUAL_TO", "NOT_EQUAL_TO"):
        raise _bad(f"labels in {path} take EQUALS or NOT_EQUALS", f"{path}.operation")
    pairs: dict[str, str] = {}
    if isinstance(value, dict):
        pairs = {str(k): str(v) for k, v in value.items()}
    else:
        items = value if isinstance(value, list) else [value]
        for item in items:
            key, sep, found = str(item).partition(":")
            if not sep or not key:
                raise _bad(f"A label filter in {path} is written key:value", f"{path}.value")
            pairs[key] = found
    return [
        _checked(source, "LABELS", operation, v, path, label_key=k)
        for k, v in list(pairs.items())[:20]
    ]


def _scalar(value: Any, path: str) -> str:
    if isinstance(value, dict | list) or value is None:
        raise _bad(f"{path}: a value is one text, number or date", f"{path}.value")
    return str(value)


def _checked(
    source: str, field: str, operation: str, value: Any, path: str, label_key: str | None = None
) -> Condition:
    """A filter made from a request, checked by the rules a dashboard's `where` follows."""
    raw: dict[str, Any] = {"type": operation, "field": field}
    raw["values" if isinstance(value, list) else "value"] = value
    if label_key is not None:
        raw["labelKey"] = label_key
    return dashboards.check_condition(raw, source, path)


# --- answers ----------------------------------------------------------------------------------


def _dashboard_json(record: DashboardRecord) -> dict[str, Any]:
    """A saved dashboard as Kestra shows it: its properties as written, and its source."""
    try:
        written = safe_yaml.load(record.source, dashboards.LIMITS)
    except ValueError:
        written = {}
    out = dict(written) if isinstance(written, dict) else {}
    out = _json_values(out)
    out.update(
        {
            "id": record.id,
            "title": record.title,
            "sourceCode": record.source,
            "created": iso(record.created),
            "updated": iso(record.updated),
            "deleted": record.deleted,
        }
    )
    return out


def _json_values(value: Any) -> Any:
    """YAML values as JSON holds them (dates as ISO-8601 text)."""
    if isinstance(value, dict):
        return {str(k): _json_values(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_values(v) for v in value]
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat()
    return value


def _stats_filter(now: dt.datetime) -> StatsFilter:
    args = request.args
    known = {"startDate", "endDate", "timeRange", "namespace", "flowId", "state", "failures"}
    unknown = sorted(set(args) - known)
    if unknown:
        raise _bad(
            f"Unknown query parameter {unknown[0]!r}; the default dashboard takes "
            + ", ".join(sorted(known)),
            unknown[0],
        )
    end = _date(args["endDate"], "endDate") if args.get("endDate") else now
    if args.get("startDate"):
        start = _date(args["startDate"], "startDate")
    else:
        since = args.get("timeRange")
        span = _duration(since, "timeRange") if since else DEFAULT_STATS_RANGE
        if span > MAX_STATS_RANGE:
            raise _bad(f"timeRange is longer than {MAX_STATS_RANGE.days} days", "timeRange")
        try:
            start = end - span
        except OverflowError:
            raise _bad("endDate is too early for this range", "endDate") from None
    if end < start:
        raise _bad("endDate is before startDate", "endDate")
    # The rollups count by hour: the range is widened to the hours it touches.
    try:
        start = start.astimezone(dt.UTC).replace(minute=0, second=0, microsecond=0)
        hour_end = end.astimezone(dt.UTC).replace(minute=0, second=0, microsecond=0)
        end = hour_end if hour_end == end else hour_end + dt.timedelta(hours=1)
        if end == start:
            end = start + dt.timedelta(hours=1)
    except OverflowError:
        raise _bad("endDate is beyond the dates that can be counted", "endDate") from None
    if end - start > MAX_STATS_RANGE:
        raise _bad(f"The range is longer than {MAX_STATS_RANGE.days} days", "startDate")
    states: list[str] = []
    for raw in args.getlist("state"):
        for state in raw.split(","):
            state = state.strip().upper()
            if not state:
                continue
            if state not in dashboards.STATES:
                raise _bad(
                    f"Unknown execution state {state[:40]!r}; the states are "
                    + ", ".join(sorted(dashboards.STATES)),
                    "state",
                )
            states.append(state)
    failures = args.get("failures")
    return StatsFilter(
        start=start,
        end=end,
        namespace=args.get("namespace") or None,
        flow_id=args.get("flowId") or None,
        states=sorted(set(states)),
        failures=10 if not failures else _int(failures, "failures", 0, MAX_FAILURES),
    )


def blueprint(ctx: ServerContext) -> Blueprint:
    """The routes, on `ctx`'s store and database."""
    routes = Blueprint("dashboards", __name__)
    store, db = ctx.store, ctx.db

    async def chart_rows(
        chart: Chart, dashboard: Dashboard | None, body: dict[str, Any]
    ) -> dict[str, Any]:
        asked = ChartRequest(body, dt.datetime.now(dt.UTC))
        start, end = asked.window(dashboard)
        if chart.type == "Markdown":
            if chart.flow is None:
                return {"results": [{"content": chart.content or ""}], "total": 1}
            namespace, flow_id = chart.flow
            require_namespace(namespace)
            description = await db.run(
                lambda conn: model.flow_description(conn, namespace, flow_id)
            )
            if description is None:
                raise NotFound(
                    f"Flow {namespace}.{flow_id} (of Markdown chart {chart.id}) is not deployed"
                )
            return {"results": [{"description": description}], "total": 1}
        assert chart.data is not None
        extra = asked.conditions(chart.data.source)
        scope = namespace_filter("namespace")
        answer = await db.run(
            lambda conn: model.run_chart(
                conn,
                chart,
                start=start,
                end=end,
                scope=scope,
                extra=extra,
                page=asked.page,
                size=asked.size,
            )
        )
        answer.update(startDate=iso(start), endDate=iso(end))
        return answer

    @routes.get("/api/v1/dashboards/default/stats")
    @access("viewer")
    async def default_dashboard_stats() -> Response:
        """The default dashboard: executions per state per time bucket, per namespace and flow,
        success ratio, duration percentiles and the latest failures."""
        wanted = _stats_filter(dt.datetime.now(dt.UTC))
        scope = namespace_filter("namespace")
        return _answer(await db.run(lambda conn: model.default_stats(conn, wanted, scope)))

    @routes.get("/api/v1/dashboards")
    @access("viewer")
    async def list_dashboards() -> Response:
        """A page of the custom dashboards (page, size, q, sort: title, id, created, updated,
        each :asc or :desc)."""
        page = _int(request.args.get("page", "1"), "page", 1, 100_000)
        size = _int(request.args.get("size", "10"), "size", 1, 1000)
        sort, _, direction = (request.args.get("sort") or "title:asc").partition(":")
        if sort not in model.SORTS or direction.lower() not in ("", "asc", "desc"):
            raise _bad(f"sort is one of {', '.join(model.SORTS)}, with :asc or :desc", "sort")
        q = request.args.get("q") or None
        if q is not None and len(q) > 200:
            raise _bad("q holds at most 200 characters", "q")
        results, total = await db.run(
            lambda conn: model.list_dashboards(
                conn, q=q, page=page, size=size, sort=sort, descending=direction == "desc"
            )
        )
        return _answer({"results": results, "total": total})

    @routes.post("/api/v1/dashboards")
    @access("editor")
    async def create_dashboard() -> Response:
        """Create a dashboard from its YAML (its `id`, or a new one)."""
        source = await bodies.yaml_text()
        record, _ = await dashboards.save_dashboard(store, source, create_only=True, actor=actor())
        return _answer(await bodies.off_loop(_dashboard_json, record))

    @routes.post("/api/v1/dashboards/validate")
    @access("viewer")
    async def validate_dashboard() -> Response:
        """Check a dashboard's YAML without saving it: every problem, with its line."""
        source = await bodies.yaml_text()
        entry: dict[str, Any] = {"index": 0}
        try:
            await bodies.off_loop(dashboards.parse_dashboard, source)
        except TiercelError as exc:
            entry["constraints"] = str(exc)
            entry["details"] = [d.to_json() for d in exc.details]
        return _answer(entry)

    @routes.post("/api/v1/dashboards/validate/chart")
    @access("viewer")
    async def validate_chart() -> Response:
        """Check one chart's YAML (what an editor shows before saving it)."""
        source = await bodies.yaml_text()
        entry: dict[str, Any] = {"index": 0}
        try:
            await bodies.off_loop(dashboards.parse_chart, source)
        except TiercelError as exc:
            entry["constraints"] = str(exc)
            entry["details"] = [d.to_json() for d in exc.details]
        return _answer(entry)

    @routes.get("/api/v1/dashboards/<dashboard_id>")
    @access("viewer")
    async def get_dashboard(dashboard_id: str) -> Response:
        """A dashboard: its properties and YAML source (`sourceCode`)."""
        record = await dashboards.get_dashboard(store, dashboard_id)
        return _answer(await bodies.off_loop(_dashboard_json, record))

    @routes.put("/api/v1/dashboards/<dashboard_id>")
    @access("editor")
    async def update_dashboard(dashboard_id: str) -> Response:
        """Replace a dashboard's YAML (its id stays)."""
        source = await bodies.yaml_text()
        record, _ = await dashboards.save_dashboard(
            store, source, dashboard_id=dashboard_id, actor=actor()
        )
        return _answer(await bodies.off_loop(_dashboard_json, record))

    @routes.delete("/api/v1/dashboards/<dashboard_id>")
    @access("editor")
    async def delete_dashboard(dashboard_id: str) -> Response:
        """Delete a dashboard."""
        await dashboards.delete_dashboard(store, dashboard_id, actor=actor())
        return Response("", status=204)

    @routes.post("/api/v1/dashboards/<dashboard_id>/charts/<chart_id>")
    @access("viewer")
    async def chart_data(dashboard_id: str, chart_id: str) -> Response:
        """A chart's rows over a range, with filters that narrow it (Kestra's PagedResults)."""
        body = await bodies.json_object("the chart request {startDate, endDate, filters, ...}")
        record = await dashboards.get_dashboard(store, dashboard_id)
        dashboard = await bodies.off_loop(dashboards.parse_dashboard, record.source)
        dashboard = _with_id(dashboard, record.id)
        return _answer(await chart_rows(dashboard.chart(chart_id), dashboard, body))

    @routes.post("/api/v1/dashboards/<dashboard_id>/charts/<chart_id>/export/to-csv")
    @access("viewer")
    async def chart_csv(dashboard_id: str, chart_id: str) -> Response:
        """A chart's rows as CSV (one line per row, the column names first)."""
        body = await bodies.json_object("the chart request {startDate, endDate, filters, ...}")
        record = await dashboards.get_dashboard(store, dashboard_id)
        dashboard = await bodies.off_loop(dashboards.parse_dashboard, record.source)
        rows = await chart_rows(dashboard.chart(chart_id), _with_id(dashboard, record.id), body)
        text = await bodies.off_loop(_csv, rows["results"])
        return Response(
            text,
            content_type="text/csv; charset=utf-8",
            headers={"Content-Disposition": f'attachment; filename="{chart_id}.csv"'},
        )

    @routes.post("/api/v1/dashboards/charts/preview")
    @access("viewer")
    async def preview_chart() -> Response:
        """The rows of a chart sent as YAML, not saved: `{chart, globalFilter}`."""
        body = await bodies.json_object("{chart: YAML, globalFilter: {...}}")
        unknown = sorted(set(body) - {"chart", "globalFilter"})
        if unknown:
            raise _bad(
                f"Unknown key {unknown[0]!r}; the preview takes chart and globalFilter", unknown[0]
            )
        source = body.get("chart")
        if not isinstance(source, str) or not source.strip():
            raise _bad("chart must be the chart's YAML, as text", "chart")
        chart = await bodies.off_loop(dashboards.parse_chart, source)
        global_filter = body.get("globalFilter") or {}
        if not isinstance(global_filter, dict):
            raise _bad("globalFilter must be an object", "globalFilter")
        return _answer(await chart_rows(chart, None, global_filter))

    return routes


def _csv(rows: list[dict[str, Any]]) -> str:
    out = io.StringIO()
    names = list(rows[0]) if rows else []
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(names)
    for row in rows:
        writer.writerow(["" if row.get(n) is None else row.get(n) for n in names])
    return out.getvalue()


def _with_id(dashboard: Dashboard, dashboard_id: str) -> Dashboard:
    return msgspec.structs.replace(dashboard, id=dashboard_id)
