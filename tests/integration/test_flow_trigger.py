"""Flow triggers against a real PostgreSQL, a real engine and the scheduler: executions that
end start other flows, once per ended execution, as the conditions say."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
import trio

import plugins.core  # noqa: F401  (registers the Flow trigger and its conditions)
from engine import events as ev
from engine.commands import (
    create_execution,
    deploy_flow,
    load_execution,
    trigger_enabled,
    wait_for_end,
)
from engine.errors import FlowValidationError
from engine.flow import parse_flow
from engine.scheduler import Scheduler
from engine.server import ServerContext
from engine.triggers import ConditionContext, TimeWindow

UPSTREAM = """\
id: {flow_id}
namespace: {ns}
inputs:
  - id: fail
    type: BOOLEAN
    defaults: false
tasks:
  - id: compute
    type: io.kestra.plugin.core.debug.Return
    format: "computed by {{{{ execution.id }}}}"
  - id: maybe_fail
    type: io.kestra.plugin.core.execution.Fail
    condition: "{{{{ inputs.fail }}}}"
outputs:
  - id: result
    type: STRING
    value: "{{{{ outputs.compute.value }}}}"
"""


def _listener(ns: str, flow_id: str, trigger: str) -> str:
    return (
        f"id: {flow_id}\nnamespace: {ns}\n"
        "inputs:\n  - id: got\n    type: STRING\n    defaults: none\n"
        "  - id: task\n    type: STRING\n    defaults: none\n"
        "tasks:\n"
        "  - id: log\n    type: io.kestra.plugin.core.log.Log\n"
        "    message: 'after {{ trigger.executionId }} of {{ trigger.flowId }}'\n"
        f"triggers:\n{trigger}"
    )


async def _created(ctx: ServerContext, ns: str, flow_id: str) -> list[dict[str, Any]]:
    rows = await ctx.store.db.fetchall(
        "SELECT data FROM events WHERE type = 'ExecutionCreated'"
        " AND data->>'namespace' = %s AND data->>'flowId' = %s ORDER BY seq",
        (ns, flow_id),
    )
    return [r["data"] for r in rows]


async def _run(
    ctx: ServerContext, ns: str, flow_id: str, *, fail: bool = False, labels: Any = None
) -> str:
    xid = await create_execution(ctx.store, ns, flow_id, {"fail": fail}, labels=labels)
    state = await wait_for_end(ctx.store, ctx.notifier, xid, timeout=30)
    assert state.state == ("FAILED" if fail else "SUCCESS")
    return xid


async def _until(ctx: ServerContext, ns: str, flow_id: str, count: int) -> list[dict[str, Any]]:
    with trio.fail_after(15):
        while len(found := await _created(ctx, ns, flow_id)) < count:
            await trio.sleep(0.1)
    return found


async def _judge_again(ctx: ServerContext, ns: str, execution_ids: list[str]) -> int:
    """What a scheduler restarted from an old checkpoint starts when it reads again the ends of
    executions already judged."""
    again = Scheduler(ctx.store, ctx.notifier, namespace=ns, health=ctx.health)
    for xid in execution_ids:
        history = await ctx.store.read_stream(ev.execution_stream(xid))
        await again.flow_triggers.handle(history)
    return again.flow_triggers.started


async def _scheduler(nursery: trio.Nursery, ctx: ServerContext, ns: str) -> Scheduler:
    scheduler = Scheduler(ctx.store, ctx.notifier, namespace=ns, health=ctx.health)
    await nursery.start(scheduler.run)
    return scheduler


ON_A_SUCCESS = """\
  - id: on_a
    type: io.kestra.plugin.core.trigger.Flow
    inputs:
      got: "{{{{ trigger.outputs.result }}}}"
      task: "{{{{ outputs.compute.value }}}} in {{{{ execution.id }}}}"
    labels:
      chained: "yes"
    conditions:
      - type: io.kestra.plugin.core.condition.ExecutionStatus
        in: [SUCCESS]
      - type: io.kestra.plugin.core.condition.ExecutionFlow
        namespace: {ns}
        flowId: a
