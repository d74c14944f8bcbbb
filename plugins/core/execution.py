"""`io.kestra.plugin.core.execution.*`."""

from __future__ import annotations

from typing import Any

from engine.plugin import RunContext, RunnableTask, TaskFailure, register


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
        if self.condition is None or truthy(ctx.render(self.condition)):
            raise TaskFailure(str(ctx.render(self.errorMessage)))
        return {}
