"""The engine's services together on a real PostgreSQL: executor, worker, timers, watchdog."""

from __future__ import annotations

import functools
import uuid

import pytest
import trio

from engine import events as ev
from engine.commands import create_execution, deploy_flow, load_execution, wait_for_end
from engine.server import ServerContext, run_server
from engine.store import NO_STREAM
from engine.worker import Worker


def _flow(ns: str, body: str, flow_id: str = "f") -> str:
    return f"id: {flow_id}\nnamespace: {ns}\ntasks:\n{body}"


THREE_RETURNS = """\
  - id: one
    type: io.kestra.plugin.core.debug.Return
    format: "1"
  - id: two
    type: io.kestra.plugin.core.debug.Return
    format: "{{ outputs.one.value }}2"
  - id: three
    type: io.kestra.plugin.core.debug.Return
    format: "{{ outputs.two.value }}3"
"""


@pytest.fixture
def ns() -> str:
    return f"test.engine.{uuid.uuid4().hex[:10]}"


async def _start(nursery: trio.Nursery, url: str, roles: tuple[str, ...], **kw) -> ServerContext:
    options = {"heartbeat_interval": 0.2, "heartbeat_timeout": 30.0, **kw}
    return await nursery.start(functools.partial(run_server, url, roles, **options))


async def test_sequential_returns_pass_outputs_along_and_logs_are_projected(
    database_url: str, ns: str
):
    body = THREE_RETURNS + (
        "  - id: say\n    type: io.kestra.plugin.core.log.Log\n"
        '    message: "got {{ outputs.three.value }}"\n'
    )
    async with trio.open_nursery() as nursery:
        ctx = await _start(nursery, database_url, ("executor", "worker", "indexer"))
        await deploy_flow(ctx.store, _flow(ns, body))
        xid = await create_execution(ctx.store, ns, "f")
        state = await wait_for_end(ctx.store, ctx.notifier, xid, timeout=30)
        assert state.state == "SUCCESS"
        outputs = {r.taskId: r.outputs for r in state.taskruns.values()}
        assert outputs["three"] == {"value": "123"}
        with trio.fail_after(10):
            while not (
                rows := await ctx.db.fetchall(
                    "SELECT task_id, level, message FROM logs WHERE execution_id = %s", (xid,)
                )
            ):
                await trio.sleep(0.05)
        assert rows == [{"task_id": "say", "level": "INFO", "message": "got 123"}]
        nursery.cancel_scope.cancel()


async def test_attempt_of_a_silent_worker_is_abandoned_and_run_again(database_url: str, ns: str):
    async with trio.open_nursery() as nursery:
        ctx = await _start(nursery, database_url, ("executor",), heartbeat_timeout=1.0)
        await deploy_flow(ctx.store, _flow(ns, THREE_RETURNS))
        xid = await create_execution(ctx.store, ns, "f")
        with trio.fail_after(10):
            while not (
                scheduled := [
                    e.event
                    for e in await ctx.store.read_execution(xid)
                    if isinstance(e.event, ev.AttemptScheduled)
                ]
            ):
                await trio.sleep(0.05)
        first = scheduled[0]
        ghost = f"ghost-{uuid.uuid4().hex[:6]}"
        await ctx.store.append(ev.worker_stream(ghost), [ev.WorkerHeartbeat(workerId=ghost)])
        await ctx.store.append(
            ev.attempt_stream(xid, first.taskRunId, 1),
            [
                ev.AttemptClaimed(
                    executionId=xid, taskRunId=first.taskRunId, attempt=1, workerId=ghost
                )
            ],
            expected_version=NO_STREAM,
        )
        worker = Worker(ctx.store, ctx.notifier, heartbeat_interval=0.1)
        await nursery.start(worker.run)
        state = await wait_for_end(ctx.store, ctx.notifier, xid, timeout=30)
        assert state.state == "SUCCESS"
        attempts = state.taskruns[first.taskRunId].attempts
        # The ghost's attempt is abandoned and a live worker's succeeds. On a loaded machine the
        # live worker may itself miss a heartbeat once, which only adds an abandoned attempt.
        assert attempts[0].state == "KILLED" and attempts[0].workerId == ghost
        assert attempts[-1].state == "SUCCESS" and attempts[-1].workerId == worker.id
        assert all(a.state == "KILLED" for a in attempts[1:-1])
        nursery.cancel_scope.cancel()


async def test_execution_finishes_after_executor_restart_without_duplicate_decisions(
    database_url: str, ns: str
):
    async with trio.open_nursery() as nursery:
        ctx = await _start(nursery, database_url, ("executor",))
        await deploy_flow(ctx.store, _flow(ns, THREE_RETURNS))
        xid = await create_execution(ctx.store, ns, "f")
        with trio.fail_after(10):
            while (await load_execution(ctx.store, xid)).state == "CREATED":
                await trio.sleep(0.05)
        nursery.cancel_scope.cancel()
    async with trio.open_nursery() as nursery:
        ctx = await _start(nursery, database_url, ("executor", "worker"))
        state = await wait_for_end(ctx.store, ctx.notifier, xid, timeout=30)
        assert state.state == "SUCCESS"
        history = await ctx.store.read_execution(xid)
        created = [e.event.taskRunId for e in history if isinstance(e.event, ev.TaskRunCreated)]
        assert len(created) == len(set(created)) == 3
        nursery.cancel_scope.cancel()


async def test_two_workers_never_run_the_same_attempt(database_url: str, ns: str):
    async with trio.open_nursery() as nursery:
        ctx = await _start(nursery, database_url, ("executor", "worker"))
        other = Worker(ctx.store, ctx.notifier, heartbeat_interval=0.2)
        await nursery.start(other.run)
        await deploy_flow(ctx.store, _flow(ns, THREE_RETURNS))
        ids = [await create_execution(ctx.store, ns, "f") for _ in range(20)]
        for xid in ids:
            assert (await wait_for_end(ctx.store, ctx.notifier, xid, timeout=30)).state == "SUCCESS"
        rows = await ctx.db.fetchall(
            "SELECT stream_id, count(*) AS n FROM events WHERE type = 'AttemptClaimed'"
            " AND stream_id LIKE %s GROUP BY stream_id",
            ("exec:%",),
        )
        mine = [r for r in rows if any(r["stream_id"].startswith(f"exec:{x}/") for x in ids)]
        assert len(mine) == 60 and all(r["n"] == 1 for r in mine)
        nursery.cancel_scope.cancel()


async def test_sleep_waits_on_a_timer_not_on_a_worker(database_url: str, ns: str):
    body = "  - id: nap\n    type: io.kestra.plugin.core.flow.Sleep\n    duration: PT0.3S\n"
    async with trio.open_nursery() as nursery:
        ctx = await _start(nursery, database_url, ("executor",))
        await deploy_flow(ctx.store, _flow(ns, body))
        xid = await create_execution(ctx.store, ns, "f")
        state = await wait_for_end(ctx.store, ctx.notifier, xid, timeout=10)
        assert state.state == "SUCCESS"
        types = [e.type for e in await ctx.store.read_execution(xid)]
        assert "TimerFired" in types and "AttemptScheduled" not in types
        nursery.cancel_scope.cancel()
