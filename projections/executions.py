"""The `executions` read model: one row per execution, for search and the dashboard.

A batch of events is folded per execution first, then written with one INSERT for the
executions it creates and one UPDATE for those it changes, whatever the batch holds. Each row
remembers the position of the last event applied to it (`last_seq`): events at or below it are
skipped, so replaying a batch, or the whole log over existing rows, gives the same rows.

`search` answers the executions search of the API (migrations/0009_search_indexes.sql has the
indexes it relies on, bench/search.py measures it at a million executions).
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import datetime as dt
import json
import re
import shlex
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from engine import events as ev
from engine.errors import InvalidRequest, Problem
from engine.execution import iso
from engine.execution.replay import replay
from engine.executor_shell import INPUT_TYPES, recorded
from engine.plugin import EXECUTION_STATES, TERMINAL_STATES
from engine.store import _COLUMNS as _STORE_COLUMNS
from engine.store import StoredEvent, _row_to_event


def _dumps(value: Any) -> bytes:
    try:
        return orjson.dumps(value)
    except TypeError:  # an integer beyond 64 bits, which JSON allows
        return json.dumps(value).encode()


def _jsonb(value: Any) -> Jsonb:
    return Jsonb(value, dumps=_dumps)


_REFOLDING = ("ExecutionRestarted", "TaskRunStateForced")
"""Events after which a row is the executor's own fold of the history (`_refold`): a restart
or a state set by hand takes task runs away and runs ended executions again, and a replay's
execution starts with the task runs it keeps; counting events cannot follow that."""


@dataclass
class _Change:
    """What the events of one batch do to one execution's row (those it has not seen yet)."""

    created: StoredEvent | None = None
    start_date: dt.datetime | None = None
    state: str | None = None
    end_date: dt.datetime | None = None
    histories: list[dict[str, str]] = field(default_factory=list)
    outputs: dict[str, Any] | None = None
    labels: list[dict[str, str]] | None = None
    task_runs: int = 0
    last_seq: int = 0
    current: str = "CREATED"
    """The state the row shows before this change."""

    def add(self, e: StoredEvent, at: dt.datetime) -> None:
        """Apply `e`, which happened at `at` (see `_times`)."""
        event = e.event
        if isinstance(event, ev.ExecutionCreated):
            self.created = e
            self.start_date = at
        elif isinstance(event, ev.ExecutionStateChanged):
            if event.state == (self.state or self.current):
                # The executor's fold keeps no such repeat (nor its outputs): neither does the
                # row.
                self.last_seq = e.seq
                return
            self.state = event.state
            self.histories.append({"state": event.state, "date": iso(at)})
            if event.outputs is not None:
                self.outputs = event.outputs
            self.end_date = at if event.state in TERMINAL_STATES else None
        elif isinstance(event, ev.ExecutionLabelsChanged):
            self.labels = event.labels
        elif isinstance(event, ev.TaskRunCreated):
            # Each task run has one TaskRunCreated; the position guard keeps a replay from
            # counting it again.
            self.task_runs += 1
        self.last_seq = e.seq


_INSERT = (
    "INSERT INTO executions (id, namespace, flow_id, flow_revision, state, histories, labels,"
    " inputs, outputs, trigger, parent_id, original_id, task_run_count, start_date, end_date,"
    " last_seq)"
    " SELECT * FROM unnest(%b::text[], %b::text[], %b::text[], %b::int[], %b::text[],"
    " %b::jsonb[], %b::jsonb[], %b::jsonb[], %b::jsonb[], %b::jsonb[], %b::text[], %b::text[],"
    " %b::int[], %b::timestamptz[], %b::timestamptz[], %b::bigint[])"
    " ON CONFLICT (id) DO NOTHING"
)

# `state IS NULL` in a change: no state change in the batch, so the state and end date stay.
_UPDATE = (
    "UPDATE executions AS x SET state = coalesce(d.state, x.state),"
    " histories = x.histories || d.histories, outputs = coalesce(d.outputs, x.outputs),"
    " end_date = CASE WHEN d.state IS NULL THEN x.end_date ELSE d.end_date END,"
    " labels = coalesce(d.labels, x.labels), task_run_count = x.task_run_count + d.task_runs,"
    " last_seq = d.last_seq"
    " FROM unnest(%b::text[], %b::text[], %b::jsonb[], %b::jsonb[], %b::timestamptz[],"
    " %b::jsonb[], %b::int[], %b::bigint[])"
    " AS d(id, state, histories, outputs, end_date, labels, task_runs, last_seq)"
    # The guard also settles two projections racing on one row: the second re-reads the row
    # the first committed and finds nothing left to apply.
    " WHERE x.id = d.id AND x.last_seq < d.last_seq"
)


class ExecutionsProjection:
    """Each execution's summary: state and its history, labels, inputs, outputs, dates; and
    the rollups `execution_stats` and `execution_durations` (counts and durations per hour of
    start, namespace, flow and current state), kept in the same transaction."""

    name = "executions"
    types = (
        "ExecutionCreated",
        "ExecutionStateChanged",
        "TaskRunCreated",
        "ExecutionLabelsChanged",
        "ExecutionPurged",
        *_REFOLDING,
    )
    tables = ("executions", "execution_stats", "execution_durations")

    def apply(self, batch: list[StoredEvent], conn: psycopg.Connection[Any]) -> None:
        by_execution: dict[str, list[StoredEvent]] = {}
        for e in batch:
            xid = e.execution_id
            if xid is not None and e.type in self.types:
                by_execution.setdefault(xid, []).append(e)
        if not by_execution:
            return
        times = _times(by_execution, conn)
        before, folded = _rows_before(conn, list(by_execution))
        seen = {xid: row[0] for xid, row in before.items()}
        purged: list[str] = []
        created: list[_Change] = []
        created_ids: list[str] = []
        changed: list[tuple[str, _Change]] = []
        refold: list[str] = []
        for xid, events in by_execution.items():
            last = seen.get(xid)
            fresh = [e for e in events if last is None or e.seq > last]
            ends = [i for i, e in enumerate(fresh) if isinstance(e.event, ev.ExecutionPurged)]
            if ends:
                purged.append(xid)
                fresh = fresh[ends[-1] + 1 :]
                last = None
            if not fresh:
                continue
            if (last is not None and xid in folded) or any(_refolds(e) for e in fresh):
                refold.append(xid)
                continue
            change = _Change(current=before[xid][3] if last is not None else "CREATED")
            for e in fresh:
                change.add(e, times.get(e.seq, e.recorded_at))
            if last is not None:
                changed.append((xid, change))
            elif change.created is not None:
                created.append(change)
                created_ids.append(xid)
            # Else the row is gone (purged): what follows its purge changes nothing.
        if purged:
            conn.execute("DELETE FROM executions WHERE id = ANY(%s::text[])", (purged,))
        if created:
            conn.execute(_INSERT, _insert_columns(created))
        if changed:
            conn.execute(_UPDATE, _update_columns(changed))
        if refold:
            _refold(conn, refold, batch)
        touched = [
            *purged,
            *created_ids,
            *(x for x, _ in changed),
            *refold,
        ]
        if touched:
            after = _rollup_keys(conn, touched)
            _update_rollups(conn, {x: before[x] for x in touched if x in before}, after)


