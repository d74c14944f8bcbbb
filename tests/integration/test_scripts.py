"""Script tasks as real subprocesses: logs, exit codes, the outputs protocol, files, timeouts."""

from __future__ import annotations

import trio

from engine.commands import create_execution, deploy_flow, wait_for_end
from engine.executor import Execution
from engine.server import ServerContext


async def _run(ctx: ServerContext, source: str) -> tuple[Execution, list[dict]]:
    record = await deploy_flow(ctx.store, source)
    xid = await create_execution(ctx.store, record.namespace, record.id)
    state = await wait_for_end(ctx.store, ctx.notifier, xid, timeout=60)
    logs = []
    for e in await ctx.store.read_execution(xid):
        if e.type == "AttemptLogged":
            logs.extend({"taskId": e.event.taskId, **line} for line in e.event.lines)
    return state, logs


def _runs(state: Execution) -> dict:
    return {r.taskId: r for r in state.taskruns.values()}


async def test_python_script_outputs_reach_the_next_task(engine: ServerContext, ns: str) -> None:
    state, logs = await _run(
        engine,
        f"""
id: py
namespace: {ns}
tasks:
  - id: compute
    type: io.kestra.plugin.scripts.python.Script
    script: |
      import json, platform
      print("computing in python", platform.python_version_tuple()[0])
      print('::' + json.dumps({{"outputs": {{"answer": 6 * 7, "who": "{{{{ flow.id }}}}"}}}}) + '::')
  - id: with_library
    type: io.kestra.plugin.scripts.python.Script
    script: |
      from kestra import Kestra
      Kestra.outputs({{"doubled": {{{{ outputs.compute.vars.answer }}}} * 2}})
      Kestra.counter("rows", 3, {{"table": "t"}})
  - id: use
    type: io.kestra.plugin.core.debug.Return
    format: "{{{{ outputs.compute.vars.answer }}}} {{{{ outputs.compute.vars.who }}}} {{{{ outputs.with_library.vars.doubled }}}}"
""",
    )
    runs = _runs(state)
    assert state.state == "SUCCESS", [r.message for r in runs.values()]
    assert runs["compute"].outputs == {"exitCode": 0, "vars": {"answer": 42, "who": "py"}}
    assert runs["use"].outputs == {"value": "42 py 84"}
    assert {"taskId": "compute", "level": "INFO"}.items() <= next(
        line for line in logs if line["message"] == "computing in python 3"
    ).items()
    assert not any(line["message"].startswith("::") for line in logs)


async def test_shell_commands_use_env_before_commands_and_fail_on_exit_code(
    engine: ServerContext, ns: str
) -> None:
    state, logs = await _run(
        engine,
        f"""
id: sh
namespace: {ns}
tasks:
  - id: ok
    type: io.kestra.plugin.scripts.shell.Commands
    env:
      GREETING: "hello {{{{ flow.id }}}}"
    beforeCommands:
      - export SUFFIX=!
    commands:
      - echo "$GREETING$SUFFIX"
      - echo oops >&2
  - id: broken
    type: io.kestra.plugin.scripts.shell.Commands
    commands:
      - echo before
      - exit 3
      - echo never
""",
    )
    runs = _runs(state)
    assert runs["ok"].state == "SUCCESS"
    messages = [(line["taskId"], line["level"], line["message"]) for line in logs]
    assert ("ok", "INFO", "hello sh!") in messages and ("ok", "WARN", "oops") in messages
    assert runs["broken"].state == "FAILED" and "exit code 3" in runs["broken"].message
    assert ("broken", "INFO", "before") in messages
    assert ("broken", "INFO", "never") not in messages
    assert state.state == "FAILED"


async def test_input_and_output_files_go_through_internal_storage(
    engine: ServerContext, ns: str
) -> None:
    state, _ = await _run(
        engine,
        f"""
id: files
namespace: {ns}
tasks:
  - id: make
    type: io.kestra.plugin.scripts.shell.Script
    inputFiles:
      data/in.txt: "line from {{{{ flow.id }}}}"
    outputFiles:
      - "*.csv"
    script: |
      tr a-z A-Z < data/in.txt > upper.csv
      echo extra > "{{{{ outputDir }}}}/report.txt"
  - id: reuse
    type: io.kestra.plugin.scripts.shell.Commands
    inputFiles:
      copy.csv: "{{{{ outputs.make.outputFiles['upper.csv'] }}}}"
    commands:
      - cat copy.csv
""",
    )
    runs = _runs(state)
    assert state.state == "SUCCESS", [r.message for r in runs.values()]
    files = runs["make"].outputs["outputFiles"]
    assert set(files) == {"upper.csv", "report.txt"}
    assert engine.storage is not None
    assert engine.storage.read_bytes(files["upper.csv"]) == b"LINE FROM FILES"
    assert engine.storage.read_bytes(files["report.txt"]) == b"extra\n"


async def test_timeout_kills_the_process(engine: ServerContext, ns: str) -> None:
    with trio.fail_after(30):
        state, _ = await _run(
            engine,
            f"""
id: slow
namespace: {ns}
tasks:
  - id: sleepy
    type: io.kestra.plugin.scripts.shell.Commands
    timeout: PT0.5S
    commands:
      - sleep 60
""",
        )
    run = _runs(state)["sleepy"]
    assert run.state == "FAILED" and "Timeout" in run.message
