"""Plugins, execution files and purges through the API."""

from __future__ import annotations

import uuid

import httpx
import trio

YAML = {"content-type": "application/x-yaml"}


async def test_plugins_are_listed_with_their_json_schema(client: httpx.AsyncClient) -> None:
    listed = (await client.get("/api/v1/plugins")).json()
    by_type = {p["type"]: p for p in listed}
    assert by_type["io.kestra.plugin.core.log.Log"]["kind"] == "runnable"
    assert "io.kestra.core.tasks.log.Log" in by_type["io.kestra.plugin.core.log.Log"]["aliases"]
    assert by_type["io.kestra.plugin.core.flow.ForEach"]["kind"] == "flowable"
    assert "io.kestra.plugin.scripts.python.Script" in by_type

    detail = (await client.get("/api/v1/plugins/io.kestra.plugin.core.log.Log")).json()
    definition = detail["schema"]["$defs"]["Log"]
    assert definition["title"] == "io.kestra.plugin.core.log.Log"
    assert "message" in definition["required"]
    assert "TRACE" in definition["properties"]["level"]["description"]
    missing = await client.get("/api/v1/plugins/io.example.Nope")
    assert missing.status_code == 404 and "/api/v1/plugins" in missing.json()["message"]


async def test_file_input_is_stored_downloadable_and_purged_with_its_execution(
    client: httpx.AsyncClient,
) -> None:
    ns = f"test.files.n{uuid.uuid4().hex[:8]}"
    flow = f"""
id: upload
namespace: {ns}
inputs:
  - id: data
    type: FILE
tasks:
  - id: show
    type: io.kestra.plugin.core.debug.Return
    format: "{{{{ read(inputs.data) | trim }}}}"
"""
    assert (await client.post("/api/v1/flows", content=flow, headers=YAML)).status_code == 200
    response = await client.post(
        f"/api/v1/executions/{ns}/upload?wait=true",
        files={"data": ("rows.csv", b"a,1\nb,2\n", "text/csv")},
    )
    assert response.status_code == 200, response.text
    execution = response.json()
    uri = execution["inputs"]["data"]
    assert uri.startswith(f"kestra:///{ns.replace('.', '/')}/upload/executions/{execution['id']}/")
    assert uri.endswith("/rows.csv")
    show = next(r for r in execution["taskRunList"] if r["taskId"] == "show")
    assert show["outputs"] == {"value": "a,1\nb,2"}

    download = await client.get(f"/api/v1/executions/{execution['id']}/file", params={"path": uri})
    assert download.status_code == 200 and download.content == b"a,1\nb,2\n"
    assert 'filename="rows.csv"' in download.headers["content-disposition"]
    metas = (await client.get(f"/api/v1/executions/{execution['id']}/file/metas?path={uri}")).json()
    assert metas["size"] == 8
    elsewhere = await client.get(
        f"/api/v1/executions/{execution['id']}/file", params={"path": "kestra:///other/x.txt"}
    )
    assert elsewhere.status_code == 400

    purged = await client.delete(f"/api/v1/executions/{execution['id']}")
    assert purged.status_code == 204
    assert (await client.get(f"/api/v1/executions/{execution['id']}")).status_code == 404
    trail = (await client.get(f"/api/v1/executions/{execution['id']}/events")).json()
    assert trail[-1]["type"] == "ExecutionPurged"
    with trio.fail_after(10):
        while True:
            found = (await client.get(f"/api/v1/executions/search?namespace={ns}")).json()
            if found["total"] == 0:
                break
            await trio.sleep(0.05)


async def test_a_bad_file_input_stores_nothing_and_starts_nothing(
    client: httpx.AsyncClient,
) -> None:
    ns = f"test.files.n{uuid.uuid4().hex[:8]}"
    flow = f"""
id: needs-two
namespace: {ns}
inputs:
  - id: data
    type: FILE
  - id: n
    type: INT
tasks:
  - id: t
    type: io.kestra.plugin.core.log.Log
    message: hi
"""
    await client.post("/api/v1/flows", content=flow, headers=YAML)
    response = await client.post(
        f"/api/v1/executions/{ns}/needs-two",
        files={"data": ("x.txt", b"x"), "n": (None, "not a number")},
    )
    assert response.status_code == 422
    assert any(d["path"] == "inputs.n" for d in response.json()["details"])
