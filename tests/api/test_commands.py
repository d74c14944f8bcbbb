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
