"""Catch-up subscriptions: read by position from a checkpoint, woken by LISTEN/NOTIFY.

A notification only says "read again"; a consumer always reads `seq > position` from the table,
so a dropped notification, a reconnect or a restart loses nothing, and a slow poll covers the
case where no notification arrives at all (invariant 3). A subscription to some types only moves
past the others as it reads (`EventStore.read_after`), so it does not scan them again.

A subscription never ends on its own: when a read or its handler fails, it reports the reason
to the process's health registry, backs off and reads again from the same position. Handlers
write their effects and their checkpoint in one transaction, so handling a batch again after a
failure is safe.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import trio

from engine.backoff import Backoff, describe, is_transient
from engine.db import Notifier
from engine.health import Health
from engine.store import EventStore, StoredEvent

log = logging.getLogger(__name__)

Handler = Callable[[list[StoredEvent]], Awaitable[None]]

BUG_BACKOFF_MAX = 30.0
"""The longest pause before handling again a batch whose handler raised a non-transient error."""


class Subscription:
    """Feeds every event after `position` to `handler`, in order, in batches.

    `name` is the component it reports as in `health` (by default the notifier's registry).
    `on_retry` is called before a failed batch is read and handled again, so a handler that
    keeps state in memory can drop what the failed attempt may have left in it. `pace` is the
    least time, in seconds, between the handling of one batch and the reading of the next: a
    consumer that need not act at once on each event (the watchdog) then handles fewer, larger
    batches, each in one transaction, under a stream of small commits.
    """

    def __init__(
        self,
        store: EventStore,
        notifier: Notifier,
        *,
        position: int = 0,
        types: Iterable[str] | None = None,
        batch_size: int = 2000,
        poll_interval: float = 1.0,
        name: str | None = None,
        on_retry: Callable[[], None] | None = None,
        health: Health | None = None,
        pace: float = 0.0,
    ) -> None:
        self.store = store
        self.notifier = notifier
        self.position = position
        self.types = list(types) if types is not None else None
        self.batch_size = batch_size
        self.poll_interval = poll_interval
        self.name = name or f"subscription:{self.types[0] if self.types else 'all'}"
        self.on_retry = on_retry
        self.health = health if health is not None else notifier.health
        self.pace = pace

    async def run(self, handler: Handler, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Call `handler(batch)` for each batch, forever; the position advances after it returns.

        The handler is expected to make its effects and its checkpoint durable together. A
        transient error (the database is away) is retried after a pause of up to 5 s; any
        other error is logged with its traceback and retried after a pause of up to 30 s.
        Meanwhile the subscription is DOWN in the health registry, with the error as reason.
        `task_status.started()` is called after the first batch was handled, or after the
        first non-transient failure so that the process starts and can report it.
        """
        started = False
        transient = Backoff()
        bug = Backoff(initial=1.0, maximum=BUG_BACKOFF_MAX)
        while True:
            feed = self.store.feed
            seen = feed.generation if feed is not None else self.notifier.generation
            try:
                held = feed.after(self.position, self.types, self.batch_size) if feed else None
                if held is None:
                    fed = False
                    batch, reached = await self.store.read_after(
                        self.position, self.batch_size, self.types
                    )
                else:
                    fed = True
                    batch, reached = held
                if batch:
                    await handler(batch)
                self.position = reached
                self.health.progress(self.name, reached)
            except Exception as exc:
                reason = describe(exc)
                if is_transient(exc):
                    delay = transient.failed()
                    log.warning(
                        "%s at position %d failed (%s); retrying in %.1fs",
                        self.name,
                        self.position,
                        reason,
                        delay,
                    )
                else:
                    delay = bug.failed()
                    log.exception(
                        "%s failed on the events after position %d; retrying in %.1fs",
                        self.name,
                        self.position,
                        delay,
                    )
                    if not started:
                        task_status.started()
                        started = True
                self.health.down(self.name, reason)
                await trio.sleep(delay)
                if self.on_retry is not None:
                    self.on_retry()
                continue
            if transient.failures or bug.failures:
                log.info("%s resumed at position %d", self.name, self.position)
                transient.reset()
                bug.reset()
            self.health.up(self.name)
            if not started:
                task_status.started()
                started = True
            if batch and self.pace > 0 and len(batch) < self.batch_size:
                await trio.sleep(self.pace)  # let the next batch gather
            elif len(batch) < self.batch_size:
                if fed:
                    assert feed is not None
                    await feed.wait(seen, self.poll_interval)
                else:
                    await self.notifier.wait(seen, self.poll_interval)
