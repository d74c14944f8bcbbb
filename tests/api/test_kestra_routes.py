"""The routes a Kestra client and a CI/CD pipeline call, through real HTTP: tenant-prefixed paths,
a namespace's flows as a whole, imports, tasks, bulk deletes, following an execution, the KV
store, `?wait=true`, and the 404 of routes Tiercel does not serve."""

from __future__ import annotations

import io
import shutil
import uuid
import zipfile
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import trio

from tests.conftest import ADMIN_PASSWORD

YAML = {"Content-Type": "application/x-yaml"}
JSON = {"Content-Type": "application/json"}


def _ns() -> str:
    return f"test.kroutes.n{uuid.uuid4().hex[:8]}"


def _flow(namespace: str, flow_id: str, message: str = "hi") -> str:
    return (
        f"id: {flow_id}\nnamespace: {namespace}\ntasks:\n"
        f"  - id: say\n    type: io.kestra.plugin.core.log.Log\n    message: {message}\n"
    )


def _paused_flow(namespace: str, flow_id: str = "waits") -> str:
    return (
        f"id: {flow_id}\nnamespace: {namespace}\ntasks:\n"
        "  - id: hold\n    type: io.kestra.plugin.core.flow.Pause\n"
        "  - id: after\n    type: io.kestra.plugin.core.log.Log\n    message: resumed\n"
    )


async def _token(client: httpx.AsyncClient, role: str, namespaces: list[str]) -> str:
    made = await client.post(
        "/api/v1/tokens", json={"name": f"{role}-kr", "role": role, "namespaces": namespaces}
    )
    assert made.status_code == 201, made.text
    token: str = made.json()["token"]
    return token


# --- tenants ----------------------------------------------------------------------------------


async def test_main_tenant_paths_answer_as_plain_paths_with_the_same_checks(
    client: httpx.AsyncClient,
) -> None:
    ns = _ns()
    made = await client.post("/api/v1/main/flows", content=_flow(ns, "hello"), headers=YAML)
    assert made.status_code == 200, made.text
    read = await client.get(f"/api/v1/main/flows/{ns}/hello")
    assert read.status_code == 200 and read.json()["id"] == "hello"
    assert read.json() == (await client.get(f"/api/v1/flows/{ns}/hello")).json()
    ran = await client.post(f"/api/v1/main/executions/{ns}/hello?wait=true")
    assert ran.status_code == 200 and ran.json()["state"]["current"] == "SUCCESS"

    async with httpx.AsyncClient(base_url=client.base_url, timeout=30) as anonymous:
        refused = await anonymous.get(f"/api/v1/main/flows/{ns}/hello")
        assert refused.status_code == 401
        viewer = {"Authorization": f"Bearer {await _token(client, 'viewer', [ns])}"}
        assert (await anonymous.get(f"/api/v1/main/flows/{ns}", headers=viewer)).is_success
        deploy = await anonymous.post(
            "/api/v1/main/flows", content=_flow(ns, "nope"), headers={**YAML, **viewer}
        )
        assert deploy.status_code == 403 and "editor" in deploy.json()["message"]

    other = await client.get(f"/api/v1/acme/flows/{ns}/hello")
    assert other.status_code == 404
    assert "acme" in other.json()["message"] and "main" in other.json()["message"]


# --- flows ------------------------------------------------------------------------------------


