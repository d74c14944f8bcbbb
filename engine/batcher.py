"""Group commit: appends from many concurrent callers share one transaction.

Each caller awaits its own result; a flusher takes everything queued, appends it in one
`append_many` and hands each caller its `AppendResult`. Under load this turns N commits into
one; when idle a single append goes out at once.
"""

from __future__ import annotations

from typing import Any

import trio

from engine.store import Append, AppendResult, EventStore


class _Pending:
    __slots__ = ("request", "done", "result", "error")

    def __init__(self, request: Append) -> None:
        self.request = request
        self.done = trio.Event()
        self.result: AppendResult | None = None
        self.error: BaseException | None = None


class GroupCommitter:
    """Batches `append` calls into shared transactions; run `run()` in a nursery."""

    def __init__(self, store: EventStore, *, max_batch: int = 2000) -> None:
        self.store = store
        self.max_batch = max_batch
        self._queue: list[_Pending] = []
        self._wake = trio.Event()

    async def append(self, request: Append) -> AppendResult:
        """Queue `request` and return its result once its transaction committed."""
        pending = _Pending(request)
        self._queue.append(pending)
        self._wake.set()
        await pending.done.wait()
        if pending.error is not None:
            raise pending.error
        assert pending.result is not None
        return pending.result

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Flush queued appends until cancelled."""
        task_status.started()
        while True:
            await self._wake.wait()
            self._wake = trio.Event()
            while self._queue:
                batch, self._queue = self._queue[: self.max_batch], self._queue[self.max_batch :]
                try:
                    results = await self.store.append_many([p.request for p in batch])
                except Exception as exc:  # every caller of the failed batch sees the error
                    for p in batch:
                        p.error = exc
                        p.done.set()
                    continue
                for p, result in zip(batch, results, strict=True):
                    p.result = result
                    p.done.set()
