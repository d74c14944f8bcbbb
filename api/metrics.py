"""Prometheus metrics at `/prometheus` (Kestra's path) and `/metrics`, and readiness's reads.

Every value is read from the database at scrape time, so any webserver of a cluster answers for
the whole cluster (scrape one of them, or keep one series per metric with `max without
(instance)`): executions by namespace, flow and state from the executions read model, attempts
waiting for a worker and worker slots in use from the engine's tables, the head of the log (a
counter: `rate()` of it is the events appended per second) and each projection's lag.

Task-run durations are a histogram this process accumulates: each scrape reads the attempts
that ended since the previous one (claimed to succeeded, failed or killed, from the events'
recorded times) and adds them, from the position the log had when the server started.

The routes need the `viewer` role: a Prometheus scrape job passes an account's basic auth or a
token (`authorization: {credentials: ...}`); see docs/operations.md. A viewer limited to some
namespaces sees the executions and durations of those namespaces only.
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import trio
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from quart import Response
from quart_trio import QuartTrio

from api.auth import access, namespace_filter, principal
from engine.backoff import is_transient
from engine.db import Database
from engine.health import PROJECTION_PREFIX
from engine.server import ServerContext

DURATION_BUCKETS = (
    0.01,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    300.0,
    900.0,
    3600.0,
)
"""Upper bounds (seconds) of the task-run duration histogram's buckets; +Inf is added."""

ENDED_TYPES = ("AttemptSucceeded", "AttemptFailed", "AttemptKilled")
MAX_ENDED_PER_SCRAPE = 50_000
"""Ended attempts read per scrape at most: a scrape after a long pause catches up over several."""


async def log_positions(db: Database) -> tuple[int, dict[str, int]]:
    """The head of the log (its last position, 0 when empty) and every projection's checkpoint."""
    head = await db.fetchone("SELECT coalesce(max(seq), 0) AS head FROM events")
    rows = await db.fetchall(
        "SELECT name, position FROM checkpoints WHERE name LIKE %s",
        (PROJECTION_PREFIX + "%",),
    )
    return int(head["head"]) if head else 0, {r["name"]: int(r["position"]) for r in rows}


@dataclass
class _Durations:
    """A cumulative histogram of attempt durations by (namespace, flow, state)."""

    position: int | None = None
    """The last position read (None until the first read sets it to the head)."""
    series: dict[tuple[str, str, str], list[float]] = field(default_factory=dict)
    """Per label set: a count per bucket (not cumulative, +Inf last) and the sum at the end."""
    lock: trio.Lock = field(default_factory=trio.Lock)

    def add(self, labels: tuple[str, str, str], seconds: float) -> None:
        counts = self.series.setdefault(labels, [0.0] * (len(DURATION_BUCKETS) + 2))
        for i, bound in enumerate(DURATION_BUCKETS):
            if seconds <= bound:
                counts[i] += 1
                break
        else:
            counts[len(DURATION_BUCKETS)] += 1
        counts[-1] += seconds

    async def catch_up(self, db: Database) -> None:
        """Add the attempts that ended since the last read (up to the executions projection,
        whose rows name each attempt's namespace and flow)."""
        async with self.lock:
            head, checkpoints = await log_positions(db)
            if self.position is None:
                self.position = head
                return
            upper = min(head, checkpoints.get(PROJECTION_PREFIX + "executions", head))
            if upper <= self.position:
                return
            rows = await db.fetchall(
                "SELECT e.seq, coalesce(x.namespace, '') AS namespace,"
                " coalesce(x.flow_id, '') AS flow_id,"
                " CASE e.type WHEN 'AttemptSucceeded' THEN coalesce(e.data->>'state', 'SUCCESS')"
                "  WHEN 'AttemptFailed' THEN 'FAILED' ELSE 'KILLED' END AS state,"
                " extract(epoch FROM e.recorded_at - c.recorded_at)::float8 AS seconds"
                " FROM events e"
                " JOIN events c ON c.stream_id = e.stream_id AND c.type = 'AttemptClaimed'"
                " LEFT JOIN executions x ON x.id = e.data->>'executionId'"
                " WHERE e.seq > %s AND e.seq <= %s AND e.type = ANY(%s)"
                " ORDER BY e.seq LIMIT %s",
                (self.position, upper, list(ENDED_TYPES), MAX_ENDED_PER_SCRAPE),
            )
            for row in rows:
                self.add((row["namespace"], row["flow_id"], row["state"]), row["seconds"])
            full = len(rows) == MAX_ENDED_PER_SCRAPE
            self.position = int(rows[-1]["seq"]) if full else upper

    def family(self, visible: Any) -> HistogramMetricFamily:
        histogram = HistogramMetricFamily(
            "tiercel_task_run_duration_seconds",
            "Duration of task-run attempts, from their claim by a worker to their end",
            labels=["namespace", "flow_id", "state"],
        )
        for labels, counts in sorted(self.series.items()):
            if not visible(labels[0]):
                continue
            cumulative, buckets = 0.0, []
            for bound, count in zip(
                (*(str(b) for b in DURATION_BUCKETS), "+Inf"), counts[:-1], strict=True
            ):
                cumulative += count
                buckets.append((bound, cumulative))
            histogram.add_metric(list(labels), buckets, counts[-1])
        return histogram


