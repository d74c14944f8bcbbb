"""The dashboards page: the default dashboard (executions per state over time with their
"All" total, success ratio, durations, latest failures), custom dashboards chart by chart, and
the projections panel (each read model's lag, and how to rebuild one)."""

from __future__ import annotations

from quart import Blueprint

from api.auth import access
from api.ui.layout import PREFIX, page


def register(bp: Blueprint) -> None:
    """Add the dashboards page to the UI's blueprint."""

    @bp.get(f"{PREFIX}/dashboards")
    @access("viewer")
    async def dashboards() -> str:
        return await page("ui/dashboards.html", "Dashboards", "Dashboards")
