"""The hostile requests that once crashed, froze or fooled the server are answered with a clear
4xx, store nothing, and leave /health answering."""

from __future__ import annotations

import logging
import time
import types
import uuid
from typing import Any

import httpx
import pytest
import trio

from api import bodies
from engine import commands
from engine import events as ev
from engine.errors import TiercelError
from engine.store import NO_STREAM, EventStore
from tests.conftest import admin_client, deploy, start_server

YAML = {"Content-Type": "application/x-yaml"}
JSON = {"Content-Type": "application/json"}


def _flow(namespace: str, flow_id: str = "f", extra: str = "") -> str:
    return (
        f"id: {flow_id}\nnamespace: {namespace}\ntasks:\n  - id: t\n"
        "    type: io.kestra.plugin.core.log.Log\n    message: hi\n" + extra
    )


def _ns() -> str:
    return f"test.hostile.n{uuid.uuid4().hex[:8]}"


def _bomb(levels: int = 9) -> str:
    names = "abcdefghij"
    lines = [f"{names[0]}: &{names[0]} [" + ",".join(["lol"] * 10) + "]"]
    for i in range(1, levels):
        lines.append(f"{names[i]}: &{names[i]} [" + ",".join([f"*{names[i - 1]}"] * 10) + "]")
    return "\n".join(lines) + "\n"


async def _stored(client: httpx.AsyncClient, namespace: str, flow_id: str = "f") -> bool:
    response = await client.get(f"/api/v1/flows/{namespace}/{flow_id}")
    assert response.status_code in (200, 404), response.text
    return response.status_code == 200


async def test_a_yaml_bomb_is_refused_with_its_line_and_the_server_stays_small(
    client: httpx.AsyncClient,
) -> None:
    bomb = _bomb()
    assert len(bomb) < 700  # ten billion values once expanded
    response = await client.post("/api/v1/flows/validate", content=bomb, headers=YAML)
    assert response.status_code == 200
    [entry] = response.json()
    [problem] = entry["details"]
    assert "aliases expand the document to more than 200000 values" in problem["message"]
    assert problem["line"] == 6
    refused = await client.post("/api/v1/flows", content=_flow(_ns()) + bomb, headers=YAML)
    assert refused.status_code == 422


@pytest.mark.parametrize("chunked", [False, True])
async def test_a_body_over_the_limit_is_refused_with_413_naming_the_setting(
    client: httpx.AsyncClient, chunked: bool
) -> None:
    body = b"a: " + b"x" * (bodies.DEFAULT_MAX_BODY_BYTES + 10) + b"\n"

    async def pieces() -> Any:
        for start in range(0, len(body), 1 << 20):
            yield body[start : start + (1 << 20)]

    response = await client.post(
        "/api/v1/flows/validate", content=pieces() if chunked else body, headers=YAML
    )
    assert response.status_code == 413
    message = response.json()["message"]
    assert "10 MiB (10485760 bytes)" in message and "TIERCEL_MAX_BODY_BYTES" in message
    assert (await client.get("/health/liveness")).status_code == 200


async def test_a_large_valid_flow_does_not_freeze_health(client: httpx.AsyncClient) -> None:
    tasks = "".join(
        f"  - id: t{i}\n    type: io.kestra.plugin.core.log.Log\n    message: hello {i}\n"
        for i in range(20_000)
    )
    source = f"id: big\nnamespace: {_ns()}\ntasks:\n{tasks}"
    health: list[float] = []
    done = trio.Event()

    async def validate() -> None:
        response = await client.post("/api/v1/flows/validate", content=source, headers=YAML)
        assert response.status_code == 200 and response.json()[0]["flow"] == "big"
        done.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(validate)
        while not done.is_set():
            started = time.perf_counter()
            assert (await client.get("/health/liveness")).status_code == 200
            health.append(time.perf_counter() - started)
            await trio.sleep(0.05)
    assert len(health) >= 3, "the flow parsed too fast to show anything"
    assert max(health) < 2.0, health  # it took seconds to parse, on the event loop


async def test_a_body_that_is_not_utf8_is_refused_naming_the_byte(
    client: httpx.AsyncClient,
) -> None:
    namespace = _ns()
    source = (_flow(namespace) + "description: caf\xe9\n").encode("latin-1")
    response = await client.post("/api/v1/flows", content=source, headers=YAML)
    assert response.status_code == 400
    message = response.json()["message"]
    assert "not UTF-8" in message and "0xe9" in message and "line 7" in message
    assert not await _stored(client, namespace)


