"""Actions on one execution over HTTP, at Kestra's paths: replay, restart, pause and resume,
a task run's state, labels; each refused with 409 when the state does not allow it."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import trio

YAML = {"content-type": "application/x-yaml"}

FLOW = """
id: five
namespace: {ns}
tasks:
  - id: t1
    type: io.kestra.plugin.core.debug.Return
    format: one
  - id: t2
    type: io.kestra.plugin.core.execution.Fail
    condition: "{{{{ execution.originalId == execution.id and taskrun.attemptsCount == 0 }}}}"
  - id: t3
    type: io.kestra.plugin.core.debug.Return
    format: three
"""

SLOW = """
id: slow
namespace: {ns}
tasks:
  - id: first
    type: io.kestra.plugin.core.flow.Sleep
    duration: PT1S
  - id: second
    type: io.kestra.plugin.core.debug.Return
    format: two
"""


def _ns() -> str:
    return f"test.api.x{uuid.uuid4().hex[:8]}"


async def _failed(client: httpx.AsyncClient) -> dict[str, Any]:
    ns = _ns()
    deployed = await client.post("/api/v1/flows", content=FLOW.format(ns=ns), headers=YAML)
    assert deployed.status_code == 200
    ran = await client.post(f"/api/v1/executions/{ns}/five?wait=true", json={})
    assert ran.json()["state"]["current"] == "FAILED"
    return dict(ran.json())


async def _ended(
    client: httpx.AsyncClient, execution_id: str, after: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The execution once it ended; with `after` (the execution as it was before a command
    that sets it running again), once it ended again: until the executor records RESTARTED
    the execution still reads as it ended before."""
    seen = len(after["state"]["histories"]) if after else 0
    with trio.fail_after(60):
        while True:
            body = (await client.get(f"/api/v1/executions/{execution_id}")).json()
            moved = len(body["state"]["histories"]) > seen
            if moved and body["state"]["current"] in ("SUCCESS", "FAILED", "KILLED", "WARNING"):
                return dict(body)
            await trio.sleep(0.1)


def _run(execution: dict[str, Any], task_id: str) -> dict[str, Any]:
    [run] = [r for r in execution["taskRunList"] if r["taskId"] == task_id]
    return dict(run)


async def test_replay_from_a_task_run_answers_the_new_execution_linked_to_its_origin(
    client: httpx.AsyncClient,
) -> None:
    origin = await _failed(client)
    t2 = _run(origin, "t2")["id"]
    key = {"Idempotency-Key": uuid.uuid4().hex}
    answer = await client.post(
        f"/api/v1/executions/{origin['id']}/replay",
        params={"taskRunId": t2, "reason": "bug fixed"},
        headers=key,
    )
    assert answer.status_code == 200, answer.text
    new = answer.json()
    assert new["id"] != origin["id"] and new["replayOf"] == origin["id"]
    assert new["originalId"] == origin["id"]
    assert {"key": "system.replay", "value": "true"} in new["labels"]
    again = await client.post(
        f"/api/v1/executions/{origin['id']}/replay", params={"taskRunId": t2}, headers=key
    )
    assert again.json()["id"] == new["id"]  # a retried request makes one replay

    done = await _ended(client, new["id"])
    assert done["state"]["current"] == "SUCCESS"
    assert _run(done, "t1")["outputs"] == _run(origin, "t1")["outputs"]
    assert len(_run(done, "t2")["attempts"]) == 1
    listed = (await client.get(f"/api/v1/executions/{origin['id']}")).json()
    assert listed["replays"] == [new["id"]]
    events = (await client.get(f"/api/v1/executions/{origin['id']}/events")).json()
    assert [e["type"] for e in events].count("ExecutionReplayed") == 1

    missing = await client.post(
        f"/api/v1/executions/{origin['id']}/replay", params={"taskRunId": "nope"}
    )
    assert missing.status_code == 404 and "no task run nope" in missing.json()["message"]
    bad = await client.post(f"/api/v1/executions/{origin['id']}/replay?revision=x")
    assert bad.status_code == 400 and "revision" in bad.json()["message"]
    unknown = await client.post(f"/api/v1/executions/{origin['id']}/replay?revision=9")
    assert unknown.status_code == 404 and "no revision 9" in unknown.json()["message"]


async def test_restart_runs_the_failed_task_again_in_the_same_execution(
    client: httpx.AsyncClient,
) -> None:
    origin = await _failed(client)
    answer = await client.post(f"/api/v1/executions/{origin['id']}/restart?reason=retry")
    assert answer.status_code == 200, answer.text
    assert answer.json()["id"] == origin["id"]
    done = await _ended(client, origin["id"], after=origin)
    assert done["state"]["current"] == "SUCCESS"
    assert [a["state"]["current"] for a in _run(done, "t2")["attempts"]] == ["FAILED", "SUCCESS"]
    assert "RESTARTED" in [h["state"] for h in done["state"]["histories"]]
    refused = await client.post(f"/api/v1/executions/{origin['id']}/restart")
    assert refused.status_code == 409
    assert "only a FAILED or KILLED execution" in refused.json()["message"]
    other = await client.post(f"/api/v1/executions/{origin['id']}/restart?revision=2")
    assert other.status_code == 400 and "replay" in other.json()["message"]


