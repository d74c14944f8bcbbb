"""The executor's pure core, one concept per module.

- `state`: an execution's state and `evolve`, which applies one recorded fact;
- `planner`: `decide`, every policy of what follows, recorded as events;
- `retry`: when a failed attempt (or execution) is tried again;
- `context`: the variables a task renders with, built from the folded state;
- `replay`: the state at any point of a history, and the check that the current code decides
  again what was recorded;
- `ids`: ids and timestamps derived from what they identify.

No clock, randomness or I/O here: time is the recorded time of the event being handled, ids
are hashes, and the flow is the revision recorded when the execution was created.
"""

from engine.execution.context import attempt_definition, build_context, outputs_view
from engine.execution.ids import iso, parse_iso, short_id, task_run_id
from engine.execution.planner import decide, fail_execution
from engine.execution.replay import Mismatch, Recorded, as_of, comparable, replay, verify
from engine.execution.retry import retry_after
from engine.execution.state import Attempt, Execution, TaskRun, evolve, flow_of, fold

__all__ = [
    "Attempt",
    "Execution",
    "Mismatch",
    "Recorded",
    "TaskRun",
    "as_of",
    "attempt_definition",
    "build_context",
    "comparable",
    "decide",
    "evolve",
    "fail_execution",
    "flow_of",
    "fold",
    "iso",
    "outputs_view",
    "parse_iso",
    "replay",
    "retry_after",
    "short_id",
    "task_run_id",
    "verify",
]
