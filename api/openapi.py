"""The API's OpenAPI 3 document, served at `GET /api/v1/openapi.yml`.

It is generated from what the application serves: every route of its URL map (each method,
its path parameters, the role it declares with `@access` or that it is `@public`), and, where a
route answers one of the shapes below, that shape's JSON schema from its msgspec struct
(`msgspec.json.schema_components`). A route added anywhere is in the document without a
change here; a shape of Kestra's client models is documented once, here, and a test checks
real answers against it (tests/api/test_openapi.py).
"""

from __future__ import annotations

import re
from typing import Any

import msgspec
import yaml
from quart import Response
from quart_trio import QuartTrio
from werkzeug.routing import Rule

from api import history_routes
from api.auth import PUBLIC, ROLE_ATTR, SESSION_COOKIE, public
from api.execution_filters import OPERATIONS
from engine.commands import TENANT

PATH = "/api/v1/openapi.yml"
VERSION = "3.1.0"
"""OpenAPI 3.1: its schemas are JSON Schema 2020-12, which msgspec generates."""


# --- the shapes of the answers (Kestra's client models, as Tiercel fills them) -------------


class StateHistory(msgspec.Struct, kw_only=True):
    """A state entered, and when (ISO-8601, UTC, milliseconds)."""

    state: str
    date: str


class State(msgspec.Struct, kw_only=True):
    """The state of an execution, a task run or an attempt, with its history. `endDate` and
    `duration` (ISO-8601, `PT1.234S`) once it has ended."""

    current: str
    histories: list[StateHistory]
    startDate: str | None
    endDate: str | None = None
    duration: str | None = None


class Label(msgspec.Struct, kw_only=True):
    """A label of a flow or an execution."""

    key: str
    value: str


class TaskRunAttempt(msgspec.Struct, kw_only=True):
    """One try of a task run."""

    state: State
    workerId: str | None


class TaskRun(msgspec.Struct, kw_only=True):
    """A task run: one task of an execution (per loop value and iteration)."""

    id: str
    tenantId: str
    executionId: str
    namespace: str
    flowId: str
    taskId: str
    parentTaskRunId: str | None
    value: str | None
    iteration: int | None
    state: State
    outputs: dict[str, Any]
    attempts: list[TaskRunAttempt]
    message: str | None = None


class ExecutionTrigger(msgspec.Struct, kw_only=True):
    """What started an execution: a trigger of its flow, or the Subflow task (its id) of a
    parent execution."""

    id: str | None
    type: str | None
    variables: dict[str, Any]


class ExecutionMetadata(msgspec.Struct, kw_only=True):
    """Which try of the flow an execution is, and when the first one was created."""

    attemptNumber: int
    originalCreatedDate: str


class Execution(msgspec.Struct, kw_only=True):
    """An execution with its task runs, as `GET /api/v1/executions/{id}` answers it."""

    id: str
    tenantId: str
    namespace: str
    flowId: str
    flowRevision: int
    state: State
    taskRunList: list[TaskRun]
    inputs: dict[str, Any]
    outputs: dict[str, Any]
    labels: list[Label]
    parentId: str | None
    originalId: str | None
    trigger: ExecutionTrigger | None
    deleted: bool
    metadata: ExecutionMetadata
    message: str | None = None
    replayOf: str | None = None
    """The execution this one replays (POST .../replay)."""
    replays: list[str] = []
    """The executions that replay this one, oldest first."""


class ExecutionSummary(msgspec.Struct, kw_only=True):
    """An execution as the search lists it (its task runs counted, not listed)."""

    id: str
    tenantId: str
    namespace: str
    flowId: str
    flowRevision: int
    state: State
    labels: list[Label]
    inputs: dict[str, Any]
    outputs: dict[str, Any]
    trigger: ExecutionTrigger | None
    parentId: str | None
    originalId: str | None
    taskRunCount: int
    deleted: bool


class ExecutionPage(msgspec.Struct, kw_only=True):
    """A page of the executions search: `total` is estimated above 10,000 matches
    (`totalIsEstimate`); `next` continues after this page (`after=<next>`)."""

    results: list[ExecutionSummary]
    total: int
    totalIsEstimate: bool
    next: str | None


