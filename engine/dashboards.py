"""Custom dashboards: Kestra's dashboard YAML, read into a checked model, and saved as events.

A dashboard is `id`, `title`, `description`, `timeWindow` (`default` and `max`, ISO-8601
durations) and `charts`. Each chart has an `id`, a `type` (TimeSeries, Bar, Pie, Table, KPI or
Markdown, written as Kestra writes them, `io.kestra.plugin.core.dashboard.chart.Bar`, or
short), `chartOptions`, and, but for Markdown, `data`: a source (Executions, Logs, Metrics, or
their KPI forms) with `columns` (each a `field` of the source, an `agg` among COUNT, SUM, AVG,
MIN, MAX, a `displayName`), `where` filters (EQUAL_TO, NOT_EQUAL_TO, IN, NOT_IN, GREATER_THAN,
..., OR) and `orderBy`.

Everything a query will use is checked here, against closed lists: a field, an aggregation or
an operation outside them is a problem named at its line and column, every problem at once. The
read model (projections/dashboards.py) compiles a checked chart into SQL from those lists only,
so no text of a dashboard ever reaches SQL but as a parameter.

A dashboard's stream (`dashboard:<id>`) records each save (`DashboardCreated`,
`DashboardUpdated`, with the YAML source) and its deletion, with who made it.
"""

from __future__ import annotations

import datetime as dt
import re
import uuid
from typing import Any

import msgspec

from engine import events as ev
from engine import safe_yaml
from engine.duration import parse_duration
from engine.errors import Conflict, InvalidRequest, NotFound, Problem, TiercelError
from engine.plugin import EXECUTION_STATES
from engine.store import NO_STREAM, EventStore, StoredEvent

CHART_PREFIX = "io.kestra.plugin.core.dashboard.chart."
DATA_PREFIX = "io.kestra.plugin.core.dashboard.data."
CHART_TYPES = ("TimeSeries", "Bar", "Pie", "Table", "KPI", "Markdown")
DATA_TYPES = ("Executions", "Logs", "Metrics", "ExecutionsKPI", "LogsKPI", "MetricsKPI")
AGGREGATIONS = ("COUNT", "SUM", "AVG", "MIN", "MAX")

TEXT, NUMBER, DATE, STATE, LEVEL, LABELS = "text", "number", "date", "state", "level", "labels"
FIELDS: dict[str, dict[str, str]] = {
    "executions": {
        "ID": TEXT,
        "NAMESPACE": TEXT,
        "FLOW_ID": TEXT,
        "FLOW_REVISION": NUMBER,
        "STATE": STATE,
        "DURATION": NUMBER,
        "LABELS": LABELS,
        "START_DATE": DATE,
        "END_DATE": DATE,
        "TRIGGER_EXECUTION_ID": TEXT,
    },
    "logs": {
        "NAMESPACE": TEXT,
        "FLOW_ID": TEXT,
        "TASK_ID": TEXT,
        "EXECUTION_ID": TEXT,
        "TASK_RUN_ID": TEXT,
        "DATE": DATE,
        "LEVEL": LEVEL,
        "MESSAGE": TEXT,
    },
    "metrics": {
        "NAMESPACE": TEXT,
        "FLOW_ID": TEXT,
        "TASK_ID": TEXT,
        "EXECUTION_ID": TEXT,
        "TASK_RUN_ID": TEXT,
        "TYPE": TEXT,
        "NAME": TEXT,
        "VALUE": NUMBER,
        "DATE": DATE,
    },
}
"""The fields of each data source and their kinds: what a column or a filter may name."""

OPERATIONS = (
    "EQUAL_TO",
    "NOT_EQUAL_TO",
    "GREATER_THAN",
    "GREATER_THAN_OR_EQUAL_TO",
    "LESS_THAN",
    "LESS_THAN_OR_EQUAL_TO",
    "IN",
    "NOT_IN",
    "STARTS_WITH",
    "ENDS_WITH",
    "CONTAINS",
    "REGEX",
    "IS_NULL",
    "IS_NOT_NULL",
    "OR",
)
COMPARISONS = frozenset(
    {"GREATER_THAN", "GREATER_THAN_OR_EQUAL_TO", "LESS_THAN", "LESS_THAN_OR_EQUAL_TO"}
)
TEXT_MATCHES = frozenset({"STARTS_WITH", "ENDS_WITH", "CONTAINS", "REGEX"})
LISTS = frozenset({"IN", "NOT_IN"})
NO_VALUE = frozenset({"IS_NULL", "IS_NOT_NULL"})

