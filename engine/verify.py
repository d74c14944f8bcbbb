"""`tiercel sys verify`: refold recorded executions through the current code.

For every execution stream (or one, or those written since a position), the history is read
back and replayed: at every event that was an input to the executor the current `decide` must
make exactly the decisions that were recorded, and the state folded with decisions in place
must equal the state folded in log order. Executions the executor parked are reported too.
Run it before and after an upgrade: a difference means the new code would read old histories
differently.

`verify_chain` recomputes the hash chain of the `events` table (migrations/0006_event_chain.sql)
here, in Python, from each row's stored content, so neither a changed row nor a changed function
in the database can vouch for itself.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Iterator
from typing import Any

import msgspec
import psycopg

from engine.execution import Mismatch, verify
from engine.executor_shell import INPUT_TYPES, recorded
from engine.secrets import erased, unopened
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
    unchecked: list[str] = []
    """Executions whose decisions made on values of their users could not be made again:
    erased by a purge, or sealed with a key this process cannot unwrap (see engine.secrets)."""

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
        # A sealed value this process cannot open (no master key) is no lost value: the history
        # folds without it, as it does once a purge erased it.
        sealed = any(unopened(e.event) for e in history)
        lost = next(
            ((e, r) for e in history if not unopened(e.event) and (r := unresolved(e.event))),
            None,
        )
        if lost is not None:
            report.findings.append(
                Finding(xid, "unreadable", lost[0].seq, lost[0].type, [lost[1]], [])
            )
            continue
        types = {e.seq: e.type for e in history}
        mismatches = verify_execution(history)
        if sealed or erased(history):
            # What its users gave it was erased by a purge (its key is gone), or is sealed with
            # a key this process cannot unwrap: decisions made on those values cannot be made
            # again; the rest of the history still folds and is checked.
            kept = [m for m in mismatches if m.kind != "decisions"]
            if len(kept) < len(mismatches):
                report.unchecked.append(xid)
            mismatches = kept
        for m in mismatches:
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


# --- the hash chain ------------------------------------------------------------------------------

GENESIS = bytes(32)
"""The hash the first row chains to."""


def chain_content(
    seq: int,
    stream_id: str,
    version: int,
    type_: str,
    data: str,
    meta: str,
    command_id: str | None,
    recorded_at: dt.datetime,
) -> bytes:
    """The bytes a row contributes to its hash (`data` and `meta` in jsonb's text form), as
    migrations/0006_event_chain.sql defines them: for each field, its UTF-8 length, ':', its
    text and a newline; `-` and a newline for a missing command id."""
    parts = [
        str(seq),
        stream_id,
        str(version),
        type_,
        data,
        meta,
        command_id,
        recorded_at.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S.%f"),
    ]
    out = bytearray()
    for part in parts:
        if part is None:
            out += b"-\n"
            continue
        raw = part.encode()
        out += b"%d:%b\n" % (len(raw), raw)
    return bytes(out)


def chain_hash(previous: bytes, content: bytes) -> bytes:
    """A row's hash: sha256 over the previous row's hash and the row's content."""
    return hashlib.sha256(previous + content).digest()


class ChainBreak(msgspec.Struct, frozen=True):
    """A place where the stored log no longer matches its hash chain."""

    position: int
    """The first row whose stored hash the recomputation does not reach (for a removed tail,
    the position after the last row)."""
    previous: int | None
    """The row before it (None when it is the first row)."""
    reason: str


class ChainReport(msgspec.Struct):
    """What a recomputation of the hash chain found."""

    rows: int = 0
    head: int = 0
    """The last position of the log."""
    headHash: str = ""
    """That row's hash (hex): keep it somewhere else and pass it back as an anchor later."""
    breaks: list[ChainBreak] = []
    truncated: bool = False
    """True when more breaks were found than are listed."""

    @property
    def ok(self) -> bool:
        """True when every row chains to the one before it."""
        return not self.breaks


_CHAIN_QUERY = (
    "SELECT seq, stream_id, version, type, data::text, meta::text, command_id, recorded_at, hash"
    " FROM events WHERE seq > %s ORDER BY seq LIMIT %s"
)


def verify_chain(
    conn: psycopg.Connection[Any],
    *,
    anchor: tuple[int, bytes] | None = None,
    page: int = 2000,
    max_breaks: int = 100,
) -> ChainReport:
    """Recompute the hash chain of every event row, in position order, and report each row
    whose stored hash does not follow from the row before it (a changed, removed, inserted or
    reordered row); also a removed tail (consumers' checkpoints past the last row) and, with
    `anchor` (a position and the hash it had when noted), a log rewritten since then.

    Reads one snapshot (a read-only repeatable-read transaction), page by page.
    """
    report = ChainReport()
    with conn.transaction():
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        _walk_chain(conn, report, page, max_breaks)
        _check_tail(conn, report)
        if anchor is not None:
            _check_anchor(conn, report, anchor)
    report.breaks.sort(key=lambda b: b.position)
    return report


def _walk_chain(
    conn: psycopg.Connection[Any], report: ChainReport, page: int, max_breaks: int
) -> None:
    previous_seq: int | None = None
    previous_hash = GENESIS
    after = -1
    while True:
        rows = conn.execute(_CHAIN_QUERY, (after, page)).fetchall()
        for seq, stream_id, version, type_, data, meta, command_id, recorded_at, stored in rows:
            content = chain_content(
                seq, stream_id, version, type_, data, meta, command_id, recorded_at
            )
            stored = bytes(stored) if stored is not None else None
            if stored is None or chain_hash(previous_hash, content) != stored:
                _add(
                    report,
                    ChainBreak(seq, previous_seq, _why(seq, previous_seq, stored)),
                    max_breaks,
                )
            # Go on from the stored hash: each break is reported once, where it is.
            previous_hash = stored if stored is not None else GENESIS
            previous_seq = seq
            report.rows += 1
        if len(rows) < page:
            break
        after = rows[-1][0]
    if previous_seq is not None:
        report.head = previous_seq
        report.headHash = previous_hash.hex()


def _why(seq: int, previous: int | None, stored: bytes | None) -> str:
    if stored is None:
        return f"the row at position {seq} has no hash"
    before = (
        f"the row before it (position {previous})"
        if previous is not None
        else "the start of the log"
    )
    reason = (
        f"the row at position {seq} does not chain to {before}: it was changed, "
        "or the row before it was replaced"
    )
    first_missing = (previous or 0) + 1
    if seq > first_missing:
        last_missing = seq - 1
        span = (
            f"position {first_missing}"
            if first_missing == last_missing
            else f"positions {first_missing} to {last_missing}"
        )
        reason += f", or {span} (missing here) was removed"
    return reason


def _add(report: ChainReport, found: ChainBreak, max_breaks: int) -> None:
    if len(report.breaks) < max_breaks:
        report.breaks.append(found)
    else:
        report.truncated = True


def _check_tail(conn: psycopg.Connection[Any], report: ChainReport) -> None:
    exists = conn.execute("SELECT to_regclass('checkpoints') IS NOT NULL").fetchone()
    if not exists or not exists[0]:
        return
    row = conn.execute(
        "SELECT name, position FROM checkpoints ORDER BY position DESC LIMIT 1"
    ).fetchone()
    if row is not None and row[1] > report.head:
        report.breaks.append(
            ChainBreak(
                report.head + 1,
                report.head or None,
                f"the log ends at position {report.head} but the consumer {row[0]!r} has read up "
                f"to position {row[1]}: rows after {report.head} were removed (or its "
                "checkpoint was changed)",
            )
        )


def _check_anchor(
    conn: psycopg.Connection[Any], report: ChainReport, anchor: tuple[int, bytes]
) -> None:
    seq, expected = anchor
    row = conn.execute("SELECT hash FROM events WHERE seq = %s", (seq,)).fetchone()
    if row is None:
        reason = f"position {seq}, noted with hash {expected.hex()}, is no longer in the log"
    elif bytes(row[0]) != expected:
        reason = (
            f"position {seq} was noted with hash {expected.hex()} and now has "
            f"{bytes(row[0]).hex()}: the log up to it was rewritten since"
        )
    else:
        return
    report.breaks.append(ChainBreak(seq, None, reason))