class FlowWithSource(msgspec.Struct, kw_only=True):
    """A flow revision: its YAML `source` and its parsed properties (inputs, tasks, triggers,
    ...; a flow recorded under rules since changed shows `exception` instead)."""

    id: str
    namespace: str
    revision: int
    tenantId: str
    labels: list[Label]
    disabled: bool
    deleted: bool
    source: str
    updated: str | None = None
    description: str | None = None
    inputs: list[dict[str, Any]] = []
    tasks: list[dict[str, Any]] = []
    triggers: list[dict[str, Any]] = []
    exception: str | None = None
    warnings: list[str] | None = None
    """In the answer of a deploy: what the flow uses that Tiercel does not honour yet."""


class FlowPage(msgspec.Struct, kw_only=True):
    """A page of the flows search."""

    results: list[FlowWithSource]
    total: int
    totalIsEstimate: bool


class LogEntry(msgspec.Struct, kw_only=True):
    """A log line of a task run's attempt."""

    tenantId: str
    namespace: str | None
    flowId: str | None
    executionId: str
    taskId: str | None
    taskRunId: str | None
    attemptNumber: int | None
    triggerId: str | None
    timestamp: str
    level: str
    thread: str | None
    message: str
    executionKind: str | None


class MetricEntry(msgspec.Struct, kw_only=True):
    """A metric point of a task run (or, for `execution.duration`, of the execution): a
    counter as reported, a timer in milliseconds."""

    tenantId: str
    namespace: str | None
    flowId: str | None
    taskId: str | None
    executionId: str
    taskRunId: str | None
    type: str
    name: str
    value: float
    timestamp: str
    tags: dict[str, str]
    deleted: bool


class MetricPage(msgspec.Struct, kw_only=True):
    """A page of an execution's metric points."""

    results: list[MetricEntry]
    total: int


class MetricAggregation(msgspec.Struct, kw_only=True):
    """A metric aggregated over one time bucket (null: no point to take a min, max or avg of)."""

    name: str
    value: float | None
    date: str


class MetricAggregations(msgspec.Struct, kw_only=True):
    """A metric per time bucket: `groupBy` is the bucket (minute, hour, day, week, month)."""

    groupBy: str
    aggregations: list[MetricAggregation]


class ProblemDetail(msgspec.Struct, kw_only=True, omit_defaults=True):
    """One problem of a request: what, and where (field path, line and column)."""

    message: str
    path: str | None = None
    line: int | None = None
    column: int | None = None


class ApiError(msgspec.Struct, kw_only=True):
    """Every error answer: what is wrong and what to do, with each problem found."""

    message: str
    details: list[ProblemDetail]


class ChartRows(msgspec.Struct, kw_only=True):
    """A dashboard chart's rows (Kestra's PagedResults), each keyed by the chart's column
    names; `total` counts every row or group, not only the page; `interval` is the time
    bucket a date column was grouped by."""

    results: list[dict[str, Any]]
    total: int
    interval: str | None = None
    startDate: str | None = None
    endDate: str | None = None


class StatsBucket(msgspec.Struct, kw_only=True):
    """Executions started in one time bucket, per state; `total` is their sum ("All")."""

    date: str
    counts: dict[str, int]
    total: int


class StatsGroup(msgspec.Struct, kw_only=True):
    """Executions of one namespace (or flow of it), per state, with their sum."""

    namespace: str
    counts: dict[str, int]
    total: int
    successRatio: float | None
    flowId: str | None = None


class DurationStats(msgspec.Struct, kw_only=True):
    """Durations of the ended executions, in seconds (percentiles from the histogram)."""

    count: int
    sum: float | None
    avg: float | None
    p50: float | None
    p90: float | None
    p99: float | None


class FailedExecution(msgspec.Struct, kw_only=True):
    """One of the latest failed executions."""

    id: str
    namespace: str
    flowId: str
    state: str
    startDate: str
    endDate: str | None


