"""`io.kestra.plugin.core.state.*`: a flow's named states (kept in the namespace's KV store)."""

from __future__ import annotations

from typing import Any

from engine.plugin import RunContext, RunnableTask, TaskFailure, register


class _State(RunnableTask, kw_only=True):
    name: str = "default"
    """The state's name."""
    namespace: bool = False
    """Share the state across the namespace's flows instead of keeping it per flow."""
    taskrunValue: bool = True
    """Keep one state per loop value (`{{ taskrun.value }}`)."""

    def _key(self, ctx: RunContext) -> str:
        scope = "_namespace" if self.namespace else ctx.flow_id
        key = f"__state__/{scope}/{ctx.render(self.name)}"
        value = (ctx.variables.get("taskrun") or {}).get("value")
        if self.taskrunValue and value is not None:
            key += f"/{value}"
        return "".join(c if c.isalnum() or c in "._-/" else "_" for c in key)


@register("io.kestra.plugin.core.state.Get", "io.kestra.core.tasks.states.Get")
class Get(_State, kw_only=True):
    """Read a state into the output `data`."""

    errorOnMissing: bool = False
    """Fail when the state does not exist."""

    async def run(self, ctx: RunContext) -> dict[str, Any]:
        found, data = await ctx.kv_get(ctx.namespace, self._key(ctx))
        if not found and self.errorOnMissing:
            raise TaskFailure(f"No state named '{self.name}'")
        return {"data": data if found else {}, "count": len(data) if found and data else 0}


@register("io.kestra.plugin.core.state.Set", "io.kestra.core.tasks.states.Set")
class Set(_State, kw_only=True):
    """Merge `data` into a state (creating it); output `count` is its number of keys."""

    data: dict[str, Any] = {}
    """The values to set (templates rendered)."""

    async def run(self, ctx: RunContext) -> dict[str, Any]:
        key = self._key(ctx)
        found, current = await ctx.kv_get(ctx.namespace, key)
        merged = {
            **(current if found and isinstance(current, dict) else {}),
            **ctx.render(self.data),
        }
        await ctx.kv_set(ctx.namespace, key, merged)
        return {"count": len(merged)}


@register("io.kestra.plugin.core.state.Delete", "io.kestra.core.tasks.states.Delete")
class Delete(_State, kw_only=True):
    """Delete a state; output `deleted` says if it existed."""

    errorOnMissing: bool = False
    """Fail when the state does not exist."""

    async def run(self, ctx: RunContext) -> dict[str, Any]:
        deleted = await ctx.kv_delete(ctx.namespace, self._key(ctx))
        if not deleted and self.errorOnMissing:
            raise TaskFailure(f"No state named '{self.name}'")
        return {"deleted": deleted}
