"""The executor's pure core: `evolve` folds an event into an execution's state and `decide`
says which events follow from it.

No clock, randomness or I/O here: time is the `at` of the event being handled (its recorded
time), ids are hashes of what they identify, and the flow is the definition pinned in
`ExecutionCreated`. `decide` is level-triggered: it plans from the whole state until nothing
more follows, so handling an event twice, or after a restart, decides the same thing.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Iterable, Sequence
from functools import lru_cache
from typing import Any

import msgspec

from engine import events as ev
from engine import templating
from engine.duration import parse_duration
from engine.errors import TemplateError, TiercelError
from engine.flow import Flow, flow_from_dict
from engine.plugin import (
    FAILED_STATES,
    TERMINAL_STATES,
    FlowableTask,
    RunnableTask,
    Task,
    TaskFailure,
)


class Attempt(msgspec.Struct, frozen=True):
    """One attempt of a runnable task run."""

    state: str
    workerId: str | None = None


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
    retryAt: str | None = None
    """When the next attempt is due, while a failed attempt is being retried."""
    iteration: int | None = None
    restarts: int = 0
    """How many times a flowable task run started its children over (its retries)."""
    files: dict[str, str] = {}
    """WorkingDirectory output files reported by this run's attempt."""


class Execution(msgspec.Struct, frozen=True):
    """An execution's state: the fold of its events."""

    id: str
    namespace: str
    flowId: str
    flowRevision: int
    flow: dict[str, Any]
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
    subflows: dict[str, tuple[str, ...]] = {}
    """Per Subflow task run: (child id,) once requested, (child id, state) once ended."""
    subflow_outputs: dict[str, dict[str, Any]] = {}
    attempt: int = 1
    """Which try of the flow this execution is (retries with CREATE_NEW_EXECUTION)."""
    retried_as: str | None = None
    purged: bool = False

    @property
    def terminal(self) -> bool:
        """True once the execution has ended."""
        return self.state in TERMINAL_STATES

    @property
    def start_date(self) -> str:
        """When the execution was created (ISO-8601)."""
        return self.histories[0][1]


def iso(at: dt.datetime) -> str:
    """A timestamp as Kestra writes them: UTC, milliseconds, `Z`."""
    at = at.astimezone(dt.UTC)
    return at.strftime("%Y-%m-%dT%H:%M:%S.") + f"{at.microsecond // 1000:03d}Z"


_ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


def short_id(*parts: str) -> str:
    """A 22-character base62 id derived from `parts` (Kestra's id shape, but reproducible)."""
    n = int.from_bytes(hashlib.sha256("\x1f".join(parts).encode()).digest()[:16], "big")
    out = []
    for _ in range(22):
        n, r = divmod(n, 62)
        out.append(_ALPHABET[r])
    return "".join(out)


def task_run_id(
    execution_id: str,
    parent_id: str | None,
    task_id: str,
    value: str | None,
    iteration: int | None = None,
) -> str:
    """The id of the task run of `task_id` under `parent_id` for loop value `value`."""
    parts = [execution_id, parent_id or "", task_id, "" if value is None else value]
    if iteration is not None:
        parts.append(f"#{iteration}")
    return short_id(*parts)


@lru_cache(maxsize=512)
def _flow(key: bytes) -> Flow:
    return flow_from_dict(msgspec.json.decode(key))


def flow_of(state: Execution) -> Flow:
    """The parsed flow an execution runs (memoised: parsing is pure)."""
    return _flow(msgspec.json.encode(state.flow))


# --- evolve ------------------------------------------------------------------------------------


def _with_run(state: Execution, run: TaskRun) -> Execution:
    return msgspec.structs.replace(state, taskruns={**state.taskruns, run.id: run})


def _run_state(run: TaskRun, new: str, at: dt.datetime, **changes: Any) -> TaskRun:
    if run.state == new and not changes:
        return run
    histories = run.histories if run.state == new else (*run.histories, (new, iso(at)))
    return msgspec.structs.replace(run, state=new, histories=histories, **changes)


