"""Dashboards through a real server: the default dashboard's figures ("All" is the sum of the
per-state counts whatever the filter and range, Kestra issue #16812), and custom dashboards as
YAML: saved as events, validated with the line of each problem, and each chart type's rows."""

from __future__ import annotations

import datetime as dt
import random
import re
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import msgspec
import psycopg
import pytest
import trio

from api import openapi
from engine import events as ev
from engine.dashboards import parse_chart
from projections import dashboards as model
from tests.api.test_auth import _bearer, _token
from tests.conftest import admin_client, deploy, own_database, start_server

YAML = {"Content-Type": "application/x-yaml"}
STATS = "/api/v1/dashboards/default/stats"


def _ns() -> str:
    return f"test.dash.n{uuid.uuid4().hex[:8]}"


def _iso(at: dt.datetime) -> str:
    return at.isoformat().replace("+00:00", "Z")


# --- the default dashboard over data spread across days -------------------------------------


@pytest.fixture(scope="module")
def stats_database_url(database_url: str) -> Iterator[str]:
    """A database of its own: its rollups and execution rows are written by hand, spread over
    days (the engine dates what it records now), so no other test or replay sees them."""
    with own_database(database_url, "dash", prepare=True) as url:
        yield url


BASE = dt.datetime(2026, 3, 2, tzinfo=dt.UTC)
STATES = ["SUCCESS", "FAILED", "RUNNING", "WARNING", "KILLED"]
ROOT = "test.dash.stats"
NAMESPACES = [ROOT, f"{ROOT}.a", f"{ROOT}.a.b", f"{ROOT}.b", f"{ROOT}b", "other.team"]
FLOWS = ["hello", "etl"]


def _seed(url: str) -> list[tuple[dt.datetime, str, str, str, int]]:
    """Rollup rows over 5 days (as the executions projection keeps them) and the failed
    executions behind some; what was written, to compute what each answer must be."""
    rng = random.Random(16812)
    rows: dict[tuple[dt.datetime, str, str, str], int] = {}
    for _ in range(400):
        key = (
            BASE + dt.timedelta(hours=rng.randrange(5 * 24)),
            rng.choice(NAMESPACES),
            rng.choice(FLOWS),
            rng.choice(STATES),
        )
        rows[key] = rows.get(key, 0) + rng.randrange(1, 9)
    with psycopg.connect(url, autocommit=True) as conn, conn.transaction():
        conn.execute("DELETE FROM execution_stats")
        conn.execute("DELETE FROM execution_durations")
        for (bucket, namespace, flow_id, state), count in rows.items():
            conn.execute(
                "INSERT INTO execution_stats (bucket, namespace, flow_id, state, count)"
                " VALUES (%s, %s, %s, %s, %s)",
                (bucket, namespace, flow_id, state, count),
            )
            if state != "RUNNING":
                # Every ended execution of the row took 1 to 2.5 s (the class le = 2.5).
                conn.execute(
                    "INSERT INTO execution_durations (bucket, namespace, flow_id, state, le,"
                    " count, sum_ms) VALUES (%s, %s, %s, %s, 2.5, %s, %s)",
                    (bucket, namespace, flow_id, state, count, count * 2000),
                )
        for i, ((bucket, namespace, flow_id, state), _) in enumerate(sorted(rows.items())):
            if state == "FAILED":
                conn.execute(
                    "INSERT INTO executions (id, namespace, flow_id, flow_revision, state,"
                    " histories, start_date, end_date, last_seq)"
                    " VALUES (%s, %s, %s, 1, 'FAILED', '[]', %s, %s, 0)",
                    (
                        f"failed{i:04d}",
                        namespace,
                        flow_id,
                        bucket + dt.timedelta(minutes=i % 60),
                        bucket + dt.timedelta(minutes=i % 60, seconds=2),
                    ),
                )
    return [(*key, count) for key, count in rows.items()]


@pytest.fixture(scope="module")
def seeded(stats_database_url: str) -> list[tuple[dt.datetime, str, str, str, int]]:
    return _seed(stats_database_url)


@pytest.fixture
async def stats_client(
    stats_database_url: str,
    seeded: list[tuple[dt.datetime, str, str, str, int]],
    nursery: trio.Nursery,
    tmp_path: Any,
) -> AsyncIterator[httpx.AsyncClient]:
    ctx = await start_server(stats_database_url, nursery, tmp_path)
    async with admin_client(ctx) as http:
        yield http


def _shaped(body: Any, shape: Any) -> None:
    """`body` is what the OpenAPI document says the route answers, and holds nothing more."""
    msgspec.convert(body, shape)
    fields = {f.encode_name for f in msgspec.structs.fields(shape)}
    assert set(body) <= fields, set(body) - fields


def _under(namespace: str, prefix: str | None) -> bool:
    return prefix is None or namespace == prefix or namespace.startswith(prefix + ".")


