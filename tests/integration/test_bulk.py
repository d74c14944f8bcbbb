"""Bulk operations on executions, through the API: chosen by query or by ids, tried dry first,
cancelled and resumed, idempotent on their request id, and never doing an item twice, even
when the process working them is killed -9."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import pytest
import trio

from engine import events as ev
from engine.commands import create_execution, deploy_flow
from engine.server import ServerContext
from tests.conftest import ADMIN_PASSWORD, start_server
from tests.integration.conftest import assert_refolds_since

# Every history of this file refolds: its last test checks (tests/integration/conftest.py).
pytestmark = pytest.mark.usefixtures("history_start")


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
async def server(database_url: str, nursery: trio.Nursery, tmp_path: Any) -> ServerContext:
    """A whole server with no master key (this folder's `server` has one; nothing here is
    secret)."""
    ctx: ServerContext = await start_server(database_url, nursery, tmp_path)
    return ctx


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
    followed = await client.get(f"/api/v1/bulk/{job['id']}/follow")
    assert followed.headers["content-type"].startswith("text/event-stream")
    assert followed.text.startswith("event: end\ndata: ") and '"done":12' in followed.text
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
        ("replay", {"ids": ["a\x00"]}, "NUL"),
        ("replay", {"query": "q:a\x00"}, "NUL"),
        ("kill", {"ids": ["a"], "requestId": "r\x00"}, "NUL"),
        ("labels", {"ids": ["a"], "labels": {"k": "v\x00"}}, "NUL"),
        ("replay", {"ids": ["a"], "ratePerSecond": -1}, "ratePerSecond"),
        ("replay", {"ids": ["a"], "ratePerSecond": 1e9}, "ratePerSecond"),
        ("replay", {"ids": ["a"], "dryRun": "yes"}, "dryRun"),
        ("labels", {"ids": ["a"], "labels": [{"key": "system.x", "value": "1"}]}, "system"),
    ):
        answer = await client.post(f"/api/v1/executions/bulk/{action}", json=body)
        assert answer.status_code == 400, (action, body, answer.text)
        assert words in answer.json()["message"], answer.text
    assert (await client.get("/api/v1/bulk/nope")).status_code == 404
    assert (await client.get("/api/v1/bulk/a%00b")).status_code == 400
    for path in ("/api/v1/executions/kill/by-query", "/api/v1/executions/by-query"):
        answer = await client.delete(path, params={"q": "a\x00"})
        assert answer.status_code == 400 and "NUL" in answer.json()["message"], answer.text


async def _replays_per_origin(ctx: ServerContext, origins: list[str]) -> dict[str, int]:
    rows = await ctx.db.fetchall(
        "SELECT stream_id, count(*) AS n FROM events WHERE type = 'ExecutionReplayed'"
        " AND stream_id = ANY(%s) GROUP BY stream_id",
        ([ev.execution_stream(o) for o in origins],),
    )
    found = {r["stream_id"][len("exec:") :]: int(r["n"]) for r in rows}
    return {o: found.get(o, 0) for o in origins}


async def test_bulk_replay_of_500_by_query_dry_run_cancel_resume_replays_each_once(
    server: ServerContext, client: httpx.AsyncClient
) -> None:
    ns = _ns()
    await deploy_flow(server.store, _failing(ns))
    origins = await _start(server, ns, "broken", 500)
    await _wait_rows(client, {"namespace": ns, "state": "FAILED"}, 500)
    query = f"state:FAILED namespace:{ns}"

    dry = await client.post("/api/v1/executions/bulk/replay", json={"query": query, "dryRun": True})
    assert dry.status_code == 200 and dry.json()["count"] == 500
    assert set((await _replays_per_origin(server, origins)).values()) == {0}

    request = {"query": query, "requestId": f"replay-{ns}", "ratePerSecond": 250}
    submitted = await client.post("/api/v1/executions/bulk/replay", json=request)
    assert submitted.status_code == 202, submitted.text
    job_id = submitted.json()["id"]
    assert submitted.json()["total"] == 500
    await _wait_job(client, job_id, lambda j: j["done"] >= 250)
    cancelled = await client.post(f"/api/v1/bulk/{job_id}/cancel")
    assert cancelled.status_code == 200 and cancelled.json()["state"] == "CANCELLED"
    # The runner stops within an item or so; then nothing moves.
    await trio.sleep(1.0)
    stopped = (await client.get(f"/api/v1/bulk/{job_id}")).json()
    await trio.sleep(1.0)
    still = (await client.get(f"/api/v1/bulk/{job_id}")).json()
    assert still["done"] == stopped["done"] and 250 <= stopped["done"] < 500, stopped
    assert sum((await _replays_per_origin(server, origins)).values()) == stopped["done"]
    assert {i["outcome"] for i in still["items"]} == {"SUCCESS", "NOT_DONE"}
    refused = await client.post(f"/api/v1/bulk/{job_id}/cancel")
    assert refused.status_code == 409 and "CANCELLED" in refused.json()["message"]

    # The same request again is the same job, whose selection stays what it was.
    again = await client.post("/api/v1/executions/bulk/replay", json=request)
    assert again.status_code == 200 and again.json()["id"] == job_id

    assert (await client.post(f"/api/v1/bulk/{job_id}/resume")).json()["state"] == "RUNNING"
    ended = await _wait_job(client, job_id, lambda j: j["state"] == "SUCCESS")
    assert ended["done"] == 500 and ended["failed"] == 0
    assert set((await _replays_per_origin(server, origins)).values()) == {1}
    report = {i["id"]: i for i in ended["items"]}
    assert set(report) == set(origins)
    created = await _replay_origins(server, [r["result"] for r in report.values()])
    assert created == {report[o]["result"]: o for o in origins}
    listed = (await client.get("/api/v1/bulk")).json()["results"]
    assert job_id in [j["id"] for j in listed]


async def _replay_origins(ctx: ServerContext, new_ids: list[str]) -> dict[str, str]:
    """Each new execution's id and the execution it replays, from its ExecutionCreated."""
    rows = await ctx.db.fetchall(
        "SELECT data->>'executionId' AS id, data->>'replayOf' AS origin FROM events"
        " WHERE type = 'ExecutionCreated' AND stream_id = ANY(%s)",
        ([ev.execution_stream(i) for i in new_ids],),
    )
    return {r["id"]: r["origin"] for r in rows}


