"""`io.kestra.plugin.core.state.*`: named states of a flow, kept in its namespace's KV store.

A state is a map stored under one reserved key, `__state__/flow/<flowId>/<name>[/<value>]`
(or `__state__/namespace/<name>[/<value>]` when shared by the namespace's flows), where
`<value>` is the loop value (`taskrun.value`) the state is kept per. The parts are escaped so
two different states never share a key.
"""

from __future__ import annotations

import re
from typing import Any

from engine.plugin import RunContext, RunnableTask, TaskFailure, register

STATE_PREFIX = "__state__/"
"""The KV keys of states start with this; KV tasks do not list them."""

_SAFE = re.compile(r"[A-Za-z0-9.\-]")


def _escape(part: str) -> str:
    # `_` starts an escape, so it is escaped too: the mapping is one-to-one.
    return "".join(
        c if _SAFE.fullmatch(c) else "".join(f"_{b:02x}" for b in c.encode()) for c in part
    )


def _flag(value: Any) -> bool:
    return value if isinstance(value, bool) else str(value).strip().lower() == "true"


def _merge(current: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """`update` over `current`; nested maps merge key by key."""
    merged = dict(current)
    for key, value in update.items():
        before = merged.get(key)
        if isinstance(before, dict) and isinstance(value, dict):
            merged[key] = _merge(before, value)
        else:
            merged[key] = value
    return merged


class _State(RunnableTask, kw_only=True):
    name: str = "default"
    """The state's name (templates rendered)."""
    namespace: bool | str = False
    """Share the state with every flow of the namespace instead of keeping it per flow."""
    taskrunValue: bool | str = True
    """Keep one state per loop value (`{{ taskrun.value }}`); false shares one state across
    the iterations of a loop."""

    async def _key(self, ctx: RunContext) -> str:
        name = _escape(str(await ctx.render_async(self.name)))
        if _flag(await ctx.render_async(self.namespace)):
            key = f"{STATE_PREFIX}namespace/{name}"
        else:
            key = f"{STATE_PREFIX}flow/{_escape(ctx.flow_id)}/{name}"
        value = (ctx.variables.get("taskrun") or {}).get("value")
        if _flag(await ctx.render_async(self.taskrunValue)) and value is not None:
            key += f"/{_escape(str(value))}"
        return key

    async def _describe(self, ctx: RunContext) -> str:
        return f"state '{await ctx.render_async(self.name)}' of flow {ctx.namespace}.{ctx.flow_id}"


@register("io.kestra.plugin.core.state.Get", "io.kestra.core.tasks.states.Get")
class Get(_State, kw_only=True):
    """Read a state: outputs `data` (an empty map when there is none) and `count`."""

    errorOnMissing: bool = False
    """Fail when the state does not exist."""

    async def run(self, ctx: RunContext) -> dict[str, Any]:
        found, data = await ctx.kv_get(ctx.namespace, await self._key(ctx))
        if not found and self.errorOnMissing:
            raise TaskFailure(f"No {await self._describe(ctx)}; set it with a state.Set task first")
        data = data if found and isinstance(data, dict) else {}
        return {"data": data, "count": len(data)}


@register("io.kestra.plugin.core.state.Set", "io.kestra.core.tasks.states.Set")
class Set(_State, kw_only=True):
    """Merge `data` into a state, creating it: new keys are added, existing ones replaced
    (nested maps key by key). Outputs `count`, the state's number of keys. Concurrent
    executions of a flow may overwrite each other's changes."""

    data: dict[str, Any] = {}
    """The values to set (keys and values are templates)."""

    async def run(self, ctx: RunContext) -> dict[str, Any]:
        key = await self._key(ctx)
        update = await ctx.render_async(self.data)
        found, current = await ctx.kv_get(ctx.namespace, key)
        merged = _merge(current if found and isinstance(current, dict) else {}, update)
        await ctx.kv_set(ctx.namespace, key, merged)
        return {"count": len(merged)}


@register("io.kestra.plugin.core.state.Delete", "io.kestra.core.tasks.states.Delete")
class Delete(_State, kw_only=True):
    """Delete a state; output `deleted` says whether it existed."""

    errorOnMissing: bool = False
    """Fail when the state does not exist."""

    async def run(self, ctx: RunContext) -> dict[str, Any]:
        deleted = await ctx.kv_delete(ctx.namespace, await self._key(ctx))
        if not deleted and self.errorOnMissing:
            raise TaskFailure(f"No {await self._describe(ctx)} to delete")
        return {"deleted": deleted}
