"""Catch-up subscriptions: read by position from a checkpoint, woken by LISTEN/NOTIFY.

A notification only says "read again"; a consumer always reads `seq > position` from the table,
so a dropped notification, a reconnect or a restart loses nothing, and a slow poll covers the
case where no notification arrives at all (invariant 3).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import trio

from engine.db import Notifier
from engine.store import EventStore, StoredEvent

Handler = Callable[[list[StoredEvent]], Awaitable[None]]


class Subscription:
    """Feeds every event after `position` to `handler`, in order, in batches."""

    def __init__(
        self,
        store: EventStore,
        notifier: Notifier,
        *,
        position: int = 0,
        types: Iterable[str] | None = None,
        batch_size: int = 2000,
        poll_interval: float = 1.0,
    ) -> None:
        self.store = store
        self.notifier = notifier
        self.position = position
        self.types = list(types) if types is not None else None
        self.batch_size = batch_size
        self.poll_interval = poll_interval

    async def run(self, handler: Handler, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Call `handler(batch)` for each batch, forever; the position advances after it returns.

        The handler is expected to make its effects and its checkpoint durable together.
        """
        started = False
        while True:
            seen = self.notifier.generation
            batch = await self.store.read_all(self.position, self.batch_size, self.types)
            if batch:
                await handler(batch)
                self.position = batch[-1].seq
            if not started:
                task_status.started()
                started = True
            if len(batch) < self.batch_size:
                await self.notifier.wait(seen, self.poll_interval)
