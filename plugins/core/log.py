"""`io.kestra.plugin.core.log.*`."""

from __future__ import annotations

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
            ctx.log(self.level, str(ctx.render(message)))
        return {}
