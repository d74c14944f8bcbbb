"""The dashboard read models: the `dashboards` table (custom dashboards, for listing), the
queries of their charts, and the default dashboard's statistics.

A chart's query is compiled from a checked chart (engine/dashboards.py) into one parameterized
SELECT over the executions, logs or metrics read model. Every SQL fragment comes from the closed
lists below (`SOURCES`, `AGGREGATES`, the operations); every value a dashboard or a request
holds is a parameter. The caller's namespace scope (api/auth.py `namespace_filter`) is ANDed
to every query, and so are the filters a request adds: a request can narrow a chart's `where`,
never replace it (Kestra issue #16812 came from replacing it).

The default dashboard reads the hourly rollups the executions projection keeps
(`execution_stats`, `execution_durations`, migrations/0012): counts per state per time bucket,
per namespace and flow, in one query with grouping sets, so "All" and the per-state counts come
from the same rows of the same snapshot and always add up.
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, NamedTuple

import psycopg

from engine import events as ev
from engine.dashboards import (
    COMPARISONS,
    DATE,
    FIELDS,
    LABELS,
    LEVELS,
    Chart,
    Column,
    Condition,
    Data,
    parse_date,
)
from engine.errors import InvalidRequest, TiercelError
from engine.execution import iso
from engine.store import StoredEvent
from projections import executions as executions_model

STATEMENT_TIMEOUT = "30s"
"""The longest a chart's query may run (a REGEX over millions of log lines, say)."""
MAX_ROWS = 10_000
"""Rows one chart answers at most (a page of a table, or every group of a chart)."""


class ChartTooSlow(TiercelError):
    """A chart's query ran past its time limit (and was stopped)."""

    status = 503


class SourceUnavailable(TiercelError):
    """A chart reads a read model this database does not have (yet)."""

    status = 503


# --- the dashboards table ---------------------------------------------------------------------


class DashboardsProjection:
    """The latest source of each custom dashboard (deleted ones stay, marked)."""

    name = "dashboards"
    types = ("DashboardCreated", "DashboardUpdated", "DashboardDeleted")
    tables = ("dashboards",)

    def apply(self, batch: list[StoredEvent], conn: psycopg.Connection[Any]) -> None:
        for e in batch:
            event = e.event
            actor = e.meta.get("actor")
            if isinstance(event, ev.DashboardCreated | ev.DashboardUpdated):
                created = isinstance(event, ev.DashboardCreated)
                conn.execute(
                    "INSERT INTO dashboards (id, title, source, deleted, created, updated,"
                    " updated_by, last_seq) VALUES (%s, %s, %s, false, %s, %s, %s, %s)"
                    " ON CONFLICT (id) DO UPDATE SET title = EXCLUDED.title,"
                    " source = EXCLUDED.source, deleted = false,"
                    " created = CASE WHEN %s THEN EXCLUDED.created ELSE dashboards.created END,"
                    " updated = EXCLUDED.updated, updated_by = EXCLUDED.updated_by,"
                    " last_seq = EXCLUDED.last_seq"
                    # Applied once: a replayed event finds the row past it.
                    " WHERE dashboards.last_seq < EXCLUDED.last_seq",
                    (
                        event.dashboardId,
                        event.title,
                        event.source,
                        e.recorded_at,
                        e.recorded_at,
                        actor,
                        e.seq,
                        created,
                    ),
                )
            elif isinstance(event, ev.DashboardDeleted):
                conn.execute(
                    "UPDATE dashboards SET deleted = true, updated = %s, updated_by = %s,"
                    " last_seq = %s WHERE id = %s AND last_seq < %s",
                    (e.recorded_at, actor, e.seq, event.dashboardId, e.seq),
                )


SORTS = {"title": "lower(title)", "id": "id", "updated": "updated", "created": "created"}
"""What `GET /api/v1/dashboards?sort=` sorts by."""


def list_dashboards(
    conn: psycopg.Connection[Any],
    *,
    q: str | None,
    page: int,
    size: int,
    sort: str = "title",
    descending: bool = False,
) -> tuple[list[dict[str, Any]], int]:
    """A page of the dashboards not deleted (`q`: words of the title or id), and how many."""
    where, params = "NOT deleted", []
    if q:
        like = "%" + _escape_like(q.lower()) + "%"
        where += " AND (lower(title) LIKE %s OR lower(id) LIKE %s)"
        params += [like, like]
    order = SORTS[sort] + (" DESC" if descending else "")
    rows = conn.execute(
        "SELECT id, title, source, created, updated, updated_by, count(*) OVER () AS total"
        f" FROM dashboards WHERE {where} ORDER BY {order}, id LIMIT %s OFFSET %s",
        [*params, size, (page - 1) * size],
    ).fetchall()
    total = int(rows[0][6]) if rows else 0
    if not rows and page > 1:
        counted = conn.execute(f"SELECT count(*) FROM dashboards WHERE {where}", params)
        total = int((counted.fetchone() or (0,))[0])
    found = [
        {
            "id": r[0],
            "title": r[1],
            "sourceCode": r[2],
            "created": iso(r[3]),
            "updated": iso(r[4]),
            "updatedBy": r[5],
        }
        for r in rows
    ]
    return found, total


def _escape_like(value: str) -> str:
    return value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


# --- chart queries -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Source:
    """A read model a chart can read: its table, the date its time range applies to, and the
    SQL of each field (written here, never taken from a request)."""

    table: str
    date: str
    fields: dict[str, str]
    labels: bool = False