@pytest.mark.parametrize(
    "extra, expected",
    [
        ("inputs:\n  - id: i\n    type: {a: 1}\n", "Unknown input type a mapping"),
        (
            "  - id: s\n    type: io.kestra.plugin.core.flow.Switch\n    value: x\n    cases: 5\n",
            "Must be a mapping of names to task lists",
        ),
        ("variables:\n  v: " + "[" * 900 + "]" * 900 + "\n", "nested more than 100 levels"),
        ("variables:\n  big: 123456789012345678901234567890\n", "outside 64 bits"),
        ('variables:\n  nul: "a\\0b"\n', "NUL character"),
        ("triggers:\n  - id: has.dot\n    type: x\n", "Trigger id"),
    ],
)
async def test_odd_flows_are_refused_with_422_and_nothing_is_stored(
    client: httpx.AsyncClient, extra: str, expected: str
) -> None:
    namespace = _ns()
    response = await client.post(
        "/api/v1/flows", content=_flow(namespace, extra=extra), headers=YAML
    )
    assert response.status_code == 422, response.text
    details = response.json()["details"]
    assert any(expected in d["message"] and d.get("line") for d in details), details
    assert not await _stored(client, namespace)
    listed = (await client.get("/api/v1/flows/search", params={"namespace": namespace})).json()
    assert listed["results"] == [] and listed["total"] == 0


async def test_a_switch_case_named_by_a_number_is_stored_as_text_and_listed(
    client: httpx.AsyncClient,
) -> None:
    namespace = _ns()
    source = _flow(
        namespace,
        extra="  - id: s\n    type: io.kestra.plugin.core.flow.Switch\n    value: '1'\n"
        "    cases:\n      1:\n        - id: c\n          type: io.kestra.plugin.core.log.Log\n"
        "          message: one\n",
    )
    deployed = await deploy(client, source)
    assert list(deployed["tasks"][1]["cases"]) == ["1"]
    with trio.fail_after(10):
        while True:
            listed = await client.get("/api/v1/flows/search", params={"namespace": namespace})
            assert listed.status_code == 200
            if listed.json()["total"] == 1:
                break
            await trio.sleep(0.1)


async def test_a_flow_recorded_under_older_rules_is_listed_with_its_exception(
    client: httpx.AsyncClient, store: EventStore
) -> None:
    namespace = _ns()
    old = _flow(namespace, "old", "variables:\n  big: 123456789012345678901234567890\n")
    await store.append(
        ev.flow_stream(namespace, "old"),
        [ev.FlowCreated(namespace=namespace, flowId="old", revision=1, source=old)],
        expected_version=NO_STREAM,
    )
    with trio.fail_after(10):
        while True:
            listed = await client.get("/api/v1/flows/search", params={"namespace": namespace})
            assert listed.status_code == 200, listed.text
            if listed.json()["total"] == 1:
                break
            await trio.sleep(0.1)
    [flow] = listed.json()["results"]
    assert flow["id"] == "old" and "outside 64 bits" in flow["exception"]
    one = await client.get(f"/api/v1/flows/{namespace}/old")
    assert one.status_code == 200 and "exception" in one.json()


async def test_ids_over_kestra_lengths_are_refused_and_a_long_file_name_is_cut(
    client: httpx.AsyncClient,
) -> None:
    namespace = _ns()
    too_long = await client.post("/api/v1/flows", content=_flow(namespace, "x" * 300), headers=YAML)
    assert too_long.status_code == 422
    assert "at most 100 are allowed" in too_long.json()["details"][0]["message"]
    flow_id = "f" * 100
    source = _flow(namespace, flow_id, "inputs:\n  - id: file\n    type: FILE\n")
    await deploy(client, source)
    name = "n" * 300 + ".txt"
    response = await client.post(
        f"/api/v1/executions/{namespace}/{flow_id}", files={"file": (name, b"hello")}
    )
    assert response.status_code == 200, response.text
    uri = response.json()["inputs"]["file"]
    assert uri.endswith(".txt") and len(uri.rsplit("/", 1)[-1].encode()) <= 200


async def test_a_file_name_no_file_system_holds_is_not_found(client: httpx.AsyncClient) -> None:
    namespace = _ns()
    await deploy(client, _flow(namespace))
    created = await client.post(f"/api/v1/executions/{namespace}/f", json={})
    execution = created.json()["id"]
    path = f"kestra:///{namespace.replace('.', '/')}/f/executions/{execution}/{'x' * 300}"
    for suffix in ("", "/metas"):
        response = await client.get(
            f"/api/v1/executions/{execution}/file{suffix}", params={"path": path}
        )
        assert response.status_code == 404, response.text


async def test_a_nul_character_in_the_url_is_a_400(client: httpx.AsyncClient) -> None:
    for path in ("/api/v1/flows/search?q=%00", "/api/v1/executions/a%00b", "/api/v1/flows/a%00/b"):
        response = await client.get(path)
        assert response.status_code == 400, (path, response.text)
        assert "NUL" in response.json()["message"]


