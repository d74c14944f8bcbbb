"""The web UI: server-rendered pages under `/ui/`, made interactive by small scripts that read
the public REST API (same origin, the session cookie and its CSRF token, see api/auth.py).

The pages hold no data of their own: a page renders the layout and the frame of what it shows,
and its script fetches `/api/v1/...` as the signed-in user, so the UI sees exactly what the API
lets that user see. Each page lives in a module of this package that adds its routes to the
blueprint in a `register(bp)` function; `PAGES` lists them (docs/ui.md says how to add one).
"""

from __future__ import annotations

from quart import Blueprint

from api.ui import audit, dashboards, executions, flows, layout, logs, plugins, sections
from engine.server import ServerContext

PAGES = (flows, executions, logs, dashboards, audit, plugins, sections)
"""The modules whose pages the UI serves, each with a `register(bp)` function."""


def blueprint(ctx: ServerContext) -> Blueprint:
    """The UI's blueprint: the layout's routes (login, static files, `/` to `/ui/`) and every
    page of `PAGES`."""
    bp = layout.blueprint(ctx)
    for module in PAGES:
        module.register(bp)
    return bp
