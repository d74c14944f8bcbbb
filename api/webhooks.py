"""Webhooks: `GET|POST|PUT /api/v1/executions/webhook/{namespace}/{flowId}/{key}` starts a flow.

The route is public: the key is the credential. It is compared in constant time with the
rendered `key` of each Webhook trigger of the flow's latest revision; a flow that does not
exist, is disabled, or has no enabled webhook with that key answers the same 404 (an anonymous
caller learns nothing about which flows exist) and starts nothing. Kestra answers likewise.

The request becomes the trigger's variables, recorded in the execution's first event and seen by
its tasks as `{{ trigger.body }}` (a JSON object or array parsed, any other text as it is, a
body that is not UTF-8 text base64-encoded), `{{ trigger.headers }}` and
`{{ trigger.parameters }}` (each name lowercased for headers, mapped to the list of its values).
Credentials a caller may send by habit (`Authorization`, `Cookie`, ...) are not recorded.

Because the body is carried in an event, it is bounded more tightly than other bodies:
`TIERCEL_MAX_WEBHOOK_BYTES` (`max-webhook-bytes` in the configuration), 1 MiB by default; a
larger one is answered 413 naming the limit, before the flow is looked at.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import logging
import os
from typing import Any

import msgspec
import orjson
from quart import Blueprint, Response, request
from werkzeug.exceptions import MethodNotAllowed

from api import bodies
from api.auth import public
from engine import commands, secrets, templating
from engine.errors import (
    FlowValidationError,
    InvalidRequest,
    NotFound,
    TemplateError,
    TiercelError,
    WrongExpectedVersion,
)
from engine.flow import Flow
from engine.plugin import ConditionContext
from engine.server import ServerContext
from plugins.core.webhook import Webhook

log = logging.getLogger(__name__)

PATH = "/api/v1/executions/webhook/<namespace>/<flow_id>/<key>"
METHODS = ["GET", "POST", "PUT"]
DEFAULT_MAX_WEBHOOK_BYTES = bodies.MIB
WEBHOOK_SETTING = "TIERCEL_MAX_WEBHOOK_BYTES"
WAIT_SECONDS = 3600.0
"""How long a `wait: true` webhook keeps its caller waiting at most (Kestra's limit too); the
answer then shows the execution as it is, still running."""
UNRECORDED_HEADERS = frozenset(
    {"authorization", "proxy-authorization", "cookie", "x-csrf-token", "x-api-key"}
)
"""Headers that carry a caller's credentials: never written into the execution's history."""
ENDED_HEADER = "X-Tiercel-Execution-Ended"
MAX_NUMBER = 2.0**63
"""A JSON body holding a number this large or larger is kept as text (see `_numbers_fit`)."""
NOT_FOUND = (
    "No enabled webhook answers at this URL: check the namespace, the flow id and the key "
    "(a disabled flow or trigger answers 404 too)"
)


class PayloadTooLarge(TiercelError):
    """A webhook's body over its limit."""

    status = 413


def webhook_limit(ctx: ServerContext) -> int:
    """The largest webhook body this server takes, in bytes: the environment, else the
    configuration, else 1 MiB; never more than the limit of every body."""
    raw = os.environ.get(WEBHOOK_SETTING) or ctx.extra.get("max_webhook_bytes")
    limit = DEFAULT_MAX_WEBHOOK_BYTES
    if raw is not None and raw != "":
        try:
            limit = bodies.parse_size(raw)
        except ValueError:
            raise TiercelError(
                f"{WEBHOOK_SETTING} (or the configuration's max-webhook-bytes) must be a size "
                f"in bytes such as 1048576 or 1MiB, not {raw!r}"
            ) from None
    return min(limit, bodies.body_limits(ctx).body)


def _too_large(limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(
        f"The webhook's body is too large: a webhook request may carry at most "
        f"{bodies.human(limit)}, as the execution records it; send less (or a URI to the data), "
        f"or raise {WEBHOOK_SETTING} (max-webhook-bytes in the configuration) on the server"
    )


# --- the request as the trigger's variables ---------------------------------------------------


def parse_body(data: bytes) -> Any:
    """`trigger.body` as Kestra gives it: None when empty, a JSON object or array parsed, any
    other UTF-8 text as it is, and anything else (or text holding NUL) base64-encoded."""
    if not data:
        return None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return base64.b64encode(data).decode("ascii")
    if "\x00" in text:  # PostgreSQL cannot store it: kept, but as bytes
        return base64.b64encode(data).decode("ascii")
    if text.lstrip()[:1] in ("{", "["):
        try:
            value = orjson.loads(data)
            bodies.check_value(value, "The webhook's body")
        except (orjson.JSONDecodeError, InvalidRequest):
            return text  # not JSON after all, or nested too deep: the text it is
        if isinstance(value, dict | list) and _numbers_fit(value):
            return value
    return text


def _numbers_fit(value: Any) -> bool:
    """Whether every number of a parsed body survives being recorded: the event log (jsonb)
    writes a float such as 1e30 back as a 31-digit integer, which no JSON answer can carry."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, float) and abs(item) >= MAX_NUMBER:
            return False
        if isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return True


def request_headers() -> dict[str, list[str]]:
    """The request's headers by lowercased name, each with its values, credentials left out."""
    headers: dict[str, list[str]] = {}
    for name, value in request.headers.items():
        lowered = name.lower()
        if lowered not in UNRECORDED_HEADERS:
            headers.setdefault(lowered, []).append(value)
    return headers


def request_parameters() -> dict[str, list[str]]:
    """The query parameters, each with its values."""
    return {name: request.args.getlist(name) for name in request.args}


# --- the trigger that answers -------------------------------------------------------------------


def _flow_view(flow: Flow, revision: int) -> dict[str, Any]:
    return {"id": flow.id, "namespace": flow.namespace, "revision": revision}


def _render_key(trigger: Webhook, context: dict[str, Any]) -> str | None:
    try:
        return templating.render(str(trigger.key), context).strip()
    except TemplateError as exc:
        # Kestra skips such a webhook: the others of the flow still answer.
        log.warning("The key of webhook %s cannot be rendered, skipped: %s", trigger.id, exc)
        return None


async def _matching(ctx: ServerContext, flow: Flow, revision: int, key: str) -> Webhook | None:
    """The flow's first webhook whose rendered key is `key` (compared in constant time)."""
    webhooks = [t for t in flow.triggers if isinstance(t, Webhook)]
    if not webhooks:
        return None
    context: dict[str, Any] = {"flow": _flow_view(flow, revision), "vars": flow.variables}
    if any("secret(" in str(t.key) for t in webhooks):
        stored, unreadable = await secrets.namespace_values(ctx.db, flow.namespace)
        context["secret"] = secrets.lookup(flow.namespace, stored, unreadable, lambda _: None)
    keys = await bodies.off_loop(lambda: [_render_key(t, context) for t in webhooks])
    # Digests of equal length compared in constant time, and every key compared: the time taken
    # tells neither how much of a key was right nor its length.
    wanted = _digest(key)
    found = None
    for trigger, rendered in zip(webhooks, keys, strict=True):
        if rendered and hmac.compare_digest(_digest(rendered), wanted) and found is None:
            found = trigger
    return found


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).digest()


def _conditions_hold(trigger: Webhook, variables: dict[str, Any]) -> bool:
    """Whether every condition of the trigger holds for this request; one that cannot be
    evaluated does not (Kestra's answer then: 204, nothing started)."""
    context = ConditionContext(
        date=dt.datetime.now(dt.UTC), variables=variables, render=templating.render_typed
    )
    for condition in trigger.conditions:
        try:
            if not condition.test(context):
                return False
        except (TiercelError, ValueError, TypeError) as exc:
            log.info("A condition of webhook %s cannot be evaluated: %s", trigger.id, exc)
            return False
    return True


def _labels(trigger: Webhook) -> list[dict[str, str]]:
    given = trigger.labels
    if isinstance(given, dict):
        return [{"key": str(k), "value": str(v)} for k, v in given.items()]
    if isinstance(given, list):
        return [
            {"key": str(item["key"]), "value": str(item.get("value", ""))}
            for item in given
            if isinstance(item, dict) and "key" in item
        ]
    return []


# --- the answer ---------------------------------------------------------------------------------


def _json(body: Any, status: int = 200) -> Response:
    # msgspec, not orjson: a recorded value may hold an integer past 64 bits.
    return Response(msgspec.json.encode(body), status=status, content_type="application/json")


def _task_outputs(execution: dict[str, Any]) -> dict[str, Any]:
    return {run["taskId"]: run["outputs"] for run in execution["taskRunList"]}


def _status(trigger: Webhook, execution: dict[str, Any], variables: dict[str, Any]) -> int:
    """The status of a `wait` answer: `responseCode`, else 500 when the execution failed."""
    default = 500 if execution["state"]["current"] == "FAILED" else 200
    code = trigger.responseCode
    if isinstance(code, str):
        context = {
            "trigger": variables,
            "flow": {"id": execution["flowId"], "namespace": execution["namespace"]},
            "execution": {"id": execution["id"], "state": execution["state"]["current"]},
            "outputs": _task_outputs(execution),
        }
        try:
            code = int(str(templating.render(code, context)).strip())
        except (TemplateError, ValueError) as exc:
            log.warning("responseCode of webhook %s: %s; answering %s", trigger.id, exc, default)
            return default
    if isinstance(code, int) and 100 <= code <= 599:
        return code
    return default


def _outputs_answer(trigger: Webhook, outputs: dict[str, Any], status: int) -> Response:
    if trigger.responseContentType == "text/plain":
        values = list(outputs.values())
        if len(values) == 1 and isinstance(values[0], str):
            text = values[0]
        else:
            text = msgspec.json.encode(outputs).decode()
        return Response(text, status=status, content_type="text/plain; charset=utf-8")
    return _json(outputs, status)


def _idempotency_key() -> str | None:
    key = request.headers.get("Idempotency-Key")
    if key is None:
        return None
    key = key.strip()
    if not key or len(key) > 255:
        raise InvalidRequest(
            "The Idempotency-Key header must hold 1 to 255 bytes (a delivery id is a good key)"
        )
    return key


def blueprint(ctx: ServerContext) -> Blueprint:
    """The webhook route, on `ctx`'s store."""
    routes = Blueprint("webhooks", __name__)
    store = ctx.store
    limit = webhook_limit(ctx)

    @routes.route(PATH, methods=METHODS)
    @public
    async def webhook(namespace: str, flow_id: str, key: str) -> Response:
        if request.method not in METHODS:  # HEAD, which must not start anything
            raise MethodNotAllowed(valid_methods=METHODS)
        if int(request.content_length or 0) > limit:
            raise _too_large(limit)
        try:
            record, flow = await commands.flow_to_run(store, namespace, flow_id)
        except (NotFound, FlowValidationError) as exc:
            # A flow recorded under rules since changed cannot run either: the same answer.
            log.info("Webhook %s.%s: %s", namespace, flow_id, exc)
            raise NotFound(NOT_FOUND) from None
        trigger = None if flow.disabled else await _matching(ctx, flow, record.revision, key)
        if trigger is None or trigger.disabled:
            raise NotFound(NOT_FOUND)
        if not await commands.trigger_enabled(store, namespace, flow_id, trigger.id):
            raise NotFound(NOT_FOUND)
        data = await request.get_data()
        if len(data) > limit:  # sent without a length
            raise _too_large(limit)
        variables = {
            "body": await bodies.off_loop(parse_body, data),
            "headers": request_headers(),
            "parameters": request_parameters(),
        }
        flow_view = _flow_view(flow, record.revision)
        seen = {"trigger": variables, "flow": flow_view, "vars": flow.variables}
        if trigger.conditions and not await bodies.off_loop(_conditions_hold, trigger, seen):
            return Response("", status=204)
        inputs = {}
        if trigger.inputs:
            inputs = await bodies.off_loop(templating.render_value, trigger.inputs, seen)
        retried = _idempotency_key()
        if retried is None:
            execution_id = commands.new_execution_id()
        else:
            # A sender retrying a delivery (same key) gets the execution the first one started.
            execution_id = commands.idempotent_execution_id(
                namespace, flow_id, f"webhook:{trigger.id}:{retried}"
            )
        try:
            if retried is None or not await store.read_execution(execution_id):
                await commands.create_execution(
                    store,
                    namespace,
                    flow_id,
                    inputs,
                    labels=_labels(trigger),
                    revision=record.revision,
                    trigger={
                        "id": trigger.id,
                        "type": "io.kestra.plugin.core.trigger.Webhook",
                        "variables": variables,
                    },
                    actor=f"webhook:{trigger.id}",
                    execution_id=execution_id,
                )
        except WrongExpectedVersion:
            if retried is None:
                raise
        if not trigger.wait:
            state = await commands.load_execution(store, execution_id)
            return _json(commands.execution_json(state))
        state = await commands.wait_for_end(store, ctx.notifier, execution_id, timeout=WAIT_SECONDS)
        execution = commands.execution_json(state)
        status = await bodies.off_loop(_status, trigger, execution, variables)
        if trigger.returnOutputs:
            response = _outputs_answer(trigger, execution["outputs"], status)
        else:
            response = _json(execution, status)
        # As `?wait=true` on the create route: whether the wait ended with the execution.
        response.headers[ENDED_HEADER] = "true" if state.terminal else "false"
        return response

    return routes