"""


async def test_a_successful_execution_starts_the_listening_flow_once_with_its_outputs(
    engine: ServerContext, ns: str
) -> None:
    await deploy_flow(engine.store, UPSTREAM.format(flow_id="a", ns=ns))
    await deploy_flow(engine.store, _listener(ns, "b", ON_A_SUCCESS.format(ns=ns)))
    async with trio.open_nursery() as nursery:
        await _scheduler(nursery, engine, ns)
        first = await _run(engine, ns, "a")
        failed = await _run(engine, ns, "a", fail=True)
        second = await _run(engine, ns, "a")
        started = await _until(engine, ns, "b", 2)
        await trio.sleep(1.0)  # anything more would have been started by now
        nursery.cancel_scope.cancel()
    started = await _created(engine, ns, "b")
    assert [s["trigger"]["variables"]["executionId"] for s in started] == [first, second]
    assert failed not in {s["trigger"]["variables"]["executionId"] for s in started}
    trigger = started[0]["trigger"]
    assert trigger["id"] == "on_a" and trigger["type"] == "io.kestra.plugin.core.trigger.Flow"
    variables = trigger["variables"]
    assert variables["namespace"] == ns and variables["flowId"] == "a"
    assert variables["state"] == "SUCCESS"
    assert variables["outputs"] == {"result": f"computed by {first}"}
    # The event records the inputs sealed with the execution's key: read them as the engine does.
    inputs = (await load_execution(engine.store, started[0]["executionId"])).inputs
    assert inputs["got"] == f"computed by {first}"
    # As in Kestra, `inputs` render in the ended execution's context (its task outputs).
    assert inputs["task"] == f"computed by {first} in {first}"
    labels = {label["key"]: label["value"] for label in started[0]["labels"]}
    assert labels["chained"] == "yes" and labels["system.correlationId"] == first
    assert await _judge_again(engine, ns, [first, failed, second]) == 0
    assert len(await _created(engine, ns, "b")) == 2
    state = await wait_for_end(engine.store, engine.notifier, started[0]["executionId"], timeout=30)
    assert state.state == "SUCCESS"
    logs = await engine.store.db.fetchall(
        "SELECT data::text AS message FROM events WHERE type = 'AttemptLogged'"
        " AND stream_id LIKE %s",
        (f"exec:{started[0]['executionId']}/%",),
    )
    assert any(f"after {first} of a" in (r["message"] or "") for r in logs), logs


async def test_namespace_and_label_conditions_pick_the_executions_that_start_a_flow(
    engine: ServerContext, ns: str
) -> None:
    child = f"{ns}.child"
    await deploy_flow(engine.store, UPSTREAM.format(flow_id="up", ns=child))
    await deploy_flow(engine.store, UPSTREAM.format(flow_id="other", ns=f"x{ns}"))
    trigger = (
        "  - id: data_team\n    type: io.kestra.plugin.core.trigger.Flow\n"
        "    conditions:\n"
        "      - type: io.kestra.plugin.core.condition.ExecutionNamespace\n"
        f"        namespace: {ns}\n        comparison: PREFIX\n"
        "      - type: io.kestra.plugin.core.condition.ExecutionLabels\n"
        "        labels:\n          team: data\n"
    )
    await deploy_flow(engine.store, _listener(ns, "listener", trigger))
    async with trio.open_nursery() as nursery:
        await _scheduler(nursery, engine, ns)
        wanted = await _run(engine, child, "up", labels={"team": "data"})
        await _run(engine, child, "up", labels={"team": "web"})
        await _run(engine, child, "up")
        await _run(engine, f"x{ns}", "other", labels={"team": "data"})
        await _until(engine, ns, "listener", 1)
        await trio.sleep(1.0)
        nursery.cancel_scope.cancel()
    started = await _created(engine, ns, "listener")
    assert [s["trigger"]["variables"]["executionId"] for s in started] == [wanted]


async def test_stop_after_disables_the_trigger_once_a_started_execution_failed(
    engine: ServerContext, ns: str
) -> None:
    await deploy_flow(engine.store, UPSTREAM.format(flow_id="a", ns=ns))
    failing = (
        f"id: fragile\nnamespace: {ns}\ntasks:\n"
        "  - id: boom\n    type: io.kestra.plugin.core.execution.Fail\n"
        "triggers:\n  - id: on_a\n    type: io.kestra.plugin.core.trigger.Flow\n"
        "    stopAfter: [FAILED]\n    states: [SUCCESS]\n"
    )
    await deploy_flow(engine.store, failing)
    async with trio.open_nursery() as nursery:
        await _scheduler(nursery, engine, ns)
        await _run(engine, ns, "a")
        (started,) = await _until(engine, ns, "fragile", 1)
        state = await wait_for_end(
            engine.store, engine.notifier, started["executionId"], timeout=30
        )
        assert state.state == "FAILED"
        with trio.fail_after(10):
            while await trigger_enabled(engine.store, ns, "fragile", "on_a"):
                await trio.sleep(0.1)
        await _run(engine, ns, "a")
        await trio.sleep(1.0)
        nursery.cancel_scope.cancel()
    assert len(await _created(engine, ns, "fragile")) == 1


async def test_states_may_name_a_state_an_execution_passes_through(
    engine: ServerContext, ns: str
) -> None:
    await deploy_flow(engine.store, UPSTREAM.format(flow_id="a", ns=ns))
    trigger = (
        "  - id: watch\n    type: io.kestra.plugin.core.trigger.Flow\n"
        "    states: [RUNNING, SUCCESS]\n"
    )
    await deploy_flow(engine.store, _listener(ns, "watcher", trigger))
    async with trio.open_nursery() as nursery:
        await _scheduler(nursery, engine, ns)
        await _run(engine, ns, "a")
        await _until(engine, ns, "watcher", 2)
        await trio.sleep(1.0)
        nursery.cancel_scope.cancel()
    started = await _created(engine, ns, "watcher")
    assert [s["trigger"]["variables"]["state"] for s in started] == ["RUNNING", "SUCCESS"]


MULTIPLE = """\
  - id: both
    type: io.kestra.plugin.core.trigger.Flow
    conditions:
      - type: io.kestra.plugin.core.condition.ExecutionStatus
        in: [SUCCESS]
      - id: upstreams
        type: io.kestra.plugin.core.condition.MultipleCondition
        timeWindow:
          type: SLIDING_WINDOW
          window: PT1H
        conditions:
          first:
            type: io.kestra.plugin.core.condition.ExecutionFlow
            namespace: {ns}
            flowId: up1
          second:
            type: io.kestra.plugin.core.condition.ExecutionFlow
            namespace: {ns}
            flowId: up2
