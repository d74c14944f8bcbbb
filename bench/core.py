"""The core benchmark: W1 (latency of a sequential flow), W2 (a burst of executions) and, beside
them in the same run and on the same database, the raw ceiling of that database.

    python -m bench.core [--quick] [--json [FILE]] [--database-url URL]

Without a URL it starts a throwaway embedded PostgreSQL. The engine runs in this process with
the roles of `tiercel server local` except the web server (executor, worker, projections);
executions are submitted with the same command the API uses. Latencies come from the events'
own `recorded_at` times in the database, so they measure the engine, not this script.
"""

from __future__ import annotations

import argparse
import functools
import json
import platform
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import psycopg
import trio

from engine.commands import create_execution, deploy_flow, wait_for_end
from engine.server import ServerContext, run_server

RETURN = (
    "  - id: {id}\n    type: io.kestra.plugin.core.debug.Return\n    format: '{{{{ task.id }}}}'\n"
)


def _flow(namespace: str, flow_id: str, tasks: int) -> str:
    body = "".join(RETURN.format(id=f"r{i}") for i in range(tasks))
    return f"id: {flow_id}\nnamespace: {namespace}\ntasks:\n{body}"


# --- the ceiling: what the database itself does ------------------------------------------------

CEILING_TABLE = """
CREATE TABLE {name} (
    seq         bigserial PRIMARY KEY,
    stream_id   text COLLATE "C" NOT NULL,
    version     integer NOT NULL,
    type        text NOT NULL,
    data        jsonb NOT NULL,
    meta        jsonb NOT NULL DEFAULT '{{}}'::jsonb,
    command_id  text,
    recorded_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    UNIQUE (stream_id, version)
)
"""
PAYLOAD = json.dumps({"executionId": "x" * 22, "taskRunId": "y" * 22, "state": "SUCCESS"})


def ceiling(url: str, single_rows: int, batches: int) -> dict[str, float]:
    """Single-row INSERT (one commit each) and 100-row-batch INSERT rates, and a round trip."""
    name = f"bench_events_{uuid.uuid4().hex[:8]}"
    sql = f"INSERT INTO {name} (stream_id, version, type, data) VALUES (%s, %s, 'Bench', %s)"
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(CEILING_TABLE.format(name=name))
        try:
            started = time.perf_counter()
            for _ in range(200):
                conn.execute("SELECT 1")
            round_trip = (time.perf_counter() - started) / 200

            started = time.perf_counter()
            for i in range(single_rows):
                conn.execute(sql, (f"s{i}", 0, PAYLOAD))
            single = single_rows / (time.perf_counter() - started)

            started = time.perf_counter()
            for b in range(batches):
                with conn.transaction(), conn.cursor() as cur:
                    cur.executemany(sql, [(f"b{b}", v, PAYLOAD) for v in range(100)])
            batch = batches * 100 / (time.perf_counter() - started)
        finally:
            conn.execute(f"DROP TABLE {name}")
    return {
        "round_trip_ms": round_trip * 1000,
        "single_row_per_s": single,
        "batch_rows_per_s": batch,
    }


# --- the workloads -------------------------------------------------------------------------------


async def _timings(ctx: ServerContext, ids: Sequence[str]) -> list[dict[str, Any]]:
    """Per execution: created and ended times (from the events) and its number of events."""
    rows = await ctx.db.fetchall(
        "SELECT e.stream_id, min(e.recorded_at) AS created,"
        " max(e.recorded_at) FILTER (WHERE e.type = 'ExecutionStateChanged'"
        "   AND e.data->>'state' IN ('SUCCESS', 'WARNING', 'FAILED', 'KILLED')) AS ended"
        " FROM events e WHERE e.stream_id = ANY(%s) GROUP BY e.stream_id",
        ([f"exec:{i}" for i in ids],),
    )
    counts = await ctx.db.fetchall(
        "SELECT split_part(stream_id, '/', 1) AS base, count(*) AS n,"
        " sum(octet_length(data::text) + octet_length(meta::text)) AS bytes FROM events"
        " WHERE split_part(stream_id, '/', 1) = ANY(%s) GROUP BY 1",
        ([f"exec:{i}" for i in ids],),
    )
    per = {r["base"]: r for r in counts}
    return [
        {
            "created": r["created"],
            "ended": r["ended"],
            "events": per[r["stream_id"]]["n"] if r["stream_id"] in per else 0,
            "bytes": int(per[r["stream_id"]]["bytes"]) if r["stream_id"] in per else 0,
        }
        for r in rows
    ]


