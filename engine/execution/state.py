"""An execution's state and `evolve`, which applies one recorded fact to it.

`evolve` decides nothing: what follows from a fact (a retry, a WARNING, what a resume changes)
is the planner's, recorded as events of its own. It never raises on recorded data either: an
event it cannot apply leaves the state as it was, and a pinned flow that cannot be read marks
the execution `broken`, which the planner turns into a failure with the reason.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from typing import Any

import msgspec

from engine import events as ev
from engine.execution.ids import iso
from engine.flow import Flow, flow_from_dict
from engine.plugin import TERMINAL_STATES


class Attempt(msgspec.Struct, frozen=True):
    """One attempt of a runnable task run."""

    state: str
    workerId: str | None = None
    histories: tuple[tuple[str, str], ...] = ()
    """The attempt's states, each with when it entered it (ISO-8601)."""


class TaskRun(msgspec.Struct, frozen=True):
    """A task run as the executor knows it."""

    id: str
    taskId: str
    parentTaskRunId: str | None
    value: str | None
    state: str
    histories: tuple[tuple[str, str], ...]
    outputs: dict[str, Any] | None = None
    attempts: tuple[Attempt, ...] = ()
    message: str | None = None
    iteration: int | None = None
    restarts: int = 0
    """How many times a flowable task run started its children over (its retries)."""
    files: dict[str, str] = {}
    """WorkingDirectory output files reported by this run's attempt."""
    reruns: int = 0
    """How many times a person ran it again (a restart, a change of state)."""


class Execution(msgspec.Struct, frozen=True):
    """An execution's state: the fold of its events."""

    id: str
    namespace: str
    flowId: str
    flowRevision: int
    flow: dict[str, Any]
    """The flow revision as recorded when the execution was created."""
    inputs: dict[str, Any]
    labels: tuple[tuple[str, str], ...]
    trigger: dict[str, Any] | None
    parentId: str | None
    originalId: str | None
    state: str
    histories: tuple[tuple[str, str], ...]
    taskruns: dict[str, TaskRun]
    outputs: dict[str, Any] | None = None
    timers: dict[str, str] = {}
    fired: frozenset[str] = frozenset()
    kill_requested: bool = False
    parentTaskRunId: str | None = None
    resumed: frozenset[str] = frozenset()
    """Task runs (Pause) that were resumed."""
    resume_inputs: dict[str, Any] | None = None
    """The values of a resume request not yet carried out."""
    resume_runs: frozenset[str] = frozenset()
    """The paused task runs that request resumes."""
    subflows: dict[str, tuple[str, ...]] = {}
    """Per Subflow task run: (child id,) once requested, (child id, state) once ended."""
    subflow_outputs: dict[str, dict[str, Any]] = {}
    attempt: int = 1
    """Which try of the flow this execution is (retries with CREATE_NEW_EXECUTION)."""
    retried_as: str | None = None
    purged: bool = False
    definition: Flow | None = None
    """The recorded flow, parsed once when the execution was folded from its creation."""
    broken: str | None = None
    """Why the recorded flow cannot be run (the planner fails the execution with it)."""
    message: str | None = None
    """Why the execution ended as it did, when the engine knows more than the state says."""
    limited: bool = False
    """Whether its flow's concurrency limit applies (recorded at its creation)."""
    rules: int = 0
    """The edition of the decision rules it was created under (see `ExecutionCreated.rules`)."""
    admission: str | None = None
    """What its flow's concurrency limit said: `granted`, or the behavior that applied when
    the limit was reached (QUEUE, CANCEL, FAIL); None while it has not said yet."""
    admission_message: str | None = None
    """Why the limit refused it (CANCEL, FAIL)."""
    replayOf: str | None = None
    """The execution this one replays."""
    replays: tuple[str, ...] = ()
    """The executions that replay this one, oldest first."""
    generation: int = 0
    """How many times a person made the ended execution run again (restart, change of a task
    run's state): task runs created since have ids of their own generation."""
    restarting: bool = False
    """Ended, and made to run again by hand: the planner records it RESTARTED."""
    hold: str | None = None
    """A pause by hand: `pause` while it holds (no task run starts), `resume` once resumed
    and until the execution runs again."""

    @property
    def terminal(self) -> bool:
        """True once the execution has ended (and until it is RESTARTED, when run again)."""
        return self.state in TERMINAL_STATES and not self.restarting

    @property
    def start_date(self) -> str:
        """When the execution was created (ISO-8601)."""
        return self.histories[0][1]


