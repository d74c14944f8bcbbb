"""The `logs` read model: every log line of every task run, with its execution's namespace and
flow id.

A batch is written with one INSERT (the lines of all its events as arrays). The namespace and
flow id of an execution come from its `ExecutionCreated` event, read once per execution and kept
in a small cache: the executions read model may lag behind this one, the event never does.

The same statement counts the lines it inserted per minute, namespace, flow and level
(`log_counts`) and per hour, namespace and level (`log_counts_hourly`), from its `RETURNING`
rows: a line already there (an event applied again) is not counted twice. A purge deletes lines
the same way and takes what it deleted off the counts, dropping those that reach zero, so the
counts equal what a rebuild from the log makes. The histogram reads them (`counted_histogram`).
"""

from __future__ import annotations

import datetime as dt
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg.rows import dict_row

from engine import events as ev
from engine.purge import logs_condition
from engine.store import StoredEvent
from projections import executions as executions_model

LEVELS = ("TRACE", "DEBUG", "INFO", "WARN", "ERROR")
"""Log levels from the least to the most severe: a minimum level keeps it and those after it."""

TEXT_MATCH = (
    "log_search_vector(message, execution_id, task_id, task_run_id, namespace, flow_id)"
    " @@ log_search_query(%s)"
)
"""The full-text condition, written as the GIN index `logs_text` is (migrations/0011)."""

OWNERS_CACHED = 20_000
"""Executions whose namespace and flow id the projection keeps in memory."""

_INSERT = (
    "INSERT INTO logs (seq, line, execution_id, namespace, flow_id, task_id, task_run_id,"
    " attempt, timestamp, level, message)"
    " SELECT seq, line, execution_id, namespace, flow_id, task_id, task_run_id, attempt,"
    " coalesce(ts::timestamptz, recorded_at), level, message"
    " FROM unnest(%b::bigint[], %b::int[], %b::text[], %b::text[], %b::text[], %b::text[],"
    " %b::text[], %b::int[], %b::text[], %b::timestamptz[], %b::text[], %b::text[])"
    " AS r(seq, line, execution_id, namespace, flow_id, task_id, task_run_id, attempt, ts,"
    " recorded_at, level, message)"
    " ON CONFLICT DO NOTHING"
)

COUNT_ORIGIN = "2001-01-01T00:00:00Z"
"""Minutes and hours of the counts are binned from this instant (a Monday, midnight UTC): the
same whatever the session's time zone, and the histogram's buckets start on them."""

_PER_MINUTE = (
    "SELECT date_bin('1 minute', timestamp, '" + COUNT_ORIGIN + "') AS minute,"
    " coalesce(namespace, '') AS namespace, coalesce(flow_id, '') AS flow_id, level,"
    " count(*) AS n FROM {lines} GROUP BY 1, 2, 3, 4"
)
_PER_HOUR = (
    "SELECT date_bin('1 hour', timestamp, '" + COUNT_ORIGIN + "') AS hour,"
    " coalesce(namespace, '') AS namespace, level, count(*) AS n FROM {lines} GROUP BY 1, 2, 3"
)
_LINE_KEYS = "timestamp, namespace, flow_id, level"

_ADD = (
    f"WITH added AS ({_INSERT} RETURNING {_LINE_KEYS}),"
    " per_minute AS (INSERT INTO log_counts AS c (minute, namespace, flow_id, level, count)"
    f" {_PER_MINUTE.format(lines='added')}"
    " ON CONFLICT (minute, namespace, flow_id, level) DO UPDATE SET count = c.count + excluded.count)"
    " INSERT INTO log_counts_hourly AS c (hour, namespace, level, count)"
    f" {_PER_HOUR.format(lines='added')}"
    " ON CONFLICT (hour, namespace, level) DO UPDATE SET count = c.count + excluded.count"
)
"""The lines of a batch, and their counts added for the lines actually inserted (a line
already there, from an event applied before, is not counted again)."""