STATES = EXECUTION_STATES
"""Kestra's execution states (a STATE filter naming another is a mistake)."""
LEVELS = ("TRACE", "DEBUG", "INFO", "WARN", "ERROR")

MAX_CHARTS = 50
MAX_COLUMNS = 20
MAX_FILTERS = 50
MAX_VALUES = 500
MAX_TEXT = 1000
MAX_OR_DEPTH = 3
MAX_SOURCE_CHARS = 1024 * 1024
"""A dashboard's YAML is at most this long (it is kept in an event)."""
DEFAULT_WINDOW = dt.timedelta(days=30)
DEFAULT_MAX_WINDOW = dt.timedelta(days=366)
LIMITS = safe_yaml.YamlLimits(max_chars=MAX_SOURCE_CHARS, max_depth=20, max_nodes=20_000)

_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
RESERVED_IDS = frozenset({"validate", "charts", "default"})
"""Ids that are path segments of the dashboard routes (`/dashboards/validate`, ...)."""

_TOP = ("id", "title", "description", "timeWindow", "charts")
_CHART = ("id", "type", "chartOptions", "data", "content", "source")
_DATA = ("type", "columns", "where", "orderBy", "numerator")
_COLUMN = ("field", "agg", "displayName", "labelKey", "graphStyle", "columnAlignment")
_FILTER = ("type", "field", "value", "values", "labelKey")
_GRAPH_STYLES = ("LINES", "BARS", "POINTS")


class DashboardValidationError(TiercelError):
    """A dashboard does not validate; `details` lists every problem found, with its line."""

    status = 422

    def __init__(self, problems: list[Problem]) -> None:
        n = len(problems)
        super().__init__(f"Invalid dashboard: {n} problem{'s' if n != 1 else ''} found", problems)


class Column(msgspec.Struct, frozen=True, kw_only=True):
    """One column of a chart's data: a field (grouped by when it has no `agg`), or an
    aggregation of one (COUNT needs none)."""

    name: str
    field: str | None = None
    agg: str | None = None
    labelKey: str | None = None
    displayName: str | None = None


class Condition(msgspec.Struct, frozen=True, kw_only=True):
    """One `where` filter; `anyOf` holds the filters of an OR."""

    type: str
    field: str | None = None
    labelKey: str | None = None
    value: Any = None
    values: list[Any] = []
    anyOf: list[Condition] = []


class OrderBy(msgspec.Struct, frozen=True, kw_only=True):
    """Sort the rows by a column (by its name in `columns`)."""

    column: str
    order: str = "ASC"


class Data(msgspec.Struct, frozen=True, kw_only=True):
    """Where a chart's rows come from (`source`: executions, logs or metrics) and how."""

    source: str
    kpi: bool
    columns: list[Column]
    where: list[Condition] = []
    orderBy: list[OrderBy] = []
    numerator: list[Condition] = []


class Chart(msgspec.Struct, frozen=True, kw_only=True):
    """One chart of a dashboard; `type` is its short name (TimeSeries, Bar, ...)."""

    id: str
    type: str
    options: dict[str, Any] = {}
    data: Data | None = None
    content: str | None = None
    flow: tuple[str, str] | None = None
    """A Markdown chart showing a flow's description: (namespace, flow id)."""


class Dashboard(msgspec.Struct, frozen=True, kw_only=True):
    """A checked dashboard."""

    id: str | None
    title: str
    description: str | None
    window: float
    """The time range charts show by default, in seconds."""
    maxWindow: float
    """The longest time range a chart may be asked for, in seconds."""
    charts: list[Chart]

    def chart(self, chart_id: str) -> Chart:
        """The chart `chart_id`; NotFound naming the charts there are."""
        for chart in self.charts:
            if chart.id == chart_id:
                return chart
        raise NotFound(
            f"Dashboard {self.id} has no chart {chart_id!r}; its charts are "
            + (", ".join(c.id for c in self.charts) or "none")
        )


def short_type(value: str, prefix: str) -> str:
    """`io.kestra.plugin.core.dashboard.chart.Bar` as `Bar` (a short name stays)."""
    return value[len(prefix) :] if value.startswith(prefix) else value


