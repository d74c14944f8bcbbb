"""`io.kestra.plugin.core.kv.*`: the key-value store of namespaces."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

from engine.plugin import RunContext, RunnableTask, TaskFailure, parse_duration, register
from plugins.core.state import STATE_PREFIX

KV_TYPES = ("STRING", "NUMBER", "BOOLEAN", "DATETIME", "DATE", "DURATION", "JSON")


async def _namespace(ctx: RunContext, given: str | None) -> str:
    return str(await ctx.render_async(given)) if given else ctx.namespace


async def _user_key(ctx: RunContext, key: str) -> str:
    rendered = str(await ctx.render_async(key))
    if rendered.startswith(STATE_PREFIX):
        raise TaskFailure(
            f"KV keys starting with '{STATE_PREFIX}' hold states: use the state.* tasks for them"
        )
    return rendered


def _typed(kind: str, value: Any) -> Any:
    """`value` as `kvType` says; text is converted, anything else must already fit."""
    if kind in ("", "STRING") or not isinstance(value, str):
        return value
    text = value.strip()
    try:
        if kind == "NUMBER":
            return int(text) if text.lstrip("+-").isdigit() else float(text)
        if kind == "BOOLEAN":
            if text.lower() not in ("true", "false"):
                raise ValueError("expected true or false")
            return text.lower() == "true"
        if kind == "JSON":
            return json.loads(text)
        if kind == "DATETIME":
            dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
        elif kind == "DATE":
            dt.date.fromisoformat(text)
        elif kind == "DURATION":
            parse_duration(text)
    except ValueError as exc:
        raise TaskFailure(f"The value {value!r} is not a valid {kind} (kvType): {exc}") from None
    return text


@register("io.kestra.plugin.core.kv.Set")
class Set(RunnableTask, kw_only=True):
    """Set a key of a namespace's KV store to a value."""

    key: str
    """The key: letters, digits and . _ - / (templates rendered)."""
    value: Any
    """The value: text or any JSON value (templates rendered)."""
    namespace: str | None = None
    """The namespace whose store to write (default: the flow's)."""
    overwrite: bool = True
    """Replace an existing value; false fails the task when the key holds one."""
    ttl: str | None = None
    """How long the value stays readable, as an ISO-8601 duration (default: forever)."""
    kvType: str | None = None
    """How to read a text value: STRING, NUMBER, BOOLEAN, DATETIME, DATE, DURATION or JSON
    (NUMBER, BOOLEAN and JSON are stored as such; the others are checked and kept as text)."""

    def problems(self) -> list[tuple[str, str]]:
        found = []
        if self.kvType and "{{" not in self.kvType and self.kvType.upper() not in KV_TYPES:
            found.append(("kvType", f"Unknown kvType '{self.kvType}'; use one of {KV_TYPES}"))
        if self.ttl and "{{" not in self.ttl:
            try:
                parse_duration(self.ttl)
            except ValueError as exc:
                found.append(("ttl", str(exc)))
        return found

    async def run(self, ctx: RunContext) -> dict[str, Any]:
        kind = str(await ctx.render_async(self.kvType) or "").upper()
        if kind and kind not in KV_TYPES:
            raise TaskFailure(f"Unknown kvType '{kind}'; use one of {', '.join(KV_TYPES)}")
        ttl = str(await ctx.render_async(self.ttl)) if self.ttl else None
        if ttl:
            try:
                parse_duration(ttl)
            except ValueError as exc:
                raise TaskFailure(f"ttl: {exc}") from None
        await ctx.kv_set(
            await _namespace(ctx, self.namespace),
            await _user_key(ctx, self.key),
            _typed(kind, await ctx.render_async(self.value)),
            ttl=ttl,
            overwrite=self.overwrite,
            kv_type=kind or None,  # GET /api/v1/namespaces/{ns}/kv/{key} shows it
        )
        return {}


@register("io.kestra.plugin.core.kv.Get")
class Get(RunnableTask, kw_only=True):
    """Read a key of a namespace's KV store into the output `value` (null when missing)."""

    key: str
    """The key (templates rendered)."""
    namespace: str | None = None
    """The namespace whose store to read (default: the flow's)."""
    errorOnMissing: bool = False
    """Fail when the key does not exist or has expired."""

    async def run(self, ctx: RunContext) -> dict[str, Any]:
        namespace, key = (
            await _namespace(ctx, self.namespace),
            str(await ctx.render_async(self.key)),
        )
        found, value = await ctx.kv_get(namespace, key)
        if not found and self.errorOnMissing:
            raise TaskFailure(
                f"No key '{key}' in the KV store of namespace {namespace} (or it expired)"
            )
        return {"value": value}


@register("io.kestra.plugin.core.kv.Delete")
class Delete(RunnableTask, kw_only=True):
    """Delete a key of a namespace's KV store; output `deleted` says whether it existed."""

    key: str
    """The key (templates rendered)."""
    namespace: str | None = None
    """The namespace whose store to change (default: the flow's)."""
    errorOnMissing: bool = False
    """Fail when the key does not exist."""

    async def run(self, ctx: RunContext) -> dict[str, Any]:
        namespace, key = await _namespace(ctx, self.namespace), await _user_key(ctx, self.key)
        deleted = await ctx.kv_delete(namespace, key)
        if not deleted and self.errorOnMissing:
            raise TaskFailure(f"No key '{key}' to delete in the KV store of namespace {namespace}")
        return {"deleted": deleted}


@register("io.kestra.plugin.core.kv.GetKeys")
class GetKeys(RunnableTask, kw_only=True):
    """List the live keys of a namespace's KV store, sorted, as output `keys`."""

    prefix: str | None = None
    """Only keys starting with this (templates rendered)."""
    namespace: str | None = None
    """The namespace whose store to list (default: the flow's)."""

    async def run(self, ctx: RunContext) -> dict[str, Any]:
        prefix = str(await ctx.render_async(self.prefix)) if self.prefix else ""
        entries = await ctx.kv_entries(await _namespace(ctx, self.namespace), prefix)
        return {"keys": [k for k in entries if not k.startswith(STATE_PREFIX)]}