class DefaultDashboard(msgspec.Struct, kw_only=True):
    """The default dashboard's figures over whole hours (docs/dashboards.md): `total` ("All")
    is the sum of `states`, each bucket's and group's `total` the sum of its `counts`."""

    startDate: str
    endDate: str
    interval: str
    total: int
    states: dict[str, int]
    successRatio: float | None
    buckets: list[StatsBucket]
    namespaces: list[StatsGroup]
    flows: list[StatsGroup]
    flowsTruncated: bool
    durations: DurationStats
    latestFailures: list[FailedExecution]


class DashboardWithSource(msgspec.Struct, kw_only=True):
    """A custom dashboard: its properties as written in its YAML, and the YAML itself."""

    id: str
    title: str
    sourceCode: str
    created: str
    updated: str
    deleted: bool
    description: str | None = None
    timeWindow: dict[str, Any] | None = None
    charts: list[dict[str, Any]] = []


class DashboardSummary(msgspec.Struct, kw_only=True):
    """A custom dashboard as the list shows it."""

    id: str
    title: str
    sourceCode: str
    created: str
    updated: str
    updatedBy: str | None


class DashboardPage(msgspec.Struct, kw_only=True):
    """A page of the custom dashboards."""

    results: list[DashboardSummary]
    total: int


class Validation(msgspec.Struct, kw_only=True):
    """What a validation found: nothing (only `index`), or every problem with its line."""

    index: int
    constraints: str | None = None
    details: list[ProblemDetail] = []


class RebuildProgress(msgspec.Struct, kw_only=True):
    """A rebuild under way: the position its new tables reached and the events still to read."""

    position: int
    lag: int


class LastRebuild(msgspec.Struct, kw_only=True):
    """The last rebuild of a projection asked for through the API (`outcome` RUNNING, SUCCESS,
    FAILED, CANCELLED when the server stopped, or INTERRUPTED when its process was killed)."""

    startedAt: str
    endedAt: str | None
    outcome: str
    message: str | None
    actor: str | None
    position: int | None = None


class ProjectionStatus(msgspec.Struct, kw_only=True):
    """A read model's position in the log, the head, the events between them (`lag`), its
    status (UP_TO_DATE or CATCHING_UP), a rebuild under way and the last one asked for."""

    name: str
    position: int
    head: int
    lag: int
    status: str
    rebuild: RebuildProgress | None = None
    lastRebuild: LastRebuild | None = None


class RebuildStarted(msgspec.Struct, kw_only=True):
    """A rebuild started in the background (202): follow it at `follow`."""

    projection: str
    status: str
    follow: str
    message: str


ANSWERS: dict[tuple[str, str], Any] = {
    ("GET", "/api/v1/projections"): list[ProjectionStatus],
    ("POST", "/api/v1/flows"): FlowWithSource,
    ("GET", "/api/v1/flows/search"): FlowPage,
    ("GET", "/api/v1/flows/{namespace}"): list[FlowWithSource],
    ("PUT", "/api/v1/flows/{namespace}"): list[FlowWithSource],
    ("POST", "/api/v1/flows/{namespace}"): list[FlowWithSource],
    ("GET", "/api/v1/flows/{namespace}/{flow_id}"): FlowWithSource,
    ("PUT", "/api/v1/flows/{namespace}/{flow_id}"): FlowWithSource,
    ("GET", "/api/v1/flows/{namespace}/{flow_id}/revisions"): list[FlowWithSource],
    ("POST", "/api/v1/executions/{namespace}/{flow_id}"): Execution,
    ("GET", "/api/v1/executions/search"): ExecutionPage,
    ("GET", "/api/v1/executions/{execution_id}"): Execution,
    ("POST", "/api/v1/executions/{execution_id}/replay"): Execution,
    ("POST", "/api/v1/executions/{execution_id}/restart"): Execution,
    ("POST", "/api/v1/executions/{execution_id}/state"): Execution,
    ("POST", "/api/v1/executions/{execution_id}/labels"): Execution,
    ("GET", "/api/v1/logs/{execution_id}"): list[LogEntry],
    ("GET", "/api/v1/metrics/{execution_id}"): MetricPage,
    ("GET", "/api/v1/metrics/names/{namespace}/{flow_id}"): list[str],
    ("GET", "/api/v1/metrics/names/{namespace}/{flow_id}/{task_id}"): list[str],
    ("GET", "/api/v1/metrics/tasks/{namespace}/{flow_id}"): list[str],
    ("GET", "/api/v1/metrics/aggregates/{namespace}/{flow_id}/{metric}"): MetricAggregations,
    (
        "GET",
        "/api/v1/metrics/aggregates/{namespace}/{flow_id}/{task_id}/{metric}",
    ): MetricAggregations,
    ("GET", "/api/v1/dashboards/default/stats"): DefaultDashboard,
    ("GET", "/api/v1/dashboards"): DashboardPage,
    ("POST", "/api/v1/dashboards"): DashboardWithSource,
    ("GET", "/api/v1/dashboards/{dashboard_id}"): DashboardWithSource,
    ("PUT", "/api/v1/dashboards/{dashboard_id}"): DashboardWithSource,
    ("POST", "/api/v1/dashboards/validate"): Validation,
    ("POST", "/api/v1/dashboards/validate/chart"): Validation,
    ("POST", "/api/v1/dashboards/{dashboard_id}/charts/{chart_id}"): ChartRows,
    ("POST", "/api/v1/dashboards/charts/preview"): ChartRows,
}
"""The routes whose answer is one of the shapes above, by method and OpenAPI path."""

