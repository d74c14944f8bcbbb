"""Script tasks and LocalFiles as real subprocesses and files, run end to end by the engine:
logs, exit codes, the outputs protocol, input and output files, timeouts."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import pytest
import trio

from engine.commands import create_execution, deploy_flow, wait_for_end
from engine.errors import FlowValidationError
from engine.execution import Execution, TaskRun
from engine.flow import parse_flow
from engine.server import ServerContext


class Run:
    """An ended execution, with its task runs by task id, log lines and metrics."""

    def __init__(self, state: Execution, events: list[Any]) -> None:
        self.state = state
        self.runs: dict[str, TaskRun] = {r.taskId: r for r in state.taskruns.values()}
        self.logs: list[tuple[str, str, str]] = []
        self.metrics: list[dict[str, Any]] = []
        for e in events:
            if e.type == "AttemptLogged":
                self.logs.extend((e.event.taskId, x["level"], x["message"]) for x in e.event.lines)
            elif e.type == "AttemptSucceeded":
                self.metrics.extend(e.event.metrics)

    def outputs(self, task_id: str) -> dict[str, Any]:
        return self.runs[task_id].outputs or {}

    def messages(self) -> list[str | None]:
        return [r.message for r in self.runs.values() if r.message]


async def _run(engine: ServerContext, source: str) -> Run:
    record = await deploy_flow(engine.store, source)
    xid = await create_execution(engine.store, record.namespace, record.id)
    state = await wait_for_end(engine.store, engine.notifier, xid, timeout=60)
    return Run(state, await engine.store.read_execution(xid))


def _read(engine: ServerContext, uri: str) -> bytes:
    assert engine.storage is not None
    return engine.storage.read_bytes(uri)


async def test_shell_commands_log_stdout_with_env_and_before_commands(
    engine: ServerContext, ns: str
) -> None:
    run = await _run(
        engine,
        f"""
id: sh
namespace: {ns}
tasks:
  - id: greet
    type: io.kestra.plugin.scripts.shell.Commands
    containerImage: ubuntu
    taskRunner:
      type: io.kestra.plugin.core.runner.Process
    env:
      GREETING: "hello {{{{ flow.id }}}}"
    beforeCommands:
      - export SUFFIX=!
    commands:
      - echo "$GREETING$SUFFIX"
      - echo "in $(basename "$WORKING_DIR") = $(basename "{{{{ workingDir }}}}")"
      - echo oops >&2
""",
    )
    assert run.state.state == "SUCCESS", run.messages()
    assert ("greet", "INFO", "hello sh!") in run.logs
    assert ("greet", "ERROR", "oops") in run.logs
    line = next(m for t, _, m in run.logs if m.startswith("in "))
    left, right = line[3:].split(" = ")
    assert left == right
    assert run.outputs("greet") == {"exitCode": 0, "vars": {}}


async def test_non_zero_exit_fails_the_task_with_the_exit_code(
    engine: ServerContext, ns: str
) -> None:
    run = await _run(
        engine,
        f"""
id: broken
namespace: {ns}
tasks:
  - id: going_on
    type: io.kestra.plugin.scripts.shell.Commands
    failFast: false
    commands:
      - "false"
      - echo still here
  - id: broken
    type: io.kestra.plugin.scripts.shell.Script
    script: |
      echo before
      exit 3
      echo never
  - id: not_reached
    type: io.kestra.plugin.core.debug.Return
    format: x
""",
    )
    assert run.runs["going_on"].state == "SUCCESS"
    assert ("going_on", "INFO", "still here") in run.logs
    broken = run.runs["broken"]
    assert broken.state == "FAILED"
    assert broken.message == "Command failed with exit code 3"
    assert run.outputs("broken")["exitCode"] == 3
    assert ("broken", "INFO", "before") in run.logs
    assert ("broken", "INFO", "never") not in run.logs
    assert "not_reached" not in run.runs
    assert run.state.state == "FAILED"


async def test_failing_command_stops_the_others_by_default(engine: ServerContext, ns: str) -> None:
    run = await _run(
        engine,
        f"""
id: failfast
namespace: {ns}
tasks:
  - id: cmds
    type: io.kestra.plugin.scripts.shell.Commands
    commands:
      - echo one
      - ls /no/such/folder
      - echo two
