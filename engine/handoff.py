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
from typing import Any

Definition = tuple[dict[str, Any], dict[str, Any]]


class Handoff:
    """Task definitions and render contexts of scheduled attempts, by attempt."""

    def __init__(self, size: int = 10_000) -> None:
        self.size = size
        self._definitions: OrderedDict[tuple[str, str, int], Definition] = OrderedDict()

    def offer(self, execution_id: str, task_run_id: str, attempt: int, value: Definition) -> None:
        """Keep the definition and context of an attempt the executor just scheduled."""
        self._definitions[(execution_id, task_run_id, attempt)] = value
        while len(self._definitions) > self.size:
            self._definitions.popitem(last=False)

    def take(self, execution_id: str, task_run_id: str, attempt: int) -> Definition | None:
        """The definition and context of an attempt, if the executor of this process made it."""
        return self._definitions.pop((execution_id, task_run_id, attempt), None)
