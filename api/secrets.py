"""Routes for the secrets of namespaces: `/api/v1/namespaces/{namespace}/secrets[/{key}]`.

Values go in (PUT) and never come out: reads answer keys and metadata only. Setting or deleting
a secret needs the editor role in its namespace (an editor can write flows that use secrets, so
this gives them nothing new); listing keys needs viewer.
"""

from __future__ import annotations

from typing import Any

import orjson
from quart import Blueprint, Response, request

from api import bodies
from api.auth import access, actor
from engine import secrets
from engine.errors import InvalidRequest
from engine.server import ServerContext

PATH = "/api/v1/namespaces/<namespace>/secrets"


def _answer(body: Any, status: int = 200) -> Response:
    return Response(bodies.json_bytes(body), status=status, content_type="application/json")


async def _body() -> dict[str, Any]:
    if (request.mimetype or "") != "application/json":
        raise InvalidRequest(
            'Send the secret as JSON (Content-Type: application/json): {"value": "..."}'
        )
    try:
        body = orjson.loads(await request.get_data() or b"null")
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"The request body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise InvalidRequest('The request body must be a JSON object: {"value": "..."}')
    return body


def _text(body: dict[str, Any], name: str, *, required: bool) -> str | None:
    value = body.get(name)
    if value is None and not required:
        return None
    if not isinstance(value, str) or (required and value == ""):
        raise InvalidRequest(f"Field '{name}' must be a non-empty string")
    return value


def blueprint(ctx: ServerContext) -> Blueprint:
    """The secrets routes, on `ctx`'s store."""
    routes = Blueprint("secrets", __name__)
    store = ctx.store

    async def put(namespace: str, key: str, body: dict[str, Any]) -> Response:
        value = _text(body, "value", required=True)
        assert value is not None
        description = _text(body, "description", required=False)
        meta = await secrets.set_secret(
            store, namespace, key, value, description=description, actor=actor()
        )
        return _answer(meta)

    @routes.put(f"{PATH}/<key>")
    @access("editor")
    async def put_secret(namespace: str, key: str) -> Response:
        return await put(namespace, key, await _body())

    @routes.put(PATH)
    @access("editor")
    async def put_secret_by_body(namespace: str) -> Response:
        # Kestra's shape: the key travels in the body.
        body = await _body()
        key = _text(body, "key", required=True)
        assert key is not None
        return await put(namespace, key, body)

    @routes.get(PATH)
    @access("viewer")
    async def list_secrets(namespace: str) -> Response:
        found = await secrets.list_secrets(store.db, namespace)
        return _answer({"results": found, "total": len(found)})

    @routes.get(f"{PATH}/<key>")
    @access("viewer")
    async def get_secret(namespace: str, key: str) -> Response:
        return _answer(await secrets.secret_metadata(store.db, namespace, key))

    @routes.delete(f"{PATH}/<key>")
    @access("editor")
    async def delete_secret(namespace: str, key: str) -> Response:
        await secrets.delete_secret(store, namespace, key, actor=actor())
        return Response("", status=204)

    return routes
