"""The metrics read model through a real server, as Kestra's clients call it: the metrics a
script reports through `::{"metrics": [...]}::` and the built-in durations, per execution with
each filter, the names and tasks of a flow, and aggregates per time bucket; a batch applied
twice and a rebuild from position 0 give the same rows."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import msgspec
import pytest
import trio

from api import openapi
from engine.db import Database
from projections import reindex as rebuild
from projections.metrics import MetricsProjection
from tests.api.test_auth import _bearer, _token

YAML = {"Content-Type": "application/x-yaml"}


def _ns() -> str:
    return f"test.metrics.n{uuid.uuid4().hex[:8]}"


def _flow(namespace: str) -> str:
    # A Python script reports through Kestra's library and the raw protocol, a shell script
    # through the raw protocol: counters and timers (seconds), with tags.
    return f"""
id: etl
namespace: {namespace}
tasks:
  - id: extract
    type: io.kestra.plugin.scripts.python.Script
    script: |
      import json
      from kestra import Kestra
      Kestra.counter("rows", 3, {{"table": "users"}})
      print('::' + json.dumps({{"metrics": [
          {{"name": "load", "type": "timer", "value": 1.5, "tags": {{"table": "users"}}}}
      ]}}) + '::')
  - id: load
    type: io.kestra.plugin.scripts.shell.Commands
    commands:
      - echo '::{{"metrics":[{{"name":"rows","type":"counter","value":2,"tags":{{"table":"orders"}}}},{{"name":"load","type":"timer","value":0.25,"tags":{{"table":"orders"}}}}]}}::'