async def test_default_stats_all_is_the_sum_of_the_states_for_every_filter_and_range(
    stats_client: httpx.AsyncClient, seeded: list[tuple[dt.datetime, str, str, str, int]]
) -> None:
    ranges = [
        (BASE, BASE + dt.timedelta(days=5)),
        # Cutting through the data, at times that are not whole hours.
        (BASE + dt.timedelta(hours=30, minutes=20), BASE + dt.timedelta(hours=77, minutes=5)),
        (BASE + dt.timedelta(days=2), BASE + dt.timedelta(days=2, hours=6)),
        (BASE - dt.timedelta(days=3), BASE + dt.timedelta(hours=1)),
    ]
    filters: list[dict[str, Any]] = [
        {},
        {"namespace": ROOT},
        {"namespace": f"{ROOT}.a"},
        {"flowId": "etl"},
        {"namespace": ROOT, "flowId": "hello"},
    ]
    for start, end in ranges:
        for extra in filters:
            params = {"startDate": _iso(start), "endDate": _iso(end), **extra}
            answer = await stats_client.get(STATS, params=params)
            assert answer.status_code == 200, answer.text
            body = answer.json()
            _shaped(body, openapi.DefaultDashboard)
            # The range is widened to the hours it touches (the rollups count by hour).
            shown_start = dt.datetime.fromisoformat(body["startDate"].replace("Z", "+00:00"))
            shown_end = dt.datetime.fromisoformat(body["endDate"].replace("Z", "+00:00"))
            assert shown_start <= start and end <= shown_end
            assert shown_end - end < dt.timedelta(hours=1)
            expected: dict[str, int] = {}
            for bucket, namespace, flow_id, state, count in seeded:
                if not shown_start <= bucket < shown_end or not _under(
                    namespace, extra.get("namespace")
                ):
                    continue
                if extra.get("flowId") not in (None, flow_id):
                    continue
                expected[state] = expected.get(state, 0) + count
            assert body["states"] == expected, (params, body["states"])
            # "All" equals the sum of the per-state counts: overall, per bucket, per
            # namespace, per flow.
            assert body["total"] == sum(body["states"].values()) == sum(expected.values())
            for bucket in body["buckets"]:
                assert bucket["total"] == sum(bucket["counts"].values())
            assert sum(b["total"] for b in body["buckets"]) == body["total"]
            for row in [*body["namespaces"], *body["flows"]]:
                assert row["total"] == sum(row["counts"].values())
            assert sum(r["total"] for r in body["namespaces"]) == body["total"]
            assert sum(r["total"] for r in body["flows"]) == body["total"]
            # Each state asked on its own gives its count: the tabs add up to "All".
            by_tab = 0
            for state in STATES:
                one = await stats_client.get(STATS, params={**params, "state": state})
                assert one.json()["total"] == body["states"].get(state, 0)
                by_tab += one.json()["total"]
            assert by_tab == body["total"]
            several = await stats_client.get(
                STATS, params=[*params.items(), ("state", "SUCCESS"), ("state", "FAILED")]
            )
            assert several.json()["total"] == expected.get("SUCCESS", 0) + expected.get("FAILED", 0)
            if body["total"]:
                ratio = expected.get("SUCCESS", 0) / body["total"]
                assert body["successRatio"] == pytest.approx(ratio)
            else:
                assert body["successRatio"] is None


async def test_default_stats_give_duration_percentiles_and_the_latest_failures(
    stats_client: httpx.AsyncClient, seeded: list[tuple[dt.datetime, str, str, str, int]]
) -> None:
    params = {"startDate": _iso(BASE), "endDate": _iso(BASE + dt.timedelta(days=5))}
    body = (await stats_client.get(STATS, params={**params, "failures": 5})).json()
    ended = sum(c for _, _, _, state, c in seeded if state != "RUNNING")
    durations = body["durations"]
    assert durations["count"] == ended
    assert durations["avg"] == pytest.approx(2.0)
    # Every duration is in the class (1 s, 2.5 s]: each percentile is inside it.
    for name in ("p50", "p90", "p99"):
        assert 1.0 <= durations[name] <= 2.5
    assert durations["p50"] <= durations["p90"] <= durations["p99"]
    failures = body["latestFailures"]
    assert len(failures) == 5
    assert all(f["state"] == "FAILED" for f in failures)
    dates = [f["startDate"] for f in failures]
    assert dates == sorted(dates, reverse=True)
    # A state filter without FAILED lists no failure; a namespace filter keeps its own.
    assert (await stats_client.get(STATS, params={**params, "state": "SUCCESS"})).json()[
        "latestFailures"
    ] == []
    scoped = (await stats_client.get(STATS, params={**params, "namespace": f"{ROOT}.a"})).json()
    assert scoped["latestFailures"]
    assert all(_under(f["namespace"], f"{ROOT}.a") for f in scoped["latestFailures"])


async def test_default_stats_refuse_bad_parameters_with_a_400_naming_them(
    stats_client: httpx.AsyncClient,
) -> None:
    for params, named in [
        ({"state": "DONE"}, "state"),
        ({"startDate": "yesterday"}, "startDate"),
        ({"timeRange": "1 day"}, "timeRange"),
        ({"startDate": "2020-01-01T00:00:00Z", "endDate": "2024-01-01T00:00:00Z"}, "startDate"),
        ({"startDate": "2024-01-02T00:00:00Z", "endDate": "2024-01-01T00:00:00Z"}, "endDate"),
        ({"size": "3"}, "size"),
        ({"timeRange": "P999999D"}, "timeRange"),
        ({"startDate": "9999-12-31T23:30:00Z", "endDate": "9999-12-31T23:59:00Z"}, "endDate"),
        ({"startDate": "0001-01-01T00:00:00Z", "endDate": "0001-01-01T01:00:00Z"}, None),
        ({"failures": "1000"}, "failures"),
    ]:
        answer = await stats_client.get(STATS, params=params)
        if named is None:  # an odd range that is still a range: answered
            assert answer.status_code == 200, (params, answer.text)
            continue
        assert answer.status_code == 400, (params, answer.text)
        assert answer.json()["details"][0]["path"] == named


async def test_default_stats_of_a_scoped_token_count_only_its_namespaces(
    stats_client: httpx.AsyncClient, seeded: list[tuple[dt.datetime, str, str, str, int]]
) -> None:
    token = await _token(stats_client, "viewer", [f"{ROOT}.a"])
    params = {"startDate": _iso(BASE), "endDate": _iso(BASE + dt.timedelta(days=5))}
    async with httpx.AsyncClient(base_url=stats_client.base_url, timeout=30) as other:
        body = (await other.get(STATS, params=params, headers=_bearer(token))).json()
    expected = sum(c for _, ns, _, _, c in seeded if _under(ns, f"{ROOT}.a"))
    assert body["total"] == expected
    assert {r["namespace"] for r in body["namespaces"]} <= {f"{ROOT}.a", f"{ROOT}.a.b"}


# --- custom dashboards -------------------------------------------------------------------------


def _flows(namespace: str) -> list[str]:
    return [
        f"id: ok\nnamespace: {namespace}\nlabels:\n  team: blue\ntasks:\n"
        "  - id: say\n    type: io.kestra.plugin.core.log.Log\n    message: all is well\n",
        f"id: broken\nnamespace: {namespace}\nlabels:\n  team: red\ntasks:\n"
        "  - id: warn\n    type: io.kestra.plugin.core.log.Log\n    level: WARN\n"
        "    message: about to fail\n"
        "  - id: fail\n    type: io.kestra.plugin.core.execution.Fail\n",
    ]


