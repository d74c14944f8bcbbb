"""Readiness reports each component of the process, and names the one that is DOWN."""

from __future__ import annotations

from typing import Any

import httpx


async def test_readiness_lists_database_projections_with_their_lag_executor_and_worker(
    client: httpx.AsyncClient,
) -> None:
    response = await client.get("/health/readiness")
    assert response.status_code == 200, response.text
    components = response.json()["components"]
    assert components["database"]["status"] == "UP"
    for name in ("service:executor", "service:worker", "projection:executions"):
        assert components[name]["status"] == "UP", name
    for name in ("projection:executions", "projection:flows", "projection:logs"):
        assert isinstance(components[name]["lag"], int) and components[name]["lag"] >= 0


async def test_readiness_says_which_component_is_down(
    server: Any, client: httpx.AsyncClient
) -> None:
    server.health.down("service:worker", "claims failed: connection refused")
    try:
        response = await client.get("/health/readiness")
        assert response.status_code == 503
        body = response.json()
        assert body["status"] == "DOWN"
        assert body["components"]["service:worker"]["status"] == "DOWN"
        assert body["components"]["database"]["status"] == "UP"
        assert body["message"] == ("Not ready: service:worker (claims failed: connection refused)")
    finally:
        server.health.up("service:worker")
    assert (await client.get("/health/readiness")).status_code == 200
