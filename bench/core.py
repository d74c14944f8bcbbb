"""The core benchmark: W1 to W4 beside the ceiling of the same database, each against its target.

    python -m bench.core [--quick] [--json [FILE]] [--peers] [--database-url URL]

Without a URL it starts a throwaway embedded PostgreSQL. The engine runs in this process with
the roles of `tiercel server local` except the web server (executor, worker, projections);
executions are submitted with the same command the API uses. Latencies come from the events'
own `recorded_at` times in the database, so they measure the engine, not this script.

Each workload runs in its own lifetime of the engine, so that PostgreSQL can say what it cost:
a backend reports its counters when it exits, so once the engine's connections are closed,
`pg_stat_database.xact_commit` (read from another database of the same server, which costs the
measured one nothing) holds every transaction of that lifetime. The bench subtracts its own,
which it counts, and an idle lifetime of the engine as a baseline. Notifications are counted by
a connection LISTENing on the engine's channel from inside an open transaction, so PostgreSQL
holds them until the end of the lifetime and delivers them at once (an idle listener would
spend a transaction of its own on each delivery).
"""

from __future__ import annotations

import argparse
import functools
import json
import platform
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import psycopg
import trio
from psycopg.conninfo import make_conninfo

from bench.peers import Prefect, Unavailable
from engine.commands import create_execution, deploy_flow
from engine.plugin import TERMINAL_STATES
from engine.server import ServerContext, run_server
from engine.store import CHANNEL

T = TypeVar("T")

ROLES = ("executor", "worker", "indexer")
RETURN = "{indent}- id: {id}\n{indent}  type: io.kestra.plugin.core.debug.Return\n{indent}  format: '{{{{ task.id }}}}'\n"  # noqa: E501

# The targets of the issue "Fast: 6 ms per task, 1,000 executions a second".
W1_TARGET_MS = 250.0
"""One flow of 40 sequential Returns, submit to terminal."""
W1_TASK_TARGET_MS = 6.0
W2_TARGET_PER_S = 1000.0
W2_P95_TARGET_MS = 1000.0
"""At a burst of 1,000."""
W2_FLAT = 0.9
"""Throughput at the largest burst over the smallest: "flat" read as within 10%."""
W3_TARGET_MS = 500.0
"""A Parallel of 100 Returns, then one Return."""
FOREACH_BUDGET = 1_000_000
"""Bytes of events a ForEach of 200 iterations returning 1 KB each may write in all."""

METER_DATABASE = "tiercel_bench_meter"