def test_bulk_replay_resumes_without_doubles_after_its_process_is_killed_9(tmp_path: Any) -> None:
    """The executor process (which runs bulk jobs) is killed -9 in the middle of a chunk: some
    items of that chunk were replayed, none of them recorded in the job. Started again, it
    works the chunk again, and no execution is replayed twice."""
    from tests.faults.harness import Cluster, keep_requested, wait_until

    ns = _ns()
    with Cluster.in_temp_dir(
        roles=("executor", "worker", "indexer", "webserver"), keep_root=keep_requested()
    ) as cluster:
        cluster.deploy(_failing(ns))
        origins = [cluster.create_execution(ns, "broken") for _ in range(200)]
        http = cluster.http

        def failed() -> bool:
            found = http.get(
                "/api/v1/executions/search", params={"namespace": ns, "state": "FAILED"}
            )
            return bool(found.json()["total"] == 200)

        wait_until(failed, 60, "200 failed executions")
        submitted = http.post(
            "/api/v1/executions/bulk/replay",
            json={"query": f"state:FAILED namespace:{ns}", "ratePerSecond": 100},
        )
        assert submitted.status_code == 202, submitted.text
        job_id = submitted.json()["id"]

        def job() -> dict[str, Any]:
            return dict(http.get(f"/api/v1/bulk/{job_id}").json())

        def replays() -> int:
            [(n,)] = cluster.query(
                "SELECT count(*) FROM events WHERE type = 'ExecutionReplayed'"
                " AND stream_id = ANY(%s)",
                ([ev.execution_stream(o) for o in origins],),
            )
            return int(n)

        wait_until(lambda: job()["done"] >= 100, 60, "the first chunk to be recorded")
        wait_until(lambda: replays() >= job()["done"] + 20, 30, "the second chunk to start")
        cluster.kill("executor", restart=False)
        recorded, replayed = job()["done"], replays()
        assert recorded < replayed < 200, (recorded, replayed)  # killed in the middle of a chunk
        cluster.start_process("executor")
        wait_until(lambda: job()["state"] == "SUCCESS", 60, "the job to end")
        ended = job()
        assert ended["done"] == 200 and ended["failed"] == 0, ended
        per_origin = dict(
            cluster.query(
                "SELECT stream_id, count(*) FROM events WHERE type = 'ExecutionReplayed'"
                " AND stream_id = ANY(%s) GROUP BY stream_id",
                ([ev.execution_stream(o) for o in origins],),
            )
        )
        assert len(per_origin) == 200 and set(per_origin.values()) == {1}