async def test_namespace_put_deploys_a_folder_of_flows_as_a_ci_step_would(
    client: httpx.AsyncClient,
) -> None:
    ns = _ns()
    body = _flow(ns, "extract") + "---\n" + _flow(ns, "load")
    first = await client.put(f"/api/v1/flows/{ns}", content=body, headers=YAML)
    assert first.status_code == 200, first.text
    assert [(f["id"], f["revision"]) for f in first.json()] == [("extract", 1), ("load", 1)]

    # The next commit changes one flow, keeps one, adds one and drops one: the default
    # (delete=true) makes the namespace hold exactly the body's flows.
    body = _flow(ns, "extract", "changed") + "\n---\n" + _flow(ns, "report")
    second = await client.put(f"/api/v1/flows/{ns}", content=body, headers=YAML)
    assert second.status_code == 200, second.text
    answer = {(f["id"], f["revision"], f["deleted"]) for f in second.json()}
    assert answer == {("load", 2, True), ("extract", 2, False), ("report", 1, False)}
    listed = (await client.get(f"/api/v1/flows/{ns}")).json()
    assert [f["id"] for f in listed] == ["extract", "report"]
    assert (await client.get(f"/api/v1/flows/{ns}/load")).status_code == 404

    # The same body again changes nothing: no new revision.
    again = await client.put(f"/api/v1/main/flows/{ns}", content=body, headers=YAML)
    assert {(f["id"], f["revision"]) for f in again.json()} == {("extract", 2), ("report", 1)}

    kept = await client.put(
        f"/api/v1/flows/{ns}?delete=false", content=_flow(ns, "extra"), headers=YAML
    )
    assert kept.status_code == 200 and [f["id"] for f in kept.json()] == ["extra"]
    listed = (await client.get(f"/api/v1/flows/{ns}")).json()
    assert [f["id"] for f in listed] == ["extra", "extract", "report"]


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
async def test_a_ci_job_deploys_a_folder_of_flow_files_with_curl(
    client: httpx.AsyncClient, tmp_path: Path
) -> None:
    """The deploy step of a pipeline: the folder's files joined with `---`, sent with curl to
    the tenant-prefixed path, failing the job (curl -f) on an error."""
    ns = _ns()
    folder = tmp_path / "flows"
    folder.mkdir()
    for name in ("ingest", "publish"):
        (folder / f"{name}.yml").write_text(_flow(ns, name))
    joined = tmp_path / "all.yml"
    joined.write_text("\n---\n".join(f.read_text() for f in sorted(folder.glob("*.yml"))))
    url = str(client.base_url).rstrip("/") + f"/api/v1/main/flows/{ns}"

    async def deploy() -> Any:
        return await trio.run_process(
            ["curl", "-sSf", "-u", f"admin:{ADMIN_PASSWORD}", "-X", "PUT", url,
             "-H", "Content-Type: application/x-yaml", "--data-binary", f"@{joined}"],
            capture_stdout=True, capture_stderr=True, check=False,
        )  # fmt: skip

    done = await deploy()
    assert done.returncode == 0, done.stderr
    assert [f["id"] for f in orjson.loads(done.stdout)] == ["ingest", "publish"]
    joined.write_text(_flow(ns, "ingest") + "---\nid: [\n")
    failed = await deploy()
    assert failed.returncode == 22  # curl -f: the HTTP error fails the job
    listed = (await client.get(f"/api/v1/flows/{ns}")).json()
    assert [f["id"] for f in listed] == ["ingest", "publish"]


async def test_namespace_deploy_takes_flow_files_as_multipart_parts(
    client: httpx.AsyncClient,
) -> None:
    """Newer Kestra CLIs send each file as a multipart part `flows`; `override=true` moves the
    files into the path's namespace."""
    ns = _ns()
    files = [
        ("flows", ("a.yml", _flow(ns, "a").encode())),
        ("flows", ("b.yml", _flow("somewhere.else", "b").encode())),
    ]
    refused = await client.post(f"/api/v1/flows/{ns}", files=files)
    assert refused.status_code == 422 and "b.yml" in refused.json()["details"][0]["message"]
    deployed = await client.post(f"/api/v1/flows/{ns}?override=true", files=files)
    assert deployed.status_code == 200, deployed.text
    assert [(f["id"], f["namespace"]) for f in deployed.json()] == [("a", ns), ("b", ns)]
    # A request with no flow is refused: it never empties the namespace.
    for empty in ({"files": {"flows": ("x.yml", b"")}}, {"content": b"---\n", "headers": YAML}):
        none = await client.put(f"/api/v1/flows/{ns}", **empty)
        assert none.status_code == 400 and "no flow" in none.json()["message"], none.text
    assert [f["id"] for f in (await client.get(f"/api/v1/flows/{ns}")).json()] == ["a", "b"]