SOURCES: dict[str, Source] = {
    "executions": Source(
        table="executions",
        date="start_date",
        fields={
            "ID": "id",
            "NAMESPACE": "namespace",
            "FLOW_ID": "flow_id",
            "FLOW_REVISION": "flow_revision",
            "STATE": "state",
            "DURATION": "extract(epoch FROM end_date - start_date)::double precision",
            "START_DATE": "start_date",
            "END_DATE": "end_date",
            "TRIGGER_EXECUTION_ID": "coalesce(parent_id, trigger -> 'variables' ->> 'executionId')",
        },
        labels=True,
    ),
    "logs": Source(
        table="logs",
        date="timestamp",
        fields={
            "NAMESPACE": "namespace",
            "FLOW_ID": "flow_id",
            "TASK_ID": "task_id",
            "EXECUTION_ID": "execution_id",
            "TASK_RUN_ID": "task_run_id",
            "DATE": "timestamp",
            "LEVEL": "level",
            "MESSAGE": "message",
        },
    ),
    "metrics": Source(
        table="metrics",
        date="timestamp",
        fields={
            "NAMESPACE": "namespace",
            "FLOW_ID": "flow_id",
            "TASK_ID": "task_id",
            "EXECUTION_ID": "execution_id",
            "TASK_RUN_ID": "task_run_id",
            "TYPE": "type",
            "NAME": "name",
            "VALUE": "value",
            "DATE": "timestamp",
        },
    ),
}
AGGREGATES = {"COUNT": "count", "SUM": "sum", "AVG": "avg", "MIN": "min", "MAX": "max"}
_LABEL_VALUE = (
    "(SELECT l ->> 'value' FROM jsonb_array_elements("
    "CASE jsonb_typeof(labels) WHEN 'array' THEN labels ELSE '[]'::jsonb END) AS l"
    " WHERE l ->> 'key' = %s LIMIT 1)"
)
_LABEL_PAIR = "label_pairs @> ARRAY[jsonb_build_array(%s::text, %s::text)::text]"
"""A label's key and value, as `execution_label_pairs` (migrations/0009) lists them: the GIN
index on `label_pairs` answers it."""

UNITS = (
    (dt.timedelta(hours=1), "minute"),
    (dt.timedelta(days=2), "hour"),
    (dt.timedelta(days=120), "day"),
    (dt.timedelta(days=500), "week"),
)
"""The time bucket a date column is grouped by, from the range shown: the first whose range
reaches it (a month beyond)."""
INTERVALS = {"minute": "PT1M", "hour": "PT1H", "day": "P1D", "week": "P7D", "month": "P1M"}


def bucket_unit(span: dt.timedelta, smallest: str = "minute") -> str:
    """The `date_trunc` unit for a range of `span` (never below `smallest`)."""
    order = [u for _, u in UNITS] + ["month"]
    unit = next((u for limit, u in UNITS if span <= limit), "month")
    return order[max(order.index(unit), order.index(smallest))]


@dataclass
class Query:
    """A chart's query: its SQL, parameters, and what each selected column is."""

    sql: str
    params: list[Any]
    names: list[str]
    dates: set[int] = field(default_factory=set)
    unit: str = "day"


def _field(source: Source, name: str | None, label_key: str | None) -> tuple[str, list[Any]]:
    if name == "LABELS":
        return _LABEL_VALUE, [label_key]
    return source.fields[name or ""], []


def _condition(source: Source, c: Condition, kinds: dict[str, str]) -> tuple[str, list[Any]]:
    """A checked filter as SQL over `source` and its parameters."""
    if c.type == "OR":
        parts = [_condition(source, inner, kinds) for inner in c.anyOf]
        return "(" + " OR ".join(p[0] for p in parts) + ")", [x for p in parts for x in p[1]]
    kind = kinds.get(c.field or "")
    if kind == LABELS and c.type in ("EQUAL_TO", "NOT_EQUAL_TO"):
        pair = (_LABEL_PAIR, [c.labelKey, str(c.value)])
        return pair if c.type == "EQUAL_TO" else (f"NOT ({pair[0]})", pair[1])
    expr, params = _field(source, c.field, c.labelKey)
    value = _typed(c.value, kind)
    if c.type == "EQUAL_TO":
        return f"{expr} = %s", [*params, value]
    if c.type == "NOT_EQUAL_TO":
        return f"{expr} <> %s", [*params, value]
    if c.type in ("IN", "NOT_IN"):
        values = [_typed(v, kind) for v in c.values]
        cast = {DATE: "timestamptz[]", "number": "double precision[]"}.get(kind or "", "text[]")
        op = "= ANY" if c.type == "IN" else "<> ALL"
        return f"{expr} {op}(%s::{cast})", [*params, values]
    comparisons = {
        "GREATER_THAN": ">",
        "GREATER_THAN_OR_EQUAL_TO": ">=",
        "LESS_THAN": "<",
        "LESS_THAN_OR_EQUAL_TO": "<=",
    }
    if c.type in comparisons:
        return f"{expr} {comparisons[c.type]} %s", [*params, value]
    if c.type == "STARTS_WITH":
        return f"{expr} LIKE %s", [*params, _escape_like(str(value)) + "%"]
    if c.type == "ENDS_WITH":
        return f"{expr} LIKE %s", [*params, "%" + _escape_like(str(value))]
    if c.type == "CONTAINS":
        return f"{expr} LIKE %s", [*params, "%" + _escape_like(str(value)) + "%"]
    if c.type == "REGEX":
        return f"{expr} ~ %s", [*params, str(value)]
    if c.type == "IS_NULL":
        return f"{expr} IS NULL", params
    if c.type == "IS_NOT_NULL":
        return f"{expr} IS NOT NULL", params
    raise AssertionError(f"unchecked filter type {c.type}")  # engine/dashboards.py checks it


def _typed(value: Any, kind: str | None) -> Any:
    if kind == DATE and value is not None:
        return parse_date(value)
    if kind == "number" and value is not None:
        return float(value)
    return value


