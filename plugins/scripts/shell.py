"""`io.kestra.plugin.scripts.shell.*`: shell commands and scripts."""

from __future__ import annotations

from typing import Any

from engine.plugin import RunContext, register
from plugins.scripts import process


@register(
    "io.kestra.plugin.scripts.shell.Commands",
    "io.kestra.core.tasks.scripts.Bash",
    "io.kestra.plugin.scripts.bash.Commands",
)
class Commands(process.ScriptTask, kw_only=True):
    """Run shell commands in order; stdout lines become logs, `::{"outputs":...}::` outputs."""

    commands: list[str]
    """The commands (templates rendered)."""

    def problems(self) -> list[tuple[str, str]]:
        return [] if self.commands else [("commands", "At least one command is required")]

    async def run(self, ctx: RunContext) -> dict[str, Any]:
        await process.prepare(ctx, self)
        before = [str(ctx.render(b)) for b in self.beforeCommands]
        lines = [str(ctx.render(c)) for c in self.commands]
        text = process.shell_text(self.failFast, before, lines)
        return await process.run(ctx, self, [*self.interpreter, text])


@register("io.kestra.plugin.scripts.shell.Script")
class Script(process.ScriptTask, kw_only=True):
    """Run a shell script (written to `script.sh` in the working directory)."""

    script: str
    """The script's text (templates rendered)."""

    async def run(self, ctx: RunContext) -> dict[str, Any]:
        await process.prepare(ctx, self)
        path = ctx.working_dir / "script.sh"
        path.write_text(str(ctx.render(self.script)))
        before = [str(ctx.render(b)) for b in self.beforeCommands]
        text = process.shell_text(self.failFast, before, [f'. "{path}"'])
        return await process.run(ctx, self, [*self.interpreter, text])
