"""Plugins, execution files and purges through the API."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import trio

from tests.conftest import deploy


def _ns() -> str:
    return f"test.files.n{uuid.uuid4().hex[:8]}"


def _stored(server: Any, ns: str) -> list[str]:
    return list(server.storage.list("/" + ns.replace(".", "/")))


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
    await deploy(client, flow)
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
    await deploy(client, flow)
    response = await client.post(
        f"/api/v1/executions/{ns}/needs-two",
        files={"data": ("x.txt", b"x"), "n": (None, "not a number")},
    )
    assert response.status_code == 422
    assert any(d["path"] == "inputs.n" for d in response.json()["details"])


async def test_every_plugin_is_listed_once_with_its_aliases_and_description(
    client: httpx.AsyncClient,
) -> None:
    listed = (await client.get("/api/v1/plugins")).json()
    types = [p["type"] for p in listed]
    aliases = {a for p in listed for a in p["aliases"]}
    assert len(types) == len(set(types)) and not aliases & set(types)
    assert all(set(p) == {"type", "aliases", "description", "kind"} for p in listed)
    kinds = ("runnable", "flowable", "trigger", "condition")
    assert all(p["kind"] in kinds and p["description"] for p in listed)


async def test_trigger_types_are_listed_with_their_schema(client: httpx.AsyncClient) -> None:
    listed = (await client.get("/api/v1/plugins")).json()
    kinds = {p["type"]: p["kind"] for p in listed}
    assert kinds["io.kestra.plugin.core.trigger.Schedule"] == "trigger"
    assert kinds["io.kestra.plugin.core.condition.DayWeek"] == "condition"
    detail = (await client.get("/api/v1/plugins/io.kestra.plugin.core.trigger.Schedule")).json()
    schedule = detail["schema"]["$defs"]["Schedule"]["properties"]
    assert "cron" in schedule and schedule["cron"].get("description")


async def test_a_plugin_schema_is_found_by_alias_and_documents_nested_structs(
    client: httpx.AsyncClient,
) -> None:
    by_alias = await client.get("/api/v1/plugins/io.kestra.core.tasks.log.Log")
    assert (
        by_alias.status_code == 200 and by_alias.json()["type"] == "io.kestra.plugin.core.log.Log"
    )
    detail = (await client.get("/api/v1/plugins/io.kestra.plugin.core.flow.Sequential")).json()
    assert detail["kind"] == "flowable"
    definitions = detail["schema"]["$defs"]
    sequential = definitions["Sequential"]["properties"]
    assert sequential["tasks"]["type"] == "array" and sequential["tasks"].get("description")
    # the child tasks' own struct is documented from its attribute docstrings too
    assert definitions["Task"]["properties"]["id"].get("description")


async def test_a_file_input_given_as_text_is_stored_as_a_file(client: httpx.AsyncClient) -> None:
    ns = _ns()
    await deploy(
        client,
        f"""
id: text
namespace: {ns}
inputs:
  - id: data
    type: FILE
    extension: .csv
tasks:
  - id: show
    type: io.kestra.plugin.core.debug.Return
    format: "{{{{ read(inputs.data) }}}}"
""",
    )
    response = await client.post(f"/api/v1/executions/{ns}/text?wait=true", json={"data": "x,1"})
    assert response.status_code == 200, response.text
    execution = response.json()
    uri = execution["inputs"]["data"]
    assert uri.startswith("kestra:///") and uri.endswith("/inputs/data/data.csv")
    assert execution["taskRunList"][0]["outputs"] == {"value": "x,1"}
    file = await client.get(f"/api/v1/executions/{execution['id']}/file", params={"path": uri})
    assert file.content == b"x,1"


async def test_multipart_repeated_fields_and_typed_inputs_reach_the_execution(
    client: httpx.AsyncClient,
) -> None:
    ns = _ns()
    await deploy(
        client,
        f"""
id: typed
namespace: {ns}
inputs:
  - id: picks
    type: MULTISELECT
    values: [a, b, c]
  - id: when
    type: DATETIME
  - id: wait
    type: DURATION
  - id: nested.flag
    type: BOOLEAN
