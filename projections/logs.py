"""The `logs` read model: every log line of every task run."""

from __future__ import annotations

from typing import Any

import psycopg

from engine import events as ev
from engine.store import StoredEvent


class LogsProjection:
    """Log lines, one row each, keyed by their event position and line number."""

    name = "logs"
    types = ("AttemptLogged", "ExecutionPurged")
    tables = ("logs",)

    def apply(self, batch: list[StoredEvent], conn: psycopg.Connection[Any]) -> None:
        rows = []
        for e in batch:
            event = e.event
            if isinstance(event, ev.ExecutionPurged) and event.logs:
                self._flush(rows, conn)
                rows = []
                conn.execute("DELETE FROM logs WHERE execution_id = %s", (event.executionId,))
                continue
            if not isinstance(event, ev.AttemptLogged):
                continue
            for i, line in enumerate(event.lines):
                rows.append(
                    (
                        e.seq,
                        i,
                        event.executionId,
                        event.taskId,
                        event.taskRunId,
                        event.attempt,
                        line.get("timestamp"),
                        line.get("level", "INFO"),
                        str(line.get("message", "")),
                    )
                )
        self._flush(rows, conn)

    def _flush(self, rows: list[tuple[Any, ...]], conn: psycopg.Connection[Any]) -> None:
        if not rows:
            return
        with conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO logs (seq, line, execution_id, task_id, task_run_id, attempt,"
                " timestamp, level, message) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)"
                " ON CONFLICT DO NOTHING",
                rows,
            )
