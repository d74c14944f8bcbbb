"""`io.kestra.plugin.core.execution.*`."""

from __future__ import annotations

import json
from typing import Any

from engine.plugin import FlowableTask, Navigator, RunContext, RunnableTask, TaskFailure, register


def truthy(value: Any) -> bool:
    """How Kestra reads a rendered condition: "true"/"1" and non-empty values are true."""
    if isinstance(value, str):
        return value.strip().lower() not in ("", "false", "0", "null", "none")
    return bool(value)


@register("io.kestra.plugin.core.execution.Fail", "io.kestra.core.tasks.executions.Fail")
class Fail(RunnableTask, kw_only=True):
    """Fail the task run (and so the execution), optionally only when `condition` is true."""

    condition: str | None = None
    """Fail only when this expression renders true."""
    errorMessage: str = "Task failure"
    """The message of the failure."""

    async def run(self, ctx: RunContext) -> dict[str, Any]:
        if self.condition is None or truthy(await ctx.render_async(self.condition)):
            raise TaskFailure(str(await ctx.render_async(self.errorMessage)))
        return {}


EXIT_STATES = ("SUCCESS", "WARNING", "FAILED", "KILLED", "CANCELLED")


@register("io.kestra.plugin.core.execution.Exit")
class Exit(FlowableTask, kw_only=True):
    """End the execution now, in `state`; tasks still running are killed."""

    state: str = "SUCCESS"
    """The state the execution ends in: SUCCESS, WARNING, FAILED, KILLED or CANCELLED."""
    condition: str | None = None
    """End the execution only when this expression renders true."""

    def problems(self) -> list[tuple[str, str]]:
        if self.state.upper() not in EXIT_STATES and "{{" not in self.state:
            return [("state", f"Unknown state '{self.state}'; use one of {', '.join(EXIT_STATES)}")]
        return []

    def resolve(self, nav: Navigator) -> str | None:
        if self.condition is not None and not truthy(nav.render(self.condition)):
            return "SUCCESS"
        state = str(nav.render(self.state)).upper()
        nav.exit("KILLED" if state == "CANCELLED" else state)
        return None


@register("io.kestra.plugin.core.execution.Labels", "io.kestra.core.tasks.executions.Labels")
class Labels(FlowableTask, kw_only=True):
    """Add or replace labels of the running execution."""

    labels: Any
    """A map of labels, or a list of {key, value}, or a template rendering either."""

    def resolve(self, nav: Navigator) -> str | None:
        value = nav.render(self.labels)
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except ValueError:
                raise TaskFailure("`labels` must render a map or a list of {key, value}") from None
        pairs: dict[str, str] = {}
        if isinstance(value, dict):
            items = list(value.items())
        elif isinstance(value, list):
            items = []
            for entry in value:
                if not isinstance(entry, dict) or "key" not in entry or "value" not in entry:
                    raise TaskFailure("Each label in the list must be {key: ..., value: ...}")
                items.append((entry["key"], entry["value"]))
        else:
            raise TaskFailure("`labels` must be a map or a list of {key, value}")
        for key, label in items:
            if str(key).startswith("system."):
                raise TaskFailure(f"Label '{key}': system labels cannot be set by a task")
            pairs[str(key)] = _label_text(label)
        nav.set_labels(pairs)
        return "SUCCESS"


def _label_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict | list):
        return json.dumps(value, separators=(",", ":"))
    return "" if value is None else str(value)


@register("io.kestra.plugin.core.execution.Resume", "io.kestra.core.tasks.executions.Resume")
class Resume(RunnableTask, kw_only=True):
    """Resume a paused execution, passing `inputs` as its Pause task's `onResume` values."""

    executionId: str | None = None
    """The execution to resume (default: the current one's parent, or the current one)."""
    namespace: str | None = None
    """Accepted for compatibility (the execution id is enough)."""
    flowId: str | None = None
    """Accepted for compatibility (the execution id is enough)."""
    inputs: dict[str, Any] = {}
    """The `onResume` values."""

    async def run(self, ctx: RunContext) -> dict[str, Any]:
        target = (
            str(await ctx.render_async(self.executionId)) if self.executionId else ctx.execution_id
        )
        await ctx.resume_execution(target, await ctx.render_async(self.inputs))
        return {}