def _where(
    data: Data,
    source: Source,
    start: dt.datetime,
    end: dt.datetime,
    scope: tuple[str, list[Any]],
    extra: list[Condition],
) -> tuple[list[str], list[Any]]:
    kinds = FIELDS[data.source]
    parts = [f"{source.date} >= %s", f"{source.date} <= %s", scope[0]]
    params: list[Any] = [start, end, *scope[1]]
    for c in [*data.where, *extra]:
        sql, p = _condition(source, c, kinds)
        parts.append(sql)
        params += p
    return parts, params


@dataclass(frozen=True)
class Rollup:
    """A rollup that answers charts over `source`: its table, its bucket's column and grain,
    the SQL (over a rollup row) of each field it keeps, and of the points a row stands for:
    how many, and their sum, minimum and maximum of `value`."""

    source: str
    table: str
    bucket: str
    grain: str
    """'minute' or 'hour': buckets start on whole minutes or hours, UTC."""
    fields: dict[str, str]
    parts: tuple[str, str, str, str]
    """Aggregates of the rollup's rows: how many points, their sum, minimum and maximum."""
    value: str | None = None
    """The field whose SUM, AVG, MIN and MAX the parts keep (None: the rollup only counts)."""
    collated: frozenset[str] = frozenset()
    """Fields kept byte-wise (COLLATE "C"): they sort otherwise than in the rows."""


_NO_VALUE = ("NULL::double precision",) * 3
_COUNT_ONLY = ("sum(count)", *_NO_VALUE)


ROLLUPS: dict[str, tuple[Rollup, ...]] = {
    # projections/executions.py keeps it: executions by current state and hour of their start.
    "executions": (
        Rollup(
            source="executions",
            table="execution_stats",
            bucket="bucket",
            grain="hour",
            fields={"NAMESPACE": "namespace", "FLOW_ID": "flow_id", "STATE": "state"},
            parts=_COUNT_ONLY,
            collated=frozenset({"NAMESPACE", "FLOW_ID"}),
        ),
    ),
    # projections/logs.py keeps them (migrations/0015): a line without a known namespace or
    # flow is counted under '', which nullif gives back as the NULL the line holds.
    "logs": (
        Rollup(
            source="logs",
            table="log_counts_hourly",
            bucket="hour",
            grain="hour",
            fields={"NAMESPACE": "nullif(namespace, '')", "LEVEL": "level"},
            parts=_COUNT_ONLY,
            collated=frozenset({"NAMESPACE"}),
        ),
        Rollup(
            source="logs",
            table="log_counts",
            bucket="minute",
            grain="minute",
            fields={
                "NAMESPACE": "nullif(namespace, '')",
                "FLOW_ID": "nullif(flow_id, '')",
                "LEVEL": "level",
            },
            parts=_COUNT_ONLY,
            collated=frozenset({"NAMESPACE", "FLOW_ID"}),
        ),
    ),
    # projections/metrics.py keeps it: per hour and series, count, sum, min and max of values.
    "metrics": (
        Rollup(
            source="metrics",
            table="metric_buckets",
            bucket="bucket",
            grain="hour",
            fields={
                "NAMESPACE": "namespace",
                "FLOW_ID": "flow_id",
                "TASK_ID": "task_id",
                "NAME": "name",
                "TYPE": "type",
            },
            parts=("sum(count)", "sum(sum)", "min(min)", "max(max)"),
            value="VALUE",
        ),
    ),
}
"""The rollups of each source, the coarsest first: a chart reads the first that answers it."""

ROLLUP_DATES = {"executions": "START_DATE", "logs": "DATE", "metrics": "DATE"}
"""The date each rollup buckets by."""
NEVER_NULL = {
    "executions": frozenset({"ID", "NAMESPACE", "FLOW_ID", "FLOW_REVISION", "STATE", "START_DATE"}),
    "logs": frozenset({"EXECUTION_ID", "DATE", "LEVEL", "MESSAGE"}),
    "metrics": frozenset({"EXECUTION_ID", "NAME", "TYPE", "VALUE", "DATE"}),
}
"""Fields every row has (NOT NULL columns): counting one counts the rows."""
_ORDERED = frozenset({*COMPARISONS, "REGEX"})
"""Filters whose answer depends on a collation (what a byte-wise field cannot answer alike)."""
_GRAINS = ("minute", "hour", "day", "week", "month")
_GRAIN = {"minute": dt.timedelta(minutes=1), "hour": dt.timedelta(hours=1)}


def _leaves(conditions: list[Condition]) -> list[Condition]:
    return [leaf for c in conditions for leaf in (_leaves(c.anyOf) if c.type == "OR" else [c])]


def rollup_for(data: Data, extra: list[Condition], unit: str) -> Rollup | None:
    """The rollup that answers `data` (with the request's filters `extra`) exactly, or None:
    every column groups by a field the rollup keeps or by the date at its grain or coarser,
    every aggregation is a COUNT (of rows, or of a kept field) or one over the value the rollup
    sums, and every filter (where, request, numerator) is on a kept field."""
    date = ROLLUP_DATES.get(data.source)
    if date is None or not (data.kpi or any(c.agg for c in data.columns)):
        return None
    wanted: set[str] = set()
    dated = False
    valued: set[str] = set()
    for c in data.columns:
        if c.agg is None:
            if c.field == date:
                dated = True
            else:
                wanted.add(c.field or "")
        elif c.agg == "COUNT":
            if c.field is not None and c.field not in NEVER_NULL[data.source]:
                wanted.add(c.field)
        else:
            valued.add(c.field or "")
    ordered: set[str] = set()
    for leaf in _leaves([*data.where, *extra, *data.numerator]):
        wanted.add(leaf.field or "")
        if leaf.type in _ORDERED:
            ordered.add(leaf.field or "")
    for rollup in ROLLUPS[data.source]:
        if dated and _GRAINS.index(rollup.grain) > _GRAINS.index(unit):
            continue
        if not wanted <= rollup.fields.keys() or valued - {rollup.value}:
            continue
        if ordered & rollup.collated:
            continue
        return rollup
    return None


