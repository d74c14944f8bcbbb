"""`io.kestra.plugin.scripts.python.*`: Python scripts and commands.

They run with the worker's Python; `from kestra import Kestra` is importable, as with Kestra's
Python library (`Kestra.outputs({...})`, `Kestra.counter(...)`, `Kestra.timer(...)`).
"""

from __future__ import annotations

import sys
from typing import Any

from engine.plugin import RunContext, register
from plugins.scripts import process


@register("io.kestra.plugin.scripts.python.Script")
class Script(process.ScriptTask, kw_only=True):
    """Run a Python script (written to `main.py` in the working directory)."""

    script: str
    """The script's text (templates rendered)."""

    async def run(self, ctx: RunContext) -> dict[str, Any]:
        await process.prepare(ctx, self)
        path = ctx.working_dir / "main.py"
        path.write_text(str(ctx.render(self.script)))
        before = [str(ctx.render(b)) for b in self.beforeCommands]
        if not before:
            return await process.run(ctx, self, [sys.executable, str(path)], python=True)
        text = process.shell_text(self.failFast, before, [f'python "{path}"'])
        return await process.run(ctx, self, [*self.interpreter, text], python=True)


@register("io.kestra.plugin.scripts.python.Commands")
class Commands(process.ScriptTask, kw_only=True):
    """Run shell commands where `python` is the worker's Python (e.g. `python main.py`)."""

    commands: list[str]
    """The commands (templates rendered)."""

    def problems(self) -> list[tuple[str, str]]:
        return [] if self.commands else [("commands", "At least one command is required")]

    async def run(self, ctx: RunContext) -> dict[str, Any]:
        await process.prepare(ctx, self)
        before = [str(ctx.render(b)) for b in self.beforeCommands]
        lines = [str(ctx.render(c)) for c in self.commands]
        text = process.shell_text(self.failFast, before, lines)
        return await process.run(ctx, self, [*self.interpreter, text], python=True)
