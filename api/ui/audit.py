"""The audit page: the trail of recorded commands, searchable, each row linking to its
object (a flow, an execution and its history)."""

from __future__ import annotations

from quart import Blueprint

from api.auth import access
from api.ui.layout import PREFIX, page


def register(bp: Blueprint) -> None:
    """Add the audit page to the UI's blueprint."""

    @bp.get(f"{PREFIX}/audit")
    @access("viewer")
    async def audit() -> str:
        return await page("ui/audit.html", "Audit", "Audit")
