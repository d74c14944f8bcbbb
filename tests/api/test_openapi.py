"""The OpenAPI document at /api/v1/openapi.yml describes every route the server serves, with
the shapes real answers have."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import msgspec
import trio
import yaml

from api import openapi
from api.auth import PUBLIC, ROLE_ATTR

YAML = {"Content-Type": "application/x-yaml"}
SEARCH = "/api/v1/executions/search"


async def _document(client: httpx.AsyncClient, path: str = openapi.PATH) -> dict[str, Any]:
    # Public: fetched without credentials.
    async with httpx.AsyncClient(base_url=str(client.base_url), timeout=30) as anonymous:
        response = await anonymous.get(path)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/yaml")
    return dict(yaml.safe_load(response.text))


async def test_every_route_the_server_serves_is_in_the_openapi_document(
    server: Any, client: httpx.AsyncClient
) -> None:
    from api.app import create_app

    document = await _document(client)
    assert document["openapi"].startswith("3.")
    schemes = document["components"]["securitySchemes"]
    assert schemes["basicAuth"] == {"type": "http", "scheme": "basic"}
    assert schemes["bearerAuth"]["scheme"] == "bearer"
    app = create_app(server)
    missing, served = [], 0
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static" or rule.endpoint.startswith("ui."):  # web UI pages
            continue
        path = openapi.openapi_path(rule.rule)
        role = getattr(app.view_functions[rule.endpoint], ROLE_ATTR)
        for method in rule.methods - {"HEAD", "OPTIONS"}:
            served += 1
            operation = document["paths"].get(path, {}).get(method.lower())
            if operation is None:
                missing.append(f"{method} {path}")
                continue
            assert operation["x-tiercel-role"] == role
            # A public route asks for no credentials; the others inherit basic and bearer.
            assert ("security" in operation) == (role == PUBLIC), (method, path)
            for name in rule.arguments:
                assert {"name": name, "in": "path", "required": True}.items() <= next(
                    p for p in operation["parameters"] if p["name"] == name
                ).items()
    assert not missing, f"routes missing from the OpenAPI document: {missing}"
    documented = sum(len(methods) for methods in document["paths"].values())
    assert documented == served
    assert "{execution_id}" in "".join(document["paths"])  # Werkzeug's <x> as OpenAPI's {x}


async def test_openapi_schemas_describe_the_answers_kestra_clients_read(
    client: httpx.AsyncClient,
) -> None:
    document = await _document(client)
    search = document["paths"]["/api/v1/executions/search"]["get"]
    assert "Execution" in str(document["components"]["schemas"])
    assert search["responses"]["200"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/ExecutionPage"
    }
    assert any(p["name"] == "filters" for p in search["parameters"])

    ns = f"test.openapi.n{uuid.uuid4().hex[:8]}"
    flow = (
        f"id: hello\nnamespace: {ns}\nlabels:\n  team: a\ntasks:\n"
        "  - id: say\n    type: io.kestra.plugin.core.log.Log\n    message: hi\n"
    )
    created = await client.post("/api/v1/flows", content=flow, headers=YAML)
    msgspec.convert(created.json(), openapi.FlowWithSource)
    execution = await client.post(f"/api/v1/executions/{ns}/hello?wait=true")
    msgspec.convert(execution.json(), openapi.Execution)
    # The shapes hold every field the answers carry.
    fields = {f.encode_name for f in msgspec.structs.fields(openapi.Execution)}
    assert set(execution.json()) <= fields
    with trio.fail_after(15):
        while not (found := await client.get(SEARCH, params={"namespace": ns})).json()["total"]:
            await trio.sleep(0.05)
    page = msgspec.convert(found.json(), openapi.ExecutionPage)
    row_fields = {f.encode_name for f in msgspec.structs.fields(openapi.ExecutionSummary)}
    assert all(set(row) <= row_fields for row in found.json()["results"])
    logs = await client.get(f"/api/v1/logs/{execution.json()['id']}")
    msgspec.convert(logs.json(), list[openapi.LogEntry])
    assert page.total == len(page.results)
    refused = await client.get(SEARCH, params={"state": "DONE"})
    msgspec.convert(refused.json(), openapi.ApiError)


async def test_openapi_document_answers_under_the_main_tenant_too(
    client: httpx.AsyncClient,
) -> None:
    assert await _document(client, "/api/v1/main/openapi.yml") == await _document(client)
