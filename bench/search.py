"""Reads at scale: the executions search and the logs of an execution over 1,000,000 executions
and 10,000,000 log lines, and how fast the projections build them.

    python -m bench.search [--executions N] [--quick] [--no-reindex] [--json [FILE]]
                           [--database-url URL]

Without a URL it starts a throwaway embedded PostgreSQL; with one it creates a throwaway
database in that cluster (the URL's role needs CREATEDB) and drops it at the end.

1. Seeds the event log through the engine's own batched append path (`EventStore.append_many`,
   as the runtime role, hash chain and all): per execution the events a one-task flow that logs
   records (ExecutionCreated, ExecutionStateChanged RUNNING, TaskRunCreated, AttemptScheduled,
   AttemptClaimed, AttemptLogged x2, AttemptSucceeded or AttemptFailed, TaskRunStateChanged,
   and the final ExecutionStateChanged; 2% stay RUNNING). Executions overlap as they do in a
   running system: each append holds the start of one wave, the work of the previous one and
   the end of the one before. No read-model row is written directly.
2. Starts a server with the indexer and webserver roles in this process and times the
   projections catching up on that log, in events/s, beside the 100-row-batch INSERT ceiling
   of the same database measured in the same run. Then VACUUM ANALYZE (what autovacuum does
   after a bulk load anyway; done here so the figures do not depend on when it ran).
3. Times each search over HTTP (p50/p95 of `--repeat` requests, page 1 and page 100 of 25
   rows), and the logs of one execution, and prints EXPLAIN (ANALYZE, BUFFERS) of the SQL of
   the slowest.
4. Times the logs search (full text, level, namespace, flow; page 1 of 25 lines) and the logs
   histogram over 30 days, and prints the plan of the slowest of those too.
"""

from __future__ import annotations

import argparse
import datetime as dt
import functools
import json
import platform
import random
import shutil
import sys
import tempfile
import time
import urllib.parse
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import psycopg
import trio
from psycopg import sql

from bench.core import ceiling
from engine import events as ev
from engine.db import Database, runtime_role, runtime_url
from engine.execution import iso
from engine.execution.ids import short_id, task_run_id
from engine.migrate import migrate
from engine.server import run_server
from engine.store import Append, EventStore
from projections import executions as read_model
from projections import logs as logs_model

TARGET_MS = 200.0
"""The p95 every search and the logs of an execution must stay under."""
PAGE_SIZE = 25
DEEP_PAGE = 100
WAVE = 250
"""Executions started per append (each append also carries the two previous waves' events)."""
PASSWORD = "bench-search-admin"

LOG_DAYS = 30
"""The log lines' timestamps span this many days up to now."""
GRAPH_FLOWS = 300
"""Flows deployed with subflow and flow-trigger dependencies, for the namespace graph."""
GRAPH_NAMESPACE = "company.graph"
METRICS_IN_ATTEMPTS = "metrics" in ev.AttemptSucceeded.__struct_fields__
"""Attempts report task metrics (a counter `rows` and a timer `load`) when the events take them."""

TEAMS, PROJECTS = 10, 10
FLOWS = [
    f"{verb}-{k}" for verb in ("ingest", "transform", "report", "sync", "cleanup") for k in (1, 2)
]
STATES = [
    ("SUCCESS", 0.85),
    ("FAILED", 0.08),
    ("WARNING", 0.03),
    ("KILLED", 0.02),
    ("RUNNING", 0.02),
]
ENVS = [("prod", 0.6), ("staging", 0.3), ("dev", 0.1)]
OWNERS = ["alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi", "ivan", "judy"]


# --- seeding -------------------------------------------------------------------------------------