def _percentile(values: Sequence[float], p: float) -> float:
    ordered = sorted(values)
    k = (len(ordered) - 1) * p
    low, high = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (k - low)


async def w1(ctx: ServerContext, namespace: str, runs: int, tasks: int = 40) -> dict[str, float]:
    """One flow of `tasks` sequential Returns, submit to terminal, `runs` times (median)."""
    await deploy_flow(ctx.store, _flow(namespace, "w1", tasks), actor="bench")
    totals, ids = [], []
    for _ in range(runs):
        started = time.perf_counter()
        execution_id = await create_execution(ctx.store, namespace, "w1", actor="bench")
        state = await wait_for_end(ctx.store, ctx.notifier, execution_id, timeout=600)
        if state.state != "SUCCESS":
            raise RuntimeError(f"W1 execution {execution_id} ended {state.state}")
        totals.append(time.perf_counter() - started)
        ids.append(execution_id)
    timings = await _timings(ctx, ids)
    recorded = [(t["ended"] - t["created"]).total_seconds() for t in timings]
    return {
        "median_ms": statistics.median(recorded) * 1000,
        "median_ms_per_task": statistics.median(recorded) * 1000 / tasks,
        "client_median_ms": statistics.median(totals) * 1000,
        "events_per_execution": statistics.median(t["events"] for t in timings),
        "bytes_per_execution": statistics.median(t["bytes"] for t in timings),
    }


FOREACH_BUDGET = 1_000_000
"""Bytes of events a ForEach of 200 iterations returning 1 KB each may write in all."""


async def w4(ctx: ServerContext, namespace: str, iterations: int = 200) -> dict[str, float]:
    """A ForEach of `iterations` Returns of 1 KB each: the bytes of events it writes."""
    padding = "x" * 1000
    source = (
        f"id: w4\nnamespace: {namespace}\ntasks:\n"
        "  - id: each\n    type: io.kestra.plugin.core.flow.ForEach\n"
        f'    values: "{{{{ range(1, {iterations}) }}}}"\n    tasks:\n'
        "      - id: r\n        type: io.kestra.plugin.core.debug.Return\n"
        f'        format: "{{{{ taskrun.value }}}}{padding}"\n'
    )
    await deploy_flow(ctx.store, source, actor="bench")
    execution_id = await create_execution(ctx.store, namespace, "w4", actor="bench")
    state = await wait_for_end(ctx.store, ctx.notifier, execution_id, timeout=600)
    if state.state != "SUCCESS":
        raise RuntimeError(f"W4 execution {execution_id} ended {state.state}")
    [timing] = await _timings(ctx, [execution_id])
    return {"bytes": timing["bytes"], "events": timing["events"], "iterations": iterations}


async def w2(
    ctx: ServerContext, namespace: str, count: int, submitters: int = 16
) -> dict[str, float]:
    """A burst of `count` executions of a one-task flow, submitted as fast as possible."""
    await deploy_flow(ctx.store, _flow(namespace, "w2", 1), actor="bench")
    ids: list[str] = []
    remaining = iter(range(count))

    async def submit() -> None:
        for _ in remaining:
            ids.append(await create_execution(ctx.store, namespace, "w2", actor="bench"))

    started = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for _ in range(submitters):
            nursery.start_soon(submit)
    submitted = time.perf_counter() - started
    with trio.fail_after(900):
        while True:
            seen = ctx.notifier.generation
            row = await ctx.db.fetchone(
                "SELECT count(*) AS n FROM events WHERE stream_id = ANY(%s)"
                " AND type = 'ExecutionStateChanged' AND data->>'state' = 'SUCCESS'",
                ([f"exec:{i}" for i in ids],),
            )
            if row and row["n"] >= count:
                break
            await ctx.notifier.wait(seen, 0.5)
    timings = await _timings(ctx, ids)
    first = min(t["created"] for t in timings)
    last = max(t["ended"] for t in timings)
    latencies = [(t["ended"] - t["created"]).total_seconds() * 1000 for t in timings]
    return {
        "executions_per_s": count / (last - first).total_seconds(),
        "submitted_per_s": count / submitted,
        "p50_ms": _percentile(latencies, 0.5),
        "p95_ms": _percentile(latencies, 0.95),
        "events_per_execution": statistics.median(t["events"] for t in timings),
        "bytes_per_execution": statistics.median(t["bytes"] for t in timings),
    }


