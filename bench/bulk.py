"""Bulk replay while live executions run: replays per second, and the live load's latency with
and without the bulk job, in one table.

    python -m bench.bulk [--count 10000] [--live 100] [--rates 100,max] [--database-url URL]

Without a URL it starts a throwaway embedded PostgreSQL. The engine runs in this process with
the roles executor (which runs bulk jobs), worker and indexer, as in bench/core.py. It makes
`--count` FAILED executions (one failing task each), then measures:

1. the live load alone: one-task executions submitted at a steady `--live` per second (W2's
   flow, paced instead of in a burst) for `--baseline` seconds, their latency (created to
   ended, from the events' own times) as p50 and p95;
2. for each rate of `--rates` (items per second; `max` is the runner's ceiling), a bulk replay
   job of every failed execution (chosen by ids, as a query resolves to) submitted while the
   same live load runs, until the job ends: the job's replays per second (its first to its last
   recorded outcome), how long until every replayed execution ended, and the live load's p50
   and p95 meanwhile.

The ceiling of the same database (single-row commits, 100-row batches) is printed beside them.
"""

from __future__ import annotations

import argparse
import functools
import json
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import trio

from bench.core import (
    ROLES,
    Observer,
    Phase,
    _percentile,
    _sequential_flow,
    _timings,
    ceiling,
)
from engine import bulk
from engine.commands import create_execution, deploy_flow
from engine.server import run_server

MAX = bulk.MAX_RATE


def _progress(message: str) -> None:
    print(f"[bulk bench] {message}", file=sys.stderr, flush=True)


def _failing_flow(namespace: str) -> str:
    return (
        f"id: broken\nnamespace: {namespace}\ntasks:\n"
        "  - id: boom\n    type: io.kestra.plugin.core.execution.Fail\n    errorMessage: boom\n"
    )


async def _burst(phase: Phase, namespace: str, flow_id: str, count: int) -> list[str]:
    ids: list[str] = []
    remaining = iter(range(count))

    async def submit() -> None:
        for _ in remaining:
            ids.append(await create_execution(phase.ctx.store, namespace, flow_id, actor="bench"))

    async with trio.open_nursery() as nursery:
        for _ in range(16):
            nursery.start_soon(submit)
    await phase.wait_ended(ids, every=0.2)
    return ids


async def live_load(
    phase: Phase, namespace: str, rate: float, until: Callable[[], Awaitable[bool]]
) -> dict[str, Any]:
    """Submit one-task executions at `rate` per second until `until()` says stop; their
    latencies once all ended."""
    ids: list[str] = []
    started = time.perf_counter()

    async def one() -> None:
        ids.append(await create_execution(phase.ctx.store, namespace, "live", actor="bench"))

    async with trio.open_nursery() as nursery:
        next_at = trio.current_time()
        checked = next_at
        while True:
            now = trio.current_time()
            if now - checked >= 0.5:
                checked = now
                if await until():
                    break
            nursery.start_soon(one)
            next_at += 1.0 / rate
            await trio.sleep_until(next_at)
    seconds = time.perf_counter() - started
    await phase.wait_ended(ids, every=0.2)
    timings = await _timings(phase, ids)
    latencies = [(t["ended"] - t["created"]).total_seconds() * 1000 for t in timings]
    return {
        "executions": len(ids),
        "seconds": seconds,
        "submitted_per_s": len(ids) / seconds,
        "p50_ms": _percentile(latencies, 0.5),
        "p95_ms": _percentile(latencies, 0.95),
    }


async def bulk_phase(
    phase: Phase, namespace: str, origins: Sequence[str], rate: float, live_rate: float
) -> dict[str, Any]:
    """A bulk replay of `origins` at `rate` while the live load runs; both measured."""
    store = phase.ctx.store
    job, _ = await bulk.submit(
        store,
        action="replay",
        selection={"ids": len(origins)},
        item_ids=origins,
        params={},
        actor="bench",
        rate=rate,
    )

    async def ended() -> bool:
        return (await bulk.load_job(store, job.id)).state == bulk.SUCCESS

    live = await live_load(phase, namespace, live_rate, ended)
    history = await store.read_stream(f"bulk:{job.id}")
    done = [e for e in history if e.type == "BulkItemsDone"]
    submitted = history[0].recorded_at
    last = done[-1].recorded_at
    final = await bulk.load_job(store, job.id)
    new_ids = [v for v in final.ok.values() if v]
    await phase.wait_ended(new_ids, every=0.2)
    timings = await _timings(phase, new_ids)
    all_ended = max(t["ended"] for t in timings)
    seconds = (last - submitted).total_seconds()
    return {
        "rate": rate,
        "items": final.total,
        "failed": len(final.failed),
        "job_seconds": seconds,
        "replays_per_s": final.total / seconds,
        "replayed_ended_per_s": final.total / (all_ended - submitted).total_seconds(),
        "live": live,
    }


