"""Actions on one execution: replay from a task run, restart, pause and resume, a task run's
state set by hand, labels; each refused when the execution's state does not allow it, and
every history they write refolds exactly (`sys verify`)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
import trio

from engine import events as ev
from engine.commands import (
    change_task_run_state,
    create_execution,
    deploy_flow,
    execution_history,
    execution_json,
    kill_execution,
    load_execution,
    pause_execution,
    replay_execution,
    restart_execution,
    resume_execution,
    set_labels,
    wait_for_end,
)
from engine.errors import Conflict, InvalidRequest, NotFound
from engine.execution import Execution
from engine.server import ServerContext
from engine.verify import verify_execution
from tests.integration.conftest import assert_refolds_since, run_flow

# Every history of this file refolds: its last test checks (tests/integration/conftest.py).
pytestmark = pytest.mark.usefixtures("history_start")

FIVE_TASKS = """
id: five
namespace: {ns}
tasks:
  - id: t1
    type: io.kestra.plugin.core.debug.Return
    format: "made by {{{{ execution.id }}}}"
  - id: t2
    type: io.kestra.plugin.core.debug.Return
    format: "{{{{ outputs.t1.value }}}} and t2"
  - id: t3
    type: io.kestra.plugin.core.execution.Fail
    # Fails in the first execution's first attempt only: a replay or a restart gets through.
    condition: "{{{{ execution.originalId == execution.id and taskrun.attemptsCount == 0 }}}}"
  - id: t4
    type: io.kestra.plugin.core.debug.Return
    format: "{{{{ outputs.t2.value }}}} then t4"
  - id: t5
    type: io.kestra.plugin.core.debug.Return
    format: "t5 in {{{{ execution.id }}}}"
