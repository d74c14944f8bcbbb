"""Prometheus metrics, scraped over real HTTP and read with prometheus_client's own parser."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import trio
from prometheus_client.parser import text_string_to_metric_families

YAML = {"Content-Type": "application/x-yaml"}


def _ns() -> str:
    return f"test.metrics.n{uuid.uuid4().hex[:8]}"


def _flow(ns: str, flow_id: str = "hello", fail: bool = False) -> str:
    task = (
        "  - id: boom\n    type: io.kestra.plugin.core.execution.Fail\n    errorMessage: broken\n"
        if fail
        else "  - id: say\n    type: io.kestra.plugin.core.log.Log\n    message: hi\n"
    )
    return f"id: {flow_id}\nnamespace: {ns}\ntasks:\n{task}"


def _samples(text: str) -> dict[str, list[Any]]:
    """Every sample of the exposition, by sample name."""
    out: dict[str, list[Any]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(sample.name, []).append(sample)
    return out


def _value(samples: dict[str, list[Any]], name: str, **labels: str) -> float | None:
    for sample in samples.get(name, []):
        if all(sample.labels.get(k) == v for k, v in labels.items()):
            return float(sample.value)
    return None


async def _run(client: httpx.AsyncClient, ns: str, flow_id: str) -> str:
    response = await client.post(f"/api/v1/executions/{ns}/{flow_id}?wait=true")
    assert response.status_code == 200, response.text
    return str(response.json()["state"]["current"])


async def _scrape_until(client: httpx.AsyncClient, path: str, check: Any) -> dict[str, list[Any]]:
    """Scrape until `check(samples)` holds (the read model follows the log closely, not at once)."""
    samples: dict[str, list[Any]] = {}
    with trio.move_on_after(20):
        while True:
            response = await client.get(path)
            assert response.status_code == 200, response.text
            assert response.headers["content-type"].startswith("text/plain")
            samples = _samples(response.text)
            if check(samples):
                return samples
            await trio.sleep(0.2)
    raise AssertionError(f"{path} never showed what was expected: {sorted(samples)}")


async def test_prometheus_shows_executions_by_flow_and_state_and_task_run_durations(
    client: httpx.AsyncClient,
) -> None:
    ns = _ns()
    for source in (_flow(ns, "good"), _flow(ns, "bad", fail=True)):
        response = await client.post("/api/v1/flows", content=source, headers=YAML)
        assert response.status_code == 200, response.text
    assert await _run(client, ns, "good") == "SUCCESS"
    assert await _run(client, ns, "good") == "SUCCESS"
    assert await _run(client, ns, "bad") == "FAILED"

    def done(s: dict[str, list[Any]]) -> bool:
        return (
            _value(s, "tiercel_executions", namespace=ns, flow_id="good", state="SUCCESS") == 2
            and _value(s, "tiercel_executions", namespace=ns, flow_id="bad", state="FAILED") == 1
            and (
                _value(s, "tiercel_task_run_duration_seconds_count", namespace=ns, flow_id="good")
                or 0
            )
            >= 2
        )

    samples = await _scrape_until(client, "/prometheus", done)
    count = _value(samples, "tiercel_task_run_duration_seconds_count", namespace=ns, flow_id="bad")
    assert count == 1
    assert (
        _value(
            samples,
            "tiercel_task_run_duration_seconds_bucket",
            namespace=ns,
            flow_id="good",
            state="SUCCESS",
            le="+Inf",
        )
        == 2
    )
    assert (_value(samples, "tiercel_events_appended_total") or 0) > 0
    assert _value(samples, "tiercel_attempts_waiting") is not None
    assert _value(samples, "tiercel_workers") == len(samples["tiercel_worker_slots_in_use"])
    assert _value(samples, "tiercel_worker_slots") == 16
    assert _value(samples, "tiercel_projection_lag_events", projection="executions") is not None
    assert _value(samples, "tiercel_info") == 1


async def test_metrics_is_the_same_exposition_as_prometheus(client: httpx.AsyncClient) -> None:
    samples = await _scrape_until(
        client, "/metrics", lambda s: "tiercel_events_appended_total" in s
    )
    assert "tiercel_projection_lag_events" in samples
    assert "tiercel_worker_slots_in_use" in samples or "tiercel_workers" in samples


async def test_a_scraper_with_a_viewer_token_sees_only_its_namespaces(
    client: httpx.AsyncClient,
) -> None:
    mine, other = _ns(), _ns()
    for ns in (mine, other):
        response = await client.post("/api/v1/flows", content=_flow(ns), headers=YAML)
        assert response.status_code == 200, response.text
        assert await _run(client, ns, "hello") == "SUCCESS"
    response = await client.post(
        "/api/v1/tokens", json={"name": "prometheus", "role": "viewer", "namespaces": [mine]}
    )
    assert response.status_code == 201, response.text
    token = response.json()["token"]
    async with httpx.AsyncClient(base_url=str(client.base_url), timeout=30) as anonymous:
        refused = await anonymous.get("/prometheus")
        assert refused.status_code == 401
        anonymous.headers["Authorization"] = f"Bearer {token}"
        samples = await _scrape_until(
            anonymous,
            "/prometheus",
            lambda s: _value(s, "tiercel_executions", namespace=mine, state="SUCCESS") == 1,
        )
    assert _value(samples, "tiercel_executions", namespace=other) is None
    assert _value(samples, "tiercel_task_run_duration_seconds_count", namespace=other) is None


async def test_attempts_waiting_counts_what_no_worker_has_claimed(
    database_url: str, nursery: trio.Nursery, tmp_path: Any
) -> None:
    from engine.server import run_server
    from tests.conftest import ADMIN_PASSWORD

    # A cluster whose workers are all away: the executor schedules, nobody claims.
    ctx = await nursery.start(
        lambda task_status: run_server(
            database_url,
            ("executor", "indexer", "webserver"),
            host="127.0.0.1",
            port=0,
            data_dir=tmp_path,
            admin_password=ADMIN_PASSWORD,
            task_status=task_status,
        )
    )
    ns = _ns()
    async with httpx.AsyncClient(
        base_url=ctx.extra["urls"][0], timeout=30, auth=("admin", ADMIN_PASSWORD)
    ) as client:
        response = await client.post("/api/v1/flows", content=_flow(ns), headers=YAML)
        assert response.status_code == 200, response.text
        before = await _scrape_until(client, "/metrics", lambda s: "tiercel_attempts_waiting" in s)
        waiting = _value(before, "tiercel_attempts_waiting") or 0
        response = await client.post(f"/api/v1/executions/{ns}/hello")
        assert response.status_code == 200, response.text
        samples = await _scrape_until(
            client,
            "/metrics",
            lambda s: (_value(s, "tiercel_attempts_waiting") or 0) >= waiting + 1,
        )
        # This process runs no worker: it shows no slots of its own.
        assert "tiercel_worker_slots" not in samples
