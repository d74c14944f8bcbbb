"""The dashboards page: the default dashboard (executions per state over time with their
"All" total, success ratio, durations, latest failures), custom dashboards chart by chart, and
the projections panel (each read model's lag, and a Rebuild button for admins); and the editor of a
custom dashboard's YAML."""

from __future__ import annotations

from quart import Blueprint

from api.auth import access
from api.ui.layout import PREFIX, page


def register(bp: Blueprint) -> None:
    """Add the dashboards page and the dashboard editor to the UI's blueprint."""

    @bp.get(f"{PREFIX}/dashboards")
    @access("viewer")
    async def dashboards() -> str:
        return await page("ui/dashboards.html", "Dashboards", "Dashboards")

    # The editor is a page of viewers too: they may read and validate a dashboard, and the
    # API refuses their save (the Save button says why).
    @bp.get(f"{PREFIX}/dashboards/new")
    @access("viewer")
    async def new_dashboard() -> str:
        return await page(
            "ui/dashboard_editor.html", "Dashboards", "New dashboard", dashboard_id=""
        )

    @bp.get(f"{PREFIX}/dashboards/<dashboard_id>/edit")
    @access("viewer")
    async def edit_dashboard(dashboard_id: str) -> str:
        return await page(
            "ui/dashboard_editor.html",
            "Dashboards",
            f"Dashboard {dashboard_id}",
            dashboard_id=dashboard_id,
        )
