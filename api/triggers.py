"""Routes for triggers' state and backfills, as Kestra's: `/api/v1/triggers/...`.

- `POST /api/v1/triggers/backfill`: one execution per tick of a Schedule trigger between
  `start` and `end`. The body is Kestra's trigger with its `backfill`:
  `{"namespace", "flowId", "triggerId", "backfill": {"start", "end", "inputs", "labels"}}`
  (the backfill's properties may also be given at the top level). `end` defaults to now;
  `labels` is a mapping or Kestra's `[{key, value}]`. Answers the trigger with its backfill.
- `PUT /api/v1/triggers/backfill/pause` and `.../unpause` (body: namespace, flowId, triggerId):
  pause or resume the trigger's running backfill.
- `GET /api/v1/triggers/{namespace}/{flowId}/{triggerId}`: the trigger's state: its last tick
  (`date`), `nextExecutionDate`, `disabled`, and its backfill with its progress (`total`,
  `fired`, `currentDate`, `paused`, `ended`).

Starting or pausing a backfill needs the editor role in the flow's namespace; reading, viewer.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from quart import Blueprint, Response

from api import bodies
from api.auth import access, actor, require_namespace
from engine import scheduler
from engine.errors import InvalidRequest
from engine.server import ServerContext

EXAMPLE = (
    '{"namespace": "company.team", "flowId": "nightly", "triggerId": "schedule", '
    '"backfill": {"start": "2024-01-01T00:00:00Z", "end": "2024-01-02T00:00:00Z"}}'
)


def _answer(body: Any, status: int = 200) -> Response:
    return Response(bodies.json_bytes(body), status=status, content_type="application/json")


def _text(body: dict[str, Any], name: str) -> str:
    value = body.get(name)
    if not isinstance(value, str) or not value:
        raise InvalidRequest(f"`{name}` is required (a non-empty string); e.g. {EXAMPLE}")
    return value


def _date(value: Any, name: str) -> dt.datetime | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidRequest(f"`{name}` must be an ISO-8601 date-time such as 2024-01-01T00:00Z")
    try:
        parsed = dt.datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        raise InvalidRequest(
            f"`{name}` {value[:60]!r} is not an ISO-8601 date-time such as 2024-01-01T00:00Z"
        ) from None
    # A date-time without an offset is read in UTC, as Kestra's API reads it.
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)


def _labels(value: Any) -> list[dict[str, str]]:
    if value is None:
        return []
    if isinstance(value, dict):
        return [{"key": str(k), "value": str(v)} for k, v in value.items()]
    if isinstance(value, list) and all(
        isinstance(item, dict) and isinstance(item.get("key"), str) for item in value
    ):
        return [{"key": item["key"], "value": str(item.get("value"))} for item in value]
    raise InvalidRequest('`labels` must be a mapping or a list of {"key": ..., "value": ...}')


def _target(body: dict[str, Any]) -> tuple[str, str, str]:
    namespace = _text(body, "namespace")
    require_namespace(namespace, "editor")
    return namespace, _text(body, "flowId"), _text(body, "triggerId")


def blueprint(ctx: ServerContext) -> Blueprint:
    """The trigger routes, on `ctx`'s store."""
    routes = Blueprint("triggers", __name__)
    store = ctx.store

    @routes.post("/api/v1/triggers/backfill")
    @access("editor")
    async def start_backfill() -> Response:
        body = await bodies.json_object(EXAMPLE)
        namespace, flow_id, trigger_id = _target(body)
        nested = body.get("backfill")
        if nested is not None and not isinstance(nested, dict):
            raise InvalidRequest(f"`backfill` must be an object; e.g. {EXAMPLE}")
        given = {**body, **(nested or {})}
        start = _date(given.get("start"), "start")
        if start is None:
            raise InvalidRequest(f"`backfill.start` is required; e.g. {EXAMPLE}")
        inputs = given.get("inputs") or {}
        if not isinstance(inputs, dict):
            raise InvalidRequest("`inputs` must be an object of input ids and values")
        bodies.check_value(inputs, "The inputs")
        answer = await scheduler.start_backfill(
            store,
            namespace,
            flow_id,
            trigger_id,
            start=start,
            end=_date(given.get("end"), "end"),
            inputs=inputs,
            labels=_labels(given.get("labels")),
            actor=actor(),
        )
        return _answer(answer)

    async def _pause(paused: bool) -> Response:
        body = await bodies.json_object(
            '{"namespace": "company.team", "flowId": "nightly", "triggerId": "schedule"}'
        )
        namespace, flow_id, trigger_id = _target(body)
        answer = await scheduler.pause_backfill(
            store, namespace, flow_id, trigger_id, paused, actor=actor()
        )
        return _answer(answer)

    @routes.put("/api/v1/triggers/backfill/pause")
    @access("editor")
    async def pause_backfill() -> Response:
        return await _pause(True)

    @routes.put("/api/v1/triggers/backfill/unpause")
    @access("editor")
    async def unpause_backfill() -> Response:
        return await _pause(False)

    @routes.get("/api/v1/triggers/<namespace>/<flow_id>/<trigger_id>")
    @access("viewer")
    async def trigger_state(namespace: str, flow_id: str, trigger_id: str) -> Response:
        return _answer(await scheduler.trigger_status(store, namespace, flow_id, trigger_id))

    return routes
