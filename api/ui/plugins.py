"""The plugins page: every installed task, trigger and condition type, and each one's
documentation read from its JSON schema (properties, types, defaults) with an example."""

from __future__ import annotations

from quart import Blueprint

from api.auth import access
from api.ui.layout import PREFIX, page


def register(bp: Blueprint) -> None:
    """Add the plugins page to the UI's blueprint."""

    @bp.get(f"{PREFIX}/plugins")
    @access("viewer")
    async def plugins() -> str:
        return await page("ui/plugins.html", "Plugins", "Plugins")
