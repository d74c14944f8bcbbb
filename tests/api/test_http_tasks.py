"""HTTP tasks against a real HTTP server (the API itself)."""

from __future__ import annotations

import json
import uuid

import httpx

from tests.conftest import ADMIN_PASSWORD

YAML = {"content-type": "application/x-yaml"}


async def test_request_and_download_tasks_talk_http(client: httpx.AsyncClient) -> None:
    base = str(client.base_url).rstrip("/")
    ns = f"test.http.n{uuid.uuid4().hex[:8]}"
    flow = f"""
id: calls
namespace: {ns}
tasks:
  - id: health
    type: io.kestra.plugin.core.http.Request
    uri: "{base}/health"
  - id: validate
    type: io.kestra.plugin.core.http.Request
    uri: "{base}/api/v1/flows/validate"
    options:
      basicAuthUser: admin
      basicAuthPassword: "{ADMIN_PASSWORD}"
    method: POST
    contentType: application/x-yaml
    body: "id: x\\nnamespace: y\\ntasks: []\\n"
  - id: missing_ok
    type: io.kestra.plugin.core.http.Request
    uri: "{base}/api/v1/flows/no/such"
    options:
      basicAuthUser: admin
      basicAuthPassword: "{ADMIN_PASSWORD}"
    allowFailed: true
  - id: fetch
    type: io.kestra.plugin.core.http.Download
    uri: "{base}/health"
  - id: body
    type: io.kestra.plugin.core.debug.Return
    format: "{{{{ fromJson(outputs.health.body).status }}}} {{{{ read(outputs.fetch.uri) | fromJson | jq('.status') | first }}}}"
  - id: missing
    type: io.kestra.plugin.core.http.Request
    uri: "{base}/api/v1/flows/no/such"
    options:
      basicAuthUser: admin
      basicAuthPassword: "{ADMIN_PASSWORD}"
"""
    assert (await client.post("/api/v1/flows", content=flow, headers=YAML)).status_code == 200
    execution = (await client.post(f"/api/v1/executions/{ns}/calls?wait=true")).json()
    runs = {r["taskId"]: r for r in execution["taskRunList"]}
    assert runs["health"]["outputs"]["code"] == 200
    assert json.loads(runs["validate"]["outputs"]["body"])[0]["constraints"]
    assert runs["missing_ok"]["state"]["current"] == "SUCCESS"
    assert runs["missing_ok"]["outputs"]["code"] == 404
    assert runs["fetch"]["outputs"]["length"] > 0
    assert runs["body"]["outputs"] == {"value": "UP UP"}
    assert runs["missing"]["state"]["current"] == "FAILED"
    assert "404" in runs["missing"]["message"]
    assert execution["state"]["current"] == "FAILED"