async def test_change_state_of_a_failed_task_run_ends_the_execution_from_there(
    client: httpx.AsyncClient,
) -> None:
    origin = await _failed(client)
    t2 = _run(origin, "t2")["id"]
    answer = await client.post(
        f"/api/v1/executions/{origin['id']}/state", json={"taskRunId": t2, "state": "SUCCESS"}
    )
    assert answer.status_code == 200, answer.text
    done = await _ended(client, origin["id"], after=origin)
    assert done["state"]["current"] == "SUCCESS"
    assert _run(done, "t2")["state"]["current"] == "SUCCESS"
    assert _run(done, "t3")["outputs"] == {"value": "three"}

    url = f"/api/v1/executions/{origin['id']}/state"
    wrong = await client.post(url, json={"taskRunId": t2, "state": "RUNNING"})
    assert wrong.status_code == 400 and "SUCCESS, WARNING, FAILED" in wrong.json()["message"]
    assert (await client.post(url, json={"state": "SUCCESS"})).status_code == 400
    assert (await client.post(url, json=[])).status_code == 400
    same = await client.post(url, json={"taskRunId": t2, "state": "SUCCESS"})
    assert same.status_code == 409
    gone = await client.post(url, json={"taskRunId": "nope", "state": "SUCCESS"})
    assert gone.status_code == 404


async def test_labels_of_an_ended_execution_are_set_as_kestras_list(
    client: httpx.AsyncClient,
) -> None:
    origin = await _failed(client)
    url = f"/api/v1/executions/{origin['id']}/labels"
    answer = await client.post(url, json=[{"key": "team", "value": "data"}])
    assert answer.status_code == 200, answer.text
    labels = {label["key"]: label["value"] for label in answer.json()["labels"]}
    assert labels == {"system.correlationId": origin["id"], "team": "data"}
    system = await client.post(url, json=[{"key": "system.x", "value": "1"}])
    assert system.status_code == 400 and "system labels" in system.json()["message"]
    assert (await client.post(url, json={"team": "data"})).status_code == 400
    assert (await client.post(url, content=b"")).status_code == 400


async def test_pause_and_resume_by_hand_and_the_refusals_of_a_running_execution(
    client: httpx.AsyncClient,
) -> None:
    ns = _ns()
    assert (
        await client.post("/api/v1/flows", content=SLOW.format(ns=ns), headers=YAML)
    ).status_code == 200
    xid = (await client.post(f"/api/v1/executions/{ns}/slow", json={})).json()["id"]
    with trio.fail_after(30):
        while (await client.get(f"/api/v1/executions/{xid}")).json()["state"]["current"] != (
            "RUNNING"
        ):
            await trio.sleep(0.05)
    replay = await client.post(f"/api/v1/executions/{xid}/replay")
    assert replay.status_code == 409 and "only an ended execution" in replay.json()["message"]
    labels = await client.post(f"/api/v1/executions/{xid}/labels", json=[])
    assert labels.status_code == 409

    paused = await client.post(f"/api/v1/executions/{xid}/pause?reason=maintenance")
    assert paused.status_code == 204, paused.text
    with trio.fail_after(30):
        while (await client.get(f"/api/v1/executions/{xid}")).json()["state"]["current"] != (
            "PAUSED"
        ):
            await trio.sleep(0.05)
    twice = await client.post(f"/api/v1/executions/{xid}/pause")
    assert twice.status_code == 409
    await trio.sleep(1.5)
    held = (await client.get(f"/api/v1/executions/{xid}")).json()
    assert held["state"]["current"] == "PAUSED"
    assert [r["taskId"] for r in held["taskRunList"]] == ["first"]

    resumed = await client.post(f"/api/v1/executions/{xid}/resume", json={})
    assert resumed.status_code == 204, resumed.text
    done = await _ended(client, xid)
    assert done["state"]["current"] == "SUCCESS"
    ended = await client.post(f"/api/v1/executions/{xid}/pause")
    assert ended.status_code == 409 and "only a RUNNING execution" in ended.json()["message"]
    events = (await client.get(f"/api/v1/executions/{xid}/events")).json()
    pause = next(e for e in events if e["type"] == "ExecutionPauseRequested")
    assert pause["data"]["reason"] == "maintenance"


async def test_actions_on_an_unknown_execution_answer_404(client: httpx.AsyncClient) -> None:
    for path, body in (
        ("replay", None),
        ("restart", None),
        ("pause", None),
        ("state", {"taskRunId": "x", "state": "SUCCESS"}),
        ("labels", [{"key": "a", "value": "b"}]),
    ):
        answer = await client.post(f"/api/v1/executions/nope-none/{path}", json=body)
        assert answer.status_code == 404, (path, answer.text)
