"""`io.kestra.plugin.scripts.shell.*`: shell commands and scripts."""

from __future__ import annotations

from typing import Any

from engine.plugin import RunContext, register
from plugins.scripts import process


@register("io.kestra.plugin.scripts.shell.Commands")
class Commands(process.ScriptTask, kw_only=True):
    """Run shell commands in the working directory, one after the other. stdout lines are
    logged at INFO, stderr lines at ERROR; `::{"outputs": {...}}::` lines set `vars`."""

    commands: list[str]
    """The commands (templates rendered)."""

    def problems(self) -> list[tuple[str, str]]:
        return [] if self.commands else [("commands", "At least one command is required")]

    async def run(self, ctx: RunContext) -> dict[str, Any]:
        return await process.run(ctx, self, self.commands)


@register("io.kestra.plugin.scripts.shell.Script")
class Script(process.ScriptTask, kw_only=True):
    """Run an inline shell script in the working directory."""

    script: str
    """The script's text (templates rendered)."""

    def problems(self) -> list[tuple[str, str]]:
        return [] if self.script.strip() else [("script", "The script is empty")]

    async def run(self, ctx: RunContext) -> dict[str, Any]:
        return await process.run(ctx, self, [self.script])
