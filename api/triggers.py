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
- `GET /api/v1/triggers/{namespace}/{flowId}`: every trigger of the flow, as the search shows
  them.
- `GET /api/v1/triggers/search` (`namespace` prefix, `flowId`, `q`, `page`, `size`, `sort`):
  every trigger of the latest revision of every deployed flow, as Kestra pages them:
  `{"results": [{"abstractTrigger": ..., "triggerContext": ...}], "total": n}`.
- `PUT /api/v1/triggers/{namespace}/{flowId}/{triggerId}` (body `{"disabled": true}`) and
  Kestra's `PUT /api/v1/triggers` (body: the trigger context with `disabled`): disable or
  enable a trigger (`TriggerToggled`, with who asked).
- `POST /api/v1/triggers/{namespace}/{flowId}/{triggerId}/unlock`: end a backfill left running
  or paused, which holds the trigger (no other backfill can start) — see docs/triggers.md.

Starting or pausing a backfill, toggling and unlocking need the editor role in the flow's
namespace; reading and searching, viewer (a search shows the caller's namespaces only).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import msgspec
from quart import Blueprint, Response, request

from api import bodies
from api.auth import access, actor, namespace_filter, require_namespace
from engine import commands, scheduler
from engine import events as ev
from engine.errors import Conflict, InvalidRequest, NotFound, TiercelError, WrongExpectedVersion
from engine.flow import Flow
from engine.server import ServerContext
from engine.store import EventStore
from engine.triggers import PendingTrigger, PollingTrigger, ScheduledTrigger, Trigger

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
        flow, trigger = await _trigger_of(store, namespace, flow_id, trigger_id)
        if isinstance(trigger, ScheduledTrigger):
            return _answer(await scheduler.trigger_status(store, namespace, flow_id, trigger_id))
        # Other types have no ticks nor backfills: their context as the search shows it.
        return _answer((await _row(store, flow, trigger))["triggerContext"])

    @routes.get("/api/v1/triggers/<namespace>/<flow_id>")
    @access("viewer")
    async def flow_triggers(namespace: str, flow_id: str) -> Response:
        """Every trigger of a flow's latest revision with its state (Kestra's page shape)."""
        record, flow = await commands.flow_to_run(store, namespace, flow_id)
        flow = msgspec.structs.replace(flow, revision=record.revision)
        rows = [await _row(store, flow, trigger) for trigger in flow.triggers]
        return _answer({"results": rows, "total": len(rows)})

    @routes.get("/api/v1/triggers/search")
    @access("viewer")
    async def search_triggers() -> Response:
        """Search triggers: each trigger of each deployed flow's latest revision, with its
        state (last date, next date, disabled, backfill), paged as Kestra pages them."""
        args = request.args
        page = _positive(args.get("page"), "page", 1)
        size = min(_positive(args.get("size"), "size", 10), MAX_PAGE_SIZE)
        field, descending = _sort(args.get("sort"))
        prefix = args.get("namespace") or None
        flow_id = args.get("flowId") or None
        q = (args.get("q") or "").strip().lower()
        found = [
            (flow, trigger)
            for flow in await _deployed(store, prefix, flow_id)
            for trigger in flow.triggers
            if not q or any(q in text.lower() for text in (trigger.id, flow.id, flow.namespace))
        ]
        if field in STATE_SORTS:
            rows = [await _row(store, flow, trigger) for flow, trigger in found]
            rows.sort(
                key=lambda r: (r["triggerContext"][field] is None, r["triggerContext"][field] or "")
            )
            if descending:
                rows.reverse()
            shown = rows[(page - 1) * size : page * size]
        else:
            found.sort(
                key=lambda ft: {
                    "namespace": (ft[0].namespace, ft[0].id, ft[1].id),
                    "flowId": (ft[0].id, ft[0].namespace, ft[1].id),
                    "triggerId": (ft[1].id, ft[0].namespace, ft[0].id),
                }[field],
                reverse=descending,
            )
            shown = [
                await _row(store, flow, trigger)
                for flow, trigger in found[(page - 1) * size : page * size]
            ]
        return _answer({"results": shown, "total": len(found)})

    @routes.put("/api/v1/triggers/<namespace>/<flow_id>/<trigger_id>")
    @access("editor")
    async def set_trigger_disabled(namespace: str, flow_id: str, trigger_id: str) -> Response:
        """Disable or enable a trigger: body `{"disabled": true}` (or `{"enabled": false}`)."""
        require_namespace(namespace, "editor")
        body = await bodies.json_object('{"disabled": true}')
        return _answer(await _toggle(store, namespace, flow_id, trigger_id, body))

    @routes.put("/api/v1/triggers")
    @access("editor")
    async def update_trigger() -> Response:
        """Kestra's update of a trigger: body `{namespace, flowId, triggerId, disabled}`."""
        body = await bodies.json_object(
            '{"namespace": "company.team", "flowId": "nightly", "triggerId": "schedule", '
            '"disabled": true}'
        )
        namespace, flow_id, trigger_id = _target(body)
        return _answer(await _toggle(store, namespace, flow_id, trigger_id, body))

    @routes.post("/api/v1/triggers/<namespace>/<flow_id>/<trigger_id>/unlock")
    @access("editor")
    async def unlock_trigger(namespace: str, flow_id: str, trigger_id: str) -> Response:
        """Unlock a trigger: end its backfill left running or paused (409 when none)."""
        require_namespace(namespace, "editor")
        flow, trigger = await _trigger_of(store, namespace, flow_id, trigger_id)
        stream = ev.trigger_stream(namespace, flow_id, trigger_id)
        for _ in range(20):
            state = scheduler.fold(await store.read_stream(stream))
            backfill = state.backfill
            if backfill is None or backfill.ended:
                raise Conflict(
                    f"Trigger '{trigger_id}' of {namespace}.{flow_id} is not locked: it has no "
                    "backfill left running or paused"
                )
            ended = ev.BackfillEnded(
                namespace=namespace,
                flowId=flow_id,
                triggerId=trigger_id,
                backfillId=backfill.id,
                fired=backfill.fired,
                cancelled=True,
            )
            try:
                await store.append(
                    stream, [ended], expected_version=state.version, meta={"actor": actor()}
                )
            except WrongExpectedVersion:
                continue  # the scheduler fired a tick of it meanwhile
            break
        else:
            raise Conflict(f"Trigger '{trigger_id}' keeps changing: try again")
        return _answer((await _row(store, flow, trigger))["triggerContext"])

    return routes


MAX_PAGE_SIZE = 1000
STATE_SORTS = ("date", "nextExecutionDate")
SORTS = ("namespace", "flowId", "triggerId", *STATE_SORTS)


def _positive(value: str | None, name: str, default: int) -> int:
    if value is None or value == "":
        return default
    try:
        number = int(value)
    except ValueError:
        number = 0
    if number < 1:
        raise InvalidRequest(f"`{name}` must be a whole number of at least 1, not {value[:40]!r}")
    return number


def _sort(value: str | None) -> tuple[str, bool]:
    """Kestra's `sort=field:asc|desc` (triggerId ascending by default)."""
    if not value:
        return "triggerId", False
    field, _, order = value.partition(":")
    if field not in SORTS or order.lower() not in ("", "asc", "desc"):
        raise InvalidRequest(
            f"`sort` {value[:60]!r} is not one of {', '.join(SORTS)}, followed by :asc or :desc"
        )
    return field, order.lower() == "desc"


async def _deployed(store: EventStore, prefix: str | None, flow_id: str | None) -> list[Flow]:
    """The latest revision of every deployed flow that has triggers, in the caller's
    namespaces (and under `prefix`, of id `flow_id`, when given), parsed; a revision that no
    longer parses is left out (its triggers do not run)."""
    scope, params = namespace_filter("namespace")
    conditions = [scope]
    if prefix is not None:
        conditions.append("(namespace = %s OR starts_with(namespace, %s))")
        params += [prefix, prefix + "."]
    if flow_id is not None:
        conditions.append("flow_id = %s")
        params.append(flow_id)
    rows = await store.db.fetchall(
        "SELECT namespace, flow_id FROM ("
        " SELECT DISTINCT ON (stream_id) type, data->>'namespace' AS namespace,"
        " data->>'flowId' AS flow_id, data->>'source' AS source FROM events"
        " WHERE stream_id LIKE 'flow:%%'"
        " AND type IN ('FlowCreated', 'FlowUpdated', 'FlowDeleted')"
        " ORDER BY stream_id, version DESC) latest"
        " WHERE type <> 'FlowDeleted' AND source LIKE '%%triggers%%' AND "
        + " AND ".join(conditions),
        tuple(params),
    )
    flows = []
    for row in rows:
        try:
            record, flow = await commands.flow_to_run(store, row["namespace"], row["flow_id"])
        except (TiercelError, ValueError):
            continue
        flows.append(msgspec.structs.replace(flow, revision=record.revision))
    return flows


async def _trigger_of(
    store: EventStore, namespace: str, flow_id: str, trigger_id: str
) -> tuple[Flow, Trigger]:
    record, flow = await commands.flow_to_run(store, namespace, flow_id)
    flow = msgspec.structs.replace(flow, revision=record.revision)
    trigger = next((t for t in flow.triggers if t.id == trigger_id), None)
    if trigger is None:
        ids = [t.id for t in flow.triggers]
        raise NotFound(
            f"Flow {namespace}.{flow_id} has no trigger '{trigger_id}'"
            + (f"; it has {', '.join(ids)}" if ids else "; it has no triggers")
        )
    return flow, trigger


async def _toggle(
    store: EventStore, namespace: str, flow_id: str, trigger_id: str, body: dict[str, Any]
) -> dict[str, Any]:
    disabled = body.get("disabled")
    if disabled is None and isinstance(body.get("enabled"), bool):
        disabled = not body["enabled"]
    if not isinstance(disabled, bool):
        raise InvalidRequest('`disabled` is required, true or false: e.g. {"disabled": true}')
    flow, trigger = await _trigger_of(store, namespace, flow_id, trigger_id)
    # Asking for the state it already has records nothing: enabling an enabled trigger again
    # would move the instant it owes ticks from.
    if await commands.trigger_enabled(store, namespace, flow_id, trigger_id) == disabled:
        await commands.toggle_trigger(
            store, namespace, flow_id, trigger_id, not disabled, actor=actor()
        )
    context: dict[str, Any] = (await _row(store, flow, trigger))["triggerContext"]
    return context


async def _state(
    store: EventStore, stream: str
) -> tuple[scheduler.TriggerState, dt.datetime | None]:
    """What `scheduler.fold` tells of a trigger's stream, from the latest event of each kind
    (a per-second schedule's stream holds a tick a second: a search does not read them all),
    and when the stream last changed."""
    rows = await store.db.fetchall(
        "SELECT DISTINCT ON (type, backfill) type, backfill, version, recorded_at, data FROM"
        " (SELECT type, coalesce(data->>'backfill', 'false') AS backfill, version, recorded_at,"
        " data FROM events WHERE stream_id = %s) s ORDER BY type, backfill, version DESC",
        (stream,),
    )
    state = scheduler.TriggerState()
    if not rows:
        return state, None
    latest = {(r["type"], r["backfill"]): r for r in rows}
    state.version = max(r["version"] for r in rows)
    updated: dt.datetime = max(r["recorded_at"] for r in rows)
    toggled = latest.get(("TriggerToggled", "false"))
    if toggled is not None:
        state.enabled = bool(toggled["data"].get("enabled"))
    ticks = [latest.get(("TriggerFired", "false")), latest.get(("TriggerSkipped", "false"))]
    last = max((r for r in ticks if r is not None), key=lambda r: r["version"], default=None)
    if last is not None:
        state.last = scheduler._parse(last["data"]["date"])
    polled = latest.get(("TriggerPolled", "false"))
    if polled is not None:
        state.polled = scheduler._parse(polled["data"]["date"])
    started = latest.get(("BackfillStarted", "false"))
    if started is not None:
        data = started["data"]
        backfill = scheduler.BackfillState(
            data["backfillId"],
            scheduler._parse(data["start"]),
            scheduler._parse(data["end"]),
            int(data["total"]),
            dict(data.get("inputs") or {}),
            list(data.get("labels") or []),
        )
        since = started["version"]

        def after(kind: str) -> dict[str, Any] | None:
            row = latest.get((kind, "false"))
            return row if row is not None and row["version"] > since else None

        paused, resumed, ended = (
            after("BackfillPaused"),
            after("BackfillResumed"),
            after("BackfillEnded"),
        )
        backfill.paused = paused is not None and (
            resumed is None or resumed["version"] < paused["version"]
        )
        if ended is not None:
            backfill.ended = True
            backfill.cancelled = bool(ended["data"].get("cancelled"))
        fired = await store.db.fetchone(
            "SELECT count(*) AS n, max(version) AS last FROM events WHERE stream_id = %s"
            " AND version > %s AND type = 'TriggerFired' AND data->>'backfill' = 'true'",
            (stream, since),
        )
        if fired is not None and fired["n"]:
            backfill.fired = int(fired["n"])
            cursor = latest.get(("TriggerFired", "true"))
            if cursor is not None:
                backfill.cursor = scheduler._parse(cursor["data"]["date"])
        state.backfill = backfill
    return state, updated


def _written(trigger: Trigger) -> dict[str, Any]:
    if isinstance(trigger, PendingTrigger):
        return dict(trigger.written)
    found: dict[str, Any] = msgspec.to_builtins(trigger)
    return found


async def _row(store: EventStore, flow: Flow, trigger: Trigger) -> dict[str, Any]:
    """One trigger as Kestra's search answers it: the trigger as written, and its context
    (state) folded from its stream."""
    stream = ev.trigger_stream(flow.namespace, flow.id, trigger.id)
    state, updated = await _state(store, stream)
    now = dt.datetime.now(dt.UTC)
    date: str | None = None
    following: str | None = None
    if isinstance(trigger, ScheduledTrigger):
        date = trigger.local(state.last).isoformat() if state.last else None
        upcoming = trigger.next_fire(state.last or now)
        following = trigger.local(upcoming).isoformat() if upcoming else None
    elif isinstance(trigger, PollingTrigger):
        date = state.polled.isoformat() if state.polled else None
        following = max(now, (state.polled or now) + trigger.poll_interval()).isoformat()
    elif state.last is not None:
        date = state.last.isoformat()
    backfill = state.backfill
    return {
        "abstractTrigger": _written(trigger),
        "triggerContext": {
            "tenantId": "main",
            "namespace": flow.namespace,
            "flowId": flow.id,
            "flowRevision": flow.revision,
            "triggerId": trigger.id,
            "type": trigger.type,
            "date": date,
            "nextExecutionDate": following,
            "updatedDate": updated.isoformat() if updated else None,
            "disabled": trigger.disabled or flow.disabled or not state.enabled,
            "stopAfter": trigger.stopAfter,
            "backfill": backfill.json(trigger if isinstance(trigger, ScheduledTrigger) else None)
            if backfill
            else None,
            "locked": backfill is not None and not backfill.ended,
        },
    }