async def test_namespace_put_with_a_bad_document_names_it_and_changes_nothing(
    client: httpx.AsyncClient,
) -> None:
    ns = _ns()
    assert (
        await client.put(f"/api/v1/flows/{ns}", content=_flow(ns, "a"), headers=YAML)
    ).is_success
    broken = (
        _flow(ns, "a", "new")
        + "---\n"
        + f"id: b\nnamespace: {ns}\ntasks:\n  - id: x\n    type: nope.Missing\n"
    )
    answer = await client.put(f"/api/v1/flows/{ns}", content=broken, headers=YAML)
    assert answer.status_code == 422, answer.text
    error = answer.json()
    assert "document 2" in error["message"] and "nothing was deployed" in error["message"]
    detail = error["details"][0]
    # Lines count in the whole body: the `type` of document 2 is on its line 12.
    assert detail["message"].startswith("document 2") and detail["line"] == 12
    assert (await client.get(f"/api/v1/flows/{ns}/a")).json()["revision"] == 1

    elsewhere = await client.put(f"/api/v1/flows/{ns}", content=_flow(ns + "x", "c"), headers=YAML)
    assert elsewhere.status_code == 422 and ns + "x" in elsewhere.json()["details"][0]["message"]
    twice = await client.put(
        f"/api/v1/flows/{ns}", content=_flow(ns, "d") + "---\n" + _flow(ns, "d"), headers=YAML
    )
    assert twice.status_code == 422 and "already used" in twice.text
    for bad in (b"", b"\xff\xfe", b"id: [\n"):
        refused = await client.put(f"/api/v1/flows/{ns}", content=bad, headers=YAML)
        assert refused.status_code in (400, 422), refused.text
    assert (await client.put(f"/api/v1/flows/{ns}?delete=maybe", content=_flow(ns, "a"),
                             headers=YAML)).status_code == 400  # fmt: skip
    assert [f["id"] for f in (await client.get(f"/api/v1/flows/{ns}")).json()] == ["a"]