def _set_attempt(run: TaskRun, index: int, attempt: Attempt) -> TaskRun:
    attempts = list(run.attempts)
    while len(attempts) < index:
        attempts.append(Attempt("CREATED"))
    attempts[index - 1] = attempt
    return msgspec.structs.replace(run, attempts=tuple(attempts))


def evolve(state: Execution | None, event: ev.Event, at: dt.datetime) -> Execution | None:
    """The execution's state after `event`, recorded at `at`."""
    if isinstance(event, ev.ExecutionCreated):
        return Execution(
            id=event.executionId,
            namespace=event.namespace,
            flowId=event.flowId,
            flowRevision=event.flowRevision,
            flow=event.flow,
            inputs=event.inputs,
            labels=tuple((lb["key"], lb["value"]) for lb in event.labels),
            trigger=event.trigger,
            parentId=event.parentId,
            originalId=event.originalId or event.executionId,
            parentTaskRunId=event.parentTaskRunId,
            attempt=event.attempt,
            state="CREATED",
            histories=(("CREATED", iso(at)),),
            taskruns={},
        )
    if state is None:
        return None
    if isinstance(event, ev.ExecutionStateChanged):
        if event.state == state.state:
            return state
        return msgspec.structs.replace(
            state,
            state=event.state,
            histories=(*state.histories, (event.state, iso(at))),
            outputs=event.outputs if event.outputs is not None else state.outputs,
        )
    if isinstance(event, ev.ExecutionKillRequested):
        return msgspec.structs.replace(state, kill_requested=True)
    if isinstance(event, ev.ExecutionLabelsChanged):
        return msgspec.structs.replace(
            state, labels=tuple((lb["key"], lb["value"]) for lb in event.labels)
        )
    if isinstance(event, ev.ExecutionResumeRequested):
        paused = [r for r in state.taskruns.values() if r.state == "PAUSED"]
        runs = dict(state.taskruns)
        for r in paused:
            outputs = {**(r.outputs or {}), "onResume": event.inputs} if event.inputs else r.outputs
            runs[r.id] = _run_state(r, "RUNNING", at, outputs=outputs)
        return msgspec.structs.replace(
            state,
            taskruns=runs,
            resumed=state.resumed | {r.id for r in paused},
            state="RUNNING" if state.state == "PAUSED" else state.state,
            histories=(*state.histories, ("RUNNING", iso(at)))
            if state.state == "PAUSED"
            else state.histories,
        )
    if isinstance(event, ev.ExecutionPurged):
        return msgspec.structs.replace(state, purged=True)
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
        return _with_run(
            state,
            _run_state(
                run,
                event.state,
                at,
                outputs=event.outputs or run.outputs,
                message=event.message or run.message,
            ),
        )
    if isinstance(event, ev.AttemptScheduled):
        return _with_run(state, _set_attempt(run, event.attempt, Attempt("CREATED")))
    if run.state in TERMINAL_STATES and not isinstance(event, ev.AttemptScheduled):
        return state  # a late report for a run already ended (killed, or abandoned and redone)
    if len(run.attempts) != getattr(event, "attempt", 0):
        return state  # a report for an attempt that is no longer the current one
    if isinstance(event, ev.AttemptClaimed):
        run = _set_attempt(run, event.attempt, Attempt("RUNNING", event.workerId))
        return _with_run(state, _run_state(run, "RUNNING", at))
    if isinstance(event, ev.AttemptSucceeded):
        run = _set_attempt(run, event.attempt, Attempt(event.state, run.attempts[-1].workerId))
        final = event.state
        policy = _retry_policy(state, run.taskId)
        if final == "SUCCESS" and len(run.attempts) > 1 and policy.get("warningOnRetry"):
            final = "WARNING"
        if event.workingDirectoryFiles:
            run = msgspec.structs.replace(run, files=event.workingDirectoryFiles)
        return _with_run(state, _run_state(run, final, at, outputs=event.outputs))
    if isinstance(event, ev.AttemptFailed):
        run = _set_attempt(run, event.attempt, Attempt("FAILED", run.attempts[-1].workerId))
        due = _retry_due(state, run, at)
        run = msgspec.structs.replace(run, retryAt=iso(due) if due else None)
        return _with_run(
            state,
            _run_state(
                run,
                "RUNNING" if due else "FAILED",
                at,
                outputs=event.outputs or None,
                message=event.message,
            ),
        )
    if isinstance(event, ev.AttemptAbandoned):
        run = _set_attempt(run, event.attempt, Attempt("KILLED", run.attempts[-1].workerId))
        return _with_run(state, msgspec.structs.replace(run, message=event.reason))
    return state