class _Reader:
    """Checks one document, collecting every problem with its line and column."""

    def __init__(self, marks: dict[str, tuple[int, int]]) -> None:
        self.marks = marks
        self.problems: list[Problem] = []

    def add(self, path: str, message: str) -> None:
        path = path.lstrip(".")  # a chart read on its own has its paths from the root
        line, column = self._mark(path)
        self.problems.append(Problem(message, path, line, column))

    def _mark(self, path: str) -> tuple[int | None, int | None]:
        while True:
            if path in self.marks:
                return self.marks[path]
            if not path:
                return None, None
            cut = max(path.rfind("."), path.rfind("["))
            path = path[:cut] if cut > 0 else ""

    def mapping(self, value: Any, path: str, keys: tuple[str, ...], what: str) -> dict[str, Any]:
        if not isinstance(value, dict):
            self.add(path, f"{what} must be a mapping")
            return {}
        for key in value:
            if key not in keys:
                self.add(
                    _join(path, key),
                    f"Unknown property {key!r} of {what}; it takes {', '.join(keys)}",
                )
        return value

    def text(self, value: Any, path: str, required: bool = False) -> str | None:
        if value is None:
            if required:
                self.add(path, f"{path.rsplit('.', 1)[-1]} is required")
            return None
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            self.add(path, "must be text")
            return None
        text = str(value)
        if len(text) > MAX_TEXT and not path.endswith("content"):
            self.add(path, f"holds at most {MAX_TEXT} characters")
            return None
        return text

    def duration(self, value: Any, path: str, default: dt.timedelta) -> dt.timedelta:
        if value is None:
            return default
        try:
            found = parse_duration(str(value))
        except ValueError as exc:
            self.add(path, str(exc))
            return default
        if found <= dt.timedelta(0):
            self.add(path, "must be a duration longer than zero")
            return default
        return found

    # --- the document ------------------------------------------------------------------------

    def dashboard(self, raw: Any) -> Dashboard | None:
        top = self.mapping(raw, "", _TOP, "a dashboard")
        if not isinstance(raw, dict):
            return None
        dashboard_id = self.text(top.get("id"), "id")
        if dashboard_id is not None:
            check_id(dashboard_id, self, "id")
        title = self.text(top.get("title"), "title", required=True)
        description = self.text(top.get("description"), "description")
        window_raw = self.mapping(
            top.get("timeWindow") or {}, "timeWindow", ("default", "max"), "timeWindow"
        )
        window = self.duration(window_raw.get("default"), "timeWindow.default", DEFAULT_WINDOW)
        longest = self.duration(window_raw.get("max"), "timeWindow.max", DEFAULT_MAX_WINDOW)
        if window > longest:
            self.add("timeWindow.default", "is longer than timeWindow.max")
        charts_raw = top.get("charts")
        charts: list[Chart] = []
        if charts_raw is None:
            charts_raw = []
        if not isinstance(charts_raw, list):
            self.add("charts", "charts must be a list of charts")
            charts_raw = []
        if len(charts_raw) > MAX_CHARTS:
            self.add("charts", f"a dashboard holds at most {MAX_CHARTS} charts")
            charts_raw = charts_raw[:MAX_CHARTS]
        seen: set[str] = set()
        for i, item in enumerate(charts_raw):
            chart = self.chart(item, f"charts[{i}]")
            if chart is None:
                continue
            if chart.id in seen:
                self.add(f"charts[{i}].id", f"Duplicate chart id {chart.id!r}")
            seen.add(chart.id)
            charts.append(chart)
        if self.problems or title is None:
            return None
        return Dashboard(
            id=dashboard_id,
            title=title,
            description=description,
            window=window.total_seconds(),
            maxWindow=longest.total_seconds(),
            charts=charts,
        )

    def chart(self, raw: Any, path: str) -> Chart | None:
        before = len(self.problems)
        body = self.mapping(raw, path, _CHART, "a chart")
        if not isinstance(raw, dict):
            return None
        chart_id = self.text(body.get("id"), f"{path}.id", required=True)
        if chart_id is not None and not _ID.fullmatch(chart_id):
            self.add(
                f"{path}.id",
                f"Chart id {chart_id!r} must be letters, digits, '.', '_' or '-' "
                "(at most 100, starting with a letter or digit)",
            )
        type_raw = self.text(body.get("type"), f"{path}.type", required=True)
        kind = short_type(type_raw or "", CHART_PREFIX)
        if type_raw is not None and kind not in CHART_TYPES:
            self.add(
                f"{path}.type",
                f"Unknown chart type {type_raw!r}; the chart types are "
                + ", ".join(CHART_PREFIX + t for t in CHART_TYPES),
            )
            return None
        options = body.get("chartOptions") or {}
        if not isinstance(options, dict):
            self.add(f"{path}.chartOptions", "chartOptions must be a mapping")
            options = {}
        if kind == "Markdown":
            return self.markdown(body, path, chart_id, options, before)
        for key in ("content", "source"):
            if key in body:
                self.add(f"{path}.{key}", f"{key} belongs to Markdown charts only")
        if "data" not in body:
            self.add(f"{path}.data", f"A {kind} chart needs data (its source and columns)")
            return None
        data = self.data(body["data"], f"{path}.data", kpi=kind == "KPI")
        if data is None:
            return None
        self.chart_shape(kind, data, options, path)
        if len(self.problems) > before or chart_id is None:
            return None
        return Chart(id=chart_id, type=kind, options=options, data=data)

    def markdown(
        self, body: dict[str, Any], path: str, chart_id: str | None, options: Any, before: int
    ) -> Chart | None:
        if "data" in body:
            self.add(f"{path}.data", "A Markdown chart shows text: it takes content, not data")
        content = self.text(body.get("content"), f"{path}.content")
        flow: tuple[str, str] | None = None
        source = body.get("source")
        if source is not None:
            src = self.mapping(
                source, f"{path}.source", ("type", "content", "namespace", "flowId"), "source"
            )
            kind = short_type(str(src.get("type") or ""), CHART_PREFIX + "mardown.sources.")
            kind = short_type(kind, CHART_PREFIX + "markdown.sources.")
            if kind == "Text":
                content = self.text(src.get("content"), f"{path}.source.content", required=True)
            elif kind == "FlowDescription":
                namespace = self.text(src.get("namespace"), f"{path}.source.namespace", True)
                flow_id = self.text(src.get("flowId"), f"{path}.source.flowId", True)
                if namespace and flow_id:
                    flow = (namespace, flow_id)
            else:
                self.add(
                    f"{path}.source.type",
                    f"Unknown Markdown source {src.get('type')!r}; it is Text or FlowDescription",
                )
        if content is None and flow is None and len(self.problems) == before:
            self.add(f"{path}.content", "A Markdown chart needs content (or a source)")
        if len(self.problems) > before or chart_id is None:
            return None
        return Chart(id=chart_id, type="Markdown", options=options, content=content, flow=flow)

    def data(self, raw: Any, path: str, kpi: bool) -> Data | None:
        before = len(self.problems)
        body = self.mapping(raw, path, _DATA, "data")
        if not isinstance(raw, dict):
            return None
        type_raw = self.text(body.get("type"), f"{path}.type", required=True)
        if type_raw is None:
            return None
        kind = short_type(type_raw, DATA_PREFIX)
        if kind not in DATA_TYPES:
            self.add(
                f"{path}.type",
                f"Unknown data type {type_raw!r}; the data types are "
                + ", ".join(DATA_PREFIX + t for t in DATA_TYPES),
            )
            return None
        if kind.endswith("KPI") != kpi:
            wanted = "a KPI chart takes" if kpi else "only a KPI chart takes"
            self.add(
                f"{path}.type",
                f"{wanted} ExecutionsKPI, LogsKPI or MetricsKPI data, not {kind}",
            )
            return None
        source = kind.removesuffix("KPI").lower()
        fields = FIELDS[source]
        columns: list[Column] = []
        raw_columns = body.get("columns")
        if kpi:
            if raw_columns is None:
                raw_columns = {"field": "ID" if source == "executions" else None, "agg": "COUNT"}
            column = self.column(raw_columns, f"{path}.columns", "value", fields, source)
            if column is not None:
                if column.agg is None:
                    self.add(f"{path}.columns", "A KPI's column needs an agg (COUNT, SUM, ...)")
                columns.append(column)
        else:
            if not isinstance(raw_columns, dict) or not raw_columns:
                self.add(f"{path}.columns", "columns must map column names to their fields")
                raw_columns = {}
            if len(raw_columns) > MAX_COLUMNS:
                self.add(f"{path}.columns", f"at most {MAX_COLUMNS} columns")
                raw_columns = {}
            for name, spec in raw_columns.items():
                column = self.column(spec, f"{path}.columns.{name}", name, fields, source)
                if column is not None:
                    columns.append(column)
        where = self.conditions(body.get("where"), f"{path}.where", fields)
        numerator: list[Condition] = []
        if "numerator" in body:
            if not kpi:
                self.add(f"{path}.numerator", "numerator belongs to KPI data only")
            numerator = self.conditions(body.get("numerator"), f"{path}.numerator", fields)
        order = self.order(body.get("orderBy"), f"{path}.orderBy", {c.name for c in columns})
        if len(self.problems) > before:
            return None
        return Data(
            source=source,
            kpi=kpi,
            columns=columns,
            where=where,
            orderBy=order,
            numerator=numerator,
        )

    def column(
        self, raw: Any, path: str, name: str, fields: dict[str, str], source: str
    ) -> Column | None:
        before = len(self.problems)
        if not _ID.fullmatch(name):
            self.add(path, f"Column name {name!r} must be letters, digits, '.', '_' or '-'")
        body = self.mapping(raw, path, _COLUMN, "a column")
        if not isinstance(raw, dict):
            return None
        field = self.text(body.get("field"), f"{path}.field")
        agg = self.text(body.get("agg"), f"{path}.agg")
        label_key = self.text(body.get("labelKey"), f"{path}.labelKey")
        display = self.text(body.get("displayName"), f"{path}.displayName")
        style = self.text(body.get("graphStyle"), f"{path}.graphStyle")
        if style is not None and style not in _GRAPH_STYLES:
            self.add(f"{path}.graphStyle", f"graphStyle is one of {', '.join(_GRAPH_STYLES)}")
        if agg is not None and agg not in AGGREGATIONS:
            self.add(
                f"{path}.agg",
                f"Unknown aggregation {agg!r}; the aggregations are {', '.join(AGGREGATIONS)}",
            )
            agg = None
        kind: str | None = None
        if field is not None:
            kind = fields.get(field)
            if kind is None:
                self.add(
                    f"{path}.field",
                    f"Unknown field {field!r} of {source}; its fields are {', '.join(fields)}",
                )
        elif agg != "COUNT" and "agg" in body:
            self.add(f"{path}.field", f"{agg} needs a field (only COUNT counts rows without one)")
        elif agg is None and "agg" not in body:
            self.add(f"{path}.field", "A column needs a field, or agg: COUNT")
        if kind == LABELS and not label_key:
            self.add(f"{path}.labelKey", "A LABELS column needs the labelKey of the label shown")
        if label_key is not None and kind not in (LABELS, None):
            self.add(f"{path}.labelKey", "labelKey belongs to a LABELS column only")
        if agg in ("SUM", "AVG") and kind not in (NUMBER, None):
            self.add(f"{path}.agg", f"{agg} needs a numeric field, and {field} is not one")
        if agg in ("MIN", "MAX") and kind not in (NUMBER, DATE, None):
            self.add(f"{path}.agg", f"{agg} needs a numeric or date field, and {field} is not one")
        if len(self.problems) > before:
            return None
        return Column(name=name, field=field, agg=agg, labelKey=label_key, displayName=display)

    def conditions(
        self, raw: Any, path: str, fields: dict[str, str], depth: int = 0
    ) -> list[Condition]:
        if raw is None:
            return []
        if not isinstance(raw, list):
            self.add(path, "must be a list of filters")
            return []
        if len(raw) > MAX_FILTERS:
            self.add(path, f"at most {MAX_FILTERS} filters")
            return []
        out = []
        for i, item in enumerate(raw):
            found = self.condition(item, f"{path}[{i}]", fields, depth)
            if found is not None:
                out.append(found)
        return out

    def condition(
        self, raw: Any, path: str, fields: dict[str, str], depth: int
    ) -> Condition | None:
        before = len(self.problems)
        body = self.mapping(raw, path, _FILTER, "a filter")
        if not isinstance(raw, dict):
            return None
        operation = self.text(body.get("type"), f"{path}.type", required=True)
        if operation is None:
            return None
        if operation not in OPERATIONS:
            self.add(
                f"{path}.type",
                f"Unknown filter type {operation!r}; the filter types are " + ", ".join(OPERATIONS),
            )
            return None
        if operation == "OR":
            if depth >= MAX_OR_DEPTH:
                self.add(path, f"OR filters nest at most {MAX_OR_DEPTH} deep")
                return None
            inner = self.conditions(body.get("values"), f"{path}.values", fields, depth + 1)
            if not inner and len(self.problems) == before:
                self.add(f"{path}.values", "An OR filter needs the filters it joins, in values")
            return None if len(self.problems) > before else Condition(type="OR", anyOf=inner)
        field = self.text(body.get("field"), f"{path}.field", required=True)
        kind = fields.get(field or "")
        if field is not None and kind is None:
            self.add(
                f"{path}.field",
                f"Unknown field {field!r} to filter on; the fields are {', '.join(fields)}",
            )
            return None
        label_key = self.text(body.get("labelKey"), f"{path}.labelKey")
        if kind == LABELS and not label_key:
            self.add(f"{path}.labelKey", "A LABELS filter needs the labelKey of the label")
        values: list[Any] = []
        value: Any = None
        if operation in LISTS:
            raw_values = body.get("values")
            if not isinstance(raw_values, list) or not raw_values:
                self.add(f"{path}.values", f"{operation} needs a list of values")
            elif len(raw_values) > MAX_VALUES:
                self.add(f"{path}.values", f"at most {MAX_VALUES} values")
            else:
                values = [
                    self.value(v, f"{path}.values[{i}]", kind, operation)
                    for i, v in enumerate(raw_values)
                ]
        elif operation not in NO_VALUE:
            if "value" not in body:
                self.add(f"{path}.value", f"{operation} needs a value")
            else:
                value = self.value(body["value"], f"{path}.value", kind, operation)
        if operation in COMPARISONS and kind not in (NUMBER, DATE):
            self.add(f"{path}.type", f"{operation} compares numbers or dates; {field} is neither")
        if operation in TEXT_MATCHES and kind in (NUMBER, DATE):
            self.add(f"{path}.type", f"{operation} matches text; {field} is not text")
        if len(self.problems) > before:
            return None
        return Condition(
            type=operation, field=field, labelKey=label_key, value=value, values=values
        )

    def value(self, raw: Any, path: str, kind: str | None, operation: str) -> Any:
        if isinstance(raw, dict | list) or raw is None:
            self.add(path, "A filter value is a single number, date or text")
            return None
        if kind == NUMBER:
            if isinstance(raw, bool) or not isinstance(raw, int | float):
                try:
                    return float(str(raw))
                except ValueError:
                    self.add(path, f"must be a number, got {raw!r}")
                    return None
            return raw
        if kind == DATE:
            found = parse_date(raw)
            if found is None:
                self.add(path, f"must be an ISO-8601 date-time, got {raw!r}")
            return found.isoformat() if found else None
        text = str(raw)
        if len(text) > MAX_TEXT:
            self.add(path, f"holds at most {MAX_TEXT} characters")
            return None
        if kind == STATE and operation not in TEXT_MATCHES and text not in STATES:
            self.add(
                path,
                f"Unknown execution state {text!r}; the states are {', '.join(sorted(STATES))}",
            )
        if kind == LEVEL and operation not in TEXT_MATCHES and text not in LEVELS:
            self.add(path, f"Unknown log level {text!r}; the levels are {', '.join(LEVELS)}")
        if operation == "REGEX":
            try:
                re.compile(text)
            except re.error as exc:
                self.add(path, f"is not a regular expression: {exc}")
        return text

    def order(self, raw: Any, path: str, names: set[str]) -> list[OrderBy]:
        if raw is None:
            return []
        if not isinstance(raw, list):
            self.add(path, "orderBy must be a list of {column, order}")
            return []
        out = []
        for i, item in enumerate(raw[:MAX_COLUMNS]):
            body = self.mapping(item, f"{path}[{i}]", ("column", "order"), "an orderBy")
            column = self.text(body.get("column"), f"{path}[{i}].column", required=True)
            order = str(body.get("order") or "ASC")
            if column is not None and column not in names:
                self.add(
                    f"{path}[{i}].column",
                    f"orderBy names {column!r}, which is not a column of this chart "
                    f"({', '.join(sorted(names))})",
                )
            if order not in ("ASC", "DESC"):
                self.add(f"{path}[{i}].order", "order is ASC or DESC")
            if column is not None:
                out.append(OrderBy(column=column, order=order))
        return out

    def chart_shape(self, kind: str, data: Data, options: dict[str, Any], path: str) -> None:
        """What each chart type needs of its columns to be drawn."""
        if kind in ("KPI", "Table"):
            return
        dims = [c for c in data.columns if c.agg is None]
        aggs = [c for c in data.columns if c.agg is not None]
        if not aggs:
            self.add(f"{path}.data.columns", f"A {kind} chart needs a column with an agg")
        column = options.get("column")
        names = {c.name for c in dims}
        where = f"{path}.chartOptions.column"
        if column is None:
            self.add(
                where, f"A {kind} chart's chartOptions.column names the column it is drawn along"
            )
        elif column not in names:
            self.add(
                where,
                f"chartOptions.column names {column!r}, which is not a column without agg "
                f"({', '.join(sorted(names)) or 'none'})",
            )
        elif kind == "TimeSeries":
            field = next(c.field for c in dims if c.name == column)
            if FIELDS[data.source].get(field or "") != DATE:
                self.add(where, f"A TimeSeries is drawn along a date column; {column} is not one")
        color = options.get("colorByColumn")
        if color is not None and color not in names:
            self.add(
                f"{path}.chartOptions.colorByColumn",
                f"colorByColumn names {color!r}, which is not a column without agg",
            )
        if kind == "Pie" and len(aggs) > 1:
            self.add(f"{path}.data.columns", "A Pie chart shows one aggregation")


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def check_id(dashboard_id: str, reader: _Reader | None = None, path: str = "id") -> None:
    """Refuse an id that is not letters, digits, '.', '_' or '-', or a reserved one."""
    problem = None
    if not _ID.fullmatch(dashboard_id):
        problem = (
            f"Dashboard id {dashboard_id[:120]!r} must be letters, digits, '.', '_' or '-' "
            "(at most 100, starting with a letter or digit)"
        )
    elif dashboard_id in RESERVED_IDS:
        problem = f"Dashboard id {dashboard_id!r} is reserved ({', '.join(sorted(RESERVED_IDS))})"
    if problem is None:
        return
    if reader is not None:
        reader.add(path, problem)
        return
    raise InvalidRequest(problem, [Problem(problem, path)])