ACCEPTED: dict[tuple[str, str], Any] = {
    ("POST", "/api/v1/projections/{name}/rebuild"): RebuildStarted,
}
"""The routes that answer 202 (work started in the background) with one of the shapes above;
409 while the same work runs."""

YAML_BODY = {"application/x-yaml": {"schema": {"type": "string", "description": "Flow YAML"}}}
YAML_BODIES: set[tuple[str, str]] = {
    ("POST", "/api/v1/flows"),
    ("POST", "/api/v1/flows/validate"),
    ("PUT", "/api/v1/flows/{namespace}"),
    ("POST", "/api/v1/flows/{namespace}"),
    ("PUT", "/api/v1/flows/{namespace}/{flow_id}"),
    ("POST", "/api/v1/dashboards"),
    ("POST", "/api/v1/dashboards/validate"),
    ("POST", "/api/v1/dashboards/validate/chart"),
    ("PUT", "/api/v1/dashboards/{dashboard_id}"),
}
"""Routes that take a flow's YAML (several, separated by `---`, for a namespace's flows)."""

_OBJECT = {"schema": {"type": "object", "additionalProperties": True}}
OTHER_BODIES: dict[tuple[str, str], dict[str, Any]] = {
    ("POST", "/api/v1/executions/{namespace}/{flow_id}"): {
        "application/json": _OBJECT,
        "multipart/form-data": _OBJECT,
    },
    ("POST", "/api/v1/executions/{execution_id}/resume"): {
        "application/json": _OBJECT,
        "multipart/form-data": _OBJECT,
    },
    ("POST", "/api/v1/executions/{execution_id}/state"): {
        "application/json": {
            "schema": {
                "type": "object",
                "required": ["taskRunId", "state"],
                "properties": {
                    "taskRunId": {"type": "string"},
                    "state": {"type": "string", "enum": ["SUCCESS", "WARNING", "FAILED"]},
                    "reason": {"type": "string"},
                },
            }
        }
    },
    ("POST", "/api/v1/executions/{execution_id}/labels"): {
        "application/json": {
            "schema": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["key", "value"],
                    "properties": {"key": {"type": "string"}, "value": {"type": "string"}},
                },
            }
        }
    },
    ("POST", "/api/v1/dashboards/{dashboard_id}/charts/{chart_id}"): {
        "application/json": {
            "schema": {
                "type": "object",
                "description": "startDate, endDate, timeRange, page, pageSize and filters "
                "([{field, operation, value}]) narrowing the chart (docs/dashboards.md)",
                "additionalProperties": True,
            }
        }
    },
    ("POST", "/api/v1/dashboards/charts/preview"): {
        "application/json": {
            "schema": {
                "type": "object",
                "properties": {
                    "chart": {"type": "string", "description": "The chart's YAML"},
                    "globalFilter": {"type": "object", "additionalProperties": True},
                },
            }
        }
    },
    ("POST", "/api/v1/flows/import"): {
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "properties": {"fileUpload": {"type": "string", "format": "binary"}},
            }
        }
    },
}
"""Other request bodies: an execution's inputs (by input id), a resume's values, an import."""


