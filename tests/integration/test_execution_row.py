"""The executions search's row is the execution: for every field both show, a search row and
`GET /api/v1/executions/{id}` agree, whatever the execution went through (success, failure,
retries, pause and resume, subflows, labels set while running, outputs, kill), at its end and
while it runs."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from engine.db import Database
from engine.server import ServerContext
from projections import reindex as rebuild
from projections.runner import all_projections
from tests.conftest import admin_client, deploy, start_server

SHARED = (
    "id",
    "namespace",
    "flowId",
    "flowRevision",
    "state",
    "labels",
    "inputs",
    "outputs",
    "trigger",
    "parentId",
    "originalId",
)
"""The fields of an execution a search row shows too (and `taskRunCount`, the length of the
execution's `taskRunList`)."""


@pytest.fixture
async def api(
    database_url: str, nursery: trio.Nursery, tmp_path: Path
) -> AsyncIterator[tuple[ServerContext, httpx.AsyncClient]]:
    ctx = await start_server(database_url, nursery, tmp_path)
    async with admin_client(ctx) as http:
        yield ctx, http


def _log(task_id: str, message: str = "hi") -> str:
    return f"  - id: {task_id}\n    type: io.kestra.plugin.core.log.Log\n    message: {message}\n"


def _flows(ns: str) -> dict[str, str]:
    return {
        "ok": f"id: ok\nnamespace: {ns}\ninputs:\n  - id: who\n    type: STRING\n"
        "    defaults: world\ntasks:\n"
        "  - id: hello\n    type: io.kestra.plugin.core.debug.Return\n"
        "    format: hello {{ inputs.who }}\n"
        "outputs:\n  - id: greeting\n    type: STRING\n"
        "    value: '{{ outputs.hello.value }}'\n",
        "broken": f"id: broken\nnamespace: {ns}\ntasks:\n{_log('before')}"
        "  - id: boom\n    type: io.kestra.plugin.core.execution.Fail\n",
        "retried": f"id: retried\nnamespace: {ns}\ntasks:\n"
        "  - id: flaky\n    type: io.kestra.plugin.core.log.Log\n"
        "    message: \"{{ taskrun.attemptsCount == 2 ? 'ok' : ko }}\"\n"
        "    retry:\n      type: constant\n      interval: PT0.1S\n      maxAttempt: 4\n"
        "      maxDuration: PT15S\n",
        "gate": f"id: gate\nnamespace: {ns}\ntasks:\n{_log('a')}"
        "  - id: wait\n    type: io.kestra.plugin.core.flow.Pause\n"
        "  - id: nap\n    type: io.kestra.plugin.core.flow.Sleep\n    duration: PT0.2S\n",
        "parent": f"id: parent\nnamespace: {ns}\ntasks:\n"
        f"  - id: call\n    type: io.kestra.plugin.core.flow.Subflow\n    namespace: {ns}\n"
        "    flowId: ok\n    inputs:\n      who: parent\n"
        "  - id: each\n    type: io.kestra.plugin.core.flow.ForEach\n    values: [1, 2]\n"
        "    tasks:\n      - id: inner\n        type: io.kestra.plugin.core.log.Log\n"
        '        message: "{{ taskrun.value }}"\n',
        "labelled": f"id: labelled\nnamespace: {ns}\nlabels:\n  team: data\ntasks:\n"
        "  - id: tag\n    type: io.kestra.plugin.core.execution.Labels\n"
        "    labels:\n      stage: tagged\n      team: ops\n",
        "long": f"id: long\nnamespace: {ns}\ntasks:\n{_log('first')}"
        "  - id: wait\n    type: io.kestra.plugin.core.flow.Pause\n"
        "  - id: nap\n    type: io.kestra.plugin.core.flow.Sleep\n    duration: PT60S\n",
    }


async def _state(http: httpx.AsyncClient, xid: str, *wanted: str) -> dict[str, Any]:
    with trio.fail_after(60):
        while True:
            body = (await http.get(f"/api/v1/executions/{xid}")).json()
            if body["state"]["current"] in wanted:
                return dict(body)
            await trio.sleep(0.05)


async def _start(http: httpx.AsyncClient, ns: str, flow_id: str, wait: bool = True) -> str:
    query = "?wait=true&labels=run:row" if wait else "?labels=run:row"
    answer = await http.post(f"/api/v1/executions/{ns}/{flow_id}{query}")
    assert answer.status_code == 200, answer.text
    return str(answer.json()["id"])


async def _caught_up(ctx: ServerContext, http: httpx.AsyncClient) -> None:
    head = await ctx.store.head()
    with trio.fail_after(30):
        while True:
            entries = (await http.get("/api/v1/projections")).json()
            if all(e["position"] >= head for e in entries if e["name"] == "executions"):
                return
            await trio.sleep(0.05)


async def _assert_rows_are_the_executions(
    ctx: ServerContext, http: httpx.AsyncClient, ns: str, ids: list[str]
) -> list[dict[str, Any]]:
    await _caught_up(ctx, http)
    answer = await http.get("/api/v1/executions/search", params={"namespace": ns, "size": 100})
    rows = {r["id"]: r for r in answer.json()["results"]}
    assert set(ids) <= set(rows)
    executions = []
    for xid in sorted(rows):
        execution = (await http.get(f"/api/v1/executions/{xid}")).json()
        row = rows[xid]
        for name in SHARED:
            assert row[name] == execution[name], (xid, execution["flowId"], name)
        assert row["taskRunCount"] == len(execution["taskRunList"]), xid
        executions.append(execution)
    return executions


async def test_every_search_row_shows_what_get_execution_shows(
    api: tuple[ServerContext, httpx.AsyncClient], ns: str
) -> None:
    ctx, http = api
    for source in _flows(ns).values():
        await deploy(http, source)
    ids = [await _start(http, ns, f) for f in ("ok", "broken", "retried", "parent", "labelled")]

    # Paused, compared while paused, then resumed and compared at its end.
    gate = await _start(http, ns, "gate", wait=False)
    await _state(http, gate, "PAUSED")
    await _assert_rows_are_the_executions(ctx, http, ns, [gate])
    assert (await http.post(f"/api/v1/executions/{gate}/resume", json={})).status_code == 204
    await _state(http, gate, "SUCCESS")

    # Resumed into a long sleep: the row shows it running (not paused), then killed.
    long = await _start(http, ns, "long", wait=False)
    await _state(http, long, "PAUSED")
    assert (await http.post(f"/api/v1/executions/{long}/resume", json={})).status_code == 204
    with trio.fail_after(30):
        while True:
            body = await _state(http, long, "RUNNING")
            runs = {r["taskId"]: r["state"]["current"] for r in body["taskRunList"]}
            if runs.get("nap") == "RUNNING":
                break
            await trio.sleep(0.05)
    running = await _assert_rows_are_the_executions(ctx, http, ns, [long])
    assert {e["id"]: e["state"]["current"] for e in running}[long] == "RUNNING"
    assert (await http.delete(f"/api/v1/executions/{long}/kill")).status_code == 202
    await _state(http, long, "KILLED")

    executions = await _assert_rows_are_the_executions(ctx, http, ns, [*ids, gate, long])
    by_flow: dict[str, list[dict[str, Any]]] = {}
    for e in executions:
        by_flow.setdefault(e["flowId"], []).append(e)
    # The history the comparison covered is the varied one it should be.
    assert {f: [e["state"]["current"] for e in es] for f, es in by_flow.items()} == {
        "ok": ["SUCCESS", "SUCCESS"],
        "broken": ["FAILED"],
        "retried": ["SUCCESS"],
        "parent": ["SUCCESS"],
        "gate": ["SUCCESS"],
        "labelled": ["SUCCESS"],
        "long": ["KILLED"],
    }
    [retried] = by_flow["retried"]
    assert len(retried["taskRunList"][0]["attempts"]) >= 2  # failed, then succeeded
    child = next(e for e in by_flow["ok"] if e["parentId"])
    assert child["trigger"]["type"] == "io.kestra.plugin.core.flow.Subflow"
    assert child["outputs"] == {"greeting": "hello parent"}
    [labelled] = by_flow["labelled"]
    assert {lb["key"]: lb["value"] for lb in labelled["labels"]}["stage"] == "tagged"
    [gated] = by_flow["gate"]
    assert [h["state"] for h in gated["state"]["histories"]].count("PAUSED") == 1


async def _ended(http: httpx.AsyncClient, xid: str, after: int = 0) -> dict[str, Any]:
    """The execution once it has ended after more than `after` entries of its history."""
    with trio.fail_after(60):
        while True:
            body = (await http.get(f"/api/v1/executions/{xid}")).json()
            if "endDate" in body["state"] and len(body["state"]["histories"]) > after:
                return dict(body)
            await trio.sleep(0.05)


async def test_rows_follow_restarts_replays_states_set_by_hand_and_labels_set_after_the_end(
    api: tuple[ServerContext, httpx.AsyncClient], ns: str, database_url: str
) -> None:
    ctx, http = api
    source = _flows(ns)["broken"]
    await deploy(http, source)
    restarted, forced, replayed = [await _start(http, ns, "broken") for _ in range(3)]

    before = await _ended(http, restarted)
    answer = await http.post(f"/api/v1/executions/{restarted}/restart")
    assert answer.status_code == 200, answer.text
    again = await _ended(http, restarted, after=len(before["state"]["histories"]))
    assert "RESTARTED" in [h["state"] for h in again["state"]["histories"]]

    body = await _ended(http, forced)
    boom = next(r["id"] for r in body["taskRunList"] if r["taskId"] == "boom")
    answer = await http.post(
        f"/api/v1/executions/{forced}/state", json={"taskRunId": boom, "state": "SUCCESS"}
    )
    assert answer.status_code == 200, answer.text
    assert (await _ended(http, forced, after=len(body["state"]["histories"])))["state"][
        "current"
    ] == "SUCCESS"

    body = await _ended(http, replayed)
    boom = next(r["id"] for r in body["taskRunList"] if r["taskId"] == "boom")
    answer = await http.post(f"/api/v1/executions/{replayed}/replay", params={"taskRunId": boom})
    assert answer.status_code == 200, answer.text
    replay = await _ended(http, answer.json()["id"])
    assert len(replay["taskRunList"]) == 2  # the kept `before`, and `boom` run again

    answer = await http.post(
        f"/api/v1/executions/{replayed}/labels", json=[{"key": "checked", "value": "yes"}]
    )
    assert answer.status_code == 200, answer.text

    executions = await _assert_rows_are_the_executions(
        ctx, http, ns, [restarted, forced, replayed, replay["id"]]
    )
    assert len(executions) == 4

    # Rebuilt from the log in batches other than the live ones, the rows and the rollups are
    # the same, every column.
    owner = Database(database_url, max_size=2)
    try:
        rows = await _rows(owner, ns)
        assert sum(r["folded"] for r in rows["executions"]) == 3  # not the one only relabelled
        [executions_projection] = [p for p in all_projections() if p.name == "executions"]
        await rebuild.reindex(owner, [executions_projection], storage=ctx.storage, batch_size=7)
        rebuilt = await _rows(owner, ns)
        for table, before in rows.items():
            for old, new in zip(before, rebuilt[table], strict=True):
                assert {k: v for k, v in new.items() if old[k] != v} == {}, (table, old)
        assert rebuilt == rows
    finally:
        await owner.close()


async def _rows(db: Database, ns: str) -> dict[str, list[dict[str, Any]]]:
    return {
        table: await db.fetchall(
            f"SELECT * FROM {table} WHERE namespace = %s ORDER BY 1, 2, 3, 4, 5", (ns,)
        )
        for table in ("executions", "execution_stats", "execution_durations")
    }