class Seeder:
    """Makes the events of `count` executions, wave by wave, with a fixed random seed."""

    def __init__(self, count: int, lines: int, seed: int = 7, days: int = LOG_DAYS) -> None:
        self.count = count
        self.lines = lines
        self.days = days
        self.rng = random.Random(seed)
        self.states = [s for s, _ in STATES]
        self.state_weights = [w for _, w in STATES]
        self.envs = [e for e, _ in ENVS]
        self.env_weights = [w for _, w in ENVS]
        self.ids: list[str] = []

    def _start(self, i: int) -> tuple[list[Append], dict[str, Any]]:
        rng = self.rng
        xid = short_id("bench-search", str(i))
        namespace = f"company.team{rng.randrange(TEAMS)}.proj{rng.randrange(PROJECTS)}"
        flow_id = rng.choice(FLOWS)
        state = rng.choices(self.states, self.state_weights)[0]
        env = rng.choices(self.envs, self.env_weights)[0]
        labels = [
            {"key": "env", "value": env},
            {"key": "owner", "value": rng.choice(OWNERS)},
            {"key": "system.correlationId", "value": xid},
        ]
        task = {"id": "t1", "type": "io.kestra.plugin.core.log.Log", "message": "hello"}
        run = task_run_id(xid, None, "t1", None)
        self.ids.append(xid)
        created = [
            ev.ExecutionCreated(
                executionId=xid,
                namespace=namespace,
                flowId=flow_id,
                flowRevision=1,
                flow={"id": flow_id, "namespace": namespace, "revision": 1, "tasks": [task]},
                labels=labels,
            ),
            ev.ExecutionStateChanged(executionId=xid, state="RUNNING"),
            ev.TaskRunCreated(executionId=xid, taskRunId=run, taskId="t1"),
            ev.AttemptScheduled(
                executionId=xid,
                taskRunId=run,
                attempt=1,
                taskId="t1",
                taskType=task["type"],
                task=task,
            ),
        ]
        info = {"id": xid, "run": run, "state": state, "env": env, "i": i}
        return [Append(ev.execution_stream(xid), created)], info

    def _work(self, info: dict[str, Any], now: str) -> list[Append]:
        xid, run = info["id"], info["run"]
        half = self.lines // 2
        batches = [half, self.lines - half] if self.lines > 1 else [self.lines]
        events: list[ev.Event] = [
            ev.AttemptClaimed(executionId=xid, taskRunId=run, attempt=1, workerId="bench")
        ]
        n = 0
        for size in batches:
            lines = []
            for _ in range(size):
                level = "ERROR" if info["state"] == "FAILED" and n == self.lines - 1 else "INFO"
                lines.append({"level": level, "message": f"line {n} of {xid}", "timestamp": now})
                n += 1
            events.append(
                ev.AttemptLogged(
                    executionId=xid, taskRunId=run, taskId="t1", attempt=1, lines=lines
                )
            )
        metrics: dict[str, Any] = {}
        if METRICS_IN_ATTEMPTS:
            metrics["metrics"] = [
                {"name": "rows", "type": "counter", "value": float(info["i"] % 1000),
                 "tags": {"env": info["env"]}},
                {"name": "load", "type": "timer", "value": float(50 + info["i"] % 950),
                 "tags": {"env": info["env"]}},
            ]  # fmt: skip
        if info["state"] == "FAILED":
            events.append(
                ev.AttemptFailed(executionId=xid, taskRunId=run, attempt=1, message="no", **metrics)
            )
        elif info["state"] != "RUNNING":
            events.append(ev.AttemptSucceeded(executionId=xid, taskRunId=run, attempt=1, **metrics))
        return [Append(ev.attempt_stream(xid, run, 1), events)]

    def _end(self, info: dict[str, Any]) -> list[Append]:
        if info["state"] == "RUNNING":
            return []
        xid, state = info["id"], info["state"]
        task_state = "FAILED" if state in ("FAILED", "KILLED") else "SUCCESS"
        return [
            Append(
                ev.execution_stream(xid),
                [
                    ev.TaskRunStateChanged(
                        executionId=xid, taskRunId=info["run"], state=task_state
                    ),
                    ev.ExecutionStateChanged(executionId=xid, state=state),
                ],
            )
        ]

    def appends(self) -> Iterator[list[Append]]:
        """One list of appends per round: wave r starts, wave r - 1 works, wave r - 2 ends."""
        waves = (self.count + WAVE - 1) // WAVE
        live: dict[int, list[dict[str, Any]]] = {}
        # The lines are dated over the last `days` days, oldest first (the events themselves
        # are recorded now); the first two hours are left out, so that a histogram of the
        # last `days` days, asked for later in the run, still holds every line.
        span = dt.timedelta(days=self.days) - dt.timedelta(hours=2)
        first = dt.datetime.now(dt.UTC) - span
        for r in range(waves + 2):
            now = iso(first + span * (r / (waves + 2)))
            batch: list[Append] = []
            for info in live.pop(r - 2, []):
                batch += self._end(info)
            for info in live.get(r - 1, []):
                batch += self._work(info, now)
            if r < waves:
                live[r] = []
                for i in range(r * WAVE, min((r + 1) * WAVE, self.count)):
                    appends, info = self._start(i)
                    batch += appends
                    live[r].append(info)
            yield batch


async def seed(url: str, count: int, lines: int) -> dict[str, Any]:
    """Append the events of `count` executions; the append rate and the ids made."""
    db = Database(url, max_size=2)
    store = EventStore(db)
    seeder = Seeder(count, lines)
    events = 0
    began = time.perf_counter()
    try:
        for batch in seeder.appends():
            if batch:
                await store.append_many(batch)
                events += sum(len(a.events) for a in batch)
    finally:
        await db.close()
    elapsed = time.perf_counter() - began
    return {
        "executions": count,
        "events": events,
        "log_lines": count * lines,
        "seconds": elapsed,
        "events_per_s": events / elapsed,
        "ids": seeder.ids,
    }


def graph_flow(i: int, flows: int) -> str:
    """Flow `i` of the dependency graph: it calls the next flow as a subflow (in the next
    namespace), and one in three is started by the end of the flow before it (a Flow
    trigger)."""
    ns = GRAPH_NAMESPACE
    after = (i + 1) % flows
    source = (
        f"id: flow-{i}\nnamespace: {ns}\ntasks:\n"
        "  - id: call\n    type: io.kestra.plugin.core.flow.Subflow\n"
        f"    namespace: {ns}\n    flowId: flow-{after}\n"
    )
    if i % 3 == 0 and i > 0:
        before = i - 1
        source += (
            "triggers:\n  - id: after\n    type: io.kestra.plugin.core.trigger.Flow\n"
            "    conditions:\n      - type: io.kestra.plugin.core.condition.ExecutionFlow\n"
            f"        namespace: {ns}\n"
            f"        flowId: flow-{before}\n"
        )
    return source


