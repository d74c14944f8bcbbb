"""The shell of flow concurrency limits: reads the flows' ledgers and appends what the pure
`engine.execution.concurrency.plan_ledger` decides.

The executor calls `Ledgers.appends` for the arrivals and departures of a batch and appends the
result in the same transaction as the batch's decisions and checkpoint, so a process killed at
any point leaves either all of it or none of it: a slot is released in the very commit that
ends its execution, never later. Each ledger append carries the ledger's expected version; the
transaction's `check` rolls everything back when another writer moved a ledger meanwhile, and
the executor plans again from what the ledger now holds.

`submit_queued` starts queued executions by hand, whatever the limit, as Kestra's
`sys submit-queued-execution` does.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import psycopg

from engine import events as ev
from engine.execution.concurrency import Arrival, Change, Ledger, Release, fold_ledger, plan_ledger
from engine.store import NO_STREAM, Append, EventStore

ACTOR = "executor:concurrency"
"""Who writes the ledgers and the slots' news to executions (inputs of the executor)."""


class LedgerMoved(Exception):
    """A ledger changed between its read and the append planned from it: plan again."""


def ledger_stream(namespace: str, flow_id: str) -> str:
    """The ledger of one flow's concurrency limit."""
    return ev.concurrency_stream(namespace, flow_id)


def arrival_command(execution_id: str) -> str:
    """The command id of the news an arriving execution gets (granted, queued or refused)."""
    return f"concurrency:{execution_id}"


def ledger_command(recorded: Sequence[ev.Event]) -> str:
    """The command id of a ledger append, from what it records: the same news appended twice
    (a batch handled again) is written once."""
    digest = hashlib.sha256(b"".join(ev.encode(e) for e in recorded)).hexdigest()[:32]
    return f"concurrency-ledger:{digest}"


class Ledgers:
    """The folded ledgers this process has read, each with the version it was read up to
    (only what was appended since is read again)."""

    def __init__(self, store: EventStore) -> None:
        self.store = store
        self._known: dict[str, tuple[int, Ledger]] = {}

    async def read(self, namespace: str, flow_id: str) -> tuple[int, Ledger]:
        """The ledger of a flow as committed now, and its version."""
        stream = ledger_stream(namespace, flow_id)
        version, ledger = self._known.get(stream, (NO_STREAM, Ledger()))
        rows = await self.store.db.fetchall(
            "SELECT version, data::text AS data FROM events WHERE stream_id = %s AND version > %s"
            " ORDER BY version",
            (stream, version),
        )
        if rows:
            ledger = fold_ledger((ev.decode(r["data"]) for r in rows), ledger)
            version = int(rows[-1]["version"])
        self._known[stream] = (version, ledger)
        return version, ledger

    async def appends(
        self, changes: Sequence[tuple[str, str, Change]], meta: dict[str, Any]
    ) -> tuple[list[Append], list[str]]:
        """The appends that record `changes` (namespace, flow id, change; in log order) in the
        ledgers and tell the executions concerned, and the command ids of the ledger appends
        (the transaction must find them all, or a ledger moved: see `check`)."""
        arrivals = [c.executionId for _, _, c in changes if isinstance(c, Arrival)]
        done: set[str] = set()
        if arrivals:
            # An arrival handled before (the checkpoint trails the work, or another executor
            # did it) is not planned again: its news is in the execution's stream.
            rows = await self.store.db.fetchall(
                "SELECT command_id FROM events WHERE command_id = ANY(%s)",
                ([arrival_command(x) for x in arrivals],),
            )
            done = {r["command_id"].removeprefix("concurrency:") for r in rows}
        by_flow: dict[tuple[str, str], list[Change]] = defaultdict(list)
        for namespace, flow_id, change in changes:
            if isinstance(change, Arrival) and change.executionId in done:
                continue
            by_flow[(namespace, flow_id)].append(change)
        out: list[Append] = []
        commands: list[str] = []
        for (namespace, flow_id), flow_changes in by_flow.items():
            version, ledger = await self.read(namespace, flow_id)
            recorded, told = plan_ledger(ledger, namespace, flow_id, flow_changes)
            if not recorded:
                continue
            stream = ledger_stream(namespace, flow_id)
            command = ledger_command(recorded)
            commands.append(command)
            out.append(Append(stream, recorded, version, command, meta))
            arriving = {c.executionId for c in flow_changes if isinstance(c, Arrival)}
            for news in told:
                xid = getattr(news, "executionId", "")
                if xid in arriving:
                    arriving.discard(xid)
                    command_id = arrival_command(xid)
                else:
                    command_id = f"concurrency-grant:{xid}"
                out.append(
                    Append(ev.execution_stream(xid), [news], command_id=command_id, meta=meta)
                )
        return out, commands


def check(commands: Sequence[str]) -> Any:
    """A check for the appending transaction: every ledger append of it was written (or had
    been before); raises `LedgerMoved`, which rolls the transaction back, otherwise."""

    def run(conn: psycopg.Connection[Any]) -> None:
        if not commands:
            return
        row = conn.execute(
            "SELECT count(*) FROM events WHERE command_id = ANY(%s)", (list(commands),)
        ).fetchone()
        if row is None or int(row[0]) != len(commands):
            raise LedgerMoved("a flow's concurrency ledger changed meanwhile")

    return run


async def submit_queued(
    store: EventStore,
    *,
    namespace: str | None = None,
    flow_id: str | None = None,
    actor: str = "cli",
) -> list[str]:
    """Start every queued execution (of one namespace, or one flow), whatever the limit;
    return their ids. Appended at each ledger's expected version: a ledger that moved
    meanwhile is read again."""
    rows = await store.db.fetchall(
        "SELECT DISTINCT stream_id FROM events WHERE stream_id >= 'concurrency:'"
        " AND stream_id < 'concurrency;' ORDER BY stream_id"
    )
    started: list[str] = []
    ledgers = Ledgers(store)
    for row in rows:
        ns, _, fid = row["stream_id"].removeprefix("concurrency:").rpartition("/")
        if namespace is not None and ns != namespace:
            continue
        if flow_id is not None and fid != flow_id:
            continue
        for _ in range(20):
            version, ledger = await ledgers.read(ns, fid)
            recorded, told = plan_ledger(ledger, ns, fid, [Release()])
            if not recorded:
                break
            meta = {"actor": actor}
            command = ledger_command(recorded)
            requests = [Append(ledger_stream(ns, fid), recorded, version, command, meta)]
            requests += [
                Append(
                    ev.execution_stream(news.executionId),
                    [news],
                    command_id=f"concurrency-grant:{news.executionId}",
                    meta=meta,
                )
                for news in told
                if isinstance(news, ev.ConcurrencySlotGranted)
            ]
            try:
                await store.append_many(requests, extra=check([command]))
            except LedgerMoved:
                continue
            started.extend(n.executionId for n in told if isinstance(n, ev.ConcurrencySlotGranted))
            break
    return started