def _floor(at: dt.datetime, grain: str) -> dt.datetime:
    at = at.astimezone(dt.UTC).replace(second=0, microsecond=0)
    return at.replace(minute=0) if grain == "hour" else at


_ORIGIN = dt.datetime(2001, 1, 1, tzinfo=dt.UTC)
"""A Monday, midnight UTC: minutes, hours, days and weeks binned from it are date_trunc's."""
_BINS = {
    "minute": dt.timedelta(minutes=1),
    "hour": dt.timedelta(hours=1),
    "day": dt.timedelta(days=1),
    "week": dt.timedelta(days=7),
}


def _bucketed(date: str, unit: str) -> tuple[str, list[Any]]:
    """`date_trunc(unit, date, 'UTC')`, as arithmetic where it is (no time zone per row)."""
    if unit in _BINS:
        return f"date_bin(%s, {date}, %s)", [_BINS[unit], _ORIGIN]
    return f"date_trunc(%s, {date}, 'UTC')", [unit]


def _subtracts(data: Data) -> bool:
    """Whether a bucket's rollup row may stand for part of it, less the rows outside: its
    counts and sums subtract; its minimum and maximum do not."""
    return all(c.agg not in ("MIN", "MAX") for c in data.columns)


class _Span(NamedTuple):
    """Dates from `low` to `high`, each end in or out as said."""

    low: dt.datetime
    high: dt.datetime
    low_in: bool = True
    high_in: bool = False


def _spans(
    start: dt.datetime, end: dt.datetime, grain: str, subtract: bool, now: dt.datetime
) -> tuple[dt.datetime, dt.datetime, list[_Span], list[_Span]]:
    """How [start, end] is read from a rollup of `grain`: its buckets in [first, last) whole,
    plus the rows of the spans `added`, less the rows of the spans `taken`, so
    `(first, last, added, taken)`.

    A partial bucket at an end is read row by row; or, when `subtract` allows, as its rollup
    row less the rows of the bucket outside the range, whichever part spans the shorter time.
    No row is dated after `now`: a range ending now is read from its last bucket's rollup row
    less nothing, however far into the hour it is (a dashboard's range usually ends now, and
    the current hour holds the newest, busiest rows)."""
    step = _GRAIN[grain]
    lead = _floor(start, grain)
    first = lead if lead == start else lead + step
    last = _floor(end, grain)
    if first >= last:
        return start, start, [_Span(start, end, high_in=True)], []  # no whole bucket: every row
    added: list[_Span] = []
    taken: list[_Span] = []
    if first > start:
        if subtract and start - lead < min(first, now) - start:
            taken.append(_Span(lead, start))
            first = lead
        else:
            added.append(_Span(start, first))
    if subtract and min(last + step, now) - end < end - last:
        taken.append(_Span(end, last + step, low_in=False))
        last = last + step
    else:
        added.append(_Span(last, end, high_in=True))
    return first, last, added, taken


def _within(date: str, spans: list[_Span], params: list[Any]) -> str:
    """SQL of `date` in any of `spans`."""
    parts = []
    for span in spans:
        low, high = (">=" if span.low_in else ">"), ("<=" if span.high_in else "<")
        parts.append(f"({date} {low} %s AND {date} {high} %s)")
        params.extend([span.low, span.high])
    return "(" + " OR ".join(parts) + ")"


def _rollup_rows(
    data: Data,
    rollup: Rollup,
    *,
    start: dt.datetime,
    end: dt.datetime,
    scope: tuple[str, list[Any]],
    extra: list[Condition],
    outputs: list[str],
    unit: str | None,
    now: dt.datetime | None = None,
) -> tuple[str, list[Any]]:
    """A UNION ALL of the rollup's rows for the whole buckets of [start, end] and of the rows
    of the partial buckets at its ends (added, or taken off a bucket's rollup row: `_spans`),
    filtered alike and each summed per group, as columns `t` (the date truncated to `unit`;
    none without a unit), `o0`.. (the `outputs` fields), `n, s, lo, hi` (how many points,
    their sum, minimum and maximum of the value)."""
    first, last, added, taken = _spans(
        start, end, rollup.grain, _subtracts(data), now or dt.datetime.now(dt.UTC)
    )
    rows = SOURCES[data.source]
    kinds = FIELDS[data.source]
    kept = Source(table=rollup.table, date=rollup.bucket, fields=rollup.fields)
    params: list[Any] = []

    def branch(source: Source, parts: tuple[str, ...], spans: list[_Span] | None) -> str:
        select = []
        if unit is not None:
            expr, p = _bucketed(source.date, unit)
            select.append(f"{expr} AS t")
            params.extend(p)
        for i, name in enumerate(outputs):
            expr = source.fields[name]
            if source is kept and name in rollup.collated:
                expr = f'({expr}) COLLATE "default"'  # sorted as the rows' field is
            select.append(f"{expr} AS o{i}")
        groups = len(select)
        select += [f"{p} AS {a}" for p, a in zip(parts, ("n", "s", "lo", "hi"), strict=True)]
        if spans is None:
            when = f"{rollup.bucket} >= %s AND {rollup.bucket} < %s"
            params.extend([first, last])
        else:
            when = _within(source.date, spans, params)
        where = [when, scope[0]]
        params.extend(scope[1])
        for c in [*data.where, *extra]:
            sql, p = _condition(source, c, kinds)
            where.append(sql)
            params.extend(p)
        sql = f"SELECT {', '.join(select)} FROM {source.table} WHERE {' AND '.join(where)}"
        if groups:
            # Summed here, not after the union: the rollup's rows are many, the groups few.
            sql += " GROUP BY " + ", ".join(str(i) for i in range(1, groups + 1))
        return sql

    value = rows.fields[rollup.value] if rollup.value else None
    parts = (
        ("count(*)", f"sum({value})", f"min({value})", f"max({value})")
        if value
        else ("count(*)", *_NO_VALUE)
    )
    branches = []
    if first < last:
        branches.append(branch(kept, rollup.parts, None))
    if added:
        branches.append(branch(rows, parts, added))
    if taken:
        less = ("-count(*)", f"-sum({value})" if value else _NO_VALUE[0], *_NO_VALUE[1:])
        branches.append(branch(rows, less, taken))
    return " UNION ALL ".join(f"({b})" for b in branches), params