def _delete(where: str) -> str:
    """The statement deleting the lines matching `where` and taking them off the counts; it
    returns the keys of the counts it brought to zero, as ('minute' | 'hour', time, namespace,
    flow_id, level)."""
    return (
        f"WITH gone AS (DELETE FROM logs WHERE {where} RETURNING {_LINE_KEYS}),"
        " per_minute AS (UPDATE log_counts AS c SET count = c.count - g.n"
        f" FROM ({_PER_MINUTE.format(lines='gone')}) AS g"
        " WHERE c.minute = g.minute AND c.namespace = g.namespace AND c.flow_id = g.flow_id"
        " AND c.level = g.level RETURNING c.minute, c.namespace, c.flow_id, c.level, c.count),"
        " per_hour AS (UPDATE log_counts_hourly AS c SET count = c.count - g.n"
        f" FROM ({_PER_HOUR.format(lines='gone')}) AS g"
        " WHERE c.hour = g.hour AND c.namespace = g.namespace AND c.level = g.level"
        " RETURNING c.hour, c.namespace, c.level, c.count)"
        " SELECT 'minute', minute, namespace, flow_id, level FROM per_minute WHERE count <= 0"
        " UNION ALL SELECT 'hour', hour, namespace, '', level FROM per_hour WHERE count <= 0"
    )


class LogsProjection:
    """Log lines, one row each, keyed by their event position and line number."""

    name = "logs"
    types = ("AttemptLogged", "ExecutionPurged", "LogsPurged")
    tables = ("logs", "log_counts", "log_counts_hourly")

    def __init__(self) -> None:
        self._owners: OrderedDict[str, tuple[str | None, str | None]] = OrderedDict()

    def apply(self, batch: list[StoredEvent], conn: psycopg.Connection[Any]) -> None:
        self._learn_owners(batch, conn)
        rows: tuple[list[Any], ...] = tuple([] for _ in range(12))
        for e in batch:
            event = e.event
            if isinstance(event, ev.ExecutionPurged) and event.logs:
                # In order: lines logged before the purge go, lines after it (none, normally)
                # stay.
                self._flush(rows, conn)
                rows = tuple([] for _ in range(12))
                _purge(conn, "execution_id = %s", [event.executionId])
                continue
            if isinstance(event, ev.LogsPurged):
                self._flush(rows, conn)
                rows = tuple([] for _ in range(12))
                where, params = logs_condition(event)
                # Only lines recorded before the purge: a rebuild deletes what it deleted.
                _purge(conn, f"seq < %s AND {where}", [e.seq, *params])
                continue
            if not isinstance(event, ev.AttemptLogged):
                continue
            namespace, flow_id = self._owners.get(event.executionId, (None, None))
            for i, line in enumerate(event.lines):
                timestamp = line.get("timestamp")
                values = (
                    e.seq,
                    i,
                    event.executionId,
                    namespace,
                    flow_id,
                    event.taskId,
                    event.taskRunId,
                    event.attempt,
                    timestamp if isinstance(timestamp, str) else None,
                    e.recorded_at,
                    str(line.get("level", "INFO")),
                    str(line.get("message", "")),
                )
                for column, value in zip(rows, values, strict=True):
                    column.append(value)
        self._flush(rows, conn)

    def _learn_owners(self, batch: list[StoredEvent], conn: psycopg.Connection[Any]) -> None:
        """Have the namespace and flow id of every execution that `batch` logs for."""
        needed: set[str] = set()
        wanted: set[str] = set()
        for e in batch:
            xid = e.execution_id
            if not isinstance(e.event, ev.AttemptLogged) or xid is None:
                continue
            needed.add(xid)
            if xid in self._owners:
                self._owners.move_to_end(xid)
            else:
                wanted.add(xid)
        if wanted:
            self._look_up(wanted, conn)
        # What this batch needs was touched last, so it stays.
        while len(self._owners) > max(OWNERS_CACHED, len(needed)):
            self._owners.popitem(last=False)

    def _look_up(self, wanted: set[str], conn: psycopg.Connection[Any]) -> None:
        found = conn.execute(
            "SELECT data ->> 'executionId', data ->> 'namespace', data ->> 'flowId' FROM events"
            " WHERE stream_id = ANY(%b::text[]) AND type = 'ExecutionCreated'",
            ([ev.execution_stream(x) for x in wanted],),
        ).fetchall()
        for xid, namespace, flow_id in found:
            self._owners[xid] = (namespace, flow_id)

    def _flush(self, rows: tuple[list[Any], ...], conn: psycopg.Connection[Any]) -> None:
        if rows[0]:
            conn.execute(_ADD, rows)


