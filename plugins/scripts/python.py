"""`io.kestra.plugin.scripts.python.*`: Python scripts and commands.

They run with the worker's own interpreter: `python` and `python3` on the process's PATH are
it, and `from kestra import Kestra` works as with Kestra's Python library
(`Kestra.outputs({...})`, `Kestra.counter(...)`, `Kestra.timer(...)`, `Kestra.logger()`).
"""

from __future__ import annotations

import shlex
from typing import Any

from engine.plugin import RunContext, register
from plugins.scripts import process


@register("io.kestra.plugin.scripts.python.Script")
class Script(process.ScriptTask, kw_only=True):
    """Run an inline Python script in the working directory."""

    script: str
    """The script's text (templates rendered)."""

    def problems(self) -> list[tuple[str, str]]:
        return [] if self.script.strip() else [("script", "The script is empty")]

    async def run(self, ctx: RunContext) -> dict[str, Any]:
        # a name no module can have, so the script never shadows an import
        name = f"script-{ctx.task_run_id}-{ctx.attempt}.py"
        return await process.run(
            ctx,
            self,
            [f"python {shlex.quote(name)}"],
            python=True,
            script=(name, self.script),
        )


@register("io.kestra.plugin.scripts.python.Commands")
class Commands(process.ScriptTask, kw_only=True):
    """Run shell commands where `python` is the worker's Python (e.g. `python main.py` with
    `main.py` given in `inputFiles`)."""

    commands: list[str]
    """The commands (templates rendered)."""

    def problems(self) -> list[tuple[str, str]]:
        return [] if self.commands else [("commands", "At least one command is required")]

    async def run(self, ctx: RunContext) -> dict[str, Any]:
        return await process.run(ctx, self, self.commands, python=True)