# --- the executor's fold, for histories the summary above does not follow -------------------


def _refolds(e: StoredEvent) -> bool:
    event = e.event
    if isinstance(event, ev.ExecutionCreated):
        return bool(event.taskRuns or event.taskRunsUri)
    return e.type in _REFOLDING


_UPSERT = (
    "INSERT INTO executions (id, namespace, flow_id, flow_revision, state, histories, labels,"
    " inputs, outputs, trigger, parent_id, original_id, task_run_count, start_date, end_date,"
    " last_seq, folded)"
    " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, true)"
    " ON CONFLICT (id) DO UPDATE SET state = excluded.state, histories = excluded.histories,"
    " labels = excluded.labels, outputs = excluded.outputs,"
    " task_run_count = excluded.task_run_count, end_date = excluded.end_date,"
    " last_seq = excluded.last_seq, folded = true"
    " WHERE executions.last_seq < excluded.last_seq"
)


def _refold(conn: psycopg.Connection[Any], ids: list[str], batch: list[StoredEvent]) -> None:
    """Write the rows of `ids` from the executor's own fold of their histories up to the end
    of `batch` (`engine.execution.replay`, as `GET /executions/{id}` folds them), so that
    restarts, states set by hand and replays show as the execution does. Such a row is marked
    `folded`, and every later change to it is folded the same way."""
    end = batch[-1].seq
    in_batch = {e.seq: e for e in batch}
    for xid in ids:
        base = ev.execution_stream(xid)
        rows = conn.execute(
            f"SELECT {_STORE_COLUMNS} FROM events WHERE stream_id >= %s AND stream_id < %s"
            " AND seq <= %s ORDER BY seq",
            (base, base + "0", end),
        ).fetchall()
        # The batch's events come with their large values read back; the others are only
        # needed for what they say of states, task runs and labels.
        history = [in_batch.get(r[0]) or _row_to_event(r) for r in rows]
        history = [e for e in history if e.type in INPUT_TYPES]
        state = replay([recorded(e) for e in history])
        created = next((e for e in history if isinstance(e.event, ev.ExecutionCreated)), None)
        if state is None or created is None or state.purged:
            continue
        event = created.event
        assert isinstance(event, ev.ExecutionCreated)
        times = _times({xid: history}, conn)
        start = times.get(created.seq, created.recorded_at)
        end_date = None
        if state.state in TERMINAL_STATES:
            last = [e for e in history if isinstance(e.event, ev.ExecutionStateChanged)]
            end_date = times.get(last[-1].seq, last[-1].recorded_at) if last else None
        conn.execute(
            _UPSERT,
            (
                xid,
                event.namespace,
                event.flowId,
                event.flowRevision,
                state.state,
                _jsonb([{"state": st, "date": at} for st, at in state.histories]),
                _jsonb([{"key": k, "value": v} for k, v in state.labels]),
                _jsonb(event.inputs),
                _jsonb(state.outputs) if state.outputs is not None else None,
                _jsonb(event.trigger) if event.trigger else None,
                event.parentId,
                event.originalId or event.executionId,
                len(state.taskruns),
                start,
                end_date,
                # The last event of the projection's own types: the position a row
                # written event by event would show, whatever the batches were.
                max(e.seq for e in history if e.type in ExecutionsProjection.types),
            ),
            prepare=False,
        )


# --- rollups --------------------------------------------------------------------------------

DURATION_BOUNDS_MS = (
    10,
    25,
    50,
    100,
    250,
    500,
    1_000,
    2_500,
    5_000,
    10_000,
    25_000,
    50_000,
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
)
"""The upper bounds, in milliseconds, of the duration classes of `execution_durations` (its
`le` is the bound in seconds; a duration above the last is in the class 'Infinity')."""

_RollupRow = tuple[int, str, str, str, dt.datetime, dt.datetime | None]
"""last_seq, namespace, flow_id, state, start_date, end_date of an execution's row."""


def _rollup_keys(conn: psycopg.Connection[Any], ids: list[str]) -> dict[str, _RollupRow]:
    return _rows_before(conn, ids)[0]


def _rows_before(
    conn: psycopg.Connection[Any], ids: list[str]
) -> tuple[dict[str, _RollupRow], set[str]]:
    """The rows of `ids` as they stand (what the rollups count of them), and which of them
    are kept by the executor's fold (`_refold`)."""
    rows = conn.execute(
        "SELECT id, last_seq, namespace, flow_id, state, start_date, end_date, folded"
        " FROM executions WHERE id = ANY(%b::text[])",
        (ids,),
    ).fetchall()
    return {r[0]: tuple(r[1:7]) for r in rows}, {r[0] for r in rows if r[7]}  # type: ignore[misc]


def bucket_of(at: dt.datetime) -> dt.datetime:
    """The hour (UTC) an execution started at `at` is counted in."""
    return at.astimezone(dt.UTC).replace(minute=0, second=0, microsecond=0)


def duration_class(ms: int) -> float:
    """The `le` of `execution_durations` for a duration of `ms` milliseconds."""
    for bound in DURATION_BOUNDS_MS:
        if ms <= bound:
            return bound / 1000
    return float("inf")