def _purge(conn: psycopg.Connection[Any], where: str, params: Sequence[Any]) -> None:
    """Delete the lines matching `where` and take them off the counts, dropping the counts
    that reach zero (a rebuild, which never counted those lines, has no such row)."""
    emptied = conn.execute(_delete(where), params).fetchall()
    for table, column, grain in (
        ("log_counts", "minute", "minute"),
        ("log_counts_hourly", "hour", "hour"),
    ):
        keys = [r[1:] for r in emptied if r[0] == grain]
        if not keys:
            continue
        flow = "c.flow_id = k.f AND " if table == "log_counts" else ""
        conn.execute(
            f"DELETE FROM {table} AS c USING unnest(%s::timestamptz[], %s::text[], %s::text[],"
            f" %s::text[]) AS k(t, ns, f, lv) WHERE c.{column} = k.t AND c.namespace = k.ns"
            f" AND {flow}c.level = k.lv AND c.count <= 0",
            [
                [k[0] for k in keys],
                [k[1] for k in keys],
                [k[2] for k in keys],
                [k[3] for k in keys],
            ],
        )


def execution_lines(
    conn: psycopg.Connection[Any],
    execution_id: str,
    levels: Sequence[str],
    *,
    task_run_id: str | None = None,
    task_id: str | None = None,
    attempt: int | None = None,
) -> list[dict[str, Any]]:
    """The log lines of one execution at `levels`, in the order they were logged (optionally
    of one task run, one task or one attempt number only)."""
    where = ["execution_id = %s", "level = ANY(%s::text[])"]
    params: list[Any] = [execution_id, list(levels)]
    if task_run_id is not None:
        where.append("task_run_id = %s")
        params.append(task_run_id)
    if task_id is not None:
        where.append("task_id = %s")
        params.append(task_id)
    if attempt is not None:
        where.append("attempt = %s")
        params.append(attempt)
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(
            "SELECT execution_id, namespace, flow_id, task_id, task_run_id, attempt, timestamp,"
            f" level, message FROM logs WHERE {' AND '.join(where)} ORDER BY seq, line",
            params,
            prepare=False,
        )
        return cur.fetchall()


def levels_from(min_level: str) -> list[str]:
    """The levels at or above `min_level` (one of `LEVELS`)."""
    return list(LEVELS[LEVELS.index(min_level) :])


@dataclass
class LogSearch:
    """What a search of log lines asks for; every filter given applies."""

    namespace: str | None = None
    namespace_exact: bool = False
    flow_id: str | None = None
    execution_id: str | None = None
    task_id: str | None = None
    task_run_id: str | None = None
    attempt: int | None = None
    trigger_id: str | None = None
    min_level: str | None = None
    start: dt.datetime | None = None
    """At or after this time."""
    end: dt.datetime | None = None
    """At or before this time."""
    q: str | None = None

    def where(
        self, scope: str = "true", scope_params: Sequence[Any] = (), *, text: bool = True
    ) -> tuple[str, list[Any]]:
        """The SQL condition (and its parameters) of the search, within `scope` (the
        principal's namespaces); without its full-text part when not `text`."""
        parts = [scope]
        params: list[Any] = list(scope_params)
        if self.trigger_id is not None:
            # Tiercel records no trigger logs: no line belongs to a trigger.
            parts.append("false")
        if self.namespace is not None:
            if self.namespace_exact:
                parts.append("namespace = %s")
                params.append(self.namespace)
            else:
                # The namespace and those under it, as a byte range ('.' < '/'), which the
                # C-collated index answers.
                parts.append("(namespace = %s OR (namespace > %s AND namespace < %s))")
                params += [self.namespace, self.namespace + ".", self.namespace + "/"]
        for column, value in (
            ("flow_id", self.flow_id),
            ("execution_id", self.execution_id),
            ("task_id", self.task_id),
            ("task_run_id", self.task_run_id),
            ("attempt", self.attempt),
        ):
            if value is not None:
                parts.append(f"{column} = %s")
                params.append(value)
        if self.min_level is not None and self.min_level != LEVELS[0]:
            parts.append("level = ANY(%s::text[])")
            params.append(levels_from(self.min_level))
        if self.start is not None:
            parts.append("timestamp >= %s")
            params.append(self.start)
        if self.end is not None:
            parts.append("timestamp <= %s")
            params.append(self.end)
        if self.q is not None and text:
            parts.append(TEXT_MATCH)
            params.append(self.q)
        return " AND ".join(parts), params

    def condition(
        self, conn: psycopg.Connection[Any], scope: str = "true", scope_params: Sequence[Any] = ()
    ) -> tuple[str, list[Any], str]:
        """`where`, with a full-text query that matches few lines resolved to their positions
        first, and how to read it (`PLANNED`, `MANY` or `COMMON`: see `text_matches`)."""
        if self.q is not None:
            found = text_matches(conn, self.q)
            if isinstance(found, list):
                where, params = self.where(scope, scope_params, text=False)
                if not found:
                    return "false", [], PLANNED
                positions = (
                    "(seq, line) IN (SELECT s, l FROM unnest(%s::bigint[], %s::int[]) AS k(s, l))"
                )
                return (
                    f"{positions} AND {where}",
                    [[k[0] for k in found], [k[1] for k in found], *params],
                    PLANNED,
                )
            where, params = self.where(scope, scope_params)
            return where, params, found
        where, params = self.where(scope, scope_params)
        return where, params, PLANNED


