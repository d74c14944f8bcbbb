"""Runs projections: each applies a batch of events and its checkpoint in one transaction.

A projection waits out database outages: its startup retries loading the checkpoint, and its
subscription retries a failed batch from the same position, reporting `projection:<name>` DOWN
in the process's health registry meanwhile.

The checkpoint row in the database, not the position in memory, says what is applied: each
batch locks it first and applies only the events after it. A batch read again (after a failure
whose commit did succeed), a second process running the same projection, or a rebuild swapped
in by `sys reindex` (projections/reindex.py, which moves the checkpoint) then never applies an
event twice. Between batches the checkpoint also follows the position the subscription reached
through events of other types, so the lag shown at `GET /api/v1/projections` is the real one.
"""

from __future__ import annotations

from typing import Any, Protocol

import psycopg
import trio

from engine.backoff import retry
from engine.db import Notifier
from engine.store import EventStore, StoredEvent, load_checkpoint, save_checkpoint
from engine.subscription import Subscription

POSITION_EVERY = 1.0
"""Seconds between two records of the position a projection reached through other events."""

PACE = 0.05
"""Least seconds between two batches of a projection: under a stream of small commits (an
execution's every step is one) each read model then writes fewer, larger batches, one
transaction each, instead of one per commit, and leaves the executor's process the time. The
read models trail the log by at most about this much more."""


class Projection(Protocol):
    """A read model: the event types it reads and how it applies them."""

    name: str
    types: tuple[str, ...]
    tables: tuple[str, ...]

    def apply(self, batch: list[StoredEvent], conn: psycopg.Connection[Any]) -> None:
        """Write the effect of `batch` (inside the caller's transaction)."""
        ...


async def run_projection(
    projection: Projection,
    store: EventStore,
    notifier: Notifier,
    *,
    task_status: Any = trio.TASK_STATUS_IGNORED,
) -> None:
    """Keep `projection` up to date until cancelled."""
    name = f"projection:{projection.name}"

    async def start() -> int:
        # The row each batch locks first: made before any batch, so even the first batches of
        # two runners starting together are serialised by it.
        await store.db.execute(
            "INSERT INTO checkpoints (name, position) VALUES (%s, 0) ON CONFLICT DO NOTHING",
            (name,),
        )
        return await load_checkpoint(store.db, name)

    position = await retry(
        start,
        what=f"loading checkpoint {name}",
        health=notifier.health,
        component=name,
    )

    async def handle(batch: list[StoredEvent]) -> None:
        def work(conn: psycopg.Connection[Any]) -> None:
            with conn.transaction():
                row = conn.execute(
                    "SELECT position FROM checkpoints WHERE name = %s FOR UPDATE", (name,)
                ).fetchone()
                done = int(row[0]) if row else 0
                fresh = [e for e in batch if e.seq > done]
                if fresh:
                    projection.apply(fresh, conn)
                    save_checkpoint(conn, name, fresh[-1].seq)

        await store.db.run(work)

    # A projection may set its own pace (the flows read model: a deploy is rare, and a client
    # lists flows right after deploying one).
    pace = float(getattr(projection, "pace", PACE))
    sub = Subscription(
        store, notifier, position=position, types=projection.types, name=name, pace=pace
    )
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_follow_position, store, name, sub, position)
        await sub.run(handle, task_status=task_status)


async def _follow_position(store: EventStore, name: str, sub: Subscription, saved: int) -> None:
    """Record, every `POSITION_EVERY` seconds, the position `sub` reached past events of other
    types: every event of the projection's types up to it is applied (the subscription moves
    only after its handler committed), so this never claims more than was done."""
    while True:
        await trio.sleep(POSITION_EVERY)
        reached = sub.position
        if reached <= saved:
            continue
        try:
            await store.db.run(lambda conn, at=reached: save_checkpoint(conn, name, at))
        except Exception:  # the subscription reports database trouble; try again later
            continue
        saved = reached


def all_projections() -> list[Projection]:
    """Every projection of the platform."""
    from projections.audit import AuditProjection
    from projections.dashboards import DashboardsProjection
    from projections.executions import ExecutionsProjection
    from projections.flows import FlowsProjection
    from projections.logs import LogsProjection
    from projections.metrics import MetricsProjection

    return [
        FlowsProjection(),
        ExecutionsProjection(),
        LogsProjection(),
        AuditProjection(),
        MetricsProjection(),
        DashboardsProjection(),
    ]


async def serve(ctx: Any, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
    """The `indexer` role: run every projection until cancelled."""
    async with trio.open_nursery() as nursery:
        for projection in all_projections():
            await nursery.start(run_projection, projection, ctx.store, ctx.notifier)
        task_status.started()