def _dashboard(dashboard_id: str, namespace: str) -> str:
    executions = "io.kestra.plugin.core.dashboard.data.Executions"
    return f"""\
id: {dashboard_id}
title: Team {namespace}
description: Every chart type over one namespace
timeWindow:
  default: P1D
  max: P30D
charts:
  - id: over_time
    type: io.kestra.plugin.core.dashboard.chart.TimeSeries
    chartOptions:
      displayName: Executions over time
      column: date
      colorByColumn: state
    data:
      type: {executions}
      columns:
        date: {{field: START_DATE, displayName: Date}}
        state: {{field: STATE}}
        total: {{agg: COUNT, displayName: Executions, graphStyle: BARS}}
        duration: {{field: DURATION, agg: SUM, graphStyle: LINES}}
      where:
        - {{field: NAMESPACE, type: EQUAL_TO, value: {namespace}}}
  - id: counted
    type: io.kestra.plugin.core.dashboard.chart.TimeSeries
    chartOptions: {{column: date}}
    data:
      type: {executions}
      columns:
        date: {{field: START_DATE}}
        flow: {{field: FLOW_ID}}
        state: {{field: STATE}}
        total: {{agg: COUNT}}
      where:
        - {{field: NAMESPACE, type: EQUAL_TO, value: {namespace}}}
  - id: counted_row_by_row
    type: io.kestra.plugin.core.dashboard.chart.TimeSeries
    chartOptions: {{column: date}}
    data:
      type: {executions}
      columns:
        date: {{field: START_DATE}}
        flow: {{field: FLOW_ID}}
        state: {{field: STATE}}
        total: {{agg: COUNT}}
      where:
        - {{field: NAMESPACE, type: EQUAL_TO, value: {namespace}}}
        - {{field: ID, type: IS_NOT_NULL}}
  - id: per_flow
    type: io.kestra.plugin.core.dashboard.chart.Bar
    chartOptions: {{column: flow}}
    data:
      type: {executions}
      columns:
        flow: {{field: FLOW_ID}}
        total: {{agg: COUNT}}
        longest: {{field: DURATION, agg: MAX}}
      where:
        - {{field: NAMESPACE, type: STARTS_WITH, value: {namespace}}}
      orderBy:
        - {{column: total, order: DESC}}
  - id: per_team
    type: io.kestra.plugin.core.dashboard.chart.Pie
    chartOptions: {{column: team}}
    data:
      type: {executions}
      columns:
        team: {{field: LABELS, labelKey: team}}
        total: {{agg: COUNT}}
      where:
        - {{field: NAMESPACE, type: EQUAL_TO, value: {namespace}}}
  - id: failures
    type: io.kestra.plugin.core.dashboard.chart.Table
    data:
      type: {executions}
      columns:
        id: {{field: ID}}
        flow: {{field: FLOW_ID}}
        state: {{field: STATE}}
        started: {{field: START_DATE}}
      where:
        - {{field: NAMESPACE, type: EQUAL_TO, value: {namespace}}}
        - {{field: STATE, type: IN, values: [FAILED, KILLED]}}
  - id: warnings
    type: io.kestra.plugin.core.dashboard.chart.Table
    data:
      type: io.kestra.plugin.core.dashboard.data.Logs
      columns:
        task: {{field: TASK_ID}}
        level: {{field: LEVEL}}
        lines: {{agg: COUNT}}
      where:
        - {{field: NAMESPACE, type: EQUAL_TO, value: {namespace}}}
        - {{field: LEVEL, type: IN, values: [WARN, ERROR]}}
  - id: success_ratio
    type: io.kestra.plugin.core.dashboard.chart.KPI
    chartOptions: {{displayName: Success ratio, numberType: PERCENTAGE}}
    data:
      type: io.kestra.plugin.core.dashboard.data.ExecutionsKPI
      columns: {{field: ID, agg: COUNT}}
      numerator:
        - {{type: IN, field: STATE, values: [SUCCESS]}}
      where:
        - {{field: NAMESPACE, type: EQUAL_TO, value: {namespace}}}
  - id: metric_points
    type: io.kestra.plugin.core.dashboard.chart.KPI
    chartOptions: {{numberType: FLAT}}
    data:
      type: io.kestra.plugin.core.dashboard.data.MetricsKPI
      columns: {{agg: COUNT}}
      where:
        - {{field: NAMESPACE, type: EQUAL_TO, value: {namespace}}}
  - id: notes
    type: io.kestra.plugin.core.dashboard.chart.Markdown
    content: "Ask **#team-{namespace}** about failures."
  - id: about
    type: io.kestra.plugin.core.dashboard.chart.Markdown
    source:
      type: FlowDescription
      namespace: {namespace}
      flowId: ok
"""


async def _deployed_and_run(client: httpx.AsyncClient, namespace: str) -> dict[str, list[str]]:
    for source in _flows(namespace):
        await deploy(client, source)
    runs: dict[str, list[str]] = {"ok": [], "broken": []}
    for flow_id, times in (("ok", 3), ("broken", 2)):
        for _ in range(times):
            answer = await client.post(f"/api/v1/executions/{namespace}/{flow_id}?wait=true")
            assert answer.is_success, answer.text
            runs[flow_id].append(answer.json()["id"])
    return runs


async def _chart(
    client: httpx.AsyncClient, dashboard_id: str, chart_id: str, **body: Any
) -> dict[str, Any]:
    answer = await client.post(f"/api/v1/dashboards/{dashboard_id}/charts/{chart_id}", json=body)
    assert answer.status_code == 200, answer.text
    found: dict[str, Any] = answer.json()
    return found


async def _until(check: Any, seconds: float = 20) -> Any:
    """What `check()` answers once it answers something (the read models follow the log)."""
    with trio.fail_after(seconds):
        while not (found := await check()):
            await trio.sleep(0.1)
    return found


