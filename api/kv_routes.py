"""Routes for the key-value store of namespaces, as Kestra's: `/api/v1/namespaces/{namespace}/kv`.

- `GET .../kv`: the namespace's keys, `[{key, description, creationDate, updateDate,
  expirationDate}]`.
- `GET .../kv/{key}`: `{"type": "STRING"|"NUMBER"|"BOOLEAN"|"DATETIME"|"DATE"|"DURATION"|"JSON",
  "value": ...}`; 404 for a missing or expired key.
- `PUT .../kv/{key}`: the body is the value itself, read as Kestra reads it: JSON (`"text"`,
  `42`, `true`, `{"a": 1}`), or a bare date-time, date, ISO-8601 duration or word (`2024-05-01`,
  `PT5M`, `hello`); the `ttl` header (an ISO-8601 duration) makes it expire, the `description`
  header describes it.
- `DELETE .../kv/{key}`: `true` when the key was deleted, `false` when it held no value;
  `DELETE .../kv` with `{"keys": [...]}` deletes several and answers those it deleted.

Reading needs the viewer role in the namespace, writing the editor role.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Any

import orjson
from quart import Blueprint, Response, request

from api import bodies
from api.auth import access, actor
from engine import kv
from engine.duration import parse_duration
from engine.errors import InvalidRequest, NotFound, Problem
from engine.execution import iso
from engine.server import ServerContext

PATH = "/api/v1/namespaces/<namespace>/kv"
MAX_VALUE_BYTES = 1024 * 1024
"""A KV value is recorded in an event: at most 1 MiB of it."""
MAX_DESCRIPTION = 1000
MAX_BULK_KEYS = 1000

_WORD = re.compile(r"^[A-Za-z_$][A-Za-z0-9_$]*$")
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_DATETIME = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}:\d{2})?$")


def _answer(body: Any, status: int = 200) -> Response:
    return Response(bodies.json_bytes(body), status=status, content_type="application/json")


def type_of(value: Any) -> str:
    """The Kestra type of a JSON value with no recorded type."""
    if value is None or isinstance(value, str):
        return "STRING"
    if isinstance(value, bool):
        return "BOOLEAN"
    if isinstance(value, int | float):
        return "NUMBER"
    return "JSON"


def parse_value(data: bytes) -> tuple[str, Any]:
    """A PUT body as `(type, value)`, read as Kestra reads it (see the module's description);
    `InvalidRequest` saying how to write it otherwise."""
    if len(data) > MAX_VALUE_BYTES:
        raise InvalidRequest(
            f"The value holds {len(data)} bytes; a KV value may hold at most "
            f"{bodies.human(MAX_VALUE_BYTES)}: keep larger data in a file and store its URI"
        )
    text = bodies.decode_utf8(data, "The value").strip()
    if not text:
        raise InvalidRequest(
            'The body is empty: send the value itself, e.g. "text" (quoted), 42, true or {"a": 1}'
        )
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError:
        return _literal(text)
    bodies.check_value(value, "The value")
    return type_of(value), value


def _literal(text: str) -> tuple[str, Any]:
    """A value that is not JSON but that Kestra reads (its bodies are Amazon Ion)."""
    try:
        if _DATETIME.match(text):
            dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
            return "DATETIME", text
        if _DATE.match(text):
            dt.date.fromisoformat(text)
            return "DATE", text
        if text[:1] in "Pp" and len(text) > 1:
            parse_duration(text)
            return "DURATION", text.upper()
    except ValueError:
        pass
    if _WORD.match(text):
        return "STRING", text
    raise InvalidRequest(
        f"The value {text[:100]!r} cannot be read: send JSON (a text in double quotes, a "
        "number, true/false, an object or a list), or a bare date-time (2024-05-01T10:00:00Z), "
        "date (2024-05-01) or ISO-8601 duration (PT5M)",
        [Problem("not a JSON value or a date, date-time or duration", "body")],
    )


def _ttl() -> dt.timedelta | None:
    raw = request.headers.get("ttl")
    if raw is None or not raw.strip():
        return None
    try:
        ttl = parse_duration(raw)
    except ValueError as exc:
        raise InvalidRequest(
            f"Header 'ttl' must be an ISO-8601 duration such as PT1H or P30D: {exc}",
            [Problem("not an ISO-8601 duration", "ttl")],
        ) from None
    if ttl <= dt.timedelta(0):
        raise InvalidRequest(f"Header 'ttl' must be a positive duration, not {raw[:50]!r}")
    return ttl


def _description() -> str | None:
    raw = request.headers.get("description")
    if raw is None:
        return None
    if len(raw) > MAX_DESCRIPTION:
        raise InvalidRequest(
            f"Header 'description' holds {len(raw)} characters; at most {MAX_DESCRIPTION}"
        )
    return raw


def blueprint(ctx: ServerContext) -> Blueprint:
    """The KV routes, on `ctx`'s store."""
    routes = Blueprint("kv", __name__)
    store = ctx.store

    @routes.get(PATH)
    @access("viewer")
    async def list_keys(namespace: str) -> Response:
        entries = await kv.kv_described(store, namespace)
        return _answer(
            [
                {
                    "key": event.key,
                    "description": event.description,
                    "creationDate": iso(created),
                    "updateDate": iso(updated),
                    "expirationDate": iso(dt.datetime.fromisoformat(event.expiresAt))
                    if event.expiresAt
                    else None,
                }
                for event, created, updated in entries
            ]
        )

    @routes.get(f"{PATH}/<path:key>")
    @access("viewer")
    async def get_value(namespace: str, key: str) -> Response:
        event = await kv.kv_entry(store, namespace, key)
        if event is None:
            raise NotFound(f"No value found for key '{key}' in namespace '{namespace}'")
        # The type recorded with the value (by this API or a Set task's kvType), else its own.
        return _answer({"type": event.kvType or type_of(event.value), "value": event.value})

    @routes.put(f"{PATH}/<path:key>")
    @access("editor")
    async def put_value(namespace: str, key: str) -> Response:
        ttl, description = _ttl(), _description()
        kind, value = await bodies.off_loop(parse_value, await request.get_data())
        await kv.kv_set(
            store,
            namespace,
            key,
            value,
            ttl=ttl,
            kv_type=kind,
            description=description,
            actor=actor(),
        )
        return Response("", status=200)

    @routes.delete(f"{PATH}/<path:key>")
    @access("editor")
    async def delete_value(namespace: str, key: str) -> Response:
        return _answer(await kv.kv_delete(store, namespace, key, actor=actor()))

    @routes.delete(PATH)
    @access("editor")
    async def delete_values(namespace: str) -> Response:
        body = await bodies.json_object('{"keys": ["key", ...]}')
        keys = body.get("keys")
        if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
            raise InvalidRequest('Send the keys to delete as {"keys": ["key", ...]}')
        if len(keys) > MAX_BULK_KEYS:
            raise InvalidRequest(f"At most {MAX_BULK_KEYS} keys are deleted at once")
        deleted = [k for k in keys if await kv.kv_delete(store, namespace, k, actor=actor())]
        return _answer({"keys": deleted})

    return routes
