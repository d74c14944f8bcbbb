"""Flow control end to end: loops, branches, DAGs, pauses, subflows, retries, exits, labels."""

from __future__ import annotations

import json

import pytest
import trio

from engine.commands import (
    create_execution,
    deploy_flow,
    load_execution,
    resume_execution,
    wait_for_end,
)
from engine.errors import Conflict, InputValidationError
from engine.execution import Execution
from engine.server import ServerContext
from tests.integration.conftest import run_flow


def _outputs(state: Execution) -> dict[str, list]:
    out: dict[str, list] = {}
    for run in state.taskruns.values():
        out.setdefault(run.taskId, []).append(run.outputs)
    return out


async def test_nested_foreach_keys_outputs_by_values_and_exposes_parents(
    engine: ServerContext, ns: str
) -> None:
    source = f"""
id: loops
namespace: {ns}
tasks:
  - id: outer
    type: io.kestra.plugin.core.flow.ForEach
    values: ["a", "b"]
    concurrencyLimit: 0
    tasks:
      - id: inner
        type: io.kestra.plugin.core.flow.ForEach
        values: '[1, 2]'
        tasks:
          - id: pair
            type: io.kestra.plugin.core.debug.Return
            format: "{{{{ parent.taskrun.value }}}}-{{{{ taskrun.value }}}}"
  - id: pick
    type: io.kestra.plugin.core.debug.Return
    format: "{{{{ outputs.pair.b['2'].value }}}}"
"""
    state = await run_flow(engine, source)
    assert state.state == "SUCCESS"
    assert sorted(o["value"] for o in _outputs(state)["pair"]) == ["a-1", "a-2", "b-1", "b-2"]
    assert _outputs(state)["pick"] == [{"value": "b-2"}]
    assert len(state.taskruns) == 1 + 2 + 4 + 1


async def test_if_switch_and_dag_choose_and_order_branches(engine: ServerContext, ns: str) -> None:
    source = f"""
id: branches
namespace: {ns}
inputs:
  - id: mode
    type: STRING
tasks:
  - id: check
    type: io.kestra.plugin.core.flow.If
    condition: "{{{{ inputs.mode == 'fast' }}}}"
    then:
      - id: chose_then
        type: io.kestra.plugin.core.debug.Return
        format: "then"
    else:
      - id: chose_else
        type: io.kestra.plugin.core.debug.Return
        format: "else"
  - id: choose
    type: io.kestra.plugin.core.flow.Switch
    value: "{{{{ inputs.mode }}}}"
    cases:
      slow:
        - id: slow_case
          type: io.kestra.plugin.core.debug.Return
          format: slow
    defaults:
      - id: other
        type: io.kestra.plugin.core.debug.Return
        format: other
  - id: graph
    type: io.kestra.plugin.core.flow.Dag
    tasks:
      - task:
          id: last
          type: io.kestra.plugin.core.debug.Return
          format: "{{{{ outputs.first.value }}}}+{{{{ outputs.second.value }}}}"
        dependsOn: [first, second]
      - task:
          id: first
          type: io.kestra.plugin.core.debug.Return
          format: "1"
      - task:
          id: second
          type: io.kestra.plugin.core.debug.Return
          format: "2"
        dependsOn: [first]
"""
    state = await run_flow(engine, source, {"mode": "fast"})
    assert state.state == "SUCCESS"
    outputs = _outputs(state)
    assert "chose_then" in outputs and "chose_else" not in outputs
    assert outputs["other"] == [{"value": "other"}] and "slow_case" not in outputs
    assert outputs["choose"] == [{"value": "fast", "defaults": True}]
    assert outputs["last"] == [{"value": "1+2"}]


async def test_subflow_runs_a_child_execution_and_returns_its_outputs(
    engine: ServerContext, ns: str
) -> None:
    child = f"""
id: child
namespace: {ns}
inputs:
  - id: n
    type: INT
tasks:
  - id: double
    type: io.kestra.plugin.core.debug.Return
    format: "{{{{ inputs.n * 2 }}}}"
outputs:
  - id: result
    type: STRING
    value: "{{{{ outputs.double.value }}}}"
"""
    await deploy_flow(engine.store, child)
    parent = f"""
id: parent
namespace: {ns}
tasks:
  - id: call
    type: io.kestra.plugin.core.flow.Subflow
    namespace: {ns}
    flowId: child
    inputs:
      n: 21
  - id: show
    type: io.kestra.plugin.core.debug.Return
    format: "{{{{ outputs.call.outputs.result }}}}"
"""
    state = await run_flow(engine, parent)
    assert state.state == "SUCCESS"
    call = _outputs(state)["call"][0]
    assert call["state"] == "SUCCESS" and _outputs(state)["show"] == [{"value": "42"}]
    kid = await load_execution(engine.store, call["executionId"])
    assert kid.parentId == state.id and kid.inputs == {"n": 21}
    assert dict(kid.labels)["system.correlationId"] == state.id

    missing = f"""
id: orphan
namespace: {ns}
tasks:
  - id: call
    type: io.kestra.plugin.core.flow.Subflow
    namespace: {ns}
    flowId: nowhere
"""
    state = await run_flow(engine, missing)
    assert state.state == "FAILED"
    assert "nowhere" in next(iter(state.taskruns.values())).message


