"""What an operator scrapes from `/prometheus` and `/metrics` while executions run: slots held by
running tasks, events appended, each projection's lag, and credentials. Real HTTP, read with
prometheus_client's own parser."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import httpx
import trio
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import deploy

Samples = dict[str, list[Any]]


def _ns() -> str:
    return f"test.prom.n{uuid.uuid4().hex[:8]}"


def _samples(text: str) -> Samples:
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(sample.name, []).append(sample)
    return out


def _value(samples: Samples, name: str, **labels: str) -> float | None:
    for sample in samples.get(name, []):
        if all(sample.labels.get(k) == v for k, v in labels.items()):
            return float(sample.value)
    return None


async def _scrape(client: httpx.AsyncClient, path: str = "/prometheus") -> Samples:
    response = await client.get(path)
    assert response.status_code == 200, response.text
    return _samples(response.text)


async def _scrape_until(
    client: httpx.AsyncClient, check: Callable[[Samples], bool], path: str = "/prometheus"
) -> Samples:
    samples: Samples = {}
    with trio.move_on_after(30):
        while True:
            samples = await _scrape(client, path)
            if check(samples):
                return samples
            await trio.sleep(0.2)
    raise AssertionError(f"{path} never showed what was expected: {samples}")


async def test_a_running_task_holds_a_worker_slot_until_it_ends(
    server: Any, client: httpx.AsyncClient
) -> None:
    ns, worker = _ns(), server.worker.id
    await deploy(
        client,
        f"id: nap\nnamespace: {ns}\ntasks:\n"
        "  - id: nap\n    type: io.kestra.plugin.scripts.shell.Commands\n"
        "    commands: ['sleep 3']\n",
    )
    response = await client.post(f"/api/v1/executions/{ns}/nap")
    assert response.status_code == 200, response.text
    execution = response.json()["id"]

    def busy(s: Samples) -> bool:
        return (_value(s, "tiercel_worker_slots_in_use", worker_id=worker) or 0) >= 1

    samples = await _scrape_until(client, busy)
    assert _value(samples, "tiercel_worker_slots", worker_id=worker) == 16

    with trio.fail_after(30):
        while True:
            state = (await client.get(f"/api/v1/executions/{execution}")).json()
            if state["state"]["current"] == "SUCCESS":
                break
            await trio.sleep(0.2)
    await _scrape_until(
        client, lambda s: _value(s, "tiercel_worker_slots_in_use", worker_id=worker) == 0
    )


async def test_events_appended_grows_with_each_execution(client: httpx.AsyncClient) -> None:
    ns = _ns()
    await deploy(
        client,
        f"id: hello\nnamespace: {ns}\ntasks:\n"
        "  - id: say\n    type: io.kestra.plugin.core.log.Log\n    message: hi\n",
    )
    before = _value(await _scrape(client), "tiercel_events_appended_total") or 0
    response = await client.post(f"/api/v1/executions/{ns}/hello?wait=true")
    assert response.json()["state"]["current"] == "SUCCESS", response.text
    after = _value(await _scrape(client, "/metrics"), "tiercel_events_appended_total") or 0
    # Created, started, a task run scheduled, claimed, logged, succeeded, the execution ended.
    assert after >= before + 5


async def test_each_projection_shows_its_lag_and_catches_up_to_zero(
    client: httpx.AsyncClient,
) -> None:
    ns = _ns()
    await deploy(
        client,
        f"id: hello\nnamespace: {ns}\ntasks:\n"
        "  - id: say\n    type: io.kestra.plugin.core.log.Log\n    message: hi\n",
    )
    response = await client.post(f"/api/v1/executions/{ns}/hello?wait=true")
    assert response.json()["state"]["current"] == "SUCCESS", response.text

    readiness = (await client.get("/health/readiness")).json()["components"]
    projections = sorted(
        name.removeprefix("projection:") for name in readiness if name.startswith("projection:")
    )
    assert {"executions", "logs", "flows"} <= set(projections)

    def caught_up(s: Samples) -> bool:
        return all(
            _value(s, "tiercel_projection_lag_events", projection=name) == 0 for name in projections
        )

    samples = await _scrape_until(client, caught_up)
    shown = {s.labels["projection"] for s in samples["tiercel_projection_lag_events"]}
    assert set(projections) <= shown


async def test_metrics_needs_a_viewer_and_a_viewer_token_reads_it(
    client: httpx.AsyncClient,
) -> None:
    response = await client.post("/api/v1/tokens", json={"name": "scraper", "role": "viewer"})
    assert response.status_code == 201, response.text
    token = response.json()["token"]
    async with httpx.AsyncClient(base_url=str(client.base_url), timeout=30) as anonymous:
        for path in ("/metrics", "/prometheus"):
            assert (await anonymous.get(path)).status_code == 401, path
        anonymous.headers["Authorization"] = f"Bearer {token}"
        for path in ("/metrics", "/prometheus"):
            response = await anonymous.get(path)
            assert response.status_code == 200, response.text
            declared = {
                line.split()[2] for line in response.text.splitlines() if line.startswith("# TYPE")
            }
            assert {
                "tiercel_executions",
                "tiercel_task_run_duration_seconds",
                "tiercel_attempts_waiting",
                "tiercel_worker_slots_in_use",
                "tiercel_events_appended_total",
                "tiercel_projection_lag_events",
            } <= declared, (path, declared)
