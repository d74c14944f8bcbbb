"""The cost of the hash chain: the event store's append rate with the chain and without it, in
the same run, on the same database, beside that database's raw insert ceiling.

    python -m bench.chain [--quick] [--json [FILE]] [--database-url URL]

Without a URL it starts a throwaway embedded PostgreSQL; with one it creates a throwaway
database in that cluster (the URL's role needs CREATEDB) and drops it at the end. Appends go
through `EventStore`, as the engine's do, as the runtime role. "Without the chain" is the same
table with its chain trigger disabled, so the difference is the trigger's work alone (reading the
previous row's hash, sha256 over the row's canonical text). Modes alternate round by round, so a
machine that slows down during the run weighs on both alike; each figure is the median of the
rounds. The rate of `sys verify --chain` (rows recomputed per second) is measured too.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
import trio
from psycopg import sql

from bench.core import ceiling
from engine import events as ev
from engine.db import Database, runtime_role, runtime_url
from engine.migrate import migrate
from engine.store import Append, EventStore
from engine.verify import verify_chain

BATCH = 100
"""Events per batched append (10 streams of 10, as the executor's group commits look)."""


def _event(i: int) -> ev.WorkerHeartbeat:
    return ev.WorkerHeartbeat(workerId=f"bench-{i % 7}", hostname=f"host-{i}")


async def _single(store: EventStore, count: int) -> float:
    """Appends per second, one event and one commit each."""
    run = uuid.uuid4().hex[:8]
    started = time.perf_counter()
    for i in range(count):
        await store.append(f"bench:{run}:{i % 50}", [_event(i)])
    return count / (time.perf_counter() - started)


async def _batched(store: EventStore, batches: int) -> float:
    """Events per second, `BATCH` events over 10 streams per append."""
    run = uuid.uuid4().hex[:8]
    started = time.perf_counter()
    for b in range(batches):
        await store.append_many(
            [
                Append(f"bench:{run}:{b}:{s}", [_event(b * BATCH + s * 10 + k) for k in range(10)])
                for s in range(10)
            ]
        )
    return batches * BATCH / (time.perf_counter() - started)


def _set_chain(owner_url: str, on: bool) -> None:
    with psycopg.connect(owner_url, autocommit=True) as conn:
        if on:
            conn.execute("ALTER TABLE events ENABLE TRIGGER events_chain")
        else:
            conn.execute("ALTER TABLE events DISABLE TRIGGER events_chain")
            conn.execute("ALTER TABLE events ALTER COLUMN hash DROP NOT NULL")


async def _measure(
    owner_url: str, url: str, single: int, batches: int, rounds: int
) -> dict[str, Any]:
    figures: dict[str, dict[str, list[float]]] = {
        mode: {"single": [], "batched": []} for mode in ("chain", "plain")
    }
    db = Database(url)
    store = EventStore(db)
    try:
        await _single(store, 20)  # warm the pool and the plans
        for _ in range(rounds):
            for mode in ("chain", "plain"):
                await trio.to_thread.run_sync(_set_chain, owner_url, mode == "chain")
                figures[mode]["single"].append(await _single(store, single))
                figures[mode]["batched"].append(await _batched(store, batches))
    finally:
        await db.close()
        await trio.to_thread.run_sync(_set_chain, owner_url, True)
    return {
        mode: {name: statistics.median(values) for name, values in per.items()}
        for mode, per in figures.items()
    }


def _verify_rate(owner_url: str) -> dict[str, float]:
    with psycopg.connect(owner_url, autocommit=True) as conn:
        started = time.perf_counter()
        report = verify_chain(conn, max_breaks=0)
        elapsed = time.perf_counter() - started
    return {"rows": report.rows, "rows_per_s": report.rows / elapsed}


@contextmanager
def _throwaway_database(url: str | None) -> Iterator[str]:
    """A new database: in a temporary embedded PostgreSQL, or in the cluster of `url`."""
    if url is None:
        from engine.embedded import EmbeddedPostgres

        embedded = EmbeddedPostgres(Path(tempfile.mkdtemp(prefix="tiercel-bench-chain-")))
        try:
            yield embedded.start()
        finally:
            embedded.stop()
        return
    name = f"bench_chain_{uuid.uuid4().hex[:8]}"
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


def run(url: str | None, quick: bool) -> dict[str, Any]:
    """Every figure of the bench, as a dict (see `report`)."""
    single, batches, rounds = (50, 5, 2) if quick else (300, 30, 7)
    with _throwaway_database(url) as owner_url:
        migrate(owner_url)
        base = ceiling(owner_url, 200 if quick else 2000, 20 if quick else 200)
        appends = trio.run(_measure, owner_url, runtime_url(owner_url), single, batches, rounds)
        verify = _verify_rate(owner_url)
    return {"ceiling": base, "appends": appends, "verify": verify}


def report(results: dict[str, Any]) -> str:
    """One table: each rate with the chain beside the same rate without it."""
    c, a, v = results["ceiling"], results["appends"], results["verify"]
    chain, plain = a["chain"], a["plain"]

    def cost(name: str, per: int) -> str:
        extra_us = (1 / chain[name] - 1 / plain[name]) * 1e6 / per
        return f"{chain[name] / plain[name]:.2f}x ({extra_us:+.1f} µs per event)"

    rows = [
        ("figure", "with chain", "without chain (same run)", "ratio"),
        (
            "appends/s, 1 event, 1 commit each",
            f"{chain['single']:.0f}",
            f"{plain['single']:.0f}",
            cost("single", 1),
        ),
        (
            f"events/s, appends of {BATCH} over 10 streams",
            f"{chain['batched']:.0f}",
            f"{plain['batched']:.0f}",
            cost("batched", 1),
        ),
        (
            f"appends/s, appends of {BATCH} over 10 streams",
            f"{chain['batched'] / BATCH:.0f}",
            f"{plain['batched'] / BATCH:.0f}",
            "",
        ),
        ("ceiling: single-row INSERT rows/s", f"{c['single_row_per_s']:.0f}", "", ""),
        ("ceiling: 100-row-batch INSERT rows/s", f"{c['batch_rows_per_s']:.0f}", "", ""),
        ("sys verify --chain rows/s", f"{v['rows_per_s']:.0f}", f"({v['rows']:.0f} rows)", ""),
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = ["  ".join(v.ljust(w) for v, w in zip(rows[0], widths, strict=True)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    lines += [
        "  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip() for r in rows[1:]
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.chain", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--database-url", help="create the throwaway database in this cluster")
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke test")
    parser.add_argument(
        "--json", nargs="?", const="bench-chain.json", metavar="FILE",
        help="also write the results as JSON (default file: bench-chain.json)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    results = run(args.database_url, args.quick)
    results["meta"] = {
        "quick": args.quick,
        "database": "external" if args.database_url else "embedded",
        "python": platform.python_version(),
        "machine": platform.machine(),
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    print(report(results))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
        print(f"\nwritten to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