def _rollup_aggregate(source: str, column: Column, outputs: list[str], only: str = "") -> str:
    """A column's aggregation over `_rollup_rows`, of the rows where `only` holds (if given)."""
    conditions = [only] if only else []
    if column.agg == "COUNT":
        if column.field is not None and column.field not in NEVER_NULL[source]:
            conditions.append(f"o{outputs.index(column.field)} IS NOT NULL")
        return f"coalesce(sum(n){_filter(conditions)}, 0)::bigint"
    where = _filter(conditions)
    if column.agg == "MIN":
        return f"min(lo){where}"
    if column.agg == "MAX":
        return f"max(hi){where}"
    # No point left once the rows outside the range are taken off a bucket's row: NULL, as
    # sum() and avg() of no row are.
    if column.agg == "SUM":
        return f"CASE WHEN sum(n){where} > 0 THEN sum(s){where} END"
    return f"sum(s){where} / nullif(sum(n){where}, 0)::double precision"  # AVG, as avg() is


def _filter(conditions: list[str]) -> str:
    return f" FILTER (WHERE {' AND '.join(conditions)})" if conditions else ""


def rollup_query(
    data: Data,
    *,
    start: dt.datetime,
    end: dt.datetime,
    scope: tuple[str, list[Any]],
    extra: list[Condition],
    page: int,
    size: int,
) -> Query | None:
    """The query of a (non-KPI) chart read from a rollup (`rollup_for`) for the whole buckets
    of its range and from the rows for the partial ones at its ends; None when no rollup
    answers it, and only the rows do. Both give the same rows: each rollup is kept in the
    transaction that writes the rows it counts, a bucket's date truncated to an hour, day,
    week or month is the rows' date truncated alike, and the partial buckets at the ends are
    read row by row or as their rollup rows less the rows outside the range (`_spans`)."""
    if data.kpi:
        return None
    unit = bucket_unit(end - start)
    rollup = rollup_for(data, extra, unit)
    if rollup is None:
        return None
    date = ROLLUP_DATES[data.source]
    outputs = sorted(
        {c.field for c in data.columns if c.field and c.field != date and c.field in rollup.fields}
    )
    dated = any(c.agg is None and c.field == date for c in data.columns)
    inner, inner_params = _rollup_rows(
        data,
        rollup,
        start=start,
        end=end,
        scope=scope,
        extra=extra,
        outputs=outputs,
        unit=unit if dated else None,
    )
    select: list[str] = []
    positions: list[int] = []
    dates: set[int] = set()
    for i, c in enumerate(data.columns, 1):
        if c.agg is None:
            positions.append(i)
            if c.field == date:
                dates.add(i - 1)
                select.append("t")
            else:
                select.append(f"o{outputs.index(c.field or '')}")
        else:
            select.append(_rollup_aggregate(data.source, c, outputs))
    sql = f"SELECT {', '.join(select)}, count(*) OVER () FROM ({inner}) AS u"
    if positions:
        # A group the rows have holds a row; one whose points are all taken off (outside the
        # range) is none of theirs.
        sql += " GROUP BY " + ", ".join(str(i) for i in positions) + " HAVING sum(n) > 0"
    names = [c.name for c in data.columns]
    order = [f"{names.index(o.column) + 1} {o.order} NULLS LAST" for o in data.orderBy]
    order = order or [f"{i} ASC NULLS LAST" for i in positions]
    if order:
        sql += " ORDER BY " + ", ".join(order)
    sql += " LIMIT %s OFFSET %s"
    return Query(
        sql=sql,
        params=[*inner_params, size, (page - 1) * size],
        names=names,
        dates=dates,
        unit=unit,
    )


def rollup_kpi(
    data: Data,
    *,
    start: dt.datetime,
    end: dt.datetime,
    scope: tuple[str, list[Any]],
    extra: list[Condition],
) -> tuple[str, list[Any]] | None:
    """A KPI's `SELECT numerator, total` read from a rollup as `rollup_query` reads a chart's
    rows (the numerator's filters on the rollup's fields too); None when no rollup answers it."""
    rollup = rollup_for(data, extra, bucket_unit(end - start))
    if rollup is None or not data.kpi:
        return None
    column = data.columns[0]
    leaves = _leaves(data.numerator)
    outputs = sorted(
        {leaf.field or "" for leaf in leaves}
        | ({column.field} & rollup.fields.keys() if column.field else set())
    )
    inner, params = _rollup_rows(
        data, rollup, start=start, end=end, scope=scope, extra=extra, outputs=outputs, unit=None
    )
    numerator, numerator_params = "true", list[Any]()
    if data.numerator:
        named = Source(table="u", date="t", fields={f: f"o{i}" for i, f in enumerate(outputs)})
        parts = [_condition(named, c, FIELDS[data.source]) for c in data.numerator]
        numerator = " AND ".join(p[0] for p in parts)
        numerator_params = [x for p in parts for x in p[1]]
    part = _rollup_aggregate(data.source, column, outputs, f"({numerator})")
    whole = _rollup_aggregate(data.source, column, outputs)
    uses = part.count(" FILTER (WHERE ")  # AVG filters twice: the numerator's parameters too
    return (
        f"SELECT {part}, {whole} FROM ({inner}) AS u",
        [*(numerator_params * uses), *params],
    )


