"""The decider is total: bad values fail their task run or execution, saying why, and never
raise; every policy outcome is an event; the fold does not depend on how reports interleave."""

from __future__ import annotations

import datetime as dt
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine import events as ev
from engine.execution import (
    Recorded,
    comparable,
    decide,
    evolve,
    planner,
    verify,
)
from engine.flow import flow_to_dict, parse_flow
from tests.unit.test_executor import Run

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def _flow(body: str, extra: str = "") -> str:
    return f"id: f\nnamespace: test.unit\n{extra}tasks:\n{body}"


def _fail_attempts(run: Run) -> None:
    def fail(s: ev.AttemptScheduled) -> ev.Event:
        return ev.AttemptFailed(
            executionId=s.executionId, taskRunId=s.taskRunId, attempt=s.attempt, message="boom"
        )

    run.work(fail)


def test_a_retry_interval_that_is_no_duration_fails_the_run_with_the_reason() -> None:
    # A templated interval passes validation and is only known to be bad at run time.
    run = Run(
        _flow(
            "  - id: t\n    type: io.kestra.plugin.core.log.Log\n    message: hi\n"
            "    retry:\n      type: constant\n      interval: \"{{ 'soon' }}\"\n"
            "      maxAttempt: 3\n"
        )
    )
    _fail_attempts(run)
    assert run.state is not None and run.state.state == "FAILED"
    [task_run] = run.state.taskruns.values()
    assert task_run.state == "FAILED"
    assert "boom" in (task_run.message or "") and "interval" in (task_run.message or "")
    assert verify(run.history)[1] == []


def test_a_recorded_flow_this_version_cannot_read_fails_the_execution_saying_why() -> None:
    created = ev.ExecutionCreated(
        executionId="x1",
        namespace="test.unit",
        flowId="f",
        flowRevision=1,
        flow={"id": "f", "namespace": "test.unit", "tasks": [{"id": "t", "type": "no.Such"}]},
    )
    state = evolve(None, created, T0)
    assert state is not None and state.broken
    decided = decide(state, created, T0)
    final = decided[-1]
    assert isinstance(final, ev.ExecutionStateChanged) and final.state == "FAILED"
    assert final.message and "cannot be read" in final.message


def test_a_sandbox_violation_in_run_if_fails_that_task_run_naming_the_expression() -> None:
    run = Run(
        _flow(
            "  - id: t\n    type: io.kestra.plugin.core.log.Log\n    message: hi\n"
            "    runIf: \"{{ ''.__class__.__mro__ }}\"\n"
        )
    )
    assert run.state is not None and run.state.state == "FAILED"
    [task_run] = run.state.taskruns.values()
    assert task_run.state == "FAILED"
    assert "__class__" in (task_run.message or "")
    assert verify(run.history)[1] == []


def test_a_bug_while_planning_fails_only_that_execution(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*_: Any, **__: Any) -> Any:
        raise ZeroDivisionError("division by zero")

    run = Run(_flow("  - id: t\n    type: io.kestra.plugin.core.log.Log\n    message: hi\n"))
    monkeypatch.setattr(planner._Resolver, "run_flow", broken)
    # The next fact about the execution meets the bug: decide does not raise.
    [s] = run.scheduled()
    ids = {"executionId": s.executionId, "taskRunId": s.taskRunId, "attempt": s.attempt}
    decided = run.input(ev.AttemptClaimed(**ids, workerId="w1"))
    assert run.state is not None and run.state.state == "FAILED"
    assert isinstance(decided[-1], ev.ExecutionStateChanged)
    assert "ZeroDivisionError" in (decided[-1].message or "")


def test_evolve_never_raises_on_facts_that_do_not_apply() -> None:
    run = Run(_flow("  - id: t\n    type: io.kestra.plugin.core.log.Log\n    message: hi\n"))
    state = run.state
    odd: list[ev.Event] = [
        ev.AttemptSucceeded(executionId="exec1", taskRunId="nope", attempt=7),
        ev.AttemptFailed(executionId="exec1", taskRunId="nope", attempt=0, message=""),
        ev.TaskRunStateChanged(executionId="exec1", taskRunId="nope", state="SUCCESS"),
        ev.ExecutionLabelsChanged(executionId="exec1", labels=[{"no": "key"}]),
        ev.ExecutionResumeRequested(executionId="exec1"),
        ev.TimerFired(executionId="exec1", timerId="never-scheduled"),
    ]
    for event in odd:
        state = evolve(state, event, T0)
        assert state is not None
        decide(state, event, T0)


def test_warning_on_retry_is_a_recorded_decision() -> None:
    run = Run(
        _flow(
            "  - id: t\n    type: io.kestra.plugin.core.log.Log\n    message: hi\n"
            "    retry:\n      type: constant\n      interval: PT0S\n      maxAttempt: 3\n"
            "      warningOnRetry: true\n"
        )
    )
    first = True

    def outcome(s: ev.AttemptScheduled) -> ev.Event | None:
        nonlocal first
        if first:
            first = False
            return ev.AttemptFailed(
                executionId=s.executionId, taskRunId=s.taskRunId, attempt=1, message="flaky"
            )
        return None

    run.work(outcome)
    assert run.state is not None and run.state.state == "WARNING"
    warned = [
        r.event
        for r in run.history
        if isinstance(r.event, ev.TaskRunStateChanged) and r.event.state == "WARNING"
    ]
    assert warned and all(r.decided_by is not None for r in run.history if r.event in warned)