"""


def _run(state: Execution, task_id: str):
    [run] = [r for r in state.taskruns.values() if r.taskId == task_id]
    return run


async def _attempts_run(ctx: ServerContext, execution_id: str) -> Counter[str]:
    """How many attempts workers ran in this execution, per task (claims in its streams)."""
    history = await execution_history(ctx.store, execution_id)
    state = await load_execution(ctx.store, execution_id)
    task_of = {r.id: r.taskId for r in state.taskruns.values()}
    return Counter(
        task_of[e.event.taskRunId] for e in history if isinstance(e.event, ev.AttemptClaimed)
    )


async def _verified(ctx: ServerContext, execution_id: str) -> None:
    history = await execution_history(ctx.store, execution_id)
    assert verify_execution(history) == []


async def _failed_five(ctx: ServerContext, ns: str) -> Execution:
    state = await run_flow(ctx, FIVE_TASKS.format(ns=ns))
    assert state.state == "FAILED"
    assert [r.taskId for r in state.taskruns.values()] == ["t1", "t2", "t3"]
    return state


async def test_replay_from_the_middle_of_a_failed_flow_reruns_only_the_tail(
    engine: ServerContext, ns: str
) -> None:
    origin = await _failed_five(engine, ns)
    t3 = _run(origin, "t3")
    new_id = await replay_execution(engine.store, origin.id, task_run_id=t3.id, actor="alice")
    replay = await wait_for_end(engine.store, engine.notifier, new_id, timeout=60)

    assert replay.state == "SUCCESS"
    assert [r.taskId for r in replay.taskruns.values()] == ["t1", "t2", "t3", "t4", "t5"]
    # Only the tail ran in the replay; t1 and t2 are the origin's, outputs and all.
    assert await _attempts_run(engine, new_id) == Counter({"t3": 1, "t4": 1, "t5": 1})
    assert await _attempts_run(engine, origin.id) == Counter({"t1": 1, "t2": 1, "t3": 1})
    assert _run(replay, "t1").outputs == {"value": f"made by {origin.id}"}
    assert _run(replay, "t4").outputs == {"value": f"made by {origin.id} and t2 then t4"}
    assert _run(replay, "t5").outputs == {"value": f"t5 in {new_id}"}
    assert len(_run(replay, "t3").attempts) == 1

    # Each side knows the other.
    assert replay.replayOf == origin.id and replay.originalId == origin.id
    assert ("system.replay", "true") in replay.labels
    after = await load_execution(engine.store, origin.id)
    assert after.state == "FAILED" and after.replays == (new_id,)
    assert execution_json(after)["replays"] == [new_id]
    assert execution_json(replay)["replayOf"] == origin.id
    events = await execution_history(engine.store, origin.id)
    replayed = [e for e in events if isinstance(e.event, ev.ExecutionReplayed)]
    assert replayed[0].meta["actor"] == "alice"
    await _verified(engine, origin.id)
    await _verified(engine, new_id)


async def test_replay_without_a_task_run_runs_everything_again(
    engine: ServerContext, ns: str
) -> None:
    origin = await _failed_five(engine, ns)
    new_id = await replay_execution(engine.store, origin.id, actor="alice")
    replay = await wait_for_end(engine.store, engine.notifier, new_id, timeout=60)
    assert replay.state == "SUCCESS"
    assert await _attempts_run(engine, new_id) == Counter({f"t{i}": 1 for i in range(1, 6)})
    assert _run(replay, "t1").outputs == {"value": f"made by {new_id}"}
    await _verified(engine, new_id)


async def test_replay_on_another_revision_runs_the_tail_of_that_revision(
    engine: ServerContext, ns: str
) -> None:
    origin = await _failed_five(engine, ns)
    second = FIVE_TASKS.format(ns=ns).replace("then t4", "then t4 of revision 2")
    assert (await deploy_flow(engine.store, second)).revision == 2
    new_id = await replay_execution(
        engine.store, origin.id, task_run_id=_run(origin, "t3").id, revision=2, actor="alice"
    )
    replay = await wait_for_end(engine.store, engine.notifier, new_id, timeout=60)
    assert replay.state == "SUCCESS" and replay.flowRevision == 2
    assert _run(replay, "t4").outputs == {
        "value": f"made by {origin.id} and t2 then t4 of revision 2"
    }
    with pytest.raises(NotFound, match="no revision 7"):
        await replay_execution(engine.store, origin.id, revision=7, actor="alice")


async def test_replay_from_a_task_inside_a_loop_keeps_the_iterations_before_it(
    engine: ServerContext, ns: str
) -> None:
    source = f"""
id: loop
namespace: {ns}
tasks:
  - id: each
    type: io.kestra.plugin.core.flow.ForEach
    values: ["a", "b", "c"]
    tasks:
      - id: step
        type: io.kestra.plugin.core.execution.Fail
        condition: "{{{{ taskrun.value == 'b' and execution.originalId == execution.id }}}}"
  - id: after
    type: io.kestra.plugin.core.debug.Return
    format: done
"""
    origin = await run_flow(engine, source)
    assert origin.state == "FAILED"
    failed = next(r for r in origin.taskruns.values() if r.state == "FAILED" and r.value == "b")
    new_id = await replay_execution(engine.store, origin.id, task_run_id=failed.id, actor="bob")
    replay = await wait_for_end(engine.store, engine.notifier, new_id, timeout=60)
    assert replay.state == "SUCCESS"
    ran = await _attempts_run(engine, new_id)
    assert ran == Counter({"step": 2, "after": 1})  # b and c; a is the origin's
    assert sorted(r.value for r in replay.taskruns.values() if r.taskId == "step") == [
        "a",
        "b",
        "c",
    ]
    await _verified(engine, new_id)


async def test_restart_reruns_only_the_failed_task_as_attempt_two_of_the_same_execution(
    engine: ServerContext, ns: str
) -> None:
    origin = await _failed_five(engine, ns)
    await restart_execution(engine.store, origin.id, actor="carol", reason="fixed upstream")
    state = await wait_for_end(engine.store, engine.notifier, origin.id, timeout=60)

    assert state.state == "SUCCESS"
    assert [s for s, _ in state.histories] == [
        "CREATED",
        "RUNNING",
        "FAILED",
        "RESTARTED",
        "RUNNING",
        "SUCCESS",
    ]
    assert await _attempts_run(engine, origin.id) == Counter(
        {"t1": 1, "t2": 1, "t3": 2, "t4": 1, "t5": 1}
    )
    t3 = _run(state, "t3")
    assert [a.state for a in t3.attempts] == ["FAILED", "SUCCESS"]
    assert [s for s, _ in t3.histories][-3:] == ["FAILED", "RESTARTED", "RUNNING"] or [
        s for s, _ in t3.histories
    ][-2:] == ["RUNNING", "SUCCESS"]
    assert ("system.restarted", "true") in state.labels
    assert execution_json(state)["metadata"]["attemptNumber"] == 2
    history = await execution_history(engine.store, origin.id)
    restarted = next(e for e in history if isinstance(e.event, ev.ExecutionRestarted))
    assert restarted.meta == {**restarted.meta, "actor": "carol", "reason": "fixed upstream"}
    await _verified(engine, origin.id)


async def test_restart_reruns_a_failed_task_inside_a_flowable_and_the_errors_branch_again(
    engine: ServerContext, ns: str
) -> None:
    source = f"""
