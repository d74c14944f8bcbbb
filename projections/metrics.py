"""The `metrics` read model: the counters and timers tasks report, the built-in durations, and an
hourly rollup for aggregates over long ranges.

Points come from the events that end an attempt (`AttemptSucceeded`, `AttemptFailed` carry the
task's `metrics`: {name, type, value, tags}) and from an execution reaching a terminal state:

- each metric the task reported, at the time its attempt's end was recorded;
- `duration` (timer), per attempt that a worker claimed: from the claim to the attempt's end
  (succeeded, failed or killed), both as recorded, tagged `state` with how the attempt ended;
- `execution.duration` (timer, no task), each time the execution enters a terminal state:
  from its creation to that state, with the dates `GET /api/v1/executions/{id}` shows (so the
  two agree to the millisecond), tagged `state`.

Values are in Kestra's units: a counter as reported, a timer in whole milliseconds (scripts
report timers in seconds: `::{"metrics": [{"type": "timer", "value": 1.5}]}::` is 1500).

Tables (migrations/0013_metrics.sql):

- `metrics`: one row per point: `execution_id, namespace, flow_id, task_id, task_run_id,
  attempt, name, type ('counter'|'timer'), value, tags (jsonb object of strings), timestamp`,
  keyed by `(seq, idx)`: the position of the event it came with and its place in the event's
  list (-1 for a built-in duration). Inserted with `ON CONFLICT DO NOTHING`: a batch applied
  again, or the whole log replayed over existing rows, adds nothing.
- `metric_buckets`: the rollup, one row per hour (`bucket`, UTC, `date_trunc('hour', ...)`) and
  series (`namespace, flow_id, task_id, name, type, tags`; an execution's duration has a NULL
  `task_id`) with `count, sum, min, max` of its points. The same statement that inserts points
  adds to it exactly the rows the insert really added (`RETURNING`), so the rollup can never
  count a point twice, and it commits with the points and the checkpoint. An average is
  `sum / count`; a coarser bucket (day, week, month) is a `date_trunc` of the hours.

Aggregates (`aggregate`) over hours, days, weeks or months read the rollup for the whole hours
of the range and the points of the partial hours at its two ends: exact for any range, and a
30-day aggregate reads 720 rows per series instead of every point. Ranges of six hours or less
group by the minute, from the points.

The namespace and flow of an execution come from its `ExecutionCreated` event (as the logs read
model does), and a task run's task id from its `TaskRunCreated`, which the projection reads too
(looked up only for task runs created before a restart): the executions read model may lag
behind this one, the events never do. Purges leave the points (aggregates keep history).
"""

from __future__ import annotations

import datetime as dt
import math
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import orjson
import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from engine import events as ev
from engine.executor_shell import ACTOR
from engine.plugin import TERMINAL_STATES
from engine.store import StoredEvent

TASK_DURATION = "duration"
"""The built-in timer of each attempt: from its claim to its end."""
EXECUTION_DURATION = "execution.duration"
"""The built-in timer of each execution: from its creation to its end."""
BUILT_IN = -1
"""The `idx` of a built-in point (the task's own metrics count from 0)."""
TYPES = ("counter", "timer")
CACHED = 20_000
"""Executions (and task runs) whose owner (and task id) the projection keeps in memory."""
LONGEST_NAME = 512
MAX_TAGS = 64

AGGREGATIONS = ("sum", "avg", "min", "max", "count")
MINUTE_UP_TO = dt.timedelta(hours=6)
"""Kestra's grouping: a range up to this long is grouped by the minute, then by the hour up
to a day, the day up to 180 days, the week up to 365 days, the month beyond."""