"""


@pytest.fixture
async def ran(client: httpx.AsyncClient) -> AsyncIterator[tuple[str, str, dict[str, Any]]]:
    """A namespace, and an ended execution of its `etl` flow (as GET /executions/{id})."""
    ns = _ns()
    deployed = await client.post("/api/v1/flows", content=_flow(ns), headers=YAML)
    assert deployed.is_success, deployed.text
    answer = await client.post(f"/api/v1/executions/{ns}/etl?wait=true")
    assert answer.is_success, answer.text
    xid = answer.json()["id"]
    execution = (await client.get(f"/api/v1/executions/{xid}")).json()
    assert execution["state"]["current"] == "SUCCESS", execution
    await _points(client, xid)  # which waits for the read model to hold them
    yield ns, xid, execution


async def _points(client: httpx.AsyncClient, xid: str, **params: Any) -> dict[str, Any]:
    answer = await client.get(f"/api/v1/metrics/{xid}", params={"size": 100, **params})
    assert answer.status_code == 200, answer.text
    return dict(answer.json())


def _ms(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00"))


def _seconds(duration: str) -> float:
    assert duration.startswith("PT") and duration.endswith("S")
    return float(duration[2:-1])


async def test_script_metrics_and_built_in_durations_are_listed_per_execution(
    client: httpx.AsyncClient, ran: tuple[str, str, dict[str, Any]]
) -> None:
    ns, xid, execution = ran
    page = await _points(client, xid)
    assert page["total"] == len(page["results"]) == 7
    msgspec.convert(page, openapi.MetricPage)  # the shape the OpenAPI document gives
    reported = {
        (p["taskId"], p["name"], p["type"], p["value"], tuple(sorted(p["tags"].items())))
        for p in page["results"]
        if p["name"] not in ("duration", "execution.duration")
    }
    # Timers in milliseconds, as Kestra's are.
    assert reported == {
        ("extract", "rows", "counter", 3.0, (("table", "users"),)),
        ("extract", "load", "timer", 1500.0, (("table", "users"),)),
        ("load", "rows", "counter", 2.0, (("table", "orders"),)),
        ("load", "load", "timer", 250.0, (("table", "orders"),)),
    }
    runs = {r["taskId"]: r for r in execution["taskRunList"]}
    for p in page["results"]:
        assert p["namespace"] == ns and p["flowId"] == "etl" and p["executionId"] == xid
        assert p["tenantId"] == "main" and p["deleted"] is False
        if p["taskId"] is not None:
            assert p["taskRunId"] == runs[p["taskId"]]["id"]

    # A task's duration: from the claim (RUNNING) to the attempt's end.
    durations = {p["taskId"]: p for p in page["results"] if p["name"] == "duration"}
    assert set(durations) == {"extract", "load"}
    for task_id, point in durations.items():
        assert point["type"] == "timer" and point["tags"] == {"state": "SUCCESS"}
        histories = runs[task_id]["attempts"][0]["state"]["histories"]
        dates = {h["state"]: _ms(h["date"]) for h in histories}
        expected = (dates["SUCCESS"] - dates["RUNNING"]) / dt.timedelta(milliseconds=1)
        assert point["value"] == expected > 0
    # The execution's duration: the one GET /executions/{id} shows, to the millisecond.
    (whole,) = [p for p in page["results"] if p["name"] == "execution.duration"]
    assert whole["taskId"] is None and whole["taskRunId"] is None
    assert whole["tags"] == {"state": "SUCCESS"}
    assert whole["value"] == round(_seconds(execution["state"]["duration"]) * 1000)
    assert whole["timestamp"] == execution["state"]["endDate"]


async def test_execution_metrics_filter_by_task_task_run_and_tags_and_page_and_sort(
    client: httpx.AsyncClient, ran: tuple[str, str, dict[str, Any]]
) -> None:
    ns, xid, execution = ran
    load_run = next(r["id"] for r in execution["taskRunList"] if r["taskId"] == "load")

    by_task = await _points(client, xid, taskId="extract")
    assert {p["name"] for p in by_task["results"]} == {"rows", "load", "duration"}
    assert by_task["total"] == 3
    by_run = await _points(client, xid, taskRunId=load_run)
    assert {p["taskId"] for p in by_run["results"]} == {"load"} and by_run["total"] == 3
    tagged = await _points(client, xid, tags="table:orders")
    assert {(p["name"], p["value"]) for p in tagged["results"]} == {("rows", 2.0), ("load", 250.0)}
    both = await _points(client, xid, tags=["table:orders", "state:SUCCESS"])
    assert both["total"] == 0
    assert (await _points(client, xid, tags="state:SUCCESS"))["total"] == 3

    assert (await _points(client, xid, sort=""))["total"] == 7
    ordered = await _points(client, xid, sort="value:desc")
    values = [p["value"] for p in ordered["results"]]
    assert values == sorted(values, reverse=True)
    named = await _points(client, xid, sort=["name:asc", "value:asc"])
    keys = [(p["name"], p["value"]) for p in named["results"]]
    assert keys == sorted(keys)

    first = await _points(client, xid, page=1, size=3, sort="value:asc")
    second = await _points(client, xid, page=2, size=3, sort="value:asc")
    last = await _points(client, xid, page=3, size=3, sort="value:asc")
    assert first["total"] == second["total"] == last["total"] == 7
    assert [len(p["results"]) for p in (first, second, last)] == [3, 3, 1]
    paged = [p["value"] for page in (first, second, last) for p in page["results"]]
    assert paged == sorted(values)

    for params, wrong in (
        ({"sort": "colour:asc"}, "sort"),
        ({"sort": "value:up"}, "sort"),
        ({"tags": "no-colon"}, "tags"),
        ({"size": "0"}, "size"),
        ({"page": "x"}, "page"),
        ({"level": "INFO"}, "level"),
    ):
        answer = await client.get(f"/api/v1/metrics/{xid}", params=params)
        assert answer.status_code == 400, (params, answer.text)
        assert wrong in answer.json()["message"]
    missing = await client.get("/api/v1/metrics/no-such-execution")
    assert missing.status_code == 404 and "no-such-execution" in missing.json()["message"]


async def test_names_and_tasks_of_a_flow_with_metrics(
    client: httpx.AsyncClient, ran: tuple[str, str, dict[str, Any]]
) -> None:
    ns, _, _ = ran
    names = await client.get(f"/api/v1/metrics/names/{ns}/etl")
    assert names.json() == ["duration", "execution.duration", "load", "rows"]
    task = await client.get(f"/api/v1/metrics/names/{ns}/etl/load")
    assert task.json() == ["duration", "load", "rows"]
    tasks = await client.get(f"/api/v1/metrics/tasks/{ns}/etl")
    assert tasks.json() == ["extract", "load"]
    # Unknown flows and tasks have none; the answer is an empty list, as Kestra's.
    assert (await client.get(f"/api/v1/metrics/names/{ns}/nope")).json() == []
    assert (await client.get(f"/api/v1/metrics/names/{ns}/etl/nope")).json() == []
    assert (await client.get(f"/api/v1/metrics/tasks/{ns}/nope")).json() == []
    # Under Kestra's tenant segment too.
    assert (await client.get(f"/api/v1/main/metrics/tasks/{ns}/etl")).json() == tasks.json()


def _values(answer: httpx.Response) -> list[float]:
    assert answer.status_code == 200, answer.text
    return [a["value"] for a in answer.json()["aggregations"] if a["value"]]


async def test_aggregates_per_bucket_with_each_aggregation_range_and_tag_filter(
    client: httpx.AsyncClient, ran: tuple[str, str, dict[str, Any]]
) -> None:
    ns, xid, _ = ran
    base = f"/api/v1/metrics/aggregates/{ns}/etl"
    # A second run: two points of each series.
    again = await client.post(f"/api/v1/executions/{ns}/etl?wait=true")
    assert again.json()["state"]["current"] == "SUCCESS"
    await _points(client, again.json()["id"])  # its points are in the read model
    now = dt.datetime.now(dt.UTC)

    def iso(at: dt.datetime) -> str:
        return at.isoformat().replace("+00:00", "Z")

    # Days: read from the hourly rollup (the points are in a whole hour of the range).
    days = {
        "startDate": iso(now - dt.timedelta(days=2)),
        "endDate": iso(now + dt.timedelta(days=2)),
    }
    answer = await client.get(f"{base}/rows", params=days)
    body = answer.json()
    assert body["groupBy"] == "day" and len(body["aggregations"]) == 5
    msgspec.convert(body, openapi.MetricAggregations)
    assert all(a["name"] == "rows" for a in body["aggregations"])
    assert _values(answer) == [10.0]  # (3 + 2) twice
    expected = {"sum": 10.0, "count": 4.0, "avg": 2.5, "min": 2.0, "max": 3.0}
    for how, value in expected.items():
        found = await client.get(f"{base}/rows", params={**days, "aggregation": how.upper()})
        assert _values(found) == [value], how
    # Empty buckets: 0 for a sum or a count, null for the others.
    empty = (await client.get(f"{base}/rows", params={**days, "aggregation": "max"})).json()
    assert [a["value"] for a in empty["aggregations"]].count(None) == 4
    # A task's, and the tag filters.
    assert _values(await client.get(f"{base}/load/rows", params=days)) == [4.0]
    tagged = await client.get(f"{base}/rows", params={**days, "tags": "table:users"})
    assert _values(tagged) == [6.0]
    timers = await client.get(
        f"{base}/load", params={**days, "aggregation": "avg", "tags": "table:orders"}
    )
    assert _values(timers) == [250.0]
    assert _values(await client.get(f"{base}/rows", params={**days, "tags": "table:none"})) == []
    # The built-in durations aggregate like any timer.
    runs = await client.get(f"{base}/execution.duration", params={**days, "aggregation": "count"})
    assert _values(runs) == [2.0]

    # Minutes up to six hours (from the points), hours up to a day (the partial hours at the
    # ends of the range from the points too), then weeks, months.
    minutes = await client.get(
        f"{base}/rows",
        params={"startDate": iso(now - dt.timedelta(hours=1)), "endDate": iso(now)},
    )
    assert minutes.json()["groupBy"] == "minute" and len(minutes.json()["aggregations"]) in (61, 62)
    assert sum(_values(minutes)) == 10.0
    hours = await client.get(
        f"{base}/rows",
        params={"startDate": iso(now - dt.timedelta(hours=12)), "endDate": iso(now)},
    )
    assert hours.json()["groupBy"] == "hour" and sum(_values(hours)) == 10.0
    weeks = await client.get(
        f"{base}/rows",
        params={"startDate": iso(now - dt.timedelta(days=200)), "endDate": iso(now)},
    )
    assert weeks.json()["groupBy"] == "week" and sum(_values(weeks)) == 10.0
    months = await client.get(
        f"{base}/rows",
        params={"startDate": iso(now - dt.timedelta(days=400)), "endDate": iso(now)},
    )
    assert months.json()["groupBy"] == "month" and sum(_values(months)) == 10.0
    # The default range: the last 30 days, by the day.
    default = await client.get(f"{base}/rows")
    assert default.json()["groupBy"] == "day" and sum(_values(default)) == 10.0
    before = await client.get(
        f"{base}/rows",
        params={
            "startDate": iso(now - dt.timedelta(days=9)),
            "endDate": iso(now - dt.timedelta(days=8)),
        },
    )
    assert _values(before) == []

    for params, wrong in (
        ({"aggregation": "median"}, "aggregation"),
        ({"startDate": "yesterday"}, "startDate"),
        ({"startDate": iso(now), "endDate": iso(now - dt.timedelta(hours=1))}, "startDate"),
        ({"startDate": "0001-01-01T00:00:00Z"}, "startDate"),
        ({"tags": ":x"}, "tags"),
        ({"size": "10"}, "size"),
    ):
        answer = await client.get(f"{base}/rows", params=params)
        assert answer.status_code == 400, (params, answer.text)
        assert wrong in answer.json()["message"]


async def test_a_namespace_scoped_token_reads_only_its_namespaces_metrics(
    client: httpx.AsyncClient, ran: tuple[str, str, dict[str, Any]]
) -> None:
    ns, xid, _ = ran
    other = await _token(client, "viewer", [_ns()])
    mine = await _token(client, "viewer", [ns])
    async with httpx.AsyncClient(base_url=client.base_url, timeout=30) as anonymous:
        for path in (
            f"/api/v1/metrics/{xid}",
            f"/api/v1/metrics/names/{ns}/etl",
            f"/api/v1/metrics/names/{ns}/etl/load",
            f"/api/v1/metrics/tasks/{ns}/etl",
            f"/api/v1/metrics/aggregates/{ns}/etl/rows",
            f"/api/v1/metrics/aggregates/{ns}/etl/load/rows",
        ):
            refused = await anonymous.get(path, headers=_bearer(other))
            assert refused.status_code == 403 and ns in refused.json()["message"], path
            allowed = await anonymous.get(path, headers=_bearer(mine))
            assert allowed.status_code == 200, (path, allowed.text)


async def _rows(db: Database, ns: str) -> dict[str, list[dict[str, Any]]]:
    return {
        "metrics": await db.fetchall(
            "SELECT * FROM metrics WHERE namespace = %s ORDER BY seq, idx", (ns,)
        ),
        "metric_buckets": await db.fetchall(
            "SELECT * FROM metric_buckets WHERE namespace = %s"
            " ORDER BY flow_id, name, bucket, task_id, type, tags::text",
            (ns,),
        ),
    }


async def test_a_batch_applied_twice_and_a_rebuild_from_zero_give_the_same_rows(
    server: Any,
    client: httpx.AsyncClient,
    database_url: str,
    ran: tuple[str, str, dict[str, Any]],
) -> None:
    ns, xid, _ = ran
    await _points(client, xid)
    before = await _rows(server.db, ns)
    assert len(before["metrics"]) == 7
    assert sum(r["count"] for r in before["metric_buckets"]) == 7

    events = [
        e for e in await server.store.read_execution(xid) if e.type in MetricsProjection.types
    ]
    projection = MetricsProjection()

    def apply(conn: Any) -> None:
        with conn.transaction():
            projection.apply(events, conn)

    for _ in range(2):
        await server.db.run(apply)
        assert await _rows(server.db, ns) == before

    # A projection started afresh after the task runs were created (a restart) finds their
    # task ids in the log: the points it writes again are the same.
    ends = [e for e in events if e.type != "TaskRunCreated"]

    def again(conn: Any) -> None:
        with conn.transaction():
            conn.execute("DELETE FROM metrics WHERE execution_id = %s", (xid,))
            MetricsProjection().apply(ends, conn)
            found = conn.execute(
                "SELECT * FROM metrics WHERE namespace = %s ORDER BY seq, idx", (ns,)
            ).fetchall()
            raise _RolledBack(found)

    with pytest.raises(_RolledBack) as raised:
        await server.db.run(again)
    assert len(raised.value.args[0]) == 7
    assert [tuple(r.values()) for r in before["metrics"]] == raised.value.args[0]

    owner = Database(database_url, max_size=2)
    try:
        with trio.fail_after(120):
            done = await rebuild.reindex(owner, [MetricsProjection()], storage=server.storage)
        assert [r.projection for r in done] == ["metrics"]
        assert await _rows(owner, ns) == before
    finally:
        await owner.close()
    # The live projection carries on over the rebuilt tables.
    again = await client.post(f"/api/v1/executions/{ns}/etl?wait=true")
    assert (await _points(client, again.json()["id"]))["total"] == 7


class _RolledBack(Exception):
    """Ends a test's transaction: what it wrote is never seen by another test."""


