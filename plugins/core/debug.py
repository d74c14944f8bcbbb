"""`io.kestra.plugin.core.debug.*`."""

from __future__ import annotations

from typing import Any

from engine.plugin import RunContext, RunnableTask, register


@register("io.kestra.plugin.core.debug.Return", "io.kestra.core.tasks.debugs.Return")
class Return(RunnableTask, kw_only=True):
    """Return a rendered value as the task's `value` output."""

    format: str | None = None
    """The template to render as the output `value`."""

    async def run(self, ctx: RunContext) -> dict[str, Any]:
        value = await ctx.render_async(self.format) if self.format is not None else None
        return {"value": value}


@register("io.kestra.plugin.core.debug.Echo", "io.kestra.core.tasks.debugs.Echo")
class Echo(RunnableTask, kw_only=True):
    """Log a rendered message (deprecated in Kestra in favour of Log)."""

    format: str
    """The message to log."""
    level: str = "INFO"
    """The log level."""

    async def run(self, ctx: RunContext) -> dict[str, Any]:
        ctx.log(self.level, str(await ctx.render_async(self.format)))
        return {}