def _query(name: str, description: str, **schema: Any) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "description": description,
        "schema": schema or {"type": "string"},
    }


_REASON = _query("reason", "Why, recorded with the action in the execution's history")
QUERY_PARAMETERS: dict[tuple[str, str], list[dict[str, Any]]] = {
    ("POST", "/api/v1/executions/{execution_id}/replay"): [
        _query("taskRunId", "Run again from this task run (from the start when absent)"),
        _query("revision", "Run this revision of the flow", type="integer", minimum=1),
        _REASON,
    ],
    ("POST", "/api/v1/executions/{execution_id}/restart"): [_REASON],
    ("POST", "/api/v1/executions/{execution_id}/pause"): [_REASON],
    ("POST", "/api/v1/executions/{execution_id}/labels"): [_REASON],
}
"""Query parameters of routes other than the search (whose are `_search_parameters`)."""

_CONVERTED = re.compile(r"<(?:([a-z_]+)(?:\([^)]*\))?:)?([A-Za-z_][A-Za-z0-9_]*)>")


def openapi_path(rule: str) -> str:
    """A Werkzeug rule (`/flows/<namespace>/<path:key>`) as an OpenAPI path (`{key}`)."""
    return _CONVERTED.sub(lambda m: "{" + m.group(2) + "}", rule)


def _search_parameters() -> list[dict[str, Any]]:
    def query(name: str, description: str, **schema: Any) -> dict[str, Any]:
        return {
            "name": name,
            "in": "query",
            "required": False,
            "description": description,
            "schema": schema or {"type": "string"},
        }

    filters = "; ".join(f"{f}: {', '.join(ops)}" for f, ops in OPERATIONS.items())
    return [
        query("page", "Page number, from 1", type="integer", minimum=1),
        query("size", "Rows per page (at most 1000)", type="integer", minimum=1),
        query(
            "sort",
            "field:asc|desc, field one of id, namespace, flowId, state.current, "
            "state.startDate (default, desc), state.endDate, state.duration, flowRevision, "
            "taskRunCount",
        ),
        query("after", "The `next` value of the previous page: continue after it"),
        query("namespace", "This namespace and those under it"),
        query("flowId", "The flow's id"),
        query(
            "state",
            "Execution states (repeat or comma-separate for several)",
            type="array",
            items={"type": "string"},
        ),
        query("labels", "key:value (repeat: every one)", type="array", items={"type": "string"}),
        query("startDate", "Started at or after (ISO-8601)", type="string", format="date-time"),
        query("endDate", "Ended at or before (ISO-8601)", type="string", format="date-time"),
        query("timeRange", "Started within this ISO-8601 duration from now (PT24H)"),
        query("q", "The start of an id, or word prefixes of the namespace and flow id"),
        query("scope", "USER (every Tiercel execution)"),
        query("trigger", "Trigger types (io.kestra.plugin.core.trigger.Schedule, ...)"),
        query("triggerId", "Trigger ids"),
        query("triggerExecutionId", "Executions started from this execution"),
        query("parentId", "Subflow executions of this execution"),
        query("childFilter", "CHILD (subflow executions only) or MAIN (the others)"),
        {
            "name": "filters",
            "in": "query",
            "required": False,
            "style": "deepObject",
            "explode": True,
            "description": (
                "Kestra's form: filters[field][OPERATION]=value, and "
                f"filters[labels][EQUALS][key]=value. Fields and operations: {filters}. "
                "Condition groups: filters[or][N][field][OPERATION]=value puts a filter in "
                "group N; groups join by OR, every filter outside them applies to all"
            ),
            "schema": {"type": "object", "additionalProperties": True},
        },
    ]