async def seed_flows(url: str, flows: int) -> float:
    """Deploy the flows of the dependency graph as the API does; the seconds it took."""
    from engine.commands import deploy_flow

    db = Database(url, max_size=2)
    began = time.perf_counter()
    try:
        store = EventStore(db)
        for i in reversed(range(flows)):  # each subflow exists before its caller
            await deploy_flow(store, graph_flow(i, flows), actor="bench")
    finally:
        await db.close()
    return time.perf_counter() - began


# --- the projections catching up -------------------------------------------------------------


async def catch_up(owner_url: str, ctx: Any, began: float) -> dict[str, Any]:
    """Wait until every projection has read every event of its types; their rates in
    events/s from `began` (when the indexer started)."""
    from projections.runner import all_projections

    targets: dict[str, tuple[int, int]] = {}
    with psycopg.connect(owner_url, autocommit=True) as conn:
        for projection in all_projections():
            name, types = projection.name, getattr(projection, "types", None)
            if not types:
                continue
            row = conn.execute(
                "SELECT coalesce(max(seq), 0), count(*) FROM events WHERE type = ANY(%s)",
                (list(types),),
            ).fetchone()
            assert row is not None
            targets[name] = (int(row[0]), int(row[1]))
    done: dict[str, float] = {}
    while len(done) < len(targets):
        rows = await ctx.db.fetchall(
            "SELECT name, position FROM checkpoints WHERE name = ANY(%s)",
            ([f"projection:{n}" for n in targets],),
        )
        reached = {r["name"].split(":", 1)[1]: int(r["position"]) for r in rows}
        for name, (last, _) in targets.items():
            if name not in done and reached.get(name, 0) >= last:
                done[name] = time.perf_counter() - began
        await trio.sleep(0.2)
    return {
        name: {
            "events": n,
            "seconds": done[name],
            "events_per_s": n / done[name] if done[name] else 0.0,
        }
        for name, (_, n) in targets.items()
    }


def vacuum(owner_url: str) -> None:
    """VACUUM (ANALYZE) of every read-model table."""
    from projections.runner import all_projections

    with psycopg.connect(owner_url, autocommit=True) as conn:
        for projection in all_projections():
            for table in projection.tables:
                conn.execute(sql.SQL("VACUUM (ANALYZE) {}").format(sql.Identifier(table)))


# --- the reads -----------------------------------------------------------------------------------