def _zip(files: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return out.getvalue()


async def test_import_takes_a_yaml_file_or_a_zip_and_names_what_it_could_not_import(
    client: httpx.AsyncClient,
) -> None:
    ns = _ns()
    yaml_file = (_flow(ns, "one") + "---\n" + _flow(ns, "two")).encode()
    answer = await client.post(
        "/api/v1/flows/import", files={"fileUpload": ("flows.yml", yaml_file)}
    )
    assert answer.status_code == 200 and answer.json() == [], answer.text
    assert (await client.get(f"/api/v1/flows/{ns}/two")).is_success

    archive = _zip(
        {
            "a/three.yaml": _flow(ns, "three").encode(),
            "bad.yml": b"id: [\n",
            "README.md": b"not a flow",
        }
    )
    answer = await client.post(
        "/api/v1/main/flows/import", files={"fileUpload": ("flows.zip", archive)}
    )
    assert answer.status_code == 200 and answer.json() == ["bad.yml"], answer.text
    assert (await client.get(f"/api/v1/flows/{ns}/three")).is_success

    strict = _zip({"four.yml": _flow(ns, "four").encode(), "bad.yml": b"tasks: 3\n"})
    refused = await client.post(
        "/api/v1/flows/import?failOnError=true", files={"fileUpload": ("f.zip", strict)}
    )
    assert refused.status_code == 422 and "bad.yml" in refused.json()["message"]
    assert (await client.get(f"/api/v1/flows/{ns}/four")).status_code == 404


async def test_import_refuses_zip_bombs_and_files_it_cannot_read(
    client: httpx.AsyncClient,
) -> None:
    bomb = _zip({"huge.yml": b"#" * (64 * 1024 * 1024)})
    assert len(bomb) < 1024 * 1024
    answer = await client.post("/api/v1/flows/import", files={"fileUpload": ("b.zip", bomb)})
    assert answer.status_code == 400 and "huge.yml" in answer.json()["message"]
    for name, data in (("x.zip", b"PK\x03\x04 broken"), ("x.txt", b"hello"), ("e.zip", _zip({}))):
        answer = await client.post("/api/v1/flows/import", files={"fileUpload": (name, data)})
        assert answer.status_code == 400, (name, answer.text)
    plain = await client.post("/api/v1/flows/import", content=b"id: x", headers=YAML)
    assert plain.status_code == 400 and "multipart" in plain.json()["message"]


async def test_a_flow_task_is_answered_as_its_definition(client: httpx.AsyncClient) -> None:
    ns = _ns()
    source = (
        f"id: nested\nnamespace: {ns}\ntasks:\n"
        "  - id: both\n    type: io.kestra.plugin.core.flow.Parallel\n    tasks:\n"
        "      - id: inner\n        type: io.kestra.plugin.core.log.Log\n        message: deep\n"
    )
    assert (await client.post("/api/v1/flows", content=source, headers=YAML)).is_success
    task = await client.get(f"/api/v1/flows/{ns}/nested/tasks/inner")
    assert task.status_code == 200
    assert task.json() == {
        "id": "inner",
        "type": "io.kestra.plugin.core.log.Log",
        "message": "deep",
    }
    missing = await client.get(f"/api/v1/flows/{ns}/nested/tasks/ghost")
    assert missing.status_code == 404 and "ghost" in missing.json()["message"]
    assert (
        await client.get(f"/api/v1/flows/{ns}/nested/tasks/inner?revision=x")
    ).status_code == 400


# --- executions -------------------------------------------------------------------------------


async def test_delete_by_ids_deletes_ended_executions_and_refuses_running_ones(
    client: httpx.AsyncClient,
) -> None:
    ns = _ns()
    for source in (_flow(ns, "quick"), _paused_flow(ns)):
        assert (await client.post("/api/v1/flows", content=source, headers=YAML)).is_success
    done = [(await client.post(f"/api/v1/executions/{ns}/quick?wait=true")).json()["id"]
            for _ in range(2)]  # fmt: skip
    paused = (await client.post(f"/api/v1/executions/{ns}/waits?wait=true")).json()
    assert paused["state"]["current"] == "PAUSED"

    refused = await client.request(
        "DELETE", "/api/v1/executions/by-ids", content=orjson.dumps([*done, paused["id"], "nope"]),
        headers=JSON,
    )  # fmt: skip
    assert refused.status_code == 400, refused.text
    invalids = {i["invalidValue"]: i["message"] for i in refused.json()["invalids"]}
    assert set(invalids) == {paused["id"], "nope"}
    assert "not terminated" in invalids[paused["id"]] and "not found" in invalids["nope"]
    assert (await client.get(f"/api/v1/executions/{done[0]}")).status_code == 200

    deleted = await client.request(
        "DELETE", "/api/v1/main/executions/by-ids", content=orjson.dumps(done), headers=JSON
    )
    assert deleted.status_code == 200 and deleted.json() == {"count": 2}
    for execution_id in done:
        assert (await client.get(f"/api/v1/executions/{execution_id}")).status_code == 404
    for bad in (b"{}", b"[1]", b"not json", b""):
        answer = await client.request(
            "DELETE", "/api/v1/executions/by-ids", content=bad, headers=JSON
        )
        assert answer.status_code == 400, (bad, answer.text)


async def _events(response: httpx.Response) -> Any:
    """The (id, execution) of each server-sent event of a response, as they come."""
    buffer = b""
    async for chunk in response.aiter_bytes():
        buffer += chunk
        while b"\n\n" in buffer:
            raw, buffer = buffer.split(b"\n\n", 1)
            fields = dict(
                line.split(b": ", 1) for line in raw.split(b"\n") if not line.startswith(b":")
            )
            if fields:
                yield fields[b"id"].decode(), orjson.loads(fields[b"data"])


async def test_follow_streams_the_execution_as_it_changes_until_it_ends(
    client: httpx.AsyncClient,
) -> None:
    ns = _ns()
    # Resumed, it sleeps a moment before its last task: the changes in between are not all
    # recorded at once, so the stream has progress to show before the end.
    source = _paused_flow(ns).replace(
        "  - id: after\n",
        "  - id: nap\n    type: io.kestra.plugin.core.flow.Sleep\n    duration: PT0.5S\n"
        "  - id: after\n",
    )
    assert (await client.post("/api/v1/flows", content=source, headers=YAML)).is_success
    execution_id = (await client.post(f"/api/v1/executions/{ns}/waits?wait=true")).json()["id"]
    seen: list[tuple[str, str]] = []
    with trio.fail_after(30):
        async with client.stream("GET", f"/api/v1/executions/{execution_id}/follow") as stream:
            assert stream.status_code == 200
            assert stream.headers["content-type"].startswith("text/event-stream")
            async for kind, execution in _events(stream):
                seen.append((kind, execution["state"]["current"]))
                if kind == "start":
                    resumed = await client.post(
                        f"/api/v1/executions/{execution_id}/resume", json={}
                    )
                    assert resumed.status_code == 204, resumed.text
    assert seen[0] == ("start", "PAUSED")
    assert seen[-1] == ("end", "SUCCESS")
    assert any(kind == "progress" for kind, _ in seen)

    # An ended execution: one event, and the stream closes.
    async with client.stream("GET", f"/api/v1/executions/{execution_id}/follow") as stream:
        assert [kind async for kind, _ in _events(stream)] == ["end"]
    missing = await client.get("/api/v1/executions/nope/follow")
    assert missing.status_code == 404 and "nope" in missing.json()["message"]


async def test_a_client_leaving_a_follow_stream_leaves_the_server_serving(
    client: httpx.AsyncClient,
) -> None:
    ns = _ns()
    assert (await client.post("/api/v1/flows", content=_paused_flow(ns), headers=YAML)).is_success
    execution_id = (await client.post(f"/api/v1/executions/{ns}/waits?wait=true")).json()["id"]
    for _ in range(3):
        with trio.fail_after(10):
            async with client.stream("GET", f"/api/v1/executions/{execution_id}/follow") as s:
                async for kind, _ in _events(s):
                    assert kind == "start"
                    break
    assert (await client.get("/health")).status_code == 200
    resumed = await client.post(f"/api/v1/executions/{execution_id}/resume", json={})
    assert resumed.status_code == 204


async def test_wait_answers_when_the_execution_pauses_or_the_timeout_passes(
    client: httpx.AsyncClient,
) -> None:
    ns = _ns()
    sleeper = (
        f"id: slow\nnamespace: {ns}\ntasks:\n"
        "  - id: nap\n    type: io.kestra.plugin.core.flow.Sleep\n    duration: PT30S\n"
    )
    for source in (_flow(ns, "quick"), _paused_flow(ns), sleeper):
        assert (await client.post("/api/v1/flows", content=source, headers=YAML)).is_success
    ended = await client.post(f"/api/v1/executions/{ns}/quick?wait=true")
    assert ended.json()["state"]["current"] == "SUCCESS"
    assert ended.headers["X-Tiercel-Execution-Ended"] == "true"
    paused = await client.post(f"/api/v1/executions/{ns}/waits?wait=true")
    assert paused.json()["state"]["current"] == "PAUSED"
    assert paused.headers["X-Tiercel-Execution-Ended"] == "false"
    with trio.fail_after(15):
        slow = await client.post(f"/api/v1/executions/{ns}/slow?wait=true&timeout=1")
    assert slow.status_code == 200 and slow.json()["state"]["current"] in ("CREATED", "RUNNING")
    assert slow.headers["X-Tiercel-Execution-Ended"] == "false"
    assert (await client.delete(f"/api/v1/executions/{slow.json()['id']}/kill")).status_code == 202
    bad = await client.post(f"/api/v1/executions/{ns}/quick?wait=true&timeout=0")
    assert bad.status_code == 400


# --- KV ---------------------------------------------------------------------------------------


async def test_kv_values_keep_kestra_types_and_expire_with_their_ttl(
    client: httpx.AsyncClient,
) -> None:
    ns = _ns()
    base = f"/api/v1/main/namespaces/{ns}/kv"
    cases = {
        "greeting": (b'"hello"', "STRING", "hello"),
        "word": (b"hello", "STRING", "hello"),
        "count": (b"42", "NUMBER", 42),
        "ratio": (b"0.5", "NUMBER", 0.5),
        "flag": (b"true", "BOOLEAN", True),
        "config": (b'{"a": [1, 2]}', "JSON", {"a": [1, 2]}),
        "when": (b"2024-05-01T10:00:00Z", "DATETIME", "2024-05-01T10:00:00Z"),
        "day": (b"2024-05-01", "DATE", "2024-05-01"),
        "every": (b"PT5M", "DURATION", "PT5M"),
    }
    for key, (body, _, _) in cases.items():
        put = await client.put(f"{base}/{key}", content=body, headers=JSON)
        assert put.status_code == 200, (key, put.text)
    for key, (_, kind, value) in cases.items():
        got = await client.get(f"{base}/{key}")
        assert got.status_code == 200 and got.json() == {"type": kind, "value": value}, key

    short = await client.put(
        f"{base}/short", content=b'"soon gone"', headers={**JSON, "ttl": "PT1S",
                                                          "description": "a test"},
    )  # fmt: skip
    assert short.status_code == 200, short.text
    listed = {e["key"]: e for e in (await client.get(base)).json()}
    assert set(listed) == {*cases, "short"}
    assert listed["short"]["description"] == "a test"
    assert listed["short"]["expirationDate"] and listed["count"]["expirationDate"] is None
    assert listed["count"]["creationDate"] <= listed["count"]["updateDate"]
    await trio.sleep(1.2)
    gone = await client.get(f"{base}/short")
    assert gone.status_code == 404 and "short" in gone.json()["message"]
    assert "short" not in {e["key"] for e in (await client.get(base)).json()}

    deleted = await client.delete(f"{base}/count")
    assert deleted.status_code == 200 and deleted.json() is True
    assert (await client.delete(f"{base}/count")).json() is False
    assert (await client.get(f"/api/v1/namespaces/{ns}/kv/count")).status_code == 404


async def test_kv_keys_set_by_the_api_are_read_by_flows_and_back(
    client: httpx.AsyncClient,
) -> None:
    ns = _ns()
    base = f"/api/v1/namespaces/{ns}/kv"
    assert (await client.put(f"{base}/limit", content=b"7", headers=JSON)).is_success
    flow = (
        f"id: kv\nnamespace: {ns}\ntasks:\n"
        "  - id: read\n    type: io.kestra.plugin.core.kv.Get\n    key: limit\n"
        "  - id: write\n    type: io.kestra.plugin.core.kv.Set\n    key: doubled\n"
        '    value: "{{ outputs.read.value * 2 }}"\n    kvType: NUMBER\n'
    )
    assert (await client.post("/api/v1/flows", content=flow, headers=YAML)).is_success
    ran = await client.post(f"/api/v1/executions/{ns}/kv?wait=true")
    assert ran.json()["state"]["current"] == "SUCCESS", ran.text
    assert (await client.get(f"{base}/doubled")).json() == {"type": "NUMBER", "value": 14}

    typed = (
        f"id: typed\nnamespace: {ns}\ntasks:\n"
        "  - id: when\n    type: io.kestra.plugin.core.kv.Set\n    key: when\n"
        "    value: 2024-05-01T10:00:00Z\n    kvType: DATETIME\n"
        "  - id: every\n    type: io.kestra.plugin.core.kv.Set\n    key: every\n"
        "    value: PT5M\n    kvType: DURATION\n"
    )
    assert (await client.post("/api/v1/flows", content=typed, headers=YAML)).is_success
    ran = await client.post(f"/api/v1/executions/{ns}/typed?wait=true")
    assert ran.json()["state"]["current"] == "SUCCESS", ran.text
    assert (await client.get(f"{base}/when")).json()["type"] == "DATETIME"
    assert (await client.get(f"{base}/every")).json() == {"type": "DURATION", "value": "PT5M"}


async def test_kv_bad_values_ttls_and_keys_get_a_clear_400(client: httpx.AsyncClient) -> None:
    ns = _ns()
    base = f"/api/v1/namespaces/{ns}/kv"
    for body, headers in (
        (b"not { json", JSON),
        (b"", JSON),
        (b'"x"', {**JSON, "ttl": "tomorrow"}),
        (b'"x"', {**JSON, "ttl": "PT0S"}),
        (b"\xff", JSON),
        (b'"' + b"x" * (2 * 1024 * 1024) + b'"', JSON),
    ):
        answer = await client.put(f"{base}/key", content=body, headers=headers)
        assert answer.status_code == 400, (body[:20], answer.text)
        assert answer.json()["message"]
    assert (await client.put(f"{base}/bad key!", content=b"1", headers=JSON)).status_code == 400
    assert (await client.get(f"{base}/missing")).status_code == 404
    assert (await client.get(base)).json() == []


async def test_kv_routes_keep_to_the_tokens_namespaces(client: httpx.AsyncClient) -> None:
    mine, other = _ns(), _ns()
    assert (await client.put(f"/api/v1/namespaces/{other}/kv/k", content=b"1",
                             headers=JSON)).is_success  # fmt: skip
    viewer = {"Authorization": f"Bearer {await _token(client, 'viewer', [mine])}"}
    async with httpx.AsyncClient(base_url=client.base_url, timeout=30, headers=viewer) as http:
        assert (await http.get(f"/api/v1/namespaces/{other}/kv/k")).status_code == 403
        assert (await http.get(f"/api/v1/namespaces/{mine}/kv")).status_code == 200
        refused = await http.put(f"/api/v1/namespaces/{mine}/kv/k", content=b"1", headers=JSON)
        assert refused.status_code == 403 and "editor" in refused.json()["message"]


# --- routes Tiercel does not serve ------------------------------------------------------------


async def test_kestra_routes_not_served_answer_404_naming_the_route(
    client: httpx.AsyncClient,
) -> None:
    ns = _ns()
    assert (await client.post("/api/v1/flows", content=_flow(ns, "quick"), headers=YAML)).is_success
    execution_id = (await client.post(f"/api/v1/executions/{ns}/quick?wait=true")).json()["id"]
    for method, path, named in (
        ("POST", f"/api/v1/executions/{execution_id}/replay-with-inputs",
         "POST /api/v1/executions/{executionId}/replay-with-inputs"),
        ("POST", f"/api/v1/main/executions/{execution_id}/force-run",
         "POST /api/v1/executions/{executionId}/force-run"),
        ("POST", "/api/v1/executions/pause/by-ids", "POST /api/v1/executions/pause/by-ids"),
        ("POST", "/api/v1/executions/unqueue/by-query",
         "POST /api/v1/executions/unqueue/by-query"),
        ("GET", "/api/v1/flows/distinct-namespaces", "GET /api/v1/flows/distinct-namespaces"),
        ("GET", "/api/v1/nothing/here", "GET /api/v1/nothing/here"),
        ("GET", "/api/v1/main/nothing", "GET /api/v1/main/nothing"),
    ):  # fmt: skip
        answer = await client.request(method, path, json=[] if method != "GET" else None)
        assert answer.status_code == 404, (method, path, answer.text)
        message = answer.json()["message"]
        assert f"No route {named}" in message, message
        assert "does not exist" not in message
    async with httpx.AsyncClient(base_url=client.base_url, timeout=30) as anonymous:
        hidden = await anonymous.post(f"/api/v1/executions/{execution_id}/restart")
        assert hidden.status_code == 401


async def test_hostile_paths_and_bodies_get_a_json_4xx_never_a_500(
    client: httpx.AsyncClient,
) -> None:
    ns = _ns()
    assert (await client.post("/api/v1/flows", content=_flow(ns, "f"), headers=YAML)).is_success
    requests: list[tuple[str, str, dict[str, Any]]] = []
    for odd in ("x" * 5000, "a%2Fb", "..", "%E2%82%AC", "a b", "\\g<0>", "%ff", "main"):
        requests += [
            ("GET", f"/api/v1/flows/{odd}", {}),
            ("PUT", f"/api/v1/flows/{odd}", {"content": _flow(odd, "x"), "headers": YAML}),
            ("POST", f"/api/v1/flows/{odd}?override=true",
             {"files": {"flows": ("a.yml", _flow("q", "x").encode())}}),
            ("GET", f"/api/v1/flows/{ns}/f/tasks/{odd}", {}),
            ("GET", f"/api/v1/namespaces/{odd}/kv", {}),
            ("GET", f"/api/v1/namespaces/{ns}/kv/{odd}", {}),
            ("PUT", f"/api/v1/namespaces/{odd}/kv/k", {"content": b"1", "headers": JSON}),
            ("GET", f"/api/v1/executions/{odd}/follow", {}),
            ("GET", f"/api/v1/{odd}/flows/search", {}),
        ]  # fmt: skip
    for body in (b"[" * 5000, b"\x00", b'"\\u0000"', b"1e999999", b"-", b"P", b"PT",
                 b"2024-13-45", b"2024-01-01T99:99", b"P99999999999D", b"{" * 2000):  # fmt: skip
        requests += [
            ("PUT", f"/api/v1/namespaces/{ns}/kv/k", {"content": body, "headers": JSON}),
            ("DELETE", "/api/v1/executions/by-ids", {"content": body, "headers": JSON}),
            ("PUT", f"/api/v1/flows/{ns}", {"content": body, "headers": YAML}),
            ("POST", "/api/v1/flows/import", {"files": {"fileUpload": ("a.yml", body)}}),
            ("POST", "/api/v1/flows/import", {"files": {"fileUpload": ("a.zip", body)}}),
        ]
        if b"\x00" not in body:
            requests.append(
                ("PUT", f"/api/v1/namespaces/{ns}/kv/k",
                 {"content": b"1", "headers": {**JSON, "ttl": body.decode()}})
            )  # fmt: skip
    requests += [
        ("DELETE", "/api/v1/executions/by-ids", {"json": ["x"] * 1001}),
        ("DELETE", "/api/v1/executions/by-ids", {"json": ["x" * 300]}),
        ("DELETE", f"/api/v1/namespaces/{ns}/kv", {"json": {"keys": [1]}}),
        ("DELETE", f"/api/v1/namespaces/{ns}/kv", {"json": {"keys": ["bad key!"]}}),
        ("POST", f"/api/v1/executions/{ns}/f?wait=true&timeout=999999999999", {}),
        ("POST", f"/api/v1/executions/{ns}/f?wait=maybe", {}),
    ]
    wrong = []
    for method, path, options in requests:
        answer = await client.request(method, path, **options)
        if answer.status_code >= 500 or (
            answer.status_code >= 400 and not answer.json().get("message")
        ):
            wrong.append((method, path[:80], answer.status_code, answer.text[:200]))
    assert not wrong