def _operation(
    app: QuartTrio, rule: Rule, method: str, path: str, refs: dict[Any, dict[str, Any]]
) -> dict[str, Any]:
    view = app.view_functions[rule.endpoint]
    role = getattr(view, ROLE_ATTR, None)
    doc = (view.__doc__ or "").strip().splitlines()
    methods = (rule.methods or set()) - {"HEAD", "OPTIONS"}
    name = rule.endpoint.replace(".", "_")
    segments = [s for s in path.split("/") if s and not s.startswith("{")]
    tag = segments[2] if path.startswith("/api/v1/") and len(segments) > 2 else segments[0]
    operation: dict[str, Any] = {
        "operationId": f"{name}_{method.lower()}" if len(methods) > 1 else name,
        "summary": doc[0] if doc else f"{method} {path}",
        "tags": [tag],
        "x-tiercel-role": role,
        "responses": {
            "default": {
                "description": "An error",
                "content": {"application/json": {"schema": refs[ApiError]}},
            }
        },
    }
    answer = ANSWERS.get((method, path))
    if answer is not None:
        operation["responses"]["200"] = {
            "description": "OK",
            "content": {"application/json": {"schema": refs[answer]}},
        }
    elif (method, path) in ACCEPTED:
        operation["responses"]["202"] = {
            "description": "Started; follow it where the answer says",
            "content": {"application/json": {"schema": refs[ACCEPTED[(method, path)]]}},
        }
        operation["responses"]["409"] = {
            "description": "The same work runs already",
            "content": {"application/json": {"schema": refs[ApiError]}},
        }
    else:
        operation["responses"]["2XX"] = {"description": "OK"}
    if role == PUBLIC:
        operation["security"] = []
    parameters = [
        {"name": arg, "in": "path", "required": True, "schema": {"type": "string"}}
        for arg in sorted(rule.arguments)
    ]
    if (method, path) == ("GET", "/api/v1/executions/search"):
        parameters += _search_parameters()
    parameters += history_routes.QUERY_PARAMETERS.get((method, path), [])
    parameters += QUERY_PARAMETERS.get((method, path), [])
    if parameters:
        operation["parameters"] = parameters
    if (method, path) in YAML_BODIES:
        operation["requestBody"] = {"required": True, "content": YAML_BODY}
    elif (method, path) in OTHER_BODIES:
        operation["requestBody"] = {"required": False, "content": OTHER_BODIES[(method, path)]}
    return operation


def document(app: QuartTrio) -> dict[str, Any]:
    """The OpenAPI 3 document of every route `app` serves."""
    shapes = list(dict.fromkeys([*ANSWERS.values(), *ACCEPTED.values(), ApiError]))
    schemas, components = msgspec.json.schema_components(
        shapes, ref_template="#/components/schemas/{name}"
    )
    refs = dict(zip(shapes, schemas, strict=True))
    paths: dict[str, dict[str, Any]] = {}
    for rule in sorted(app.url_map.iter_rules(), key=lambda r: r.rule):
        if rule.endpoint == "static" or rule.endpoint.startswith("ui."):  # web UI pages
            continue
        path = openapi_path(rule.rule)
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
            paths.setdefault(path, {})[method.lower()] = _operation(app, rule, method, path, refs)
    return {
        "openapi": VERSION,
        "info": {
            "title": "Tiercel API",
            "version": "1",
            "description": (
                "Kestra-compatible paths: each /api/v1/... route also answers at "
                f"/api/v1/{TENANT}/... (Kestra's tenant segment). x-tiercel-role is the least "
                "role an operation needs."
            ),
        },
        "servers": [{"url": "/"}],
        "security": [{"basicAuth": []}, {"bearerAuth": []}, {"sessionCookie": []}],
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {
                "basicAuth": {"type": "http", "scheme": "basic"},
                "bearerAuth": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "An API token (POST /api/v1/tokens)",
                },
                "sessionCookie": {
                    "type": "apiKey",
                    "in": "cookie",
                    "name": SESSION_COOKIE,
                    "description": "The web UI's session (POST /api/v1/login); a state-changing "
                    "request also sends its CSRF token in X-CSRF-Token",
                },
            },
        },
    }


def register(app: QuartTrio) -> None:
    """Serve the document at `PATH` (public: it describes the API, not its data)."""
    cached: list[bytes] = []

    @app.get(PATH)
    @public
    async def openapi_document() -> Response:
        """The OpenAPI 3 document of this API."""
        if not cached:
            # Built on first use, once every module has registered its routes.
            cached.append(
                yaml.safe_dump(document(app), sort_keys=False, allow_unicode=True).encode()
            )
        return Response(cached[0], content_type="application/yaml")