def chart_query(
    data: Data,
    *,
    start: dt.datetime,
    end: dt.datetime,
    scope: tuple[str, list[Any]],
    extra: list[Condition],
    page: int,
    size: int,
) -> Query:
    """The SELECT of a (non-KPI) chart's rows over [start, end]: one row per group of its
    columns without agg (a date column grouped by the bucket the range calls for), or, with no
    aggregation at all, the rows themselves, newest first; `count(*) OVER ()` their number."""
    source = SOURCES[data.source]
    kinds = FIELDS[data.source]
    unit = bucket_unit(end - start)
    grouped = any(c.agg for c in data.columns)
    select: list[str] = []
    params: list[Any] = []
    dims: list[int] = []
    dates: set[int] = set()
    for i, c in enumerate(data.columns, 1):
        if c.agg is None:
            expr, p = _field(source, c.field, c.labelKey)
            if kinds.get(c.field or "") == DATE:
                dates.add(i - 1)
                if grouped:
                    expr, p = f"date_trunc(%s, {expr}, 'UTC')", [unit, *p]
            dims.append(i)
        elif c.field is None:
            expr, p = "count(*)", []
        else:
            inner, p = _field(source, c.field, c.labelKey)
            expr = f"{AGGREGATES[c.agg]}({inner})"
        select.append(f"{expr} AS c{i}")
        params += p
    where, where_params = _where(data, source, start, end, scope, extra)
    sql = f"SELECT {', '.join(select)}, count(*) OVER () FROM {source.table}"
    sql += " WHERE " + " AND ".join(where)
    params += where_params
    if grouped and dims:
        sql += " GROUP BY " + ", ".join(str(i) for i in dims)
    names = [c.name for c in data.columns]
    order = [f"{names.index(o.column) + 1} {o.order} NULLS LAST" for o in data.orderBy]
    if not order:
        if grouped:
            order = [f"{i} ASC NULLS LAST" for i in dims]
        else:
            first_date = min(dates, default=None)
            order = [f"{first_date + 1} DESC"] if first_date is not None else ["1 ASC"]
    if order:
        sql += " ORDER BY " + ", ".join(order)
    sql += " LIMIT %s OFFSET %s"
    params += [size, (page - 1) * size]
    return Query(sql=sql, params=params, names=names, dates=dates, unit=unit)


def _has_table(conn: psycopg.Connection[Any], table: str) -> bool:
    return conn.execute("SELECT to_regclass(%s)", (table,)).fetchone() != (None,)


def _ready(conn: psycopg.Connection[Any], source: str) -> None:
    table = SOURCES[source].table
    if conn.execute("SELECT to_regclass(%s)", (table,)).fetchone() == (None,):
        raise SourceUnavailable(
            f"This server has no {source} read model yet (table {table}): charts over "
            f"{source} answer once its migration is applied (tiercel db migrate)"
        )


def _plain(value: Any) -> Any:
    if isinstance(value, dt.datetime):
        return iso(value)
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def run_chart(
    conn: psycopg.Connection[Any],
    chart: Chart,
    *,
    start: dt.datetime,
    end: dt.datetime,
    scope: tuple[str, list[Any]],
    extra: list[Condition],
    page: int,
    size: int,
    rollup: bool = True,
) -> dict[str, Any]:
    """A chart's rows as Kestra's PagedResults: `{results: [{column: value}], total}`; a KPI
    answers one row `{value, numerator, total}`. A chart a rollup answers (`rollup_for`) reads
    it (`rollup_query`, `rollup_kpi`) unless `rollup` is False: the same rows either way."""
    data = chart.data
    assert data is not None
    _ready(conn, data.source)
    try:
        with conn.transaction():
            conn.execute(f"SET LOCAL statement_timeout = '{STATEMENT_TIMEOUT}'")
            if data.kpi:
                return _run_kpi(conn, chart, data, start, end, scope, extra, rollup)
            query = None
            if rollup:
                query = rollup_query(
                    data, start=start, end=end, scope=scope, extra=extra, page=page, size=size
                )
                kept = rollup_for(data, extra, bucket_unit(end - start))
                if query is not None and kept is not None and not _has_table(conn, kept.table):
                    query = None
            if query is None:
                query = chart_query(
                    data, start=start, end=end, scope=scope, extra=extra, page=page, size=size
                )
            rows = conn.execute(query.sql, query.params, prepare=False).fetchall()
    except psycopg.errors.InvalidRegularExpression as exc:
        # Python's and PostgreSQL's regular expressions differ a little: what the check let
        # through, PostgreSQL may still refuse.
        raise InvalidRequest(
            f"Chart {chart.id}: a REGEX filter is not a regular expression PostgreSQL "
            f"reads: {exc.diag.message_primary}"
        ) from None
    except psycopg.errors.QueryCanceled:
        raise ChartTooSlow(
            f"Chart {chart.id} took longer than {STATEMENT_TIMEOUT} to answer: ask for a "
            "shorter range or narrower filters"
        ) from None
    total = int(rows[0][-1]) if rows else 0
    results = [
        {name: _plain(value) for name, value in zip(query.names, row[:-1], strict=True)}
        for row in rows
    ]
    return {"results": results, "total": total, "interval": INTERVALS[query.unit]}


def _run_kpi(
    conn: psycopg.Connection[Any],
    chart: Chart,
    data: Data,
    start: dt.datetime,
    end: dt.datetime,
    scope: tuple[str, list[Any]],
    extra: list[Condition],
    rollup: bool = True,
) -> dict[str, Any]:
    kept = rollup_for(data, extra, bucket_unit(end - start)) if rollup else None
    counted = None
    if kept is not None and _has_table(conn, kept.table):
        counted = rollup_kpi(data, start=start, end=end, scope=scope, extra=extra)
    if counted is not None:
        sql, all_params = counted
    else:
        sql, all_params = _kpi_sql(data, start, end, scope, extra)
    row = conn.execute(sql, all_params, prepare=False).fetchone()
    numerator, total = (_plain(row[0]), _plain(row[1])) if row else (None, None)
    percentage = str(chart.options.get("numberType", "")).upper() == "PERCENTAGE"
    value: Any = total
    if data.numerator:
        value = numerator
        if percentage:
            value = 100.0 * numerator / total if numerator is not None and total else None
    return {
        "results": [{"value": value, "numerator": numerator, "total": total}],
        "total": 1,
    }


