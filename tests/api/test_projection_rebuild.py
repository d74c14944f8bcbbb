"""`POST /api/v1/projections/{name}/rebuild`: an admin rebuilds a read model from the API while
searches keep answering, the rows come back equal, the progress and the end show in `GET
/api/v1/projections`, and the audit trail says who rebuilt what."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import pytest
import trio

from engine.commands import create_execution, deploy_flow, wait_for_end
from engine.db import Database
from engine.server import ServerContext
from tests.api.test_auth import _bearer, _token
from tests.conftest import admin_client, start_server

FLOW = (
    "id: hello\nnamespace: {ns}\nlabels:\n  team: rebuild\ntasks:\n"
    "  - id: greet\n    type: io.kestra.plugin.core.log.Log\n    message: hello {{{{ execution.id }}}}\n"
)


@pytest.fixture
def ns() -> str:
    return f"test.rebuild.n{uuid.uuid4().hex[:8]}"


async def _entry(http: httpx.AsyncClient, name: str) -> dict[str, Any]:
    answer = await http.get("/api/v1/projections")
    assert answer.status_code == 200, answer.text
    found: dict[str, Any] = next(e for e in answer.json() if e["name"] == name)
    return found


async def _search(http: httpx.AsyncClient, ns: str) -> int:
    answer = await http.get("/api/v1/executions/search", params={"namespace": ns})
    assert answer.status_code == 200, answer.text
    return int(answer.json()["total"])


async def _executions(db: Database, ns: str) -> dict[str, list[dict[str, Any]]]:
    """Every column of the executions projection's rows of `ns`: the executions and their
    rollups (tests/integration/test_reindex.py compares them the same way)."""
    return {
        "executions": await db.fetchall(
            "SELECT * FROM executions WHERE namespace = %s ORDER BY id", (ns,)
        ),
        "execution_stats": await db.fetchall(
            "SELECT * FROM execution_stats WHERE namespace = %s ORDER BY 1, 2, 3, 4", (ns,)
        ),
        "execution_durations": await db.fetchall(
            "SELECT * FROM execution_durations WHERE namespace = %s ORDER BY 1, 2, 3, 4, 5",
            (ns,),
        ),
    }


async def _history(ctx: ServerContext, ns: str, count: int) -> None:
    await deploy_flow(ctx.store, FLOW.format(ns=ns))
    ids = [await create_execution(ctx.store, ns, "hello", {}) for _ in range(count)]
    for xid in ids:
        await wait_for_end(ctx.store, ctx.notifier, xid, timeout=60)


async def _caught_up(http: httpx.AsyncClient, ns: str, count: int) -> None:
    with trio.fail_after(30):
        while await _search(http, ns) < count or (await _entry(http, "executions"))["lag"]:
            await trio.sleep(0.1)


async def _finished(http: httpx.AsyncClient, name: str) -> dict[str, Any]:
    """The projection's entry once its last rebuild has ended; searches answer meanwhile."""
    with trio.fail_after(60):
        while True:
            entry = await _entry(http, name)
            last = entry.get("lastRebuild") or {}
            if last.get("outcome") not in (None, "RUNNING"):
                return entry
            await trio.sleep(0.1)


async def test_admin_rebuilds_executions_from_the_api_with_equal_rows_while_searches_answer(
    server: ServerContext, client: httpx.AsyncClient, ns: str
) -> None:
    await _history(server, ns, 4)
    await _caught_up(client, ns, 4)
    assert server.owner_url is not None
    owner = Database(server.owner_url, max_size=2)
    try:
        before = await _executions(owner, ns)
        assert len(before["executions"]) == 4
        assert {r["state"] for r in before["executions"]} == {"SUCCESS"}
        tables = await owner.fetchone("SELECT 'executions'::regclass::oid::bigint AS id")

        started = await client.post("/api/v1/projections/executions/rebuild")
        assert started.status_code == 202, started.text
        assert started.json()["follow"] == "/api/v1/projections"
        assert started.headers["Location"] == "/api/v1/projections"
        # Searches keep answering while it runs, and after.
        searches = 0
        with trio.fail_after(60):
            while True:
                assert await _search(client, ns) == 4
                searches += 1
                entry = await _entry(client, "executions")
                if entry["lastRebuild"]["outcome"] != "RUNNING":
                    break
                assert entry["lastRebuild"]["actor"] == "user:admin"
                await trio.sleep(0.02)
        assert searches >= 1
        last = entry["lastRebuild"]
        assert last["outcome"] == "SUCCESS", last
        assert last["endedAt"] >= last["startedAt"] and last["position"] >= 1
        assert "rebuild" not in entry  # no rebuild under way any more

        assert await _executions(owner, ns) == before
        after = await owner.fetchone("SELECT 'executions'::regclass::oid::bigint AS id")
        assert tables is not None and after is not None and after["id"] != tables["id"]
    finally:
        await owner.close()
    # The live projection follows the log on the swapped-in tables.
    await _history(server, ns, 1)
    await _caught_up(client, ns, 5)

    # The audit trail shows who asked for it and how it ended.
    with trio.fail_after(30):
        while True:
            audit = await client.get(
                "/api/v1/audit", params={"kind": "projection", "resourceId": "executions"}
            )
            assert audit.status_code == 200, audit.text
            rows = audit.json()["results"]
            types = {r["type"] for r in rows}
            if {"ProjectionRebuildRequested", "ProjectionRebuilt"} <= types:
                break
            await trio.sleep(0.1)
    assert {r["actor"] for r in rows} == {"user:admin"}
    events = await server.store.read_stream("projection:executions")
    assert [e.type for e in events][-2:] == ["ProjectionRebuildRequested", "ProjectionRebuilt"]
    assert all(e.meta["actor"] == "user:admin" for e in events[-2:])


