"""The pure reducer: folding, deciding, and replaying to the same decisions."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable

import pytest

from engine import events as ev
from engine.execution import (
    Execution,
    Recorded,
    as_of,
    attempt_definition,
    decide,
    evolve,
    flow_of,
    verify,
)
from engine.flow import flow_to_dict, parse_flow

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


class Run:
    """Drives one execution through the reducer, acting as API, worker and timer service."""

    def __init__(self, source: str, inputs: dict | None = None) -> None:
        flow = parse_flow(source)
        self.history: list[Recorded] = []
        self.state: Execution | None = None
        self.clock = T0
        self.input(
            ev.ExecutionCreated(
                executionId="exec1",
                namespace=flow.namespace,
                flowId=flow.id,
                flowRevision=1,
                flow=flow_to_dict(flow),
                inputs=inputs or {},
            )
        )

    def input(self, event: ev.Event) -> list[ev.Event]:
        self.clock += dt.timedelta(milliseconds=10)
        seq = len(self.history) + 1
        self.history.append(Recorded(seq, event, self.clock, None))
        self.state = evolve(self.state, event, self.clock)
        decided = decide(self.state, event, self.clock)
        for i, new in enumerate(decided):
            self.history.append(Recorded(seq + 1 + i, new, self.clock, seq))
            self.state = evolve(self.state, new, self.clock)
        return decided

    def context(self, scheduled: ev.AttemptScheduled) -> dict:
        """The render context a worker builds for `scheduled` from the history up to it."""
        seq = next(r.seq for r in self.history if r.event is scheduled)
        state = as_of(self.history, seq)
        assert state is not None
        return attempt_definition(state, scheduled.taskRunId, scheduled.attempt)[1]

    def scheduled(self) -> list[ev.AttemptScheduled]:
        done = {
            (r.event.taskRunId, r.event.attempt)
            for r in self.history
            if isinstance(r.event, ev.AttemptClaimed)
        }
        return [
            r.event
            for r in self.history
            if isinstance(r.event, ev.AttemptScheduled)
            and (r.event.taskRunId, r.event.attempt) not in done
        ]

    def work(self, outcome: Callable[[ev.AttemptScheduled], ev.Event] | None = None) -> None:
        """Claim and finish every scheduled attempt, until none is left."""
        while pending := self.scheduled():
            for s in pending:
                ids = {"executionId": s.executionId, "taskRunId": s.taskRunId, "attempt": s.attempt}
                self.input(ev.AttemptClaimed(**ids, workerId="w1"))
                result = outcome(s) if outcome else None
                self.input(result or ev.AttemptSucceeded(**ids, outputs={"value": s.taskId}))

    def runs(self) -> dict[str, str]:
        assert self.state is not None
        return {r.taskId: r.state for r in self.state.taskruns.values()}


PARALLEL = """
id: par
namespace: test.unit
tasks:
  - id: parent
    type: io.kestra.plugin.core.flow.Parallel
    tasks:
      - id: a
        type: io.kestra.plugin.core.log.Log
        message: a
      - id: b
        type: io.kestra.plugin.core.log.Log
        message: b
  - id: last
    type: io.kestra.plugin.core.debug.Return
    format: "{{ outputs.a.value }}"
"""


def test_parallel_children_are_scheduled_together_and_flow_ends_in_success():
    run = Run(PARALLEL)
    assert sorted(s.taskId for s in run.scheduled()) == ["a", "b"]
    run.work()
    assert run.runs() == {"parent": "SUCCESS", "a": "SUCCESS", "b": "SUCCESS", "last": "SUCCESS"}
    assert run.state is not None and run.state.state == "SUCCESS"
    states = [s for s, _ in run.state.histories]
    assert states == ["CREATED", "RUNNING", "SUCCESS"]


def test_attempt_context_carries_outputs_of_earlier_tasks():
    run = Run(PARALLEL)
    contexts = {}

    def capture(s: ev.AttemptScheduled) -> None:
        contexts[s.taskId] = run.context(s)
        return None

    run.work(capture)
    assert contexts["last"]["outputs"]["a"] == {"value": "a"}
    assert contexts["last"]["flow"] == {"id": "par", "namespace": "test.unit", "revision": 1}
    assert contexts["last"]["taskrun"]["id"] in run.state.taskruns


SEQUENTIAL_WITH_ERRORS = """
id: seq
namespace: test.unit
tasks:
  - id: first
    type: io.kestra.plugin.core.debug.Return
    format: one
  - id: boom
    type: io.kestra.plugin.core.execution.Fail
  - id: never
    type: io.kestra.plugin.core.debug.Return
    format: never