PROBE_UP_TO = 20_000
"""A full-text query matching at most this many lines is resolved to their positions."""
COMMON_SHARE = 0.05
"""A full-text query whose words the planner knows to be in more than this share of the lines
is common: its pages are read in date order."""
PLANNED = "planned"
"""Read as the planner chooses."""
MANY = "many"
"""Matches more than `PROBE_UP_TO` lines: pages in date order, counted from the GIN index."""
COMMON = "common"
"""Its words are in many lines: pages in date order, counted from the GIN index."""


def text_matches(conn: psycopg.Connection[Any], q: str) -> list[tuple[int, int]] | str:
    """The positions of the lines `q` matches when they are few (at most `PROBE_UP_TO`), or how
    to read its matches: `COMMON` or `MANY`.

    A page is the newest lines first. For words most lines have, reading lines in date order
    fills a page at once; for a word a few lines have (an id) that order would read every line.
    The planner cannot tell them apart: it estimates any word prefix at 2% of the lines (and two
    at the product of their shares), so it would sort every line holding a common word, and walk
    every line looking for a rare one. So: the words as whole words, which the statistics of the
    expression index know, and the most common words they begin (`prefix_share`) say whether
    `q` is common; if not, the GIN index is asked first,
    alone, and the page is made of the lines it names, or read in date order when they are many
    after all."""
    plan = conn.execute(
        "EXPLAIN (FORMAT JSON) SELECT 1 FROM logs WHERE log_search_vector(message, execution_id,"
        " task_id, task_run_id, namespace, flow_id)"
        " @@ replace(log_search_query(%s)::text, ':*', '')::tsquery",
        [q],
        prepare=False,
    ).fetchone()
    expected = float(plan[0][0]["Plan"]["Plan Rows"]) if plan else 0.0
    size = conn.execute("SELECT reltuples FROM pg_class WHERE oid = 'logs'::regclass").fetchone()
    lines = float(size[0]) if size else -1.0
    if lines > 0 and max(expected / lines, prefix_share(conn, q)) > COMMON_SHARE:
        return COMMON
    with conn.transaction():
        # The bitmap of the GIN index, never a scan of the table checking every line.
        conn.execute("SET LOCAL enable_seqscan = off")
        conn.execute("SET LOCAL enable_indexscan = off")
        rows = conn.execute(
            f"SELECT seq, line FROM logs WHERE {TEXT_MATCH} LIMIT %s",
            [q, PROBE_UP_TO + 1],
            prepare=False,
        ).fetchall()
    if len(rows) > PROBE_UP_TO:
        return MANY
    return [(int(r[0]), int(r[1])) for r in rows]