id: nested
namespace: {ns}
tasks:
  - id: group
    type: io.kestra.plugin.core.flow.Sequential
    tasks:
      - id: ok
        type: io.kestra.plugin.core.debug.Return
        format: fine
      - id: flaky
        type: io.kestra.plugin.core.execution.Fail
        condition: "{{{{ taskrun.attemptsCount < 2 }}}}"
  - id: last
    type: io.kestra.plugin.core.debug.Return
    format: end
errors:
  - id: handler
    type: io.kestra.plugin.core.debug.Return
    format: handled
"""
    origin = await run_flow(engine, source)
    assert origin.state == "FAILED"
    assert _run(origin, "handler").state == "SUCCESS"

    await restart_execution(engine.store, origin.id, actor="carol")
    again = await wait_for_end(engine.store, engine.notifier, origin.id, timeout=60)
    assert again.state == "FAILED"  # attempt 2 fails too: the errors branch runs again
    handlers = [r for r in again.taskruns.values() if r.taskId == "handler"]
    assert len(handlers) == 1 and handlers[0].id != _run(origin, "handler").id

    await restart_execution(engine.store, origin.id, actor="carol")
    done = await wait_for_end(engine.store, engine.notifier, origin.id, timeout=60)
    assert done.state == "SUCCESS"
    assert [a.state for a in _run(done, "flaky").attempts] == ["FAILED", "FAILED", "SUCCESS"]
    assert len(_run(done, "ok").attempts) == 1
    assert _run(done, "group").state == "SUCCESS" and _run(done, "last").state == "SUCCESS"
    assert not any(r.taskId == "handler" for r in done.taskruns.values())
    await _verified(engine, origin.id)


async def test_change_state_of_a_failed_task_run_to_success_lets_the_execution_go_on(
    engine: ServerContext, ns: str
) -> None:
    origin = await _failed_five(engine, ns)
    t3 = _run(origin, "t3")
    await change_task_run_state(engine.store, origin.id, t3.id, "SUCCESS", actor="dan")
    state = await wait_for_end(engine.store, engine.notifier, origin.id, timeout=60)
    assert state.state == "SUCCESS"
    assert _run(state, "t3").state == "SUCCESS"
    assert await _attempts_run(engine, origin.id) == Counter(
        {"t1": 1, "t2": 1, "t3": 1, "t4": 1, "t5": 1}
    )
    # And back: a success set to FAILED ends the execution FAILED.
    t5 = _run(state, "t5")
    await change_task_run_state(engine.store, origin.id, t5.id, "failed", actor="dan")
    failed = await wait_for_end(engine.store, engine.notifier, origin.id, timeout=60)
    assert failed.state == "FAILED" and _run(failed, "t5").state == "FAILED"
    await _verified(engine, origin.id)

    with pytest.raises(InvalidRequest, match="SUCCESS, WARNING, FAILED"):
        await change_task_run_state(engine.store, origin.id, t5.id, "RUNNING", actor="dan")
    with pytest.raises(NotFound, match="no task run nope"):
        await change_task_run_state(engine.store, origin.id, "nope", "SUCCESS", actor="dan")
    with pytest.raises(Conflict, match="FAILED already"):
        await change_task_run_state(engine.store, origin.id, t5.id, "FAILED", actor="dan")


SLOW = """
id: slow
namespace: {ns}
tasks:
  - id: first
    type: io.kestra.plugin.core.flow.Sleep
    duration: PT1S
  - id: second
    type: io.kestra.plugin.core.debug.Return
    format: two