def _retry_policy(state: Execution, task_id: str) -> dict[str, Any]:
    flow = flow_of(state)
    task = flow.find_task(task_id)
    policy = (task.retry if task is not None else None) or flow.retry or {}
    return policy if isinstance(policy, dict) else {}


def _retry_due(state: Execution, run: TaskRun, at: dt.datetime) -> dt.datetime | None:
    """When the next attempt of a failed run should start, or None when no retry is left."""
    policy = _retry_policy(state, run.taskId)
    if str(policy.get("behavior", "RETRY_FAILED_TASK")).upper() == "CREATE_NEW_EXECUTION":
        return None  # retried by a new execution once this one has failed
    return retry_after(
        policy, len(run.attempts), _parse_iso(run.histories[0][1]), at, (state.id, run.id)
    )


def retry_after(
    policy: dict[str, Any],
    attempts: int,
    started: dt.datetime,
    at: dt.datetime,
    seed: tuple[str, ...],
) -> dt.datetime | None:
    """When attempt `attempts + 1` is due under a retry `policy`, or None when none is left."""
    kind = str(policy.get("type", "")).lower()
    if kind not in ("constant", "exponential", "random"):
        return None
    max_attempt = policy.get("maxAttempt", policy.get("maxAttempts"))
    if max_attempt is not None and attempts >= int(max_attempt):
        return None
    if max_attempt is None and policy.get("maxDuration") is None:
        return None
    if kind == "constant":
        delay = parse_duration(str(policy.get("interval", "PT1S")))
    elif kind == "exponential":
        base = parse_duration(str(policy.get("interval", "PT1S")))
        factor = float(policy.get("delayFactor", 2))
        delay = base * (factor ** (attempts - 1))
        if policy.get("maxInterval"):
            delay = min(delay, parse_duration(str(policy["maxInterval"])))
    else:
        low = parse_duration(str(policy.get("minInterval", "PT1S")))
        high = parse_duration(str(policy.get("maxInterval", policy.get("minInterval", "PT1S"))))
        # Pseudo-random but reproducible: derived from what is being retried.
        fraction = int(short_id(*seed, str(attempts))[:4], 36) % 1000 / 1000
        delay = low + (high - low) * fraction
    due = at + delay
    if policy.get("maxDuration") and due > started + parse_duration(str(policy["maxDuration"])):
        return None
    return due


def fold(events: Iterable[tuple[ev.Event, dt.datetime]]) -> Execution | None:
    """The state after every (event, at) in order."""
    state: Execution | None = None
    for event, at in events:
        state = evolve(state, event, at)
    return state


# --- decide ------------------------------------------------------------------------------------

MAX_ROUNDS = 10_000


def decide(state: Execution | None, event: ev.Event, at: dt.datetime) -> list[ev.Event]:
    """The events that follow once `event` (recorded at `at`) has been folded into `state`."""
    if state is None or state.terminal:
        return []
    decided: list[ev.Event] = []
    for _ in range(MAX_ROUNDS):
        if state.terminal:
            return decided
        step = _plan(state, at)
        if not step:
            return decided
        decided.extend(step)
        for new in step:
            state = evolve(state, new, at)
            assert state is not None
    raise RuntimeError(f"Execution {state.id}: the plan did not settle")  # pragma: no cover


class _Step(Exception):
    """Raised inside the resolver once a plan step has decided something."""


