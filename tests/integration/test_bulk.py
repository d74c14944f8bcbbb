"""Bulk operations on executions, through the API: chosen by query or by ids, tried dry first,
cancelled and resumed, idempotent on their request id, and never doing an item twice, even
when the process working them is killed -9."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import trio

from engine import events as ev
from engine.commands import create_execution, deploy_flow
from engine.server import ServerContext, run_server
from tests.conftest import ADMIN_PASSWORD


def _ns() -> str:
    return f"test.bulk.n{uuid.uuid4().hex[:10]}"


def _failing(namespace: str) -> str:
    return (
        f"id: broken\nnamespace: {namespace}\ntasks:\n"
        "  - id: boom\n    type: io.kestra.plugin.core.execution.Fail\n    errorMessage: boom\n"
    )


def _pausing(namespace: str) -> str:
    return (
        f"id: waits\nnamespace: {namespace}\ntasks:\n"
        "  - id: wait\n    type: io.kestra.plugin.core.flow.Pause\n"
    )


def _quick(namespace: str) -> str:
    return (
        f"id: quick\nnamespace: {namespace}\ntasks:\n"
        "  - id: say\n    type: io.kestra.plugin.core.log.Log\n    message: hi\n"
    )


@pytest.fixture
async def server(database_url: str, tmp_path: Any) -> AsyncIterator[ServerContext]:
    async with trio.open_nursery() as nursery:
        ctx = await nursery.start(
            lambda task_status: run_server(
                database_url,
                host="127.0.0.1",
                port=0,
                data_dir=tmp_path,
                heartbeat_interval=0.5,
                admin_password=ADMIN_PASSWORD,
                task_status=task_status,
            )
        )
        yield ctx
        nursery.cancel_scope.cancel()


@pytest.fixture
async def client(server: ServerContext) -> AsyncIterator[httpx.AsyncClient]:
    url = server.extra["urls"][0]
    async with httpx.AsyncClient(base_url=url, timeout=60, auth=("admin", ADMIN_PASSWORD)) as http:
        yield http


async def _start(ctx: ServerContext, namespace: str, flow_id: str, n: int) -> list[str]:
    ids: list[str] = []

    async def one() -> None:
        ids.append(await create_execution(ctx.store, namespace, flow_id, {}))

    async with trio.open_nursery() as nursery:
        limiter = trio.CapacityLimiter(8)

        async def limited() -> None:
            async with limiter:
                await one()

        for _ in range(n):
            nursery.start_soon(limited)
    return ids


async def _wait_rows(
    client: httpx.AsyncClient, query: dict[str, str], n: int, timeout: float = 60
) -> None:
    """Until the executions search finds `n` rows for `query`."""
    with trio.fail_after(timeout):
        while True:
            found = await client.get("/api/v1/executions/search", params={**query, "size": 1})
            if found.json()["total"] == n:
                return
            await trio.sleep(0.2)


async def _wait_job(
    client: httpx.AsyncClient, job_id: str, until: Any, timeout: float = 60
) -> dict[str, Any]:
    with trio.fail_after(timeout):
        while True:
            job = (await client.get(f"/api/v1/bulk/{job_id}")).json()
            if until(job):
                return job
            await trio.sleep(0.1)


async def _count_events(ctx: ServerContext, sql: str, params: Any) -> int:
    row = await ctx.db.fetchone(sql, params)
    assert row is not None
    return int(row["n"])


async def test_dry_run_counts_and_samples_and_records_nothing(
    server: ServerContext, client: httpx.AsyncClient
) -> None:
    ns = _ns()
    await deploy_flow(server.store, _failing(ns))
    await _start(server, ns, "broken", 30)
    await _wait_rows(client, {"namespace": ns, "state": "FAILED"}, 30)
    before = await server.store.head()
    answer = await client.post(
        "/api/v1/executions/bulk/replay",
        json={"query": f"state:FAILED namespace:{ns}", "dryRun": True},
    )
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["dryRun"] is True and body["count"] == 30 and body["wouldApply"] == 30
    assert len(body["sample"]) == 20
    assert {s["outcome"] for s in body["sample"]} == {"WOULD_REPLAY"}
    # A kill of ended executions would be refused, and the dry run says so.
    killed = (
        await client.post(
            "/api/v1/executions/bulk/kill",
            json={"filters": {"namespace": ns, "state": ["FAILED"]}, "dryRun": True},
        )
    ).json()
    assert killed["count"] == 30 and killed["wouldBeRefused"] == 30
    assert "already ended" in killed["sample"][0]["message"]
    assert (
        await _count_events(
            server,
            "SELECT count(*) AS n FROM events WHERE seq > %s AND stream_id LIKE 'bulk:%%'",
            (before,),
        )
        == 0
    )


async def test_bulk_kill_by_ids_kills_each_once_and_reports_ids_it_skipped(
    server: ServerContext, client: httpx.AsyncClient
) -> None:
    ns = _ns()
    await deploy_flow(server.store, _pausing(ns))
    ids = await _start(server, ns, "waits", 12)
    await _wait_rows(client, {"namespace": ns, "state": "PAUSED"}, 12)
    answer = await client.post(
        "/api/v1/executions/bulk/kill",
        json={"ids": [*ids, "no-such-execution"], "requestId": f"kill-{ns}"},
    )
    assert answer.status_code == 202, answer.text
    job = answer.json()
    assert job["total"] == 12 and job["skipped"] == 1
    ended = await _wait_job(client, job["id"], lambda j: j["state"] == "SUCCESS")
    assert ended["done"] == 12 and ended["failed"] == 0
    report = {item["id"]: item for item in ended["items"]}
    assert report["no-such-execution"] == {
        "id": "no-such-execution",
        "outcome": "SKIPPED",
        "message": "execution not found",
    }
    assert all(report[i]["outcome"] == "SUCCESS" for i in ids)
    await _wait_rows(client, {"namespace": ns, "state": "KILLED"}, 12)
    # The same request again: the same job, nothing done twice.
    again = await client.post(
        "/api/v1/executions/bulk/kill",
        json={"ids": [*ids, "no-such-execution"], "requestId": f"kill-{ns}"},
    )
    assert again.status_code == 200 and again.json()["id"] == job["id"]
    assert again.json()["created"] is False
    kills = await _count_events(
        server,
        "SELECT count(*) AS n FROM events WHERE type = 'ExecutionKillRequested'"
        " AND stream_id = ANY(%s)",
        ([ev.execution_stream(i) for i in ids],),
    )
    assert kills == 12
    # Kestra's path: a job too, answering its count.
    kestra = await client.request("DELETE", "/api/v1/executions/kill/by-ids", json=ids[:3])
    assert kestra.status_code == 202 and kestra.json()["count"] == 3
    refused = await _wait_job(client, kestra.json()["jobId"], lambda j: j["state"] == "SUCCESS")
    assert refused["failed"] == 3
    assert all("already ended" in i["message"] for i in refused["items"])


async def test_bulk_delete_by_ids_removes_them_from_search_and_keeps_their_events(
    server: ServerContext, client: httpx.AsyncClient
) -> None:
    ns = _ns()
    await deploy_flow(server.store, _quick(ns))
    ids = await _start(server, ns, "quick", 5)
    await _wait_rows(client, {"namespace": ns, "state": "SUCCESS"}, 5)
    answer = await client.post("/api/v1/executions/bulk/delete", json={"ids": ids})
    assert answer.status_code == 202, answer.text
    ended = await _wait_job(client, answer.json()["id"], lambda j: j["state"] == "SUCCESS")
    assert ended["done"] == 5 and ended["failed"] == 0
    await _wait_rows(client, {"namespace": ns}, 0)
    assert (await client.get(f"/api/v1/executions/{ids[0]}")).status_code == 404
    kept = await client.get(f"/api/v1/executions/{ids[0]}/events")
    assert kept.status_code == 200 and len(kept.json()) > 3


async def test_bulk_refuses_bad_requests_with_a_message(client: httpx.AsyncClient) -> None:
    for action, body, words in (
        ("nope", {"ids": ["a"]}, "Unknown bulk action"),
        ("replay", {}, "Choose the executions"),
        ("replay", {"ids": ["a"], "query": "state:FAILED"}, "Choose the executions"),
        ("replay", {"query": "state:NOPE"}, "NOPE"),
        ("labels", {"ids": ["a"]}, "labels"),
        ("state", {"ids": ["a"], "state": "BLUE"}, "state"),
        ("replay", {"ids": "a"}, "list of execution ids"),
        ("replay", {"ids": ["a"], "surprise": 1}, "surprise"),
    ):
        answer = await client.post(f"/api/v1/executions/bulk/{action}", json=body)
        assert answer.status_code == 400, (action, body, answer.text)
        assert words in answer.json()["message"], answer.text
    assert (await client.get("/api/v1/bulk/nope")).status_code == 404