"""
PRECONDITIONS = """\
  - id: both_pre
    type: io.kestra.plugin.core.trigger.Flow
    preconditions:
      id: upstreams
      timeWindow:
        type: DURATION_WINDOW
        window: P1D
      flows:
        - namespace: {ns}
          flowId: up1
          states: [SUCCESS]
        - namespace: {ns}
          flowId: up2
          states: [SUCCESS]
"""


async def test_a_multiple_condition_fires_once_when_both_upstream_flows_succeeded(
    engine: ServerContext, ns: str
) -> None:
    for flow_id in ("up1", "up2"):
        await deploy_flow(engine.store, UPSTREAM.format(flow_id=flow_id, ns=ns))
    await deploy_flow(engine.store, _listener(ns, "joined", MULTIPLE.format(ns=ns)))
    await deploy_flow(engine.store, _listener(ns, "joined_pre", PRECONDITIONS.format(ns=ns)))
    async with trio.open_nursery() as nursery:
        await _scheduler(nursery, engine, ns)
        await _run(engine, ns, "up1")
        await _run(engine, ns, "up1")
        await _run(engine, ns, "up2", fail=True)  # a failure meets no condition
        await trio.sleep(1.0)
        assert await _created(engine, ns, "joined") == []
        assert await _created(engine, ns, "joined_pre") == []
        last = await _run(engine, ns, "up2")
        await _until(engine, ns, "joined", 1)
        await _until(engine, ns, "joined_pre", 1)
        after = await _run(engine, ns, "up1")  # the conditions were reset: alone, nothing
        await trio.sleep(1.0)
        nursery.cancel_scope.cancel()
    assert await _judge_again(engine, ns, [last, after]) == 0
    for flow_id in ("joined", "joined_pre"):
        started = await _created(engine, ns, flow_id)
        assert len(started) == 1, flow_id
        assert started[0]["trigger"]["variables"]["executionId"] == last
    history = await engine.store.read_stream(ev.trigger_stream(ns, "joined", "both"))
    met = [e.event for e in history if isinstance(e.event, ev.TriggerConditionMet)]
    assert [m.key for m in met] == ["first", "first", "second", "first"]
    assert sum(isinstance(e.event, ev.TriggerFired) for e in history) == 1


async def test_two_schedulers_start_the_listening_flow_once_per_execution(
    engine: ServerContext, ns: str
) -> None:
    for flow_id in ("up1", "up2"):
        await deploy_flow(engine.store, UPSTREAM.format(flow_id=flow_id, ns=ns))
    await deploy_flow(engine.store, UPSTREAM.format(flow_id="a", ns=ns))
    await deploy_flow(engine.store, _listener(ns, "b", ON_A_SUCCESS.format(ns=ns)))
    await deploy_flow(engine.store, _listener(ns, "joined", MULTIPLE.format(ns=ns)))
    async with trio.open_nursery() as nursery:
        one = await _scheduler(nursery, engine, ns)
        two = await _scheduler(nursery, engine, ns)
        ran = []
        async with trio.open_nursery() as runs:
            for flow_id in ("a", "a", "a", "up1", "up2"):
                runs.start_soon(_run, engine, ns, flow_id)
        ran = await _until(engine, ns, "b", 3)
        await _until(engine, ns, "joined", 1)
        await trio.sleep(1.5)
        nursery.cancel_scope.cancel()
    started = await _created(engine, ns, "b")
    assert len(started) == 3 == len(ran)
    assert len({s["trigger"]["variables"]["executionId"] for s in started}) == 3
    assert len(await _created(engine, ns, "joined")) == 1
    assert one.flow_triggers.started + two.flow_triggers.started == 4


# --- the trigger's parts alone (no database) ---------------------------------------------------


def _trigger(body: str) -> Any:
    return parse_flow(_listener("t.ns", "listener", body)).triggers[0]


def _ended(namespace: str, flow_id: str, state: str = "SUCCESS", **labels: str) -> Any:
    variables = {"executionId": "x", "namespace": namespace, "flowId": flow_id, "state": state}
    return ConditionContext(variables={"trigger": variables, "labels": labels})


def test_time_windows_bound_the_executions_that_complete_a_set() -> None:
    at = dt.datetime(2024, 5, 3, 13, 30, tzinfo=dt.UTC)
    day = TimeWindow()
    midnight = at.replace(hour=0, minute=0)
    assert day.bounds(at) == (midnight, midnight + dt.timedelta(days=1))
    shifted = TimeWindow(window=dt.timedelta(hours=6), advance=dt.timedelta(hours=1))
    assert shifted.bounds(at) == (at.replace(hour=13, minute=0), at.replace(hour=19, minute=0))
    sliding = TimeWindow("SLIDING_WINDOW", dt.timedelta(hours=2))
    assert sliding.bounds(at) == (at - dt.timedelta(hours=2), at)
    daily = TimeWindow("DAILY_TIME_WINDOW", start=dt.time(9), end=dt.time(12))
    assert daily.bounds(at) is None
    assert daily.bounds(at.replace(hour=10)) == (
        at.replace(hour=9, minute=0),
        at.replace(hour=12, minute=0),
    )
    deadline = TimeWindow("DAILY_TIME_DEADLINE", deadline=dt.time(14))
    assert deadline.bounds(at) == (at.replace(hour=0, minute=0), at.replace(hour=14, minute=0))
    assert deadline.bounds(at.replace(hour=15)) is None


def test_where_filters_of_preconditions_pick_executions_as_kestra_reads_them() -> None:
    trigger = _trigger(
        "  - id: alert\n    type: io.kestra.plugin.core.trigger.Flow\n"
        "    preconditions:\n      id: failures\n      where:\n"
        "        - id: company_failures\n          filters:\n"
        "            - field: NAMESPACE\n              type: STARTS_WITH\n              value: company\n"
        "            - field: STATE\n              type: IN\n              values: [FAILED, WARNING]\n"
    )
    (group,) = trigger.groups()
    (test,) = group.keys.values()
    assert test(_ended("company.team", "a", "FAILED"))
    assert not test(_ended("company.team", "a", "SUCCESS"))
    assert not test(_ended("other.team", "a", "FAILED"))


def test_conditions_are_checked_when_the_flow_is_saved() -> None:
    with pytest.raises(FlowValidationError) as bad_state:
        _trigger(
            "  - id: t\n    type: io.kestra.plugin.core.trigger.Flow\n    conditions:\n"
            "      - type: io.kestra.plugin.core.condition.ExecutionStatus\n        in: [DONE]\n"
        )
    assert "DONE" in str(bad_state.value)
    with pytest.raises(FlowValidationError) as bad_nested:
        _trigger(
            "  - id: t\n    type: io.kestra.plugin.core.trigger.Flow\n    conditions:\n"
            "      - id: m\n        type: io.kestra.plugin.core.condition.MultipleCondition\n"
            "        conditions:\n          a:\n            type: io.kestra.plugin.core.condition.Nope\n"
        )
    assert "conditions.a.type" in str(bad_nested.value)
    status = _trigger(
        "  - id: t\n    type: io.kestra.plugin.core.trigger.Flow\n    states: [FAILED]\n"
        "    conditions:\n      - type: io.kestra.plugin.core.condition.ExecutionLabels\n"
        "        labels:\n          - key: team\n            value: data\n"
    )
    assert status.accepts(_ended("a", "b", "FAILED", team="data"))
    assert not status.accepts(_ended("a", "b", "SUCCESS", team="data"))
    assert not status.accepts(_ended("a", "b", "FAILED", team="web"))
