"""What every page of the UI shares: the blueprint, the navigation, the login page, the static
files, and the answers a browser gets instead of JSON (a redirect to the login page when the
session is missing, an error page when the API refuses).

Routes declare their access as every route does (api/auth.py): pages need a viewer (the API
behind them checks more per action), the login page, `/` and the static files are public.
"""

from __future__ import annotations

import base64
import binascii
import urllib.parse
from pathlib import Path
from typing import Any, NamedTuple

import orjson
from quart import (
    Blueprint,
    Response,
    g,
    redirect,
    render_template,
    request,
    send_from_directory,
)

from api import bodies
from api.auth import SESSION_COOKIE, principal, public
from engine.errors import TiercelError, Unauthorized
from engine.server import ServerContext

API_DIR = Path(__file__).resolve().parent.parent
STATIC_DIR = API_DIR / "static"
TEMPLATE_DIR = API_DIR / "templates"
PREFIX = "/ui"


class NavItem(NamedTuple):
    """One entry of the navigation bar: its label and the endpoint of its page."""

    label: str
    endpoint: str


NAV: list[NavItem] = [
    NavItem("Flows", "ui.flows"),
    NavItem("Executions", "ui.executions"),
    NavItem("Logs", "ui.logs"),
    NavItem("Dashboards", "ui.dashboards"),
    NavItem("Audit", "ui.audit"),
    NavItem("Plugins", "ui.plugins"),
]
"""The navigation bar, in order. A page module replaces or adds its entry here."""


async def page(template: str, section: str, title: str, **context: Any) -> str:
    """Render a page of the layout: `section` is the navigation label shown as current."""
    who = principal()
    return await render_template(
        template,
        nav=NAV,
        section=section,
        title=title,
        who=who,
        signed_in=who.kind != "anonymous",
        csrf_token=_session_csrf(),
        **context,
    )


def _session_csrf() -> str:
    """The CSRF token of the request's session (empty without one), put in the page so its
    scripts can send it: the cookie is HttpOnly. The guard checked the cookie's signature
    before the page's route ran; its payload is what `Guard.login` wrote."""
    cookie = request.cookies.get(SESSION_COOKIE, "")
    payload = cookie.partition(".")[0]
    try:
        fields = orjson.loads(base64.urlsafe_b64decode(payload))
    except (ValueError, TypeError, binascii.Error):
        return ""
    # Unchecked when the request came with an Authorization header: any shape may be there.
    if isinstance(fields, list) and len(fields) == 4 and isinstance(fields[3], str):
        return fields[3]
    return ""


def _wants_html() -> bool:
    """Whether the client is a browser navigating (an API client gets the JSON answer)."""
    best = request.accept_mimetypes.best_match(["application/json", "text/html"])
    return best == "text/html" and "text/html" in request.headers.get("Accept", "")


def blueprint(ctx: ServerContext) -> Blueprint:
    """The blueprint with the layout's own routes; page modules add theirs to it."""
    bp = Blueprint("ui", __name__, template_folder=str(TEMPLATE_DIR))

    @bp.app_template_global()
    def static_url(path: str) -> str:
        return f"{PREFIX}/static/{path}"

    @bp.get("/")
    @public
    async def root() -> Response:
        return redirect(f"{PREFIX}/")

    @bp.get(f"{PREFIX}/static/<path:filename>")
    @public
    async def static_file(filename: str) -> Response:
        response = await send_from_directory(STATIC_DIR, filename)
        response.headers["Cache-Control"] = "public, max-age=300"
        return response

    @bp.get(f"{PREFIX}/login")
    @public
    async def login() -> Response | str:
        target = _safe_next(request.args.get("next"))
        if not ctx.auth_enabled:
            return redirect(target)
        return await render_template(
            "ui/login.html", title="Sign in", nav=[], section="", next=target, signed_in=False
        )

    @bp.errorhandler(TiercelError)
    async def refused(exc: TiercelError) -> Any:
        if not _wants_html():
            # The API's own answer, as api/app.py gives it.
            response = Response(
                bodies.json_bytes(exc.to_json()), exc.status, content_type="application/json"
            )
            response.headers.update(getattr(exc, "headers", {}))
            return response
        if isinstance(exc, Unauthorized):
            here = request.full_path if request.query_string else request.path
            return redirect(f"{PREFIX}/login?next={urllib.parse.quote(here, safe='')}")
        who = getattr(g, "principal", None)
        body = await render_template(
            "ui/error.html",
            title=f"Error {exc.status}",
            nav=NAV,
            section="",
            status=exc.status,
            message=str(exc),
            who=who,
            signed_in=who is not None and who.kind != "anonymous",
            csrf_token=_session_csrf(),
        )
        return Response(body, exc.status, content_type="text/html; charset=utf-8")

    return bp


def _safe_next(target: str | None) -> str:
    """Where to go after signing in: a path of the UI only (never another site)."""
    if not target or not target.startswith(f"{PREFIX}/") or target.startswith("//"):
        return f"{PREFIX}/"
    if "\\" in target or any(ord(ch) < 32 for ch in target):
        return f"{PREFIX}/"
    return target