""",
    )
    assert run.runs["cmds"].state == "FAILED"
    assert "exit code" in (run.runs["cmds"].message or "")
    assert ("cmds", "INFO", "one") in run.logs
    assert ("cmds", "INFO", "two") not in run.logs


async def test_python_script_outputs_reach_the_next_task(engine: ServerContext, ns: str) -> None:
    run = await _run(
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
      print('::{{"metrics": [{{"name": "raw", "type": "timer", "value": 1.5}}]}}::')
  - id: with_library
    type: io.kestra.plugin.scripts.python.Script
    script: |
      from kestra import Kestra
      Kestra.outputs({{"doubled": {{{{ outputs.compute.vars.answer }}}} * 2}})
      Kestra.counter("rows", 3, {{"table": "t"}})
      Kestra.timer("slept", lambda: None)
      Kestra.logger().warning("careful")
      import os
      print(os.path.basename(__file__).endswith(".py"))
  - id: use
    type: io.kestra.plugin.core.debug.Return
    format: "{{{{ outputs.compute.vars.answer }}}} {{{{ outputs.compute.vars.who }}}} {{{{ outputs.with_library.vars.doubled }}}}"
""",
    )
    assert run.state.state == "SUCCESS", run.messages()
    assert run.outputs("compute") == {"exitCode": 0, "vars": {"answer": 42, "who": "py"}}
    assert run.outputs("use") == {"value": "42 py 84"}
    assert ("compute", "INFO", "computing in python 3") in run.logs
    assert ("with_library", "WARN", "careful") in run.logs
    assert ("with_library", "INFO", "True") in run.logs
    assert not any(message.startswith("::") for _, _, message in run.logs)
    by_name = {m["name"]: m for m in run.metrics}
    assert by_name["rows"] == {
        "name": "rows",
        "type": "counter",
        "value": 3,
        "tags": {"table": "t"},
    }
    assert by_name["raw"]["type"] == "timer" and by_name["raw"]["value"] == 1.5
    assert by_name["slept"]["type"] == "timer"


async def test_python_commands_run_a_virtualenv_of_the_worker_python(
    engine: ServerContext, ns: str
) -> None:
    run = await _run(
        engine,
        f"""
id: pycmd
namespace: {ns}
tasks:
  - id: cmds
    type: io.kestra.plugin.scripts.python.Commands
    inputFiles:
      main.py: |
        import sys
        from kestra import Kestra
        Kestra.outputs({{"version": list(sys.version_info[:3]), "args": sys.argv[1:],
                        "venv": sys.prefix != sys.base_prefix, "base": sys.base_prefix}})
    commands:
      - python main.py a "b c"
""",
    )
    assert run.state.state == "SUCCESS", run.messages()
    assert run.outputs("cmds")["vars"] == {
        "version": list(sys.version_info[:3]),
        "args": ["a", "b c"],
        "venv": True,
        "base": sys.base_prefix,
    }


