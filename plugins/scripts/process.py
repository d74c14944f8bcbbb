"""Running script tasks as real subprocesses in the attempt's working directory.

Output is read line by line while the process runs: stdout lines are logged at INFO and stderr
lines at ERROR (as Kestra does since 0.21), except Kestra's protocol lines
`::{"outputs": {...}}::`, `::{"metrics": [...]}::` and `::{"logs": [...]}::`, which set output
variables, report metrics and log at a chosen level. The process runs in a session of its own, so
a timeout or a cancelled execution stops it and everything it started. That session also keeps
the worker's own signals out, so the group is tied to the worker's life by other means: it dies
with its worker, even one killed with kill -9.

The process gets an environment of its own, never the worker's: the worker's holds its database
URL, the master key and every `SECRET_*` variable. See `environment`.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import trio

from engine.plugin import RunContext, RunnableTask, TaskFailure, TaskWarning, parse_duration
from plugins.core.storage import file_map, keep_files, matching_files, write_input_files
from plugins.scripts import venvs

KESTRA_LIB = Path(__file__).parent / "kestra_lib"
"""Folder of the `kestra` module that Python scripts import."""
GRACE_SECONDS = 1.0
"""How long a stopped process group gets between SIGTERM and SIGKILL (a kill must be done
within 2 s, whatever the script does with SIGTERM)."""
MAX_LINE_BYTES = 1024 * 1024
"""A longer line without a newline is logged in pieces of this size."""
LEVELS = {"TRACE", "DEBUG", "INFO", "WARN", "ERROR"}
BASE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
"""The PATH of a script (a task's `env` may set another)."""
PASS_ENV = "TIERCEL_SCRIPT_ENV"
"""A worker variable listing (comma-separated) names of its own variables that scripts inherit,
such as HTTP_PROXY; the server's own (`SECRET_*`, `TIERCEL_*`, `PG*`) are never passed."""
NEVER_PASSED = ("SECRET_", "TIERCEL_", "PG")
SCRATCH = ".home"
"""The folder, in an attempt's output directory, that is the script's HOME and TMPDIR."""
LEVEL_ALIASES = {"WARNING": "WARN", "CRITICAL": "ERROR", "FATAL": "ERROR"}


class ScriptTask(RunnableTask, kw_only=True):
    """What every script task accepts."""

    beforeCommands: list[str] = []
    """Commands to run first, in the same shell (templates rendered)."""
    env: dict[str, Any] = {}
    """Environment variables of the process (templates rendered), besides a minimal PATH, HOME,
    TMPDIR, LANG, WORKING_DIR and OUTPUT_DIR; nothing of the worker's own environment is
    passed on."""
    inputFiles: Any = None
    """Files to create in the working directory before running: a map of file name to content
    (rendered; a `kestra://` URI copies that stored file), or a template rendering a JSON
    object of them."""
    outputFiles: list[str] = []
    """Globs of files to keep in internal storage, relative to the working directory (`*.csv`,
    `out/**`); output `outputFiles` maps each file's relative path to its URI."""
    warningOnStdErr: bool = False
    """End in WARNING when the process wrote to stderr (deprecated in Kestra)."""
    failFast: bool = True
    """Stop at the first failing command (the shell's `set -e`)."""
    interpreter: list[str] = msgspec.field(default_factory=lambda: ["/bin/sh", "-c"])
    """The interpreter and its arguments; the commands are passed as its last argument."""
    containerImage: str | None = None
    """Accepted for compatibility: the process runs on the worker itself."""
    taskRunner: dict[str, Any] | None = None
    """Accepted for compatibility: the process runs on the worker itself."""
    docker: dict[str, Any] | None = None
    """Accepted for compatibility: the process runs on the worker itself."""
    runner: str | None = None
    """Accepted for compatibility (PROCESS or DOCKER): the process runs on the worker itself."""
    namespaceFiles: dict[str, Any] | None = None
    """Accepted for compatibility: namespace files are not copied into the working directory."""
    targetOS: str | None = None
    """Accepted for compatibility: commands are joined for a POSIX shell."""
    outputDirectory: bool = False
    """Accepted for compatibility: files written to `{{ outputDir }}` are always kept."""


class OutputReader:
    """Reads a process's output lines: logs them, or applies Kestra's protocol lines."""

    def __init__(self, ctx: RunContext) -> None:
        self.ctx = ctx
        self.variables: dict[str, Any] = {}
        """Output variables set by `::{"outputs": ...}::` lines."""
        self.stderr_lines = 0

    def line(self, text: str, stderr: bool) -> None:
        """Handle one line of stdout or stderr."""
        if stderr:
            self.stderr_lines += 1
        if not self._apply(text):
            self.ctx.log("ERROR" if stderr else "INFO", text)

    def _apply(self, text: str) -> bool:
        if not (text.startswith("::{") and text.endswith("}::")):
            return False
        try:
            message = json.loads(text[2:-2])
        except ValueError as exc:
            self.ctx.log("WARN", f"Invalid protocol line ({exc}): {text}")
            return True
        if not isinstance(message, dict):
            return False
        outputs = message.get("outputs")
        if isinstance(outputs, dict):
            self.variables.update(outputs)
        for metric in _entries(message, "metrics"):
            self._metric(metric)
        for entry in _entries(message, "logs"):
            level = str(entry.get("level", "INFO")).upper()
            level = LEVEL_ALIASES.get(level, level)
            self.ctx.log(level if level in LEVELS else "INFO", str(entry.get("message", "")))
        return True

    def _metric(self, metric: dict[str, Any]) -> None:
        kind = str(metric.get("type", "counter")).lower()
        value = metric.get("value")
        try:
            if kind == "timer" and isinstance(value, str):
                number = parse_duration(value).total_seconds()
            else:
                number = float(value)  # type: ignore[arg-type]
            if kind not in ("counter", "timer") or "name" not in metric:
                raise ValueError("a metric needs a name and a type `counter` or `timer`")
        except (TypeError, ValueError) as exc:
            self.ctx.log("WARN", f"Invalid metric {json.dumps(metric)}: {exc}")
            return
        tags = metric.get("tags") or {}
        self.ctx.metric(
            str(metric["name"]),
            number,
            kind,
            {str(k): str(v) for k, v in tags.items()} if isinstance(tags, dict) else None,
        )


def _entries(message: dict[str, Any], key: str) -> list[dict[str, Any]]:
    entries = message.get(key)
    return [e for e in entries if isinstance(e, dict)] if isinstance(entries, list) else []


async def prepare(ctx: RunContext, input_files: Any) -> Path:
    """Expose `workingDir`/`outputDir` to templates, lay out the input files, and return the
    output directory (private to this attempt, inside the working directory)."""
    output_dir = ctx.working_dir / f".outputs-{ctx.task_run_id}-{ctx.attempt}"
    output_dir.mkdir(parents=True, exist_ok=True)
    ctx.variables["workingDir"] = str(ctx.working_dir)
    ctx.variables["outputDir"] = str(output_dir)
    await write_input_files(ctx, await file_map(ctx, input_files, "inputFiles"))
    return output_dir


async def keep_outputs(ctx: RunContext, output_dir: Path, patterns: list[str]) -> dict[str, str]:
    """Store what was written to the output directory (named relative to it) and the working
    directory's files matching `patterns`; their URIs by name."""
    files = {
        name: path
        for name, path in matching_files(ctx.working_dir, patterns).items()
        if output_dir not in path.parents
    }
    scratch = output_dir / SCRATCH
    outputs = {
        name: path
        for name, path in matching_files(output_dir, ["**"]).items()
        if scratch not in path.parents
    }
    return await keep_files(ctx, {**outputs, **files})


def shell_text(fail_fast: bool, before: list[str], lines: list[str]) -> str:
    """The shell text running `before` then `lines` (stopping at the first failure)."""
    head = ["set -e"] if fail_fast else []
    return "\n".join([*head, *before, *lines]) + "\n"


def environment(
    ctx: RunContext,
    env: dict[str, Any] | None,
    output_dir: Path,
    *,
    python: bool,
    venv: venvs.PythonEnvironment | None = None,
) -> dict[str, str]:
    """The process's environment, built from nothing: a minimal PATH (with the attempt's
    virtual environment `venv` first, so `python` and `pip` are its interpreter), HOME and
    TMPDIR in a private folder of the attempt, LANG, Kestra's WORKING_DIR and OUTPUT_DIR, the
    installers' settings of the worker (`PIP_*`, `UV_*`: see `venvs.passed_variables`), the
    worker variables its operator listed in TIERCEL_SCRIPT_ENV, Kestra's `kestra` module on
    PYTHONPATH for Python tasks, then the task's `env`. The worker's own variables (its
    database URL, the master key, `SECRET_*`) never reach it."""
    scratch = output_dir / SCRATCH
    scratch.mkdir(mode=0o700, parents=True, exist_ok=True)
    result = {
        "PATH": BASE_PATH,
        "HOME": str(scratch),
        "TMPDIR": str(scratch),
        "LANG": "C.UTF-8",
        "WORKING_DIR": str(ctx.working_dir),
        "OUTPUT_DIR": str(output_dir),
        **venvs.passed_variables(),
    }
    for name in os.environ.get(PASS_ENV, "").split(","):
        name = name.strip()
        if name and name in os.environ and not name.upper().startswith(NEVER_PASSED):
            result[name] = os.environ[name]
    if venv is not None:
        result = venvs.activate(result, venv)
    if python:
        result["PYTHONPATH"] = str(KESTRA_LIB)
        result["PYTHONUNBUFFERED"] = "1"
    for key, value in (env or {}).items():
        result[str(key)] = "" if value is None else str(value)
    return result


async def python_environment(
    ctx: RunContext,
    env: dict[str, Any] | None,
    output_dir: Path,
    *,
    python: bool,
    dependencies: list[str] | None = None,
    cache: bool = True,
    package_manager: str = "UV",
) -> dict[str, str]:
    """The process's `environment`, with the attempt's own virtual environment (see `venvs`)
    made first, `dependencies` installed. `env` and `dependencies` are rendered here."""
    env = await ctx.render_async(env) if env else None
    plain = environment(ctx, env, output_dir, python=python)
    venv = await venvs.prepare(
        ctx,
        output_dir / SCRATCH / ".venv",
        plain,
        dependencies=[str(d) for d in await ctx.render_async(dependencies or [])],
        cache=cache,
        package_manager=package_manager,
    )
    return environment(ctx, env, output_dir, python=python, venv=venv)


async def execute(
    command: list[str],
    *,
    ctx: RunContext,
    cwd: Path,
    env: dict[str, str],
    on_line: Callable[[str, bool], None],
) -> int:
    """Run `command`, passing each output line to `on_line(text, is_stderr)` as it comes,
    until it exits and its output is closed; return the exit code. The process leads a group
    of its own: cancellation (a timeout, a kill) stops the whole group, and so does the end of
    the command for what it left running in the background. The group does not outlive the
    worker either: the kernel kills it when the worker dies (`_tie`), and it is recorded for
    the next worker of the host (`ctx.process_group_started`) should that have failed."""
    tie_read, tie_write = os.pipe()
    try:
        process = await trio.lowlevel.open_process(
            command,
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
            # The script holds the read end too: it must still be open when the dying worker's
            # write end closes, whatever order the kernel closes the worker's files in.
            pass_fds=(tie_read,),
        )
    except BaseException:
        os.close(tie_read)
        os.close(tie_write)
        raise
    pgid = process.pid
    try:
        _tie(tie_read, pgid)
        ctx.process_group_started(pgid)
        assert process.stdout is not None and process.stderr is not None
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_read_lines, process.stdout, lambda text: on_line(text, False))
            nursery.start_soon(_read_lines, process.stderr, lambda text: on_line(text, True))
            await process.wait()
    finally:
        with trio.CancelScope(shield=True):
            await _stop_group(process)
        _untie(tie_read)
        os.close(tie_write)
        os.close(tie_read)
        ctx.process_group_ended(pgid)
    assert process.returncode is not None
    return process.returncode


