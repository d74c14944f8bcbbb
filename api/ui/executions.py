"""The executions pages: the list (filter chips in AND/OR groups, quick intervals, paging,
bulk actions by selection or by query after a dry run) and an execution's page (live Gantt
and topology, task-run details, actions, history scrubber)."""

from __future__ import annotations

from quart import Blueprint

from api.auth import access
from api.ui.layout import PREFIX, page


def register(bp: Blueprint) -> None:
    """Add the executions pages to the UI's blueprint."""

    @bp.get(f"{PREFIX}/executions")
    @access("viewer")
    async def executions() -> str:
        return await page("ui/executions.html", "Executions", "Executions")

    @bp.get(f"{PREFIX}/executions/<execution_id>")
    @access("viewer")
    async def execution(execution_id: str) -> str:
        return await page(
            "ui/execution.html",
            "Executions",
            f"Execution {execution_id}",
            execution_id=execution_id,
        )