PARALLEL = _flow(
    "  - id: p\n    type: io.kestra.plugin.core.flow.Parallel\n    tasks:\n"
    + "".join(
        f"      - id: t{i}\n        type: io.kestra.plugin.core.debug.Return\n"
        f"        format: v{i}\n"
        for i in range(4)
    )
    + "  - id: last\n    type: io.kestra.plugin.core.debug.Return\n"
    '    format: "{{ outputs.t0.value }}"\n'
)


def _drive(order: list[int], fail: set[int]) -> dict[str, Any] | None:
    """Run PARALLEL, the worker reports arriving in the order drawn (all at one instant, so
    only the interleaving differs). Each attempt's own reports keep their order, as they do in
    its stream (a claim precedes its result); reports of different attempts interleave."""
    flow = parse_flow(PARALLEL)
    created = ev.ExecutionCreated(
        executionId="x",
        namespace="test.unit",
        flowId="f",
        flowRevision=1,
        flow=flow_to_dict(flow),
    )
    state = None
    pending: list[ev.Event] = [created]
    streams: list[list[ev.Event]] = []
    draws = iter(order)
    while pending or streams:
        if pending:
            event = pending.pop(0)
        else:
            stream = streams[next(draws, 0) % len(streams)]
            event = stream.pop(0)
            if not stream:
                streams.remove(stream)
        state = evolve(state, event, T0)
        for new in decide(state, event, T0):
            state = evolve(state, new, T0)
            if isinstance(new, ev.AttemptScheduled):
                ids = {"executionId": "x", "taskRunId": new.taskRunId, "attempt": new.attempt}
                n = int(new.taskId[1:]) if new.taskId.startswith("t") else -1
                result: ev.Event = (
                    ev.AttemptFailed(**ids, message="no")
                    if n in fail
                    else ev.AttemptSucceeded(**ids, outputs={"value": new.taskId})
                )
                streams.append([ev.AttemptClaimed(**ids, workerId="w"), result])
    return comparable(state)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.integers(min_value=0, max_value=50), max_size=40),
    st.frozensets(st.integers(min_value=0, max_value=3), max_size=2),
)
def test_the_fold_and_decisions_do_not_depend_on_how_worker_reports_interleave(
    order: list[int], fail: frozenset[int]
) -> None:
    assert _drive(order, set(fail)) == _drive([], set(fail))


def test_verify_names_the_first_event_whose_decisions_differ() -> None:
    run = Run(_flow("  - id: t\n    type: io.kestra.plugin.core.log.Log\n    message: hi\n"))
    run.work()
    history = list(run.history)
    # Tamper with one recorded decision: a different task run state.
    index = next(
        i
        for i, r in enumerate(history)
        if r.decided_by is not None and isinstance(r.event, ev.TaskRunStateChanged)
    )
    r = history[index]
    forged = msgspec.structs.replace(r.event, state="WARNING")
    history[index] = Recorded(r.seq, forged, r.at, r.decided_by)
    _, mismatches = verify(history)
    assert mismatches and mismatches[0].cause == r.decided_by
    assert any("WARNING" in line for line in mismatches[0].recorded)


def test_a_second_resume_made_for_the_same_pause_does_not_pass_the_next_one() -> None:
    gates = "".join(f"  - id: g{i}\n    type: io.kestra.plugin.core.flow.Pause\n" for i in (1, 2))
    run = Run(_flow(gates))
    assert run.state is not None and run.state.state == "PAUSED"
    [g1] = [r.id for r in run.state.taskruns.values() if r.state == "PAUSED"]
    # Two requests were made while g1 was paused; the second is handled after the first
    # let the execution go on and pause again at g2.
    request = ev.ExecutionResumeRequested(executionId="exec1", taskRunIds=[g1])
    run.input(request)
    assert {r.taskId: r.state for r in run.state.taskruns.values()}["g2"] == "PAUSED"
    run.input(request)
    state = run.state
    runs = {r.taskId: r.state for r in state.taskruns.values()}
    assert runs == {"g1": "SUCCESS", "g2": "PAUSED"}
    assert state.state == "PAUSED"


def test_a_retry_interval_too_long_to_schedule_fails_the_run_with_a_clear_message() -> None:
    run = Run(
        _flow(
            "  - id: t\n    type: io.kestra.plugin.core.log.Log\n    message: hi\n"
            "    retry:\n      type: constant\n      interval: \"{{ 'P99999999999D' }}\"\n"
            "      maxAttempt: 3\n"
        )
    )
    _fail_attempts(run)
    assert run.state is not None and run.state.state == "FAILED"
    assert run.state.message is None  # not the "please report it" path
    [task_run] = run.state.taskruns.values()
    assert "too long" in (task_run.message or "")