@dataclass(frozen=True)
class Sizes:
    """How big each workload is: the full run, or `--quick` for a smoke test."""

    w1_runs: int = 5
    w1_tasks: int = 40
    w2_counts: tuple[int, ...] = (250, 1000, 4000)
    w3_runs: int = 5
    w3_width: int = 100
    w4_iterations: int = 200
    ceiling_rows: int = 2000
    ceiling_batches: int = 200
    idle_seconds: float = 10.0
    quiet_seconds: float = 1.0
    prefect_w2: int = 100

    @property
    def w2_main(self) -> int:
        """The burst whose figures are `w2` (today's keys): the middle one, 1,000."""
        return self.w2_counts[len(self.w2_counts) // 2]


FULL = Sizes()
QUICK = Sizes(
    w1_runs=1,
    w1_tasks=10,
    w2_counts=(10, 20, 40),
    w3_runs=1,
    w3_width=10,
    w4_iterations=20,
    ceiling_rows=200,
    ceiling_batches=20,
    idle_seconds=0.5,
    quiet_seconds=0.1,
    prefect_w2=8,
)


_STARTED = time.monotonic()


def _progress(message: str) -> None:
    print(f"bench [{time.monotonic() - _STARTED:6.1f} s] {message}", file=sys.stderr, flush=True)


def _sequential_flow(namespace: str, flow_id: str, tasks: int) -> str:
    body = "".join(RETURN.format(indent="  ", id=f"r{i}") for i in range(tasks))
    return f"id: {flow_id}\nnamespace: {namespace}\ntasks:\n{body}"


def _parallel_flow(namespace: str, width: int) -> str:
    branches = "".join(RETURN.format(indent="      ", id=f"p{i}") for i in range(width))
    return (
        f"id: w3\nnamespace: {namespace}\ntasks:\n"
        "  - id: fan\n    type: io.kestra.plugin.core.flow.Parallel\n    tasks:\n"
        f"{branches}{RETURN.format(indent='  ', id='last')}"
    )


def _foreach_flow(namespace: str, iterations: int) -> str:
    padding = "x" * 1000
    return (
        f"id: w4\nnamespace: {namespace}\ntasks:\n"
        "  - id: each\n    type: io.kestra.plugin.core.flow.ForEach\n"
        f'    values: "{{{{ range(1, {iterations}) }}}}"\n    tasks:\n'
        "      - id: r\n        type: io.kestra.plugin.core.debug.Return\n"
        f'        format: "{{{{ taskrun.value }}}}{padding}"\n'
    )


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


# --- what PostgreSQL counts: transactions and notifications of one engine lifetime ------------


class Meter:
    """Reads the server's counters for the bench's database from a connection to another
    database of the same server, so that reading them adds nothing to what they count."""

    def __init__(self, url: str) -> None:
        self.conn: psycopg.Connection[Any] | None = None
        self.reason = ""
        with psycopg.connect(url, autocommit=True) as conn:
            self.dbname = conn.info.dbname
            names = {r[0] for r in conn.execute("SELECT datname FROM pg_database")}
            other = "postgres" if self.dbname != "postgres" else METER_DATABASE
            if other not in names:
                try:
                    conn.execute(f'CREATE DATABASE "{other}"')
                except psycopg.Error as exc:
                    self.reason = f"no other database to read the counters from ({exc})"
                    return
        self.conn = psycopg.connect(make_conninfo(url, dbname=other), autocommit=True)

    def commits(self) -> int | None:
        """Transactions committed in the bench's database so far (as reported by backends)."""
        if self.conn is None:
            return None
        row = self.conn.execute(
            "SELECT xact_commit FROM pg_stat_database WHERE datname = %s", (self.dbname,)
        ).fetchone()
        return int(row[0]) if row else None

    def clients(self) -> set[int]:
        """The server processes of the client connections to the bench's database."""
        if self.conn is None:
            return set()
        rows = self.conn.execute(
            "SELECT pid FROM pg_stat_activity"
            " WHERE datname = %s AND backend_type = 'client backend'",
            (self.dbname,),
        ).fetchall()
        return {int(pid) for (pid,) in rows}

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()


class Listener:
    """LISTENs on the engine's channel from inside an open transaction: PostgreSQL holds the
    notifications until `count()` ends it, then delivers every one. Its own cost is fixed:
    its connection, the LISTEN and the one delivery (TRANSACTIONS)."""

    TRANSACTIONS = 3

    def __init__(self, url: str) -> None:
        self.received = 0
        # The engine's sessions time out idle transactions; this one must stay open.
        self.conn = psycopg.connect(
            url, autocommit=True, options="-c idle_in_transaction_session_timeout=0"
        )
        self.conn.add_notify_handler(self._count)
        self.conn.execute(f'LISTEN "{CHANNEL}"')
        self.conn.execute("BEGIN")

    def _count(self, _: psycopg.Notify) -> None:
        self.received += 1

    def count(self) -> int:
        """End the transaction, take the deliveries held until now, close; their number."""
        self.conn.execute("ROLLBACK")  # not a commit; the deliveries follow it
        self.conn.execute("SELECT 1")  # makes sure every delivery was read
        self.conn.close()
        return self.received


class Observer:
    """The bench's own connection to the database, counting its transactions (each statement
    is one: autocommit) so they can be taken off the lifetime's count."""

    def __init__(self, url: str) -> None:
        self.conn = psycopg.connect(url, autocommit=True)
        self.transactions = 1  # the connection's start

    async def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        def run() -> list[dict[str, Any]]:
            self.transactions += 1
            with self.conn.cursor(row_factory=psycopg.rows.dict_row) as cur:
                cur.execute(sql, params)
                return cur.fetchall()

        return await trio.to_thread.run_sync(run)

    def close(self) -> None:
        self.conn.close()


@dataclass
class Lifetime:
    """What one lifetime of the engine cost the database, from PostgreSQL's own counters."""

    commits: int | None
    """Transactions committed, less the bench's own."""
    notifications: int
    seconds: float


@dataclass
class Phase:
    """A running engine, and the bench's connection to its database."""

    ctx: ServerContext
    observer: Observer
    position: int = 0
    ended: set[str] = field(default_factory=set)

    async def watch(self) -> None:
        """Read the terminal state changes recorded since the last look into `ended`."""
        [row] = await self.observer.fetchall(
            "SELECT max(seq) AS head, array_agg(stream_id) FILTER (WHERE"
            " type = 'ExecutionStateChanged' AND data->>'state' = ANY(%s)) AS ended"
            " FROM events WHERE seq > %s",
            (sorted(TERMINAL_STATES), self.position),
        )
        if row["head"] is not None:
            self.position = row["head"]
            self.ended.update(s.removeprefix("exec:") for s in row["ended"] or ())

    async def wait_ended(self, ids: Sequence[str], every: float = 0.0) -> None:
        """Return once every execution of `ids` is terminal, looking when the engine's
        notifier wakes (at most once per `every` seconds)."""
        notifier = self.ctx.notifier
        with trio.fail_after(900):
            while True:
                seen = notifier.generation
                await self.watch()
                if self.ended.issuperset(ids):
                    return
                await notifier.wait(seen, 0.5)
                await trio.sleep(every)


async def _settle(phase: Phase, quiet: float, limit: float = 120.0) -> None:
    """Wait until the engine is done with what the workload left (projections catching up):
    no new event and no checkpoint moved for `quiet` seconds."""
    last: Any = None
    calm_since = time.monotonic()
    with trio.move_on_after(limit):
        while True:
            [row] = await phase.observer.fetchall(
                "SELECT (SELECT max(seq) FROM events) AS head,"
                " (SELECT string_agg(name || ':' || position, ',' ORDER BY name)"
                "  FROM checkpoints) AS checkpoints"
            )
            now = time.monotonic()
            if row != last:
                last, calm_since = row, now
            elif now - calm_since >= quiet:
                return
            await trio.sleep(quiet / 4)
    _progress(f"the engine was still busy after {limit:.0f} s; counting what it did so far")


async def lifetime(
    url: str, meter: Meter, quiet: float, work: Callable[[Phase], Awaitable[T]]
) -> tuple[T, Lifetime]:
    """Start the engine, run `work`, let it settle, stop it, and read what it all cost."""
    before = meter.clients()
    start_commits = meter.commits()
    listener = Listener(url)
    observer = Observer(url)
    started = time.perf_counter()
    try:
        async with trio.open_nursery() as nursery:
            ctx = await nursery.start(functools.partial(run_server, url, ROLES))
            phase = Phase(ctx, observer)
            result = await work(phase)
            await _settle(phase, quiet)
            nursery.cancel_scope.cancel()
        seconds = time.perf_counter() - started
    finally:
        observer.close()
        notifications = listener.count()
    # A backend reports its counters when it exits: wait for every connection of this lifetime.
    with trio.fail_after(60):
        while meter.clients() - before:
            await trio.sleep(0.02)
    end_commits = meter.commits()
    commits = None
    if start_commits is not None and end_commits is not None:
        own = observer.transactions + Listener.TRANSACTIONS
        commits = end_commits - start_commits - own
    return result, Lifetime(commits, notifications, seconds)


@dataclass(frozen=True)
class Idle:
    """The engine's cost when it has nothing to do: a lifetime of 0 s and one of `seconds`."""

    short: Lifetime
    long: Lifetime

    def baseline(self, seconds: float) -> tuple[float | None, float]:
        """Commits and notifications an idle lifetime of `seconds` would count."""
        span = max(self.long.seconds - self.short.seconds, 1e-9)
        extra = max(seconds - self.short.seconds, 0.0)
        commits = None
        if self.short.commits is not None and self.long.commits is not None:
            rate = max(self.long.commits - self.short.commits, 0) / span
            commits = self.short.commits + rate * extra
        rate_n = max(self.long.notifications - self.short.notifications, 0) / span
        return commits, self.short.notifications + rate_n * extra


def per_execution(cost: Lifetime, idle: Idle, executions: int) -> dict[str, Any]:
    """Commits and notifications per execution: the lifetime's (gross), and the same less an
    idle lifetime of the same length (net)."""
    base_commits, base_notes = idle.baseline(cost.seconds)
    out: dict[str, Any] = {
        "notifications_per_execution": max(cost.notifications - base_notes, 0) / executions,
        "notifications_gross_per_execution": cost.notifications / executions,
        "lifetime_s": cost.seconds,
        "commits_per_execution": None,
        "commits_gross_per_execution": None,
        "commits_idle": base_commits,
    }
    if cost.commits is not None and base_commits is not None:
        out["commits_gross_per_execution"] = cost.commits / executions
        if cost.commits >= base_commits:  # else the idle baseline says nothing of this lifetime
            out["commits_per_execution"] = (cost.commits - base_commits) / executions
    return out


# --- the workloads -------------------------------------------------------------------------------


async def _timings(phase: Phase, ids: Sequence[str]) -> list[dict[str, Any]]:
    """Per execution: created and ended times (from the events) and its number of events."""
    streams = [f"exec:{i}" for i in ids]
    rows = await phase.observer.fetchall(
        "SELECT e.stream_id, min(e.recorded_at) AS created,"
        " max(e.recorded_at) FILTER (WHERE e.type = 'ExecutionStateChanged'"
        "   AND e.data->>'state' = ANY(%s)) AS ended"
        " FROM events e WHERE e.stream_id = ANY(%s) GROUP BY e.stream_id",
        (sorted(TERMINAL_STATES), streams),
    )
    # An execution's events are in its stream and its sub-streams (exec:ID/...).
    counts = await phase.observer.fetchall(
        "SELECT split_part(stream_id, '/', 1) AS base, count(*) AS n,"
        " sum(octet_length(data::text) + octet_length(meta::text)) AS bytes FROM events"
        " WHERE split_part(stream_id, '/', 1) = ANY(%s) GROUP BY 1",
        (streams,),
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


async def _one_by_one(
    phase: Phase, namespace: str, flow_id: str, runs: int
) -> tuple[list[str], list[float]]:
    """Run `flow_id` `runs` times, each after the previous ended: ids and client times (s)."""
    ids, totals = [], []
    for _ in range(runs):
        started = time.perf_counter()
        execution_id = await create_execution(phase.ctx.store, namespace, flow_id, actor="bench")
        await phase.wait_ended([execution_id])
        totals.append(time.perf_counter() - started)
        ids.append(execution_id)
    return ids, totals


async def _ended_ok(phase: Phase, ids: Sequence[str], what: str) -> list[dict[str, Any]]:
    timings = await _timings(phase, ids)
    states = await phase.observer.fetchall(
        "SELECT DISTINCT ON (stream_id) stream_id, data->>'state' AS state FROM events"
        " WHERE stream_id = ANY(%s) AND type = 'ExecutionStateChanged'"
        " ORDER BY stream_id, seq DESC",
        ([f"exec:{i}" for i in ids],),
    )
    failed = [r for r in states if r["state"] != "SUCCESS"]
    if failed:
        raise RuntimeError(f"{what}: {len(failed)} execution(s) ended {failed[0]['state']}")
    return timings


async def w1(phase: Phase, namespace: str, runs: int, tasks: int) -> dict[str, Any]:
    """One flow of `tasks` sequential Returns, submit to terminal, `runs` times (median)."""
    ids, totals = await _one_by_one(phase, namespace, "w1", runs)
    timings = await _ended_ok(phase, ids, "W1")
    recorded = [(t["ended"] - t["created"]).total_seconds() for t in timings]
    return {
        "runs": runs,
        "tasks": tasks,
        "median_ms": statistics.median(recorded) * 1000,
        "median_ms_per_task": statistics.median(recorded) * 1000 / tasks,
        "client_median_ms": statistics.median(totals) * 1000,
        "events_per_execution": statistics.median(t["events"] for t in timings),
        "bytes_per_execution": statistics.median(t["bytes"] for t in timings),
    }


async def w2(phase: Phase, namespace: str, count: int, submitters: int = 16) -> dict[str, Any]:
    """A burst of `count` executions of a one-task flow, submitted as fast as possible."""
    ids: list[str] = []
    remaining = iter(range(count))

    async def submit() -> None:
        for _ in remaining:
            ids.append(await create_execution(phase.ctx.store, namespace, "w2", actor="bench"))

    started = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for _ in range(submitters):
            nursery.start_soon(submit)
    submitted = time.perf_counter() - started
    await phase.wait_ended(ids, every=0.05)
    timings = await _ended_ok(phase, ids, "W2")
    first = min(t["created"] for t in timings)
    last = max(t["ended"] for t in timings)
    latencies = [(t["ended"] - t["created"]).total_seconds() * 1000 for t in timings]
    return {
        "count": count,
        "executions_per_s": count / (last - first).total_seconds(),
        "submitted_per_s": count / submitted,
        "p50_ms": _percentile(latencies, 0.5),
        "p95_ms": _percentile(latencies, 0.95),
        "events_per_execution": statistics.median(t["events"] for t in timings),
        "bytes_per_execution": statistics.median(t["bytes"] for t in timings),
    }


async def w3(phase: Phase, namespace: str, runs: int, width: int) -> dict[str, Any]:
    """A Parallel of `width` Returns, then one Return, `runs` times one after another."""
    ids, totals = await _one_by_one(phase, namespace, "w3", runs)
    timings = await _ended_ok(phase, ids, "W3")
    recorded = [(t["ended"] - t["created"]).total_seconds() for t in timings]
    return {
        "runs": runs,
        "width": width,
        "median_ms": statistics.median(recorded) * 1000,
        "client_median_ms": statistics.median(totals) * 1000,
        "events_per_execution": statistics.median(t["events"] for t in timings),
        "bytes_per_execution": statistics.median(t["bytes"] for t in timings),
    }


async def w4(phase: Phase, namespace: str, iterations: int) -> dict[str, Any]:
    """A ForEach of `iterations` Returns of 1 KB each: the bytes of events it writes."""
    ids, _ = await _one_by_one(phase, namespace, "w4", 1)
    [timing] = await _ended_ok(phase, ids, "W4")
    return {
        "bytes": timing["bytes"],
        "events": timing["events"],
        "iterations": iterations,
        "budget_bytes": FOREACH_BUDGET * iterations / 200,
    }


# --- running ------------------------------------------------------------------------------------


async def _start_prefect(python: str | None) -> Prefect | str:
    """A warmed-up Prefect, or the reason there is none."""
    _progress("installing Prefect 3 in a throwaway virtual environment (--peers)")
    try:
        prefect = await trio.to_thread.run_sync(functools.partial(Prefect.install, python=python))
    except Unavailable as exc:
        return str(exc)
    _progress("starting Prefect's temporary server and warming it up")
    try:
        await trio.to_thread.run_sync(prefect.start)
    except Unavailable as exc:
        await trio.to_thread.run_sync(prefect.close)
        return str(exc)
    return prefect


async def _peer_run(
    prefect: Prefect | None, peers: dict[str, Any], key: str, run: Callable[[Prefect], Any]
) -> None:
    """Run one of the peer's workloads; a failure skips the peer, with its reason."""
    if prefect is None or "skipped" in peers:
        return
    try:
        peers[key] = await trio.to_thread.run_sync(run, prefect)
    except Unavailable as exc:
        peers["skipped"] = str(exc)


async def _run(url: str, sizes: Sizes, peers: bool, peer_python: str | None) -> dict[str, Any]:
    results: dict[str, Any] = {}
    prefect: Prefect | None = None
    if peers:
        started = await _start_prefect(peer_python)
        if isinstance(started, str):
            _progress(f"Prefect skipped: {started}")
            results["peers"] = {"skipped": started}
        else:
            prefect = started
            results["peers"] = {"name": "Prefect", "version": prefect.version}
    try:
        await _measure(url, sizes, results, prefect)
    finally:
        if prefect is not None:
            await trio.to_thread.run_sync(prefect.close)
    return results


async def _measure(
    url: str, sizes: Sizes, results: dict[str, Any], prefect: Prefect | None
) -> None:
    namespace = f"bench.run{uuid.uuid4().hex[:8]}"
    meter = Meter(url)
    if meter.reason:
        _progress(f"commits are not counted: {meter.reason}")
    quiet = sizes.quiet_seconds

    def run(work: Callable[[Phase], Awaitable[T]]) -> Awaitable[tuple[T, Lifetime]]:
        return lifetime(url, meter, quiet, work)

    try:
        _progress("the database's ceiling")
        results["ceiling"] = await trio.to_thread.run_sync(
            ceiling, url, sizes.ceiling_rows, sizes.ceiling_batches
        )

        async def deploy(phase: Phase) -> None:
            for source in (
                _sequential_flow(namespace, "w1", sizes.w1_tasks),
                _sequential_flow(namespace, "w2", 1),
                _parallel_flow(namespace, sizes.w3_width),
                _foreach_flow(namespace, sizes.w4_iterations),
            ):
                await deploy_flow(phase.ctx.store, source, actor="bench")

        await run(deploy)
        _progress("the engine idle, as a baseline")
        _, short = await run(lambda phase: trio.sleep(0))
        _, long = await run(lambda phase: trio.sleep(sizes.idle_seconds))
        idle = Idle(short, long)
        span = max(long.seconds - short.seconds, 1e-9)
        results["idle"] = {
            "short": vars(short),
            "long": vars(long),
            "commits_per_s": (long.commits - short.commits) / span
            if long.commits is not None and short.commits is not None
            else None,
            "notifications_per_s": (long.notifications - short.notifications) / span,
        }

        _progress(f"W1: {sizes.w1_runs} x {sizes.w1_tasks} sequential Returns")
        first, cost = await run(lambda phase: w1(phase, namespace, sizes.w1_runs, sizes.w1_tasks))
        results["w1"] = {**first, **per_execution(cost, idle, sizes.w1_runs)}
        peers = results.get("peers", {})
        if prefect is not None:
            _progress("Prefect W1")
        await _peer_run(prefect, peers, "w1", lambda p: p.w1(sizes.w1_runs, sizes.w1_tasks))

        growth = []
        for count in sizes.w2_counts:
            _progress(f"W2: a burst of {count}")
            burst, cost = await run(functools.partial(w2, namespace=namespace, count=count))
            growth.append({**burst, **per_execution(cost, idle, count)})
        results["w2_growth"] = growth
        results["w2"] = next(g for g in growth if g["count"] == sizes.w2_main)
        results["w2_growth_ratio"] = growth[-1]["executions_per_s"] / growth[0]["executions_per_s"]
        if prefect is not None:
            _progress(f"Prefect W2: {sizes.prefect_w2} one-task flow runs, 4 at a time")
        await _peer_run(prefect, peers, "w2", lambda p: p.w2(sizes.prefect_w2))

        _progress(f"W3: a Parallel of {sizes.w3_width}, then one Return, x {sizes.w3_runs}")
        third, cost = await run(lambda phase: w3(phase, namespace, sizes.w3_runs, sizes.w3_width))
        results["w3"] = {**third, **per_execution(cost, idle, sizes.w3_runs)}
        _progress(f"W4: a ForEach of {sizes.w4_iterations} x 1 KB outputs")
        results["w4"], _ = await run(lambda phase: w4(phase, namespace, sizes.w4_iterations))
    finally:
        meter.close()


# --- reporting ------------------------------------------------------------------------------------


def _gap(value: float, target: float, *, higher_is_better: bool = False) -> str:
    """How far a figure is from its target: "met", or how many times off."""
    ratio = target / value if higher_is_better else value / target
    if ratio <= 1:
        return "met"
    return f"{ratio:.1f}x {'short' if higher_is_better else 'over'}"


def _n(value: float | None, digits: int = 0) -> str:
    return "n/a" if value is None else f"{value:,.{digits}f}"


def report(results: dict[str, Any]) -> str:
    """The figures, each with its target, its gap and what the same run measured beside it."""
    c, a, b = results["ceiling"], results["w1"], results["w2"]
    growth, third, four = results["w2_growth"], results["w3"], results["w4"]
    peer = results.get("peers", {})
    p1, p2 = peer.get("w1", {}), peer.get("w2", {})
    commit_ms = 1000 / c["single_row_per_s"]
    # If every event of an execution were written at the database's batch rate, in one go:
    exec_ceiling = c["batch_rows_per_s"] / max(b["events_per_execution"], 1)
    w1_target = W1_TARGET_MS * a["tasks"] / 40
    w3_target = W3_TARGET_MS * third["width"] / 100
    rows: list[tuple[str, ...]] = [
        (f"W1 {a['tasks']} sequential Returns, median of {a['runs']}",
         f"{a['median_ms']:,.0f} ms", f"<= {w1_target:,.0f} ms", _gap(a["median_ms"], w1_target),
         f"Prefect: {p1['call_median_ms']:,.0f} ms, call to result" if p1 else ""),
        ("W1 per task", f"{a['median_ms_per_task']:.2f} ms", f"<= {W1_TASK_TARGET_MS:.0f} ms",
         _gap(a["median_ms_per_task"], W1_TASK_TARGET_MS),
         f"one single-row commit: {commit_ms:.2f} ms"),
    ]  # fmt: skip
    for g in growth:
        is_main = g["count"] == b["count"]
        rows += [
            (f"W2 burst of {g['count']:,}: throughput", f"{g['executions_per_s']:,.0f} exec/s",
             f">= {W2_TARGET_PER_S:,.0f}/s",
             _gap(g["executions_per_s"], W2_TARGET_PER_S, higher_is_better=True),
             f"database: {exec_ceiling:,.0f} exec/s ({b['events_per_execution']:.0f} events"
             " each at its batch rate)" if is_main else ""),
            (f"W2 burst of {g['count']:,}: p50 / p95", f"{g['p50_ms']:,.0f} / {g['p95_ms']:,.0f} ms",
             f"p95 <= {W2_P95_TARGET_MS:,.0f} ms" if is_main else "",
             _gap(g["p95_ms"], W2_P95_TARGET_MS) if is_main else "",
             f"one round trip: {c['round_trip_ms']:.2f} ms" if is_main else ""),
        ]  # fmt: skip
    rows += [
        (f"W2 growth: throughput at {growth[-1]['count']:,} / at {growth[0]['count']:,}",
         f"{results['w2_growth_ratio']:.2f}x", f">= {W2_FLAT:.1f}x (flat)",
         _gap(results["w2_growth_ratio"], W2_FLAT, higher_is_better=True),
         f"Prefect: {p2['executions_per_s']:,.1f} runs/s ({p2['count']}, 4 at a time)"
         if p2.get("executions_per_s") else ""),
        (f"W3 Parallel of {third['width']}, then one Return, median of {third['runs']}",
         f"{third['median_ms']:,.0f} ms", f"<= {w3_target:,.0f} ms",
         _gap(third["median_ms"], w3_target), ""),
    ]  # fmt: skip
    for label, w in (("W1", a), (f"W2 at {b['count']:,}", b), ("W3", third)):
        rows += [
            (f"{label}: commits / notifications per execution",
             f"{_n(w['commits_per_execution'], 1)} / {w['notifications_per_execution']:,.1f}",
             "", "", f"before the idle baseline: {_n(w['commits_gross_per_execution'], 1)} / "
             f"{w['notifications_gross_per_execution']:,.1f}"),
        ]  # fmt: skip
    idle = results["idle"]
    rows.append(
        ("Idle engine: commits / notifications per second",
         f"{_n(idle['commits_per_s'], 1)} / {idle['notifications_per_s']:,.1f}", "", "",
         f"a start and stop: {_n(idle['short']['commits'])} commits"),
    )  # fmt: skip
    for label, w in (("W1", a), (f"W2 at {b['count']:,}", b), ("W3", third)):
        rows.append(
            (f"{label}: events / event bytes per execution",
             f"{w['events_per_execution']:,.0f} / {w['bytes_per_execution'] / 1024:,.1f} KiB",
             "", "", ""),
        )  # fmt: skip
    rows += [
        (f"W4 ForEach of {four['iterations']} x 1 KB outputs: event bytes",
         f"{four['bytes'] / 1024:,.0f} KiB in {four['events']:,} events",
         f"<= {four['budget_bytes'] / 1024:,.0f} KiB", _gap(four["bytes"], four["budget_bytes"]),
         ""),
        ("Ceiling: single-row INSERT, one commit each", f"{c['single_row_per_s']:,.0f} rows/s",
         "", "", f"{commit_ms:.2f} ms a commit"),
        ("Ceiling: 100-row-batch INSERT", f"{c['batch_rows_per_s']:,.0f} rows/s", "", "", ""),
        ("Ceiling: SELECT 1 round trip", f"{c['round_trip_ms']:.3f} ms", "", "", ""),
    ]  # fmt: skip
    lines = _table(("figure", "value", "target", "gap", "beside it, same run"), rows)
    lines += ["", *_peer_lines(results)]
    return "\n".join(lines).rstrip() + "\n"


def _peer_lines(results: dict[str, Any]) -> list[str]:
    peer = results.get("peers")
    if peer is None:
        return ["Peers: not run (--peers runs Prefect 3 in the same run)."]
    if "w1" not in peer or "w2" not in peer:
        return [f"Prefect 3: skipped ({peer.get('skipped', 'no result')})."]
    a, b = results["w1"], results["w2"]
    p1, p2 = peer["w1"], peer["w2"]

    def ratio(tiercel: float | None, prefect: float | None, lower_is_better: bool = True) -> str:
        if not tiercel or not prefect:
            return "n/a"
        return f"{prefect / tiercel if lower_is_better else tiercel / prefect:.2f}x"

    rows = [
        (f"W1 {a['tasks']} sequential tasks: submit to result, median",
         f"{a['client_median_ms']:,.0f} ms", f"{p1['call_median_ms']:,.0f} ms",
         ratio(a["client_median_ms"], p1["call_median_ms"])),
        ("W1 from the records: created to ended, median", f"{a['median_ms']:,.0f} ms",
         f"{_n(p1.get('median_ms'))} ms", ratio(a["median_ms"], p1.get("median_ms"))),
        ("W2 throughput, from the records", f"{b['executions_per_s']:,.0f} exec/s",
         f"{_n(p2.get('executions_per_s'), 1)} runs/s",
         ratio(b["executions_per_s"], p2.get("executions_per_s"), lower_is_better=False)),
    ]  # fmt: skip
    title = [
        f"Beside Prefect {peer['version']} in the same run, on its ephemeral local server (SQLite).",
        f"Its W2: {p2['count']} one-task flow runs, {p2['concurrency']} at a time, "
        f"{p2['failed']} refused; Tiercel's: its burst of {b['count']:,}.",
    ]
    header = ("workload", "Tiercel", "Prefect", "Tiercel's advantage")
    return [*title, *_table(header, rows)]


def _table(header: tuple[str, ...], rows: Sequence[tuple[str, ...]]) -> list[str]:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = [
        "  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)).rstrip(),
        "  ".join("-" * w for w in widths),
    ]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.core", description=(__doc__ or "").split("\n")[0]
    )
    parser.add_argument("--database-url", help="use this PostgreSQL instead of an embedded one")
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke test")
    parser.add_argument(
        "--json", nargs="?", const="bench-core.json", metavar="FILE",
        help="print the results as JSON on stdout (the table goes to stderr) and write them to "
        "FILE (default: bench-core.json)",
    )  # fmt: skip
    parser.add_argument(
        "--peers", action="store_true",
        help="also run Prefect 3's W1 and W2, installed in a throwaway virtual environment",
    )  # fmt: skip
    parser.add_argument(
        "--peer-python", metavar="PYTHON",
        help="with --peers: an interpreter that already has Prefect 3, instead of installing it",
    )  # fmt: skip
    args = parser.parse_args(argv)
    sizes = QUICK if args.quick else FULL
    embedded = None
    url = args.database_url
    if not url:
        from engine.embedded import EmbeddedPostgres

        embedded = EmbeddedPostgres(Path(tempfile.mkdtemp(prefix="tiercel-bench-")))
        url = embedded.start()
    try:
        from engine.migrate import migrate

        migrate(url)
        results = trio.run(_run, url, sizes, args.peers, args.peer_python)
    finally:
        if embedded is not None:
            embedded.stop()
            shutil.rmtree(embedded.data_dir, ignore_errors=True)
    results["meta"] = {
        "quick": args.quick,
        "database": "embedded" if embedded else "external",
        "python": platform.python_version(),
        "machine": platform.machine(),
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    table = report(results)
    if args.json:
        text = json.dumps(results, indent=2, default=str) + "\n"
        Path(args.json).write_text(text)
        print(table, file=sys.stderr)
        print(f"written to {args.json}", file=sys.stderr)
        sys.stdout.write(text)
    else:
        print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
