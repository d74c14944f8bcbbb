"""`io.kestra.plugin.core.output.*`."""

from __future__ import annotations

from typing import Any

from engine.plugin import RunContext, RunnableTask, register


@register("io.kestra.plugin.core.output.OutputValues", "io.kestra.core.tasks.outputs.OutputValues")
class OutputValues(RunnableTask, kw_only=True):
    """Output rendered values, read by later tasks as `{{ outputs.<id>.values.<key> }}`."""

    values: dict[str, Any] = {}
    """The values to output (templates are rendered)."""

    async def run(self, ctx: RunContext) -> dict[str, Any]:
        return {"values": await ctx.render_async(self.values)}