def _plan(state: Execution, at: dt.datetime) -> list[ev.Event]:
    if state.state == "CREATED":
        return [ev.ExecutionStateChanged(executionId=state.id, state="RUNNING")]
    resolver = _Resolver(state, at)
    if state.kill_requested:
        return resolver.kill()
    try:
        final = resolver.run_flow()
    except _Step:
        return resolver.out
    if final is None:
        return resolver.out
    if final == "FAILED" and state.retried_as is None:
        try:
            retried = resolver.retry_execution()
        except _Step:
            return resolver.out
        if retried is None:
            return []  # waiting for the retry's timer
    return [*resolver.out, resolver.finish(final)]


class _Resolver:
    """Walks the flow against the task runs and records the next events (the Navigator)."""

    def __init__(self, state: Execution, at: dt.datetime) -> None:
        self.state = state
        self.now = at
        self.flow = flow_of(state)
        self.out: list[ev.Event] = []
        self.current: TaskRun | None = None
        self.started = at
        self._children: dict[tuple[str | None, str, str | None, int | None], TaskRun] = {
            (r.parentTaskRunId, r.taskId, r.value, r.iteration): r for r in state.taskruns.values()
        }
        self._iteration: int | None = None
        self._final_outputs: dict[str, dict[str, Any]] = {}

    # navigator -----------------------------------------------------------------------------

    @property
    def value(self) -> str | None:
        return self.current.value if self.current else None

    def _inherit(self, value: str | None) -> str | None:
        # Children of a task inside a loop iteration belong to that iteration.
        return value if value is not None else self.value

    def sequence(
        self, tasks: Sequence[Task], *, value: str | None = None, iteration: int | None = None
    ) -> str | None:
        value = self._inherit(value)
        outer = self._iteration
        if iteration is not None:
            self._iteration = iteration
        try:
            warned = False
            for task in tasks:
                if task.disabled:
                    continue
                result = self._drive(task, value)
                if result is None:
                    return None
                if result in FAILED_STATES:
                    return result
                warned = warned or result == "WARNING"
            return "WARNING" if warned else "SUCCESS"
        finally:
            self._iteration = outer

    @property
    def own_outputs(self) -> dict[str, Any]:
        return dict(self.current.outputs or {}) if self.current else {}

    def parallel(
        self, tasks: Sequence[Task], *, limit: int = 0, value: str | None = None
    ) -> str | None:
        value = self._inherit(value)
        enabled = [t for t in tasks if not t.disabled]
        parent = self.current.id if self.current else None
        results: list[str | None] = []
        active = sum(
            1
            for t in enabled
            if (r := self._children.get((parent, t.id, value, self._iteration)))
            and r.state not in TERMINAL_STATES
        )
        failed = False
        for task in enabled:
            run = self._children.get((parent, task.id, value, self._iteration))
            if run is None:
                if failed or (limit and active >= limit):
                    results.append(None)
                    continue
                self._create(task, value)
                active += 1
                results.append(None)
                continue
            try:
                result = self._drive(task, value)
            except _Step:
                result = None
            results.append(result)
            failed = failed or result in FAILED_STATES
        if self.out:
            raise _Step
        return _combine(results)

    def iterate(
        self,
        tasks: Sequence[Task],
        values: Sequence[str],
        *,
        limit: int = 0,
        concurrent_tasks: bool = False,
    ) -> str | None:
        parent = self.current.id if self.current else None
        enabled = [t for t in tasks if not t.disabled]
        results: list[str | None] = []
        active, failed = 0, False
        for value in values:
            begun = any((parent, t.id, value, None) in self._children for t in enabled)
            if not begun and (failed or (limit and active >= limit)):
                results.append(None)
                continue
            try:
                if concurrent_tasks:
                    result = self.parallel(enabled, value=value)
                else:
                    result = self.sequence(enabled, value=value)
            except _Step:
                result = None
            if result is None:
                active += 1
            results.append(result)
            failed = failed or result in FAILED_STATES
        if self.out:
            raise _Step
        if failed and all(r is None or r in TERMINAL_STATES for r in results) and active == 0:
            return "KILLED" if "KILLED" in results else "FAILED"
        return _combine(results)

    def child_files(self) -> dict[str, str]:
        assert self.current is not None
        files: dict[str, str] = {}
        for run in self.state.taskruns.values():
            if run.parentTaskRunId == self.current.id:
                files.update(run.files)
        return files

    def peek(self, task: Task, *, value: str | None = None) -> str | None:
        parent = self.current.id if self.current else None
        run = self._children.get((parent, task.id, self._inherit(value), self._iteration))
        if run is None or run.state not in TERMINAL_STATES:
            return None
        return _effective(task, run.state)

    def outputs(self, values: dict[str, Any], *, final: bool = False) -> None:
        assert self.current is not None
        if final:
            self._final_outputs[self.current.id] = values
            return
        if self.current.outputs != values:
            self.out.append(
                ev.TaskRunStateChanged(
                    executionId=self.state.id,
                    taskRunId=self.current.id,
                    state=self.current.state,
                    outputs=values,
                )
            )
            # Its own step, so whatever runs next renders with these outputs.
            raise _Step

    def exit(self, state: str) -> None:
        assert self.current is not None
        for r in self.state.taskruns.values():
            if r.state not in TERMINAL_STATES and r.id != self.current.id:
                self.out.append(
                    ev.TaskRunStateChanged(
                        executionId=self.state.id, taskRunId=r.id, state="KILLED"
                    )
                )
        self.out.append(
            ev.TaskRunStateChanged(
                executionId=self.state.id, taskRunId=self.current.id, state=state
            )
        )
        self.out.append(ev.ExecutionStateChanged(executionId=self.state.id, state=state))
        raise _Step

    def set_labels(self, labels: dict[str, str]) -> None:
        merged = dict(self.state.labels)
        merged.update(labels)
        if merged != dict(self.state.labels):
            self.out.append(
                ev.ExecutionLabelsChanged(
                    executionId=self.state.id,
                    labels=[{"key": k, "value": v} for k, v in merged.items()],
                )
            )

    def pause(self) -> bool:
        assert self.current is not None
        if self.current.id in self.state.resumed:
            return True
        if self.current.state != "PAUSED":
            self.out.append(
                ev.TaskRunStateChanged(
                    executionId=self.state.id, taskRunId=self.current.id, state="PAUSED"
                )
            )
            if self.state.state != "PAUSED":
                self.out.append(ev.ExecutionStateChanged(executionId=self.state.id, state="PAUSED"))
            raise _Step
        return False

    def subflow(
        self,
        namespace: str,
        flow_id: str,
        *,
        inputs: dict[str, Any],
        labels: dict[str, str],
        revision: int | None = None,
        wait: bool = True,
    ) -> dict[str, Any] | None:
        assert self.current is not None
        run = self.current
        requested = self.state.subflows.get(run.id)
        if requested is None:
            self.out.append(
                ev.SubflowExecutionRequested(
                    executionId=self.state.id,
                    taskRunId=run.id,
                    childId=short_id(self.state.id, run.id, "subflow"),
                    namespace=namespace,
                    flowId=flow_id,
                    revision=revision,
                    inputs=inputs,
                    labels=[{"key": k, "value": v} for k, v in labels.items()],
                    wait=wait,
                )
            )
            raise _Step
        ended = self.state.subflow_outputs.get(run.id)
        if ended is not None:
            return ended
        if not wait:
            return {"executionId": requested[0]}
        return None

    def render(self, value: Any) -> Any:
        context = build_context(self.state, self.flow, self.current, self.now)
        context["now"] = self._now
        try:
            if isinstance(value, str):
                return templating.render_typed(value, context)
            return templating.render_value(value, context)
        except TemplateError:
            raise
        except TiercelError as exc:
            raise TemplateError(str(exc)) from exc

    def _now(self, *args: Any, **kwargs: Any) -> str:
        # Templates resolved by the executor see the event's time, never the wall clock.
        return iso(self.now)

    def sleep_until(self, fire_at: dt.datetime, *, key: str = "wait") -> bool:
        assert self.current is not None
        return self._timer(f"{self.current.id}:{key}", fire_at, self.current.id)

    def _timer(self, timer: str, fire_at: dt.datetime, run_id: str) -> bool:
        if timer in self.state.fired or fire_at <= self.now:
            return True
        if timer not in self.state.timers:
            self.out.append(
                ev.TimerScheduled(
                    executionId=self.state.id,
                    timerId=timer,
                    fireAt=fire_at.astimezone(dt.UTC).isoformat(),
                    taskRunId=run_id,
                )
            )
            raise _Step
        return False

    # walking -------------------------------------------------------------------------------

    def run_flow(self) -> str | None:
        main = self.sequence(self.flow.tasks)
        if main is None:
            return None
        final = main
        if main in FAILED_STATES and self.flow.errors:
            handled = self.sequence(self.flow.errors)
            if handled is None:
                return None
        if self.flow.finally_:
            if self.sequence(self.flow.finally_) is None:
                return None
        if self.flow.afterExecution:
            # Run once the outcome is known; they do not change it.
            if self.sequence(self.flow.afterExecution) is None:
                return None
        return final

    def _drive(self, task: Task, value: str | None) -> str | None:
        parent = self.current.id if self.current else None
        run = self._children.get((parent, task.id, value, self._iteration))
        if run is None:
            self._create(task, value)
            raise _Step
        if run.state in TERMINAL_STATES:
            return _effective(task, run.state)
        if isinstance(task, FlowableTask):
            outer, outer_started, outer_iteration = self.current, self.started, self._iteration
            self.current, self.started = run, _parse_iso(run.histories[0][1])
            self._iteration = run.restarts or None  # a retried flowable starts fresh children
            try:
                result = task.resolve(self)
                if result in FAILED_STATES and task.retry:
                    due = retry_after(
                        task.retry,
                        run.restarts + 1,
                        _parse_iso(run.histories[0][1]),
                        self.now,
                        (self.state.id, run.id),
                    )
                    if due is not None:
                        timer = f"retry:{run.id}:{run.restarts + 1}"
                        if self._timer(timer, due, run.id):
                            self.out.append(
                                ev.TaskRunRestarted(executionId=self.state.id, taskRunId=run.id)
                            )
                            raise _Step
                        return None
            except (TemplateError, TaskFailure) as exc:
                self._fail(run, str(exc))
                raise _Step from exc
            finally:
                self.current, self.started = outer, outer_started
                self._iteration = outer_iteration
            if result is not None:
                self.out.append(
                    ev.TaskRunStateChanged(
                        executionId=self.state.id,
                        taskRunId=run.id,
                        state=result,
                        outputs=self._final_outputs.pop(run.id, None),
                    )
                )
                raise _Step
            return None
        last = run.attempts[-1] if run.attempts else None
        if last is None or last.state == "KILLED":  # never scheduled, or its worker was lost
            self._schedule(task, run, len(run.attempts) + 1)
            raise _Step
        if last.state == "FAILED" and run.retryAt is not None:
            if self._timer(f"retry:{run.id}:{len(run.attempts)}", _parse_iso(run.retryAt), run.id):
                self._schedule(task, run, len(run.attempts) + 1)
                raise _Step
        return None

    def _create(self, task: Task, value: str | None) -> None:
        parent = self.current.id if self.current else None
        run_id = task_run_id(self.state.id, parent, task.id, value, self._iteration)
        created = ev.TaskRunCreated(
            executionId=self.state.id,
            taskRunId=run_id,
            taskId=task.id,
            parentTaskRunId=parent,
            value=value,
            iteration=self._iteration,
        )
        self.out.append(created)
        run = TaskRun(
            run_id,
            task.id,
            parent,
            value,
            "CREATED",
            (("CREATED", iso(self.now)),),
            iteration=self._iteration,
        )
        if task.runIf is not None:
            try:
                go = _truthy(self.render(task.runIf))
            except TemplateError as exc:
                self._fail(run, str(exc))
                return
            if not go:
                self.out.append(
                    ev.TaskRunStateChanged(
                        executionId=self.state.id, taskRunId=run_id, state="SKIPPED"
                    )
                )
                return
        if isinstance(task, FlowableTask):
            self.out.append(
                ev.TaskRunStateChanged(executionId=self.state.id, taskRunId=run_id, state="RUNNING")
            )
        elif isinstance(task, RunnableTask):
            self._schedule(task, run, 1)

    def _schedule(self, task: Task, run: TaskRun, attempt: int) -> None:
        context = build_context(self.state, self.flow, run, self.now, task)
        context["taskrun"]["attemptsCount"] = attempt  # the attempt being scheduled counts
        self.out.append(
            ev.AttemptScheduled(
                executionId=self.state.id,
                taskRunId=run.id,
                attempt=attempt,
                task=msgspec.to_builtins(task),
                context=context,
            )
        )

    def _fail(self, run: TaskRun, message: str) -> None:
        self.out.append(
            ev.TaskRunStateChanged(
                executionId=self.state.id, taskRunId=run.id, state="FAILED", message=message
            )
        )

    def kill(self) -> list[ev.Event]:
        out: list[ev.Event] = [
            ev.TaskRunStateChanged(executionId=self.state.id, taskRunId=r.id, state="KILLED")
            for r in self.state.taskruns.values()
            if r.state not in TERMINAL_STATES
        ]
        out.append(ev.ExecutionStateChanged(executionId=self.state.id, state="KILLED"))
        return out

    def retry_execution(self) -> bool | None:
        """For a failed execution under a CREATE_NEW_EXECUTION retry policy: record the retry
        once its interval has passed. False when there is nothing to retry, None while waiting."""
        policy = self.flow.retry if isinstance(self.flow.retry, dict) else None
        if not policy or str(policy.get("behavior", "")).upper() != "CREATE_NEW_EXECUTION":
            policy = None
            for run in self.state.taskruns.values():
                task = self.flow.find_task(run.taskId)
                candidate = task.retry if task is not None else None
                if (
                    run.state == "FAILED"
                    and isinstance(candidate, dict)
                    and str(candidate.get("behavior", "")).upper() == "CREATE_NEW_EXECUTION"
                ):
                    policy = candidate
                    break
        if policy is None:
            return False
        started = _parse_iso(self.state.start_date)
        due = retry_after(policy, self.state.attempt, started, self.now, (self.state.id,))
        if due is None:
            return False
        if not self._timer("retry-execution", due, ""):
            return None
        self.out.append(
            ev.ExecutionRetried(
                executionId=self.state.id,
                newExecutionId=short_id(
                    self.state.originalId or self.state.id, "try", str(self.state.attempt + 1)
                ),
                attempt=self.state.attempt + 1,
            )
        )
        return True

    def finish(self, final: str) -> ev.Event:
        outputs: dict[str, Any] = {}
        if final not in FAILED_STATES:
            for output in self.flow.outputs:
                try:
                    outputs[output.id_] = self.render(output.value)
                except TemplateError as exc:
                    final = "FAILED"
                    outputs = {"error": f"Output '{output.id_}': {exc}"}
                    break
        return ev.ExecutionStateChanged(
            executionId=self.state.id, state=final, outputs=outputs or None
        )