async def test_each_chart_type_answers_its_rows_from_the_read_models(
    client: httpx.AsyncClient,
) -> None:
    namespace = _ns()
    runs = await _deployed_and_run(client, namespace)
    dashboard_id = f"team-{uuid.uuid4().hex[:8]}"
    created = await client.post(
        "/api/v1/dashboards", content=_dashboard(dashboard_id, namespace), headers=YAML
    )
    assert created.status_code == 200, created.text
    assert created.json()["id"] == dashboard_id

    async def all_ended() -> Any:
        rows = await _chart(client, dashboard_id, "over_time")
        by_state: dict[str, int] = {}
        for row in rows["results"]:  # the runs may straddle an hour
            by_state[row["state"]] = by_state.get(row["state"], 0) + row["total"]
        return rows if by_state == {"SUCCESS": 3, "FAILED": 2} else None

    over_time = await _until(all_ended)
    assert over_time["interval"] == "PT1H"  # a day shown by the hour
    assert all(r["date"].endswith(":00:00.000Z") for r in over_time["results"])
    assert all(r["duration"] >= 0 for r in over_time["results"])

    # Counts by namespace, flow, state and hour are read from the hourly rollup (and the
    # partial hours at the range's ends from the executions); a filter on another field
    # reads every execution. Both answer the same rows, for any range.
    for body in [
        {},
        {"startDate": _iso(dt.datetime.now(dt.UTC) - dt.timedelta(minutes=90))},
        # Ending in the future: the runs are in whole hours of the range, read from the rollup.
        {
            "startDate": _iso(dt.datetime.now(dt.UTC) - dt.timedelta(hours=3)),
            "endDate": _iso(dt.datetime.now(dt.UTC) + dt.timedelta(hours=2)),
        },
        {
            "timeRange": "PT3H",
            "filters": [{"field": "state", "operation": "IN", "value": ["FAILED"]}],
        },
    ]:
        counted = await _chart(client, dashboard_id, "counted", **body)
        assert (
            counted["results"]
            == (await _chart(client, dashboard_id, "counted_row_by_row", **body))["results"]
        )
        assert sum(r["total"] for r in counted["results"]) == (2 if "filters" in body else 5)

    per_flow = await _chart(client, dashboard_id, "per_flow")
    _shaped(per_flow, openapi.ChartRows)
    assert [(r["flow"], r["total"]) for r in per_flow["results"]] == [("ok", 3), ("broken", 2)]
    assert all(r["longest"] >= 0 for r in per_flow["results"])

    per_team = await _chart(client, dashboard_id, "per_team")
    assert {r["team"]: r["total"] for r in per_team["results"]} == {"blue": 3, "red": 2}

    failures = await _chart(client, dashboard_id, "failures", pageSize=1, page=2)
    assert failures["total"] == 2 and len(failures["results"]) == 1
    everything = await _chart(client, dashboard_id, "failures")
    assert sorted(r["id"] for r in everything["results"]) == sorted(runs["broken"])
    assert set(everything["results"][0]) == {"id", "flow", "state", "started"}

    async def warnings_logged() -> Any:
        rows = await _chart(client, dashboard_id, "warnings")
        counts = {(r["task"], r["level"]): r["lines"] for r in rows["results"]}
        return counts if counts.get(("warn", "WARN")) == 2 else None

    warnings = await _until(warnings_logged)
    assert ("say", "INFO") not in warnings

    ratio = await _chart(client, dashboard_id, "success_ratio")
    assert ratio["results"] == [{"value": 60.0, "numerator": 3, "total": 5}]
    points = await _chart(client, dashboard_id, "metric_points")
    assert points["total"] == 1 and points["results"][0]["value"] >= 0

    notes = await _chart(client, dashboard_id, "notes")
    assert notes["results"] == [{"content": f"Ask **#team-{namespace}** about failures."}]
    about = await _chart(client, dashboard_id, "about")
    assert about["results"] == [{"description": ""}]

    csv = await client.post(
        f"/api/v1/dashboards/{dashboard_id}/charts/per_flow/export/to-csv", json={}
    )
    assert csv.status_code == 200 and csv.headers["content-type"].startswith("text/csv")
    assert csv.text.splitlines()[:2] == ["flow,total,longest", csv.text.splitlines()[1]]
    assert csv.text.splitlines()[1].startswith("ok,3,")

    # The request narrows the range: before the executions ran, nothing.
    earlier = await _chart(
        client,
        dashboard_id,
        "per_flow",
        startDate="2020-01-01T00:00:00Z",
        endDate="2020-01-02T00:00:00Z",
    )
    assert earlier == {**earlier, "results": [], "total": 0}


async def test_a_request_filter_narrows_a_chart_where_and_never_replaces_it(
    client: httpx.AsyncClient,
) -> None:
    """Kestra issue #16812: a state asked by a request replaced the chart's own STATE `where`,
    so the per-state tabs showed what "All" did not. Here a filter is ANDed to the `where`:
    "All" (no filter) is exactly the sum of the per-state tabs, and no tab escapes it."""
    namespace = _ns()
    await _deployed_and_run(client, namespace)
    dashboard_id = f"tabs-{uuid.uuid4().hex[:8]}"
    source = f"""\
id: {dashboard_id}
title: Finished
charts:
  - id: table
    type: io.kestra.plugin.core.dashboard.chart.Table
    data:
      type: io.kestra.plugin.core.dashboard.data.Executions
      columns:
        id: {{field: ID}}
        state: {{field: STATE}}
      where:
        - {{field: STATE, type: IN, values: [SUCCESS, FAILED]}}
"""
    created = await client.post("/api/v1/dashboards", content=source, headers=YAML)
    assert created.status_code == 200, created.text
    ns_filter = {"field": "namespace", "operation": "EQUALS", "value": namespace}

    async def all_there() -> Any:
        rows = await _chart(client, dashboard_id, "table", filters=[ns_filter])
        return rows if rows["total"] == 5 else None

    everything = await _until(all_there)
    tabs = 0
    for state in ("SUCCESS", "FAILED", "RUNNING", "KILLED"):
        state_filter = {"field": "state", "operation": "EQUALS", "value": state}
        tab = await _chart(client, dashboard_id, "table", filters=[ns_filter, state_filter])
        assert all(r["state"] == state for r in tab["results"])
        tabs += tab["total"]
    assert tabs == everything["total"] == 5
    # A state outside the chart's `where` finds nothing rather than escaping it.
    outside = await _chart(
        client,
        dashboard_id,
        "table",
        filters=[ns_filter, {"field": "state", "operation": "IN", "value": ["RUNNING", "KILLED"]}],
    )
    assert outside["total"] == 0
    # Labels and namespace prefixes narrow it too.
    blue = await _chart(
        client,
        dashboard_id,
        "table",
        filters=[
            {"field": "namespace", "operation": "PREFIX", "value": namespace},
            {"field": "labels", "operation": "EQUALS", "value": {"team": "blue"}},
        ],
    )
    assert blue["total"] == 3


