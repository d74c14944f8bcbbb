"""`io.kestra.plugin.core.log.*`."""

from __future__ import annotations

import json
from typing import Any

from engine.plugin import RunContext, RunnableTask, register

LEVELS = ("TRACE", "DEBUG", "INFO", "WARN", "ERROR")


@register("io.kestra.plugin.core.log.Log", "io.kestra.core.tasks.log.Log")
class Log(RunnableTask, kw_only=True):
    """Log a message (or a list of messages) in the task logs."""

    message: Any
    """The message, or a list of messages, to log; templates are rendered."""
    level: str = "INFO"
    """One of TRACE, DEBUG, INFO, WARN, ERROR."""

    def problems(self) -> list[tuple[str, str]]:
        if self.level not in LEVELS:
            return [("level", f"Unknown level '{self.level}'; use one of {', '.join(LEVELS)}")]
        return []

    async def run(self, ctx: RunContext) -> dict[str, Any]:
        messages = self.message if isinstance(self.message, list) else [self.message]
        for message in messages:
            ctx.log(self.level, str(await ctx.render_async(message)))
        return {}


@register("io.kestra.plugin.core.log.Fetch", "io.kestra.core.tasks.log.Fetch")
class Fetch(RunnableTask, kw_only=True):
    """Write the logs of an execution (this one by default) to a file in internal storage,
    one JSON object per line; outputs `uri` and `size` (the number of lines)."""

    executionId: str | None = None
    """The execution whose logs to fetch (default: the current one); it must be one of this
    flow's unless `namespace` and `flowId` name its flow."""
    namespace: str | None = None
    """The namespace of the flow of `executionId` (default: this flow's)."""
    flowId: str | None = None
    """The flow of `executionId` (default: this flow)."""
    tasksId: list[str] = []
    """Only the logs of these task ids."""
    level: str = "INFO"
    """The lowest level to keep: TRACE, DEBUG, INFO, WARN or ERROR."""

    def problems(self) -> list[tuple[str, str]]:
        if _level(self.level) not in LEVELS:
            return [("level", f"Unknown level '{self.level}'; use one of {', '.join(LEVELS)}")]
        return []

    async def run(self, ctx: RunContext) -> dict[str, Any]:
        execution_id = (
            str(await ctx.render_async(self.executionId)) if self.executionId else ctx.execution_id
        )
        namespace = str(await ctx.render_async(self.namespace)) if self.namespace else ctx.namespace
        flow_id = str(await ctx.render_async(self.flowId)) if self.flowId else ctx.flow_id
        minimum = _rank(self.level)
        wanted = {str(t) for t in await ctx.render_async(self.tasksId)}
        lines = [
            line
            for line in await ctx.read_logs(execution_id, namespace, flow_id)
            if _rank(line.get("level")) >= minimum and (not wanted or line.get("taskId") in wanted)
        ]
        data = "".join(json.dumps(line, separators=(",", ":")) + "\n" for line in lines)
        uri = await ctx.put_file(data.encode(), f"logs-{execution_id}.jsonl")
        return {"uri": uri, "size": len(lines)}


def _level(name: Any) -> str:
    upper = str(name).upper()
    return "WARN" if upper == "WARNING" else upper


def _rank(name: Any) -> int:
    """The level's place in LEVELS; -1 for an unknown one."""
    level = _level(name)
    return LEVELS.index(level) if level in LEVELS else -1