def _update_rollups(
    conn: psycopg.Connection[Any],
    before: dict[str, _RollupRow],
    after: dict[str, _RollupRow],
) -> None:
    """Move each touched execution out of the rollup rows it counted in and into those it
    counts in now, in the projection's transaction: the rows' own position guard makes this
    happen once per event, so a replay changes nothing."""
    counts: dict[tuple[Any, ...], int] = {}
    durations: dict[tuple[Any, ...], list[int]] = {}

    def add(row: _RollupRow, sign: int) -> None:
        _, ns, flow, state, start, end = row
        key = (bucket_of(start), ns, flow, state)
        counts[key] = counts.get(key, 0) + sign
        if end is not None:
            ms = (end - start) // dt.timedelta(milliseconds=1)
            d = durations.setdefault((*key, duration_class(ms)), [0, 0])
            d[0] += sign
            d[1] += sign * ms

    for row in before.values():
        add(row, -1)
    for row in after.values():
        add(row, +1)
    stats = sorted((k, [n]) for k, n in counts.items() if n)
    _upsert(conn, "execution_stats", ("bucket", "namespace", "flow_id", "state"), stats)
    moved = sorted((k, v) for k, v in durations.items() if v != [0, 0])
    _upsert(conn, "execution_durations", ("bucket", "namespace", "flow_id", "state", "le"), moved)


_TYPES = {
    "bucket": "timestamptz",
    "namespace": "text",
    "flow_id": "text",
    "state": "text",
    "le": "float8",
}


def _upsert(
    conn: psycopg.Connection[Any],
    table: str,
    keys: tuple[str, ...],
    deltas: list[tuple[tuple[Any, ...], list[int]]],
) -> None:
    """Add `deltas` (key, [count, sum_ms too for durations]) to `table`'s rows, then drop
    the rows left counting nothing (a rebuilt table has none)."""
    if not deltas:
        return
    sums = ["count", "sum_ms"][: len(deltas[0][1])]
    columns: list[list[Any]] = [[] for _ in range(len(keys) + len(sums))]
    for key, values in deltas:
        for column, value in zip(columns, (*key, *values), strict=True):
            column.append(value)
    names = ", ".join((*keys, *sums))
    arrays = ", ".join([f"%b::{_TYPES[k]}[]" for k in keys] + ["%b::bigint[]" for _ in sums])
    updates = ", ".join(f"{c} = s.{c} + excluded.{c}" for c in sums)
    emptied = conn.execute(
        f"INSERT INTO {table} AS s ({names}) SELECT * FROM unnest({arrays})"
        f" ON CONFLICT ({', '.join(keys)}) DO UPDATE SET {updates}"
        f" RETURNING {', '.join(keys)}, count",
        columns,
    ).fetchall()
    gone = [r[:-1] for r in emptied if r[-1] == 0]
    if gone:
        key_arrays = ", ".join(f"%b::{_TYPES[k]}[]" for k in keys)
        conn.execute(
            f"DELETE FROM {table} WHERE ({', '.join(keys)}) IN"
            f" (SELECT * FROM unnest({key_arrays}))",
            [list(c) for c in zip(*gone, strict=True)],
        )


def _times(
    by_execution: dict[str, list[StoredEvent]], conn: psycopg.Connection[Any]
) -> dict[int, dt.datetime]:
    """When each event the executor decided happened, by position: its cause's time.

    The executor's replay (`engine.execution.replay`) dates a decision with the time of the
    event it was decided for, not the moment it was appended, so `GET /executions/{id}` shows
    those dates; the row takes the same ones, and the two agree to the millisecond.
    """
    causes: dict[int, int] = {}
    for events in by_execution.values():
        for e in events:
            if not isinstance(e.event, ev.ExecutionCreated | ev.ExecutionStateChanged):
                continue  # the only events whose time the row keeps
            cause = recorded(e).decided_by
            if cause is not None:
                causes[e.seq] = int(cause)
    if not causes:
        return {}
    found = dict(
        conn.execute(
            "SELECT seq, recorded_at FROM events WHERE seq = ANY(%b::bigint[])",
            (sorted(set(causes.values())),),
        ).fetchall()
    )
    return {seq: found[cause] for seq, cause in causes.items() if cause in found}


def _insert_columns(changes: Sequence[_Change]) -> tuple[list[Any], ...]:
    columns: tuple[list[Any], ...] = tuple([] for _ in range(16))
    for c in changes:
        assert c.created is not None
        event = c.created.event
        assert isinstance(event, ev.ExecutionCreated)
        created_at = c.start_date or c.created.recorded_at
        values = (
            event.executionId,
            event.namespace,
            event.flowId,
            event.flowRevision,
            c.state or "CREATED",
            _jsonb([{"state": "CREATED", "date": iso(created_at)}, *c.histories]),
            _jsonb(c.labels if c.labels is not None else event.labels),
            _jsonb(event.inputs),
            _jsonb(c.outputs) if c.outputs is not None else None,
            _jsonb(event.trigger) if event.trigger else None,
            event.parentId,
            event.originalId or event.executionId,
            c.task_runs,
            created_at,
            c.end_date,
            c.last_seq,
        )
        for column, value in zip(columns, values, strict=True):
            column.append(value)
    return columns


def _update_columns(changes: Sequence[tuple[str, _Change]]) -> tuple[list[Any], ...]:
    columns: tuple[list[Any], ...] = tuple([] for _ in range(8))
    for xid, c in changes:
        values = (
            xid,
            c.state,
            _jsonb(c.histories),
            _jsonb(c.outputs) if c.outputs is not None else None,
            c.end_date,
            _jsonb(c.labels) if c.labels is not None else None,
            c.task_runs,
            c.last_seq,
        )
        for column, value in zip(columns, values, strict=True):
            column.append(value)
    return columns


# --- search --------------------------------------------------------------------------------

COUNT_EXACT_UP_TO = 10_000
"""Up to this many matches the total is counted; above it, it is the planner's estimate."""
MAX_OFFSET = 100_000
"""The deepest row a page may start at; past it, follow the `next` cursor (`after=`)."""
PROBE_UP_TO = 2_000
"""A label or `q=` filter matching at most this many executions is resolved to their ids."""
PROBE_BELOW_ESTIMATE = 20_000
"""A label or `q=` filter the planner expects to match more rows than this is not probed: it
knows the frequency of such a common label or word, and a probe would cost a bitmap of them."""