async def test_output_files_are_stored_and_readable(engine: ServerContext, ns: str) -> None:
    run = await _run(
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
      - "reports/**"
    script: |
      tr a-z A-Z < data/in.txt > upper.csv
      mkdir -p reports/2024 && echo deep > reports/2024/q1.txt
      echo extra > "{{{{ outputDir }}}}/report.txt"
      echo ignored > notkept.txt
  - id: reuse
    type: io.kestra.plugin.scripts.shell.Commands
    inputFiles:
      copy.csv: "{{{{ outputs.make.outputFiles['upper.csv'] }}}}"
    commands:
      - cat copy.csv
""",
    )
    assert run.state.state == "SUCCESS", run.messages()
    files = run.outputs("make")["outputFiles"]
    assert set(files) == {"upper.csv", "reports/2024/q1.txt", "report.txt"}
    assert all(uri.startswith("kestra://") for uri in files.values())
    assert _read(engine, files["upper.csv"]) == b"LINE FROM FILES"
    assert _read(engine, files["reports/2024/q1.txt"]) == b"deep\n"
    assert _read(engine, files["report.txt"]) == b"extra\n"
    assert ("reuse", "INFO", "LINE FROM FILES") in run.logs


async def test_input_files_are_rendered_or_copied_from_storage(
    engine: ServerContext, ns: str
) -> None:
    run = await _run(
        engine,
        f"""
id: inputs
namespace: {ns}
tasks:
  - id: seed
    type: io.kestra.plugin.core.storage.LocalFiles
    inputs:
      seed.txt: "seeded"
    outputs:
      - seed.txt
  - id: consume
    type: io.kestra.plugin.scripts.shell.Commands
    inputFiles:
      nested/copy.txt: "{{{{ outputs.seed.uris['seed.txt'] }}}}"
      hello.txt: "hello from {{{{ flow.namespace }}}}"
    commands:
      - cat nested/copy.txt
      - echo
      - cat hello.txt
  - id: as_json
    type: io.kestra.plugin.scripts.shell.Commands
    inputFiles: '{{{{ {{"a.txt": "from json"}} | json }}}}'
    commands:
      - cat a.txt
""",
    )
    assert run.state.state == "SUCCESS", run.messages()
    assert ("consume", "INFO", "seeded") in run.logs
    assert ("consume", "INFO", f"hello from {ns}") in run.logs
    assert ("as_json", "INFO", "from json") in run.logs


async def test_local_files_inputs_become_outputs(engine: ServerContext, ns: str) -> None:
    run = await _run(
        engine,
        f"""
id: local
namespace: {ns}
tasks:
  - id: dir
    type: io.kestra.plugin.core.flow.WorkingDirectory
    tasks:
      - id: write
        type: io.kestra.plugin.core.storage.LocalFiles
        inputs:
          hello.txt: "Hello {{{{ flow.id }}}}"
          sub/dir/a.txt: a
          sub/b.txt: b
      - id: shell
        type: io.kestra.core.tasks.scripts.Bash
        warningOnStdErr: false
        commands:
          - cat hello.txt > shout.txt
          - echo '!' >> shout.txt
      - id: keep
        type: io.kestra.core.tasks.storages.LocalFiles
        outputs:
          - "sub/**"
          - "*.txt"
          - missing.csv
""",
    )
    assert run.state.state == "SUCCESS", run.messages()
    uris = run.outputs("keep")["uris"]
    assert set(uris) == {"hello.txt", "shout.txt", "sub/dir/a.txt", "sub/b.txt"}
    assert _read(engine, uris["shout.txt"]) == b"Hello local!\n"
    assert _read(engine, uris["sub/dir/a.txt"]) == b"a"


async def test_timeout_kills_the_process_group(
    engine: ServerContext, ns: str, tmp_path: Path
) -> None:
    pid_file = tmp_path / "child.pid"
    with trio.fail_after(30):
        run = await _run(
            engine,
            f"""
id: slow
namespace: {ns}
tasks:
  - id: sleepy
    type: io.kestra.plugin.scripts.shell.Commands
    timeout: PT1S
    commands:
      - echo started
      - sleep 60 &
      - echo $! > {pid_file}
      - wait
""",
        )
    sleepy = run.runs["sleepy"]
    assert sleepy.state == "FAILED" and "Timeout" in (sleepy.message or "")
    assert ("sleepy", "INFO", "started") in run.logs
    child = int(pid_file.read_text())
    with trio.move_on_after(5):
        while _alive(child):
            await trio.sleep(0.05)
    assert not _alive(child)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie no one has reaped yet is dead for our purpose
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().split(")")[-1].split()[0] == "Z")


async def test_warning_on_stderr_ends_in_warning(engine: ServerContext, ns: str) -> None:
    run = await _run(
        engine,
        f"""
id: warn
namespace: {ns}
tasks:
  - id: noisy
    type: io.kestra.plugin.scripts.shell.Commands
    warningOnStdErr: true
    commands:
      - echo '::{{"outputs":{{"done":true}}}}::'
      - echo complaint >&2
""",
    )
    assert run.runs["noisy"].state == "WARNING"
    assert run.outputs("noisy")["vars"] == {"done": True}
    assert ("noisy", "ERROR", "complaint") in run.logs


async def test_legacy_bash_creates_named_output_files(engine: ServerContext, ns: str) -> None:
    run = await _run(
        engine,
        f"""
id: legacy
namespace: {ns}
tasks:
  - id: bash
    type: io.kestra.core.tasks.scripts.Bash
    interpreter: /bin/bash
    interpreterArgs: ["-c"]
    outputFiles:
      - first
    outputDirs:
      - many
    commands:
      - echo 1 >> {{{{ outputFiles.first }}}}
      - echo 2 > {{{{ outputDirs.many }}}}/two.txt
      - echo '::{{"outputs":{{"n":1}}}}::'
      - echo note >&2
""",
    )
    bash = run.runs["bash"]
    assert bash.state == "WARNING", run.messages()
    outputs = run.outputs("bash")
    assert outputs["vars"] == {"n": 1}
    assert set(outputs["outputFiles"]) == {"first", "many/two.txt"}
    assert _read(engine, outputs["files"]["first"]) == b"1\n"
    assert _read(engine, outputs["outputFiles"]["many/two.txt"]) == b"2\n"


async def test_legacy_python_runs_main_py_in_a_virtualenv(engine: ServerContext, ns: str) -> None:
    run = await _run(
        engine,
        f"""
id: legacypy
namespace: {ns}
tasks:
  - id: py
    type: io.kestra.core.tasks.scripts.Python
    args: ["{{{{ flow.id }}}}"]
    inputFiles:
      main.py: |
        import sys
        from kestra import Kestra
        Kestra.outputs({{"arg": sys.argv[1], "venv": sys.prefix != sys.base_prefix}})
""",
    )
    assert run.state.state == "SUCCESS", run.messages()
    assert run.outputs("py")["vars"] == {"arg": "legacypy", "venv": True}


def test_script_tasks_are_validated_when_the_flow_is_parsed() -> None:
    with pytest.raises(FlowValidationError) as error:
        parse_flow(
            """
id: invalid
namespace: test.scripts
tasks:
  - id: nothing
    type: io.kestra.plugin.scripts.shell.Commands
    commands: []
  - id: no_main
    type: io.kestra.core.tasks.scripts.Python
    inputFiles:
      other.py: "print(1)"
"""
        )
    text = str(error.value.details)
    assert "At least one command is required" in text and "main.py" in text