async def test_execution_inputs_that_cannot_be_stored_are_refused(
    client: httpx.AsyncClient,
) -> None:
    namespace = _ns()
    source = _flow(
        namespace,
        extra="inputs:\n  - {id: j, type: JSON, required: false}\n"
        "  - {id: i, type: INT, required: false}\n  - {id: s, type: STRING, required: false}\n",
    )
    await deploy(client, source)
    url = f"/api/v1/executions/{namespace}/f"
    cases = [
        (b'{"j": ' + b"[" * 200 + b"]" * 200 + b"}", "nested more than 100 levels"),
        (b'{"j": "' + b"[" * 5000 + b'"}', "nested more than 100 levels"),
        (b'{"i": "123456789012345678901234567890"}', "beyond 64 bits"),
        (b'{"s": "a\\u0000b"}', "NUL character"),
        (b"\xff", "not valid JSON"),
    ]
    for body, expected in cases:
        response = await client.post(url, content=body, headers=JSON)
        assert response.status_code in (400, 422), response.text
        assert expected in response.text, response.text
    search = await client.get("/api/v1/executions/search", params={"namespace": namespace})
    assert search.json()["total"] == 0


async def test_an_unexpected_error_shows_an_id_and_neither_trace_nor_path(
    client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    async def broken(*args: Any, **kwargs: Any) -> Any:
        raise OSError(2, "No such file or directory", "/srv/secret/storage/file")

    monkeypatch.setattr(commands, "flow_revisions", broken)
    with caplog.at_level(logging.ERROR, logger="api.app"):
        response = await client.get("/api/v1/flows/some.namespace/some-flow")
    assert response.status_code == 500
    message = response.json()["message"]
    assert "/srv/secret" not in response.text and "Traceback" not in response.text
    error_id = message.split()[2].rstrip(":")
    assert any(error_id in r.getMessage() and r.exc_info for r in caplog.records)


def test_body_limits_come_from_the_environment_or_the_configuration(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ctx: Any = types.SimpleNamespace(extra={"max_upload_bytes": "5MiB"})
    monkeypatch.setenv("TIERCEL_MAX_BODY_BYTES", "2000000")
    assert bodies.body_limits(ctx) == bodies.BodyLimits(body=2_000_000, upload=5 * 1024 * 1024)
    monkeypatch.setenv("TIERCEL_MAX_BODY_BYTES", "lots")
    with pytest.raises(TiercelError, match="TIERCEL_MAX_BODY_BYTES"):
        bodies.body_limits(ctx)


async def test_uploads_have_their_own_limit(
    database_url: str, nursery: trio.Nursery, tmp_path: Any
) -> None:
    # A server of its own: the limits are its configuration.
    ctx = await start_server(
        database_url,
        nursery,
        tmp_path,
        extra={"max_body_bytes": 100_000, "max_upload_bytes": 300_000},
    )
    namespace = _ns()
    async with admin_client(ctx) as http:
        await deploy(http, _flow(namespace, extra="inputs:\n  - id: file\n    type: FILE\n"))
        url = f"/api/v1/executions/{namespace}/f"
        fits = await http.post(url, files={"file": ("a.bin", b"x" * 200_000)})
        assert fits.status_code == 200, fits.text
        over = await http.post(url, files={"file": ("a.bin", b"x" * 400_000)})
        assert over.status_code == 413
        assert "TIERCEL_MAX_UPLOAD_BYTES" in over.json()["message"]
        json_over = await http.post(url, content=b'{"a": "' + b"x" * 200_000 + b'"}', headers=JSON)
        assert json_over.status_code == 413
        assert "TIERCEL_MAX_BODY_BYTES" in json_over.json()["message"]
        yaml_over = await http.post("/api/v1/flows", files={"f": ("f.yaml", b"x" * 200_000)})
        assert yaml_over.status_code in (413, 415)


async def test_a_large_number_in_a_json_input_is_answered_wherever_it_shows(
    client: httpx.AsyncClient,
) -> None:
    # 1e30 is stored by jsonb as an exact 31-digit integer, which is valid JSON but past what
    # orjson writes: every answer showing it (the execution, the search, the follow stream)
    # must still be written.
    namespace = _ns()
    source = _flow(namespace, extra="inputs:\n  - {id: j, type: JSON}\n")
    await deploy(client, source)
    created = await client.post(
        f"/api/v1/executions/{namespace}/f?wait=true", content=b'{"j": {"v": 1e30}}', headers=JSON
    )
    assert created.status_code == 200, created.text
    assert created.json()["inputs"]["j"]["v"] == 10**30
    xid = created.json()["id"]
    with trio.fail_after(10):
        while True:
            search = await client.get("/api/v1/executions/search", params={"namespace": namespace})
            assert search.status_code == 200, search.text
            if search.json()["total"] == 1 and search.json()["results"][0]["state"]["current"] in (
                "SUCCESS",
            ):
                break
            await trio.sleep(0.1)
    assert search.json()["results"][0]["inputs"]["j"]["v"] == 10**30
    followed = await client.get(f"/api/v1/executions/{xid}/follow")
    assert followed.status_code == 200 and "1000000000000000000000000000000" in followed.text
