"""One reader of the log per process: the recent events, read and decoded once, for every
consumer of the process.

Without it, each commit wakes every subscription of the process (executor, worker, timers,
watchdog, projections, waiters), and each reads the same new rows through its own query and
its own thread hand-off, and decodes them again. The feed reads what was appended after the
last position it holds, once per wake-up, keeps the most recent events in memory, and wakes
the subscriptions, which take what they want from memory (filtering by type there, so one that
wants nothing moves past it without reading). A subscription that is further behind than the
feed reaches back (a projection rebuilding from 0, a consumer started late) reads from the
database as before, until it catches up.

Appends are serialised by one lock (invariant 2), so reading `seq > head` never passes an event
that commits later: the feed holds every event between its start and its head, in order.
"""

from __future__ import annotations

import bisect
import logging
from collections.abc import Iterable
from typing import Any

import trio

from engine.backoff import Backoff, describe
from engine.db import Notifier
from engine.health import Health
from engine.store import EventStore, StoredEvent

log = logging.getLogger(__name__)

FEED = "feed"
"""The health component of the feed."""

_OWN_APPEND_WAIT = 0.02
"""How long a notification may wait for this process's appends under way to end (one append
takes about a millisecond; past this, the feed reads the log as usual)."""


class Feed:
    """The process's recent events, read once; see the module's description."""

    def __init__(
        self,
        store: EventStore,
        notifier: Notifier,
        *,
        capacity: int = 50_000,
        batch_size: int = 5_000,
        poll_interval: float = 1.0,
        health: Health | None = None,
    ) -> None:
        self.store = store
        self.notifier = notifier
        self.capacity = capacity
        self.batch_size = batch_size
        self.poll_interval = poll_interval
        self.health = health if health is not None else notifier.health
        self.start: int | None = None
        """Every event after this position, up to `head`, is held (None until running)."""
        self.head = 0
        self.generation = 0
        self._events: list[StoredEvent] = []
        self._seqs: list[int] = []
        self._changed = trio.Event()
        self.appending = 0
        """Appends of this process under way (see `appended`)."""
        self._appends_done = trio.Event()

    def appended(self) -> None:
        """One append of this process ended (its events, if any, are offered next)."""
        self.appending -= 1
        if self.appending == 0:
            self._appends_done.set()
            self._appends_done = trio.Event()

    # --- reading the log ----------------------------------------------------------------------

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Follow the log until cancelled; started once the head is known."""
        backoff = Backoff()
        started = False
        look = True  # read even if the notifier knows of nothing new (a poll, a full batch)
        blind_read = -1
        while True:
            seen = self.notifier.generation
            blind = self.notifier.blind
            try:
                if self.start is None:
                    self.head = await self.store.head()
                    self.start = self.head
                    if not started:
                        task_status.started()
                        started = True
                # The notification of a commit of this process can come back before the
                # append that made it returns: let its own appends end first, which offer
                # their events. A wake-up for a commit the feed then holds needs no read.
                if self.appending and not look and blind == blind_read:
                    with trio.move_on_after(_OWN_APPEND_WAIT):
                        await self._appends_done.wait()
                if look or blind != blind_read or self.notifier.latest > self.head:
                    batch = await self.store.read_all(self.head, self.batch_size)
                    blind_read = blind
                else:
                    batch = []
            except Exception as exc:
                # While the feed cannot read, its subscriptions simply see nothing new; they
                # read on by themselves once they fall behind what it holds.
                delay = backoff.failed()
                self.health.down(FEED, describe(exc))
                log.warning("The feed could not read the log (%s); retrying", describe(exc))
                await trio.sleep(delay)
                continue
            if backoff.failures:
                backoff.reset()
            self.health.up(FEED)
            if batch:
                self._keep(batch)
            look = len(batch) >= self.batch_size
            if not look:
                await self.notifier.wait(seen, self.poll_interval)
                look = self.notifier.generation <= seen  # no wake-up: poll the log

    def offer(self, events: list[StoredEvent]) -> None:
        """Events this process has just committed, in order: kept at once when they follow
        the head directly, so its consumers need not wait for the feed to read them. No other
        event can lie between (positions are drawn under the append lock); when some other
        commit came first, the feed reads them all as usual."""
        if events and self.start is not None and events[0].seq == self.head + 1:
            self._keep(events)

    def _keep(self, batch: list[StoredEvent]) -> None:
        # A read that began before an offer may return what was offered meanwhile.
        if batch[0].seq <= self.head:
            batch = [e for e in batch if e.seq > self.head]
            if not batch:
                return
        self._events.extend(batch)
        self._seqs.extend(e.seq for e in batch)
        self.head = batch[-1].seq
        excess = len(self._events) - self.capacity
        if excess > 0:
            assert self.start is not None
            self.start = self._seqs[excess - 1]
            del self._events[:excess]
            del self._seqs[:excess]
        self.generation += 1
        self._changed.set()
        self._changed = trio.Event()

    # --- serving subscriptions ----------------------------------------------------------------

    def after(
        self, position: int, types: Iterable[str] | None, limit: int
    ) -> tuple[list[StoredEvent], int] | None:
        """Up to `limit` events after `position` (of `types`, when given), and the position
        the subscription is at once it handled them (past the events it does not want).
        None when the feed does not hold everything after `position`: read the database."""
        if self.start is None or position < self.start:
            return None
        if position >= self.head:
            return [], position
        wanted = set(types) if types is not None else None
        found: list[StoredEvent] = []
        i = bisect.bisect_right(self._seqs, position)
        for e in self._events[i:]:
            if wanted is None or e.type in wanted:
                found.append(e)
                if len(found) >= limit:
                    return found, e.seq
        return found, self.head

    async def wait(self, seen_generation: int, timeout: float) -> None:
        """Return when the feed holds new events (or after `timeout` s)."""
        with trio.move_on_after(timeout):
            while self.generation <= seen_generation:
                await self._changed.wait()
