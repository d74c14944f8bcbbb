"""`io.kestra.plugin.scripts.python.*`: Python scripts and commands.

Each attempt runs in a virtual environment of its own (see `plugins.scripts.venvs`): `python`,
`python3` and `pip` on the process's PATH are its interpreter, so `pip install` in
`beforeCommands` installs there and nowhere else, and `dependencies` are installed once per list
in a cached layer it sees. `from kestra import Kestra` works as with Kestra's Python library
(`Kestra.outputs({...})`, `Kestra.counter(...)`, `Kestra.timer(...)`, `Kestra.logger()`).
"""

from __future__ import annotations

import shlex
from typing import Any

from engine.plugin import RunContext, register
from plugins.scripts import process, venvs

PACKAGE_MANAGERS = ("UV", "PIP")


class PythonTask(process.ScriptTask, kw_only=True):
    """What Python script tasks accept besides every script task's properties."""

    dependencies: list[str] = []
    """Packages to install before running (pip requirement specifiers such as `requests` or
    `pandas>=2`; templates rendered), in a virtual environment cached by the list, reused by
    every task asking for the same list."""
    dependencyCacheEnabled: bool = True
    """Keep the installed `dependencies` for the next tasks; when false, they are installed
    in the attempt's own environment, every time."""
    packageManager: str = "UV"
    """What installs `dependencies`: `UV` (when the worker has uv; pip otherwise) or `PIP`."""
    pythonVersion: str | None = None
    """Accepted for compatibility: scripts run with the worker's Python; another version asked
    for is reported in the logs."""

    def python_problems(self) -> list[tuple[str, str]]:
        """The problems of the properties above."""
        found = []
        if self.packageManager.upper() not in PACKAGE_MANAGERS:
            found.append(("packageManager", "Must be UV or PIP"))
        for entry in self.dependencies:
            if str(entry).strip().startswith("-"):
                found.append(("dependencies", f"{entry!r} is an option, not a package"))
        return found

    async def run_python(
        self, ctx: RunContext, lines: list[str], script: tuple[str, str] | None = None
    ) -> dict[str, Any]:
        """Run `lines` in the attempt's virtual environment with `dependencies` installed."""
        wanted = str(self.pythonVersion or "").strip()
        if wanted and not venvs.version_matches(wanted):
            ctx.log(
                "WARN", f"pythonVersion {wanted} is not available: running Python {venvs.version()}"
            )
        return await process.run(
            ctx,
            self,
            lines,
            python=True,
            script=script,
            dependencies=self.dependencies,
            cache=self.dependencyCacheEnabled,
            package_manager=self.packageManager,
        )


@register("io.kestra.plugin.scripts.python.Script")
class Script(PythonTask, kw_only=True):
    """Run an inline Python script in the working directory."""

    script: str
    """The script's text (templates rendered)."""

    def problems(self) -> list[tuple[str, str]]:
        empty = [] if self.script.strip() else [("script", "The script is empty")]
        return empty + self.python_problems()

    async def run(self, ctx: RunContext) -> dict[str, Any]:
        # a name no module can have, so the script never shadows an import
        name = f"script-{ctx.task_run_id}-{ctx.attempt}.py"
        return await self.run_python(ctx, [f"python {shlex.quote(name)}"], (name, self.script))


@register("io.kestra.plugin.scripts.python.Commands")
class Commands(PythonTask, kw_only=True):
    """Run shell commands where `python` and `pip` are the attempt's own Python (e.g.
    `python main.py` with `main.py` given in `inputFiles`)."""

    commands: list[str]
    """The commands (templates rendered)."""

    def problems(self) -> list[tuple[str, str]]:
        empty = [] if self.commands else [("commands", "At least one command is required")]
        return empty + self.python_problems()

    async def run(self, ctx: RunContext) -> dict[str, Any]:
        return await self.run_python(ctx, self.commands)