async def test_a_dashboard_is_created_updated_listed_and_deleted_as_events_of_its_stream(
    server: Any, client: httpx.AsyncClient
) -> None:
    dashboard_id = f"life-{uuid.uuid4().hex[:8]}"
    first = f"id: {dashboard_id}\ntitle: First {dashboard_id}\n"
    created = await client.post("/api/v1/dashboards", content=first, headers=YAML)
    assert created.status_code == 200, created.text
    body = created.json()
    assert (body["title"], body["sourceCode"], body["deleted"]) == (
        f"First {dashboard_id}",
        first,
        False,
    )
    again = await client.post("/api/v1/dashboards", content=first, headers=YAML)
    assert again.status_code == 409

    second = (
        f"title: Second {dashboard_id}\ncharts:\n  - id: hello\n"
        "    type: io.kestra.plugin.core.dashboard.chart.Markdown\n    content: hi\n"
    )
    updated = await client.put(f"/api/v1/dashboards/{dashboard_id}", content=second, headers=YAML)
    assert updated.status_code == 200, updated.text
    shown = (await client.get(f"/api/v1/dashboards/{dashboard_id}")).json()
    _shaped(shown, openapi.DashboardWithSource)
    assert shown["title"] == f"Second {dashboard_id}" and shown["sourceCode"] == second
    assert shown["charts"][0]["id"] == "hello"
    moved = await client.put(
        f"/api/v1/dashboards/{dashboard_id}", content=f"id: other\n{second}", headers=YAML
    )
    assert moved.status_code == 400

    async def listed() -> Any:
        page = (await client.get("/api/v1/dashboards", params={"q": dashboard_id})).json()
        return (
            page if page["results"] and page["results"][0]["title"].startswith("Second") else None
        )

    page = await _until(listed)
    _shaped(page, openapi.DashboardPage)
    assert page["total"] == 1 and page["results"][0]["id"] == dashboard_id

    deleted = await client.delete(f"/api/v1/dashboards/{dashboard_id}")
    assert deleted.status_code == 204
    assert (await client.get(f"/api/v1/dashboards/{dashboard_id}")).status_code == 404
    assert (await client.delete(f"/api/v1/dashboards/{dashboard_id}")).status_code == 404

    async def unlisted() -> Any:
        page = (await client.get("/api/v1/dashboards", params={"q": dashboard_id})).json()
        return page if page["total"] == 0 else None

    await _until(unlisted)
    history = await server.store.read_stream(ev.dashboard_stream(dashboard_id))
    assert [e.type for e in history] == ["DashboardCreated", "DashboardUpdated", "DashboardDeleted"]
    assert all(e.meta["actor"].endswith("admin") for e in history)

    # Without an id, a new dashboard gets one.
    fresh = await client.post("/api/v1/dashboards", content="title: No id\n", headers=YAML)
    assert fresh.status_code == 200 and fresh.json()["id"]
    await client.delete(f"/api/v1/dashboards/{fresh.json()['id']}")


BAD = [
    ("title: x\ncharts: [\n", 3, "Invalid YAML"),
    ("title: x\ncolour: red\n", 2, "Unknown property 'colour'"),
    ("description: no title\n", None, "title is required"),
    (
        "title: x\ncharts:\n  - id: a\n    type: io.kestra.plugin.core.dashboard.chart.Gauge\n",
        4,
        "Unknown chart type",
    ),
    (
        "title: x\ncharts:\n  - id: a\n    type: Table\n    data:\n      type: Executions\n"
        "      columns:\n        n: {field: NAMESPACE}\n        c: {field: DURATION, agg: MEDIAN}\n",
        9,
        "Unknown aggregation 'MEDIAN'",
    ),
    (
        "title: x\ncharts:\n  - id: a\n    type: Table\n    data:\n      type: Executions\n"
        "      columns:\n        n: {field: NAMESPACES}\n",
        8,
        "Unknown field 'NAMESPACES'",
    ),
    (
        "title: x\ncharts:\n  - id: a\n    type: Table\n    data:\n      type: Logs\n"
        "      columns:\n        n: {field: NAMESPACE}\n      where:\n"
        "        - {field: LEVEL, type: LIKE, value: WARN}\n",
        10,
        "Unknown filter type 'LIKE'",
    ),
    (
        "title: x\ncharts:\n  - id: a\n    type: Bar\n    chartOptions: {column: s}\n"
        "    data:\n      type: Executions\n      columns:\n        s: {field: STATE}\n"
        "        t: {field: STATE, agg: SUM}\n",
        10,
        "SUM needs a numeric field",
    ),
    ("id: DROP TABLE x\ntitle: x\n", 1, "must be letters, digits"),
]


async def test_bad_dashboard_yaml_is_refused_naming_its_line_and_nothing_is_stored(
    server: Any, client: httpx.AsyncClient
) -> None:
    before = await server.store.head()
    for source, line, message in BAD:
        answer = await client.post("/api/v1/dashboards", content=source, headers=YAML)
        assert answer.status_code in (400, 422), (source, answer.text)
        body = answer.json()
        assert any(message in d["message"] for d in body["details"]), (source, body)
        if line is not None:
            assert any(d.get("line") == line for d in body["details"]), (source, body)
        checked = await client.post("/api/v1/dashboards/validate", content=source, headers=YAML)
        assert checked.status_code == 200
        _shaped(checked.json(), openapi.Validation)
        assert message in checked.json()["constraints"]
    # Every problem of a document at once.
    many = await client.post(
        "/api/v1/dashboards", content=BAD[4][0] + "colour: red\n", headers=YAML
    )
    assert len(many.json()["details"]) == 2
    ok = await client.post("/api/v1/dashboards/validate", content="title: fine\n", headers=YAML)
    assert ok.json() == {"index": 0}
    chart = "id: c\ntype: io.kestra.plugin.core.dashboard.chart.Pie\ndata:\n  type: Metrics\n"
    one = await client.post("/api/v1/dashboards/validate/chart", content=chart, headers=YAML)
    assert one.status_code == 200
    assert "columns must map column names" in one.json()["constraints"]
    assert one.json()["details"][0]["line"] == 4
    # Nothing was recorded by any refused dashboard.
    events = await server.db.fetchall(
        "SELECT type FROM events WHERE seq > %s AND type LIKE 'Dashboard%%'", (before,)
    )
    assert events == []


