"""Core tasks run by workers, end to end: states, files, resume, toggles, output limits.

KV, OutputValues, Fetch, HTTP and secrets are covered in test_kv_state_http.py."""

from __future__ import annotations

import pytest
import trio

from engine.commands import create_execution, deploy_flow, load_execution, wait_for_end
from engine.execution import Execution
from engine.server import ServerContext
from tests.integration.conftest import run_flow


def _out(state: Execution, task_id: str) -> dict:
    runs = [r for r in state.taskruns.values() if r.taskId == task_id]
    assert runs, f"no task run of {task_id}"
    return runs[-1].outputs or {}


def _messages(state: Execution) -> list[str]:
    return [r.message for r in state.taskruns.values() if r.message]


async def test_states_merge_and_are_kept_per_loop_value(engine: ServerContext, ns: str) -> None:
    source = f"""
id: counter
namespace: {ns}
tasks:
  - id: each
    type: io.kestra.plugin.core.flow.ForEach
    values: ["a", "b"]
    tasks:
      - id: read
        type: io.kestra.plugin.core.state.Get
        name: seen
      - id: write
        type: io.kestra.plugin.core.state.Set
        name: seen
        data:
          runs: "{{{{ (outputs.read[taskrun.value].data.runs ?? 0) | number + 1 }}}}"
          value: "{{{{ taskrun.value }}}}"
"""
    first = await run_flow(engine, source)
    assert first.state == "SUCCESS", _messages(first)
    second = await run_flow(engine, source)
    reads = sorted(
        (r.value, (r.outputs or {}).get("data"))
        for r in second.taskruns.values()
        if r.taskId == "read"
    )
    assert reads == [("a", {"runs": "1", "value": "a"}), ("b", {"runs": "1", "value": "b"})]
    writes = [r.outputs for r in second.taskruns.values() if r.taskId == "write"]
    assert writes == [{"count": 2}, {"count": 2}]


async def test_files_are_shared_inside_a_working_directory(engine: ServerContext, ns: str) -> None:
    state = await run_flow(
        engine,
        f"""
id: shared
namespace: {ns}
tasks:
  - id: dir
    type: io.kestra.plugin.core.flow.WorkingDirectory
    inputFiles:
      seed.txt: "from {{{{ flow.id }}}}"
    tasks:
      - id: write
        type: io.kestra.plugin.core.storage.LocalFiles
        inputs:
          out/data.txt: "{{{{ taskrun.id }}}}"
      - id: keep
        type: io.kestra.plugin.core.storage.LocalFiles
        outputs:
          - "out/*"
          - seed.txt
  - id: show
    type: io.kestra.plugin.core.debug.Return
    format: "{{{{ read(outputs.keep.uris['seed.txt']) }}}}"
""",
    )
    assert state.state == "SUCCESS", _messages(state)
    uris = _out(state, "keep")["uris"]
    write_run = next(r for r in state.taskruns.values() if r.taskId == "write")
    assert engine.storage is not None
    assert engine.storage.read_bytes(uris["out/data.txt"]).decode() == write_run.id
    assert _out(state, "show") == {"value": "from shared"}


async def test_resume_task_resumes_a_paused_execution(engine: ServerContext, ns: str) -> None:
    paused = await deploy_flow(
        engine.store,
        f"""
id: waiting
namespace: {ns}
tasks:
  - id: gate
    type: io.kestra.plugin.core.flow.Pause
    onResume:
      - id: note
        type: STRING
  - id: after
    type: io.kestra.plugin.core.debug.Return
    format: "{{{{ outputs.gate.onResume.note }}}}"
""",
    )
    xid = await create_execution(engine.store, paused.namespace, paused.id)
    with trio.fail_after(20):
        while (await load_execution(engine.store, xid)).state != "PAUSED":
            await trio.sleep(0.05)
    resumer = await run_flow(
        engine,
        f"""
id: resumer
namespace: {ns}
inputs:
  - id: target
    type: STRING
tasks:
  - id: go
    type: io.kestra.plugin.core.execution.Resume
    executionId: "{{{{ inputs.target }}}}"
    inputs:
      note: approved by {{{{ flow.id }}}}
""",
        {"target": xid},
    )
    assert resumer.state == "SUCCESS", _messages(resumer)
    resumed = await wait_for_end(engine.store, engine.notifier, xid, timeout=30)
    assert _out(resumed, "after") == {"value": "approved by resumer"}


async def test_outputs_over_the_limit_of_a_task_fail_it(
    engine: ServerContext, ns: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The limit is 16 MB; a smaller one keeps the test quick.
    monkeypatch.setattr("engine.worker.MAX_OUTPUT_BYTES", 1024 * 1024)
    state = await run_flow(
        engine,
        f"""
id: big
namespace: {ns}
tasks:
  - id: huge
    type: io.kestra.plugin.core.debug.Return
    format: "{{{{ range(1, 200000) | join(',') }}}}"
""",
    )
    assert state.state == "FAILED"
    assert "over the 1048576 bytes a task may return" in _messages(state)[0]


async def test_toggle_records_a_trigger_state_and_refuses_unknown_triggers(
    engine: ServerContext, ns: str
) -> None:
    from engine.commands import trigger_enabled

    state = await run_flow(
        engine,
        f"""
id: toggler
namespace: {ns}
tasks:
  - id: disable_it
    type: io.kestra.plugin.core.trigger.Toggle
    trigger: nightly
    enabled: false
  - id: unknown
    type: io.kestra.plugin.core.trigger.Toggle
    trigger: nope
triggers:
  - id: nightly
    type: io.kestra.plugin.core.trigger.Schedule
    cron: "0 2 * * *"
""",
    )
    assert await trigger_enabled(engine.store, ns, "toggler", "nightly") is False
    assert state.state == "FAILED" and "no trigger 'nope'" in _messages(state)[0]


async def test_working_directory_output_files_are_kept(engine: ServerContext, ns: str) -> None:
    state = await run_flow(
        engine,
        f"""
id: wdout
namespace: {ns}
tasks:
  - id: dir
    type: io.kestra.plugin.core.flow.WorkingDirectory
    outputFiles:
      - "*.txt"
    tasks:
      - id: first
        type: io.kestra.plugin.core.storage.LocalFiles
        inputs:
          a.txt: one
          b.txt: two
      - id: second
        type: io.kestra.plugin.core.storage.LocalFiles
        inputs:
          a.txt: changed
""",
    )
    assert state.state == "SUCCESS", _messages(state)
    files = _out(state, "dir")["outputFiles"]
    assert set(files) == {"a.txt", "b.txt"}
    assert engine.storage is not None
    assert engine.storage.read_bytes(files["a.txt"]) == b"changed"
