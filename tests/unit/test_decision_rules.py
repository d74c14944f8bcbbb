"""Editions of the decision rules: an execution is decided by the rules it was created under, so
histories recorded before a rule changed still replay as they were decided."""

from __future__ import annotations

from engine import events as ev
from engine.execution import verify
from engine.execution.planner import RULES
from engine.flow import flow_to_dict, parse_flow
from tests.unit.test_executor import Run

SLOW = (
    "id: f\nnamespace: n\ntasks:\n"
    "  - id: t\n    type: io.kestra.plugin.core.debug.Return\n    format: x\n    timeout: PT10S\n"
)


class RulesRun(Run):
    """A `Run` whose execution was created under `rules`."""

    def __init__(self, source: str, rules: int) -> None:
        self.rules = rules
        super().__init__(source)

    def input(self, event: ev.Event) -> list[ev.Event]:
        if isinstance(event, ev.ExecutionCreated):
            flow = parse_flow(SLOW)
            event = ev.ExecutionCreated(
                executionId="exec1",
                namespace=flow.namespace,
                flowId=flow.id,
                flowRevision=1,
                flow=flow_to_dict(flow),
                rules=self.rules,
            )
        return super().input(event)


def _claim(run: Run) -> list[ev.Event]:
    [scheduled] = run.scheduled()
    return run.input(
        ev.AttemptClaimed(
            executionId="exec1", taskRunId=scheduled.taskRunId, attempt=1, workerId="w1"
        )
    )


def test_a_task_timeout_is_a_timer_under_the_current_rules() -> None:
    run = RulesRun(SLOW, RULES)
    decided = _claim(run)
    assert [type(d) for d in decided] == [ev.TimerScheduled]
    assert verify(run.history)[1] == []


def test_an_execution_created_before_timeout_timers_is_decided_as_it_was() -> None:
    run = RulesRun(SLOW, 0)
    assert _claim(run) == []
    assert verify(run.history)[1] == []