async def test_pause_waits_for_resume_with_on_resume_inputs(engine: ServerContext, ns: str) -> None:
    source = f"""
id: approve
namespace: {ns}
tasks:
  - id: gate
    type: io.kestra.plugin.core.flow.Pause
    onResume:
      - id: approved
        type: BOOLEAN
  - id: after
    type: io.kestra.plugin.core.debug.Return
    format: "{{{{ outputs.gate.onResume.approved }}}}"
"""
    record = await deploy_flow(engine.store, source)
    xid = await create_execution(engine.store, record.namespace, record.id)
    with trio.fail_after(20):
        while (await load_execution(engine.store, xid)).state != "PAUSED":
            await trio.sleep(0.05)
    with pytest.raises(InputValidationError):
        await resume_execution(engine.store, xid, {"approved": "perhaps"})
    await resume_execution(engine.store, xid, {"approved": "true"})
    state = await wait_for_end(engine.store, engine.notifier, xid, timeout=30)
    assert state.state == "SUCCESS"
    assert _outputs(state)["after"] == [{"value": "true"}]
    with pytest.raises(Conflict):
        await resume_execution(engine.store, xid)


async def test_pause_with_delay_resumes_by_itself(engine: ServerContext, ns: str) -> None:
    source = f"""
id: nap
namespace: {ns}
tasks:
  - id: gate
    type: io.kestra.plugin.core.flow.Pause
    delay: PT0.3S
  - id: after
    type: io.kestra.plugin.core.debug.Return
    format: done
"""
    state = await run_flow(engine, source)
    assert state.state == "SUCCESS" and "after" in _outputs(state)


async def test_retry_runs_new_attempts_until_the_task_succeeds(
    engine: ServerContext, ns: str
) -> None:
    source = f"""
id: flaky
namespace: {ns}
tasks:
  - id: third_time
    type: io.kestra.plugin.core.debug.Return
    format: "{{{{ taskrun.attemptsCount == 2 ? 'ok' : ko }}}}"
    retry:
      type: constant
      interval: PT0.1S
      maxAttempt: 5
      warningOnRetry: true
  - id: never
    type: io.kestra.plugin.core.execution.Fail
    retry:
      type: exponential
      interval: PT0.05S
      maxAttempt: 2
"""
    state = await run_flow(engine, source)
    runs = {r.taskId: r for r in state.taskruns.values()}
    assert len(runs["third_time"].attempts) == 3
    assert runs["third_time"].state == "WARNING"  # warningOnRetry
    assert runs["third_time"].outputs == {"value": "ok"}
    assert len(runs["never"].attempts) == 2 and runs["never"].state == "FAILED"
    assert state.state == "FAILED"


async def test_waitfor_repeats_until_the_condition_holds(engine: ServerContext, ns: str) -> None:
    source = f"""
id: poll
namespace: {ns}
tasks:
  - id: loop
    type: io.kestra.plugin.core.flow.WaitFor
    condition: "{{{{ outputs.count.value == '3' }}}}"
    checkFrequency:
      interval: PT0.05S
    tasks:
      - id: count
        type: io.kestra.plugin.core.debug.Return
        format: "{{{{ outputs.loop.iterationCount + 1 }}}}"
"""
    state = await run_flow(engine, source)
    assert state.state == "SUCCESS", [r.message for r in state.taskruns.values()]
    assert [o["value"] for o in _outputs(state)["count"]] == ["1", "2", "3"]
    assert _outputs(state)["loop"] == [{"iterationCount": 3}]


async def test_exit_ends_the_execution_and_labels_change_at_run_time(
    engine: ServerContext, ns: str
) -> None:
    source = f"""
id: stop
namespace: {ns}
tasks:
  - id: tag
    type: io.kestra.plugin.core.execution.Labels
    labels:
      stage: "{{{{ flow.id }}}}"
  - id: leave
    type: io.kestra.plugin.core.execution.Exit
    state: WARNING
  - id: unreachable
    type: io.kestra.plugin.core.debug.Return
    format: never
"""
    state = await run_flow(engine, source)
    assert state.state == "WARNING"
    assert dict(state.labels)["stage"] == "stop"
    assert "unreachable" not in _outputs(state)


async def test_allow_failure_and_errors_branches(engine: ServerContext, ns: str) -> None:
    source = f"""
id: tolerant
namespace: {ns}
tasks:
  - id: guard
    type: io.kestra.plugin.core.flow.AllowFailure
    tasks:
      - id: boom
        type: io.kestra.plugin.core.execution.Fail
        errorMessage: "broken {{{{ flow.id }}}}"
    errors:
      - id: report
        type: io.kestra.plugin.core.log.Log
        message: "{{{{ errorLogs()[0].message }}}}"
  - id: after
    type: io.kestra.plugin.core.debug.Return
    format: went on
"""
    state = await run_flow(engine, source)
    assert state.state == "WARNING"
    runs = {r.taskId: r for r in state.taskruns.values()}
    assert runs["report"].state == "SUCCESS" and runs["after"].state == "SUCCESS"


