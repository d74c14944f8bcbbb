"""The `logs` read model: every log line of every task run, with its execution's namespace and
flow id.

A batch is written with one INSERT (the lines of all its events as arrays). The namespace and
flow id of an execution come from its `ExecutionCreated` event, read once per execution and kept
in a small cache: the executions read model may lag behind this one, the event never does.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import psycopg
from psycopg.rows import dict_row

from engine import events as ev
from engine.purge import logs_condition
from engine.store import StoredEvent

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


class LogsProjection:
    """Log lines, one row each, keyed by their event position and line number."""

    name = "logs"
    types = ("AttemptLogged", "ExecutionPurged", "LogsPurged")
    tables = ("logs",)

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
                conn.execute("DELETE FROM logs WHERE execution_id = %s", (event.executionId,))
                continue
            if isinstance(event, ev.LogsPurged):
                self._flush(rows, conn)
                rows = tuple([] for _ in range(12))
                where, params = logs_condition(event)
                # Only lines recorded before the purge: a rebuild deletes what it deleted.
                conn.execute(f"DELETE FROM logs WHERE seq < %s AND {where}", [e.seq, *params])
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
            conn.execute(_INSERT, rows)


def execution_lines(
    conn: psycopg.Connection[Any],
    execution_id: str,
    levels: Sequence[str],
    *,
    task_run_id: str | None = None,
    task_id: str | None = None,
) -> list[dict[str, Any]]:
    """The log lines of one execution at `levels`, in the order they were logged (optionally
    of one task run or one task only)."""
    where = ["execution_id = %s", "level = ANY(%s::text[])"]
    params: list[Any] = [execution_id, list(levels)]
    if task_run_id is not None:
        where.append("task_run_id = %s")
        params.append(task_run_id)
    if task_id is not None:
        where.append("task_id = %s")
        params.append(task_id)
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(
            "SELECT execution_id, namespace, flow_id, task_id, task_run_id, attempt, timestamp,"
            f" level, message FROM logs WHERE {' AND '.join(where)} ORDER BY seq, line",
            params,
            prepare=False,
        )
        return cur.fetchall()
