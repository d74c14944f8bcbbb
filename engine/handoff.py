"""What the executor hands a worker running in the same process, so that neither waits on the
database for what the other already holds.

The executor knows the state an attempt was scheduled from; a worker in another process
rebuilds the attempt's task definition and render context by reading the execution's history
and folding it up to the scheduling event. A worker beside the executor takes them from here
instead. What is handed over is exactly what the worker would rebuild (the same pure function
of the same state), so the two paths cannot disagree; an entry never taken is dropped when
the map is full.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import Any, Protocol

import psycopg

from engine import events as ev
from engine.store import NO_STREAM, Append, StoredEvent

Definition = tuple[dict[str, Any], dict[str, Any]]


class ClaimRefused(Exception):
    """The worker a claim was made for is no longer registered (it was declared lost): the
    transaction holding the claim must not commit."""


class Claimer(Protocol):
    """The worker of the process, as the executor sees it when it claims for it."""

    def reserve(self) -> str | None:
        """Take a slot for an attempt about to be claimed: the worker's id, or None when it
        has no free slot or may not run attempts now."""

    def release(self) -> None:
        """Give back a slot `reserve` took, for a claim that was not written."""

    def claim_check(self, worker_id: str) -> Callable[[psycopg.Connection[Any]], None]:
        """In the claim's transaction: raise `ClaimRefused` when `worker_id` is not
        registered."""

    def start_claimed(self, scheduled: StoredEvent, version: int, worker_id: str) -> None:
        """Run the attempt `scheduled`, claimed for `worker_id` at `version` of its stream, in
        the slot `reserve` took."""


def claim_append(scheduled: ev.AttemptScheduled, worker_id: str) -> Append:
    """The claim of the attempt `scheduled` by `worker_id`: the first event of the attempt's
    stream, so only one claim of an attempt is ever written."""
    return Append(
        ev.attempt_stream(scheduled.executionId, scheduled.taskRunId, scheduled.attempt),
        [
            ev.AttemptClaimed(
                executionId=scheduled.executionId,
                taskRunId=scheduled.taskRunId,
                attempt=scheduled.attempt,
                workerId=worker_id,
            )
        ],
        NO_STREAM,
        f"claim:{scheduled.executionId}:{scheduled.taskRunId}:{scheduled.attempt}:{worker_id}",
        {"actor": f"worker:{worker_id}"},
    )


class Handoff:
    """Task definitions and render contexts of scheduled attempts, by attempt."""

    def __init__(self, size: int = 10_000) -> None:
        self.size = size
        self._definitions: OrderedDict[tuple[str, str, int], Definition] = OrderedDict()
        self.claimer: Claimer | None = None
        """The worker of this process while it runs: the executor claims attempts for it in
        the transaction that schedules them, so no commit of its own and no hop stand between
        a task's scheduling and its start."""

    def offer(self, execution_id: str, task_run_id: str, attempt: int, value: Definition) -> None:
        """Keep the definition and context of an attempt the executor just scheduled."""
        self._definitions[(execution_id, task_run_id, attempt)] = value
        while len(self._definitions) > self.size:
            self._definitions.popitem(last=False)

    def take(self, execution_id: str, task_run_id: str, attempt: int) -> Definition | None:
        """The definition and context of an attempt, if the executor of this process made it."""
        return self._definitions.pop((execution_id, task_run_id, attempt), None)