"""


async def _running(ctx: ServerContext, ns: str) -> str:
    record = await deploy_flow(ctx.store, SLOW.format(ns=ns))
    xid = await create_execution(ctx.store, record.namespace, record.id, {})
    with trio.fail_after(30):
        while (await load_execution(ctx.store, xid)).state != "RUNNING":
            await trio.sleep(0.05)
    return xid


async def test_a_paused_execution_starts_nothing_until_it_is_resumed(
    engine: ServerContext, ns: str
) -> None:
    xid = await _running(engine, ns)
    await pause_execution(engine.store, xid, actor="erin", reason="maintenance")
    paused = await wait_for_end(engine.store, engine.notifier, xid, timeout=30, until_paused=True)
    assert paused.state == "PAUSED"
    with pytest.raises(Conflict, match="paused already"):
        await pause_execution(engine.store, xid, actor="erin")
    await trio.sleep(2.0)  # the Sleep ends meanwhile: nothing after it starts
    held = await load_execution(engine.store, xid)
    assert held.state == "PAUSED"
    assert not any(r.taskId == "second" for r in held.taskruns.values())

    await resume_execution(engine.store, xid, actor="erin")
    done = await wait_for_end(engine.store, engine.notifier, xid, timeout=30)
    assert done.state == "SUCCESS"
    assert [s for s, _ in done.histories][-3:] == ["PAUSED", "RUNNING", "SUCCESS"]
    assert _run(done, "second").outputs == {"value": "two"}
    with pytest.raises(Conflict, match="only a RUNNING execution can be paused"):
        await pause_execution(engine.store, xid, actor="erin")
    await _verified(engine, xid)


async def test_a_paused_execution_can_be_killed(engine: ServerContext, ns: str) -> None:
    xid = await _running(engine, ns)
    await pause_execution(engine.store, xid, actor="erin")
    await wait_for_end(engine.store, engine.notifier, xid, timeout=30, until_paused=True)
    await kill_execution(engine.store, xid, actor="erin")
    killed = await wait_for_end(engine.store, engine.notifier, xid, timeout=30)
    assert killed.state == "KILLED"
    # A killed execution restarts from where it was killed.
    await restart_execution(engine.store, xid, actor="erin")
    done = await wait_for_end(engine.store, engine.notifier, xid, timeout=30)
    assert done.state == "SUCCESS"
    assert _run(done, "second").state == "SUCCESS"
    await _verified(engine, xid)


async def test_labels_of_an_ended_execution_are_set_and_system_labels_stay(
    engine: ServerContext, ns: str
) -> None:
    origin = await _failed_five(engine, ns)
    await set_labels(
        engine.store,
        origin.id,
        [{"key": "team", "value": "data"}, {"key": "cause", "value": "upstream"}],
        actor="fay",
    )
    state = await load_execution(engine.store, origin.id)
    assert dict(state.labels) == {
        "system.correlationId": origin.id,
        "team": "data",
        "cause": "upstream",
    }
    await set_labels(engine.store, origin.id, [{"key": "team", "value": "ops"}], actor="fay")
    assert dict((await load_execution(engine.store, origin.id)).labels) == {
        "system.correlationId": origin.id,
        "team": "ops",
    }
    with pytest.raises(InvalidRequest, match="system labels"):
        await set_labels(engine.store, origin.id, [{"key": "system.x", "value": "1"}], actor="f")
    with pytest.raises(InvalidRequest, match="Label 1"):
        await set_labels(engine.store, origin.id, [{"value": "1"}], actor="fay")  # type: ignore[list-item]
    await _verified(engine, origin.id)


async def test_each_action_is_refused_when_the_state_does_not_allow_it(
    engine: ServerContext, ns: str
) -> None:
    source = FIVE_TASKS.format(ns=ns).replace("execution.Fail", "debug.Return")
    ok = await run_flow(engine, source.replace("condition:", "format:"))
    assert ok.state == "SUCCESS"
    with pytest.raises(Conflict, match="only a FAILED or KILLED execution can be restarted"):
        await restart_execution(engine.store, ok.id, actor="gus")
    with pytest.raises(Conflict, match="only a RUNNING execution can be paused"):
        await pause_execution(engine.store, ok.id, actor="gus")
    with pytest.raises(Conflict, match="not PAUSED"):
        await resume_execution(engine.store, ok.id, actor="gus")
    with pytest.raises(NotFound, match="no task run nope"):
        await replay_execution(engine.store, ok.id, task_run_id="nope", actor="gus")
    with pytest.raises(NotFound):
        await restart_execution(engine.store, "nope-such-execution", actor="gus")

    running = await _running(engine, ns)
    with pytest.raises(Conflict, match="only an ended execution can be replayed"):
        await replay_execution(engine.store, running, actor="gus")
    with pytest.raises(Conflict, match="labels of an execution are set once it has ended"):
        await set_labels(engine.store, running, [{"key": "a", "value": "b"}], actor="gus")
    with pytest.raises(Conflict, match="only a FAILED or KILLED"):
        await restart_execution(engine.store, running, actor="gus")
    first = next(iter((await load_execution(engine.store, running)).taskruns.values()))
    if first.state not in ("SUCCESS",):
        with pytest.raises(Conflict, match="only an ended task run"):
            await change_task_run_state(engine.store, running, first.id, "SUCCESS", actor="gus")
    await wait_for_end(engine.store, engine.notifier, running, timeout=30)


async def test_a_retried_replay_request_makes_one_replay(engine: ServerContext, ns: str) -> None:
    origin = await _failed_five(engine, ns)
    first = await replay_execution(engine.store, origin.id, actor="h", command_id="req-1")
    again = await replay_execution(engine.store, origin.id, actor="h", command_id="req-1")
    assert first == again
    assert (await load_execution(engine.store, origin.id)).replays == (first,)
    await wait_for_end(engine.store, engine.notifier, first, timeout=60)


def _alive(pid: int) -> bool:
    """Whether the process runs (a zombie waiting for its parent does not count)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