_INSERT = (
    "WITH added AS ("
    " INSERT INTO metrics (seq, idx, execution_id, namespace, flow_id, task_id, task_run_id,"
    " attempt, name, type, value, tags, timestamp)"
    " SELECT * FROM unnest(%b::bigint[], %b::int[], %b::text[], %b::text[], %b::text[],"
    " %b::text[], %b::text[], %b::int[], %b::text[], %b::text[], %b::float8[], %b::jsonb[],"
    " %b::timestamptz[])"
    " ON CONFLICT DO NOTHING"
    " RETURNING namespace, flow_id, task_id, name, type, tags, value, timestamp)"
    " INSERT INTO metric_buckets AS b (bucket, namespace, flow_id, task_id, name, type, tags,"
    " count, sum, min, max)"
    " SELECT date_trunc('hour', timestamp, 'UTC'), namespace, flow_id, task_id, name, type,"
    " tags, count(*), sum(value), min(value), max(value)"
    " FROM added GROUP BY 1, 2, 3, 4, 5, 6, 7"
    " ON CONFLICT (namespace, flow_id, name, bucket, task_id, type, tags) DO UPDATE SET"
    " count = b.count + excluded.count, sum = b.sum + excluded.sum,"
    " min = least(b.min, excluded.min), max = greatest(b.max, excluded.max)"
)


def _dumps(value: Any) -> bytes:
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)


