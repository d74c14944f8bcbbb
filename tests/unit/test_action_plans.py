"""What replay, restart and a change of state keep, run again and set aside, worked out from
an execution's state alone, and run on by the reducer as its own planner would."""

from __future__ import annotations

import msgspec

from engine import events as ev
from engine.execution import verify
from engine.execution.actions import force_plan, replayed_runs, restart_plan
from engine.execution.state import Execution
from engine.flow import flow_to_dict, parse_flow
from tests.unit.test_executor import Run

BRANCHES = """
id: f
namespace: n
tasks:
  - id: par
    type: io.kestra.plugin.core.flow.Parallel
    tasks:
      - id: A
        type: io.kestra.plugin.core.flow.Sequential
        tasks:
          - id: a1
            type: io.kestra.plugin.core.debug.Return
            format: a1
          - id: a2
            type: io.kestra.plugin.core.debug.Return
            format: a2
      - id: B
        type: io.kestra.plugin.core.flow.Sequential
        tasks:
          - id: b1
            type: io.kestra.plugin.core.debug.Return
            format: b1
          - id: b2
            type: io.kestra.plugin.core.debug.Return
            format: b2
  - id: last
    type: io.kestra.plugin.core.debug.Return
    format: last
errors:
  - id: handler
    type: io.kestra.plugin.core.debug.Return
    format: handled
"""


def _fail(task_id: str):  # type: ignore[no-untyped-def]
    def outcome(s: ev.AttemptScheduled) -> ev.Event | None:
        if s.taskId == task_id:
            ids = {"executionId": s.executionId, "taskRunId": s.taskRunId, "attempt": s.attempt}
            return ev.AttemptFailed(**ids, message="boom")
        return None

    return outcome


def _failed_b1() -> Run:
    run = Run(BRANCHES)
    run.work(_fail("b1"))
    assert run.state is not None and run.state.state == "FAILED"
    return run


def _ids(state: Execution, *task_ids: str) -> list[str]:
    return [r.id for r in state.taskruns.values() if r.taskId in task_ids]


class Replay(Run):
    """A `Run` of the replay of `state` from `from_run` (as `engine.commands` records it)."""

    def __init__(self, state: Execution, from_run: str | None) -> None:
        self.origin, self.from_run = state, from_run
        super().__init__(BRANCHES)

    def input(self, event: ev.Event) -> list[ev.Event]:
        if isinstance(event, ev.ExecutionCreated):
            kept = replayed_runs(self.origin, self.from_run, "exec2")
            event = ev.ExecutionCreated(
                executionId="exec2",
                namespace="n",
                flowId="f",
                flowRevision=1,
                flow=flow_to_dict(parse_flow(BRANCHES)),
                replayOf=self.origin.id,
                taskRuns=[msgspec.to_builtins(k) for k in kept],
            )
        return super().input(event)


def test_a_replay_keeps_a_branch_only_whole_and_reopens_the_ancestors() -> None:
    origin = _failed_b1().state
    assert origin is not None
    order = [r.taskId for r in origin.taskruns.values()]
    assert order.index("a2") > order.index("b1")  # a2 started after b1: A is half-done then
    [b1] = _ids(origin, "b1")
    kept = {k.taskId: k for k in replayed_runs(origin, b1, "exec2")}
    assert set(kept) == {"par", "B"}
    assert kept["par"].state == kept["B"].state == "RUNNING"

    replay = Replay(origin, b1)
    replay.work()
    state = replay.state
    assert state is not None and state.state == "SUCCESS"
    assert sorted(r.taskId for r in state.taskruns.values()) == sorted(
        ["par", "A", "a1", "a2", "B", "b1", "b2", "last"]
    )
    assert verify(replay.history)[1] == []


def test_a_replay_from_a_later_task_keeps_every_run_before_it_with_its_outputs() -> None:
    run = Run(BRANCHES)
    run.work(_fail("last"))
    origin = run.state
    assert origin is not None and origin.state == "FAILED"
    [last] = _ids(origin, "last")
    kept = replayed_runs(origin, last, "exec2")
    assert {k.taskId for k in kept} == {"par", "A", "a1", "a2", "B", "b1", "b2"}
    assert all(k.state == "SUCCESS" for k in kept)
    assert next(k for k in kept if k.taskId == "a1").outputs == {"value": "a1"}
    replay = Replay(origin, last)
    replay.work()
    assert replay.state is not None and replay.state.state == "SUCCESS"
    # Only `last` was scheduled in the replay.
    scheduled = [r.event for r in replay.history if isinstance(r.event, ev.AttemptScheduled)]
    assert [s.taskId for s in scheduled] == ["last"]


def test_a_replay_without_a_task_run_keeps_nothing() -> None:
    origin = _failed_b1().state
    assert origin is not None
    assert replayed_runs(origin, None, "exec2") == []


def test_a_restart_runs_the_deepest_failure_again_reopens_its_parents_and_sets_aside_errors() -> (
    None
):
    origin = _failed_b1().state
    assert origin is not None
    plan = restart_plan(origin)
    assert plan.run == _ids(origin, "b1")
    assert sorted(plan.reopened) == sorted(_ids(origin, "B", "par"))
    assert plan.removed == _ids(origin, "handler")


def test_a_forced_state_reopens_the_ended_ancestors_only() -> None:
    origin = _failed_b1().state
    assert origin is not None
    [b1] = _ids(origin, "b1")
    plan = force_plan(origin, b1)
    assert plan.run == [b1]
    assert sorted(plan.reopened) == sorted(_ids(origin, "B", "par"))
    assert plan.removed == _ids(origin, "handler")


def test_a_restart_folds_and_decides_the_same_when_replayed() -> None:
    run = _failed_b1()
    assert run.state is not None
    plan = restart_plan(run.state)
    run.input(
        ev.ExecutionRestarted(
            executionId="exec1", taskRunIds=plan.run, reopened=plan.reopened, removed=plan.removed
        )
    )
    run.work()
    state = run.state
    assert state is not None and state.state == "SUCCESS"
    assert [s for s, _ in state.histories][-3:] == ["RESTARTED", "RUNNING", "SUCCESS"]
    [b1] = [r for r in state.taskruns.values() if r.taskId == "b1"]
    assert [a.state for a in b1.attempts] == ["FAILED", "SUCCESS"]
    assert not _ids(state, "handler")
    assert verify(run.history)[1] == []