async def test_second_rebuild_while_one_runs_answers_409_and_unknown_projection_404(
    server: ServerContext, client: httpx.AsyncClient, ns: str
) -> None:
    await _history(server, ns, 2)
    first = await client.post("/api/v1/projections/logs/rebuild")
    assert first.status_code == 202, first.text
    second = await client.post("/api/v1/projections/logs/rebuild")
    assert second.status_code == 409, second.text
    assert "already" in second.json()["message"]
    unknown = await client.post("/api/v1/projections/nope/rebuild")
    assert unknown.status_code == 404
    assert "executions" in unknown.json()["message"]  # it lists the known ones
    entry = await _finished(client, "logs")
    assert entry["lastRebuild"]["outcome"] == "SUCCESS", entry
    # Once it has ended, another may start.
    again = await client.post("/api/v1/projections/logs/rebuild")
    assert again.status_code == 202, again.text
    assert (await _finished(client, "logs"))["lastRebuild"]["outcome"] == "SUCCESS"


async def test_non_admin_token_cannot_rebuild_a_projection(
    server: ServerContext, client: httpx.AsyncClient
) -> None:
    before = len(await server.store.read_stream("projection:flows"))
    for role in ("viewer", "runner", "editor"):
        token = await _token(client, role, [])
        refused = await client.post(
            "/api/v1/projections/flows/rebuild", headers=_bearer(token), auth=None
        )
        assert refused.status_code == 403, (role, refused.text)
        assert "admin" in refused.json()["message"]
        # It may still read where the projections stand.
        listed = await client.get("/api/v1/projections", headers=_bearer(token), auth=None)
        assert listed.status_code == 200
    assert len(await server.store.read_stream("projection:flows")) == before


async def test_server_stopping_during_a_rebuild_leaves_the_live_tables_serving(
    database_url: str, tmp_path: Any, ns: str
) -> None:
    async with trio.open_nursery() as nursery:
        ctx: ServerContext = await start_server(database_url, nursery, tmp_path)
        async with admin_client(ctx) as http:
            await _history(ctx, ns, 2)
            await _caught_up(http, ns, 2)
            before = len(await ctx.store.read_stream("projection:executions"))
            started = await http.post("/api/v1/projections/executions/rebuild")
            assert started.status_code == 202, started.text
        # The server stops at once, in the midst of the rebuild (or just after it).
        nursery.cancel_scope.cancel()

    async with trio.open_nursery() as nursery:
        ctx = await start_server(database_url, nursery, tmp_path)
        async with admin_client(ctx) as http:
            ended = (await ctx.store.read_stream("projection:executions"))[before:]
            assert [e.type for e in ended][0] == "ProjectionRebuildRequested"
            assert ended[-1].type in ("ProjectionRebuildFailed", "ProjectionRebuilt")
            entry = await _entry(http, "executions")
            if ended[-1].type == "ProjectionRebuildFailed":
                assert entry["lastRebuild"]["outcome"] == "CANCELLED", entry
                assert "live tables still serve" in entry["lastRebuild"]["message"]
            # Nothing of the rebuild is left, and searches answer from the live tables.
            assert "rebuild" not in entry
            left = await ctx.db.fetchone(
                "SELECT count(*) AS n FROM pg_tables WHERE schemaname = 'tiercel_rebuild'"
            )
            assert left is not None and left["n"] == 0
            assert await _search(http, ns) == 2
            await _history(ctx, ns, 1)
            await _caught_up(http, ns, 3)
        nursery.cancel_scope.cancel()