def parse_date(raw: Any) -> dt.datetime | None:
    """An ISO-8601 date-time (UTC when it names no zone), or None when `raw` is not one."""
    if isinstance(raw, dt.datetime):
        at = raw
    elif isinstance(raw, dt.date):
        at = dt.datetime(raw.year, raw.month, raw.day)
    else:
        try:
            at = dt.datetime.fromisoformat(str(raw).strip().replace("Z", "+00:00"))
        except ValueError:
            return None
    return at if at.tzinfo else at.replace(tzinfo=dt.UTC)


def check_condition(raw: dict[str, Any], source: str, path: str) -> Condition:
    """A `where` filter given as values (a request's filter), checked as a dashboard's are
    against the fields of `source`; `InvalidRequest` says what is wrong."""
    reader = _Reader({})
    found = reader.condition(raw, path, FIELDS[source], 0)
    if found is None:
        problems = reader.problems or [Problem("not a filter", path)]
        raise InvalidRequest(
            "; ".join(f"{p.path}: {p.message}" for p in problems),
            [Problem(p.message, p.path) for p in problems],
        )
    return found


def parse_dashboard(source: str) -> Dashboard:
    """Read and check a dashboard's YAML; `DashboardValidationError` lists every problem."""
    raw, marks, problems = safe_yaml.load_with_marks(source, LIMITS)
    if problems:
        raise DashboardValidationError(problems)
    reader = _Reader(marks)
    if raw is None:
        raise DashboardValidationError([Problem("The dashboard is empty: write its YAML")])
    found = reader.dashboard(raw)
    if found is None:
        raise DashboardValidationError(reader.problems)
    return found