def _tie(read_end: int, pgid: int) -> None:
    """Have the kernel SIGKILL process group `pgid` as soon as this process dies, however it
    dies (kill -9 included): a pipe's read end in O_ASYNC mode signals its owner when the last
    write end closes, and this process holds the only write end, which its death closes. The
    owner is the group (F_SETOWN with -pgid) and the signal SIGKILL (F_SETSIG). The kernel
    keeps the owner as that very group, not as a number, so a pgid reused later is never hit.
    Only Linux has F_SETSIG (and the /proc that records of groups need): elsewhere a kill -9
    of the worker still leaves the group running."""
    set_signal = getattr(fcntl, "F_SETSIG", None)
    if set_signal is None:
        return
    try:
        fcntl.fcntl(read_end, fcntl.F_SETOWN, -pgid)
        fcntl.fcntl(read_end, set_signal, signal.SIGKILL)
        fcntl.fcntl(read_end, fcntl.F_SETFL, fcntl.fcntl(read_end, fcntl.F_GETFL) | os.O_ASYNC)
    except OSError:
        pass  # the group is gone already


def _untie(read_end: int) -> None:
    """Disarm `_tie` before the write end is closed on purpose."""
    with contextlib.suppress(OSError):
        fcntl.fcntl(read_end, fcntl.F_SETFL, fcntl.fcntl(read_end, fcntl.F_GETFL) & ~os.O_ASYNC)