def searches(owner_url: str, ids: Sequence[str]) -> list[tuple[str, dict[str, Any]]]:
    """Each filter of the search, as query parameters, with values the seeded data has."""
    with psycopg.connect(owner_url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT percentile_disc(0.50) WITHIN GROUP (ORDER BY start_date),"
            " percentile_disc(0.51) WITHIN GROUP (ORDER BY start_date) FROM executions"
        ).fetchone()
    assert row is not None
    start, end = row
    some = ids[len(ids) // 3]
    return [
        ("no filter", {}),
        ("namespace prefix (10%)", {"namespace": "company.team3"}),
        ("namespace leaf (1%)", {"namespace": "company.team3.proj4"}),
        ("namespace + flowId", {"namespace": "company.team3", "flowId": "ingest-1"}),
        ("state FAILED", {"state": "FAILED"}),
        ("states KILLED,RUNNING", {"state": "KILLED,RUNNING"}),
        ("label env:dev", {"labels": "env:dev"}),
        ("labels env:dev + owner:alice", {"labels": ["env:dev", "owner:alice"]}),
        ("label correlationId", {"labels": f"system.correlationId:{some}"}),
        ("date window (1%)", {"startDate": iso(start), "endDate": iso(end)}),
        ("q=ingest", {"q": "ingest"}),
        ("q=team3.proj4", {"q": "team3.proj4"}),
        ("q=<id prefix>", {"q": some[:8]}),
        ("namespace + state + label", {"namespace": "company.team3", "state": "FAILED", "labels": "env:prod"}),
    ]  # fmt: skip


LOG_SEARCH = "/api/v1/logs/search"
LOG_HISTOGRAM = "/api/v1/logs/histogram"


def log_reads(ids: Sequence[str]) -> list[tuple[str, str, dict[str, Any]]]:
    """Each read of the logs read model timed, as (name, path, query parameters)."""
    some = ids[len(ids) // 3]
    month = {"timeRange": "P30D"}
    return [
        ("logs: no filter", LOG_SEARCH, {}),
        ("logs: q=<execution id> (10 lines)", LOG_SEARCH, {"q": some}),
        ("logs: q=line (every line)", LOG_SEARCH, {"q": "line"}),
        ("logs: q=line 7 (10%)", LOG_SEARCH, {"q": "line 7"}),
        ("logs: q=lin (a prefix of every line)", LOG_SEARCH, {"q": "lin"}),
        ("logs: minLevel ERROR (1%)", LOG_SEARCH, {"minLevel": "ERROR"}),
        ("logs: namespace leaf + ERROR", LOG_SEARCH, {"namespace": "company.team3.proj4", "minLevel": "ERROR"}),
        ("logs: namespace + flowId, 1 day", LOG_SEARCH, {"namespace": "company.team3", "flowId": "ingest-1", "timeRange": "P1D"}),
        ("histogram: q=<execution id>", LOG_HISTOGRAM, {"q": some, **month}),
        ("histogram: namespace leaf (1%)", LOG_HISTOGRAM, {"namespace": "company.team3.proj4", **month}),
        ("histogram: minLevel ERROR (1%)", LOG_HISTOGRAM, {"minLevel": "ERROR", **month}),
        ("histogram: every line", LOG_HISTOGRAM, month),
    ]  # fmt: skip


DASHBOARD = """\
id: bench
title: Bench
timeWindow:
  default: P30D
  max: P365D
charts:
  - id: per_state
    type: io.kestra.plugin.core.dashboard.chart.TimeSeries
    chartOptions:
      displayName: Executions per state
      column: date
    data:
      type: io.kestra.plugin.core.dashboard.data.Executions
      columns:
        date:
          field: START_DATE
        state:
          field: STATE
        total:
          agg: COUNT
  - id: ratio
    type: io.kestra.plugin.core.dashboard.chart.KPI
    chartOptions:
      displayName: Success ratio
      numberType: PERCENTAGE
    data:
      type: io.kestra.plugin.core.dashboard.data.ExecutionsKPI
      columns:
        field: ID
        agg: COUNT
      numerator:
        - type: IN
          field: STATE
          values: [SUCCESS]
  - id: logs_per_level
    type: io.kestra.plugin.core.dashboard.chart.Bar
    chartOptions:
      displayName: Log lines per level
      column: level
    data:
      type: io.kestra.plugin.core.dashboard.data.Logs
      columns:
        level:
          field: LEVEL
        total:
          agg: COUNT
  - id: rows_per_flow
    type: io.kestra.plugin.core.dashboard.chart.Table
    chartOptions:
      displayName: Rows per flow
    data:
      type: io.kestra.plugin.core.dashboard.data.Metrics
      columns:
        flow:
          field: FLOW_ID
        rows:
          field: VALUE
          agg: SUM
      where:
        - field: NAME
          type: EQUAL_TO
          value: rows
"""
"""The custom dashboard whose charts are timed (created through the API first)."""
CHARTS = "/api/v1/dashboards/bench/charts"


def other_reads(ids: Sequence[str]) -> list[tuple[str, str, str, dict[str, Any], Any]]:
    """The other reads of the query API timed, as (name, method, path, query parameters,
    JSON body); a route this build lacks (404) is reported as absent."""
    now = dt.datetime.now(dt.UTC)
    month = {
        "startDate": iso(now - dt.timedelta(days=LOG_DAYS)),
        "endDate": iso(now),
    }
    some = ids[len(ids) // 3]
    search = "/api/v1/executions/search"
    flow = "company.team3.proj4/ingest-1"
    return [
        ("executions: OR group + P1D", "GET", search, {"filters[or][0][state][EQUALS]": "FAILED", "filters[or][1][labels][EQUALS][env]": "dev", "timeRange": "P1D", "size": PAGE_SIZE}, None),
        ("executions: sort duration desc", "GET", search, {"sort": "state.duration:desc", "size": PAGE_SIZE}, None),
        ("executions: namespace + sort end", "GET", search, {"namespace": "company.team3", "sort": "state.endDate:desc", "size": PAGE_SIZE}, None),
        ("executions: parentId", "GET", search, {"filters[parentId][EQUALS]": some, "size": PAGE_SIZE}, None),
        ("executions: stats daily, 30 days", "GET", "/api/v1/executions/stats/daily", month, None),
        ("executions: stats daily, namespace", "GET", "/api/v1/executions/stats/daily", {"namespace": "company.team3", **month}, None),
        ("metrics: flow counter sum, 30 days", "GET", f"/api/v1/metrics/aggregates/{flow}/rows", {"aggregation": "sum", **month}, None),
        ("metrics: task timer avg, 30 days", "GET", f"/api/v1/metrics/aggregates/{flow}/t1/load", {"aggregation": "avg", **month}, None),
        ("metrics: task duration max, 30 days", "GET", f"/api/v1/metrics/aggregates/{flow}/t1/duration", {"aggregation": "max", **month}, None),
        ("metrics: counter sum, tag env:dev", "GET", f"/api/v1/metrics/aggregates/{flow}/rows", {"aggregation": "sum", "tags": "env:dev", **month}, None),
        ("executions: Kestra daily stats (POST)", "POST", "/api/v1/stats/executions/daily", None, month),
        ("dashboard: default stats, 30 days", "GET", "/api/v1/dashboards/default/stats", {"timeRange": "P30D"}, None),
        ("dashboard: default stats, namespace", "GET", "/api/v1/dashboards/default/stats", {"timeRange": "P30D", "namespace": "company.team3"}, None),
        ("chart: executions per state per day", "POST", f"{CHARTS}/per_state", None, month),
        ("chart: KPI success ratio", "POST", f"{CHARTS}/ratio", None, month),
        ("chart: log lines per level", "POST", f"{CHARTS}/logs_per_level", None, month),
        ("chart: metric rows sum per flow", "POST", f"{CHARTS}/rows_per_flow", None, month),
        ("namespace graph: every flow of company.graph", "GET", f"/api/v1/namespaces/{GRAPH_NAMESPACE}/dependencies", {}, None),
        ("flow dependencies: expandAll", "GET", f"/api/v1/flows/{GRAPH_NAMESPACE}/flow-3/dependencies", {"expandAll": "true"}, None),
    ]  # fmt: skip


def _percentile(values: Sequence[float], p: float) -> float:
    ordered = sorted(values)
    k = (len(ordered) - 1) * p
    low, high = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (k - low)


class Absent(Exception):
    """The route answers 404 or 405 to its first request: not in this build."""


async def _timed(
    http: httpx.AsyncClient,
    path: str,
    params: Any,
    repeat: int,
    *,
    method: str = "GET",
    body: Any = None,
    optional: bool = False,
) -> dict[str, Any]:
    times: list[float] = []
    answer: Any = None
    for i in range(repeat + 1):
        began = time.perf_counter()
        response = await http.request(method, path, params=params, json=body)
        if optional and i == 0 and response.status_code in (404, 405):
            raise Absent(f"{method} {path}: {response.status_code}")
        elapsed = (time.perf_counter() - began) * 1000
        if response.status_code != 200:
            raise RuntimeError(f"GET {path} {params}: {response.status_code} {response.text}")
        if i:  # the first request warms the connection and the plan cache
            times.append(elapsed)
        answer = response.json()
    return {
        "p50_ms": _percentile(times, 0.5),
        "p95_ms": _percentile(times, 0.95),
        "answer": answer,
    }


async def measure_reads(
    base_url: str, owner_url: str, ids: Sequence[str], repeat: int
) -> dict[str, Any]:
    results: dict[str, Any] = {}
    async with httpx.AsyncClient(base_url=base_url, auth=("admin", PASSWORD), timeout=600) as http:
        for name, params in searches(owner_url, ids):
            entry: dict[str, Any] = {"params": params}
            for label, page in (("page1", 1), ("page100", DEEP_PAGE)):
                timed = await _timed(
                    http,
                    "/api/v1/executions/search",
                    {**params, "page": page, "size": PAGE_SIZE},
                    repeat,
                )
                answer = timed.pop("answer")
                entry[label] = timed
                entry["total"] = answer["total"]
                entry["estimated"] = bool(answer.get("totalIsEstimate", False))
                entry[f"{label}_rows"] = len(answer["results"])
            results[name] = entry
            _progress(f"{name}: {json.dumps({k: v for k, v in entry.items() if k != 'params'})}")
        one = ids[len(ids) // 2]
        timed = await _timed(http, f"/api/v1/logs/{one}", {}, repeat)
        lines = timed.pop("answer")
        results["logs of one execution"] = {"logs": timed, "lines": len(lines), "id": one}
        for name, path, params in log_reads(ids):
            asked = {**params, "size": PAGE_SIZE} if path == LOG_SEARCH else params
            timed = await _timed(http, path, asked, repeat)
            answer = timed.pop("answer")
            results[name] = {
                "logs": timed,
                "lines": answer["total"],
                "path": path,
                "params": params,
            }
            _progress(f"{name}: {answer['total']} lines, {json.dumps(timed)}")
        made = await http.post(
            "/api/v1/dashboards", content=DASHBOARD, headers={"Content-Type": "application/x-yaml"}
        )
        if made.status_code != 200:
            results["dashboard: created"] = {"failed": f"{made.status_code} {made.text[:200]}"}
        for name, method, path, params, body in other_reads(ids):
            entry = {"method": method, "path": path, "params": params, "body": body}
            try:
                timed = await _timed(
                    http, path, params, repeat, method=method, body=body, optional=True
                )
            except Absent as absent:
                results[name] = {**entry, "absent": str(absent)}
                continue
            except RuntimeError as failed:
                results[name] = {**entry, "failed": str(failed)[:300]}
                continue
            entry["size"] = _size(timed.pop("answer"))
            results[name] = {**entry, "other": timed}
            _progress(f"{name}: {entry['size']}, {json.dumps(timed)}")
    return results


def _size(answer: Any) -> str:
    """What an answer holds, in a few words, for the table."""
    if isinstance(answer, dict):
        for key in ("total", "nodes", "aggregations", "results", "data", "buckets"):
            if key in answer:
                value = answer[key]
                return f"{value:,}" if isinstance(value, int) else f"{len(value):,} {key}"
        return f"{len(answer)} keys"
    if isinstance(answer, list):
        return f"{len(answer):,} items"
    return type(answer).__name__


def explain(owner_url: str, params: dict[str, Any], page: int) -> str:
    """EXPLAIN (ANALYZE, BUFFERS) of the page query the API runs for `params` (as admin)."""
    labels: dict[str, str] = {}
    raw_labels = params.get("labels", [])
    for item in [raw_labels] if isinstance(raw_labels, str) else raw_labels:
        key, _, value = item.partition(":")
        labels[key] = value
    states = [s for s in str(params.get("state", "")).split(",") if s]
    search = read_model.Search(
        namespace=params.get("namespace"),
        flow_id=params.get("flowId"),
        states=states,
        start_date=dt.datetime.fromisoformat(params["startDate"].replace("Z", "+00:00"))
        if "startDate" in params
        else None,
        end_date=dt.datetime.fromisoformat(params["endDate"].replace("Z", "+00:00"))
        if "endDate" in params
        else None,
        labels=labels,
        q=params.get("q"),
    )
    with psycopg.connect(runtime_url(owner_url), autocommit=True) as conn:
        where = read_model.prepare(conn, "true", [], search)
        query, query_params = read_model.page_query(
            where, offset=(page - 1) * PAGE_SIZE, size=PAGE_SIZE
        )
        rows = conn.execute(f"EXPLAIN (ANALYZE, BUFFERS) {query}", query_params).fetchall()
    return "\n".join(r[0] for r in rows)


def explain_logs(owner_url: str, path: str, params: dict[str, Any]) -> str:
    """EXPLAIN (ANALYZE, BUFFERS) of the query the API runs for a logs read (as admin)."""
    from api.logs_routes import ORIGIN, bucket_for, read_search

    now = dt.datetime.now(dt.UTC)
    search, _ = read_search(params.items(), now)
    with psycopg.connect(runtime_url(owner_url), autocommit=True) as conn:
        where, where_params, reading = search.condition(conn)
        if reading != logs_model.PLANNED and path == LOG_SEARCH:  # as logs_model.search reads it
            conn.execute("SET enable_bitmapscan = off")
            conn.execute("SET enable_seqscan = off")
        if path == LOG_SEARCH:
            query, values = logs_model.page_sql(where), [*where_params, 0, PAGE_SIZE]
        else:
            start, end = search.start or now, search.end or now
            bucket = bucket_for(end - start)
            query, values = logs_model.histogram_sql(where), [bucket, ORIGIN, *where_params]
            counted = logs_model.counted_histogram_sql(
                search, "true", [], start=start, end=end, bucket=bucket, origin=ORIGIN
            )
            if counted is not None:  # as the route reads it
                query, values = counted
        rows = conn.execute(f"EXPLAIN (ANALYZE, BUFFERS) {query}", values).fetchall()
    return "\n".join(r[0] for r in rows)


# --- running and reporting -----------------------------------------------------------------------


@contextmanager
def _throwaway_database(url: str | None) -> Iterator[str]:
    """A new database: in a temporary embedded PostgreSQL, or in the cluster of `url`."""
    if url is None:
        from engine.embedded import EmbeddedPostgres

        folder = Path(tempfile.mkdtemp(prefix="tiercel-bench-search-"))
        embedded = EmbeddedPostgres(folder)
        try:
            yield embedded.start()
        finally:
            embedded.stop()
            shutil.rmtree(folder, ignore_errors=True)  # a million executions take 13 GB
        return
    name = f"bench_search_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    info = psycopg.conninfo.conninfo_to_dict(url)
    info["dbname"] = name
    try:
        yield psycopg.conninfo.make_conninfo(**info)
    finally:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))
            conn.execute(
                sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(runtime_role(name)))
            )


async def _run(
    owner_url: str, executions: int, lines: int, repeat: int, flows: int, reindex: bool
) -> dict[str, Any]:
    seeded = await seed(runtime_url(owner_url), executions, lines)
    _progress(f"seeded: {json.dumps({k: v for k, v in seeded.items() if k != 'ids'})}")
    seeded["flows"] = flows
    seeded["flows_seconds"] = await seed_flows(runtime_url(owner_url), flows)
    ids = seeded.pop("ids")
    with tempfile.TemporaryDirectory(prefix="tiercel-bench-search-data-") as data_dir:
        return await _serve_and_read(owner_url, Path(data_dir), seeded, ids, repeat, reindex)


async def _serve_and_read(
    owner_url: str,
    data_dir: Path,
    seeded: dict[str, Any],
    ids: Sequence[str],
    repeat: int,
    reindex: bool,
) -> dict[str, Any]:
    async with trio.open_nursery() as nursery:
        began = time.perf_counter()
        ctx = await nursery.start(
            functools.partial(
                run_server,
                owner_url,
                ("indexer", "webserver"),
                host="127.0.0.1",
                port=0,
                data_dir=data_dir,
                admin_password=PASSWORD,
            )
        )
        projections = await catch_up(owner_url, ctx, began)
        _progress(f"caught up: {json.dumps(projections)}")
        await trio.to_thread.run_sync(vacuum, owner_url)
        _progress("vacuumed")
        reads = await measure_reads(ctx.extra["urls"][0], owner_url, ids, repeat)
        rebuilt: dict[str, Any] | None = None
        if reindex:
            try:
                rebuilt = await time_reindex(owner_url, ctx)
            except Exception as exc:  # the reads are reported all the same
                rebuilt = {"failed": repr(exc)}
            _progress(f"reindex: {json.dumps(rebuilt)}")
        nursery.cancel_scope.cancel()
    return {"seed": seeded, "projections": projections, "reads": reads, "reindex": rebuilt}


def _progress(text: str) -> None:
    """A line on stderr as the bench goes (a long run's figures, before its table)."""
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


async def time_reindex(owner_url: str, ctx: Any) -> dict[str, Any]:
    """`sys reindex` of every projection while the server runs: seconds per projection."""
    from projections import reindex as rebuild
    from projections.runner import all_projections

    db = Database(owner_url, max_size=2)
    began = time.perf_counter()
    try:
        done = await rebuild.reindex(db, all_projections(), storage=ctx.storage)
    finally:
        await db.close()
    return {
        "seconds": time.perf_counter() - began,
        "projections": {r.projection: r.seconds for r in done},
    }


def run(
    url: str | None,
    executions: int,
    lines: int,
    repeat: int,
    quick: bool,
    reindex: bool = True,
) -> dict[str, Any]:
    """Every figure of the bench, as a dict (see `report`)."""
    with _throwaway_database(url) as owner_url:
        migrate(owner_url)
        base = ceiling(owner_url, 200 if quick else 2000, 20 if quick else 200)
        _progress(f"ceiling: {json.dumps(base)}")
        flows = 30 if quick else GRAPH_FLOWS
        results = trio.run(_run, owner_url, executions, lines, repeat, flows, reindex)
        results["ceiling"] = base
        logged = {k: v for k, v in results["reads"].items() if "logs" in v and "path" in v}
        slowest_log = max(logged, key=lambda name: logged[name]["logs"]["p95_ms"])
        results["slowest_logs"] = {
            "read": slowest_log,
            "plan": explain_logs(
                owner_url, logged[slowest_log]["path"], logged[slowest_log]["params"]
            ),
        }
        searched = {k: v for k, v in results["reads"].items() if "page1" in v}
        slowest_name, slowest_page = max(
            ((name, page) for name in searched for page in ("page1", "page100")),
            key=lambda np: searched[np[0]][np[1]]["p95_ms"],
        )
        results["slowest"] = {
            "search": slowest_name,
            "page": slowest_page,
            "plan": explain(
                owner_url,
                searched[slowest_name]["params"],
                1 if slowest_page == "page1" else DEEP_PAGE,
            ),
        }
        others = {k: v for k, v in results["reads"].items() if "other" in v}
        if others:
            slowest_other = max(others, key=lambda name: others[name]["other"]["p95_ms"])
            results["slowest_other"] = {
                "read": slowest_other,
                "plan": explain_other(owner_url, others[slowest_other]),
            }
    return results


class _Recorder:
    """A connection that records the statements run on it (and runs them)."""

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self._conn = conn
        self.statements: list[tuple[Any, Any]] = []

    def execute(self, query: Any, params: Any = None, **kwargs: Any) -> Any:
        self.statements.append((query, params))
        return self._conn.execute(query, params, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)


def explain_other(owner_url: str, entry: dict[str, Any]) -> str:
    """EXPLAIN (ANALYZE, BUFFERS) of the slowest statement a metrics aggregate runs (the
    statements of the other routes are not reproduced here)."""
    path: str = entry["path"]
    if not path.startswith("/api/v1/metrics/aggregates/"):
        return f"(plan not reproduced for {path})"
    from projections import metrics as metrics_model

    parts = path.removeprefix("/api/v1/metrics/aggregates/").split("/")
    namespace, flow_id, metric = parts[0], parts[1], parts[-1]
    task_id = parts[2] if len(parts) == 4 else None
    params = entry["params"]
    start = dt.datetime.fromisoformat(params["startDate"].replace("Z", "+00:00"))
    end = dt.datetime.fromisoformat(params["endDate"].replace("Z", "+00:00"))
    tags = [tuple(t.split(":", 1)) for t in [params["tags"]]] if "tags" in params else []
    with psycopg.connect(runtime_url(owner_url), autocommit=True) as conn:
        recorder = _Recorder(conn)
        metrics_model.aggregate(
            recorder,  # type: ignore[arg-type]
            namespace, flow_id, metric, start, end, task_id=task_id, tags=tags,
        )  # fmt: skip
        plans = []
        for query, values in recorder.statements:
            text = query.as_string(conn) if isinstance(query, sql.Composable) else str(query)
            rows = conn.execute(f"EXPLAIN (ANALYZE, BUFFERS) {text}", values).fetchall()
            plans.append("\n".join(r[0] for r in rows))
    return "\n\n".join(plans) or "(no statement)"


def report(results: dict[str, Any]) -> str:
    """The seeding and catch-up rates beside the ceiling, then one line per read."""
    s, p, c = results["seed"], results["projections"], results["ceiling"]
    out = [
        f"Seeded {s['executions']:,} executions, {s['log_lines']:,} log lines:"
        f" {s['events']:,} events appended in {s['seconds']:.0f} s"
        f" ({s['events_per_s']:,.0f} events/s through EventStore.append_many)",
        f"Ceiling (same database, same run): {c['batch_rows_per_s']:,.0f} rows/s in 100-row"
        f" INSERT batches, {c['single_row_per_s']:,.0f} single-row commits/s",
    ]
    if p:
        slowest = max(fig["seconds"] for fig in p.values())
        events = sum(fig["events"] for fig in p.values())
        out.append(
            f"Every projection caught up ({len(p)} running together): {events:,} events applied"
            f" in {slowest:.0f} s = {events / slowest if slowest else 0:,.0f} events/s"
            f" ({events / slowest / c['batch_rows_per_s'] if slowest else 0:.2f}x the batch"
            " INSERT ceiling)"
        )
    if "flows" in s:
        out.append(
            f"Deployed {s['flows']:,} flows with subflow and Flow-trigger dependencies"
            f" in {s['flows_seconds']:.1f} s (commands.deploy_flow)"
        )
    for name, fig in p.items():
        out.append(
            f"Projection {name} caught up: {fig['events']:,} events in {fig['seconds']:.0f} s"
            f" = {fig['events_per_s']:,.0f} events/s"
            f" ({fig['events_per_s'] / c['batch_rows_per_s']:.2f}x the batch INSERT ceiling)"
        )
    out.append("")
    header = ("read", "total", "page 1 p50/p95", f"page {DEEP_PAGE} p50/p95", "target p95")
    rows = [header]
    for name, entry in results["reads"].items():
        if "absent" in entry or "failed" in entry:
            why = "absent in this build" if "absent" in entry else "failed: " + entry["failed"]
            rows.append((name, why[:60], "", "", "not timed"))
            continue
        if "other" in entry:
            t = entry["other"]
            rows.append(
                (
                    name,
                    entry["size"],
                    f"{t['p50_ms']:.1f} / {t['p95_ms']:.1f} ms",
                    "",
                    _verdict(t["p95_ms"]),
                )
            )
            continue
        if "logs" in entry:
            t = entry["logs"]
            rows.append(
                (
                    name,
                    f"{entry['lines']:,} lines",
                    f"{t['p50_ms']:.1f} / {t['p95_ms']:.1f} ms",
                    "",
                    _verdict(t["p95_ms"]),
                )
            )
            continue
        total = f"{entry['total']:,}" + (" (estimate)" if entry["estimated"] else "")
        one, deep = entry["page1"], entry["page100"]
        rows.append(
            (
                name,
                total,
                f"{one['p50_ms']:.1f} / {one['p95_ms']:.1f} ms",
                f"{deep['p50_ms']:.1f} / {deep['p95_ms']:.1f} ms",
                _verdict(max(one["p95_ms"], deep["p95_ms"])),
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    out.append("  ".join(v.ljust(w) for v, w in zip(rows[0], widths, strict=True)).rstrip())
    out.append("  ".join("-" * w for w in widths))
    out += [
        "  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip() for r in rows[1:]
    ]
    rebuilt = results.get("reindex")
    if rebuilt and "failed" in rebuilt:
        out += ["", f"sys reindex of every projection failed: {rebuilt['failed']}"]
    elif rebuilt:
        each = ", ".join(f"{n} {sec:.0f} s" for n, sec in rebuilt["projections"].items())
        out += ["", f"sys reindex of every projection: {rebuilt['seconds']:.0f} s ({each})"]
    else:
        out += ["", "sys reindex of every projection: not timed in this run (--no-reindex)"]
    slow = results["slowest"]
    out += [
        "",
        f"Plan of the slowest: {slow['search']}, {slow['page']}"
        f" ({urllib.parse.urlencode(results['reads'][slow['search']]['params'], doseq=True)})",
        slow["plan"],
    ]
    slow_logs = results.get("slowest_logs")
    if slow_logs:
        entry = results["reads"][slow_logs["read"]]
        out += [
            "",
            f"Plan of the slowest logs read: {slow_logs['read']}"
            f" ({entry['path']}?{urllib.parse.urlencode(entry['params'])})",
            slow_logs["plan"],
        ]
    slow_other = results.get("slowest_other")
    if slow_other:
        entry = results["reads"][slow_other["read"]]
        out += [
            "",
            f"Plan of the slowest other read: {slow_other['read']} ({entry['method']}"
            f" {entry['path']}?{urllib.parse.urlencode(entry['params'] or {})})",
            slow_other["plan"],
        ]
    return "\n".join(out)


def _verdict(p95: float) -> str:
    return f"< {TARGET_MS:.0f} ms " + ("ok" if p95 < TARGET_MS else "MISSED")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.search", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--database-url", help="create the throwaway database in this cluster")
    parser.add_argument("--quick", action="store_true", help="1,000 executions, for a smoke test")
    parser.add_argument(
        "--executions", type=int, default=None, help="executions to seed (1,000,000)"
    )
    parser.add_argument(
        "--log-lines", type=int, default=None, metavar="N",
        help="log lines in all, spread evenly over the executions (10 per execution)",
    )  # fmt: skip
    parser.add_argument("--repeat", type=int, default=None, help="requests per read (20)")
    parser.add_argument(
        "--no-reindex", action="store_true",
        help="skip timing `sys reindex` of every projection (the longest part of a full run)",
    )  # fmt: skip
    parser.add_argument(
        "--json", nargs="?", const="bench-search.json", metavar="FILE",
        help="also write the results as JSON (default file: bench-search.json)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    executions = args.executions or (1_000 if args.quick else 1_000_000)
    repeat = args.repeat or (2 if args.quick else 20)
    per_execution = max(1, round((args.log_lines or 10 * executions) / executions))
    results = run(
        args.database_url, executions, per_execution, repeat, args.quick, not args.no_reindex
    )
    results["meta"] = {
        "quick": args.quick,
        "executions": executions,
        "repeat": repeat,
        "database": "external" if args.database_url else "embedded",
        "python": platform.python_version(),
        "machine": platform.machine(),
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    print(report(results))
    if args.json:
        text = json.dumps(results, indent=2, default=str)
        Path(args.json).write_text(text + "\n")
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