def parse_chart(source: str) -> Chart:
    """Read and check one chart's YAML (what a preview sends)."""
    raw, marks, problems = safe_yaml.load_with_marks(source, LIMITS)
    if problems:
        raise DashboardValidationError(problems)
    reader = _Reader(marks)
    found = reader.chart(raw, "")
    if found is None:
        raise DashboardValidationError(
            reader.problems or [Problem("The chart is empty: write its YAML")]
        )
    return found


# --- saving -------------------------------------------------------------------------------------


class DashboardRecord(msgspec.Struct, frozen=True, kw_only=True):
    """A dashboard as its stream last recorded it."""

    id: str
    title: str
    source: str
    version: int
    created: dt.datetime
    updated: dt.datetime
    deleted: bool = False


def fold(history: list[StoredEvent]) -> DashboardRecord | None:
    """The dashboard a stream's events leave (None when it has none)."""
    record: DashboardRecord | None = None
    for e in history:
        event = e.event
        if isinstance(event, ev.DashboardCreated):
            record = DashboardRecord(
                id=event.dashboardId,
                title=event.title,
                source=event.source,
                version=e.version,
                created=e.recorded_at,
                updated=e.recorded_at,
            )
        elif isinstance(event, ev.DashboardUpdated) and record is not None:
            record = msgspec.structs.replace(
                record,
                title=event.title,
                source=event.source,
                version=e.version,
                updated=e.recorded_at,
            )
        elif isinstance(event, ev.DashboardDeleted) and record is not None:
            record = msgspec.structs.replace(
                record, deleted=True, version=e.version, updated=e.recorded_at
            )
    return record