def flow_of(state: Execution) -> Flow:
    """The parsed flow an execution runs; `ValueError` when it could not be read."""
    if state.definition is None:
        raise ValueError(state.broken or f"Execution {state.id} has no readable flow")
    return state.definition


def _pinned_flow(recorded: dict[str, Any]) -> tuple[Flow | None, str | None]:
    try:
        return flow_from_dict(recorded), None
    except Exception as exc:  # noqa: BLE001 - any reason becomes the execution's failure
        return None, (
            f"The flow revision recorded for this execution cannot be read by this version of "
            f"Tiercel: {exc}. Run the execution again on a current revision."
        )


def _with_run(state: Execution, run: TaskRun) -> Execution:
    return msgspec.structs.replace(state, taskruns={**state.taskruns, run.id: run})


def _run_state(run: TaskRun, new: str, at: dt.datetime, **changes: Any) -> TaskRun:
    if run.state == new and not changes:
        return run
    histories = run.histories if run.state == new else (*run.histories, (new, iso(at)))
    return msgspec.structs.replace(run, state=new, histories=histories, **changes)


def _set_attempt(
    run: TaskRun, index: int, state: str, worker: str | None, at: dt.datetime
) -> TaskRun:
    attempts = list(run.attempts)
    while len(attempts) < index:
        attempts.append(Attempt("CREATED"))
    previous = attempts[index - 1]
    histories = previous.histories
    if previous.state != state or not histories:
        histories = (*histories, (state, iso(at)))
    attempts[index - 1] = Attempt(state, worker, histories)
    return msgspec.structs.replace(run, attempts=tuple(attempts))


def _labels(items: Iterable[Any]) -> tuple[tuple[str, str], ...]:
    out = []
    for item in items:
        if isinstance(item, dict) and "key" in item:
            out.append((str(item["key"]), str(item.get("value", ""))))
    return tuple(out)


def _replayed(
    items: Iterable[dict[str, Any]],
) -> list[tuple[TaskRun, tuple[tuple[str, ...], dict[str, Any] | None]]]:
    """The task runs a replay keeps, each with its Subflow child (id, state) and outputs."""
    out = []
    for item in items:
        kept = msgspec.convert(item, ev.ReplayedTaskRun)
        run = TaskRun(
            id=kept.id,
            taskId=kept.taskId,
            parentTaskRunId=kept.parentTaskRunId,
            value=kept.value,
            state=kept.state,
            histories=tuple((s, d) for s, d in kept.histories),
            outputs=kept.outputs,
            attempts=tuple(
                Attempt(a.state, a.workerId, tuple((s, d) for s, d in a.histories))
                for a in kept.attempts
            ),
            message=kept.message,
            iteration=kept.iteration,
            restarts=kept.restarts,
            files=dict(kept.files),
        )
        out.append((run, (tuple(kept.subflow), kept.subflowOutputs)))
    return out


def _run_again(
    state: Execution,
    run_ids: Iterable[str],
    forced: str | None,
    reopened: Iterable[str],
    removed: Iterable[str],
    at: dt.datetime,
) -> Execution:
    """Task runs made to run again by hand: each of `run_ids` is RESTARTED (or, when `forced`,
    ends in that state), the flowable parents `reopened` run again, the runs `removed` are
    forgotten; an ended execution is to be RESTARTED, in a new generation of task run ids."""
    runs = dict(state.taskruns)
    subflows = dict(state.subflows)
    subflow_outputs = dict(state.subflow_outputs)
    for run_id in removed:
        runs.pop(run_id, None)
        subflows.pop(run_id, None)
        subflow_outputs.pop(run_id, None)
    for run_id in run_ids:
        run = runs.get(run_id)
        if run is None:
            continue
        if forced is None:
            # Its Subflow child, if any, is asked for again (a new child).
            subflows.pop(run_id, None)
            subflow_outputs.pop(run_id, None)
            run = msgspec.structs.replace(run, reruns=run.reruns + 1, message=None)
            runs[run_id] = _run_state(run, "RESTARTED", at)
        else:
            if run.attempts:
                last = run.attempts[-1]
                run = _set_attempt(run, len(run.attempts), forced, last.workerId, at)
            runs[run_id] = _run_state(run, forced, at, reruns=run.reruns + 1)
    for run_id in reopened:
        run = runs.get(run_id)
        if run is not None and run.state != "RUNNING":
            runs[run_id] = _run_state(run, "RUNNING", at, message=None)
    changed = msgspec.structs.replace(
        state, taskruns=runs, subflows=subflows, subflow_outputs=subflow_outputs
    )
    if not state.terminal:
        return changed
    # The planner records it RESTARTED (then RUNNING), as every change of an execution's state.
    return msgspec.structs.replace(
        changed,
        restarting=True,
        message=None,
        outputs=None,
        kill_requested=False,
        hold=None,
        generation=state.generation + 1,
    )


