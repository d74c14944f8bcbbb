"""`io.kestra.core.tasks.scripts.Bash` and `.Python`: Kestra's first script tasks.

Deprecated by Kestra in favour of `io.kestra.plugin.scripts.*`, and shaped differently, so they
are kept as tasks of their own: `interpreter` is one program with `interpreterArgs`, and
`outputFiles` names files to create (`{{ outputFiles.<name> }}` is the path to write to), not
globs to collect.
"""

from __future__ import annotations

import shlex
import shutil
from pathlib import Path
from typing import Any

import msgspec

from engine.plugin import RunContext, RunnableTask, register
from plugins.core.storage import file_map, inside, keep_files, matching_files, write_input_files
from plugins.scripts import process


@register("io.kestra.core.tasks.scripts.Bash")
class Bash(RunnableTask, kw_only=True):
    """Run shell commands (deprecated: use io.kestra.plugin.scripts.shell.Commands)."""

    commands: list[str]
    """The commands (templates rendered)."""
    interpreter: str = "/bin/sh"
    """The program that runs the commands."""
    interpreterArgs: list[str] = msgspec.field(default_factory=lambda: ["-c"])
    """Arguments given to the interpreter before the commands."""
    exitOnFailed: bool = True
    """Stop at the first failing command (the shell's `set -o errexit`)."""
    outputFiles: list[str] = []
    """Names of files to create empty; write to `{{ outputFiles.<name> }}` and the file is kept
    in internal storage, as output `outputFiles.<name>`."""
    outputsFiles: list[str] = []
    """Deprecated spelling of `outputFiles`."""
    files: list[str] = []
    """Deprecated spelling of `outputFiles`."""
    outputDirs: list[str] = []
    """Names of folders to create; every file written under `{{ outputDirs.<name> }}` is kept,
    as output `outputFiles['<name>/<file>']`."""
    inputFiles: Any = None
    """Files to create before running: a map of file name to content (rendered; a `kestra://`
    URI copies that stored file), or a template rendering a JSON object of them."""
    env: dict[str, Any] = {}
    """Environment variables of the process (templates rendered), besides a minimal PATH,
    HOME, TMPDIR and LANG; nothing of the worker's own environment is passed on."""
    warningOnStdErr: bool = True
    """End in WARNING when the process wrote to stderr."""
    runner: str | None = None
    """Accepted for compatibility (PROCESS or DOCKER): the process runs on the worker itself."""
    dockerOptions: dict[str, Any] | None = None
    """Accepted for compatibility: the process runs on the worker itself."""

    def problems(self) -> list[tuple[str, str]]:
        found = [] if self.commands else [("commands", "At least one command is required")]
        for field in ("outputFiles", "outputsFiles", "files", "outputDirs"):
            for name in getattr(self, field):
                if name.startswith(("/", "./", "..")):
                    found.append((field, f"{name!r} must be a plain relative name"))
        return found

    async def lines(self, ctx: RunContext) -> list[str]:
        """The commands to run, rendered."""
        return [str(c) for c in await ctx.render_async(list(self.commands))]

    def python(self) -> bool:
        """Whether Kestra's `kestra` module must be importable."""
        return False

    async def run(self, ctx: RunContext) -> dict[str, Any]:
        output_dir = await process.prepare(ctx, None)
        named: dict[str, Path] = {}
        for name in [*self.outputFiles, *self.outputsFiles, *self.files]:
            named[name] = inside(ctx.working_dir, name)
            named[name].parent.mkdir(parents=True, exist_ok=True)
            named[name].touch()
        folders = {name: inside(ctx.working_dir, name) for name in self.outputDirs}
        for folder in folders.values():
            folder.mkdir(parents=True, exist_ok=True)
        paths = {name: str(path) for name, path in named.items()}
        ctx.variables.update(outputFiles=paths, temp=paths)
        ctx.variables["outputDirs"] = {name: str(path) for name, path in folders.items()}
        await write_input_files(ctx, await file_map(ctx, self.inputFiles, "inputFiles"))
        head = ["set -o errexit"] if self.exitOnFailed else []
        text = "\n".join([*head, *(await self.lines(ctx))])
        reader = process.OutputReader(ctx)
        try:
            env = await process.python_environment(ctx, self.env, output_dir, python=self.python())
            code = await process.execute(
                [self.interpreter, *self.interpreterArgs, text],
                ctx=ctx,
                cwd=ctx.working_dir,
                env=env,
                on_line=reader.line,
            )
            kept = dict(named)
            for name, folder in folders.items():
                for relative, path in matching_files(folder, ["**"]).items():
                    kept[f"{name}/{relative}"] = path
            uris = await keep_files(ctx, kept)
        finally:
            shutil.rmtree(output_dir, ignore_errors=True)
        outputs: dict[str, Any] = {"exitCode": code, "vars": reader.variables}
        if uris:
            outputs.update(outputFiles=uris, files=uris)
        return process.outcome(outputs, reader, warning_on_stderr=self.warningOnStdErr)


@register("io.kestra.core.tasks.scripts.Python")
class Python(Bash, kw_only=True):
    """Run `main.py` from `inputFiles` in a fresh virtualenv of the working directory, with
    `requirements` installed there (deprecated: use io.kestra.plugin.scripts.python.Script)."""

    commands: list[str] = msgspec.field(default_factory=lambda: ["./bin/python main.py"])
    """The commands, run once the virtualenv is ready; each gets `args` appended."""
    pythonPath: str = "python"
    """The interpreter that creates the virtualenv (`python` is the attempt's own, see
    `plugins.scripts.venvs`)."""
    args: list[str] = []
    """Arguments appended to each command (templates rendered)."""
    requirements: list[str] = []
    """Packages to install in the virtualenv with pip, as in requirements.txt."""

    def problems(self) -> list[tuple[str, str]]:
        found = super().problems()
        files = self.inputFiles
        no_main = files is None or (isinstance(files, dict) and "main.py" not in files)
        if self.commands == ["./bin/python main.py"] and no_main:
            found.append(("inputFiles", "A `main.py` file is required to run the default command"))
        return found

    def python(self) -> bool:
        return True

    async def lines(self, ctx: RunContext) -> list[str]:
        args = "".join(" " + str(a) for a in await ctx.render_async(list(self.args)))
        venv = f"{self.pythonPath} -m venv --system-site-packages"
        setup = [f"{venv} --without-pip . > /dev/null"]
        if self.requirements:
            required = await ctx.render_async(list(self.requirements))
            packages = " ".join(shlex.quote(str(r)) for r in required)
            setup = [
                f"{venv} . > /dev/null",
                f"./bin/python -m pip install --disable-pip-version-check {packages} > /dev/null",
            ]
        return [*setup, *(line + args for line in await super().lines(ctx))]