async def test_foreachitem_runs_one_subflow_per_batch_of_lines(
    engine: ServerContext, ns: str
) -> None:
    assert engine.storage is not None
    uri = engine.storage.put(f"/{ns}/data", "items.txt", b"a\nb\nc\nd\ne\n")
    await deploy_flow(
        engine.store,
        f"""
id: per-batch
namespace: {ns}
inputs:
  - id: items
    type: STRING
tasks:
  - id: show
    type: io.kestra.plugin.core.debug.Return
    format: "{{{{ inputs.items }}}}"
outputs:
  - id: batch
    type: STRING
    value: "{{{{ outputs.show.value }}}}"
""",
    )
    source = f"""
id: fan-out
namespace: {ns}
inputs:
  - id: file
    type: STRING
tasks:
  - id: each
    type: io.kestra.plugin.core.flow.ForEachItem
    items: "{{{{ inputs.file }}}}"
    batch:
      rows: 2
    namespace: {ns}
    flowId: per-batch
    inputs:
      items: "{{{{ taskrun.items }}}}"
"""
    state = await run_flow(engine, source, {"file": uri})
    assert state.state == "SUCCESS", [r.message for r in state.taskruns.values() if r.message]
    batches = [r for r in state.taskruns.values() if r.taskId == "each_items"]
    assert len(batches) == 3
    merged = _outputs(state)["each_merge"][0]["subflowOutputs"]
    files = [json.loads(line)["batch"] for line in engine.storage.read_bytes(merged).splitlines()]
    contents = sorted(engine.storage.read_bytes(f).decode() for f in files)
    assert contents == ["a\nb\n", "c\nd\n", "e\n"]
    assert _outputs(state)["each"] == [{"numberOfBatches": 3}]


async def test_finally_and_after_execution_run_whatever_the_outcome(
    engine: ServerContext, ns: str
) -> None:
    source = f"""
id: cleanup
namespace: {ns}
tasks:
  - id: boom
    type: io.kestra.plugin.core.execution.Fail
finally:
  - id: tidy
    type: io.kestra.plugin.core.debug.Return
    format: tidy
afterExecution:
  - id: notify
    type: io.kestra.plugin.core.debug.Return
    format: "{{{{ execution.id }}}}"
"""
    state = await run_flow(engine, source)
    assert state.state == "FAILED"
    runs = {r.taskId: r.state for r in state.taskruns.values()}
    assert runs == {"boom": "FAILED", "tidy": "SUCCESS", "notify": "SUCCESS"}


async def test_failed_flowable_is_retried_with_fresh_children(
    engine: ServerContext, ns: str
) -> None:
    source = f"""
id: again
namespace: {ns}
tasks:
  - id: group
    type: io.kestra.plugin.core.flow.Sequential
    retry:
      type: constant
      interval: PT0.1S
      maxAttempt: 3
    tasks:
      - id: child
        type: io.kestra.plugin.core.execution.Fail
"""
    state = await run_flow(engine, source)
    assert state.state == "FAILED"
    children = [r for r in state.taskruns.values() if r.taskId == "child"]
    assert len(children) == 3 and all(r.state == "FAILED" for r in children)


async def test_create_new_execution_retry_starts_new_executions_of_the_flow(
    engine: ServerContext, ns: str
) -> None:
    source = f"""
id: anew
namespace: {ns}
retry:
  behavior: CREATE_NEW_EXECUTION
  type: constant
  maxAttempt: 3
  interval: PT0.1S
tasks:
  - id: fail
    type: io.kestra.plugin.core.execution.Fail
"""
    first = await run_flow(engine, source)
    assert first.state == "FAILED" and first.retried_as is not None
    second = await wait_for_end(engine.store, engine.notifier, first.retried_as, timeout=30)
    assert second.attempt == 2 and second.originalId == first.id
    third = await wait_for_end(engine.store, engine.notifier, second.retried_as, timeout=30)
    assert third.attempt == 3 and third.state == "FAILED" and third.retried_as is None


async def test_purge_removes_an_ended_execution_and_its_files_but_keeps_its_history(
    engine: ServerContext, ns: str
) -> None:
    from engine.commands import execution_history, purge_execution
    from engine.errors import NotFound
    from engine.storage import execution_prefix

    state = await run_flow(
        engine,
        f"id: p\nnamespace: {ns}\ntasks:\n  - id: r\n"
        "    type: io.kestra.plugin.core.debug.Return\n    format: x\n",
    )
    assert engine.storage is not None
    uri = engine.storage.put(execution_prefix(ns, "p", state.id) + "/tasks/r", "f.txt", b"x")
    assert await purge_execution(engine.store, engine.storage, state.id) == 1
    assert not engine.storage.exists(uri)
    with pytest.raises(NotFound, match="purged"):
        await load_execution(engine.store, state.id)
    history = await execution_history(engine.store, state.id)
    assert history[-1].type == "ExecutionPurged"