async def _read_lines(stream: trio.abc.ReceiveStream, on_line: Callable[[str], None]) -> None:
    pending = b""
    async with stream:
        async for chunk in stream:
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for raw in lines:
                on_line(_decode(raw))
            while len(pending) > MAX_LINE_BYTES:
                on_line(_decode(pending[:MAX_LINE_BYTES]))
                pending = pending[MAX_LINE_BYTES:]
    if pending:
        on_line(_decode(pending))


def _decode(raw: bytes) -> str:
    return raw.removesuffix(b"\r").decode("utf-8", errors="replace")


def _signal_group(pgid: int, signum: int) -> bool:
    """Send `signum` to a process group; False when no process is left in it."""
    try:
        os.killpg(pgid, signum)
    except ProcessLookupError:
        return False
    except PermissionError:
        # a member changed its identity (setuid); nothing more we may do to it
        return False
    return True


def _group_alive(pgid: int) -> bool:
    """Whether a process of the group still runs. Zombies do not count: once their parent has
    exited, only init reaps them, and they would otherwise hold the group up for nothing."""
    if not _signal_group(pgid, 0):
        return False
    try:
        entries = os.listdir("/proc")
    except OSError:
        return True
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if len(fields) > 2 and fields[2] == str(pgid) and fields[0] != "Z":
            return True
    return False