async def test_bad_chart_requests_get_a_400_naming_what_is_wrong(
    client: httpx.AsyncClient,
) -> None:
    dashboard_id = f"req-{uuid.uuid4().hex[:8]}"
    source = (
        f"id: {dashboard_id}\ntitle: Requests\ntimeWindow: {{default: P1D, max: P7D}}\n"
        "charts:\n  - id: t\n    type: Table\n    data:\n      type: Executions\n"
        "      columns:\n        id: {field: ID}\n"
    )
    assert (await client.post("/api/v1/dashboards", content=source, headers=YAML)).is_success
    url = f"/api/v1/dashboards/{dashboard_id}/charts/t"
    for body, named in [
        ({"startDate": "2024-01-01T00:00:00Z", "endDate": "2024-03-01T00:00:00Z"}, "startDate"),
        ({"startDate": "soon"}, "startDate"),
        ({"pageSize": 0}, "pageSize"),
        ({"colour": "red"}, "colour"),
        (
            {"filters": [{"field": "flavour", "operation": "EQUALS", "value": "x"}]},
            "filters[0].field",
        ),
        (
            {"filters": [{"field": "state", "operation": "EQUALS", "value": "DONE"}]},
            "filters[0].value",
        ),
        (
            {"filters": [{"field": "state", "operation": "MATCHES", "value": "x"}]},
            "filters[0].operation",
        ),
    ]:
        answer = await client.post(url, json=body)
        assert answer.status_code == 400, (body, answer.text)
        assert answer.json()["details"][0]["path"] == named, (body, answer.json())
    # Hostile values are refused, never a 500: a regular expression Python reads and
    # PostgreSQL does not, ranges beyond the calendar.
    for body in [
        {"filters": [{"field": "namespace", "operation": "REGEX", "value": "(?P<n>a)"}]},
        {"timeRange": "P999999D"},
        {"endDate": "0001-01-01T00:00:00Z", "timeRange": "P1D"},
    ]:
        answer = await client.post(url, json=body)
        assert answer.status_code == 400, (body, answer.text)
    missing = await client.post(f"/api/v1/dashboards/{dashboard_id}/charts/nope", json={})
    assert missing.status_code == 404 and "its charts are t" in missing.json()["message"]
    assert (await client.post("/api/v1/dashboards/nope/charts/t", json={})).status_code == 404


async def test_a_chart_previewed_answers_its_rows_without_being_saved(
    client: httpx.AsyncClient,
) -> None:
    namespace = _ns()
    await _deployed_and_run(client, namespace)
    chart = f"""\
id: preview
type: io.kestra.plugin.core.dashboard.chart.KPI
data:
  type: io.kestra.plugin.core.dashboard.data.ExecutionsKPI
  columns: {{field: DURATION, agg: AVG}}
  where:
    - {{field: NAMESPACE, type: EQUAL_TO, value: {namespace}}}
"""

    async def answered() -> Any:
        answer = await client.post("/api/v1/dashboards/charts/preview", json={"chart": chart})
        assert answer.status_code == 200, answer.text
        row = answer.json()["results"][0]
        return row if row["value"] is not None else None

    row = await _until(answered)
    assert row["value"] >= 0
    bad = await client.post(
        "/api/v1/dashboards/charts/preview", json={"chart": chart.replace("AVG", "MEAN")}
    )
    assert bad.status_code == 422 and bad.json()["details"][0]["line"] == 5


async def test_a_scoped_token_sees_in_charts_only_its_namespaces(
    client: httpx.AsyncClient,
) -> None:
    mine, theirs = _ns(), _ns()
    await _deployed_and_run(client, mine)
    await _deployed_and_run(client, theirs)
    dashboard_id = f"scope-{uuid.uuid4().hex[:8]}"
    source = f"""\
id: {dashboard_id}
title: Both
charts:
  - id: per_namespace
    type: Bar
    chartOptions: {{column: namespace}}
    data:
      type: Executions
      columns:
        namespace: {{field: NAMESPACE}}
        total: {{agg: COUNT}}
      where:
        - {{field: NAMESPACE, type: IN, values: [{mine}, {theirs}]}}
"""
    assert (await client.post("/api/v1/dashboards", content=source, headers=YAML)).is_success

    async def both() -> Any:
        rows = await _chart(client, dashboard_id, "per_namespace")
        return rows if sum(r["total"] for r in rows["results"]) == 10 else None

    await _until(both)
    token = await _token(client, "viewer", [mine])
    async with httpx.AsyncClient(base_url=client.base_url, timeout=30) as other:
        answer = await other.post(
            f"/api/v1/dashboards/{dashboard_id}/charts/per_namespace",
            json={},
            headers=_bearer(token),
        )
        assert answer.status_code == 200, answer.text
        assert answer.json()["results"] == [{"namespace": mine, "total": 5}]
        # A viewer may read dashboards but not change them.
        refused = await other.delete(f"/api/v1/dashboards/{dashboard_id}", headers=_bearer(token))
        assert refused.status_code == 403


DOCS = Path(__file__).resolve().parents[2] / "docs" / "dashboards.md"


async def test_the_dashboard_of_the_documentation_saves_and_answers_every_chart(
    client: httpx.AsyncClient,
) -> None:
    text = DOCS.read_text()
    example = re.search(r"### An example.*?```yaml\n(.*?)```", text, re.S)
    assert example is not None
    source = example.group(1)
    namespace = f"company.docs{uuid.uuid4().hex[:8]}"
    runs = await _deployed_and_run(client, namespace)
    await client.delete("/api/v1/dashboards/ops-overview")  # left by an earlier run
    checked = await client.post("/api/v1/dashboards/validate", content=source, headers=YAML)
    assert checked.json() == {"index": 0}, checked.text
    saved = await client.post("/api/v1/dashboards", content=source, headers=YAML)
    assert saved.status_code == 200, saved.text
    charts = [c["id"] for c in saved.json()["charts"]]
    assert len(charts) == 8
    mine = [{"field": "namespace", "operation": "EQUALS", "value": namespace}]

    async def failures_listed() -> Any:
        rows = await _chart(client, "ops-overview", "failures", filters=mine)
        return rows if rows["total"] == 2 else None

    failures = await _until(failures_listed)
    assert sorted(r["id"] for r in failures["results"]) == sorted(runs["broken"])
    assert {r["team"] for r in failures["results"]} == {"red"}
    for chart_id in charts:

        async def answered(chart_id: str = chart_id) -> Any:
            rows = await _chart(client, "ops-overview", chart_id, filters=mine)
            return rows["results"]

        await _until(answered)  # the logs and metrics read models follow their own events
    ratio = await _chart(client, "ops-overview", "success_ratio", filters=mine)
    assert ratio["results"][0]["value"] == 60.0
    await client.delete("/api/v1/dashboards/ops-overview")


# --- charts read from the rollups answer what the rows answer ----------------------------------


@pytest.fixture(scope="module")
def rollup_database_url(database_url: str) -> Iterator[str]:
    """A database of its own, with executions, log lines and metric points written by hand
    over three days (at any second, some on whole hours) and the rollups counted from them."""
    with own_database(database_url, "dash_rollup", prepare=True) as url:
        _seed_rows(url)
        yield url