async def _cli(server: ServerContext, *args: str) -> tuple[int, str, str]:
    import os
    import sys

    env = {
        **os.environ,
        "TIERCEL_SERVER": server.extra["urls"][0],
        "TIERCEL_USER": "admin",
        "TIERCEL_PASSWORD": ADMIN_PASSWORD,
    }
    done = await trio.run_process(
        [sys.executable, "-m", "engine.cli", "executions", *args],
        capture_stdout=True,
        capture_stderr=True,
        check=False,
        env=env,
    )
    return done.returncode, done.stdout.decode(), done.stderr.decode()


async def test_cli_dry_run_then_labels_with_progress_and_kestra_labels_path(
    server: ServerContext, client: httpx.AsyncClient
) -> None:
    ns = _ns()
    await deploy_flow(server.store, _quick(ns))
    ids = await _start(server, ns, "quick", 6)
    await _wait_rows(client, {"namespace": ns, "state": "SUCCESS"}, 6)

    code, out, err = await _cli(
        server, "labels", "--query", f"namespace:{ns}", "--label", "team:data", "--dry-run"
    )
    assert code == 0, err
    assert "6 executions would be chosen" in out and "Nothing was changed" in out
    assert (await client.get("/api/v1/executions/search", params={"labels": "team:data",
            "namespace": ns})).json()["total"] == 0  # fmt: skip

    code, out, err = await _cli(
        server, "labels", "--ids", ",".join(ids[:4]), "--label", "team:data", "--wait"
    )
    assert code == 0, err
    assert "SUCCESS, 4/4 done, 0 failed" in out, out
    assert "labels " in err  # the progress bar's label (the bar itself is drawn on terminals)
    await _wait_rows(client, {"labels": "team:data", "namespace": ns}, 4)

    # Kestra's body for labels by ids; the labels are added to those the execution has.
    kestra = await client.post(
        "/api/v1/executions/labels/by-ids",
        json={"executionsId": ids[:2], "executionLabels": [{"key": "env", "value": "prod"}]},
    )
    assert kestra.status_code == 202 and kestra.json()["count"] == 2, kestra.text
    await _wait_job(client, kestra.json()["jobId"], lambda j: j["state"] == "SUCCESS")
    labelled = (await client.get(f"/api/v1/executions/{ids[0]}")).json()["labels"]
    assert {"key": "team", "value": "data"} in labelled
    assert {"key": "env", "value": "prod"} in labelled

    code, out, err = await _cli(server, "kill", "--query", "state:NOPE")
    assert code == 1 and "NOPE" in err