async def _stop_group(process: trio.Process) -> None:
    """SIGTERM the process's group, then SIGKILL what is left after the grace period; reap the
    process itself."""
    pgid = process.pid
    process.poll()
    if _signal_group(pgid, signal.SIGTERM):
        with trio.move_on_after(GRACE_SECONDS):
            while True:
                process.poll()  # reap the leader, which stays in the group as a zombie
                if not _group_alive(pgid):
                    break
                await trio.sleep(0.05)
        _signal_group(pgid, signal.SIGKILL)
    await process.wait()


async def run(
    ctx: RunContext,
    task: ScriptTask,
    lines: list[str],
    *,
    python: bool = False,
    script: tuple[str, str] | None = None,
    dependencies: list[str] | None = None,
    cache: bool = True,
    package_manager: str = "UV",
) -> dict[str, Any]:
    """Run `beforeCommands` then `lines` through the task's interpreter; outputs as Kestra's
    (`exitCode`, `vars`, `outputFiles`). `lines` are rendered once the working directory is
    ready, so they can use `{{ workingDir }}` and `{{ outputDir }}`; `script` is a (file name,
    template) rendered into that file for them, removed afterwards. The process runs in a
    virtual environment of its own, with `dependencies` installed (see `venvs`)."""
    output_dir = await prepare(ctx, task.inputFiles)
    if (task.namespaceFiles or {}).get("enabled"):
        ctx.log("WARN", "namespaceFiles are not supported: no namespace file was copied")
    script_path = ctx.working_dir / script[0] if script else None
    try:
        if script_path and script:
            script_path.write_text(str(await ctx.render_async(script[1])))
        before = [str(b) for b in await ctx.render_async(list(task.beforeCommands))]
        rendered = [str(c) for c in await ctx.render_async(list(lines))]
        text = shell_text(task.failFast, before, rendered)
        reader = OutputReader(ctx)
        process_env = await python_environment(
            ctx,
            task.env,
            output_dir,
            python=python,
            dependencies=dependencies,
            cache=cache,
            package_manager=package_manager,
        )
        code = await execute(
            [*task.interpreter, text],
            ctx=ctx,
            cwd=ctx.working_dir,
            env=process_env,
            on_line=reader.line,
        )
        outputs: dict[str, Any] = {"exitCode": code, "vars": reader.variables}
        wanted = await ctx.render_async(task.outputFiles)
        files = await keep_outputs(ctx, output_dir, [str(p) for p in wanted])
        if files or task.outputFiles:
            outputs["outputFiles"] = files
    finally:
        if script_path:
            script_path.unlink(missing_ok=True)
        shutil.rmtree(output_dir, ignore_errors=True)
    return outcome(outputs, reader, warning_on_stderr=task.warningOnStdErr)


def outcome(
    outputs: dict[str, Any], reader: OutputReader, *, warning_on_stderr: bool
) -> dict[str, Any]:
    """The outputs of a finished process, or the failure or warning it ends in."""
    code = outputs["exitCode"]
    if code != 0:
        raise TaskFailure(f"Command failed with exit code {code}", outputs)
    if warning_on_stderr and reader.stderr_lines:
        raise TaskWarning(f"The command wrote {reader.stderr_lines} line(s) to stderr", outputs)
    return outputs
