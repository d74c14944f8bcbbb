"""Flow concurrency limits in the pure core: the ledger's decisions, and an execution's own
history deciding QUEUED, RUNNING, CANCELLED or FAILED from what the ledger told it."""

from __future__ import annotations

from engine import events as ev
from engine.execution import verify
from engine.execution.concurrency import (
    Arrival,
    Departure,
    Ledger,
    Limit,
    Release,
    fold_ledger,
    limit_of,
    limit_problems,
    plan_ledger,
)
from engine.flow import flow_to_dict, parse_flow
from tests.unit.test_executor import T0, Run

NS, FLOW = "company.team", "limited"


def _plan(ledger: Ledger, *changes: Arrival | Departure | Release) -> tuple[Ledger, list[ev.Event]]:
    recorded, told = plan_ledger(ledger, NS, FLOW, list(changes))
    return fold_ledger(recorded, ledger), told


def test_arrivals_over_the_limit_wait_and_freed_slots_go_to_the_oldest() -> None:
    two = Limit(2)
    ledger, told = _plan(Ledger(), *(Arrival(x, two) for x in "abcd"))
    assert ledger.running == ("a", "b")
    assert ledger.queued == ("c", "d")
    assert [type(t).__name__ for t in told] == [
        "ConcurrencySlotGranted",
        "ConcurrencySlotGranted",
        "ConcurrencyLimitReached",
        "ConcurrencyLimitReached",
    ]
    ledger, told = _plan(ledger, Departure("b", "SUCCESS"))
    assert ledger.running == ("a", "c")
    assert told == [ev.ConcurrencySlotGranted(executionId="c")]


def test_an_arrival_or_departure_handled_twice_changes_nothing() -> None:
    one = Limit(1)
    ledger, _ = _plan(Ledger(), Arrival("a", one), Arrival("b", one))
    again, told = _plan(ledger, Arrival("a", one), Arrival("b", one))
    assert (again, told) == (ledger, [])
    ledger, _ = _plan(ledger, Departure("a", "SUCCESS"))
    again, told = _plan(ledger, Departure("a", "SUCCESS"))
    assert (again, told) == (ledger, [])


def test_a_queued_execution_that_ends_leaves_the_queue_without_taking_a_slot() -> None:
    one = Limit(1)
    ledger, _ = _plan(Ledger(), Arrival("a", one), Arrival("b", one), Arrival("c", one))
    ledger, told = _plan(ledger, Departure("b", "KILLED"))
    assert (ledger.running, ledger.queued, told) == (("a",), ("c",), [])


def test_cancel_and_fail_refuse_with_the_reason_and_hold_no_slot() -> None:
    ledger, _ = _plan(Ledger(), Arrival("a", Limit(1, "CANCEL")))
    ledger, told = _plan(ledger, Arrival("b", Limit(1, "FAIL")))
    assert ledger.running == ("a",) and ledger.queued == ()
    [refused] = told
    assert isinstance(refused, ev.ConcurrencyLimitReached)
    assert refused.behavior == "FAIL"
    assert (
        refused.message is not None and "allows at most 1 concurrent execution" in refused.message
    )


def test_release_starts_every_queued_execution_whatever_the_limit() -> None:
    one = Limit(1)
    ledger, _ = _plan(Ledger(), *(Arrival(x, one) for x in "abc"))
    ledger, told = _plan(ledger, Release())
    assert ledger.running == ("a", "b", "c")
    assert told == [
        ev.ConcurrencySlotGranted(executionId="b", forced=True),
        ev.ConcurrencySlotGranted(executionId="c", forced=True),
    ]


def test_limit_is_read_leniently_and_validated_strictly() -> None:
    assert limit_of({"limit": 3}) == Limit(3, "QUEUE")
    assert limit_of({"limit": 0}) is None
    assert limit_of(None) is None
    assert [p for p, _ in limit_problems({"limit": "x", "behavior": "DROP", "size": 1})] == [
        "concurrency.size",
        "concurrency.limit",
        "concurrency.behavior",
    ]
    assert limit_problems({"limit": 1, "behavior": "CANCEL"}) == []


LIMITED = """
id: limited
namespace: company.team
concurrency:
  limit: 1
  behavior: QUEUE
tasks:
  - id: hello
    type: io.kestra.plugin.core.log.Log
    message: hi
"""


class LimitedRun(Run):
    """An execution created, as today, with its flow's concurrency limit applying."""

    def __init__(self, source: str) -> None:
        flow = parse_flow(source)
        self.history = []
        self.state = None
        self.clock = T0
        self.input(
            ev.ExecutionCreated(
                executionId="exec1",
                namespace=flow.namespace,
                flowId=flow.id,
                flowRevision=1,
                flow=flow_to_dict(flow),
                concurrencyLimited=True,
            )
        )


def test_an_execution_recorded_before_limits_were_enforced_still_starts_at_once() -> None:
    run = Run(LIMITED)
    assert run.state is not None and run.state.state == "RUNNING"


def test_an_execution_waits_for_the_ledger_then_queues_and_runs_once_granted() -> None:
    run = LimitedRun(LIMITED)
    assert run.state is not None and run.state.state == "CREATED"
    decided = run.input(ev.ConcurrencyLimitReached(executionId="exec1", limit=1, behavior="QUEUE"))
    assert decided == [ev.ExecutionStateChanged(executionId="exec1", state="QUEUED")]
    decided = run.input(ev.ConcurrencySlotGranted(executionId="exec1"))
    assert decided[0] == ev.ExecutionStateChanged(executionId="exec1", state="RUNNING")
    assert any(isinstance(d, ev.AttemptScheduled) for d in decided)
    _, mismatches = verify(run.history)
    assert mismatches == []  # the execution replays from its own stream alone


def test_a_refused_execution_ends_cancelled_with_the_reason() -> None:
    run = LimitedRun(LIMITED.replace("QUEUE", "CANCEL"))
    decided = run.input(
        ev.ConcurrencyLimitReached(
            executionId="exec1", limit=1, behavior="CANCEL", message="at most 1"
        )
    )
    assert decided == [
        ev.ExecutionStateChanged(executionId="exec1", state="CANCELLED", message="at most 1")
    ]


def test_a_queued_execution_killed_ends_without_running_a_task() -> None:
    run = LimitedRun(LIMITED)
    run.input(ev.ConcurrencyLimitReached(executionId="exec1", limit=1, behavior="QUEUE"))
    decided = run.input(ev.ExecutionKillRequested(executionId="exec1"))
    assert decided == [ev.ExecutionStateChanged(executionId="exec1", state="KILLED")]
    assert run.state is not None and not run.state.taskruns