async def test_aggregates_from_the_hourly_rollup_equal_those_of_every_point(
    db: Database,
) -> None:
    ns = _ns()
    origin = dt.datetime(2024, 3, 1, 5, 17, 3, tzinfo=dt.UTC)
    # 3 days of points, every 7 minutes and 13 seconds, in two tagged series of two tasks.
    points = []
    at, i = origin, 0
    while at < origin + dt.timedelta(days=3):
        task = "a" if i % 3 else "b"
        points.append((task, float(i % 17), {"env": "dev" if i % 2 else "prod"}, at))
        at += dt.timedelta(minutes=7, seconds=13)
        i += 1
    ranges = [
        (origin, origin + dt.timedelta(hours=2, minutes=5)),  # minutes
        (origin + dt.timedelta(minutes=31), origin + dt.timedelta(hours=20, minutes=1)),  # hours
        (origin - dt.timedelta(hours=3), origin + dt.timedelta(days=2, hours=7)),  # days
        (origin + dt.timedelta(hours=1), origin + dt.timedelta(hours=1, days=190)),  # weeks
        (origin - dt.timedelta(days=200), origin + dt.timedelta(days=200)),  # months
        (
            dt.datetime(2024, 3, 2, 0, 0, tzinfo=dt.UTC),
            dt.datetime(2024, 3, 3, 0, 0, tzinfo=dt.UTC),
        ),
    ]
    filters: list[tuple[str | None, list[tuple[str, str]]]] = [
        (None, []),
        ("a", []),
        (None, [("env", "dev")]),
        ("b", [("env", "prod")]),
    ]

    def check(conn: Any) -> None:
        from projections import metrics as model

        groups = []
        with conn.transaction():
            rows = model._Rows()
            for n, (task, value, tags, at) in enumerate(points):
                rows.add(
                    n, 0, "x", ns, "flow", task, f"run{n}", 1, "rows", "counter", value,
                    model._jsonb(tags), at,
                )  # fmt: skip
            # Far beyond any real position: these rows cannot meet another test's.
            rows.columns[0][:] = [2**60 + n for n in rows.columns[0]]
            conn.execute(model._INSERT, rows.columns)
            for start, end in ranges:
                for task_id, tags in filters:
                    group, found = model.aggregate(
                        conn, ns, "flow", "rows", start, end, task_id=task_id, tags=tags
                    )
                    groups.append(group)
                    expected: dict[dt.datetime, list[float]] = {}
                    for task, value, point_tags, at in points:
                        if not start <= at <= end or (task_id and task != task_id):
                            continue
                        if any(point_tags.get(k) != v for k, v in tags):
                            continue
                        key = model.bucket_starts(group, at, at)[0]
                        expected.setdefault(key, []).append(value)
                    assert {b for b, *_ in found} <= set(model.bucket_starts(group, start, end))
                    assert {b: (n, s, lo, hi) for b, n, s, lo, hi in found} == {
                        b: (len(v), sum(v), min(v), max(v)) for b, v in expected.items()
                    }, (start, end, task_id, tags)
            raise _RolledBack(groups)

    with pytest.raises(_RolledBack) as raised:
        await db.run(check)
    assert set(raised.value.args[0]) == {"minute", "hour", "day", "week", "month"}


