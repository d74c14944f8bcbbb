"""The variables a task renders with, built from an execution's folded state.

The executor renders conditions and flow outputs with them; a worker builds the same context
for the attempt it runs from the execution's history as it stood when the attempt was
scheduled, so events never carry a snapshot of it.
"""

from __future__ import annotations

from typing import Any

import msgspec

from engine.execution.state import Execution, TaskRun, flow_of
from engine.flow import Flow
from engine.plugin import Task


def ancestors(state: Execution, run: TaskRun) -> list[TaskRun]:
    """The parent task runs of `run`, nearest first."""
    out = []
    parent_id = run.parentTaskRunId
    seen: set[str] = set()
    while parent_id and parent_id not in seen:
        seen.add(parent_id)
        parent = state.taskruns.get(parent_id)
        if parent is None:
            break
        out.append(parent)
        parent_id = parent.parentTaskRunId
    return out


def _value_path(state: Execution, flow: Flow, run: TaskRun) -> list[str]:
    """The loop values a run sits under, outermost first (how its outputs are keyed)."""
    path: list[str] = []
    child = run
    for parent in ancestors(state, run):
        task = flow.find_task(parent.taskId)
        if getattr(task, "__loop__", False) and child.value is not None:
            path.append(child.value)
        child = parent
    return path[::-1]


def outputs_view(state: Execution) -> dict[str, Any]:
    """Task outputs as templates see them: `outputs.<taskId>`, keyed by loop values inside loops
    (`outputs.<taskId>.<outer value>.<inner value>`)."""
    flow = flow_of(state)
    view: dict[str, Any] = {}
    for run in state.taskruns.values():
        if run.outputs is None:
            continue
        path = _value_path(state, flow, run)
        if not path:
            view[run.taskId] = run.outputs
            continue
        slot = view.setdefault(run.taskId, {})
        for key in path[:-1]:
            if not isinstance(slot, dict):
                break
            slot = slot.setdefault(key, {})
        if isinstance(slot, dict):
            slot[path[-1]] = run.outputs
    return view


def labels_view(labels: tuple[tuple[str, str], ...]) -> dict[str, Any]:
    """Labels by key, and dotted keys also as nested maps (`labels.system.correlationId`)."""
    view: dict[str, Any] = {}
    for key, value in labels:
        view[key] = value
        if "." in key:
            head, *rest = key.split(".")
            slot = view.setdefault(head, {})
            for part in rest[:-1]:
                if not isinstance(slot, dict):
                    break
                slot = slot.setdefault(part, {})
            if isinstance(slot, dict):
                slot[rest[-1]] = value
    return view


def trigger_variables(trigger: dict[str, Any] | None) -> dict[str, Any]:
    """What `{{ trigger.* }}` renders: the variables the execution's trigger recorded."""
    variables = (trigger or {}).get("variables")
    return dict(variables) if isinstance(variables, dict) else {}


def build_context(
    state: Execution,
    flow: Flow,
    run: TaskRun | None,
    task: Task | None = None,
) -> dict[str, Any]:
    """The variables a task renders with (the executor's part; the worker adds functions)."""
    context: dict[str, Any] = {
        "flow": {"id": state.flowId, "namespace": state.namespace, "revision": state.flowRevision},
        "execution": {
            "id": state.id,
            "startDate": state.start_date,
            "originalId": state.originalId,
            "state": state.state,
        },
        "inputs": state.inputs,
        "vars": flow.variables,
        "outputs": outputs_view(state),
        "labels": labels_view(state.labels),
        # Kestra exposes what the trigger recorded (`trigger.body`, `trigger.date`,
        # `trigger.executionId`), not its id and type.
        "trigger": trigger_variables(state.trigger),
    }
    if run is not None:
        context["taskrun"] = {
            "id": run.id,
            "startDate": run.histories[0][1],
            "parentId": run.parentTaskRunId,
            "value": run.value,
            "attemptsCount": len(run.attempts),
        }
        parents_runs = ancestors(state, run)
        if parents_runs and getattr(flow.find_task(parents_runs[0].taskId), "__items__", False):
            context["taskrun"]["items"] = run.value  # the batch file of a ForEachItem
        parents = [
            {"taskrun": {"id": a.id, "value": a.value, "taskId": a.taskId}}
            for a in parents_runs
            if a.value is not None
        ]
        if parents:
            context["parents"] = parents
            context["parent"] = parents[0]
        for a in parents_runs:
            wd_task = flow.find_task(a.taskId)
            if getattr(wd_task, "__working_directory__", False):
                context["_workingDirectory"] = {
                    "taskRunId": a.id,
                    "taskId": a.taskId,
                    "inputFiles": getattr(wd_task, "inputFiles", None),
                    "outputFiles": getattr(wd_task, "outputFiles", None) or [],
                }
                context["workerTaskrun"] = {"id": a.id, "taskId": a.taskId, "value": a.value}
                break
        task = task or flow.find_task(run.taskId)
    if task is not None:
        context["task"] = {"id": task.id, "type": task.type}
    return context


class AttemptNotFound(ValueError):
    """The history does not hold the scheduled attempt (or its task)."""


def attempt_definition(
    state: Execution, task_run_id: str, attempt: int
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The task definition and render context of `attempt` of `task_run_id`, from the state
    the execution was in when the attempt was scheduled."""
    run = state.taskruns.get(task_run_id)
    if run is None:
        raise AttemptNotFound(f"Execution {state.id} has no task run {task_run_id}")
    flow = flow_of(state)
    task = flow.find_task(run.taskId)
    if task is None:
        raise AttemptNotFound(f"Execution {state.id} runs no task {run.taskId}")
    context = build_context(state, flow, run, task)
    # Kestra counts the attempts made before the one running (0 on the first try), and its
    # documented retry examples (`if attemptsCount == 4 then succeed`) rely on it.
    context["taskrun"]["attemptsCount"] = attempt - 1
    definition: dict[str, Any] = msgspec.to_builtins(task)
    return definition, context