tasks:
  - id: show
    type: io.kestra.plugin.core.debug.Return
    format: "{{{{ inputs.picks | join(',') }}}} {{{{ inputs.nested.flag }}}}"
""",
    )
    response = await client.post(
        f"/api/v1/executions/{ns}/typed?wait=true",
        data={
            "picks": ["a", "c"],
            "when": "2024-05-01T12:00:00+02:00",
            "wait": "P1D",
            "nested.flag": "true",
        },
        files={"unused": (None, "")},  # forces multipart/form-data
    )
    assert response.status_code == 422  # `unused` is not an input of the flow
    assert [d["path"] for d in response.json()["details"]] == ["inputs.unused"]
    response = await client.post(
        f"/api/v1/executions/{ns}/typed?wait=true",
        data={"picks": ["a", "c"], "wait": "P1D", "nested.flag": "true"},
        files={"when": (None, "2024-05-01T12:00:00+02:00")},  # a plain field, as multipart
    )
    assert response.status_code == 200, response.text
    execution = response.json()
    assert execution["inputs"] == {
        "picks": ["a", "c"],
        "when": "2024-05-01T10:00:00Z",
        "wait": "PT24H",
        "nested": {"flag": True},
    }
    assert execution["taskRunList"][0]["outputs"] == {"value": "a,c true"}


async def test_every_bad_input_is_refused_at_once_and_no_upload_is_stored(
    client: httpx.AsyncClient, server: Any
) -> None:
    ns = _ns()
    await deploy(
        client,
        f"""
id: strict
namespace: {ns}
inputs:
  - id: data
    type: FILE
  - id: n
    type: INT
    min: 1
  - id: mail
    type: EMAIL
tasks:
  - id: t
    type: io.kestra.plugin.core.log.Log
    message: hi
""",
    )
    response = await client.post(
        f"/api/v1/executions/{ns}/strict",
        files={"data": ("x.txt", b"x"), "n": (None, "0"), "mail": (None, "nobody")},
    )
    assert response.status_code == 422
    body = response.json()
    assert {d["path"] for d in body["details"]} == {"inputs.n", "inputs.mail"}
    assert all("message" in d for d in body["details"])
    assert _stored(server, ns) == []
    await trio.sleep(0.2)
    assert (await client.get(f"/api/v1/executions/search?namespace={ns}")).json()["total"] == 0


async def test_file_download_errors_are_json_with_the_right_status(
    client: httpx.AsyncClient,
) -> None:
    ns = _ns()
    await deploy(
        client,
        f"""
id: files
namespace: {ns}
inputs:
  - id: data
    type: FILE
tasks:
  - id: t
    type: io.kestra.plugin.core.log.Log
    message: hi
""",
    )
    created = await client.post(
        f"/api/v1/executions/{ns}/files?wait=true",
        files={"data": ("résumé été.txt", b"bonjour")},
    )
    assert created.status_code == 200, created.text
    execution = created.json()
    uri = execution["inputs"]["data"]
    base = f"/api/v1/executions/{execution['id']}/file"

    download = await client.get(base, params={"path": uri})
    assert download.status_code == 200 and download.content == b"bonjour"
    disposition = download.headers["content-disposition"]
    assert (
        disposition.startswith("attachment;") and "filename*=UTF-8''r%C3%A9sum%C3%A9" in disposition
    )
    assert (await client.get(base + "/metas", params={"path": uri})).json()["size"] == 7

    missing = await client.get(base, params={"path": uri.rsplit("/", 1)[0] + "/nope.txt"})
    assert missing.status_code == 404 and missing.json()["message"]
    no_path = await client.get(base)
    assert no_path.status_code == 400 and "path" in no_path.json()["message"]
    escape = await client.get(base, params={"path": uri.rsplit("/", 1)[0] + "/../../../x"})
    assert escape.status_code == 400
    not_ours = await client.get(base + "/metas", params={"path": "/etc/passwd"})
    assert not_ours.status_code == 400 and "kestra://" in not_ours.json()["message"]
    unknown = await client.get("/api/v1/executions/nope/file", params={"path": uri})
    assert unknown.status_code == 404