async def test_a_metric_that_is_not_one_is_skipped_and_the_rest_are_kept(
    db: Database,
) -> None:
    from engine import events as ev
    from engine.store import StoredEvent

    seq = 2**60 + 10**9
    now = dt.datetime.now(dt.UTC)
    event = ev.AttemptSucceeded(
        executionId="no-such-execution",
        taskRunId="run",
        attempt=1,
        metrics=[
            {"name": "gauge", "type": "gauge", "value": 1},
            {"name": "nan", "type": "counter", "value": float("nan")},
            {"name": "text", "type": "counter", "value": "3"},
            {"type": "counter", "value": 3},
            {"name": "huge", "type": "counter", "value": 10**400},
            {"name": "kept", "type": "timer", "value": 0.0015, "tags": ["not", "a", "dict"]},
            {"name": "tagged", "value": 2, "tags": {"n": 1}},
        ],
    )
    stored = StoredEvent(
        seq, "exec:no-such-execution/a:run:1", 1, "AttemptSucceeded", event, {}, now
    )

    def apply(conn: Any) -> list[tuple[Any, ...]]:
        with conn.transaction():
            MetricsProjection().apply([stored], conn)
            found = conn.execute(
                "SELECT idx, name, type, value, tags FROM metrics WHERE seq = %s ORDER BY idx",
                (seq,),
            ).fetchall()
            raise _RolledBack(found)

    with pytest.raises(_RolledBack) as raised:
        await db.run(apply)
    # No claim recorded: no built-in duration either.
    assert raised.value.args[0] == [
        (5, "kept", "timer", 2.0, {}),
        (6, "tagged", "counter", 2.0, {"n": "1"}),
    ]


async def test_purging_an_execution_deletes_its_points_and_keeps_the_hourly_rollup(
    client: httpx.AsyncClient, db: Database, ran: tuple[str, str, dict[str, Any]]
) -> None:
    ns, xid, _ = ran
    before = await _rows(db, ns)
    assert before["metrics"] and before["metric_buckets"]
    assert (await client.delete(f"/api/v1/executions/{xid}")).status_code == 204
    with trio.fail_after(10):
        while await db.fetchall("SELECT 1 FROM metrics WHERE execution_id = %s", (xid,)):
            await trio.sleep(0.05)
    after = await _rows(db, ns)
    assert after["metrics"] == []
    assert after["metric_buckets"] == before["metric_buckets"]
