"""Triggers' state and backfills through the REST API: a backfill is asked for, shows its
progress, pauses and resumes; a request that cannot be carried out gets a clear 4xx."""

from __future__ import annotations

import uuid

import httpx

from tests.conftest import deploy


def _flow(ns: str) -> str:
    return f"""id: nightly
namespace: {ns}
tasks:
  - id: log
    type: io.kestra.plugin.core.log.Log
    message: "{{{{ trigger.date }}}}"
triggers:
  - id: schedule
    type: io.kestra.plugin.core.trigger.Schedule
    cron: "0 2 * * *"
    timezone: Europe/Paris
"""


async def _deploy_nightly(client: httpx.AsyncClient) -> str:
    """Deploy the scheduled flow `nightly` in a namespace of its own, and answer the namespace."""
    ns = f"test.trig{uuid.uuid4().hex[:10]}"
    await deploy(client, _flow(ns))
    return ns


async def test_a_backfill_is_started_paused_and_resumed_with_its_progress_shown(
    client: httpx.AsyncClient,
) -> None:
    ns = await _deploy_nightly(client)
    target = {"namespace": ns, "flowId": "nightly", "triggerId": "schedule"}
    body = {**target, "backfill": {"start": "2024-03-01T00:00:00Z", "end": "2024-04-01T00:00:00Z",
                                   "labels": {"why": "replay"}}}  # fmt: skip
    started = await client.post("/api/v1/triggers/backfill", json=body)
    assert started.status_code == 200, started.text
    backfill = started.json()["backfill"]
    assert backfill["total"] == 31 and backfill["fired"] == 0 and backfill["paused"] is False
    assert backfill["start"] == "2024-03-01T01:00:00+01:00"  # in the trigger's time zone
    paused = await client.put("/api/v1/triggers/backfill/pause", json=target)
    assert paused.status_code == 200 and paused.json()["backfill"]["paused"] is True
    again = await client.post("/api/v1/triggers/backfill", json=body)
    assert again.status_code == 409 and "has not ended" in again.json()["message"]
    resumed = await client.put("/api/v1/triggers/backfill/unpause", json=target)
    assert resumed.status_code == 200 and resumed.json()["backfill"]["paused"] is False
    state = await client.get(f"/api/v1/triggers/{ns}/nightly/schedule")
    assert state.status_code == 200
    assert state.json()["triggerId"] == "schedule" and state.json()["disabled"] is False
    assert state.json()["nextExecutionDate"].endswith(("+01:00", "+02:00"))
    assert (await client.delete(f"/api/v1/flows/{ns}/nightly")).status_code == 204


async def test_backfill_requests_that_cannot_be_carried_out_get_a_clear_4xx(
    client: httpx.AsyncClient,
) -> None:
    ns = await _deploy_nightly(client)
    target = {"namespace": ns, "flowId": "nightly", "triggerId": "schedule"}
    cases = [
        ({**target, "backfill": {}}, 400, "start"),
        ({**target, "backfill": {"start": "yesterday"}}, 400, "ISO-8601"),
        ({**target, "backfill": {"start": "2024-03-02T00:00:00Z", "end": "2024-03-01"}}, 400,
         "after its start"),
        ({**target, "triggerId": "nope", "backfill": {"start": "2024-03-01"}}, 404, "no trigger"),
        ({**target, "flowId": "nope", "backfill": {"start": "2024-03-01"}}, 404, "nope"),
        ({"flowId": "nightly"}, 400, "namespace"),
        ({**target, "backfill": "soon"}, 400, "object"),
        ({**target, "backfill": {"start": "2024-03-01", "labels": 3}}, 400, "labels"),
    ]  # fmt: skip
    for body, status, words in cases:
        answer = await client.post("/api/v1/triggers/backfill", json=body)
        assert answer.status_code == status, (body, answer.text)
        assert words in answer.json()["message"], (body, answer.text)
    nothing = await client.put("/api/v1/triggers/backfill/pause", json=target)
    assert nothing.status_code == 404 and "no running backfill" in nothing.json()["message"]
    assert (await client.get(f"/api/v1/triggers/{ns}/nightly/nope")).status_code == 404
    assert (await client.delete(f"/api/v1/flows/{ns}/nightly")).status_code == 204
