"""The HTTP polling trigger against a real HTTP server (a thread with http.server), a real
PostgreSQL and a real engine: it starts the flow when the response matches, with the response
as `trigger.*`; it starts nothing when it does not; it polls at its interval, once per interval
even with two schedulers."""

from __future__ import annotations

import datetime as dt
import http.server
import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import trio

import plugins.core  # noqa: F401  (registers the HTTP trigger)
from engine import events as ev
from engine.commands import delete_flow, deploy_flow, wait_for_end
from engine.scheduler import Scheduler
from engine.server import ServerContext


class Endpoint:
    """A local HTTP server answering `status` with `body`, counting the requests it gets."""

    def __init__(self) -> None:
        self.status = 200
        self.body: bytes = b"{}"
        self.hits: list[float] = []
        self.delay = 0.0
        endpoint = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                endpoint.hits.append(time.monotonic())
                time.sleep(endpoint.delay)
                self.send_response(endpoint.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("X-Stock", "low")
                self.send_header("Content-Length", str(len(endpoint.body)))
                self.end_headers()
                self.wfile.write(endpoint.body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/price"

    def __enter__(self) -> Endpoint:
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *args: Any) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def endpoint() -> Iterator[Endpoint]:
    with Endpoint() as found:
        yield found


def _flow(ns: str, uri: str, extra: str = "") -> str:
    return (
        f"id: watcher\nnamespace: {ns}\n"
        "tasks:\n"
        "  - id: seen\n"
        "    type: io.kestra.plugin.core.debug.Return\n"
        '    format: "{{ json(trigger.body).price }} {{ trigger.code }} '
        "{{ trigger.headers['x-stock'][0] }}\"\n"
        "triggers:\n"
        "  - id: http\n"
        "    type: io.kestra.plugin.core.http.Trigger\n"
        f"    uri: {uri}\n"
        "    interval: PT1S\n"
        f"{extra}"
    )


async def _created(ctx: ServerContext, ns: str) -> list[dict[str, Any]]:
    rows = await ctx.store.db.fetchall(
        "SELECT data FROM events WHERE type = 'ExecutionCreated' AND data->>'namespace' = %s"
        " ORDER BY seq",
        (ns,),
    )
    return [r["data"] for r in rows]


async def _polls(ctx: ServerContext, ns: str) -> list[dt.datetime]:
    history = await ctx.store.read_stream(ev.trigger_stream(ns, "watcher", "http"))
    return [
        dt.datetime.fromisoformat(e.event.date)
        for e in history
        if isinstance(e.event, ev.TriggerPolled)
    ]


async def test_a_matching_response_starts_the_flow_which_sees_the_response_as_trigger(
    engine: ServerContext, ns: str, endpoint: Endpoint
) -> None:
    endpoint.body = json.dumps({"price": 99}).encode()
    source = _flow(
        ns,
        endpoint.url,
        '    responseCondition: "{{ json(response.body).price <= 100 }}"\n'
        "    stopAfter: [SUCCESS]\n",
    )
    await deploy_flow(engine.store, source)
    try:
        async with trio.open_nursery() as nursery:
            scheduler = Scheduler(engine.store, engine.notifier, namespace=ns)
            await nursery.start(scheduler.run)
            with trio.fail_after(20):
                while not await _created(engine, ns):
                    await trio.sleep(0.1)
            created = (await _created(engine, ns))[0]
            execution = await wait_for_end(
                engine.store, engine.notifier, created["executionId"], timeout=20
            )
            # stopAfter SUCCESS: once its execution succeeded the trigger disables itself,
            # and further polls (every second) start nothing more.
            with trio.fail_after(10):
                while True:
                    history = await engine.store.read_stream(
                        ev.trigger_stream(ns, "watcher", "http")
                    )
                    toggles = [e.event for e in history if isinstance(e.event, ev.TriggerToggled)]
                    if toggles:
                        break
                    await trio.sleep(0.1)
            hits = len(endpoint.hits)
            await trio.sleep(2.5)
            nursery.cancel_scope.cancel()
    finally:
        await delete_flow(engine.store, ns, "watcher")
    assert execution.state == "SUCCESS"
    [run] = execution.taskruns.values()
    assert run.outputs == {"value": "99 200 low"}
    trigger = created["trigger"]
    assert trigger["type"] == "io.kestra.plugin.core.http.Trigger"
    assert trigger["variables"]["code"] == 200
    assert json.loads(trigger["variables"]["body"]) == {"price": 99}
    assert toggles[-1].enabled is False and "SUCCESS" in (toggles[-1].reason or "")
    assert len(await _created(engine, ns)) == 1
    assert len(endpoint.hits) == hits  # disabled: no more polls


async def test_an_error_answer_with_the_default_condition_starts_nothing(
    engine: ServerContext, ns: str, endpoint: Endpoint
) -> None:
    endpoint.status = 500
    endpoint.body = b'{"error": "down"}'
    await deploy_flow(engine.store, _flow(ns, endpoint.url))
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(Scheduler(engine.store, engine.notifier, namespace=ns).run)
            with trio.fail_after(15):
                while len(endpoint.hits) < 3:
                    await trio.sleep(0.1)
            nursery.cancel_scope.cancel()
    finally:
        await delete_flow(engine.store, ns, "watcher")
    assert await _created(engine, ns) == []
    assert len(await _polls(engine, ns)) >= 3


async def test_two_schedulers_poll_once_per_interval(
    engine: ServerContext, ns: str, endpoint: Endpoint
) -> None:
    endpoint.status = 404  # polled, never matching: only the polls are counted
    source = _flow(ns, endpoint.url).replace("interval: PT1S", "interval: PT2S")
    await deploy_flow(engine.store, source)
    try:
        async with trio.open_nursery() as nursery:
            one = Scheduler(engine.store, engine.notifier, namespace=ns, max_wait=0.1)
            two = Scheduler(engine.store, engine.notifier, namespace=ns, max_wait=0.1)
            await nursery.start(one.run)
            await nursery.start(two.run)
            await trio.sleep(7)
            nursery.cancel_scope.cancel()
    finally:
        await delete_flow(engine.store, ns, "watcher")
    polls = await _polls(engine, ns)
    # Over 7 s at one poll per 2 s: the first at once, then about every 2 s; each request
    # made by exactly one scheduler (one recorded poll per request), never two close together.
    assert 3 <= len(polls) <= 5, polls
    assert len(endpoint.hits) == len(polls)
    gaps = [b - a for a, b in zip(polls, polls[1:], strict=False)]
    assert all(gap >= dt.timedelta(seconds=2) for gap in gaps), gaps
    assert await _created(engine, ns) == []


async def test_a_matching_response_whose_conditions_do_not_hold_starts_nothing(
    engine: ServerContext, ns: str, endpoint: Endpoint
) -> None:
    endpoint.body = json.dumps({"price": 99}).encode()
    source = _flow(
        ns,
        endpoint.url,
        "    conditions:\n"
        "      - type: io.kestra.plugin.core.condition.Expression\n"
        '        expression: "{{ trigger.code == 201 }}"\n',
    )
    await deploy_flow(engine.store, source)
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(Scheduler(engine.store, engine.notifier, namespace=ns).run)
            with trio.fail_after(15):
                while len(endpoint.hits) < 2:
                    await trio.sleep(0.1)
            nursery.cancel_scope.cancel()
    finally:
        await delete_flow(engine.store, ns, "watcher")
    assert await _created(engine, ns) == []


async def test_a_slow_endpoint_does_not_hold_the_ticks_of_other_triggers(
    engine: ServerContext, ns: str, endpoint: Endpoint
) -> None:
    endpoint.delay = 6.0
    await deploy_flow(engine.store, _flow(ns, endpoint.url))
    ticking = (
        f"id: ticking\nnamespace: {ns}\ntasks:\n"
        "  - id: log\n    type: io.kestra.plugin.core.log.Log\n    message: tick\n"
        "triggers:\n  - id: tick\n    type: io.kestra.plugin.core.trigger.Schedule\n"
        '    withSeconds: true\n    cron: "* * * * * *"\n'
    )
    await deploy_flow(engine.store, ticking)
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(Scheduler(engine.store, engine.notifier, namespace=ns).run)
            with trio.fail_after(10):
                while not endpoint.hits:
                    await trio.sleep(0.1)
            await trio.sleep(3.5)
            # The poll still waits on its answer; the per-second schedule went on meanwhile.
            started = [c for c in await _created(engine, ns) if c["flowId"] == "ticking"]
            nursery.cancel_scope.cancel()
    finally:
        await delete_flow(engine.store, ns, "watcher")
        await delete_flow(engine.store, ns, "ticking")
    assert len(started) >= 3, started
