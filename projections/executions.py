"""The `executions` read model: one row per execution, for search and the dashboard."""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from engine import events as ev
from engine.execution import iso
from engine.plugin import TERMINAL_STATES
from engine.store import StoredEvent


class ExecutionsProjection:
    """Each execution's summary: state and its history, labels, inputs, outputs, dates."""

    name = "executions"
    types = (
        "ExecutionCreated",
        "ExecutionStateChanged",
        "TaskRunCreated",
        "ExecutionLabelsChanged",
        "ExecutionPurged",
    )
    tables = ("executions",)

    def apply(self, batch: list[StoredEvent], conn: psycopg.Connection[Any]) -> None:
        for e in batch:
            event = e.event
            if isinstance(event, ev.ExecutionCreated):
                conn.execute(
                    "INSERT INTO executions (id, namespace, flow_id, flow_revision, state,"
                    " histories, labels, inputs, trigger, parent_id, original_id, start_date,"
                    " last_seq) VALUES (%s, %s, %s, %s, 'CREATED', %s, %s, %s, %s, %s, %s, %s, %s)"
                    " ON CONFLICT (id) DO NOTHING",
                    (
                        event.executionId,
                        event.namespace,
                        event.flowId,
                        event.flowRevision,
                        Jsonb([{"state": "CREATED", "date": iso(e.recorded_at)}]),
                        Jsonb(event.labels),
                        Jsonb(event.inputs),
                        Jsonb(event.trigger) if event.trigger else None,
                        event.parentId,
                        event.originalId or event.executionId,
                        e.recorded_at,
                        e.seq,
                    ),
                )
            elif isinstance(event, ev.ExecutionStateChanged):
                conn.execute(
                    "UPDATE executions SET state = %s, histories = histories || %s,"
                    " outputs = coalesce(%s, outputs), end_date = %s, last_seq = %s"
                    " WHERE id = %s AND last_seq < %s",
                    (
                        event.state,
                        Jsonb([{"state": event.state, "date": iso(e.recorded_at)}]),
                        Jsonb(event.outputs) if event.outputs is not None else None,
                        e.recorded_at if event.state in TERMINAL_STATES else None,
                        e.seq,
                        event.executionId,
                        e.seq,
                    ),
                )
            elif isinstance(event, ev.ExecutionLabelsChanged):
                conn.execute(
                    "UPDATE executions SET labels = %s WHERE id = %s",
                    (Jsonb(event.labels), event.executionId),
                )
            elif isinstance(event, ev.ExecutionPurged):
                conn.execute("DELETE FROM executions WHERE id = %s", (event.executionId,))
            elif isinstance(event, ev.TaskRunCreated):
                conn.execute(
                    "UPDATE executions SET task_run_count = task_run_count + 1 WHERE id = %s",
                    (event.executionId,),
                )
