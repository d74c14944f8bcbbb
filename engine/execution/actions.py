"""What a person's action on an ended execution changes, worked out from its state alone:
which task runs a restart runs again, which a replay keeps, what a change of a task run's
state reopens. The commands (`engine.commands`) record the outcome as events; the planner
goes on from the state those events fold to.
"""

from __future__ import annotations

from collections.abc import Iterable

import msgspec

from engine import events as ev
from engine.execution.ids import task_run_id
from engine.execution.state import Execution, TaskRun, flow_of
from engine.flow import walk
from engine.plugin import FAILED_STATES, TERMINAL_STATES

FORCEABLE_STATES = ("SUCCESS", "WARNING", "FAILED")
"""The states a task run can be set to by hand (Kestra's "change status")."""


class RunAgain(msgspec.Struct, frozen=True):
    """The task runs an action runs again (`run`), reopens (their flowable parents) and sets
    aside (`removed`: the runs of the errors, finally and afterExecution branches)."""

    run: list[str]
    reopened: list[str]
    removed: list[str]


def _children(state: Execution) -> dict[str | None, list[TaskRun]]:
    out: dict[str | None, list[TaskRun]] = {}
    for run in state.taskruns.values():
        out.setdefault(run.parentTaskRunId, []).append(run)
    return out


def _descendants(children: dict[str | None, list[TaskRun]], run_id: str) -> list[str]:
    out: list[str] = []
    stack = [run_id]
    while stack:
        for child in children.get(stack.pop(), []):
            out.append(child.id)
            stack.append(child.id)
    return out


def _ancestors(state: Execution, run_id: str) -> list[str]:
    out: list[str] = []
    parent = state.taskruns[run_id].parentTaskRunId if run_id in state.taskruns else None
    while parent is not None and parent in state.taskruns and parent not in out:
        out.append(parent)
        parent = state.taskruns[parent].parentTaskRunId
    return out


def _branch_runs(state: Execution) -> list[str]:
    """The task runs of the flow's errors, finally and afterExecution branches, with their
    children: they ran for an outcome that running the execution again undoes."""
    try:
        flow = flow_of(state)
    except ValueError:
        return []
    branch_tasks = {t.id for t in walk([*flow.errors, *flow.finally_, *flow.afterExecution])}
    children = _children(state)
    out: list[str] = []
    for run in state.taskruns.values():
        if run.taskId in branch_tasks and run.id not in out:
            out.append(run.id)
            out += [d for d in _descendants(children, run.id) if d not in out]
    return out


def restart_plan(state: Execution) -> RunAgain:
    """What a restart of a FAILED or KILLED execution runs again: each failed or killed task
    run none of whose children failed or was killed (the deepest failures; a flowable task
    that failed on its own is one), with every one of its ancestors reopened. The branch runs
    are set aside (see `_branch_runs`)."""
    removed = set(_branch_runs(state))
    children = _children(state)
    run: list[str] = []
    reopened: list[str] = []
    for r in state.taskruns.values():
        if r.id in removed or r.state not in FAILED_STATES:
            continue
        if any(c.state in FAILED_STATES for c in children.get(r.id, [])):
            continue
        run.append(r.id)
        reopened += [a for a in _ancestors(state, r.id) if a not in reopened]
    reopened = [a for a in reopened if a not in run]
    return RunAgain(run, reopened, sorted(removed))


def force_plan(state: Execution, run_id: str) -> RunAgain:
    """What setting an ended task run's state by hand reopens: its ancestors that ended (all
    of them when the execution ended), and, in an ended execution, the branch runs are set
    aside as by a restart."""
    reopened = [a for a in _ancestors(state, run_id) if state.taskruns[a].state != "RUNNING"]
    removed = [r for r in _branch_runs(state) if r != run_id] if state.terminal else []
    reopened = [a for a in reopened if a not in removed]
    return RunAgain([run_id], reopened, removed)


def replayed_runs(state: Execution, from_run: str | None, new_id: str) -> list[ev.ReplayedTaskRun]:
    """The task runs a replay of `state` as execution `new_id` keeps: those created before
    `from_run` (none without it), except `from_run`'s own children; its ancestors are kept
    reopened (RUNNING), to run it again. A kept run that is not such an ancestor keeps all
    its children or goes with them, so nothing half-done is kept. Ids are derived for the
    new execution as its own planner derives them."""
    if from_run is None:
        return []
    order = list(state.taskruns)
    children = _children(state)
    ancestors = set(_ancestors(state, from_run))
    cut = order.index(from_run)
    dropped = {from_run, *_descendants(children, from_run), *order[cut + 1 :]}
    changed = True
    while changed:
        changed = False
        for run_id in order[:cut]:
            if run_id in dropped or run_id in ancestors:
                continue
            family = _descendants(children, run_id)
            if any(d in dropped for d in family):
                dropped |= {run_id, *family}
                changed = True
    ids: dict[str, str] = {}
    out: list[ev.ReplayedTaskRun] = []
    for run_id in order[:cut]:
        if run_id in dropped:
            continue
        run = state.taskruns[run_id]
        parent = ids.get(run.parentTaskRunId) if run.parentTaskRunId else None
        new_run_id = task_run_id(new_id, parent, run.taskId, run.value, run.iteration)
        ids[run_id] = new_run_id
        reopened = run_id in ancestors
        histories = list(run.histories)
        if reopened:
            histories = [h for h in histories if h[0] not in TERMINAL_STATES]
        child = state.subflows.get(run_id, ())
        out.append(
            ev.ReplayedTaskRun(
                id=new_run_id,
                taskId=run.taskId,
                parentTaskRunId=parent,
                value=run.value,
                iteration=run.iteration,
                state="RUNNING" if reopened else run.state,
                histories=histories,
                outputs=run.outputs,
                attempts=[
                    ev.ReplayedAttempt(
                        state=a.state, workerId=a.workerId, histories=list(a.histories)
                    )
                    for a in run.attempts
                ],
                message=None if reopened else run.message,
                restarts=run.restarts,
                files=dict(run.files),
                subflow=list(child),
                subflowOutputs=state.subflow_outputs.get(run_id),
            )
        )
    return out


def labels_with(labels: Iterable[tuple[str, str]], key: str, value: str) -> list[dict[str, str]]:
    """An execution's labels with `key` set to `value`, as Kestra's key/value list."""
    merged = dict(labels)
    merged[key] = value
    return [{"key": k, "value": v} for k, v in merged.items()]
