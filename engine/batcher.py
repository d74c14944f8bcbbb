"""Group commit: appends from many concurrent callers share one transaction.

Each caller awaits its own result; a flusher takes everything queued, appends it in one
`append_many` and hands each caller its `AppendResult`. Under load this turns N commits into
one; when idle a single append goes out at once.

When the database is away, appends that carry a command id wait in the queue and go out once
it answers again (a repeated append with a command id is recorded once, even if the failed
commit had in fact gone through). An append without one cannot be repeated safely, so its
caller gets the error at once and decides.
"""

from __future__ import annotations

import logging
from typing import Any

import msgspec
import trio

from engine import audit
from engine.backoff import Backoff, describe, is_transient
from engine.health import Health
from engine.store import Append, AppendResult, EventStore

log = logging.getLogger(__name__)


class _Pending:
    __slots__ = ("request", "done", "result", "error")

    def __init__(self, request: Append) -> None:
        self.request = request
        self.done = trio.Event()
        self.result: AppendResult | None = None
        self.error: BaseException | None = None


def _with_request_meta(request: Append) -> Append:
    """`request` with what the caller's API request adds to its meta (engine/audit.py): the
    task that commits it may be another's."""
    if not audit.current():
        return request
    return msgspec.structs.replace(request, meta=audit.merged(request.meta))


class GroupCommitter:
    """Batches `append` calls into shared transactions; run `run()` in a nursery.

    `health` and `name` say where it reports DOWN while it waits for the database.
    """

    def __init__(
        self,
        store: EventStore,
        *,
        max_batch: int = 2000,
        health: Health | None = None,
        name: str = "committer",
    ) -> None:
        self.store = store
        self.max_batch = max_batch
        self.health = health
        self.name = name
        self._queue: list[_Pending] = []
        self._wake = trio.Event()

    async def append(self, request: Append) -> AppendResult:
        """Queue `request` and return its result once its transaction committed.

        With a command id, a database outage only delays the result; without one, a
        transient error is raised to the caller.
        """
        pending = _Pending(_with_request_meta(request))
        self._queue.append(pending)
        self._wake.set()
        await pending.done.wait()
        if pending.error is not None:
            raise pending.error
        assert pending.result is not None
        return pending.result

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Flush queued appends until cancelled; never ends on a database error."""
        task_status.started()
        backoff = Backoff()
        while True:
            await self._wake.wait()
            self._wake = trio.Event()
            while self._queue:
                batch, self._queue = self._queue[: self.max_batch], self._queue[self.max_batch :]
                try:
                    results = await self.store.append_many([p.request for p in batch])
                except Exception as exc:
                    if not is_transient(exc):  # every caller of the failed batch sees the error
                        _fail(batch, exc)
                        continue
                    again = [p for p in batch if p.request.command_id is not None]
                    _fail([p for p in batch if p.request.command_id is None], exc)
                    if not again:
                        continue
                    self._queue[:0] = again
                    delay = backoff.failed()
                    reason = describe(exc)
                    if self.health is not None:
                        self.health.down(self.name, reason)
                    log.warning(
                        "Appending %d events failed (%s); retrying in %.1fs",
                        len(again),
                        reason,
                        delay,
                    )
                    await trio.sleep(delay)
                    continue
                backoff.reset()
                if self.health is not None:
                    self.health.up(self.name)
                for p, result in zip(batch, results, strict=True):
                    p.result = result
                    p.done.set()


def _fail(batch: list[_Pending], exc: BaseException) -> None:
    for p in batch:
        p.error = exc
        p.done.set()


class CommitGroup:
    """Group commit without a task of its own, for callers that each wait for their append
    (requests of the API, commands of the CLI).

    The caller that finds no commit in flight commits what every caller queued meanwhile, its
    own included, in one transaction; those that queued during that commit wait for it to end
    and the first of them commits the next batch. So an idle store commits a lone append at
    once, and a burst of N appends costs a few commits rather than N: the callers wait in
    memory, not each for the append lock in the database.

    Unlike `GroupCommitter` it waits out nothing: each caller is waiting for its answer, so a
    failed commit's error goes to every caller of its batch. A commit that fails for another
    reason than the database being away is tried again append by append, so that a request
    the store refuses fails alone.
    """

    def __init__(self, store: EventStore, *, max_batch: int = 500) -> None:
        self.store = store
        self.max_batch = max_batch
        self._queue: list[_Pending] = []
        self._lock = trio.Lock()

    async def append(self, request: Append) -> AppendResult:
        """Queue `request` and return its result once the transaction that carries it has
        committed; raise the error of that transaction when it failed."""
        # Another caller may commit it: what this caller's API request adds to its meta is
        # added now, and the commit runs without any (engine/audit.py).
        pending = _Pending(_with_request_meta(request))
        self._queue.append(pending)
        try:
            while not pending.done.is_set():
                async with self._lock:
                    if not pending.done.is_set():
                        await self._commit(pending)
        except BaseException:
            # Cancelled before its turn came: nobody is to commit it any more.
            if pending in self._queue:
                self._queue.remove(pending)
            raise
        if pending.error is not None:
            raise pending.error
        assert pending.result is not None
        return pending.result

    async def _commit(self, mine: _Pending) -> None:
        # The requests carry their own callers' request meta already (see `append`).
        token = audit.request_meta.set({})
        try:
            await self._commit_batch(mine)
        finally:
            audit.request_meta.reset(token)

    async def _commit_batch(self, mine: _Pending) -> None:
        batch = self._queue[: self.max_batch]
        del self._queue[: len(batch)]
        try:
            try:
                results = await self.store.append_many([p.request for p in batch])
            except Exception as exc:
                if is_transient(exc) or len(batch) == 1:
                    _fail(batch, exc)
                    return
                # One of them may be what the store refuses: it fails alone.
                for p in batch:
                    try:
                        [p.result] = await self.store.append_many([p.request])
                    except Exception as alone:
                        p.error = alone
                    p.done.set()
                return
            for p, result in zip(batch, results, strict=True):
                p.result = result
                p.done.set()
        except BaseException:
            # Cancelled before its transaction began (a transaction, once begun, runs to its
            # end): the others go back to the head of the queue, for the next caller.
            self._queue[:0] = [p for p in batch if p is not mine and not p.done.is_set()]
            raise
