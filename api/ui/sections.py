"""The sections of the navigation whose pages are still to come (executions, logs, dashboards,
audit, plugins): each says so and links to the API that already answers."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from quart import Blueprint

from api.auth import access
from api.ui.layout import PREFIX, page

SECTIONS: dict[str, tuple[str, str]] = {}
"""Endpoint name: (navigation label, the API it will read)."""


def register(bp: Blueprint) -> None:
    """Add a placeholder page for each section of `SECTIONS` (a page module that implements a
    section removes it from `SECTIONS` and registers its own route under the same name)."""
    for name, (label, api_path) in SECTIONS.items():
        bp.add_url_rule(f"{PREFIX}/{name}", name, _placeholder(label, api_path), methods=["GET"])


def _placeholder(label: str, api_path: str) -> Callable[[], Awaitable[str]]:
    @access("viewer")
    async def view() -> str:
        return await page("ui/section.html", label, label, api_path=api_path)

    return view
