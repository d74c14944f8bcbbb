"""The logs page: search with filters and full text, a histogram whose dragged span narrows
the search to that time range, and follow mode for one execution."""

from __future__ import annotations

from quart import Blueprint

from api.auth import access
from api.ui.layout import PREFIX, page


def register(bp: Blueprint) -> None:
    """Add the logs page to the UI's blueprint."""

    @bp.get(f"{PREFIX}/logs")
    @access("viewer")
    async def logs() -> str:
        return await page("ui/logs.html", "Logs", "Logs")
