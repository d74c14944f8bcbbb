"""Runs projections: each applies a batch of events and its checkpoint in one transaction.

A projection waits out database outages: its startup retries loading the checkpoint, and its
subscription retries a failed batch from the same position, reporting `projection:<name>` DOWN
in the process's health registry meanwhile.
"""

from __future__ import annotations

from typing import Any, Protocol

import psycopg
import trio

from engine.backoff import retry
from engine.db import Notifier
from engine.store import EventStore, StoredEvent, load_checkpoint, save_checkpoint
from engine.subscription import Subscription


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
    position = await retry(
        lambda: load_checkpoint(store.db, name),
        what=f"loading checkpoint {name}",
        health=notifier.health,
        component=name,
    )

    async def handle(batch: list[StoredEvent]) -> None:
        def work(conn: psycopg.Connection[Any]) -> None:
            with conn.transaction():
                projection.apply(batch, conn)
                save_checkpoint(conn, name, batch[-1].seq)

        await store.db.run(work)

    sub = Subscription(store, notifier, position=position, types=projection.types, name=name)
    await sub.run(handle, task_status=task_status)


def all_projections() -> list[Projection]:
    """Every projection of the platform."""
    from projections.executions import ExecutionsProjection
    from projections.flows import FlowsProjection
    from projections.logs import LogsProjection

    return [FlowsProjection(), ExecutionsProjection(), LogsProjection()]


async def serve(ctx: Any, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
    """The `indexer` role: run every projection until cancelled."""
    async with trio.open_nursery() as nursery:
        for projection in all_projections():
            await nursery.start(run_projection, projection, ctx.store, ctx.notifier)
        task_status.started()
