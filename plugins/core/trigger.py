"""`io.kestra.plugin.core.trigger.Toggle`: enable or disable a flow's trigger from a flow."""

from __future__ import annotations

from typing import Any

from engine.plugin import RunContext, RunnableTask, register


@register("io.kestra.plugin.core.trigger.Toggle", "io.kestra.core.tasks.trigger.Toggle")
class Toggle(RunnableTask, kw_only=True):
    """Enable or disable a trigger of a flow (this flow by default)."""

    trigger: str
    """The id of the trigger."""
    enabled: Any = False
    """true to enable it, false to disable it (a template may decide)."""
    namespace: str | None = None
    """The flow's namespace (default: this flow's)."""
    flowId: str | None = None
    """The flow's id (default: this flow)."""

    async def run(self, ctx: RunContext) -> dict[str, Any]:
        enabled = await ctx.render_async(self.enabled)
        if isinstance(enabled, str):
            enabled = enabled.strip().lower() == "true"
        await ctx.toggle_trigger(
            str(await ctx.render_async(self.namespace)) if self.namespace else ctx.namespace,
            str(await ctx.render_async(self.flowId)) if self.flowId else ctx.flow_id,
            str(await ctx.render_async(self.trigger)),
            bool(enabled),
        )
        return {}
