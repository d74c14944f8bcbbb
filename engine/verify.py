"""`tiercel sys verify`: refold recorded executions through the current code.

For every execution stream (or one, or those written since a position), the history is read
back and replayed: at every event that was an input to the executor the current `decide` must
make exactly the decisions that were recorded, and the state folded with decisions in place
must equal the state folded in log order. Executions the executor parked are reported too.
Run it before and after an upgrade: a difference means the new code would read old histories
differently.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import msgspec
import psycopg

from engine.execution import Mismatch, verify
from engine.executor_shell import INPUT_TYPES, recorded
from engine.storage import Storage
from engine.store import StoredEvent, read_execution_sync, unresolved


class Finding(msgspec.Struct, frozen=True):
    """One execution whose recorded history the current code does not reproduce."""

    executionId: str
    kind: str
    """`decisions`, `state`, `unreadable` (a value kept in internal storage is missing) or
    `parked`."""
    position: int
    """The first diverging event (or where the execution was parked)."""
    eventType: str
    recorded: list[str]
    replayed: list[str]


class Report(msgspec.Struct):
    """What a verification found."""

    executions: int = 0
    events: int = 0
    findings: list[Finding] = []

    @property
    def ok(self) -> bool:
        """True when every history refolds exactly."""
        return not self.findings


def execution_ids(
    conn: psycopg.Connection[Any], *, execution: str | None = None, since: int = 0
) -> Iterator[str]:
    """The executions to verify: one, or every one with an event after position `since`."""
    if execution is not None:
        yield execution
        return
    if since <= 0:
        cur = conn.execute(
            "SELECT data->>'executionId' FROM events WHERE type = 'ExecutionCreated'"
        )
    else:
        cur = conn.execute(
            "SELECT DISTINCT data->>'executionId' FROM events"
            " WHERE seq > %s AND stream_id LIKE 'exec:%%'",
            (since,),
        )
    yield from sorted({row[0] for row in cur.fetchall() if row[0]})


def verify_execution(history: list[StoredEvent]) -> list[Mismatch]:
    """The mismatches of one execution's history (empty when it refolds exactly)."""
    inputs = [recorded(e) for e in history if e.type in INPUT_TYPES]
    _, mismatches = verify(inputs)
    return mismatches


def verify_database(
    conn: psycopg.Connection[Any],
    *,
    execution: str | None = None,
    since: int = 0,
    storage: Storage | None = None,
) -> Report:
    """Verify the executions of a database (see the module's doc); large values of events
    are read back from `storage`."""
    report = Report()
    for xid in execution_ids(conn, execution=execution, since=since):
        history = read_execution_sync(conn, xid, storage)
        if not history:
            continue
        report.executions += 1
        report.events += len(history)
        lost = next(((e, r) for e in history if (r := unresolved(e.event))), None)
        if lost is not None:
            report.findings.append(
                Finding(xid, "unreadable", lost[0].seq, lost[0].type, [lost[1]], [])
            )
            continue
        types = {e.seq: e.type for e in history}
        for m in verify_execution(history):
            report.findings.append(
                Finding(xid, m.kind, m.cause, types.get(m.cause, ""), m.recorded, m.replayed)
            )
    exists = conn.execute("SELECT to_regclass('engine_parked') IS NOT NULL").fetchone()
    if exists and exists[0]:
        rows = conn.execute(
            "SELECT execution_id, seq, error FROM engine_parked"
            + (" WHERE execution_id = %s" if execution else "")
            + " ORDER BY seq",
            (execution,) if execution else None,
        ).fetchall()
        for xid, seq, error in rows:
            report.findings.append(Finding(xid, "parked", seq, "", [error], []))
    return report