def _effective(task: Task, state: str) -> str:
    if state == "FAILED" and task.allowFailure:
        state = "WARNING"
    if state == "WARNING" and task.allowWarning:
        state = "SUCCESS"
    if state == "SKIPPED":
        return "SUCCESS"
    return state


def _combine(results: Sequence[str | None]) -> str | None:
    """The state of branches run side by side: None while any runs, else the worst."""
    if any(r is None for r in results):
        return None
    for worst in ("KILLED", "FAILED", "WARNING"):
        if worst in results:
            return worst
    return "SUCCESS"


def _truthy(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() not in ("", "false", "0", "null", "none")
    return bool(value)


def _parse_iso(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00"))


# --- render context ------------------------------------------------------------------------------


def _ancestors(state: Execution, run: TaskRun) -> list[TaskRun]:
    out = []
    parent_id = run.parentTaskRunId
    while parent_id:
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
    for parent in _ancestors(state, run):
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


def _labels_view(labels: tuple[tuple[str, str], ...]) -> dict[str, Any]:
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


def build_context(
    state: Execution,
    flow: Flow,
    run: TaskRun | None,
    now: dt.datetime,
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
        "labels": _labels_view(state.labels),
        "trigger": state.trigger or {},
    }
    if run is not None:
        context["taskrun"] = {
            "id": run.id,
            "startDate": run.histories[0][1],
            "parentId": run.parentTaskRunId,
            "value": run.value,
            "attemptsCount": len(run.attempts),
        }
        ancestors = _ancestors(state, run)
        if ancestors and getattr(flow.find_task(ancestors[0].taskId), "__items__", False):
            context["taskrun"]["items"] = run.value  # the batch file of a ForEachItem
        parents = [
            {"taskrun": {"id": a.id, "value": a.value, "taskId": a.taskId}}
            for a in ancestors
            if a.value is not None
        ]
        if parents:
            context["parents"] = parents
            context["parent"] = parents[0]
        for a in ancestors:
            if getattr(flow.find_task(a.taskId), "__working_directory__", False):
                wd_task = flow.find_task(a.taskId)
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


# --- replay ------------------------------------------------------------------------------------


class Recorded(msgspec.Struct, frozen=True):
    """A recorded event as the replay needs it."""

    seq: int
    event: ev.Event
    at: dt.datetime
    decided_by: int | None
    """The position of the event this one was decided for, when the executor wrote it."""


class Mismatch(msgspec.Struct, frozen=True):
    """A recorded decision that a replay does not make again."""

    cause: int
    recorded: list[str]
    replayed: list[str]


def replay(history: Sequence[Recorded], *, before: int | None = None) -> Execution | None:
    """The state an executor held just before handling position `before` (default: the end).

    Decided events are applied right after their cause, as the executor did when it decided
    them, wherever they landed in the log.
    """
    state, _ = _replay(history, before=before, check=False)
    return state


def as_of(history: Sequence[Recorded], seq: int) -> Execution | None:
    """The state as the log stood at position `seq`: every event up to it, in log order.

    Unlike `replay(before=...)`, decisions recorded after `seq` are left out even when their
    cause came before it. Decided events carry their cause's time, as in `replay`.
    """
    times = {r.seq: r.at for r in history}
    state: Execution | None = None
    for r in history:
        if r.seq > seq:
            break
        at = times.get(r.decided_by, r.at) if r.decided_by is not None else r.at
        state = evolve(state, r.event, at)
    return state


def verify(history: Sequence[Recorded]) -> tuple[Execution | None, list[Mismatch]]:
    """Refold `history` and decide again at every input event: the decisions must be the same."""
    return _replay(history, before=None, check=True)


def _replay(
    history: Sequence[Recorded], *, before: int | None, check: bool
) -> tuple[Execution | None, list[Mismatch]]:
    decided: dict[int, list[ev.Event]] = {}
    for r in history:
        if r.decided_by is not None:
            decided.setdefault(r.decided_by, []).append(r.event)
    state: Execution | None = None
    mismatches: list[Mismatch] = []
    for r in history:
        if r.decided_by is not None:
            continue
        if before is not None and r.seq >= before:
            break
        state = evolve(state, r.event, r.at)
        recorded = decided.get(r.seq, [])
        if check:
            again = decide(state, r.event, r.at)
            if again != recorded:
                mismatches.append(
                    Mismatch(
                        r.seq,
                        [ev.encode(e).decode() for e in recorded],
                        [ev.encode(e).decode() for e in again],
                    )
                )
        for new in recorded:
            state = evolve(state, new, r.at)
    return state, mismatches