def prefix_share(conn: psycopg.Connection[Any], q: str) -> float:
    """The share of lines holding, for every word of `q`, a word it begins, as far as the
    statistics of the text index tell (its most common words and their shares; 0 when they
    know none of them, or the table was never analyzed).

    The planner knows the words of `q` taken whole only: `lin` is in no line, while `line`,
    which it begins, may be in every one; asked for `lin`, the GIN index would build the
    bitmap of all of them before answering "more than a few?"."""
    words = conn.execute(
        "SELECT array_remove(regexp_split_to_array(lower(log_search_text(%s)), ' '), '')",
        [q],
        prepare=False,
    ).fetchone()
    if words is None or not words[0]:
        return 0.0
    # Read as the owner (migrations/0020): the runtime role may not read an index's statistics.
    known = conn.execute("SELECT word, share FROM log_search_common_words()").fetchall()
    share = 1.0
    for word in words[0]:
        # Lines holding two words it begins are counted once: the most common of them is
        # a lower bound of the lines it finds.
        share *= max((f for w, f in known if w.startswith(word)), default=0.0)
    return share


_LINE_COLUMNS = (
    "execution_id, namespace, flow_id, task_id, task_run_id, attempt, timestamp, level, message"
)


def _read_in_order(conn: psycopg.Connection[Any]) -> None:
    conn.execute("SET LOCAL enable_bitmapscan = off")
    conn.execute("SET LOCAL enable_seqscan = off")


def page_sql(where: str, *, ascending: bool = False) -> str:
    """The query of a page of lines matching `where`; its parameters are `where`'s, then the
    offset and the limit."""
    order = "ASC" if ascending else "DESC"
    return (
        f"SELECT {_LINE_COLUMNS} FROM logs WHERE {where}"
        f" ORDER BY timestamp {order}, seq {order}, line {order} OFFSET %s LIMIT %s"
    )


def search(
    conn: psycopg.Connection[Any],
    where: str,
    params: Sequence[Any],
    *,
    offset: int,
    limit: int,
    ascending: bool = False,
    reading: str = PLANNED,
) -> list[dict[str, Any]]:
    """A page of the lines matching `where`, newest first (oldest first if `ascending`), read
    as `reading` says (see `LogSearch.condition`)."""
    with conn.transaction(), conn.cursor(row_factory=dict_row) as cur:
        if reading != PLANNED:
            _read_in_order(conn)
        # Unprepared: a generic plan cannot know how common a word or a namespace is.
        cur.execute(page_sql(where, ascending=ascending), [*params, offset, limit], prepare=False)
        return cur.fetchall()


def count(
    conn: psycopg.Connection[Any],
    where: str,
    params: Sequence[Any],
    *,
    reading: str = PLANNED,
    at_least: int = 0,
) -> tuple[int, bool]:
    """How many lines match `where` (counted up to `COUNT_EXACT_UP_TO`, estimated above) and
    whether that is an estimate; never below `at_least` (the lines already seen). A `MANY` or
    `COMMON` full-text query is counted from the GIN index's bitmap (see `text_estimate` for
    what to do instead when the table is large)."""
    with conn.transaction():
        if reading != PLANNED:
            conn.execute("SET LOCAL enable_seqscan = off")
            conn.execute("SET LOCAL enable_indexscan = off")
        total, estimated = executions_model.count(conn, where, params, table="logs")
    return max(total, at_least), estimated


COUNT_TEXT_UP_TO = 1_000_000
"""Above this many lines, a `MANY` or `COMMON` full-text query's total is `text_estimate`."""


