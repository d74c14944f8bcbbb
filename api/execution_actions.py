"""Actions on one execution, at Kestra's paths (kill and resume are in api/app.py):

- `POST /api/v1/executions/{id}/replay?taskRunId=&revision=`: a new execution that keeps the
  task runs before `taskRunId` and runs on from it (from the start without it), on the flow's
  `revision` when given; answers the new execution.
- `POST /api/v1/executions/{id}/restart`: the failed and killed task runs of a FAILED or KILLED
  execution run again, as new attempts of the same execution; answers the execution.
- `POST /api/v1/executions/{id}/pause`: a running execution starts nothing more until
  `POST .../resume`.
- `POST /api/v1/executions/{id}/state` with `{"taskRunId": ..., "state": "SUCCESS"}`: an ended
  task run's state set by hand, the execution going on from there; answers the execution.
- `POST /api/v1/executions/{id}/labels` with `[{"key": ..., "value": ...}]`: the labels of an
  ended execution; answers the execution.

Each is a command recorded in the execution's stream with who made it and, when given, why
(`reason`, in the query or the JSON object body), refused with 409 when the execution's state
does not allow it; an `Idempotency-Key` header makes a retried request do nothing twice.
"""

from __future__ import annotations

from typing import Any

from quart import Blueprint, Response, request

from api import bodies
from api.auth import access, actor
from engine import commands
from engine.errors import InvalidRequest
from engine.server import ServerContext

MAX_REASON = 1000
"""Characters a reason may hold."""


def _answer(body: Any, status: int = 200) -> Response:
    return Response(bodies.json_bytes(body), status=status, content_type="application/json")


def _command_id(action: str, execution_id: str) -> str | None:
    key = request.headers.get("Idempotency-Key")
    if key is None:
        return None
    key = key.strip()
    if not key or len(key) > 255:
        raise InvalidRequest(
            "The Idempotency-Key header must hold 1 to 255 bytes (a UUID is a good key)"
        )
    return f"api:{action}:{execution_id}:{key}"


def _reason(body: dict[str, Any] | None = None) -> str | None:
    reason = request.args.get("reason")
    if reason is None and body is not None:
        reason = body.get("reason")
    if reason is None:
        return None
    if not isinstance(reason, str):
        raise InvalidRequest("reason must be a string")
    reason = reason.strip()
    if len(reason) > MAX_REASON:
        raise InvalidRequest(f"reason holds {len(reason)} characters; at most {MAX_REASON}")
    bodies.check_value(reason, "reason")
    return reason or None


def _revision() -> int | None:
    raw = request.args.get("revision")
    if raw is None or raw == "":
        return None
    if not raw.isdigit() or not 1 <= int(raw) <= 2**31 - 1:
        raise InvalidRequest(f"revision must be a positive whole number, got {raw!r}")
    return int(raw)


def _text_arg(name: str) -> str | None:
    raw = request.args.get(name)
    if raw is None or raw == "":
        return None
    if len(raw) > 255 or "\x00" in raw:
        raise InvalidRequest(f"{name} is not a valid id")
    return raw


async def _json_body(what: str) -> Any:
    data = await request.get_data()
    if not data.strip():
        raise InvalidRequest(f"The request body is empty: send {what}")
    return await bodies.off_loop(bodies.parse_json, data)


def blueprint(ctx: ServerContext) -> Blueprint:
    """The routes, on `ctx`'s store."""
    routes = Blueprint("execution_actions", __name__)
    store = ctx.store

    async def execution(execution_id: str) -> Response:
        return _answer(commands.execution_json(await commands.load_execution(store, execution_id)))

    @routes.post("/api/v1/executions/<execution_id>/replay")
    @access("runner")
    async def replay_execution(execution_id: str) -> Response:
        """Replay an ended execution from a task run (or from the start) as a new execution."""
        new_id = await commands.replay_execution(
            store,
            execution_id,
            task_run_id=_text_arg("taskRunId"),
            revision=_revision(),
            actor=actor(),
            reason=_reason(),
            command_id=_command_id("replay", execution_id),
        )
        return await execution(new_id)

    @routes.post("/api/v1/executions/<execution_id>/restart")
    @access("runner")
    async def restart_execution(execution_id: str) -> Response:
        """Run the failed task runs of a FAILED or KILLED execution again, in the execution."""
        if request.args.get("revision"):
            raise InvalidRequest(
                "A restart runs the execution's own revision: to run another revision, replay "
                f"it (POST /api/v1/executions/{execution_id}/replay?revision=...)"
            )
        await commands.restart_execution(
            store,
            execution_id,
            actor=actor(),
            reason=_reason(),
            command_id=_command_id("restart", execution_id),
        )
        return await execution(execution_id)

    @routes.post("/api/v1/executions/<execution_id>/pause")
    @access("runner")
    async def pause_execution(execution_id: str) -> Response:
        """Pause a running execution: nothing more starts until it is resumed."""
        await commands.pause_execution(
            store,
            execution_id,
            actor=actor(),
            reason=_reason(),
            command_id=_command_id("pause", execution_id),
        )
        return Response("", status=204)

    @routes.post("/api/v1/executions/<execution_id>/state")
    @access("runner")
    async def change_task_run_state(execution_id: str) -> Response:
        """Set an ended task run's state by hand: {"taskRunId": ..., "state": "SUCCESS"}."""
        body = await _json_body('{"taskRunId": ..., "state": "SUCCESS"}')
        if not isinstance(body, dict):
            raise InvalidRequest('The body must be a JSON object {"taskRunId": ..., "state": ...}')
        task_run_id, state = body.get("taskRunId"), body.get("state")
        if not isinstance(task_run_id, str) or not task_run_id:
            raise InvalidRequest("taskRunId is required: the id of the task run to change")
        if not isinstance(state, str) or not state:
            raise InvalidRequest("state is required: SUCCESS, WARNING or FAILED")
        await commands.change_task_run_state(
            store,
            execution_id,
            task_run_id,
            state,
            actor=actor(),
            reason=_reason(body),
            command_id=_command_id("state", execution_id),
        )
        return await execution(execution_id)

    @routes.post("/api/v1/executions/<execution_id>/labels")
    @access("runner")
    async def set_execution_labels(execution_id: str) -> Response:
        """Set the labels of an ended execution: [{"key": ..., "value": ...}]."""
        body = await _json_body('the labels, as [{"key": ..., "value": ...}]')
        if not isinstance(body, list):
            raise InvalidRequest('The body must be a JSON list [{"key": ..., "value": ...}]')
        await commands.set_labels(
            store,
            execution_id,
            body,
            actor=actor(),
            reason=_reason(),
            command_id=_command_id("labels", execution_id),
        )
        return await execution(execution_id)

    return routes