def _ms(at: dt.datetime) -> dt.datetime:
    """`at` to the millisecond, as the API shows dates."""
    return at.replace(microsecond=at.microsecond // 1000 * 1000)


def _point(raw: Any) -> tuple[str, str, float, dict[str, str]] | None:
    """A reported metric as (name, type, value in Kestra's unit, tags), or None when it is not
    one (a plugin's bug must not stop the projection)."""
    if not isinstance(raw, dict):
        return None
    name, kind, value = raw.get("name"), raw.get("type", "counter"), raw.get("value")
    if not isinstance(name, str) or not name or len(name) > LONGEST_NAME or kind not in TYPES:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        number = float(value)
    except OverflowError:  # an integer beyond a double's range
        return None
    if not math.isfinite(number):
        return None
    if kind == "timer":
        number = float(round(number * 1000))
    tags = raw.get("tags") or {}
    if not isinstance(tags, dict):
        tags = {}
    shown = {str(k)[:LONGEST_NAME]: str(v)[:LONGEST_NAME] for k, v in list(tags.items())[:MAX_TAGS]}
    return name, kind, number, shown


class _Rows:
    """The columns of the points of one batch, as the INSERT takes them."""

    def __init__(self) -> None:
        self.columns: tuple[list[Any], ...] = tuple([] for _ in range(13))

    def add(self, *values: Any) -> None:
        for column, value in zip(self.columns, values, strict=True):
            column.append(value)


class MetricsProjection:
    """Metric points and their hourly rollup (see the module's description)."""

    name = "metrics"
    types = (
        "TaskRunCreated",
        "AttemptSucceeded",
        "AttemptFailed",
        "AttemptKilled",
        "ExecutionStateChanged",
        "ExecutionPurged",
    )
    tables = ("metrics", "metric_buckets")

    def __init__(self) -> None:
        self._owners: OrderedDict[str, tuple[str | None, str | None, dt.datetime | None]] = (
            OrderedDict()
        )
        self._tasks: OrderedDict[str, str] = OrderedDict()

    def apply(self, batch: list[StoredEvent], conn: psycopg.Connection[Any]) -> None:
        for e in batch:
            # Read in order, a task run's task id is known before its attempts end: no lookup
            # (only after a restart, for the task runs created before it).
            if isinstance(e.event, ev.TaskRunCreated):
                self._tasks[e.event.taskRunId] = e.event.taskId
                self._tasks.move_to_end(e.event.taskRunId)
        while len(self._tasks) > CACHED:
            self._tasks.popitem(last=False)
        attempts = [
            e
            for e in batch
            if isinstance(e.event, ev.AttemptSucceeded | ev.AttemptFailed | ev.AttemptKilled)
        ]
        ends = [
            e
            for e in batch
            if isinstance(e.event, ev.ExecutionStateChanged) and e.event.state in TERMINAL_STATES
        ]
        # A purged execution's points go with its other read-model rows; the hourly rollup,
        # which names no execution, keeps what they added (a rebuild adds it again too).
        purged = [e.event.executionId for e in batch if isinstance(e.event, ev.ExecutionPurged)]
        if not attempts and not ends:
            if purged:
                conn.execute("DELETE FROM metrics WHERE execution_id = ANY(%s)", (purged,))
            return
        self._learn_owners({str(e.execution_id) for e in [*attempts, *ends]}, conn)
        self._learn_tasks(attempts, conn)
        claimed = _claims(attempts, conn)
        causes = _cause_times(ends, conn)
        rows = _Rows()
        for e in batch:
            event = e.event
            if isinstance(event, ev.ExecutionStateChanged):
                if event.state in TERMINAL_STATES:
                    self._execution_end(e, event, causes, rows)
                continue
            if not isinstance(event, ev.AttemptSucceeded | ev.AttemptFailed | ev.AttemptKilled):
                continue
            namespace, flow_id, _ = self._owners.get(event.executionId, (None, None, None))
            task_id = self._tasks.get(event.taskRunId)
            where = (event.executionId, namespace, flow_id, task_id, event.taskRunId, event.attempt)
            reported = [] if isinstance(event, ev.AttemptKilled) else event.metrics
            for i, raw in enumerate(reported):
                point = _point(raw)
                if point is None:
                    continue
                name, kind, value, tags = point
                rows.add(e.seq, i, *where, name, kind, value, _jsonb(tags), e.recorded_at)
            began = claimed.get(e.stream_id)
            if began is not None:
                state = (
                    event.state
                    if isinstance(event, ev.AttemptSucceeded)
                    else "FAILED"
                    if isinstance(event, ev.AttemptFailed)
                    else "KILLED"
                )
                took = (_ms(e.recorded_at) - _ms(began)) / dt.timedelta(milliseconds=1)
                rows.add(
                    e.seq,
                    BUILT_IN,
                    *where,
                    TASK_DURATION,
                    "timer",
                    float(max(took, 0.0)),
                    _jsonb({"state": state}),
                    e.recorded_at,
                )
        if rows.columns[0]:
            conn.execute(_INSERT, rows.columns)
        if purged:
            conn.execute("DELETE FROM metrics WHERE execution_id = ANY(%s)", (purged,))

    def _execution_end(
        self,
        e: StoredEvent,
        event: ev.ExecutionStateChanged,
        causes: dict[int, dt.datetime],
        rows: _Rows,
    ) -> None:
        namespace, flow_id, created = self._owners.get(event.executionId, (None, None, None))
        if created is None:
            return
        ended = causes.get(e.seq, e.recorded_at)
        took = (_ms(ended) - _ms(created)) / dt.timedelta(milliseconds=1)
        rows.add(
            e.seq,
            BUILT_IN,
            event.executionId,
            namespace,
            flow_id,
            None,
            None,
            None,
            EXECUTION_DURATION,
            "timer",
            float(max(took, 0.0)),
            _jsonb({"state": event.state}),
            ended,
        )

    def _learn_owners(self, wanted: set[str], conn: psycopg.Connection[Any]) -> None:
        """Have the namespace, flow id and creation time of every execution in `wanted`."""
        unknown = set()
        for xid in wanted:
            if xid in self._owners:
                self._owners.move_to_end(xid)
            else:
                unknown.add(xid)
        if unknown:
            found = conn.execute(
                "SELECT data ->> 'executionId', data ->> 'namespace', data ->> 'flowId',"
                " recorded_at, meta FROM events"
                " WHERE stream_id = ANY(%b::text[]) AND type = 'ExecutionCreated'",
                ([ev.execution_stream(x) for x in unknown],),
            ).fetchall()
            causes: dict[str, int] = {}
            for xid, namespace, flow_id, recorded_at, meta in found:
                self._owners[xid] = (namespace, flow_id, recorded_at)
                cause = _cause(meta)
                if cause is not None:
                    causes[xid] = cause
            if causes:
                # Dated as the executor's replay dates it: by the event it was decided for.
                times = _times_of(set(causes.values()), conn)
                for xid, cause in causes.items():
                    namespace, flow_id, recorded_at = self._owners[xid]
                    self._owners[xid] = (namespace, flow_id, times.get(cause, recorded_at))
        while len(self._owners) > max(CACHED, len(wanted)):
            self._owners.popitem(last=False)

    def _learn_tasks(self, attempts: list[StoredEvent], conn: psycopg.Connection[Any]) -> None:
        """Have the task id of every task run whose attempt ends in `attempts`."""
        unknown: dict[str, str] = {}
        for e in attempts:
            run = getattr(e.event, "taskRunId", "")
            if run in self._tasks:
                self._tasks.move_to_end(run)
            else:
                unknown[run] = ev.execution_stream(str(e.execution_id))
        if unknown:
            found = conn.execute(
                "SELECT data ->> 'taskRunId', data ->> 'taskId' FROM events"
                " WHERE stream_id = ANY(%b::text[]) AND type = 'TaskRunCreated'"
                " AND data ->> 'taskRunId' = ANY(%b::text[])",
                (sorted(set(unknown.values())), sorted(unknown)),
            ).fetchall()
            for run, task_id in found:
                self._tasks[run] = task_id
        while len(self._tasks) > max(CACHED, len(attempts)):
            self._tasks.popitem(last=False)


def _jsonb(value: dict[str, str]) -> Jsonb:
    return Jsonb(value, dumps=_dumps)


def _cause(meta: Any) -> int | None:
    """The position of the event the executor decided this one for, if it did."""
    if not isinstance(meta, dict) or meta.get("actor") != ACTOR:
        return None
    cause = meta.get("causation")
    try:
        return int(cause) if cause is not None else None
    except (TypeError, ValueError):
        return None


def _times_of(positions: set[int], conn: psycopg.Connection[Any]) -> dict[int, dt.datetime]:
    if not positions:
        return {}
    rows = conn.execute(
        "SELECT seq, recorded_at FROM events WHERE seq = ANY(%b::bigint[])", (sorted(positions),)
    ).fetchall()
    return {int(seq): at for seq, at in rows}


def _cause_times(ends: list[StoredEvent], conn: psycopg.Connection[Any]) -> dict[int, dt.datetime]:
    """When each terminal state change happened, by position: its cause's time (see
    projections/executions.py `_times`, which dates the execution's row the same way)."""
    causes = {e.seq: c for e in ends if (c := _cause(e.meta)) is not None}
    times = _times_of(set(causes.values()), conn)
    return {seq: times[cause] for seq, cause in causes.items() if cause in times}


def _claims(attempts: list[StoredEvent], conn: psycopg.Connection[Any]) -> dict[str, dt.datetime]:
    """When each attempt ending in `attempts` was claimed, by its stream (unclaimed: absent)."""
    streams = sorted({e.stream_id for e in attempts})
    if not streams:
        return {}
    rows = conn.execute(
        "SELECT stream_id, min(recorded_at) FROM events"
        " WHERE stream_id = ANY(%b::text[]) AND type = 'AttemptClaimed' GROUP BY stream_id",
        (streams,),
    ).fetchall()
    return {str(stream): at for stream, at in rows}


# --- queries -------------------------------------------------------------------------------

SORTS = {
    "namespace": "namespace",
    "flowId": "flow_id",
    "taskId": "task_id",
    "executionId": "execution_id",
    "taskRunId": "task_run_id",
    "taskrunId": "task_run_id",
    "name": "name",
    "type": "type",
    "timestamp": "timestamp",
    "value": "value",
}
"""The fields a page of points may be sorted by, and their columns."""

_POINT_COLUMNS = (
    "execution_id, namespace, flow_id, task_id, task_run_id, attempt, name, type, value, tags,"
    " timestamp"
)


def _tags_condition(tags: Sequence[tuple[str, str]], params: list[Any]) -> str:
    parts = []
    for key, value in tags:
        parts.append("tags @> %s::jsonb")
        params.append(_jsonb({key: value}))
    return "".join(f" AND {p}" for p in parts)


def execution_points(
    conn: psycopg.Connection[Any],
    execution_id: str,
    *,
    task_id: str | None = None,
    task_run_id: str | None = None,
    tags: Sequence[tuple[str, str]] = (),
    order: Sequence[tuple[str, bool]] = (("timestamp", True),),
    offset: int = 0,
    limit: int = 10,
) -> tuple[list[dict[str, Any]], int]:
    """A page of the points of one execution (optionally of one task, one task run, with every
    tag of `tags`), sorted by `order` ((column, ascending) pairs, columns of `SORTS`), and how
    many points match in all."""
    params: list[Any] = [execution_id]
    where = "execution_id = %s"
    if task_id is not None:
        where += " AND task_id = %s"
        params.append(task_id)
    if task_run_id is not None:
        where += " AND task_run_id = %s"
        params.append(task_run_id)
    where += _tags_condition(tags, params)
    columns = set(SORTS.values())
    sort = [f"{c} {'ASC' if up else 'DESC'}" for c, up in order if c in columns]
    sort += ["seq ASC", "idx ASC"]
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(
            f"SELECT {_POINT_COLUMNS} FROM metrics WHERE {where}"
            f" ORDER BY {', '.join(sort)} OFFSET %s LIMIT %s",
            [*params, offset, limit],
        )
        rows = cur.fetchall()
    if len(rows) < limit and (rows or offset == 0):
        return rows, offset + len(rows)
    found = conn.execute(f"SELECT count(*) FROM metrics WHERE {where}", params).fetchone()
    return rows, int(found[0]) if found else 0


def _distinct(
    conn: psycopg.Connection[Any], column: str, fixed: Sequence[tuple[str, str]]
) -> list[str]:
    """The distinct non-null values of `column` among the rollup's rows matching `fixed`
    (column, value) pairs, in order: a skip scan of an index that starts with the fixed
    columns and then `column`, one probe per value rather than a read of every hour."""
    where = " AND ".join(f"{c} = %s" for c, _ in fixed)
    values = [v for _, v in fixed]
    found = conn.execute(
        "WITH RECURSIVE v(x) AS ("
        f" (SELECT {column} FROM metric_buckets WHERE {where} AND {column} IS NOT NULL"
        f" ORDER BY {column} LIMIT 1)"
        " UNION ALL"
        f" SELECT (SELECT {column} FROM metric_buckets WHERE {where} AND {column} > v.x"
        f" ORDER BY {column} LIMIT 1) FROM v WHERE v.x IS NOT NULL)"
        " SELECT x FROM v WHERE x IS NOT NULL",
        [*values, *values],
    ).fetchall()
    return [str(r[0]) for r in found]


def flow_names(conn: psycopg.Connection[Any], namespace: str, flow_id: str) -> list[str]:
    """The names of the metrics a flow's executions reported (the built-in ones included)."""
    return _distinct(conn, "name", [("namespace", namespace), ("flow_id", flow_id)])


def task_names(
    conn: psycopg.Connection[Any], namespace: str, flow_id: str, task_id: str
) -> list[str]:
    """The names of the metrics one task of a flow reported."""
    return _distinct(
        conn, "name", [("namespace", namespace), ("flow_id", flow_id), ("task_id", task_id)]
    )


def flow_tasks(conn: psycopg.Connection[Any], namespace: str, flow_id: str) -> list[str]:
    """The ids of the tasks of a flow that reported metrics (deleted or renamed ones too)."""
    return _distinct(conn, "task_id", [("namespace", namespace), ("flow_id", flow_id)])


def group_for(span: dt.timedelta) -> str:
    """Kestra's bucket for a range of `span`: minute, hour, day, week or month."""
    if span.days > 365:
        return "month"
    if span.days > 180:
        return "week"
    if span.days > 1:
        return "day"
    if span > MINUTE_UP_TO:
        return "hour"
    return "minute"


def _floor_hour(at: dt.datetime) -> dt.datetime:
    at = at.astimezone(dt.UTC)
    return at.replace(minute=0, second=0, microsecond=0)


def aggregate(
    conn: psycopg.Connection[Any],
    namespace: str,
    flow_id: str,
    name: str,
    start: dt.datetime,
    end: dt.datetime,
    *,
    task_id: str | None = None,
    tags: Sequence[tuple[str, str]] = (),
) -> tuple[str, list[tuple[dt.datetime, int, float, float, float]]]:
    """The points of metric `name` of a flow (of one of its tasks, with every tag of `tags`)
    timed from `start` to `end` (both included), per bucket of `group_for(end - start)`:
    (the grouping, [(bucket start, count, sum, min, max)] for the buckets that hold points)."""
    group = group_for(end - start)
    series: list[Any] = [namespace, flow_id, name]
    condition = "namespace = %s AND flow_id = %s AND name = %s"
    if task_id is not None:
        condition += " AND task_id = %s"
        series.append(task_id)
    condition += _tags_condition(tags, series)
    if group == "minute":
        rows = conn.execute(
            "SELECT date_trunc('minute', timestamp, 'UTC'), count(*), sum(value), min(value),"
            f" max(value) FROM metrics WHERE {condition} AND timestamp >= %s AND timestamp <= %s"
            " GROUP BY 1 ORDER BY 1",
            [*series, start, end],
        ).fetchall()
    else:
        # Whole hours from the rollup, the partial hours at both ends from the points.
        first = _floor_hour(start)
        if first < start:
            first += dt.timedelta(hours=1)
        last = _floor_hour(end)
        rows = conn.execute(
            "SELECT date_trunc(%s, t, 'UTC'), sum(n)::bigint, sum(s), min(lo), max(hi) FROM ("
            " SELECT bucket AS t, count AS n, sum AS s, min AS lo, max AS hi FROM metric_buckets"
            f" WHERE {condition} AND bucket >= %s AND bucket < %s"
            " UNION ALL"
            " SELECT timestamp, 1, value, value, value FROM metrics"
            f" WHERE {condition} AND timestamp >= %s AND timestamp < %s"
            " UNION ALL"
            " SELECT timestamp, 1, value, value, value FROM metrics"
            f" WHERE {condition} AND timestamp >= %s AND timestamp <= %s"
            ") AS p GROUP BY 1 ORDER BY 1",
            [group, *series, first, last, *series, start, first, *series, last, end],
        ).fetchall()
    return group, [(r[0], int(r[1]), float(r[2]), float(r[3]), float(r[4])) for r in rows]


def bucket_starts(group: str, start: dt.datetime, end: dt.datetime) -> list[dt.datetime]:
    """The start of every bucket of `group` from the one holding `start` to the one holding
    `end` (UTC; weeks start on Monday)."""
    at = start.astimezone(dt.UTC)
    if group == "minute":
        at = at.replace(second=0, microsecond=0)
    else:
        at = _floor_hour(at)
        if group in ("day", "week", "month"):
            at = at.replace(hour=0)
        if group == "week":
            at -= dt.timedelta(days=at.weekday())
        if group == "month":
            at = at.replace(day=1)
    found = []
    while at <= end:
        found.append(at)
        if group == "month":
            at = at.replace(year=at.year + at.month // 12, month=at.month % 12 + 1)
        else:
            at += {
                "minute": dt.timedelta(minutes=1),
                "hour": dt.timedelta(hours=1),
                "day": dt.timedelta(days=1),
                "week": dt.timedelta(weeks=1),
            }[group]
    return found