def evolve(state: Execution | None, event: ev.Event, at: dt.datetime) -> Execution | None:
    """The execution's state after `event`, recorded at `at`.

    Total on recorded data: an event that does not apply (unknown run, stale attempt, a report
    after the run ended) leaves the state unchanged.
    """
    try:
        return _evolve(state, event, at)
    except Exception:  # noqa: BLE001 - a fact that cannot be applied changes nothing
        return state


def _evolve(state: Execution | None, event: ev.Event, at: dt.datetime) -> Execution | None:
    if isinstance(event, ev.ExecutionCreated):
        if state is not None:
            return state
        definition, broken = _pinned_flow(event.flow)
        kept = _replayed(event.taskRuns)
        return Execution(
            id=event.executionId,
            namespace=event.namespace,
            flowId=event.flowId,
            flowRevision=event.flowRevision,
            flow=event.flow,
            inputs=event.inputs,
            labels=_labels(event.labels),
            trigger=event.trigger,
            parentId=event.parentId,
            originalId=event.originalId or event.executionId,
            parentTaskRunId=event.parentTaskRunId,
            attempt=event.attempt,
            limited=event.concurrencyLimited,
            rules=event.rules,
            state="CREATED",
            histories=(("CREATED", iso(at)),),
            taskruns={r.id: r for r, _ in kept},
            subflows={r.id: child for r, (child, _) in kept if child},
            subflow_outputs={r.id: ended for r, (_, ended) in kept if ended is not None},
            definition=definition,
            broken=broken,
            replayOf=event.replayOf,
        )
    if state is None:
        return None
    if isinstance(event, ev.ExecutionStateChanged):
        if event.state == state.state:
            return state
        resumed = state.state == "PAUSED" and event.state == "RUNNING"
        return msgspec.structs.replace(
            state,
            state=event.state,
            histories=(*state.histories, (event.state, iso(at))),
            outputs=event.outputs if event.outputs is not None else state.outputs,
            message=event.message or state.message,
            resume_inputs=None if resumed else state.resume_inputs,
            resume_runs=frozenset() if resumed else state.resume_runs,
            hold=None if resumed and state.hold == "resume" else state.hold,
            restarting=False,
        )
    if isinstance(event, ev.ExecutionKillRequested):
        return msgspec.structs.replace(state, kill_requested=True)
    if isinstance(event, ev.ConcurrencySlotGranted):
        return msgspec.structs.replace(state, admission="granted")
    if isinstance(event, ev.ConcurrencyLimitReached):
        if state.admission is not None:
            return state  # a queued execution stays queued until granted a slot
        return msgspec.structs.replace(
            state, admission=event.behavior, admission_message=event.message
        )
    if isinstance(event, ev.ExecutionLabelsChanged):
        return msgspec.structs.replace(state, labels=_labels(event.labels))
    if isinstance(event, ev.ExecutionResumeRequested):
        if state.hold == "pause":
            # Paused by hand: the planner lets it run again (a Pause task cannot have paused
            # it meanwhile, since nothing starts while it holds).
            return msgspec.structs.replace(state, hold="resume")
        if state.resume_inputs is not None:
            return state  # one request at a time: it resumes the pauses it was made for
        paused = {r.id for r in state.taskruns.values() if r.state == "PAUSED"}
        if event.taskRunIds:
            paused &= set(event.taskRunIds)
        if not paused:
            return state  # nothing it was made for is paused: it resumes nothing
        return msgspec.structs.replace(
            state, resume_inputs=dict(event.inputs), resume_runs=frozenset(paused)
        )
    if isinstance(event, ev.ExecutionPurged):
        return msgspec.structs.replace(state, purged=True)
    if isinstance(event, ev.ExecutionReplayed):
        return msgspec.structs.replace(state, replays=(*state.replays, event.newExecutionId))
    if isinstance(event, ev.ExecutionPauseRequested):
        if state.terminal or state.hold is not None:
            return state
        return msgspec.structs.replace(state, hold="pause")
    if isinstance(event, ev.ExecutionRestarted):
        return _run_again(state, event.taskRunIds, None, event.reopened, event.removed, at)
    if isinstance(event, ev.TaskRunStateForced):
        if event.taskRunId not in state.taskruns:
            return state
        return _run_again(state, [event.taskRunId], event.state, event.reopened, event.removed, at)
    if isinstance(event, ev.ExecutionRetried):
        return msgspec.structs.replace(state, retried_as=event.newExecutionId)
    if isinstance(event, ev.SubflowExecutionRequested):
        return msgspec.structs.replace(
            state, subflows={**state.subflows, event.taskRunId: (event.childId,)}
        )
    if isinstance(event, ev.SubflowExecutionEnded):
        ended: dict[str, Any] = {"executionId": event.childId, "state": event.state}
        if event.outputs is not None:
            ended["outputs"] = event.outputs
        if event.message:
            ended["message"] = event.message
        return msgspec.structs.replace(
            state,
            subflows={**state.subflows, event.taskRunId: (event.childId, event.state)},
            subflow_outputs={**state.subflow_outputs, event.taskRunId: ended},
        )
    if isinstance(event, ev.TaskRunCreated):
        if event.taskRunId in state.taskruns:
            return state
        run = TaskRun(
            id=event.taskRunId,
            taskId=event.taskId,
            parentTaskRunId=event.parentTaskRunId,
            value=event.value,
            state="CREATED",
            histories=(("CREATED", iso(at)),),
            iteration=event.iteration,
        )
        return _with_run(state, run)
    if isinstance(event, ev.TimerScheduled):
        return msgspec.structs.replace(state, timers={**state.timers, event.timerId: event.fireAt})
    if isinstance(event, ev.TimerFired):
        return msgspec.structs.replace(state, fired=state.fired | {event.timerId})
    found = state.taskruns.get(getattr(event, "taskRunId", ""))
    if found is None:
        return state
    run = found
    if isinstance(event, ev.TaskRunRestarted):
        run = msgspec.structs.replace(run, restarts=run.restarts + 1, message=None)
        return _with_run(state, _run_state(run, "RUNNING", at))
    if isinstance(event, ev.TaskRunStateChanged):
        changed = _with_run(
            state,
            _run_state(
                run,
                event.state,
                at,
                outputs=event.outputs or run.outputs,
                message=event.message or run.message,
            ),
        )
        if run.state == "PAUSED" and event.state == "RUNNING":
            changed = msgspec.structs.replace(changed, resumed=changed.resumed | {run.id})
            if not any(
                changed.taskruns[i].state == "PAUSED"
                for i in changed.resume_runs
                if i in changed.taskruns
            ):
                changed = msgspec.structs.replace(
                    changed, resume_inputs=None, resume_runs=frozenset()
                )
        return changed
    if isinstance(event, ev.AttemptScheduled):
        return _with_run(state, _set_attempt(run, event.attempt, "CREATED", None, at))
    if isinstance(event, ev.AttemptKilled) and 0 < event.attempt <= len(run.attempts):
        # A fact about the attempt whether or not the run ended first: folds the same in
        # either order.
        run = _set_attempt(
            run, event.attempt, "KILLED", run.attempts[event.attempt - 1].workerId, at
        )
        return _with_run(state, msgspec.structs.replace(run, message=event.reason or run.message))
    if run.state in TERMINAL_STATES:
        return state  # a late report for a run already ended (killed, or abandoned and redone)
    if len(run.attempts) != getattr(event, "attempt", 0):
        return state  # a report for an attempt that is no longer the current one
    last = run.attempts[-1]
    if last.state not in ("CREATED", "RUNNING"):
        return state  # the attempt already ended: a second report changes nothing
    if isinstance(event, ev.AttemptClaimed):
        run = _set_attempt(run, event.attempt, "RUNNING", event.workerId, at)
        return _with_run(state, _run_state(run, "RUNNING", at))
    if isinstance(event, ev.AttemptSucceeded):
        run = _set_attempt(run, event.attempt, event.state, last.workerId, at)
        changes: dict[str, Any] = {"outputs": event.outputs}
        if event.workingDirectoryFiles:
            changes["files"] = event.workingDirectoryFiles
        return _with_run(state, msgspec.structs.replace(run, **changes))
    if isinstance(event, ev.AttemptFailed):
        run = _set_attempt(run, event.attempt, "FAILED", last.workerId, at)
        return _with_run(
            state,
            msgspec.structs.replace(
                run, outputs=event.outputs or run.outputs, message=event.message
            ),
        )
    if isinstance(event, (ev.AttemptAbandoned, ev.AttemptKilled)):
        run = _set_attempt(run, event.attempt, "KILLED", last.workerId, at)
        return _with_run(state, msgspec.structs.replace(run, message=event.reason or run.message))
    return state


def fold(events: Iterable[tuple[ev.Event, dt.datetime]]) -> Execution | None:
    """The state after every (event, at) in order."""
    state: Execution | None = None
    for event, at in events:
        state = evolve(state, event, at)
    return state