errors:
  - id: handler
    type: io.kestra.plugin.core.log.Log
    message: handled
"""


def test_failure_stops_the_sequence_runs_errors_branch_and_fails_execution():
    run = Run(SEQUENTIAL_WITH_ERRORS)

    def outcome(s: ev.AttemptScheduled) -> ev.Event | None:
        if s.taskId == "boom":
            return ev.AttemptFailed(
                executionId=s.executionId, taskRunId=s.taskRunId, attempt=s.attempt, message="x"
            )
        return None

    run.work(outcome)
    assert run.runs() == {"first": "SUCCESS", "boom": "FAILED", "handler": "SUCCESS"}
    assert run.state is not None and run.state.state == "FAILED"


def test_allow_failure_turns_a_failed_task_into_warning_and_flow_goes_on():
    source = SEQUENTIAL_WITH_ERRORS.replace(
        "type: io.kestra.plugin.core.execution.Fail",
        "type: io.kestra.plugin.core.execution.Fail\n    allowFailure: true",
    )
    run = Run(source)
    run.work(
        lambda s: (
            ev.AttemptFailed(
                executionId=s.executionId, taskRunId=s.taskRunId, attempt=s.attempt, message="x"
            )
            if s.taskId == "boom"
            else None
        )
    )
    assert run.runs()["never"] == "SUCCESS"
    assert run.state is not None and run.state.state == "WARNING"


SLEEP = """
id: nap
namespace: test.unit
tasks:
  - id: nap
    type: io.kestra.plugin.core.flow.Sleep
    duration: PT5S
"""


def test_sleep_sets_a_timer_and_ends_only_when_it_fires():
    run = Run(SLEEP)
    timers = [r.event for r in run.history if isinstance(r.event, ev.TimerScheduled)]
    assert len(timers) == 1
    fire_at = dt.datetime.fromisoformat(timers[0].fireAt)
    assert fire_at - T0 == pytest.approx(dt.timedelta(seconds=5), abs=dt.timedelta(seconds=1))
    assert run.runs() == {"nap": "RUNNING"}
    run.input(ev.TimerFired(executionId="exec1", timerId=timers[0].timerId))
    assert run.runs() == {"nap": "SUCCESS"}
    assert run.state is not None and run.state.state == "SUCCESS"


def test_kill_marks_running_task_runs_and_execution_killed():
    run = Run(SLEEP)
    run.input(ev.ExecutionKillRequested(executionId="exec1"))
    assert run.runs() == {"nap": "KILLED"}
    assert run.state is not None and run.state.state == "KILLED"


def test_abandoned_attempt_is_scheduled_again_and_late_result_is_ignored():
    run = Run(PARALLEL)
    first = next(s for s in run.scheduled() if s.taskId == "a")
    ids = {"executionId": "exec1", "taskRunId": first.taskRunId}
    run.input(ev.AttemptClaimed(**ids, attempt=1, workerId="lost"))
    run.input(ev.AttemptAbandoned(**ids, attempt=1, reason="worker lost"))
    again = [s for s in run.scheduled() if s.taskRunId == first.taskRunId]
    assert [s.attempt for s in again] == [2]
    run.input(ev.AttemptSucceeded(**ids, attempt=1, outputs={"value": "stale"}))
    assert run.state is not None
    assert run.state.taskruns[first.taskRunId].state == "RUNNING"
    assert run.state.taskruns[first.taskRunId].outputs is None
    run.work()
    assert run.state.taskruns[first.taskRunId].outputs == {"value": "a"}
    assert [a.state for a in run.state.taskruns[first.taskRunId].attempts] == ["KILLED", "SUCCESS"]


def test_disabled_task_is_skipped_entirely():
    source = PARALLEL.replace("message: b", "message: b\n        disabled: true")
    run = Run(source)
    run.work()
    assert "b" not in run.runs()
    assert run.state is not None and run.state.state == "SUCCESS"


def test_flow_outputs_are_rendered_when_the_execution_succeeds():
    source = (
        PARALLEL
        + 'outputs:\n  - id: result\n    type: STRING\n    value: "{{ outputs.last.value }}"\n'
    )
    run = Run(source)
    run.work()
    assert run.state is not None and run.state.outputs == {"result": "last"}


@pytest.mark.parametrize("source", [PARALLEL, SEQUENTIAL_WITH_ERRORS, SLEEP])
def test_refolding_a_recorded_history_gives_same_state_and_decisions(source: str):
    run = Run(source)
    run.work()
    if run.state is not None and not run.state.terminal:
        timer = next(r.event for r in run.history if isinstance(r.event, ev.TimerScheduled))
        run.input(ev.TimerFired(executionId="exec1", timerId=timer.timerId))
    state, mismatches = verify(run.history)
    assert mismatches == []
    assert state == run.state


def test_decide_is_idempotent_once_decisions_are_applied():
    run = Run(PARALLEL)
    assert run.state is not None
    last = run.history[-1]
    assert decide(run.state, last.event, last.at) == []


def test_flow_of_parses_the_pinned_definition_once():
    run = Run(PARALLEL)
    assert run.state is not None
    assert flow_of(run.state) is flow_of(run.state)


FOREACH_LIMIT = """
id: each
namespace: test.unit
tasks:
  - id: loop
    type: io.kestra.plugin.core.flow.ForEach
    values: ["a", "b", "c", "d", "e"]
    concurrencyLimit: 2
    tasks:
      - id: one
        type: io.kestra.plugin.core.debug.Return
        format: "{{ taskrun.value }}"
      - id: two
        type: io.kestra.plugin.core.debug.Return
        format: "{{ outputs.one[taskrun.value].value }}!"