def _kpi_sql(
    data: Data,
    start: dt.datetime,
    end: dt.datetime,
    scope: tuple[str, list[Any]],
    extra: list[Condition],
) -> tuple[str, list[Any]]:
    """A KPI's `SELECT numerator, total` over the rows themselves."""
    source = SOURCES[data.source]
    column = data.columns[0]
    if column.field is None:
        expr, params = "count(*)", list[Any]()
    else:
        inner, params = _field(source, column.field, column.labelKey)
        expr = f"{AGGREGATES[column.agg or 'COUNT']}({inner})"
    where, where_params = _where(data, source, start, end, scope, extra)
    numerator_sql, numerator_params = "true", []
    if data.numerator:
        parts = [_condition(source, c, FIELDS[data.source]) for c in data.numerator]
        numerator_sql = " AND ".join(p[0] for p in parts)
        numerator_params = [x for p in parts for x in p[1]]
    sql = (
        f"SELECT {expr} FILTER (WHERE {numerator_sql}), {expr} FROM {source.table}"
        " WHERE " + " AND ".join(where)
    )
    return sql, [*params, *numerator_params, *params, *where_params]


def flow_description(conn: psycopg.Connection[Any], namespace: str, flow_id: str) -> str | None:
    """A deployed flow's description (for a Markdown chart's FlowDescription), or None when
    the flow is not deployed."""
    row = conn.execute(
        "SELECT coalesce(description, '') FROM flows WHERE namespace = %s AND flow_id = %s"
        " AND NOT deleted",
        (namespace, flow_id),
    ).fetchone()
    return None if row is None else str(row[0])


# --- the default dashboard ---------------------------------------------------------------------


@dataclass
class StatsFilter:
    """What the default dashboard shows: a range of whole hours and optional filters."""

    start: dt.datetime
    end: dt.datetime
    """Exclusive."""
    namespace: str | None = None
    """This namespace and those under it."""
    flow_id: str | None = None
    states: list[str] = field(default_factory=list)
    failures: int = 10
    """How many of the latest failed executions to list."""


PERCENTILES = (("p50", 0.5), ("p90", 0.9), ("p99", 0.99))
TOP_FLOWS = 1000
"""Flows the per-flow breakdown lists at most (those with the most executions)."""


def _stats_where(f: StatsFilter, scope: tuple[str, list[Any]], date: str) -> tuple[str, list[Any]]:
    parts = [f"{date} >= %s", f"{date} < %s", scope[0]]
    params: list[Any] = [f.start, f.end, *scope[1]]
    if f.namespace:
        parts.append("(namespace = %s OR namespace LIKE %s)")
        params += [f.namespace, _escape_like(f.namespace) + ".%"]
    if f.flow_id:
        parts.append("flow_id = %s")
        params.append(f.flow_id)
    if f.states:
        parts.append("state = ANY(%s::text[])")
        params.append(list(f.states))
    return " AND ".join(parts), params


_STATS_SQL = (
    "WITH g AS MATERIALIZED ("
    " SELECT bucket, namespace, flow_id, state, sum(count) AS c FROM execution_stats"
    " WHERE {where} GROUP BY GROUPING SETS ((bucket, state), (namespace, flow_id, state)))"
    " SELECT 0, date_trunc(%s, bucket, 'UTC'), NULL::text, NULL::text, state,"
    " coalesce(sum(c), 0)::bigint, 1, 1, grouping(state)"
    " FROM g WHERE bucket IS NOT NULL GROUP BY GROUPING SETS ((2, state), (2))"
    " UNION ALL"
    " SELECT 1, NULL, namespace, flow_id, state, coalesce(sum(c), 0)::bigint,"
    " grouping(namespace), grouping(flow_id), grouping(state)"
    " FROM g WHERE bucket IS NULL GROUP BY GROUPING SETS ((namespace, flow_id, state),"
    " (namespace, flow_id), (namespace, state), (namespace), (state), ())"
)
"""The default dashboard's counts in one statement: rows `(0, bucket, -, -, state, count, -,
-, all states)` per time bucket, and `(1, -, namespace, flow, state, count, grouping of
namespace, of flow, of state)` per group (`bucket` is never NULL in the table: a NULL one is
the second grouping set's row)."""