def text_estimate(
    conn: psycopg.Connection[Any],
    search: LogSearch,
    scope: str,
    scope_params: Sequence[Any],
    reading: str,
) -> int | None:
    """The estimated number of lines a `MANY` or `COMMON` full-text `search` matches, or None
    when the logs are few enough to count them (at most `COUNT_TEXT_UP_TO` lines).

    The GIN index answers even "more than ten thousand?" only by building the bitmap of every
    match: 0.9 s for a word of every line, 2.3 s for two words, at ten million lines. The
    estimate is the planner's for the words taken whole (which the expression index's
    statistics know; a prefix matches at least those) or the share of the most common words
    they begin (`prefix_share`), the larger, at least `PROBE_UP_TO` for a `MANY`
    query, times the share of lines the other filters keep."""
    size = conn.execute("SELECT reltuples FROM pg_class WHERE oid = 'logs'::regclass").fetchone()
    lines = float(size[0]) if size else -1.0
    if lines < 0:  # never analyzed: the planner's guess from the table's size
        lines = _plan_rows(conn, "true", [])
    if lines <= max(COUNT_TEXT_UP_TO, 0) or search.q is None:
        return None
    text = _plan_rows(
        conn,
        "log_search_vector(message, execution_id, task_id, task_run_id, namespace, flow_id)"
        " @@ replace(log_search_query(%s)::text, ':*', '')::tsquery",
        [search.q],
    )
    text = max(text, prefix_share(conn, search.q) * lines)
    if reading == MANY:
        text = max(text, PROBE_UP_TO + 1)
    where, params = search.where(scope, scope_params, text=False)
    rest = _plan_rows(conn, where, params) if where != "true" else lines
    return int(min(text, lines) * min(rest, lines) / lines)


def _plan_rows(conn: psycopg.Connection[Any], where: str, params: Sequence[Any]) -> float:
    plan = conn.execute(
        f"EXPLAIN (FORMAT JSON) SELECT 1 FROM logs WHERE {where}", params, prepare=False
    ).fetchone()
    return float(plan[0][0]["Plan"]["Plan Rows"]) if plan else 0.0


def time_span(
    conn: psycopg.Connection[Any], where: str, params: Sequence[Any]
) -> tuple[dt.datetime, dt.datetime] | None:
    """The first and last timestamps of the lines matching `where` (None when none does)."""
    first = conn.execute(
        f"SELECT timestamp FROM logs WHERE {where} ORDER BY timestamp LIMIT 1",
        params,
        prepare=False,
    ).fetchone()
    last = conn.execute(
        f"SELECT timestamp FROM logs WHERE {where} ORDER BY timestamp DESC LIMIT 1",
        params,
        prepare=False,
    ).fetchone()
    if first is None or last is None:
        return None
    return first[0], last[0]


def histogram_sql(where: str) -> str:
    """The query of a histogram of the lines matching `where`; its parameters are the bucket
    size and origin, then `where`'s."""
    return (
        "SELECT date_bin(%s::interval, timestamp, %s::timestamptz) AS bucket, level, count(*)"
        f" FROM logs WHERE {where} GROUP BY 1, 2 ORDER BY 1, 2"
    )


def histogram(
    conn: psycopg.Connection[Any],
    where: str,
    params: Sequence[Any],
    *,
    bucket: dt.timedelta,
    origin: dt.datetime,
) -> list[tuple[dt.datetime, str, int]]:
    """How many lines matching `where` each level has in each bucket of `bucket` length,
    buckets counted from `origin`: (bucket start, level, count) rows."""
    rows = conn.execute(histogram_sql(where), [bucket, origin, *params], prepare=False).fetchall()
    return [(r[0], str(r[1]), int(r[2])) for r in rows]


_MINUTE = dt.timedelta(minutes=1)
_HOUR = dt.timedelta(hours=1)
_COUNT_ORIGIN = dt.datetime(2001, 1, 1, tzinfo=dt.UTC)


def _floor(at: dt.datetime, grain: dt.timedelta) -> dt.datetime:
    return _COUNT_ORIGIN + (at - _COUNT_ORIGIN) // grain * grain


