"""`io.kestra.plugin.core.kv.*`: the key-value store of namespaces."""

from __future__ import annotations

import json
from typing import Any

from engine.plugin import RunContext, RunnableTask, TaskFailure, register


def _namespace(ctx: RunContext, given: str | None) -> str:
    return str(ctx.render(given)) if given else ctx.namespace


@register("io.kestra.plugin.core.kv.Set")
class Set(RunnableTask, kw_only=True):
    """Set a key of a namespace's KV store."""

    key: str
    """The key (letters, digits, . _ - /)."""
    value: Any = None
    """The value: any JSON value, templates rendered."""
    namespace: str | None = None
    """The namespace (default: the flow's)."""
    overwrite: bool = True
    """Replace an existing value; false fails when the key exists."""
    ttl: str | None = None
    """How long the value lives (ISO-8601 duration)."""
    kvType: str | None = None
    """The value's type (STRING, NUMBER, BOOLEAN, DATETIME, DATE, DURATION, JSON)."""

    async def run(self, ctx: RunContext) -> dict[str, Any]:
        value = ctx.render(self.value)
        kind = (self.kvType or "").upper()
        if kind == "JSON" and isinstance(value, str):
            value = json.loads(value)
        elif kind == "NUMBER" and isinstance(value, str):
            value = float(value) if "." in value else int(value)
        elif kind == "BOOLEAN" and isinstance(value, str):
            value = value.strip().lower() == "true"
        await ctx.kv_set(
            _namespace(ctx, self.namespace),
            str(ctx.render(self.key)),
            value,
            ttl=str(ctx.render(self.ttl)) if self.ttl else None,
            overwrite=self.overwrite,
        )
        return {}


@register("io.kestra.plugin.core.kv.Get")
class Get(RunnableTask, kw_only=True):
    """Read a key of a namespace's KV store into the output `value`."""

    key: str
    """The key."""
    namespace: str | None = None
    """The namespace (default: the flow's)."""
    errorOnMissing: bool = False
    """Fail when the key does not exist."""

    async def run(self, ctx: RunContext) -> dict[str, Any]:
        namespace, key = _namespace(ctx, self.namespace), str(ctx.render(self.key))
        found, value = await ctx.kv_get(namespace, key)
        if not found and self.errorOnMissing:
            raise TaskFailure(f"No key '{key}' in the KV store of {namespace}")
        return {"value": value}


@register("io.kestra.plugin.core.kv.Delete")
class Delete(RunnableTask, kw_only=True):
    """Delete a key of a namespace's KV store; output `deleted` says if it existed."""

    key: str
    """The key."""
    namespace: str | None = None
    """The namespace (default: the flow's)."""
    errorOnMissing: bool = False
    """Fail when the key does not exist."""

    async def run(self, ctx: RunContext) -> dict[str, Any]:
        namespace, key = _namespace(ctx, self.namespace), str(ctx.render(self.key))
        deleted = await ctx.kv_delete(namespace, key)
        if not deleted and self.errorOnMissing:
            raise TaskFailure(f"No key '{key}' in the KV store of {namespace}")
        return {"deleted": deleted}


@register("io.kestra.plugin.core.kv.GetKeys")
class GetKeys(RunnableTask, kw_only=True):
    """List the keys of a namespace's KV store (starting with `prefix`) as output `keys`."""

    prefix: str | None = None
    """Only keys starting with this."""
    namespace: str | None = None
    """The namespace (default: the flow's)."""

    async def run(self, ctx: RunContext) -> dict[str, Any]:
        prefix = str(ctx.render(self.prefix)) if self.prefix else ""
        entries = await ctx.kv_entries(_namespace(ctx, self.namespace), prefix)
        return {"keys": [k for k in entries if not k.startswith("__state__/")]}
