"""User commands over HTTP: idempotent creation, and kills that reach Subflow executions."""

from __future__ import annotations

import uuid

import httpx
import trio

YAML = {"content-type": "application/x-yaml"}


def _ns() -> str:
    return f"test.api.c{uuid.uuid4().hex[:8]}"


async def test_a_retried_post_with_the_same_idempotency_key_starts_one_execution(
    client: httpx.AsyncClient,
) -> None:
    ns = _ns()
    flow = f"id: once\nnamespace: {ns}\ntasks:\n  - id: r\n    type: io.kestra.plugin.core.debug.Return\n    format: hi\n"
    assert (await client.post("/api/v1/flows", content=flow, headers=YAML)).status_code == 200
    key = {"Idempotency-Key": f"nightly-{uuid.uuid4().hex}"}
    first = await client.post(f"/api/v1/executions/{ns}/once", json={}, headers=key)
    again = await client.post(f"/api/v1/executions/{ns}/once?wait=true", json={}, headers=key)
    other = await client.post(f"/api/v1/executions/{ns}/once", json={})
    assert first.status_code == again.status_code == other.status_code == 200
    assert first.json()["id"] == again.json()["id"] != other.json()["id"]
    assert again.json()["state"]["current"] == "SUCCESS"
    bad = await client.post(
        f"/api/v1/executions/{ns}/once", json={}, headers={"Idempotency-Key": "k" * 300}
    )
    assert bad.status_code == 400 and "Idempotency-Key" in bad.json()["message"]


async def test_killing_a_parent_kills_its_running_subflow_execution(
    client: httpx.AsyncClient,
) -> None:
    ns = _ns()
    child = f"id: child\nnamespace: {ns}\ntasks:\n  - id: nap\n    type: io.kestra.plugin.core.flow.Sleep\n    duration: PT60S\n"
    parent = (
        f"id: parent\nnamespace: {ns}\ntasks:\n  - id: sub\n"
        f"    type: io.kestra.plugin.core.flow.Subflow\n    namespace: {ns}\n    flowId: child\n"
    )
    for source in (child, parent):
        assert (await client.post("/api/v1/flows", content=source, headers=YAML)).status_code == 200
    xid = (await client.post(f"/api/v1/executions/{ns}/parent", json={})).json()["id"]
    child_id = None
    with trio.fail_after(20):
        while child_id is None:
            await trio.sleep(0.1)
            events = (await client.get(f"/api/v1/executions/{xid}/events")).json()
            for e in events:
                if e["type"] == "SubflowExecutionRequested":
                    child_id = e["data"]["childId"]
    assert (await client.delete(f"/api/v1/executions/{xid}/kill")).status_code == 202
    with trio.fail_after(20):
        while True:
            state = (await client.get(f"/api/v1/executions/{child_id}")).json()
            if state.get("state", {}).get("current") == "KILLED":
                break
            await trio.sleep(0.1)
    parent_state = (await client.get(f"/api/v1/executions/{xid}")).json()["state"]["current"]
    assert parent_state == "KILLED"


async def _wait_state(client: httpx.AsyncClient, xid: str, wanted: str) -> dict:
    with trio.fail_after(20):
        while True:
            body = (await client.get(f"/api/v1/executions/{xid}")).json()
            if body["state"]["current"] == wanted:
                return body
            await trio.sleep(0.05)


async def test_one_resume_passes_one_pause_even_when_sent_twice(
    client: httpx.AsyncClient,
) -> None:
    ns = _ns()
    gates = "".join(
        f"  - id: g{i}\n    type: io.kestra.plugin.core.flow.Pause\n" for i in (1, 2, 3)
    )
    flow = f"id: gates\nnamespace: {ns}\ntasks:\n{gates}"
    assert (await client.post("/api/v1/flows", content=flow, headers=YAML)).status_code == 200
    xid = (await client.post(f"/api/v1/executions/{ns}/gates", json={})).json()["id"]
    await _wait_state(client, xid, "PAUSED")
    first = await client.post(f"/api/v1/executions/{xid}/resume", json={})
    second = await client.post(f"/api/v1/executions/{xid}/resume", json={})
    assert first.status_code == 204
    assert second.status_code in (204, 409)
    with trio.fail_after(20):
        while True:  # until the execution has paused again, at g2 (or g3)
            body = (await client.get(f"/api/v1/executions/{xid}")).json()
            runs = {r["taskId"]: r["state"]["current"] for r in body["taskRunList"]}
            if body["state"]["current"] == "PAUSED" and "PAUSED" not in runs.get("g1", ""):
                break
            await trio.sleep(0.05)
    await trio.sleep(0.5)  # a wrongly applied second resume would show by now
    body = (await client.get(f"/api/v1/executions/{xid}")).json()
    runs = {r["taskId"]: r["state"]["current"] for r in body["taskRunList"]}
    if second.status_code == 409:
        assert "already being resumed" in second.json()["message"]
        assert runs == {"g1": "SUCCESS", "g2": "PAUSED"}
    else:  # the second one came after the execution had paused at g2: it resumed g2 only
        assert runs in (
            {"g1": "SUCCESS", "g2": "PAUSED"},
            {"g1": "SUCCESS", "g2": "SUCCESS", "g3": "PAUSED"},
        )
    assert (await client.delete(f"/api/v1/executions/{xid}/kill")).status_code == 202


async def test_a_retried_kill_with_the_same_key_answers_as_the_first_did(
    client: httpx.AsyncClient,
) -> None:
    ns = _ns()
    flow = f"id: nap\nnamespace: {ns}\ntasks:\n  - id: s\n    type: io.kestra.plugin.core.flow.Sleep\n    duration: PT60S\n"
    assert (await client.post("/api/v1/flows", content=flow, headers=YAML)).status_code == 200
    xid = (await client.post(f"/api/v1/executions/{ns}/nap", json={})).json()["id"]
    key = {"Idempotency-Key": uuid.uuid4().hex}
    assert (await client.delete(f"/api/v1/executions/{xid}/kill", headers=key)).status_code == 202
    await _wait_state(client, xid, "KILLED")
    again = await client.delete(f"/api/v1/executions/{xid}/kill", headers=key)
    assert again.status_code == 202
    fresh = await client.delete(f"/api/v1/executions/{xid}/kill")
    assert fresh.status_code == 409


async def test_a_flow_output_that_cannot_render_fails_with_a_message_not_an_output(
    client: httpx.AsyncClient,
) -> None:
    ns = _ns()
    flow = (
        f"id: out\nnamespace: {ns}\ntasks:\n"
        "  - id: r\n    type: io.kestra.plugin.core.debug.Return\n    format: hi\n"
        'outputs:\n  - id: o\n    type: STRING\n    value: "{{ outputs.nope.value }}"\n'
    )
    assert (await client.post("/api/v1/flows", content=flow, headers=YAML)).status_code == 200
    body = (await client.post(f"/api/v1/executions/{ns}/out?wait=true", json={})).json()
    assert body["state"]["current"] == "FAILED"
    assert body["outputs"] == {}
    assert "Flow output 'o'" in body["message"]