class _Snapshot:
    """The families of one scrape, handed to prometheus_client's text writer."""

    def __init__(self, families: Iterable[Metric]) -> None:
        self.families = list(families)

    def collect(self) -> Iterator[Metric]:
        return iter(self.families)


def register(app: QuartTrio, ctx: ServerContext) -> None:
    """Add `/prometheus` and `/metrics` to `app`."""
    db = ctx.db
    durations = _Durations()

    @app.before_serving
    async def start_durations() -> None:
        # From the head at start: what ended before is not counted again after a restart.
        try:
            await durations.catch_up(db)
        except Exception as exc:
            if not is_transient(exc):
                raise
            # The database is away at start: the first scrape starts from the head instead.

    async def scrape() -> Response:
        families: list[Metric] = []
        who = principal()
        condition, params = namespace_filter("namespace")

        version = _version()
        info = GaugeMetricFamily(
            "tiercel_info", "The Tiercel version this process runs", labels=["version"]
        )
        info.add_metric([version], 1)
        families.append(info)

        head, checkpoints = await log_positions(db)
        families.append(
            CounterMetricFamily(
                "tiercel_events_appended",
                "Events appended to the log (its head position); rate() gives events per second",
                value=head,
            )
        )

        executions = GaugeMetricFamily(
            "tiercel_executions",
            "Executions in the executions read model, by namespace, flow and current state",
            labels=["namespace", "flow_id", "state"],
        )
        rows = await db.fetchall(
            "SELECT namespace, flow_id, state, count(*) AS n FROM executions"
            f" WHERE {condition} GROUP BY namespace, flow_id, state"
            " ORDER BY namespace, flow_id, state",
            params,
        )
        for row in rows:
            executions.add_metric([row["namespace"], row["flow_id"], row["state"]], row["n"])
        families.append(executions)

        await durations.catch_up(db)
        families.append(durations.family(who.reaches))

        waiting = await db.fetchone(
            "SELECT count(*) AS n FROM events s"
            " WHERE s.seq > coalesce((SELECT position FROM checkpoints WHERE name = 'worker'), 0)"
            " AND s.type = 'AttemptScheduled' AND NOT EXISTS (SELECT 1 FROM events c"
            "  WHERE c.stream_id = 'exec:' || (s.data->>'executionId') || '/a:'"
            "   || (s.data->>'taskRunId') || ':' || (s.data->>'attempt'))"
        )
        families.append(
            GaugeMetricFamily(
                "tiercel_attempts_waiting",
                "Attempts scheduled that no worker has claimed yet",
                value=int(waiting["n"]) if waiting else 0,
            )
        )

        in_use = GaugeMetricFamily(
            "tiercel_worker_slots_in_use",
            "Attempts each live worker is running (one slot each)",
            labels=["worker_id"],
        )
        rows = await db.fetchall(
            "SELECT w.worker_id, count(a.stream_id) AS n FROM engine_workers w"
            " LEFT JOIN engine_attempts a ON a.worker_id = w.worker_id"
            " GROUP BY w.worker_id ORDER BY w.worker_id"
        )
        for row in rows:
            in_use.add_metric([row["worker_id"]], row["n"])
        families.append(in_use)
        families.append(GaugeMetricFamily("tiercel_workers", "Live workers", value=len(rows)))
        worker = ctx.worker
        if worker is not None:
            slots = GaugeMetricFamily(
                "tiercel_worker_slots",
                "Slots (attempts run at once) of the worker of this process",
                labels=["worker_id"],
            )
            slots.add_metric([worker.id], worker.slots)
            families.append(slots)

        lag = GaugeMetricFamily(
            "tiercel_projection_lag_events",
            "Events between the head of the log and the position a projection has read up to",
            labels=["projection"],
        )
        positions = ctx.health.positions()
        names = {*checkpoints, *(n for n in positions if n.startswith(PROJECTION_PREFIX))}
        for name in sorted(names):
            # Exact where the projection runs in this process; elsewhere its checkpoint, which
            # moves only when it writes, so an upper bound.
            position = positions.get(name, checkpoints.get(name, 0))
            lag.add_metric([name.removeprefix(PROJECTION_PREFIX)], max(0, head - position))
        families.append(lag)

        registry = CollectorRegistry(auto_describe=False)
        registry.register(_Snapshot(families))  # type: ignore[arg-type]
        return Response(generate_latest(registry), content_type=CONTENT_TYPE_LATEST)

    @app.get("/prometheus")
    @access("viewer")
    async def prometheus_metrics() -> Response:
        return await scrape()

    @app.get("/metrics")
    @access("viewer")
    async def metrics_text() -> Response:
        return await scrape()


def _version() -> str:
    try:
        return importlib.metadata.version("tiercel")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"
