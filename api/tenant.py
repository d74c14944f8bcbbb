"""How Kestra's paths reach Tiercel's routes: the tenant segment, and the Kestra routes Tiercel
does not serve.

Kestra's clients call `/api/v1/{tenant}/...` (the SDK: `/api/v1/main/...`). Tiercel has one
tenant, `main`: a request under `/api/v1/main/` is rewritten to the same path without the
segment before the application sees it, so it reaches the same route with the same checks.
Only a segment that is not one of the API's own resources (`flows`, `executions`, ...) is read
as a tenant, so `/api/v1/flows/...` keeps its meaning; another tenant's name followed by a
resource answers 404 naming the tenant.

Kestra serves routes whose paths Tiercel's own routes would otherwise read as something else
(`POST /executions/{executionId}/restart` is shaped as `POST /executions/{namespace}/{flowId}`).
Those answer 404 naming the Kestra route, never a misreading of the path.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import Any

from quart import request
from quart_trio import QuartTrio
from werkzeug.exceptions import NotFound

TENANT = "main"
"""The one tenant; objects carry it as their `tenantId`."""

PREFIX = "/api/v1/"
UNKNOWN_TENANT = "tiercel.unknown_tenant"
"""The ASGI scope key naming a tenant that does not exist, for the 404 answer."""
ORIGINAL_PATH = "tiercel.original_path"

_ID = r"[^/]+"
_BULK = r"(?:by-ids|by-query)"
# restart, replay, pause, state and labels of one execution: api/execution_actions.py.
_EXECUTION_ACTIONS = "replay-with-inputs|force-run|unqueue|change-status"
# restart, replay, labels and kill by-ids/by-query are bulk jobs (api/bulk_routes.py).
_BULK_EXECUTION_ACTIONS = "pause|resume|force-run|unqueue|change-status"

UNSERVED: list[tuple[frozenset[str], re.Pattern[str], str]] = [
    (frozenset(methods.split()), re.compile(f"^/api/v1/{pattern}$"), template)
    for methods, pattern, template in [
        # executions/bulk/<action> is a bulk operation (api/bulk_routes.py), not an id.
        (
            "POST",
            f"executions/(?!bulk/){_ID}/({_EXECUTION_ACTIONS})",
            "executions/{executionId}/\\1",
        ),
        (
            "POST DELETE",
            f"executions/({_BULK_EXECUTION_ACTIONS})/({_BULK})",
            "executions/\\1/\\2",
        ),
        ("POST", "executions/latest", "executions/latest"),
        ("GET", "flows/(source|distinct-namespaces)", "flows/\\1"),
        ("POST PUT", "flows/bulk", "flows/bulk"),
        ("PUT", "flows/graph", "flows/graph"),
        ("GET POST", f"flows/export/({_BULK})", "flows/export/\\1"),
        ("DELETE", f"flows/delete/({_BULK})", "flows/delete/\\1"),
        ("POST", f"flows/(disable|enable)/({_BULK})", "flows/\\1/\\2"),
        ("POST", "flows/validate/(task|trigger)", "flows/validate/\\1"),
        ("GET", f"namespaces/{_ID}/kv/inheritance", "namespaces/{namespace}/kv/inheritance"),
    ]
]
"""Kestra routes Tiercel does not serve (yet), by method and path, with the name the 404 gives
them: only those a route of Tiercel's would otherwise take for another one."""

ASGIApp = Callable[[dict[str, Any], Any, Any], Awaitable[None]]


def install(app: QuartTrio) -> None:
    """Rewrite tenant-prefixed paths before `app` routes them, and refuse the Kestra routes
    Tiercel does not serve with a 404 naming them (see the module's description)."""
    inner: ASGIApp = app.asgi_app
    resources: set[str] = set()

    def known() -> set[str]:
        # Read once routes are all registered (the first request), so that every resource a
        # route serves is known, whichever module added it.
        if not resources:
            for rule in app.url_map.iter_rules():
                if rule.rule.startswith(PREFIX):
                    resources.add(rule.rule[len(PREFIX) :].split("/", 1)[0])
        return resources

    async def rewrite(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope.get("type") == "http":
            scope = _with_tenant(scope, known())
        await inner(scope, receive, send)

    app.asgi_app = rewrite  # type: ignore[method-assign]
    # First, before the access checks read the route a request reached.
    app.before_request_funcs.setdefault(None, []).insert(0, _refuse_unserved)


def _with_tenant(scope: dict[str, Any], resources: set[str]) -> dict[str, Any]:
    path: str = scope.get("path", "")
    if not path.startswith(PREFIX):
        return scope
    first, _, rest = path[len(PREFIX) :].partition("/")
    if not first or first in resources:
        return scope
    following = rest.split("/", 1)[0]
    if first == TENANT:
        new = dict(scope)
        new["path"] = PREFIX + rest
        raw = scope.get("raw_path")
        if isinstance(raw, bytes):
            marker = f"{PREFIX}{TENANT}/".encode()
            if raw.startswith(marker):
                new["raw_path"] = PREFIX.encode() + raw[len(marker) :]
            elif raw == marker.rstrip(b"/"):
                new["raw_path"] = PREFIX.encode()
        new[ORIGINAL_PATH] = path
        return new
    if following in resources:
        new = dict(scope)
        new[UNKNOWN_TENANT] = first
        return new
    return scope


def unserved_route(method: str, path: str) -> str | None:
    """The Kestra route `method path` is, when Tiercel does not serve it: `POST
    /api/v1/executions/{executionId}/restart`."""
    for methods, pattern, template in UNSERVED:
        found = pattern.match(path)
        if found and method in methods:
            return f"{method} {PREFIX}{found.expand(template)}"
    return None


def _refuse_unserved() -> None:
    route = unserved_route(request.method, request.path)
    if route is None:
        return
    # As if no route matched: the access checks still ask for credentials, then the 404
    # handler answers with `not_found_message`.
    request.url_rule = None
    request.view_args = None
    request.routing_exception = NotFound()


def not_found_message() -> str:
    """What a 404 for an unknown path says: the tenant that does not exist, the Kestra route
    Tiercel does not serve, or the method and path no route answers."""
    tenant = request.scope.get(UNKNOWN_TENANT)
    if tenant is not None:
        return (
            f"No tenant {str(tenant)[:100]!r}: Tiercel has one tenant, {TENANT!r} "
            f"(call /api/v1/{TENANT}/... or /api/v1/...)"
        )
    route = unserved_route(request.method, request.path)
    if route is not None:
        return (
            f"No route {route}: Tiercel does not serve this Kestra route; docs/api.md lists "
            "the routes it serves"
        )
    path = request.scope.get(ORIGINAL_PATH, request.path)
    return f"No route {request.method} {path[:500]}; docs/api.md lists the routes Tiercel serves"
