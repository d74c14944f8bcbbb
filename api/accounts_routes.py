"""Routes for accounts and API tokens: `/api/v1/me`, `/api/v1/users`, `/api/v1/tokens`.

Admins manage every account and token. Anyone signed in may read who they are and issue tokens
for themselves, never with more role or namespaces than they have, and list or revoke those.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import orjson
from quart import Response, request
from quart_trio import QuartTrio

from api import bodies
from api.auth import (
    CSRF_HEADER,
    SESSION_COOKIE,
    SESSION_SECONDS,
    Guard,
    access,
    actor,
    principal,
    public,
)
from engine import accounts
from engine.accounts import ROLES, namespace_in
from engine.errors import Forbidden, InvalidRequest, NotFound


def _answer(body: Any, status: int = 200) -> Response:
    return Response(bodies.json_bytes(body), status=status, content_type="application/json")


async def _object() -> dict[str, Any]:
    data = await request.get_data()
    if (request.mimetype or "") != "application/json":
        raise InvalidRequest("Send the fields as a JSON object (Content-Type: application/json)")
    try:
        body = orjson.loads(data or b"{}")
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"The request body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise InvalidRequest("The request body must be a JSON object")
    return body


def _text(body: dict[str, Any], name: str, required: bool = True) -> str | None:
    value = body.get(name)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value:
        raise InvalidRequest(f"Field '{name}' must be a non-empty string")
    return value


def _namespaces(body: dict[str, Any]) -> list[str] | None:
    value = body.get("namespaces")
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise InvalidRequest("Field 'namespaces' must be a list of namespaces")
    return accounts.check_namespaces(value)


def register(app: QuartTrio, guard: Guard) -> None:
    """Add the account and token routes to `app`."""
    store = guard.ctx.store

    async def fresh() -> accounts.Accounts:
        guard.accounts = await accounts.load(guard.ctx.db, guard.accounts)
        return guard.accounts

    @app.post("/api/v1/login")
    @public
    async def login() -> Response:
        # Public (no credentials yet), but only from this server's own pages or from tools.
        guard.check_same_origin()
        if not guard.enabled:
            raise InvalidRequest("This server runs without authentication (--no-auth)")
        body = await _object()
        who, cookie, csrf = await guard.login(
            _text(body, "username") or "", _text(body, "password") or ""
        )
        response = _answer({"principal": who.actor, "role": who.role, "csrfToken": csrf})
        response.set_cookie(
            SESSION_COOKIE,
            cookie,
            max_age=SESSION_SECONDS,
            httponly=True,
            samesite="Strict",
            secure=request.scheme == "https",
            path="/",
        )
        response.headers[CSRF_HEADER] = csrf
        return response

    @app.post("/api/v1/logout")
    @public
    async def logout() -> Response:
        guard.check_same_origin()
        response = Response("", status=204)
        response.delete_cookie(SESSION_COOKIE, path="/")
        return response

    @app.get("/api/v1/me")
    @access("viewer")
    async def me() -> Response:
        who = principal()
        return _answer(
            {
                "principal": who.actor,
                "kind": who.kind,
                "name": who.name,
                "role": who.role,
                "namespaces": list(who.namespaces),
            }
        )

    @app.get("/api/v1/users")
    @access("admin")
    async def list_users() -> Response:
        return _answer(accounts.users_json(await fresh()))

    @app.post("/api/v1/users")
    @access("admin")
    async def create_user() -> Response:
        body = await _object()
        username = _text(body, "username")
        assert username is not None
        await accounts.create_user(
            store,
            username,
            _text(body, "password") or "",
            _text(body, "role", required=False) or "viewer",
            _namespaces(body) or [],
            actor=actor(),
        )
        found = [u for u in accounts.users_json(await fresh()) if u["username"] == username]
        return _answer(found[0], 201)

    @app.put("/api/v1/users/<username>")
    @access("viewer")
    async def update_user(username: str) -> Response:
        who = principal()
        body = await _object()
        own = who.kind == "user" and who.name == username
        if not who.has_role("admin") and not (own and set(body) <= {"password"}):
            raise Forbidden("Only an admin may change another account, or a role or namespaces")
        await accounts.update_user(
            store,
            username,
            password=_text(body, "password", required=False),
            role=_text(body, "role", required=False),
            namespaces=_namespaces(body),
            actor=actor(),
        )
        found = [u for u in accounts.users_json(await fresh()) if u["username"] == username]
        return _answer(found[0])

    @app.delete("/api/v1/users/<username>")
    @access("admin")
    async def revoke_user(username: str) -> Response:
        await accounts.revoke_user(store, username, actor=actor())
        return Response("", status=204)

    @app.get("/api/v1/tokens")
    @access("viewer")
    async def list_tokens() -> Response:
        who = principal()
        listed = accounts.tokens_json(await fresh(), dt.datetime.now(dt.UTC))
        if not who.has_role("admin"):
            listed = [t for t in listed if who.kind == "user" and t["owner"] == who.name]
        return _answer(listed)

    @app.post("/api/v1/tokens")
    @access("viewer")
    async def create_token() -> Response:
        who = principal()
        body = await _object()
        now = dt.datetime.now(dt.UTC)
        role = _text(body, "role", required=False) or who.role
        accounts.check_role(role)
        scopes = _namespaces(body)
        owner = who.name if who.kind == "user" else None
        if who.has_role("admin") and "owner" in body:
            owner = _text(body, "owner", required=False)
        if not who.has_role("admin"):
            if who.kind != "user":
                raise Forbidden("Only a user or an admin may issue tokens")
            if ROLES.index(role) > ROLES.index(who.role):
                raise Forbidden(f"A token cannot have more than your role ({who.role})")
            if scopes is None:
                scopes = list(who.namespaces)
            if who.namespaces and not all(namespace_in(n, who.namespaces) for n in scopes):
                raise Forbidden("A token cannot reach namespaces you cannot reach")
        token_id, token = await accounts.create_token(
            store,
            _text(body, "name") or "",
            role,
            scopes or [],
            owner=owner,
            expires_at=accounts.token_expiry(body.get("expires"), now),
            actor=actor(),
        )
        listed = accounts.tokens_json(await fresh(), now)
        info = next(t for t in listed if t["id"] == token_id)
        return _answer({**info, "token": token}, 201)

    @app.delete("/api/v1/tokens/<token_id>")
    @access("viewer")
    async def revoke_token(token_id: str) -> Response:
        who = principal()
        token = (await fresh()).tokens.get(token_id)
        if token is None:
            raise NotFound(f"No token {token_id!r}")
        if not who.has_role("admin") and not (who.kind == "user" and token.owner == who.name):
            raise Forbidden("Only an admin or the token's owner may revoke it")
        await accounts.revoke_token(store, token_id, actor=actor())
        return Response("", status=204)