async def get_dashboard(store: EventStore, dashboard_id: str) -> DashboardRecord:
    """The dashboard `dashboard_id` as last saved; NotFound when unknown or deleted."""
    check_id(dashboard_id, path="id")
    record = fold(await store.read_stream(ev.dashboard_stream(dashboard_id)))
    if record is None or record.deleted:
        raise NotFound(f"Dashboard {dashboard_id} does not exist")
    return record


async def save_dashboard(
    store: EventStore,
    source: str,
    *,
    dashboard_id: str | None = None,
    create_only: bool = False,
    actor: str,
) -> tuple[DashboardRecord, Dashboard]:
    """Check `source` and record it as the dashboard's YAML (unchanged source: no event).

    `dashboard_id` is the id an update names (the YAML may repeat it, not change it); a new
    dashboard takes the YAML's `id`, or a new one. `create_only` refuses an id in use."""
    dashboard = parse_dashboard(source)
    if dashboard_id is not None:
        check_id(dashboard_id, path="id")
        if dashboard.id is not None and dashboard.id != dashboard_id:
            raise InvalidRequest(
                f"The dashboard's id ({dashboard.id}) differs from the path ({dashboard_id}): "
                "an update cannot change it",
                [Problem("differs from the path", "id")],
            )
    chosen = dashboard_id or dashboard.id or uuid.uuid4().hex[:16]
    stream = ev.dashboard_stream(chosen)
    history = await store.read_stream(stream)
    current = fold(history)
    live = current is not None and not current.deleted
    if create_only and live:
        raise Conflict(
            f"Dashboard {chosen} already exists: update it with PUT /api/v1/dashboards/{chosen}"
        )
    if dashboard_id is not None and not live:
        raise NotFound(f"Dashboard {chosen} does not exist: create it with POST /api/v1/dashboards")
    if current is not None and live and current.source == source:
        return current, dashboard
    event: ev.Event
    if live:
        event = ev.DashboardUpdated(dashboardId=chosen, title=dashboard.title, source=source)
    else:
        event = ev.DashboardCreated(dashboardId=chosen, title=dashboard.title, source=source)
    await store.append(
        stream,
        [event],
        expected_version=history[-1].version if history else NO_STREAM,
        meta={"actor": actor},
    )
    return fold(await store.read_stream(stream)) or _never(chosen), dashboard


async def delete_dashboard(store: EventStore, dashboard_id: str, *, actor: str) -> None:
    """Delete a dashboard (its earlier sources stay in its stream)."""
    check_id(dashboard_id, path="id")
    stream = ev.dashboard_stream(dashboard_id)
    history = await store.read_stream(stream)
    current = fold(history)
    if current is None or current.deleted:
        raise NotFound(f"Dashboard {dashboard_id} does not exist")
    await store.append(
        stream,
        [ev.DashboardDeleted(dashboardId=dashboard_id)],
        expected_version=history[-1].version,
        meta={"actor": actor},
    )


def _never(dashboard_id: str) -> DashboardRecord:
    raise NotFound(f"Dashboard {dashboard_id} does not exist")
