"""Running script tasks as real subprocesses in the attempt's working directory.

Output lines are logged (stdout at INFO, stderr at WARN) unless they are Kestra's protocol
lines `::{"outputs": {...}}::`, `::{"metrics": [...]}::` or `::{"logs": [...]}::`, which set
output variables, report metrics and log at a chosen level.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import msgspec
import trio

from engine.plugin import RunContext, RunnableTask, TaskFailure, TaskWarning

PROTOCOL = re.compile(r"^::(\{.*\})::\s*$")
KESTRA_LIB = Path(__file__).parent / "kestra_lib"
OUTPUT_DIR = "outputs"


class ScriptTask(RunnableTask, kw_only=True):
    """What every script task accepts."""

    beforeCommands: list[str] = []
    """Commands to run first, in the same shell."""
    env: dict[str, Any] = {}
    """Environment variables for the process (templates rendered)."""
    inputFiles: Any = None
    """Files to create before running: a map of file name to content (a `kestra://` URI
    copies that stored file), or a template rendering such a map."""
    outputFiles: list[str] = []
    """Globs of files to keep in internal storage; output `outputFiles` maps each to its URI."""
    warningOnStdErr: bool = False
    """End in WARNING when the process wrote to stderr."""
    failFast: bool = True
    """Stop at the first failing command (`set -e`)."""
    interpreter: list[str] = msgspec.field(default_factory=lambda: ["/bin/sh", "-c"])
    """The interpreter that runs the commands."""
    containerImage: str | None = None
    """Accepted for compatibility: the process runs on the worker itself."""
    taskRunner: dict[str, Any] | None = None
    """Accepted for compatibility: the process runs on the worker itself."""
    docker: dict[str, Any] | None = None
    """Accepted for compatibility."""
    runner: str | None = None
    """Accepted for compatibility."""
    namespaceFiles: dict[str, Any] | None = None
    """Accepted for compatibility."""
    targetOS: str | None = None
    """Accepted for compatibility."""
    outputDirectory: bool = False
    """Accepted for compatibility: files written to `{{ outputDir }}` are always kept."""


async def prepare(ctx: RunContext, task: ScriptTask) -> None:
    """Expose `workingDir`/`outputDir` to templates and lay out the input files."""
    ctx.variables["workingDir"] = str(ctx.working_dir)
    (ctx.working_dir / OUTPUT_DIR).mkdir(parents=True, exist_ok=True)
    ctx.variables["outputDir"] = str(ctx.working_dir / OUTPUT_DIR)
    files = ctx.render(task.inputFiles) if task.inputFiles is not None else {}
    if isinstance(files, str):
        try:
            files = json.loads(files)
        except ValueError:
            raise TaskFailure("`inputFiles` must be a map of file name to content") from None
    if not isinstance(files, dict):
        raise TaskFailure("`inputFiles` must be a map of file name to content")
    for name, content in files.items():
        target = (ctx.working_dir / str(name)).resolve()
        if ctx.working_dir.resolve() not in target.parents:
            raise TaskFailure(f"Input file {name!r} leaves the working directory")
        target.parent.mkdir(parents=True, exist_ok=True)
        text = "" if content is None else str(content)
        if text.startswith("kestra://"):
            await ctx.get_file(text, target)
        else:
            target.write_text(text)


def environment(ctx: RunContext, task: ScriptTask, python: bool) -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    if python:
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(KESTRA_LIB), env.get("PYTHONPATH", "")) if p
        )
        env.setdefault("PYTHONUNBUFFERED", "1")
    env["WORKING_DIR"] = str(ctx.working_dir)
    env["OUTPUT_DIR"] = str(ctx.working_dir / OUTPUT_DIR)
    for key, value in (ctx.render(task.env) or {}).items():
        env[str(key)] = "" if value is None else str(value)
    return env


async def _kill_group(process: trio.Process) -> None:
    try:
        os.killpg(process.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    with trio.move_on_after(5):
        await process.wait()
        return
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


async def run(
    ctx: RunContext, task: ScriptTask, command: list[str], *, python: bool = False
) -> dict[str, Any]:
    """Run `command`, log its output, apply the protocol lines; outputs as Kestra's."""
    result = await trio.run_process(
        command,
        cwd=ctx.working_dir,
        env=environment(ctx, task, python),
        stdin=subprocess.DEVNULL,
        capture_stdout=True,
        capture_stderr=True,
        check=False,
        start_new_session=True,
        deliver_cancel=_kill_group,
    )
    variables: dict[str, Any] = {}
    for line in result.stdout.decode("utf-8", errors="replace").splitlines():
        if not _protocol(ctx, line, variables):
            ctx.log("INFO", line)
    stderr_lines = result.stderr.decode("utf-8", errors="replace").splitlines()
    for line in stderr_lines:
        if not _protocol(ctx, line, variables):
            ctx.log("WARN", line)
    outputs: dict[str, Any] = {"exitCode": result.returncode, "vars": variables}
    files = await _output_files(ctx, task)
    if files or task.outputFiles:
        outputs["outputFiles"] = files
    if result.returncode != 0:
        raise TaskFailure(f"Command failed with exit code {result.returncode}", outputs)
    if task.warningOnStdErr and stderr_lines:
        raise TaskWarning("The command wrote to stderr", outputs)
    return outputs


def _protocol(ctx: RunContext, line: str, variables: dict[str, Any]) -> bool:
    match = PROTOCOL.match(line.strip())
    if not match:
        return False
    try:
        message = json.loads(match.group(1))
    except ValueError:
        return False
    if not isinstance(message, dict):
        return False
    outputs = message.get("outputs")
    if isinstance(outputs, dict):
        variables.update(outputs)
    for metric in message.get("metrics") or []:
        if isinstance(metric, dict) and "name" in metric and "value" in metric:
            ctx.metric(
                str(metric["name"]),
                float(metric["value"]),
                str(metric.get("type", "counter")),
                {str(k): str(v) for k, v in (metric.get("tags") or {}).items()},
            )
    for entry in message.get("logs") or []:
        if isinstance(entry, dict):
            ctx.log(str(entry.get("level", "INFO")).upper(), str(entry.get("message", "")))
    return True


async def _output_files(ctx: RunContext, task: ScriptTask) -> dict[str, str]:
    found: dict[str, Path] = {}
    for pattern in task.outputFiles:
        for path in sorted(ctx.working_dir.glob(str(ctx.render(pattern)))):
            if path.is_file():
                found[path.relative_to(ctx.working_dir).as_posix()] = path
    out_dir = ctx.working_dir / OUTPUT_DIR
    for path in sorted(out_dir.rglob("*")):
        if path.is_file():
            found.setdefault(path.relative_to(out_dir).as_posix(), path)
    return {name: await ctx.put_file(path, name.replace("/", "__")) for name, path in found.items()}


def shell_text(fail_fast: bool, before: list[str], lines: list[str]) -> str:
    """The shell text running `before` then `lines` (stopping at the first failure)."""
    head = ["set -e"] if fail_fast else []
    return "\n".join([*head, *before, *lines]) + "\n"
