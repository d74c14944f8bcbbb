"""An executor restarted behind its work: its checkpoint trails (it is not committed on its own
when nothing was decided), so after a restart it handles again events it handled before, and
must append nothing twice."""

from __future__ import annotations

import functools
import uuid
from pathlib import Path

import trio

from engine.commands import create_execution, deploy_flow, resume_execution, wait_for_end
from engine.db import Database
from engine.server import run_server


async def _stream_rows(db: Database, *xids: str) -> list[tuple[int, str]]:
    rows = await db.fetchall(
        "SELECT seq, type FROM events WHERE stream_id = ANY(%s) ORDER BY seq",
        ([f"exec:{x}" for x in xids],),
    )
    return [(r["seq"], r["type"]) for r in rows]


async def test_an_executor_restarted_behind_its_work_appends_nothing_twice(
    database_url: str, db: Database, tmp_path: Path
) -> None:
    ns = f"test.restart{uuid.uuid4().hex[:8]}"
    child = f"id: child\nnamespace: {ns}\ntasks:\n  - id: r\n    type: io.kestra.plugin.core.debug.Return\n    format: c\n"  # noqa: E501
    parent = (
        f"id: parent\nnamespace: {ns}\ntasks:\n"
        "  - id: a\n    type: io.kestra.plugin.core.debug.Return\n    format: a\n"
        f"  - id: sub\n    type: io.kestra.plugin.core.flow.Subflow\n    namespace: {ns}\n"
        "    flowId: child\n    wait: true\n"
        "  - id: b\n    type: io.kestra.plugin.core.debug.Return\n    format: b\n"
    )
    start = functools.partial(run_server, database_url, ("executor", "worker"), data_dir=tmp_path)
    async with trio.open_nursery() as nursery:
        ctx = await nursery.start(start)
        await deploy_flow(ctx.store, child)
        await deploy_flow(ctx.store, parent)
        xid = await create_execution(ctx.store, ns, "parent")
        state = await wait_for_end(ctx.store, ctx.notifier, xid, timeout=60)
        nursery.cancel_scope.cancel()
    assert state.state == "SUCCESS"
    [child_id] = [r["id"] for r in await db.fetchall(
        "SELECT DISTINCT data->>'executionId' AS id FROM events"
        " WHERE type = 'ExecutionCreated' AND data->>'parentId' = %s", (xid,),
    )]  # fmt: skip
    before = await _stream_rows(db, xid, child_id)
    [created] = [seq for seq, kind in before if kind == "ExecutionCreated"][:1]
    # As if the executor had stopped right after the execution was created.
    await db.execute("UPDATE checkpoints SET position = %s WHERE name = 'executor'", (created - 1,))

    async with trio.open_nursery() as nursery:
        ctx = await nursery.start(start)
        # Events are handled in order: once a later execution has ended, everything before it
        # was handled again.
        later = await create_execution(ctx.store, ns, "child")
        assert (await wait_for_end(ctx.store, ctx.notifier, later, timeout=60)).state == "SUCCESS"
        nursery.cancel_scope.cancel()
    assert await _stream_rows(db, xid, child_id) == before


async def test_an_executor_restarted_just_before_its_own_decisions_decides_on_from_them(
    database_url: str, db: Database, tmp_path: Path
) -> None:
    ns = f"test.restart{uuid.uuid4().hex[:8]}"
    source = (
        f"id: paused\nnamespace: {ns}\ntasks:\n"
        "  - id: a\n    type: io.kestra.plugin.core.debug.Return\n    format: a\n"
        "  - id: wait\n    type: io.kestra.plugin.core.flow.Pause\n"
        "  - id: b\n    type: io.kestra.plugin.core.debug.Return\n    format: b\n"
    )
    start = functools.partial(run_server, database_url, ("executor", "worker"), data_dir=tmp_path)
    async with trio.open_nursery() as nursery:
        ctx = await nursery.start(start)
        await deploy_flow(ctx.store, source)
        xid = await create_execution(ctx.store, ns, "paused")
        state = await wait_for_end(ctx.store, ctx.notifier, xid, timeout=60, until_paused=True)
        nursery.cancel_scope.cancel()
    assert state.state == "PAUSED"
    rows = await db.fetchall(
        "SELECT seq, meta->>'actor' AS actor FROM events WHERE stream_id = %s ORDER BY seq",
        (f"exec:{xid}",),
    )
    # The executor's last decisions (the pause) are the first thing it handles on restart.
    last_input = max(r["seq"] for r in rows if r["actor"] != "executor")
    await db.execute("UPDATE checkpoints SET position = %s WHERE name = 'executor'", (last_input,))

    async with trio.open_nursery() as nursery:
        ctx = await nursery.start(start)
        await resume_execution(ctx.store, xid)
        state = await wait_for_end(ctx.store, ctx.notifier, xid, timeout=60)
        nursery.cancel_scope.cancel()
    assert state.state == "SUCCESS"
    assert sorted(r.taskId for r in state.taskruns.values()) == ["a", "b", "wait"]