async def _run(url: str, args: argparse.Namespace) -> dict[str, Any]:
    namespace = f"bench.bulk{uuid.uuid4().hex[:8]}"
    results: dict[str, Any] = {"count": args.count, "live_rate": args.live}
    _progress("the database's ceiling")
    results["ceiling"] = await trio.to_thread.run_sync(ceiling, url, 2000, 200)
    observer = Observer(url)
    try:
        async with trio.open_nursery() as nursery:
            ctx = await nursery.start(functools.partial(run_server, url, ROLES))
            phase = Phase(ctx, observer)
            await deploy_flow(ctx.store, _failing_flow(namespace), actor="bench")
            await deploy_flow(ctx.store, _sequential_flow(namespace, "live", 1), actor="bench")
            _progress(f"{args.count:,} failed executions")
            started = time.perf_counter()
            origins = await _burst(phase, namespace, "broken", args.count)
            results["setup_s"] = time.perf_counter() - started
            _progress(f"the live load alone: {args.live:g}/s for {args.baseline:g} s")
            deadline = trio.current_time() + args.baseline

            async def baseline_over() -> bool:
                return trio.current_time() >= deadline

            results["baseline"] = await live_load(phase, namespace, args.live, baseline_over)
            results["bulk"] = []
            for rate in args.rates:
                label = "max" if rate >= MAX else f"{rate:g}/s"
                _progress(f"bulk replay of {args.count:,} at {label}, with the live load")
                results["bulk"].append(await bulk_phase(phase, namespace, origins, rate, args.live))
            nursery.cancel_scope.cancel()
    finally:
        observer.close()
    return results


def report(results: dict[str, Any]) -> str:
    """The table of one run."""
    c = results["ceiling"]
    base = results["baseline"]
    rows = [
        ("live load alone", "-", "-", f"{base['p50_ms']:,.0f}", f"{base['p95_ms']:,.0f}"),
    ]
    for b in results["bulk"]:
        rate = "max" if b["rate"] >= MAX else f"{b['rate']:g}/s"
        rows.append(
            (
                f"live + bulk replay at {rate}",
                f"{b['replays_per_s']:,.0f}",
                f"{b['replayed_ended_per_s']:,.0f}",
                f"{b['live']['p50_ms']:,.0f}",
                f"{b['live']['p95_ms']:,.0f}",
            )
        )
    head = ("", "replays/s", "replayed ended/s", "live p50 ms", "live p95 ms")
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(5)]
    lines = [
        f"Bulk replay of {results['count']:,} FAILED executions; live load: one-task executions "
        f"at {results['live_rate']:g}/s",
        "  ".join(h.ljust(w) for h, w in zip(head, widths, strict=True)),
    ]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)) for r in rows]
    lines.append(
        f"ceiling of this database: {c['single_row_per_s']:,.0f} single-row commits/s, "
        f"{c['batch_rows_per_s']:,.0f} rows/s in 100-row batches, round trip "
        f"{c['round_trip_ms']:.2f} ms; making the {results['count']:,} failed executions took "
        f"{results['setup_s']:.0f} s"
    )
    return "\n".join(lines)


def _rates(text: str) -> list[float]:
    return [MAX if r.strip() == "max" else float(r) for r in text.split(",") if r.strip()]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.bulk", description=(__doc__ or "").split("\n")[0]
    )
    parser.add_argument("--database-url", help="use this PostgreSQL instead of an embedded one")
    parser.add_argument("--count", type=int, default=10_000, help="failed executions to replay")
    parser.add_argument("--live", type=float, default=100.0, help="live executions per second")
    parser.add_argument("--baseline", type=float, default=20.0, help="seconds of live load alone")
    parser.add_argument(
        "--rates", type=_rates, default=[bulk.DEFAULT_RATE, MAX],
        help=f"bulk rates to measure, items/s or max (default {bulk.DEFAULT_RATE:g},max)",
    )  # fmt: skip
    parser.add_argument(
        "--concurrency", type=int, default=bulk.CONCURRENCY,
        help=f"items a runner works at once (default {bulk.CONCURRENCY})",
    )  # fmt: skip
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON to FILE")
    args = parser.parse_args(argv)
    bulk.CONCURRENCY = args.concurrency
    embedded = None
    url = args.database_url
    if not url:
        from engine.embedded import EmbeddedPostgres

        embedded = EmbeddedPostgres(Path(tempfile.mkdtemp(prefix="tiercel-bench-")))
        url = embedded.start()
    try:
        from engine.migrate import migrate

        migrate(url)
        results = trio.run(_run, url, args)
    finally:
        if embedded is not None:
            embedded.stop()
            shutil.rmtree(embedded.data_dir, ignore_errors=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, default=str) + "\n")
    print(report(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