async def test_kill_stops_the_scripts_of_parallel_foreach_and_subflow_children(
    engine: ServerContext, ns: str, tmp_path: Path
) -> None:
    def script(name: str) -> str:
        return (
            "        type: io.kestra.plugin.scripts.shell.Commands\n"
            "        commands:\n"
            f'          - sleep 60 & echo $! > "{tmp_path}/{name}"; wait\n'
        )

    child = f"id: child\nnamespace: {ns}\ntasks:\n  - id: deep\n" + script("sub").replace(
        "        ", "    ", 3
    )
    parent = f"""
id: parent
namespace: {ns}
tasks:
  - id: side
    type: io.kestra.plugin.core.flow.Parallel
    tasks:
      - id: p1
{script("p1")}      - id: p2
{script("p2")}      - id: each
        type: io.kestra.plugin.core.flow.ForEach
        values: ["a", "b"]
        concurrencyLimit: 0
        tasks:
          - id: item
            type: io.kestra.plugin.scripts.shell.Commands
            commands:
              - sleep 60 & echo $! > "{tmp_path}/item-{{{{ taskrun.value }}}}"; wait
      - id: sub
        type: io.kestra.plugin.core.flow.Subflow
        namespace: {ns}
        flowId: child
  - id: never
    type: io.kestra.plugin.core.debug.Return
    format: never
"""
    await deploy_flow(engine.store, child)
    await deploy_flow(engine.store, parent)
    xid = await create_execution(engine.store, ns, "parent", {})
    names = ["p1", "p2", "item-a", "item-b", "sub"]

    def pids() -> dict[str, int]:
        found = {}
        for name in names:
            text = (tmp_path / name).read_text().strip() if (tmp_path / name).exists() else ""
            if text.isdigit():
                found[name] = int(text)
        return found

    with trio.fail_after(60):
        while len(pids()) < len(names):
            await trio.sleep(0.1)
    running = pids()
    assert all(_alive(pid) for pid in running.values())
    await kill_execution(engine.store, xid, actor="ivy")
    with trio.fail_after(10):
        while any(_alive(pid) for pid in running.values()):
            await trio.sleep(0.1)
    state = await wait_for_end(engine.store, engine.notifier, xid, timeout=30)
    assert state.state == "KILLED"
    assert not any(r.taskId == "never" for r in state.taskruns.values())
    assert {r.state for r in state.taskruns.values()} == {"KILLED"}
    [child_id] = [c[0] for c in state.subflows.values()]
    assert (await wait_for_end(engine.store, engine.notifier, child_id, timeout=30)).state == (
        "KILLED"
    )
    await _verified(engine, xid)