ROLLUP_BASE = dt.datetime(2026, 5, 4, tzinfo=dt.UTC)
ROLLUP_NAMESPACES = ["team.a", "team.a.b", "team.b", "teamb"]


def _seed_rows(url: str) -> None:
    rng = random.Random(2026)

    def at() -> dt.datetime:
        if rng.random() < 0.1:  # on a whole hour: the first instant of a bucket
            return ROLLUP_BASE + dt.timedelta(hours=rng.randrange(72))
        return ROLLUP_BASE + dt.timedelta(seconds=rng.randrange(72 * 3600))

    with psycopg.connect(url, autocommit=True) as conn, conn.transaction():
        for i in range(800):
            conn.execute(
                "INSERT INTO executions (id, namespace, flow_id, flow_revision, state,"
                " histories, start_date, last_seq) VALUES (%s, %s, %s, 1, %s, '[]', %s, 0)",
                (
                    f"x{i:04d}",
                    rng.choice(ROLLUP_NAMESPACES),
                    rng.choice(["etl", "hello", "Zeta"]),
                    rng.choice(["SUCCESS", "FAILED", "RUNNING", "KILLED"]),
                    at(),
                ),
            )
        for i in range(3000):
            unknown = rng.random() < 0.05  # a line whose execution was not found
            conn.execute(
                "INSERT INTO logs (seq, line, execution_id, namespace, flow_id, task_id,"
                " timestamp, level, message) VALUES (%s, 0, %s, %s, %s, %s, %s, %s, 'm')",
                (
                    i,
                    f"x{i % 800:04d}",
                    None if unknown else rng.choice(ROLLUP_NAMESPACES),
                    None if unknown else rng.choice(["etl", "hello", "Zeta"]),
                    rng.choice(["t1", "t2"]),
                    at(),
                    rng.choice(["TRACE", "DEBUG", "INFO", "WARN", "ERROR"]),
                ),
            )
        for i in range(2500):
            conn.execute(
                "INSERT INTO metrics (seq, idx, execution_id, namespace, flow_id, task_id, name,"
                " type, value, tags, timestamp) VALUES (%s, 0, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
                (
                    i,
                    f"x{i % 800:04d}",
                    rng.choice(ROLLUP_NAMESPACES),
                    rng.choice(["etl", "hello"]),
                    rng.choice(["t1", "t2", None]),  # an execution's duration has no task
                    rng.choice(["rows", "load", "duration"]),
                    rng.choice(["counter", "timer"]),
                    # Quarters: their sums are exact in any order, as counters and ms are.
                    rng.randrange(-400, 4000) / 4,
                    psycopg.types.json.Jsonb({"env": rng.choice(["dev", "prod"])}),
                    at(),
                ),
            )
        # The rollups as the projections keep them (migrations 0012 and 0015 count them so).
        conn.execute("DELETE FROM execution_stats")
        conn.execute(
            "INSERT INTO execution_stats (bucket, namespace, flow_id, state, count)"
            " SELECT date_trunc('hour', start_date, 'UTC'), namespace, flow_id, state, count(*)"
            " FROM executions GROUP BY 1, 2, 3, 4"
        )
        conn.execute("DELETE FROM log_counts")
        conn.execute("DELETE FROM log_counts_hourly")
        conn.execute(
            "INSERT INTO log_counts (minute, namespace, flow_id, level, count)"
            " SELECT date_bin('1 minute', timestamp, '2001-01-01T00:00:00Z'),"
            " coalesce(namespace, ''), coalesce(flow_id, ''), level, count(*)"
            " FROM logs GROUP BY 1, 2, 3, 4"
        )
        conn.execute(
            "INSERT INTO log_counts_hourly (hour, namespace, level, count)"
            " SELECT date_bin('1 hour', timestamp, '2001-01-01T00:00:00Z'),"
            " coalesce(namespace, ''), level, count(*) FROM logs GROUP BY 1, 2, 3"
        )
        conn.execute("DELETE FROM metric_buckets")
        conn.execute(
            "INSERT INTO metric_buckets (bucket, namespace, flow_id, task_id, name, type, tags,"
            " count, sum, min, max) SELECT date_trunc('hour', timestamp, 'UTC'), namespace,"
            " flow_id, task_id, name, type, tags, count(*), sum(value), min(value), max(value)"
            " FROM metrics GROUP BY 1, 2, 3, 4, 5, 6, 7"
        )


def _rollup_chart(source: str, columns: Any, **data: Any) -> Any:
    """A chart as a user writes it (JSON is YAML), checked as a saved one is."""
    kpi = "agg" in columns
    kind = source.capitalize() + ("KPI" if kpi else "")
    body = {
        "id": "c",
        "type": "io.kestra.plugin.core.dashboard.chart." + ("KPI" if kpi else "Table"),
        "chartOptions": {"numberType": "PERCENTAGE"} if kpi else {},
        "data": {
            "type": f"io.kestra.plugin.core.dashboard.data.{kind}",
            "columns": columns,
            **data,
        },
    }
    return parse_chart(msgspec.json.encode(body).decode())


def _eq(field: str, value: Any) -> dict[str, Any]:
    return {"type": "EQUAL_TO", "field": field, "value": value}