def default_stats(
    conn: psycopg.Connection[Any], f: StatsFilter, scope: tuple[str, list[Any]]
) -> dict[str, Any]:
    """The default dashboard's figures, all read in one snapshot (see the module's
    description); `scope` is the caller's namespace condition on `namespace`."""
    for table in ("execution_stats", "execution_durations"):
        if conn.execute("SELECT to_regclass(%s)", (table,)).fetchone() == (None,):
            raise SourceUnavailable(
                f"This server has no {table} rollup yet: the default dashboard answers once "
                "migration 0012 is applied (tiercel db migrate)"
            )
    unit = bucket_unit(f.end - f.start, smallest="hour")
    where, params = _stats_where(f, scope, "bucket")
    with conn.transaction():
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        conn.execute(f"SET LOCAL statement_timeout = '{STATEMENT_TIMEOUT}'")
        # The grouping sets hash thousands of flows: in memory, not in batches on disk.
        conn.execute("SET LOCAL work_mem = '32MB'")
        # One scan of the range's rollup rows, summed two ways (per hour and state, per flow
        # and state); the grouping sets then run over those few sums, not over every row.
        rows = conn.execute(_STATS_SQL.format(where=where), [*params, unit]).fetchall()
        series = sorted((r[1], r[4], r[5], r[8]) for r in rows if r[0] == 0 and r[4] is not None)
        series += [(r[1], None, r[5], r[8]) for r in rows if r[0] == 0 and r[4] is None]
        groups = [r[2:] for r in rows if r[0] == 1]
        durations = conn.execute(
            "SELECT le, coalesce(sum(count), 0)::bigint, sum(sum) FROM execution_durations WHERE "
            + where
            + " GROUP BY le ORDER BY le",
            params,
        ).fetchall()
        failures: list[tuple[Any, ...]] = []
        if f.failures and (not f.states or "FAILED" in f.states):
            x_where, x_params = _stats_where(
                StatsFilter(f.start, f.end, f.namespace, f.flow_id, ["FAILED"]),
                scope,
                "start_date",
            )
            failures = conn.execute(
                "SELECT id, namespace, flow_id, state, start_date, end_date FROM executions"
                f" WHERE {x_where} ORDER BY start_date DESC, id DESC LIMIT %s",
                [*x_params, f.failures],
            ).fetchall()
    return _stats_answer(f, unit, series, groups, durations, failures)


def _stats_answer(
    f: StatsFilter,
    unit: str,
    series: list[tuple[Any, ...]],
    groups: list[tuple[Any, ...]],
    durations: list[tuple[Any, ...]],
    failures: list[tuple[Any, ...]],
) -> dict[str, Any]:
    buckets: dict[dt.datetime, dict[str, Any]] = {}
    for at, state, count, all_states in series:
        bucket = buckets.setdefault(at, {"date": iso(at), "counts": {}, "total": 0})
        if all_states:
            bucket["total"] = int(count)
        else:
            bucket["counts"][state] = int(count)
    states: dict[str, int] = {}
    total = 0
    namespaces: dict[str, dict[str, Any]] = {}
    flows: dict[tuple[str, str], dict[str, Any]] = {}
    for namespace, flow_id, state, count, g_ns, g_flow, g_state in groups:
        count = int(count)
        if g_ns and g_flow and g_state:
            total = count
        elif g_ns and g_flow:
            states[state] = count
        elif g_flow:
            row = namespaces.setdefault(namespace, {"namespace": namespace, "counts": {}})
            if g_state:
                row["total"] = count
            else:
                row["counts"][state] = count
        else:
            key = (namespace, flow_id)
            row = flows.setdefault(key, {"namespace": namespace, "flowId": flow_id, "counts": {}})
            if g_state:
                row["total"] = count
            else:
                row["counts"][state] = count
    for row in [*namespaces.values(), *flows.values()]:
        row["successRatio"] = _ratio(row["counts"].get("SUCCESS", 0), row.get("total", 0))
    by_size = sorted(
        flows.values(), key=lambda r: (-r.get("total", 0), r["namespace"], r["flowId"])
    )
    return {
        "startDate": iso(f.start),
        "endDate": iso(f.end),
        "interval": INTERVALS[unit],
        "total": total,
        "states": dict(sorted(states.items())),
        "successRatio": _ratio(states.get("SUCCESS", 0), total),
        "buckets": list(buckets.values()),
        "namespaces": sorted(namespaces.values(), key=lambda r: r["namespace"]),
        "flows": by_size[:TOP_FLOWS],
        "flowsTruncated": len(by_size) > TOP_FLOWS,
        "durations": _percentiles(durations),
        "latestFailures": [
            {
                "id": r[0],
                "namespace": r[1],
                "flowId": r[2],
                "state": r[3],
                "startDate": iso(r[4]),
                "endDate": iso(r[5]) if r[5] is not None else None,
            }
            for r in failures
        ],
    }


def _ratio(part: int, whole: int) -> float | None:
    return part / whole if whole else None


_BOUNDS_MS: tuple[int, ...] = (
    10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10_000, 25_000, 50_000, 100_000,
    250_000, 500_000, 1_000_000, 2_500_000, 5_000_000, 10_000_000, 25_000_000,
    50_000_000, 100_000_000,
)  # fmt: skip
"""The duration classes of migrations/0012 (projections/executions.py keeps them)."""


def _lower_bound(le: float) -> float:
    """The lower bound (seconds) of the duration class whose upper bound is `le`."""
    bounds = getattr(executions_model, "DURATION_BOUNDS_MS", _BOUNDS_MS)
    below = [b / 1000 for b in bounds if b / 1000 < le]
    return max(below, default=0.0)


def _percentiles(rows: list[tuple[Any, ...]]) -> dict[str, Any]:
    """Count, mean and p50/p90/p99 (seconds) of ended executions from the duration histogram:
    each percentile is interpolated linearly inside the class it falls in, so it is exact to
    that class's bounds; in the last, unbounded class it is that class's lower bound."""
    classes = [(float(le), int(count), float(total or 0.0)) for le, count, total in rows if count]
    count = sum(c for _, c, _ in classes)
    out: dict[str, Any] = {"count": count, "sum": None, "avg": None}
    out.update({name: None for name, _ in PERCENTILES})
    if not count:
        return out
    seconds = sum(s for _, _, s in classes)
    out["sum"] = round(seconds, 3)
    out["avg"] = round(seconds / count, 3)
    for name, q in PERCENTILES:
        rank = q * count
        seen = 0
        for le, n, _ in classes:
            if seen + n >= rank:
                lower = _lower_bound(le)
                if math.isinf(le):
                    out[name] = lower
                else:
                    out[name] = round(lower + (le - lower) * (rank - seen) / n, 3)
                break
            seen += n
    return out


def levels_from(level: str) -> list[str]:
    """A minimum log level as the levels it keeps."""
    return list(LEVELS[LEVELS.index(level) :])
