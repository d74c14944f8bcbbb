"""The flows pages: the list (search, namespace tree), a flow's page (topology, source,
executions, revisions) and the editor (new flow, or a flow's latest revision)."""

from __future__ import annotations

from quart import Blueprint

from api.auth import access
from api.ui.layout import PREFIX, page


def register(bp: Blueprint) -> None:
    """Add the flows pages to the UI's blueprint."""

    @bp.get(f"{PREFIX}/")
    @access("viewer")
    async def home() -> str:
        return await page("ui/flows.html", "Flows", "Flows")

    @bp.get(f"{PREFIX}/flows")
    @access("viewer")
    async def flows() -> str:
        return await page("ui/flows.html", "Flows", "Flows")

    @bp.get(f"{PREFIX}/flows/new")
    @access("viewer")
    async def new_flow() -> str:
        return await page("ui/editor.html", "Flows", "New flow", namespace="", flow_id="")

    @bp.get(f"{PREFIX}/flows/<namespace>/<flow_id>")
    @access("viewer")
    async def flow(namespace: str, flow_id: str) -> str:
        return await page(
            "ui/flow.html", "Flows", f"{namespace}.{flow_id}", namespace=namespace, flow_id=flow_id
        )

    @bp.get(f"{PREFIX}/flows/<namespace>/<flow_id>/edit")
    @access("viewer")
    async def edit_flow(namespace: str, flow_id: str) -> str:
        return await page(
            "ui/editor.html",
            "Flows",
            f"Edit {namespace}.{flow_id}",
            namespace=namespace,
            flow_id=flow_id,
        )