_COLUMNS = (
    "x.id, x.namespace, x.flow_id, x.flow_revision, x.state, x.histories, x.labels, x.inputs,"
    " x.outputs, x.trigger, x.parent_id, x.original_id, x.task_run_count, x.start_date,"
    " x.end_date"
)
_WORD = re.compile(r"[0-9A-Za-z]+")
# Every query of a search runs unprepared (`prepare=False`): psycopg prepares a statement run
# five times, and PostgreSQL then plans it once for any parameters. A plan good for one
# namespace or label is not for another: at a million executions such a generic plan took
# 3 s where the plan for the values at hand takes 8 ms.
_WORD_PREFIX = 32
"""The longest word prefix `search_words` holds (migrations/0009_search_indexes.sql)."""


STATES = EXECUTION_STATES
"""Kestra's execution states: a search for any other is a mistake."""

_DURATION = re.compile(
    r"P(?:(\d+)D)?(?:T(?:(\d+)H)?(?:(\d+)M)?(?:(\d+(?:\.\d+)?)S)?)?", re.IGNORECASE
)


def parse_date(value: str, what: str) -> dt.datetime:
    """An ISO-8601 date-time (UTC when it names no offset), to the millisecond, as the API
    shows dates; `what` names the input in the error."""
    try:
        at = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise _bad(f"{what} must be an ISO-8601 date-time, got {value!r}", what) from None
    at = at if at.tzinfo else at.replace(tzinfo=dt.UTC)
    # Dates are compared as the API shows them, to the millisecond (the database holds
    # microseconds): `<= t` keeps an execution shown at t, `> t` leaves it out.
    return at.replace(microsecond=at.microsecond // 1000 * 1000)


def parse_duration(value: str, what: str) -> dt.timedelta:
    """An ISO-8601 duration of days, hours, minutes and seconds (PT15M, PT1H, P1D, P1DT2H)."""
    match = _DURATION.fullmatch(value.strip())
    if not match or not any(match.groups()):
        raise _bad(f"{what} must be an ISO-8601 duration such as PT24H or P7D, got {value!r}", what)
    days, hours, minutes, seconds = (float(g) if g else 0.0 for g in match.groups())
    return dt.timedelta(days=days, hours=hours, minutes=minutes, seconds=seconds)


def parse_states(values: Sequence[str], what: str) -> set[str]:
    """Execution state names (any case), each one of `STATES`."""
    states = {v.upper() for v in values}
    if not states:
        raise _bad(f"{what} names no state", what)
    unknown = sorted(states - STATES)
    if unknown:
        raise _bad(
            f"Unknown execution state {', '.join(unknown)} in {what}; the states are "
            f"{', '.join(sorted(STATES))}",
            what,
        )
    return states


def _bad(message: str, path: str) -> InvalidRequest:
    return InvalidRequest(message, [Problem(message, path)])


@dataclass
class Search:
    """The filters of an executions search (each one narrows it; None or empty: no filter)."""

    namespace: str | None = None
    """This namespace and those under it (`a` finds `a` and `a.b`, not `ab`)."""
    namespace_exact: bool = False
    """`namespace` alone, not those under it."""
    flow_id: str | None = None
    states: Sequence[str] = ()
    start_date: dt.datetime | None = None
    """Executions started at or after it."""
    started_before: dt.datetime | None = None
    """Executions started at or before it."""
    end_date: dt.datetime | None = None
    """Executions ended at or before it (Kestra's meaning: a running one has not ended)."""
    labels: dict[str, str] = field(default_factory=dict)
    """Executions having every one of these labels."""
    q: str | None = None
    """The start of an id, or words each of which starts a word of the namespace or flow id
    (case-insensitive; `team1.ing` finds flow `ingest` in `company.team1`)."""
    trigger_types: Sequence[str] = ()
    """Executions started by a trigger of one of these types (`trigger.type`, e.g.
    io.kestra.plugin.core.trigger.Schedule, or io.kestra.plugin.core.flow.Subflow)."""
    trigger_types_excluded: Sequence[str] = ()
    """Executions not started by a trigger of one of these types (a manual one has none)."""
    trigger_ids: Sequence[str] = ()
    """Executions started by a trigger of one of these ids (`trigger.id`)."""
    trigger_execution_id: str | None = None
    """Executions started from this execution (`trigger.variables.executionId`: its subflows,
    and those its end started through a Flow trigger)."""
    parent_id: str | None = None
    """Subflow executions of this parent execution (`parentId`)."""
    child: bool | None = None
    """Kestra's childFilter: True, only subflow executions (CHILD); False, only others (MAIN)."""
    ids: Sequence[str] | None = None
    """Only executions of these ids (None: any)."""
    any_of: list[Search] = field(default_factory=list)
    """Condition groups joined by OR: an execution matches one of them (and every filter
    above). Each group is a search of its own (its filters AND); groups do not nest."""


def parse_query(text: str, *, now: dt.datetime | None = None) -> Search:
    """The search a query written as the CLI takes it asks for.

    A query is terms separated by spaces; a term is `field:value` (quote a value holding spaces
    as in a shell: `q:"my flow"`). Terms of different fields all apply (AND); terms repeated:

    - `state:FAILED` (also `state:FAILED,KILLED`): the current state; several `state:` terms
      mean any of them. Unknown states are refused.
    - `namespace:company.team`: that namespace and those under it; `namespace=company.team`
      (with `=`) that namespace alone.
    - `flowId:my-flow`; `labels:key:value` (also `label:`), several: every one of them.
    - `q:text`: the start of an execution id, or words starting words of namespace/flow id.
      A bare word (no `field:`) is a `q:` word too; bare words join into one text.
    - `startDate:2026-01-01T00:00:00Z` started at or after; `startedBefore:...` at or before;
      `endDate:...` ended at or before (ISO-8601, UTC when no offset is given).
    - `timeRange:P1D` (PT15M, PT1H, P7D, ...): started within that long before `now`
      (default: the current time).
    - `trigger:io.kestra.plugin.core.trigger.Schedule` (also `triggerType:`): the type of the
      trigger that started it, several: any of them; `-trigger:TYPE` excludes a type.
    - `triggerId:daily`: the trigger's id, several: any of them.
    - `triggerExecutionId:ID`: started from execution ID (its subflows, Flow triggers).
    - `parentId:ID`: subflow executions of ID; `childFilter:CHILD` / `childFilter:MAIN`:
      only subflow executions / only the others.

    Condition groups, as the API's `filters[or][N]...`: `( state:FAILED OR labels:env:prod )`
    holds groups of terms separated by `OR`; an execution matches one group (every term of it)
    and every term outside the parentheses: `timeRange:P1D namespace:a (state:FAILED OR
    flowId:etl labels:env:prod)`. One such set of groups, not nested.

    Field names are case-insensitive. A term with an unknown field, no value, or a bad value
    raises `InvalidRequest` naming the term. The result is what
    `search`/`prepare` take (the same `Search` as `GET /api/v1/executions/search` builds).
    """
    try:
        lexer = shlex.shlex(text, posix=True, punctuation_chars="()")
        lexer.whitespace_split = True
        # Parentheses run together ("((", ")(") come as one token: one each.
        tokens = [c for t in lexer for c in (t if t and not t.strip("()") else [t])]
    except ValueError as exc:
        raise _bad(f"Query {text!r} cannot be read: {exc}", "query") from None
    outside: list[str] = []
    groups: list[list[str]] | None = None
    inside = False
    for token in tokens:
        if token == "(":
            if inside or groups is not None:
                raise _bad(f"Query {text!r}: give one set of condition groups, not nested", "query")
            inside, groups = True, [[]]
        elif token == ")":
            if not inside:
                raise _bad(f"Query {text!r}: ')' closes no '('", "query")
            inside = False
        elif token == "OR" and inside:
            assert groups is not None
            groups.append([])
        elif token == "OR":
            raise _bad(f"Query {text!r}: OR separates groups inside ( ... )", "query")
        elif inside:
            assert groups is not None
            groups[-1].append(token)
        else:
            outside.append(token)
    if inside:
        raise _bad(f"Query {text!r}: '(' is not closed", "query")
    out = _parse_terms(outside, now)
    if groups is not None:
        if not all(groups):
            raise _bad(f"Query {text!r}: a condition group holds no term", "query")
        out.any_of = [_parse_terms(group, now) for group in groups]
    return out


def _parse_terms(terms: list[str], now: dt.datetime | None) -> Search:
    """The search of plain terms (see `parse_query`)."""
    out = Search()
    states: set[str] = set()
    words: list[str] = []
    labels: dict[str, str] = {}
    types: list[str] = []
    excluded: list[str] = []
    trigger_ids: list[str] = []
    at_now = now or dt.datetime.now(dt.UTC)
    for term in terms:
        exact = False
        name, sep, value = term.partition(":")
        if "=" in name or (not sep and "=" in term):
            name, sep, value = term.partition("=")
            exact = True
        if not sep:
            words.append(term)
            continue
        key = name.lower()
        if key not in _QUERY_FIELDS or (exact and key != "namespace"):
            raise _bad(
                f"Unknown field {name!r} in query term {term!r}; the fields are "
                f"{', '.join(sorted(set(_QUERY_FIELDS.values())))} (field:value)",
                term,
            )
        if value == "":
            raise _bad(f"Query term {term!r} has no value", term)
        key = _QUERY_FIELDS[key]
        if key == "state":
            states |= parse_states([v for v in value.split(",") if v], term)
        elif key == "namespace":
            if out.namespace is not None and (out.namespace, out.namespace_exact) != (
                value,
                exact,
            ):
                raise _bad(f"Query term {term!r} is a second namespace: give one", term)
            out.namespace, out.namespace_exact = value, exact
        elif key == "flowId":
            if out.flow_id is not None and out.flow_id != value:
                raise _bad(f"Query term {term!r} is a second flowId: give one", term)
            out.flow_id = value
        elif key == "labels":
            label, has, label_value = value.partition(":")
            if not has or not label:
                raise _bad(f"Query term {term!r} must be labels:key:value", term)
            if labels.get(label, label_value) != label_value:
                raise _bad(f"Query term {term!r} asks label {label} for a second value", term)
            labels[label] = label_value
        elif key == "q":
            words.append(value)
        elif key == "startDate":
            at = parse_date(value, term)
            out.start_date = at if out.start_date is None else max(out.start_date, at)
        elif key == "startedBefore":
            at = parse_date(value, term) + _LAST_OF_MS
            out.started_before = at if out.started_before is None else min(out.started_before, at)
        elif key == "endDate":
            at = parse_date(value, term) + _LAST_OF_MS
            out.end_date = at if out.end_date is None else min(out.end_date, at)
        elif key == "timeRange":
            at = at_now - parse_duration(value, term)
            out.start_date = at if out.start_date is None else max(out.start_date, at)
        elif key == "trigger":
            types.append(value)
        elif key == "-trigger":
            excluded.append(value)
        elif key == "triggerId":
            trigger_ids.append(value)
        elif key == "triggerExecutionId":
            if out.trigger_execution_id not in (None, value):
                raise _bad(f"Query term {term!r} is a second triggerExecutionId", term)
            out.trigger_execution_id = value
        elif key == "parentId":
            if out.parent_id not in (None, value):
                raise _bad(f"Query term {term!r} is a second parentId", term)
            out.parent_id = value
        elif key == "childFilter":
            if value.upper() not in ("CHILD", "MAIN"):
                raise _bad(f"Query term {term!r}: childFilter is CHILD or MAIN", term)
            out.child = value.upper() == "CHILD"
    out.states = sorted(states)
    out.labels = labels
    out.q = " ".join(words) or None
    out.trigger_types = types
    out.trigger_types_excluded = excluded
    out.trigger_ids = trigger_ids
    return out


_QUERY_FIELDS = {
    "state": "state",
    "namespace": "namespace",
    "flowid": "flowId",
    "labels": "labels",
    "label": "labels",
    "q": "q",
    "startdate": "startDate",
    "startedbefore": "startedBefore",
    "enddate": "endDate",
    "timerange": "timeRange",
    "trigger": "trigger",
    "triggertype": "trigger",
    "-trigger": "-trigger",
    "triggerid": "triggerId",
    "triggerexecutionid": "triggerExecutionId",
    "parentid": "parentId",
    "childfilter": "childFilter",
}
_LAST_OF_MS = dt.timedelta(microseconds=999)


@dataclass
class Page:
    """One page of results, the total (estimated above `COUNT_EXACT_UP_TO`) and, when more
    rows may follow, the cursor that continues after this page."""

    rows: list[dict[str, Any]]
    total: int
    estimated: bool
    next: str | None


@dataclass
class Where:
    """The condition of a search, whole (`sql`, `params`), and as `arms` to read one by one
    and merge: one per state when several states are asked for, since one index range in date
    order per state is what keeps a deep page cheap; else the whole condition alone."""

    sql: str
    params: list[Any]
    arms: list[tuple[str, list[Any]]]
    distinct: bool = False
    """The arms may find one row twice (condition groups): merge them without duplicates."""

    def narrowed(self, sql: str, params: Sequence[Any]) -> Where:
        """This condition and `sql` too, in every arm."""
        return Where(
            f"{self.sql} AND {sql}",
            [*self.params, *params],
            [(f"{a} AND {sql}", [*p, *params]) for a, p in self.arms],
            self.distinct,
        )


def condition(scope: str, scope_params: Sequence[Any], search: Search) -> Where:
    """The WHERE clause (and its parameters) of `search` within the caller's `scope`."""
    where, params = _terms(search)
    where.insert(0, scope)
    params[:0] = scope_params
    rare, rare_params = _indexed_terms(search)
    if rare:
        where.append(rare)
        params += rare_params
    base = " AND ".join(where)
    states = sorted({s.upper() for s in search.states})
    if search.any_of:
        # One arm per group, each read in order from the index its filters have, then merged
        # without duplicates (an execution may match several groups).
        groups = [_group(g) for g in search.any_of]
        if len(states) == 1:
            base, params = f"{base} AND state = %s", [*params, states[0]]
        elif states:
            base, params = f"{base} AND state = ANY(%s::text[])", [*params, states]
        whole = " OR ".join(f"({sql})" for sql, _ in groups)
        return Where(
            f"{base} AND ({whole})",
            [*params, *(p for _, group in groups for p in group)],
            [(f"{base} AND {sql}", [*params, *group]) for sql, group in groups],
            distinct=len(groups) > 1,
        )
    if not states:
        return Where(base, params, [(base, params)])
    if len(states) == 1:
        sql, all_params = f"{base} AND state = %s", [*params, states[0]]
        return Where(sql, all_params, [(sql, all_params)])
    return Where(
        f"{base} AND state = ANY(%s::text[])",
        [*params, states],
        [(f"{base} AND state = %s", [*params, state]) for state in states],
    )


def _group(search: Search) -> tuple[str, list[Any]]:
    """One condition group of `any_of`: all its filters, as one parenthesised condition."""
    if search.any_of:
        raise _bad("Condition groups do not nest: give each group plain filters", "filters")
    where, params = _terms(search)
    rare, rare_params = _indexed_terms(search)
    if rare:
        where.append(rare)
        params += rare_params
    states = sorted({s.upper() for s in search.states})
    if states:
        where.append("state = ANY(%s::text[])")
        params.append(states)
    return "(" + (" AND ".join(where) or "true") + ")", params


def _terms(search: Search) -> tuple[list[str], list[Any]]:
    """The btree-served conditions of `search` (all but states, labels and `q=`)."""
    where: list[str] = []
    params: list[Any] = []
    if search.namespace and search.namespace_exact:
        where.append("namespace = %s")
        params.append(search.namespace)
    elif search.namespace:
        ns = search.namespace
        # One btree range, [ns, ns + '/'), minus the names that sort between ns and ns + '.'
        # (ns-x, ns+x, ...): what is left is ns itself and everything under ns + '.'. The
        # planner estimates the excluded part as tiny, so the estimate is the range's.
        where.append(
            "namespace >= %s AND namespace < %s AND NOT (namespace > %s AND namespace < %s)"
        )
        params += [ns, ns + "/", ns, ns + "."]
    if search.flow_id:
        where.append("flow_id = %s")
        params.append(search.flow_id)
    if search.start_date is not None:
        where.append("start_date >= %s")
        params.append(search.start_date)
    if search.started_before is not None:
        where.append("start_date <= %s")
        params.append(search.started_before)
    if search.end_date is not None:
        # An execution ends after it starts: the second bound is implied, and lets the
        # date-ordered index start its scan at the end date instead of at the newest row.
        where.append("end_date <= %s AND start_date <= %s")
        params += [search.end_date, search.end_date]
    # The trigger and parent filters below are written as the expressions of the indexes of
    # migrations/0012_execution_groups.sql.
    if search.trigger_types:
        types = sorted(set(search.trigger_types))
        if len(types) == 1:
            where.append("(trigger ->> 'type') = %s")
            params.append(types[0])
        else:
            where.append("(trigger ->> 'type') = ANY(%s::text[])")
            params.append(types)
    if search.trigger_types_excluded:
        where.append("coalesce(trigger ->> 'type', '') <> ALL(%s::text[])")
        params.append(sorted(set(search.trigger_types_excluded)))
    if search.trigger_ids:
        where.append("(trigger ->> 'id') = ANY(%s::text[])")
        params.append(sorted(set(search.trigger_ids)))
    if search.trigger_execution_id is not None:
        where.append("(trigger -> 'variables' ->> 'executionId') = %s")
        params.append(search.trigger_execution_id)
    if search.parent_id is not None:
        where.append("parent_id = %s")
        params.append(search.parent_id)
    if search.child is not None:
        where.append("parent_id IS NOT NULL" if search.child else "parent_id IS NULL")
    if search.ids is not None:
        where.append("id = ANY(%s::text[])")
        params.append(list(search.ids))
    return where, params


def _indexed_terms(search: Search) -> tuple[str, list[Any]]:
    """The label and `q=` conditions, answered by GIN indexes (and the primary key)."""
    where: list[str] = []
    params: list[Any] = []
    if search.labels:
        pairs = [{"key": k, "value": v} for k, v in search.labels.items()]
        where.append("label_pairs @> execution_label_pairs(%s::jsonb)")
        params.append(orjson.dumps(pairs).decode())
    if search.q:
        ids = "id >= %s AND id < %s"
        params += [search.q, search.q + "\U0010ffff"]
        words = sorted({w.lower()[:_WORD_PREFIX] for w in _WORD.findall(search.q)})
        if words:
            where.append(f"(({ids}) OR search_words @> %s::text[])")
            params.append(words)
        else:
            where.append(ids)
    return " AND ".join(where), params


def prepare(
    conn: psycopg.Connection[Any], scope: str, scope_params: Sequence[Any], search: Search
) -> Where:
    """`condition`, with the label and `q=` filters resolved to the ids they match when those
    are few.

    The planner knows how common a label or a word is only for the 10,000 most common; for any
    other it guesses some thousands of rows, and would then read the newest executions one by
    one looking for a correlation id that only one of them has. Asking the GIN indexes first
    (at most `PROBE_UP_TO` rows) turns such a filter into a list of ids the planner cannot
    misjudge. A filter it expects to be common (above `PROBE_BELOW_ESTIMATE`) is left to it.
    """
    if search.any_of:
        # Each group's own labels and words are resolved the same way, group by group.
        groups = [_probed(conn, g) for g in search.any_of]
        search = dataclasses.replace(search, any_of=groups)
    where = condition(scope, scope_params, search)
    found = _probe(conn, search)
    if found is None:
        return where
    return where.narrowed("id = ANY(%s::text[])", [found])


def _probed(conn: psycopg.Connection[Any], group: Search) -> Search:
    """`group` narrowed to the ids its labels and words match, when those are few."""
    found = _probe(conn, group)
    if found is None:
        return group
    return dataclasses.replace(group, ids=found)


def _probe(conn: psycopg.Connection[Any], search: Search) -> list[str] | None:
    """The ids the label and `q=` filters of `search` match, when the planner does not expect
    them common and they are at most `PROBE_UP_TO`; else None."""
    rare, rare_params = _indexed_terms(search)
    if not rare or _estimate(conn, rare, rare_params) > PROBE_BELOW_ESTIMATE:
        return None
    with conn.transaction():
        # Through the indexes only: a bitmap of what they match, whatever the planner guesses.
        conn.execute(
            "SET LOCAL enable_seqscan = off; SET LOCAL enable_indexscan = off;"
            " SET LOCAL enable_indexonlyscan = off"
        )
        found = conn.execute(
            f"SELECT id FROM executions WHERE {rare} LIMIT %s",
            [*rare_params, PROBE_UP_TO + 1],
            prepare=False,
        ).fetchall()
    if len(found) > PROBE_UP_TO:
        return None
    return [r[0] for r in found]


def encode_cursor(row: dict[str, Any]) -> str:
    """The `after=` value that continues a search after `row`."""
    raw = orjson.dumps([row["start_date"].isoformat(), row["id"]])
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[dt.datetime, str]:
    """The (start date, id) a cursor of `encode_cursor` stands for."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        start, xid = orjson.loads(raw)
        at = dt.datetime.fromisoformat(start)
        if not isinstance(xid, str) or "\x00" in xid or at.tzinfo is None:
            raise ValueError(cursor)
    except (ValueError, TypeError, binascii.Error, orjson.JSONDecodeError):
        raise InvalidRequest(
            "Query parameter 'after' must be the 'next' value of a previous search answer"
        ) from None
    return at, xid


SORTS = {
    "id": "id",
    "namespace": "namespace",
    "flowId": "flow_id",
    "state.current": "state",
    "state.startDate": "start_date",
    "state.endDate": "end_date",
    "state.duration": "end_date - start_date",
    "flowRevision": "flow_revision",
    "taskRunCount": "task_run_count",
}
"""The columns a search sorts by (Kestra's names) and their SQL. A running execution has no
end date nor duration: it sorts after the ended ones in ascending order, before them in
descending order."""


def _order(sort: str, ascending: bool) -> list[tuple[str, str]]:
    """The ORDER BY terms of a sort: the column, then start date and id, so that every row
    has one place and paging is stable. Ties of namespace, flow id or state come newest first
    in ascending order, as the indexes (column, start_date DESC, id DESC) hold them, and the
    whole order is reversed in descending order (the same index read backwards)."""
    first = "ASC" if ascending else "DESC"
    then = "DESC" if ascending else "ASC"
    if sort not in SORTS:
        raise _bad(f"Cannot sort executions by {sort!r}; sort by one of {', '.join(SORTS)}", "sort")
    column = SORTS[sort]
    if column == "start_date":
        return [("start_date", first), ("id", first)]
    if column == "id":
        return [("id", first)]
    return [(column, first), ("start_date", then), ("id", then)]


def search(
    conn: psycopg.Connection[Any],
    scope: str,
    scope_params: Sequence[Any],
    filters: Search,
    *,
    page: int,
    size: int,
    after: str | None = None,
    ascending: bool = False,
    sort: str = "state.startDate",
) -> Page:
    """A page of the executions that `filters` finds within `scope` (a condition on the rows
    the caller may see), sorted by `sort` (a key of `SORTS`; by default the start date),
    newest or largest first (smallest first with `ascending`).

    With `after` (a `next` cursor, given for the start-date order) the page starts right after
    that row, found through the index whatever the depth; else at row `(page - 1) * size`, at
    most `MAX_OFFSET`. The rows skipped by an offset are read from an index alone: the page's
    ids are found first, then only their rows are read.
    """
    by_start = SORTS.get(sort) == "start_date"
    if after and not by_start:
        raise _bad(
            "Query parameter 'after' continues a search sorted by start date; with another "
            "sort, ask for the next page",
            "after",
        )
    offset = 0 if after else (page - 1) * size
    if offset > MAX_OFFSET:
        raise InvalidRequest(
            f"Page {page} of size {size} starts at row {offset}; pages start at most at row "
            f"{MAX_OFFSET}: narrow the search, or follow the 'next' cursor of each answer "
            "with after=<next>"
        )
    where = prepare(conn, scope, scope_params, filters)
    sql, sql_params = page_query(
        where, offset=offset, size=size, after=after, ascending=ascending, sort=sort
    )
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(sql, sql_params, prepare=False)
        rows = cur.fetchall()
    more = len(rows) > size
    rows = rows[:size]
    if not more and (rows or offset == 0) and not after:
        total, estimated = offset + len(rows), False
    else:
        total, estimated = count(conn, where.sql, where.params)
    cursor = encode_cursor(rows[-1]) if more and by_start else None
    return Page(rows, total, estimated, cursor)


def page_query(
    where: Where,
    *,
    offset: int,
    size: int,
    after: str | None = None,
    ascending: bool = False,
    sort: str = "state.startDate",
) -> tuple[str, list[Any]]:
    """The SQL (and parameters) that `search` runs for a page: one row more than `size`, which
    tells whether another page follows."""
    if after:
        at, xid = decode_cursor(after)
        where = where.narrowed(f"(start_date, id) {'>' if ascending else '<'} (%s, %s)", [at, xid])
    order = _order(sort, ascending)
    keys_of = ", ".join(f"{expr} AS k{i}" for i, (expr, _) in enumerate(order))
    by_keys = "ORDER BY " + ", ".join(f"k{i} {d}" for i, (_, d) in enumerate(order))
    if len(where.arms) == 1:
        keys = (
            f"SELECT id, {keys_of} FROM executions WHERE {where.sql} {by_keys} LIMIT %s OFFSET %s"
        )
        params = [*where.params, size + 1, offset]
    else:
        # Each arm's rows (a state's, a condition group's) in order from its index range, at
        # most as many as the page needs, then merged: never more rows read than the deepest
        # page asks for, per arm.
        arms = [
            f"(SELECT id, {keys_of} FROM executions WHERE {sql} {by_keys} LIMIT %s)"
            for sql, _ in where.arms
        ]
        union = " UNION " if where.distinct else " UNION ALL "
        keys = f"SELECT * FROM ({union.join(arms)}) AS u {by_keys} LIMIT %s OFFSET %s"
        params = [p for _, arm in where.arms for p in (*arm, offset + size + 1)]
        params += [size + 1, offset]
    outer = ", ".join(f"k.k{i} {d}" for i, (_, d) in enumerate(order))
    sql = (
        f"SELECT {_COLUMNS} FROM ({keys}) AS k JOIN executions AS x ON x.id = k.id ORDER BY {outer}"
    )
    return sql, params


def count(
    conn: psycopg.Connection[Any], where: str, params: Sequence[Any], table: str = "executions"
) -> tuple[int, bool]:
    """How many rows of `table` match `where`: counted up to `COUNT_EXACT_UP_TO`, the
    planner's estimate above it. The second value says whether it is an estimate."""
    limited = conn.execute(
        f"SELECT count(*) FROM (SELECT 1 FROM {table} WHERE {where} LIMIT %s) AS s",
        [*params, COUNT_EXACT_UP_TO + 1],
        prepare=False,
    ).fetchone()
    n = int(limited[0]) if limited else 0
    if n <= COUNT_EXACT_UP_TO:
        return n, False
    # Never below what was counted: the planner can guess low for a rare combination.
    return max(_estimate(conn, where, params, table), n), True


def _estimate(
    conn: psycopg.Connection[Any], where: str, params: Sequence[Any], table: str = "executions"
) -> int:
    """The planner's estimate of how many rows of `table` match `where`."""
    plan = conn.execute(
        f"EXPLAIN (FORMAT JSON) SELECT 1 FROM {table} WHERE {where}", params, prepare=False
    )
    row = plan.fetchone()
    return int(row[0][0]["Plan"]["Plan Rows"]) if row else 0


# --- statistics --------------------------------------------------------------------------------

MAX_STAT_BUCKETS = 24 * 366
"""The most buckets one statistics answer holds (a year of hours, or of days)."""


@dataclass
class StatsQuery:
    """What `daily_stats` counts: executions started in [start, end), grouped by `unit`."""

    start: dt.datetime
    end: dt.datetime
    unit: str = "day"
    """day or hour (UTC)."""
    namespace: str | None = None
    """This namespace and those under it."""
    flow_id: str | None = None
    states: Sequence[str] = ()


def daily_stats(
    conn: psycopg.Connection[Any], scope: str, scope_params: Sequence[Any], query: StatsQuery
) -> list[dict[str, Any]]:
    """Per bucket (every one of the range, empty ones too): the executions by current state
    and the durations of the ended ones, read from the rollups `execution_stats` and
    `execution_durations`, within the caller's `scope` (a condition on `namespace`).

    Each entry: `startDate` (the bucket), `groupBy`, `executionCounts` (every state, 0 when
    none), `duration` (`count` of ended executions, `sum` and `avg` in seconds; the rollups
    keep duration classes, not each duration, so there is no exact min or max).
    """
    where = [scope, "bucket >= %s", "bucket < %s"]
    params: list[Any] = [*scope_params, query.start, query.end]
    if query.namespace:
        where.append("(namespace = %s OR (namespace >= %s AND namespace < %s))")
        params += [query.namespace, query.namespace + ".", query.namespace + "/"]
    if query.flow_id:
        where.append("flow_id = %s")
        params.append(query.flow_id)
    if query.states:
        where.append("state = ANY(%s::text[])")
        params.append(sorted({s.upper() for s in query.states}))
    cond = " AND ".join(where)
    unit = "hour" if query.unit == "hour" else "day"
    group = f"date_trunc('{unit}', bucket AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'"
    counts = conn.execute(
        f"SELECT {group} AS b, state, sum(count)::bigint FROM execution_stats WHERE {cond}"
        " GROUP BY 1, 2",
        params,
        prepare=False,
    ).fetchall()
    durations = conn.execute(
        f"SELECT {group} AS b, sum(count)::bigint, sum(sum_ms)::bigint FROM execution_durations"
        f" WHERE {cond} GROUP BY 1",
        params,
        prepare=False,
    ).fetchall()
    step = dt.timedelta(hours=1) if unit == "hour" else dt.timedelta(days=1)
    out: dict[dt.datetime, dict[str, Any]] = {}
    at = query.start
    while at < query.end:
        out[at] = {
            "startDate": iso(at),
            "groupBy": unit,
            "executionCounts": dict.fromkeys(sorted(STATES), 0),
            "duration": {"count": 0, "sum": 0.0, "avg": None, "min": None, "max": None},
        }
        at += step
    for bucket, state, n in counts:
        entry = out.get(bucket)
        if entry is not None:
            entry["executionCounts"][state] = int(n)
    for bucket, n, ms in durations:
        entry = out.get(bucket)
        if entry is not None and n:
            entry["duration"].update(count=int(n), sum=ms / 1000, avg=ms / 1000 / n)
    return list(out.values())