ROLLUP_CHARTS = [
    _rollup_chart("executions", {"d": {"field": "START_DATE"}, "s": {"field": "STATE"},
                                 "n": {"agg": "COUNT"}}),
    _rollup_chart(
        "executions",
        {"ns": {"field": "NAMESPACE"}, "f": {"field": "FLOW_ID"},
         "n": {"field": "ID", "agg": "COUNT"}},
        where=[{"type": "IN", "field": "STATE", "values": ["SUCCESS", "FAILED"]}],
        orderBy=[{"column": "ns", "order": "DESC"}, {"column": "f", "order": "ASC"}],
    ),
    _rollup_chart("executions", {"n": {"agg": "COUNT"}},
                  where=[{"type": "STARTS_WITH", "field": "NAMESPACE", "value": "team.a"}]),
    _rollup_chart("executions", {"field": "ID", "agg": "COUNT"},
                  numerator=[{"type": "IN", "field": "STATE", "values": ["SUCCESS"]}]),
    _rollup_chart("logs", {"level": {"field": "LEVEL"}, "n": {"agg": "COUNT"}}),
    _rollup_chart("logs", {"d": {"field": "DATE"}, "ns": {"field": "NAMESPACE"},
                           "level": {"field": "LEVEL"}, "n": {"agg": "COUNT"}}),
    _rollup_chart(
        "logs", {"f": {"field": "FLOW_ID"}, "n": {"agg": "COUNT"}},
        where=[{"type": "IN", "field": "LEVEL", "values": ["WARN", "ERROR"]}],
    ),
    _rollup_chart(
        "logs", {"level": {"field": "LEVEL"}, "n": {"field": "NAMESPACE", "agg": "COUNT"}},
        where=[{"type": "NOT_EQUAL_TO", "field": "NAMESPACE", "value": "team.b"}],
    ),
    _rollup_chart("logs", {"field": "LEVEL", "agg": "COUNT"},
                  numerator=[{"type": "OR", "values": [_eq("LEVEL", "ERROR"),
                                                       {"type": "IS_NULL", "field": "FLOW_ID"}]}]),
    _rollup_chart("metrics", {"f": {"field": "FLOW_ID"}, "rows": {"field": "VALUE", "agg": "SUM"}},
                  where=[_eq("NAME", "rows")]),
    _rollup_chart(
        "metrics",
        {"d": {"field": "DATE"}, "name": {"field": "NAME"}, "task": {"field": "TASK_ID"},
         "n": {"agg": "COUNT"}, "sum": {"field": "VALUE", "agg": "SUM"},
         "min": {"field": "VALUE", "agg": "MIN"}, "max": {"field": "VALUE", "agg": "MAX"},
         "avg": {"field": "VALUE", "agg": "AVG"}, "tasks": {"field": "TASK_ID", "agg": "COUNT"}},
    ),
    _rollup_chart(
        "metrics", {"type": {"field": "TYPE"}, "avg": {"field": "VALUE", "agg": "AVG"}},
        where=[{"type": "OR", "values": [_eq("NAME", "load"), {"type": "IS_NULL", "field": "TASK_ID"}]}],
    ),
    _rollup_chart("metrics", {"field": "VALUE", "agg": "AVG"}, numerator=[_eq("TYPE", "timer")]),
    _rollup_chart("metrics", {"field": "VALUE", "agg": "MAX"}),
]  # fmt: skip
"""Charts of every shape a rollup answers: counts by state, namespace, flow, level, name, task
and date; sums, minimums, maximums and averages of metric values; KPIs with numerators."""

ROW_CHARTS = [
    _rollup_chart("executions", {"s": {"field": "STATE"}, "n": {"agg": "COUNT"}},
                  where=[{"type": "GREATER_THAN", "field": "DURATION", "value": 1}]),
    _rollup_chart("logs", {"level": {"field": "LEVEL"}, "n": {"agg": "COUNT"}},
                  where=[{"type": "CONTAINS", "field": "MESSAGE", "value": "m"}]),
    _rollup_chart("metrics", {"n": {"field": "VALUE", "agg": "SUM"}},
                  where=[{"type": "GREATER_THAN", "field": "VALUE", "value": 3}]),
    _rollup_chart("logs", {"ns": {"field": "NAMESPACE"}, "n": {"agg": "COUNT"}},
                  where=[{"type": "REGEX", "field": "NAMESPACE", "value": "^team[.]a"}]),
]  # fmt: skip
"""Charts only the rows answer: a filter on a field no rollup keeps, or a regular expression
over one the rollup keeps byte-wise (its classes may depend on the collation)."""


def _at(hours: float) -> dt.datetime:
    return ROLLUP_BASE + dt.timedelta(hours=hours)


ROLLUP_RANGES = [
    (_at(0.37), _at(30.81)),  # by the hour, cut mid-hour at both ends
    (_at(-5), _at(80)),  # by the day, every row
    (_at(7), _at(50)),  # whole hours, a row on each end's instant
    (_at(12.1), _at(12.9)),  # inside one hour: by the minute, no whole hour
    (_at(2.5), _at(3.5)),  # by the minute, across an hour
    (_at(-24 * 120), _at(20.5)),  # by the week
    (_at(-24 * 500), _at(70.25)),  # by the month
    # A partial bucket nearer its start than its end is read as its rollup row less the rows
    # before the range; one nearer its end, as that row less the rows after the range.
    (_at(0.2), _at(30.3)),  # taken off the first hour, the last hour's rows added
    (_at(0.8), _at(30.7)),  # the first hour's rows added, taken off the last hour
    (_at(9.05), _at(9.95)),  # one hour, by the minute, nothing whole inside
    (_at(47.4), dt.datetime.now(dt.UTC) + dt.timedelta(minutes=3)),  # ending now
]


async def test_charts_read_from_the_rollups_answer_the_rows_the_rows_answer(
    rollup_database_url: str,
) -> None:
    scopes = [("true", []), ("((namespace = %s OR namespace LIKE %s))", ["team.a", "team.a.%"])]
    requests: list[list[Any]] = [[], [model.Condition(type="NOT_EQUAL_TO", field="NAMESPACE",
                                                       value="teamb")]]  # fmt: skip
    with psycopg.connect(rollup_database_url, autocommit=True) as conn:
        for chart in [*ROLLUP_CHARTS, *ROW_CHARTS]:
            for start, end in ROLLUP_RANGES:
                for scope in scopes:
                    for extra in requests:
                        unit = model.bucket_unit(end - start)
                        kept = model.rollup_for(chart.data, extra, unit)
                        dated = any(
                            c.agg is None and c.field in ("DATE", "START_DATE")
                            for c in chart.data.columns
                        )
                        if chart in ROW_CHARTS:
                            assert kept is None
                        elif not (dated and unit == "minute" and chart.data.source != "logs"):
                            assert kept is not None, chart
                        asked = {
                            "start": start,
                            "end": end,
                            "scope": scope,
                            "extra": extra,
                            "page": 1,
                            "size": 10_000,
                        }
                        read = model.run_chart(conn, chart, **asked)
                        counted = model.run_chart(conn, chart, **asked, rollup=False)
                        assert read == counted, (chart, start, end, scope, extra)
                        assert read["results"] or chart in ROW_CHARTS, (chart, start, end)
        # Pages of a chart read from a rollup are the pages of its rows.
        chart = ROLLUP_CHARTS[5]
        paged = {"start": _at(1.5), "end": _at(40.2), "scope": scopes[0], "extra": []}
        for page in (1, 2, 7):
            assert model.run_chart(conn, chart, **paged, page=page, size=9) == model.run_chart(
                conn, chart, **paged, page=page, size=9, rollup=False
            )