def counted_histogram_sql(
    search: LogSearch,
    scope: str,
    scope_params: Sequence[Any],
    *,
    start: dt.datetime,
    end: dt.datetime,
    bucket: dt.timedelta,
    origin: dt.datetime,
) -> tuple[str, list[Any]] | None:
    """The histogram of `search` between `start` and `end` (both included, and covering every
    line it matches) read from the counts where it can, as (query, parameters) giving (bucket,
    level, count) rows; None when the counts cannot answer it (full text, an execution, a task
    or a trigger filter, buckets that are not whole minutes).

    The whole hours (or minutes) inside the range come from `log_counts_hourly` (or
    `log_counts`, with a flow filter or buckets shorter than an hour); the part of an hour
    (minute) at each end from the lines themselves, so the total still equals the search's.
    One statement: one snapshot of the lines and their counts."""
    if (
        search.q is not None
        or search.execution_id is not None
        or search.task_id is not None
        or search.task_run_id is not None
        or search.attempt is not None
        or search.trigger_id is not None
        or bucket < _MINUTE
        or bucket % _MINUTE
        or (origin - _COUNT_ORIGIN) % _MINUTE
    ):
        return None
    hourly = search.flow_id is None and not bucket % _HOUR and not (origin - _COUNT_ORIGIN) % _HOUR
    grain = _HOUR if hourly else _MINUTE
    first = _floor(start, grain)
    if first < start:
        first += grain
    last = _floor(end, grain)  # lines from `last` to `end` are read one by one
    if first >= last:
        return None
    table, column = ("log_counts_hourly", "hour") if hourly else ("log_counts", "minute")
    parts = [scope, f"{column} >= %s", f"{column} < %s"]
    params: list[Any] = [*scope_params, first, last]
    if search.namespace is not None:
        if search.namespace_exact:
            parts.append("namespace = %s")
            params.append(search.namespace)
        else:
            parts.append("(namespace = %s OR (namespace > %s AND namespace < %s))")
            params += [search.namespace, search.namespace + ".", search.namespace + "/"]
    if search.flow_id is not None:
        parts.append("flow_id = %s")
        params.append(search.flow_id)
    if search.min_level is not None and search.min_level != LEVELS[0]:
        parts.append("level = ANY(%s::text[])")
        params.append(levels_from(search.min_level))
    where, where_params = search.where(scope, scope_params)
    query = (
        "SELECT bucket, level, sum(n)::bigint FROM ("
        f" SELECT date_bin(%s::interval, {column}, %s::timestamptz) AS bucket, level, count AS n"
        f" FROM {table} WHERE {' AND '.join(parts)}"
        " UNION ALL SELECT date_bin(%s::interval, timestamp, %s::timestamptz), level, 1"
        f" FROM logs WHERE {where} AND timestamp >= %s AND timestamp < %s"
        " UNION ALL SELECT date_bin(%s::interval, timestamp, %s::timestamptz), level, 1"
        f" FROM logs WHERE {where} AND timestamp >= %s AND timestamp <= %s"
        ") AS counted GROUP BY 1, 2 HAVING sum(n) > 0 ORDER BY 1, 2"
    )
    return query, [
        bucket,
        origin,
        *params,
        bucket,
        origin,
        *where_params,
        start,
        first,
        bucket,
        origin,
        *where_params,
        last,
        end,
    ]


def counted_histogram(
    conn: psycopg.Connection[Any],
    search: LogSearch,
    scope: str,
    scope_params: Sequence[Any],
    *,
    start: dt.datetime,
    end: dt.datetime,
    bucket: dt.timedelta,
    origin: dt.datetime,
) -> list[tuple[dt.datetime, str, int]] | None:
    """`histogram` of `search` read from the counts (see `counted_histogram_sql`), or None
    when they cannot answer it."""
    found = counted_histogram_sql(
        search, scope, scope_params, start=start, end=end, bucket=bucket, origin=origin
    )
    if found is None:
        return None
    rows = conn.execute(found[0], found[1], prepare=False).fetchall()
    return [(r[0], str(r[1]), int(r[2])) for r in rows]


def lines_after(
    conn: psycopg.Connection[Any],
    execution_id: str,
    levels: Sequence[str],
    after: tuple[int, int],
    limit: int,
) -> list[dict[str, Any]]:
    """Up to `limit` lines of one execution at `levels`, logged after the (seq, line) position
    `after`, in order, each with its position (`seq`, `line`)."""
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(
            f"SELECT seq, line, {_LINE_COLUMNS} FROM logs WHERE execution_id = %s"
            " AND (seq, line) > (%s, %s) AND level = ANY(%s::text[])"
            " ORDER BY seq, line LIMIT %s",
            [execution_id, after[0], after[1], list(levels), limit],
            prepare=False,
        )
        return cur.fetchall()
