"""The planner: `decide` says which events follow once an event has been folded.

Every policy lives here and is recorded as events: what runs next, when a retry is due and
whether a retried success is a WARNING, what a kill or a resume does. `decide` is
level-triggered: it plans from the whole state until nothing more follows, so handling an
event twice, or after a restart, decides the same thing. It never raises: a template that
fails fails its task run, naming the expression; anything else that goes wrong while planning
fails the execution with the reason, recorded as an event.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

from engine import events as ev
from engine import templating
from engine.duration import parse_duration
from engine.errors import TemplateError
from engine.execution.context import build_context
from engine.execution.ids import iso, parse_iso, short_id, task_run_id
from engine.execution.retry import creates_new_execution, retry_after, retry_policy
from engine.execution.state import Execution, TaskRun, evolve, flow_of
from engine.plugin import (
    FAILED_STATES,
    TERMINAL_STATES,
    FlowableTask,
    RunnableTask,
    Task,
    TaskFailure,
)

MAX_ROUNDS = 10_000


def decide(state: Execution | None, event: ev.Event, at: dt.datetime) -> list[ev.Event]:
    """The events that follow once `event` (recorded at `at`) has been folded into `state`."""
    if state is None or state.terminal:
        return []
    decided: list[ev.Event] = []
    current: Execution = state
    try:
        for _ in range(MAX_ROUNDS):
            if current.terminal:
                return decided
            step = _plan(current, at)
            if not step:
                return decided
            decided.extend(step)
            for new in step:
                current = evolve(current, new, at) or current
        raise RuntimeError(f"the plan did not settle after {MAX_ROUNDS} steps")
    except Exception as exc:  # noqa: BLE001 - a bug fails this execution, never the executor
        reason = (
            f"Tiercel could not plan this execution ({type(exc).__name__}: {exc}); it was "
            "failed so that nothing else is held up. Its history is at "
            f"/api/v1/executions/{state.id}/events: please report it with that history."
        )
        return [*decided, *fail_execution(current, reason)]


def fail_execution(state: Execution, reason: str) -> list[ev.Event]:
    """Fail every unfinished task run and the execution itself, saying why."""
    out: list[ev.Event] = [
        ev.TaskRunStateChanged(executionId=state.id, taskRunId=r.id, state="FAILED")
        for r in state.taskruns.values()
        if r.state not in TERMINAL_STATES
    ]
    out.append(ev.ExecutionStateChanged(executionId=state.id, state="FAILED", message=reason))
    return out


def _admission(state: Execution) -> list[ev.Event] | None:
    """What an execution of a flow with a concurrency limit does before it holds a slot
    (None: its flow sets no limit). The slot is given by the flow's ledger
    (`engine.execution.concurrency`) and recorded here as an input event."""
    if not state.limited:
        return None
    if state.kill_requested:
        return [ev.ExecutionStateChanged(executionId=state.id, state="KILLED")]
    if state.admission == "QUEUE" and state.state == "CREATED":
        return [ev.ExecutionStateChanged(executionId=state.id, state="QUEUED")]
    if state.admission in ("CANCEL", "FAIL"):
        return [
            ev.ExecutionStateChanged(
                executionId=state.id,
                state="CANCELLED" if state.admission == "CANCEL" else "FAILED",
                message=state.admission_message,
            )
        ]
    return []  # waiting for the ledger to say


class _Step(BaseException):  # noqa: N818 - control flow, not an error
    """Raised inside the resolver once a plan step has decided something.

    A BaseException so that a flowable task's own `except Exception` cannot swallow it.
    """


def _plan(state: Execution, at: dt.datetime) -> list[ev.Event]:
    if state.broken:
        return fail_execution(state, state.broken)
    if state.state in ("CREATED", "QUEUED") and state.admission != "granted":
        waiting = _admission(state)
        if waiting is not None:
            return waiting
    if state.state in ("CREATED", "QUEUED"):
        return [ev.ExecutionStateChanged(executionId=state.id, state="RUNNING")]
    if state.restarting:  # an ended execution run again by hand
        return [ev.ExecutionStateChanged(executionId=state.id, state="RESTARTED")]
    if state.state == "RESTARTED":  # it goes on from where it ended
        return [ev.ExecutionStateChanged(executionId=state.id, state="RUNNING")]
    resolver = _Resolver(state, at)
    if state.kill_requested:
        return resolver.kill()
    if state.hold == "pause":
        # Paused by hand: nothing starts, nothing is decided (what ends meanwhile is taken
        # into account when it is resumed, since the plan is made from the whole state).
        if state.state != "PAUSED":
            return [ev.ExecutionStateChanged(executionId=state.id, state="PAUSED")]
        return []
    if state.hold == "resume" and state.state == "PAUSED":
        return [ev.ExecutionStateChanged(executionId=state.id, state="RUNNING")]
    if state.resume_inputs is not None:
        resumed = resolver.resume(state.resume_inputs)
        if resumed:
            return resumed
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
                    childId=short_id(self.state.id, run.id, "subflow")
                    if not run.reruns  # run again by hand: a new child
                    else short_id(self.state.id, run.id, "subflow", str(run.reruns)),
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
        context = build_context(self.state, self.flow, self.current)
        context["now"] = self._now
        try:
            if isinstance(value, str):
                return templating.render_typed(value, context)
            return templating.render_value(value, context)
        except TemplateError:
            raise
        except Exception as exc:  # noqa: BLE001 - any failure of an expression fails its run
            text = value if isinstance(value, str) else repr(value)
            shown = text if len(text) <= 200 else text[:200] + "..."
            raise TemplateError(f"Expression {shown!r} failed: {_reason(exc)}") from exc

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
            self.current, self.started = run, parse_iso(run.histories[0][1])
            self._iteration = run.restarts or None  # a retried flowable starts fresh children
            try:
                result = task.resolve(self)
                if result in FAILED_STATES and task.retry:
                    due = retry_after(
                        task.retry,
                        run.restarts + 1,
                        parse_iso(run.histories[0][1]),
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
            except Exception as exc:  # noqa: BLE001 - a bad value fails this task run only
                self._fail(run, f"Task '{run.taskId}' could not be resolved: {_reason(exc)}")
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
        if run.state == "RESTARTED" and last is not None and last.state in TERMINAL_STATES:
            self._schedule(task, run, len(run.attempts) + 1)  # restarted by hand
            raise _Step
        if last is None or last.state == "KILLED":  # never scheduled, or its worker was lost
            self._schedule(task, run, len(run.attempts) + 1)
            raise _Step
        if last.state in ("SUCCESS", "WARNING", "FAILED"):
            self._timeout_over(run)
        if last.state in ("SUCCESS", "WARNING"):
            self._succeeded(task, run, last.state)
        if last.state == "FAILED":
            self._failed_attempt(task, run)
        if last.state in ("CREATED", "RUNNING") and task.timeout:
            self._time_out(task, run)
        return None

    def _time_out(self, task: Task, run: TaskRun) -> None:
        """Set the timer of the task's `timeout`: when it fires, the timer service fails the
        attempt then current, in the attempt's own stream, unless it ended first (the stream's
        version decides which end is recorded). The deadline thus holds whatever happens to
        the worker, and across a restart of every process. A live worker stops the task at the
        deadline itself and records its logs and the failure; the timer, `TIMEOUT_GRACE`
        later, is for the attempt whose worker could not.

        The time counts from the claim of the attempt, as recorded. An attempt run again
        because its worker was lost (the one before it ended KILLED) goes on with the time of
        the attempt it replaces: a task that outlives its workers does not get a fresh timeout
        with each of them. A retry after a failure starts a new count, as in Kestra.
        """
        if self.state.rules < 1:
            return  # created before timeouts had timers: its worker alone counted the time
        start = _timeout_start(run)
        if start is None:
            return  # not claimed yet: the time has not started
        first, claimed = start
        try:
            limit = self.render(task.timeout) if "{{" in str(task.timeout) else task.timeout
            duration = parse_duration(str(limit))
        except (ValueError, TemplateError):
            return  # the worker fails the attempt, saying why
        timer = timeout_timer(run.id, first, str(limit))
        if timer in self.state.timers:
            return
        # Recorded even when the deadline has passed (a claim after it): the timer fires at once.
        self.out.append(
            ev.TimerScheduled(
                executionId=self.state.id,
                timerId=timer,
                fireAt=(parse_iso(claimed) + duration + TIMEOUT_GRACE)
                .astimezone(dt.UTC)
                .isoformat(),
                taskRunId=run.id,
            )
        )
        raise _Step

    def _timeout_over(self, run: TaskRun) -> None:
        """The attempt ended: its timeout's timer, if still pending, has nothing left to do.
        Saying so has the timer service drop it now rather than at its time (a task that ends
        in a second would otherwise keep an hour's timeout pending for the hour)."""
        prefix = f"{TIMEOUT_PREFIX}{run.id}:"
        pending = sorted(t for t in self.state.timers if t.startswith(prefix))
        pending = [t for t in pending if t not in self.state.fired]
        if not pending:
            return
        self.out.extend(
            ev.TimerFired(executionId=self.state.id, timerId=t, attemptEnded=True) for t in pending
        )
        raise _Step

    def _succeeded(self, task: Task, run: TaskRun, state: str) -> None:
        """The attempt succeeded: so does the run, as a WARNING when it took retries and the
        policy says so."""
        if state == "SUCCESS" and len(run.attempts) > 1:
            if retry_policy(self.flow, task.id).get("warningOnRetry"):
                state = "WARNING"
        self.out.append(
            ev.TaskRunStateChanged(executionId=self.state.id, taskRunId=run.id, state=state)
        )
        raise _Step

    def _failed_attempt(self, task: Task, run: TaskRun) -> None:
        """The attempt failed: retry it when the policy allows (after its interval, which a
        timer records), else fail the run."""
        attempts = len(run.attempts)
        timer = f"retry:{run.id}:{attempts}"
        if timer in self.state.fired:
            self._schedule(task, run, attempts + 1)
            raise _Step
        if timer in self.state.timers:
            return  # waiting for the retry's interval
        policy = retry_policy(self.flow, task.id)
        message = run.message
        due: dt.datetime | None = None
        if not creates_new_execution(policy):
            try:
                policy = {
                    k: self.render(v) if isinstance(v, str) and "{{" in v else v
                    for k, v in policy.items()
                }
                due = retry_after(
                    policy,
                    attempts,
                    parse_iso(run.histories[0][1]),
                    self.now,
                    (self.state.id, run.id),
                )
            except (ValueError, TemplateError) as exc:
                message = f"{message}; it cannot be retried: {exc}" if message else str(exc)
        if due is None:
            self.out.append(
                ev.TaskRunStateChanged(
                    executionId=self.state.id, taskRunId=run.id, state="FAILED", message=message
                )
            )
            raise _Step
        if self._timer(timer, due, run.id):
            self._schedule(task, run, attempts + 1)
            raise _Step

    def resume(self, inputs: dict[str, Any]) -> list[ev.Event]:
        """Carry out a resume request: paused runs go on (with the values given), and so does
        the execution."""
        for r in self.state.taskruns.values():
            if r.state == "PAUSED" and r.id in self.state.resume_runs:
                outputs = {**(r.outputs or {}), "onResume": inputs} if inputs else None
                self.out.append(
                    ev.TaskRunStateChanged(
                        executionId=self.state.id, taskRunId=r.id, state="RUNNING", outputs=outputs
                    )
                )
        if self.state.state == "PAUSED":
            self.out.append(ev.ExecutionStateChanged(executionId=self.state.id, state="RUNNING"))
        return self.out

    def _create(self, task: Task, value: str | None) -> None:
        parent = self.current.id if self.current else None
        # Task runs created after the execution was run again by hand (a restart) have ids of
        # their own, distinct from those of the runs it set aside.
        generation = self.state.generation
        execution = self.state.id if not generation else f"{self.state.id}/{generation}"
        run_id = task_run_id(execution, parent, task.id, value, self._iteration)
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
        # Only the attempt's name: the worker reads the rest from the history up to here.
        self.out.append(
            ev.AttemptScheduled(
                executionId=self.state.id,
                taskRunId=run.id,
                attempt=attempt,
                taskId=task.id,
                taskType=task.type,
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
        started = parse_iso(self.state.start_date)
        try:
            due = retry_after(policy, self.state.attempt, started, self.now, (self.state.id,))
        except ValueError:
            return False  # a malformed policy retries nothing; the run's failure says why
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
        message = None
        if final not in FAILED_STATES:
            for output in self.flow.outputs:
                try:
                    outputs[output.id_] = self.render(output.value)
                except TemplateError as exc:
                    final, outputs = "FAILED", {}
                    message = f"Flow output '{output.id_}' could not be rendered: {exc}"
                    break
        return ev.ExecutionStateChanged(
            executionId=self.state.id, state=final, outputs=outputs or None, message=message
        )


TIMEOUT_PREFIX = "timeout:"
RULES = 1
"""The edition of the decision rules new executions are created under (recorded in
`ExecutionCreated.rules`). 1: a task's `timeout` is a timer (before, only its worker counted it).
Raise it with each change of a rule that would decide a recorded history differently."""

TIMEOUT_GRACE = dt.timedelta(seconds=1)
"""How long after a task's timeout its timer fires: enough for a live worker, which counts
the timeout from its claim too, to stop the task and record its last logs first."""


def timeout_timer(run_id: str, first: int, limit: str) -> str:
    """The id of the timer of a task run's `timeout`: the run, the attempt the time counts
    from and the limit as written (for the failure's message), read back by `parse_timeout_timer`."""
    return f"{TIMEOUT_PREFIX}{run_id}:{first}:{limit[:64]}"


def parse_timeout_timer(timer_id: str) -> tuple[str, int, str] | None:
    """(run id, first attempt, limit) of a timeout timer's id; None for any other timer."""
    if not timer_id.startswith(TIMEOUT_PREFIX):
        return None
    parts = timer_id[len(TIMEOUT_PREFIX) :].split(":", 2)
    if len(parts) != 3 or not parts[1].isdigit():
        return None
    return parts[0], int(parts[1]), parts[2]


def _timeout_start(run: TaskRun) -> tuple[int, str] | None:
    """The attempt the current one's timeout counts from, and when it was claimed: the first
    claimed attempt since the last one that ended otherwise than KILLED (a lost worker's)."""
    first = len(run.attempts)
    while first > 1 and run.attempts[first - 2].state == "KILLED":
        first -= 1
    for number in range(first, len(run.attempts) + 1):
        claimed = next(
            (at for state, at in run.attempts[number - 1].histories if state == "RUNNING"), None
        )
        if claimed is not None:
            return number, claimed
    return None


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


def _reason(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