async def test_restart_of_a_failed_subflow_task_starts_a_new_child_execution(
    engine: ServerContext, ns: str, tmp_path: Path
) -> None:
    child = f"""
id: child
namespace: {ns}
tasks:
  - id: check
    type: io.kestra.plugin.scripts.shell.Commands
    commands:
      - test -f "{tmp_path}/go"
"""
    parent = f"""
id: parent
namespace: {ns}
tasks:
  - id: sub
    type: io.kestra.plugin.core.flow.Subflow
    namespace: {ns}
    flowId: child
  - id: after
    type: io.kestra.plugin.core.debug.Return
    format: after
"""
    await deploy_flow(engine.store, child)
    origin = await run_flow(engine, parent)
    assert origin.state == "FAILED"
    [(first_child, _)] = origin.subflows.values()

    (tmp_path / "go").write_text("")
    await restart_execution(engine.store, origin.id, actor="jo")
    done = await wait_for_end(engine.store, engine.notifier, origin.id, timeout=60)
    assert done.state == "SUCCESS"
    [(second_child, state)] = done.subflows.values()
    assert second_child != first_child and state == "SUCCESS"
    assert (await load_execution(engine.store, first_child)).state == "FAILED"
    assert _run(done, "after").outputs == {"value": "after"}
    await _verified(engine, origin.id)


async def test_a_replay_keeping_large_outputs_records_them_in_internal_storage(
    engine: ServerContext, ns: str
) -> None:
    source = f"""
id: big
namespace: {ns}
tasks:
  - id: t1
    type: io.kestra.plugin.core.debug.Return
    format: "{{{{ 'x' * 400000 }}}}"
  - id: t2
    type: io.kestra.plugin.core.execution.Fail
    condition: "{{{{ execution.originalId == execution.id }}}}"
"""
    origin = await run_flow(engine, source)
    assert origin.state == "FAILED"
    new_id = await replay_execution(
        engine.store, origin.id, task_run_id=_run(origin, "t2").id, actor="kim"
    )
    replay = await wait_for_end(engine.store, engine.notifier, new_id, timeout=60)
    assert replay.state == "SUCCESS"
    assert _run(replay, "t1").outputs == {"value": "x" * 400000}
    row = await engine.db.fetchone(
        "SELECT data->>'taskRunsUri' AS uri, length(data::text) AS size FROM events"
        " WHERE stream_id = %s AND type = 'ExecutionCreated'",
        (ev.execution_stream(new_id),),
    )
    assert row is not None and row["uri"] and row["size"] < 100_000
    await _verified(engine, new_id)


def test_sys_verify_refolds_every_history_this_file_recorded(
    database_url: str, history_start: int
) -> None:
    assert_refolds_since(database_url, history_start)