"""


def test_foreach_never_runs_more_iterations_than_its_limit() -> None:
    run = Run(FOREACH_LIMIT)
    most = 0
    while pending := run.scheduled():
        most = max(most, len({run.context(s)["taskrun"]["value"] for s in pending}))
        s = pending[0]
        ids = {"executionId": s.executionId, "taskRunId": s.taskRunId, "attempt": s.attempt}
        run.input(ev.AttemptClaimed(**ids, workerId="w1"))
        run.input(ev.AttemptSucceeded(**ids, outputs={"value": s.taskId}))
    assert most == 2
    assert run.state is not None and run.state.state == "SUCCESS"
    assert len(run.state.taskruns) == 1 + 5 * 2
    assert verify(run.history)[1] == []


DAG = """
id: dag
namespace: test.unit
tasks:
  - id: graph
    type: io.kestra.plugin.core.flow.Dag
    tasks:
      - task: {id: c, type: io.kestra.plugin.core.debug.Return, format: c}
        dependsOn: [a, b]
      - task: {id: a, type: io.kestra.plugin.core.debug.Return, format: a}
      - task: {id: b, type: io.kestra.plugin.core.debug.Return, format: b}
        dependsOn: [a]
"""


def test_dag_starts_each_task_only_after_its_dependencies() -> None:
    run = Run(DAG)
    order: list[str] = []
    while pending := run.scheduled():
        assert len(pending) == 1  # this graph is a chain: a, then b, then c
        s = pending[0]
        order.append(s.taskId)
        ids = {"executionId": s.executionId, "taskRunId": s.taskRunId, "attempt": s.attempt}
        run.input(ev.AttemptClaimed(**ids, workerId="w1"))
        run.input(ev.AttemptSucceeded(**ids))
    assert order == ["a", "b", "c"]
    assert run.state is not None and run.state.state == "SUCCESS"


def test_a_dependency_cycle_is_rejected() -> None:
    from engine.errors import FlowValidationError

    cyclic = DAG.replace("dependsOn: [a]\n", "dependsOn: [c]\n")
    with pytest.raises(FlowValidationError, match="Cyclic dependency"):
        parse_flow(cyclic)