# --- running and reporting ---------------------------------------------------------------------


async def _run(url: str, quick: bool) -> dict[str, Any]:
    namespace = f"bench.run{uuid.uuid4().hex[:8]}"
    async with trio.open_nursery() as nursery:
        ctx = await nursery.start(
            functools.partial(run_server, url, ("executor", "worker", "indexer"))
        )
        base = await trio.to_thread.run_sync(
            ceiling, url, 200 if quick else 2000, 20 if quick else 200
        )
        first = await w1(ctx, namespace, runs=2 if quick else 5)
        burst = await w2(ctx, namespace, count=50 if quick else 1000)
        foreach = await w4(ctx, namespace)
        nursery.cancel_scope.cancel()
    return {"ceiling": base, "w1": first, "w2": burst, "w4": foreach}


def report(results: dict[str, Any]) -> str:
    """One table: each figure beside the baseline measured in the same run."""
    c, a, b = results["ceiling"], results["w1"], results["w2"]
    commit_ms = 1000 / c["single_row_per_s"]
    # If every event of an execution were written at the database's batch rate, in one go:
    exec_ceiling = c["batch_rows_per_s"] / max(b["events_per_execution"], 1)
    rows = [
        ("W1 40 sequential Returns, median", f"{a['median_ms']:.0f} ms", "", ""),
        (
            "W1 per task",
            f"{a['median_ms_per_task']:.2f} ms",
            f"{commit_ms:.2f} ms (one single-row commit)",
            f"{a['median_ms_per_task'] / commit_ms:.1f}x",
        ),
        (
            "W2 burst throughput",
            f"{b['executions_per_s']:.0f} exec/s",
            f"{exec_ceiling:.0f} exec/s ({b['events_per_execution']:.0f} events each at batch rate)",
            f"{b['executions_per_s'] / exec_ceiling:.2f}x",
        ),
        ("W2 submission rate", f"{b['submitted_per_s']:.0f} exec/s", "", ""),
        (
            "Event bytes per execution (W1 / W2)",
            f"{a['bytes_per_execution'] / 1024:.1f} / {b['bytes_per_execution'] / 1024:.1f} KiB",
            "",
            "",
        ),
        (
            f"W4 ForEach of {results['w4']['iterations']} x 1 KB outputs, event bytes",
            f"{results['w4']['bytes'] / 1024:.0f} KiB in {results['w4']['events']} events",
            f"{FOREACH_BUDGET / 1024:.0f} KiB (budget)",
            f"{results['w4']['bytes'] / FOREACH_BUDGET:.2f}x",
        ),
        (
            "W2 latency p50 / p95",
            f"{b['p50_ms']:.0f} / {b['p95_ms']:.0f} ms",
            f"{c['round_trip_ms']:.2f} ms (one round trip)",
            "",
        ),
        ("Ceiling: single-row INSERT", f"{c['single_row_per_s']:.0f} rows/s", "", ""),
        ("Ceiling: 100-row-batch INSERT", f"{c['batch_rows_per_s']:.0f} rows/s", "", ""),
    ]
    widths = [
        max(len(r[i]) for r in rows + [("figure", "value", "baseline", "ratio")]) for i in range(4)
    ]
    lines = [
        "  ".join(
            h.ljust(w)
            for h, w in zip(
                ("figure", "value", "baseline (same run)", "ratio"), widths, strict=True
            )
        ),
        "  ".join("-" * w for w in widths),
    ]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.core", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--database-url", help="use this PostgreSQL instead of an embedded one")
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke test")
    parser.add_argument(
        "--json", nargs="?", const="bench-core.json", metavar="FILE",
        help="also write the results as JSON (default file: bench-core.json)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    embedded = None
    url = args.database_url
    if not url:
        from engine.embedded import EmbeddedPostgres

        embedded = EmbeddedPostgres(Path(tempfile.mkdtemp(prefix="tiercel-bench-")))
        url = embedded.start()
    try:
        from engine.migrate import migrate

        migrate(url)
        results = trio.run(_run, url, args.quick)
    finally:
        if embedded is not None:
            embedded.stop()
    results["meta"] = {
        "quick": args.quick,
        "database": "embedded" if embedded else "external",
        "python": platform.python_version(),
        "machine": platform.machine(),
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    print(report(results))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, default=str) + "\n")
        print(f"\nwritten to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
