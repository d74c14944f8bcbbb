"""Triggers through Kestra's routes: the search lists each trigger of each deployed flow with
its state, filtered and paged; disabling one through PUT stops its Schedule firing; unlock ends
a backfill left running or paused so that another can start."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import trio

import plugins.core  # noqa: F401  (registers the trigger types)
from engine.scheduler import Scheduler
from tests.conftest import deploy


def _ns() -> str:
    return f"test.tsearch{uuid.uuid4().hex[:10]}"


def _flow(ns: str, flow_id: str, triggers: str) -> str:
    return (
        f"id: {flow_id}\nnamespace: {ns}\n"
        "tasks:\n"
        "  - id: log\n"
        "    type: io.kestra.plugin.core.log.Log\n"
        "    message: hi\n"
        f"triggers:\n{triggers}"
    )


NIGHTLY = (
    "  - id: nightly\n"
    "    type: io.kestra.plugin.core.trigger.Schedule\n"
    '    cron: "0 2 * * *"\n'
    "    timezone: Europe/Paris\n"
)
HOOK = "  - id: hook\n    type: io.kestra.plugin.core.trigger.Webhook\n    key: a-long-random-key\n"
POLL = (
    "  - id: poll\n"
    "    type: io.kestra.plugin.core.http.Trigger\n"
    "    uri: http://127.0.0.1:9/never\n"
    "    interval: PT1H\n"
    "    disabled: true\n"
)
EVERY_SECOND = (
    "  - id: tick\n"
    "    type: io.kestra.plugin.core.trigger.Schedule\n"
    "    withSeconds: true\n"
    '    cron: "* * * * * *"\n'
)


async def _search(client: httpx.AsyncClient, **params: Any) -> dict[str, Any]:
    answer = await client.get("/api/v1/triggers/search", params=params)
    assert answer.status_code == 200, answer.text
    found: dict[str, Any] = answer.json()
    return found


async def test_search_lists_each_trigger_with_its_state_filtered_sorted_and_paged(
    client: httpx.AsyncClient,
) -> None:
    ns = _ns()
    await deploy(client, _flow(ns, "reports", NIGHTLY + HOOK))
    watch = await deploy(client, _flow(f"{ns}.sub", "watch", POLL))
    assert not watch.get("warnings")  # the HTTP trigger runs: nothing to warn about
    await deploy(client, _flow(_ns(), "elsewhere", NIGHTLY))  # another namespace
    deleted = _flow(ns, "gone", NIGHTLY)
    await deploy(client, deleted)
    assert (await client.delete(f"/api/v1/flows/{ns}/gone")).status_code == 204

    found = await _search(client, namespace=ns)
    assert found["total"] == 3
    rows = {row["triggerContext"]["triggerId"]: row for row in found["results"]}
    assert sorted(rows) == ["hook", "nightly", "poll"]  # sorted by triggerId by default
    nightly = rows["nightly"]
    assert nightly["abstractTrigger"]["cron"] == "0 2 * * *"
    assert nightly["abstractTrigger"]["type"] == "io.kestra.plugin.core.trigger.Schedule"
    context = nightly["triggerContext"]
    assert context["namespace"] == ns and context["flowId"] == "reports"
    assert context["disabled"] is False and context["backfill"] is None
    assert context["nextExecutionDate"].endswith(("+01:00", "+02:00"))
    assert "T02:00:00" in context["nextExecutionDate"]
    assert rows["hook"]["triggerContext"]["nextExecutionDate"] is None
    assert rows["poll"]["triggerContext"]["disabled"] is True  # `disabled: true` in the flow
    assert rows["poll"]["triggerContext"]["namespace"] == f"{ns}.sub"

    assert (await _search(client, namespace=ns, flowId="watch"))["total"] == 1
    tenant = await client.get("/api/v1/main/triggers/search", params={"namespace": ns})
    assert tenant.status_code == 200 and tenant.json()["total"] == 3
    of_flow = await client.get(f"/api/v1/triggers/{ns}/reports")
    assert of_flow.status_code == 200
    assert [r["triggerContext"]["triggerId"] for r in of_flow.json()["results"]] == [
        "nightly",
        "hook",
    ]
    polling = await client.get(f"/api/v1/triggers/{ns}.sub/watch/poll")
    assert polling.status_code == 200 and polling.json()["disabled"] is True
    assert polling.json()["type"] == "io.kestra.plugin.core.http.Trigger"
    by_q = await _search(client, namespace=ns, q="HOO")
    assert [r["triggerContext"]["triggerId"] for r in by_q["results"]] == ["hook"]
    paged = await _search(client, namespace=ns, size=2, page=2, sort="triggerId:desc")
    assert paged["total"] == 3
    assert [r["triggerContext"]["triggerId"] for r in paged["results"]] == ["hook"]
    by_flow = await _search(client, namespace=ns, sort="flowId:asc")
    assert [r["triggerContext"]["flowId"] for r in by_flow["results"]] == [
        "reports",
        "reports",
        "watch",
    ]
    refused = await client.get("/api/v1/triggers/search", params={"sort": "color"})
    assert refused.status_code == 400 and "sort" in refused.json()["message"]
    refused = await client.get("/api/v1/triggers/search", params={"page": "0"})
    assert refused.status_code == 400 and "page" in refused.json()["message"]


async def test_a_viewer_of_one_namespace_searches_only_its_triggers(
    client: httpx.AsyncClient,
) -> None:
    mine, other = _ns(), _ns()
    await deploy(client, _flow(mine, "reports", NIGHTLY))
    await deploy(client, _flow(other, "reports", NIGHTLY))
    created = await client.post(
        "/api/v1/tokens", json={"name": f"v{uuid.uuid4().hex[:6]}", "role": "viewer",
                                "namespaces": [mine]},
    )  # fmt: skip
    assert created.status_code in (200, 201), created.text
    token = created.json()["token"]
    async with httpx.AsyncClient(
        base_url=client.base_url, headers={"Authorization": f"Bearer {token}"}, timeout=60
    ) as viewer:
        answer = await viewer.get("/api/v1/triggers/search", params={"q": "reports"})
        assert answer.status_code == 200, answer.text
        namespaces = {r["triggerContext"]["namespace"] for r in answer.json()["results"]}
        assert namespaces == {mine}
        refused = await viewer.put(
            f"/api/v1/triggers/{mine}/reports/nightly", json={"disabled": True}
        )
        assert refused.status_code == 403


async def _executions(client: httpx.AsyncClient, ns: str) -> int:
    answer = await client.get("/api/v1/executions/search", params={"namespace": ns, "size": 1})
    assert answer.status_code == 200, answer.text
    total: int = answer.json()["total"]
    return total


async def test_disabling_a_trigger_through_put_stops_its_schedule_and_enabling_resumes_it(
    client: httpx.AsyncClient, server: Any
) -> None:
    ns = _ns()
    await deploy(client, _flow(ns, "ticking", EVERY_SECOND))
    async with trio.open_nursery() as nursery:
        # The API server of these tests runs no scheduler: one for this namespace.
        await nursery.start(Scheduler(server.store, server.notifier, namespace=ns).run)
        await _toggle_and_watch(client, ns)
        nursery.cancel_scope.cancel()


async def _toggle_and_watch(client: httpx.AsyncClient, ns: str) -> None:
    with trio.fail_after(20):
        while await _executions(client, ns) < 1:
            await trio.sleep(0.2)
    put = await client.put(f"/api/v1/triggers/{ns}/ticking/tick", json={"disabled": True})
    assert put.status_code == 200, put.text
    assert put.json()["disabled"] is True and put.json()["triggerId"] == "tick"
    await trio.sleep(1.5)  # a tick decided before the toggle may still land
    settled = await _executions(client, ns)
    await trio.sleep(2.5)
    assert await _executions(client, ns) == settled
    rows = (await _search(client, namespace=ns))["results"]
    assert rows[0]["triggerContext"]["disabled"] is True
    events = await client.get(
        "/api/v1/triggers/search", params={"namespace": ns, "q": "tick"}
    )  # the search agrees
    assert events.json()["results"][0]["triggerContext"]["disabled"] is True

    # Kestra's form: PUT /api/v1/triggers with the trigger context.
    body = {"namespace": ns, "flowId": "ticking", "triggerId": "tick", "disabled": False}
    enabled = await client.put("/api/v1/triggers", json=body)
    assert enabled.status_code == 200 and enabled.json()["disabled"] is False
    with trio.fail_after(15):
        while await _executions(client, ns) <= settled:
            await trio.sleep(0.2)
    # The search reads the latest event of each kind; it agrees with the whole stream folded.
    target = {"namespace": ns, "flowId": "ticking", "triggerId": "tick"}
    span = {"start": "2024-01-01T00:00:00Z", "end": "2024-01-01T00:00:05Z"}
    started = await client.post("/api/v1/triggers/backfill", json={**target, "backfill": span})
    assert started.status_code == 200, started.text
    with trio.fail_after(15):
        while not (await client.get(f"/api/v1/triggers/{ns}/ticking/tick")).json()["backfill"][
            "ended"
        ]:
            await trio.sleep(0.2)
    await client.put(f"/api/v1/triggers/{ns}/ticking/tick", json={"disabled": True})
    folded = (await client.get(f"/api/v1/triggers/{ns}/ticking/tick")).json()
    context = (await _search(client, namespace=ns))["results"][0]["triggerContext"]
    assert context["backfill"] == folded["backfill"] and folded["backfill"]["fired"] == 5
    assert context["date"] == folded["date"] is not None
    assert context["disabled"] is folded["disabled"] is True
    assert (await client.delete(f"/api/v1/flows/{ns}/ticking")).status_code == 204

    bad = await client.put(f"/api/v1/triggers/{ns}/nightly/nope", json={"disabled": True})
    assert bad.status_code == 404
    await deploy(client, _flow(ns, "reports", NIGHTLY))
    bad = await client.put(f"/api/v1/triggers/{ns}/reports/nope", json={"disabled": True})
    assert bad.status_code == 404 and "nightly" in bad.json()["message"]
    bad = await client.put(f"/api/v1/triggers/{ns}/reports/nightly", json={"disabled": "yes"})
    assert bad.status_code == 400 and "disabled" in bad.json()["message"]


async def test_unlock_ends_a_backfill_left_paused_so_that_another_can_start(
    client: httpx.AsyncClient,
) -> None:
    ns = _ns()
    await deploy(client, _flow(ns, "reports", NIGHTLY))
    target = {"namespace": ns, "flowId": "reports", "triggerId": "nightly"}
    unlock = f"/api/v1/triggers/{ns}/reports/nightly/unlock"
    not_locked = await client.post(unlock)
    assert not_locked.status_code == 409 and "not locked" in not_locked.json()["message"]

    span = {"start": "2024-03-01T00:00:00Z", "end": "2024-04-01T00:00:00Z"}
    started = await client.post("/api/v1/triggers/backfill", json={**target, "backfill": span})
    assert started.status_code == 200, started.text
    paused = await client.put("/api/v1/triggers/backfill/pause", json=target)
    assert paused.status_code == 200
    row = (await _search(client, namespace=ns))["results"][0]["triggerContext"]
    assert row["locked"] is True and row["backfill"]["paused"] is True
    blocked = await client.post("/api/v1/triggers/backfill", json={**target, "backfill": span})
    assert blocked.status_code == 409

    unlocked = await client.post(unlock)
    assert unlocked.status_code == 200, unlocked.text
    assert unlocked.json()["locked"] is False
    assert unlocked.json()["backfill"]["ended"] is True
    assert unlocked.json()["backfill"]["cancelled"] is True
    again = await client.post("/api/v1/triggers/backfill", json={**target, "backfill": span})
    assert again.status_code == 200, again.text
    history = await client.get(f"/api/v1/triggers/{ns}/reports/nightly")
    assert history.json()["backfill"]["ended"] is False
    await client.put("/api/v1/triggers/backfill/pause", json=target)
    assert (await client.delete(f"/api/v1/flows/{ns}/reports")).status_code == 204