async def test_bulk_by_ids_skips_executions_outside_the_callers_namespaces(
    server: ServerContext, client: httpx.AsyncClient
) -> None:
    mine, other = _ns(), _ns()
    mine_ids, other_ids = [], []
    for namespace, ids in ((mine, mine_ids), (other, other_ids)):
        await deploy_flow(server.store, _quick(namespace))
        ids += await _start(server, namespace, "quick", 2)
        await _wait_rows(client, {"namespace": namespace, "state": "SUCCESS"}, 2)
    made = await client.post(
        "/api/v1/tokens", json={"name": "bulk-runner", "role": "runner", "namespaces": [mine]}
    )
    token = made.json()["token"]
    async with httpx.AsyncClient(
        base_url=client.base_url, timeout=30, headers={"Authorization": f"Bearer {token}"}
    ) as runner:
        answer = await runner.post(
            "/api/v1/executions/bulk/labels",
            json={"ids": [*mine_ids, *other_ids], "labels": {"checked": "yes"}},
        )
        assert answer.status_code == 202, answer.text
        job = answer.json()
        assert job["total"] == 2 and job["skipped"] == 2 and job["namespaces"] == [mine]
        ended = await _wait_job(runner, job["id"], lambda j: j["state"] == "SUCCESS")
        report = {i["id"]: i for i in ended["items"]}
        assert all(report[i]["outcome"] == "SUCCESS" for i in mine_ids)
        assert all(
            report[i] == {"id": i, "outcome": "SKIPPED",
                          "message": f"namespace {other} is outside your namespaces"}
            for i in other_ids
        )  # fmt: skip
        # A query finds only the caller's namespaces; a delete needs an editor.
        dry = await runner.post(
            "/api/v1/executions/bulk/kill", json={"query": f"namespace:{other}", "dryRun": True}
        )
        assert dry.json()["count"] == 0
        refused = await runner.post("/api/v1/executions/bulk/delete", json={"ids": mine_ids})
        assert refused.status_code == 403 and "editor" in refused.json()["message"]
        # A job over another namespace is not the scoped caller's to see or steer.
        theirs = await client.post(
            "/api/v1/executions/bulk/labels", json={"ids": other_ids, "labels": {"a": "b"}}
        )
        for answer in (
            await runner.get(f"/api/v1/bulk/{theirs.json()['id']}"),
            await runner.post(f"/api/v1/bulk/{theirs.json()['id']}/cancel"),
        ):
            assert answer.status_code == 403 and other in answer.json()["message"]
        listed = (await runner.get("/api/v1/bulk")).json()["results"]
        assert theirs.json()["id"] not in [j["id"] for j in listed]
    labelled = (await client.get(f"/api/v1/executions/{mine_ids[0]}")).json()["labels"]
    assert {"key": "checked", "value": "yes"} in labelled


async def test_bulk_restart_and_state_by_query_act_on_each_failed_execution(
    server: ServerContext, client: httpx.AsyncClient
) -> None:
    ns = _ns()
    await deploy_flow(server.store, _failing(ns))
    ids = await _start(server, ns, "broken", 4)
    await _wait_rows(client, {"namespace": ns, "state": "FAILED"}, 4)
    restarted = await client.post(
        "/api/v1/executions/bulk/restart", json={"ids": ids[:2], "requestId": f"r-{ns}"}
    )
    assert restarted.status_code == 202, restarted.text
    ended = await _wait_job(client, restarted.json()["id"], lambda j: j["state"] == "SUCCESS")
    assert ended["done"] == 2 and ended["failed"] == 0, ended
    restarts = await _count_events(
        server,
        "SELECT count(*) AS n FROM events WHERE type = 'ExecutionRestarted'"
        " AND stream_id = ANY(%s)",
        ([ev.execution_stream(i) for i in ids[:2]],),
    )
    assert restarts == 2
    # Its Fail task fails again: FAILED once more, and the rest is changed by hand to SUCCESS.
    await _wait_rows(client, {"namespace": ns, "state": "FAILED"}, 4)
    changed = await client.post(
        "/api/v1/executions/bulk/state",
        json={"query": f"state:FAILED namespace:{ns}", "state": "SUCCESS"},
    )
    assert changed.status_code == 202 and changed.json()["total"] == 4, changed.text
    ended = await _wait_job(client, changed.json()["id"], lambda j: j["state"] == "SUCCESS")
    assert ended["failed"] == 0, ended
    await _wait_rows(client, {"namespace": ns, "state": "SUCCESS"}, 4)


def test_sys_verify_refolds_every_history_this_file_recorded(
    database_url: str, history_start: int
) -> None:
    assert_refolds_since(database_url, history_start)
