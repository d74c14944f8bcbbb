"""Webhook triggers over real HTTP: a call with the flow's key starts it with the request under
`{{ trigger.* }}`; any other call starts nothing; no credentials are needed, for this route only."""

from __future__ import annotations

import base64
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import trio

from api.webhooks import METHODS
from engine import commands
from tests.conftest import deploy

YAML = {"Content-Type": "application/x-yaml"}
KEY = "a-long-random-key-4wjtkzwVGBM9yKnjm3yv8r"


def _ns() -> str:
    return f"test.webhook.n{uuid.uuid4().hex[:8]}"


def _flow(ns: str, flow_id: str, tasks: str, trigger: str = "", extra: str = "") -> str:
    return (
        f"id: {flow_id}\nnamespace: {ns}\n{extra}tasks:\n{tasks}"
        "triggers:\n  - id: hook\n    type: io.kestra.plugin.core.trigger.Webhook\n"
        f"    key: {KEY}\n{trigger}"
    )


def _return(expression: str, task_id: str = "r") -> str:
    return (
        f"  - id: {task_id}\n    type: io.kestra.plugin.core.debug.Return\n"
        f'    format: "{expression}"\n'
    )


async def _ended(client: httpx.AsyncClient, execution_id: str) -> dict[str, Any]:
    with trio.fail_after(30):
        while True:
            body: dict[str, Any] = (await client.get(f"/api/v1/executions/{execution_id}")).json()
            if body["state"]["current"] in ("SUCCESS", "FAILED", "WARNING", "KILLED"):
                return body
            await trio.sleep(0.05)


def _value(execution: dict[str, Any], task_id: str = "r") -> Any:
    [run] = [r for r in execution["taskRunList"] if r["taskId"] == task_id]
    return run["outputs"]["value"]


async def _executions_created(server: Any, ns: str | None = None) -> int:
    if ns is None:
        row = await server.db.fetchone(
            "SELECT count(*) AS n FROM events WHERE type = 'ExecutionCreated'"
        )
    else:
        row = await server.db.fetchone(
            "SELECT count(*) AS n FROM events WHERE type = 'ExecutionCreated'"
            " AND data->>'namespace' = %s",
            (ns,),
        )
    return int(row["n"])


@pytest.fixture
async def anonymous(client: httpx.AsyncClient) -> AsyncIterator[httpx.AsyncClient]:
    """A caller with no credentials at all, as a server sending a webhook is."""
    async with httpx.AsyncClient(base_url=client.base_url, timeout=60) as http:
        yield http


async def test_post_with_a_json_body_starts_the_flow_whose_tasks_see_trigger_body(
    server: Any, client: httpx.AsyncClient, anonymous: httpx.AsyncClient
) -> None:
    ns = _ns()
    await deploy(client, _flow(ns, "hooked", _return("{{ trigger.body.x }}")))
    answer = await anonymous.post(
        f"/api/v1/executions/webhook/{ns}/hooked/{KEY}",
        json={"x": "hello", "n": [1, 2]},
        headers={
            "X-Delivery": "d-1",
            "Authorization": "Bearer caller-secret-token",
            "Cookie": "session=caller-secret-cookie",
        },
    )
    assert answer.status_code == 200, answer.text
    created = answer.json()
    assert created["namespace"] == ns and created["flowId"] == "hooked"
    assert created["trigger"]["id"] == "hook"
    assert created["trigger"]["type"] == "io.kestra.plugin.core.trigger.Webhook"
    variables = created["trigger"]["variables"]
    assert variables["body"] == {"x": "hello", "n": [1, 2]}
    assert variables["headers"]["x-delivery"] == ["d-1"]
    assert "authorization" not in variables["headers"] and "cookie" not in variables["headers"]
    assert variables["parameters"] == {}

    execution = await _ended(client, created["id"])
    assert execution["state"]["current"] == "SUCCESS"
    assert _value(execution) == "hello"
    events = (await client.get(f"/api/v1/executions/{created['id']}/events")).json()
    assert events[0]["type"] == "ExecutionCreated"
    assert events[0]["actor"] == "webhook:hook"
    # The caller's credentials are nowhere in what was recorded.
    row = await server.db.fetchone(
        "SELECT count(*) AS n FROM events WHERE data::text LIKE %s OR data::text LIKE %s",
        ("%caller-secret-token%", "%caller-secret-cookie%"),
    )
    assert row["n"] == 0


async def test_get_and_put_pass_query_parameters_and_a_text_body(
    client: httpx.AsyncClient, anonymous: httpx.AsyncClient
) -> None:
    ns = _ns()
    tasks = _return("{{ trigger.parameters.b[0] }}-{{ trigger.parameters.a | length }}")
    await deploy(client, _flow(ns, "params", tasks))
    got = await anonymous.get(
        f"/api/v1/executions/webhook/{ns}/params/{KEY}", params=[("a", "1"), ("a", "2"), ("b", "x")]
    )
    assert got.status_code == 200, got.text
    variables = got.json()["trigger"]["variables"]
    assert variables["parameters"] == {"a": ["1", "2"], "b": ["x"]}
    assert variables["body"] is None
    assert _value(await _ended(client, got.json()["id"])) == "x-2"

    put = await anonymous.put(
        f"/api/v1/executions/webhook/{ns}/params/{KEY}?b=y&a=1",
        content=b"{not json, kept as text",
        headers={"Content-Type": "text/plain"},
    )
    assert put.status_code == 200, put.text
    assert put.json()["trigger"]["variables"]["body"] == "{not json, kept as text"
    binary = await anonymous.post(
        f"/api/v1/executions/webhook/{ns}/params/{KEY}?b=z&a=1",
        content=b"\xff\xfe\x00bytes",
        headers={"Content-Type": "application/octet-stream"},
    )
    assert binary.status_code == 200, binary.text
    body = binary.json()["trigger"]["variables"]["body"]
    assert base64.b64decode(body) == b"\xff\xfe\x00bytes"


async def test_a_wrong_key_or_a_disabled_webhook_answers_404_and_starts_nothing(
    server: Any, client: httpx.AsyncClient, anonymous: httpx.AsyncClient
) -> None:
    ns = _ns()
    await deploy(client, _flow(ns, "keyed", _return("hi")))
    await deploy(client, _flow(ns, "offhook", _return("hi"), "    disabled: true\n"))
    await deploy(client, _flow(ns, "offflow", _return("hi"), extra="disabled: true\n"))
    await deploy(client, _flow(ns, "toggled", _return("hi")))
    await deploy(
        client,
        f"id: plain\nnamespace: {ns}\ntasks:\n{_return('hi')}",
    )
    await commands.toggle_trigger(server.store, ns, "toggled", "hook", False)
    before = await _executions_created(server)
    base = f"/api/v1/executions/webhook/{ns}"
    refused = [
        await anonymous.post(f"{base}/keyed/wrong-key", json={}),
        await anonymous.post(f"{base}/keyed/{KEY[:-1]}", json={}),
        await anonymous.get(f"{base}/keyed/{KEY}x"),
        await anonymous.post(f"{base}/nosuchflow/{KEY}", json={}),
        await anonymous.post(f"/api/v1/executions/webhook/no.such.ns/keyed/{KEY}", json={}),
        await anonymous.post(f"{base}/plain/{KEY}", json={}),
        await anonymous.post(f"{base}/offhook/{KEY}", json={}),
        await anonymous.post(f"{base}/offflow/{KEY}", json={}),
        await anonymous.put(f"{base}/toggled/{KEY}", json={}),
    ]
    assert [r.status_code for r in refused] == [404] * len(refused)
    # One answer for every case: a caller without the key learns nothing about the flows.
    assert len({r.json()["message"] for r in refused}) == 1
    assert "key" in refused[0].json()["message"]
    assert await _executions_created(server) == before

    await commands.toggle_trigger(server.store, ns, "toggled", "hook", True)
    assert (await anonymous.put(f"{base}/toggled/{KEY}", json={})).status_code == 200
    assert (await anonymous.post(f"{base}/keyed/{KEY}", json={})).status_code == 200
    assert await _executions_created(server) == before + 2


async def test_wait_answers_once_ended_with_the_execution_or_the_flow_outputs(
    client: httpx.AsyncClient, anonymous: httpx.AsyncClient
) -> None:
    ns = _ns()
    outputs = 'outputs:\n  - id: greeting\n    type: STRING\n    value: "{{ outputs.r.value }}"\n'
    tasks = _return("hi {{ trigger.body.name }}")
    await deploy(
        client,
        _flow(ns, "outs", tasks, "    wait: true\n    returnOutputs: true\n", extra=outputs),
    )
    await deploy(client, _flow(ns, "whole", tasks, "    wait: true\n", extra=outputs))
    failing = "  - id: boom\n    type: io.kestra.plugin.core.execution.Fail\n"
    await deploy(client, _flow(ns, "fails", failing, "    wait: true\n"))
    await deploy(
        client,
        _flow(
            ns,
            "plain",
            tasks,
            "    wait: true\n    returnOutputs: true\n    responseContentType: text/plain\n"
            "    responseCode: 202\n",
            extra=outputs,
        ),
    )
    base = f"/api/v1/executions/webhook/{ns}"

    only = await anonymous.post(f"{base}/outs/{KEY}", json={"name": "Ada"})
    assert only.status_code == 200, only.text
    assert only.json() == {"greeting": "hi Ada"}
    assert only.headers["X-Tiercel-Execution-Ended"] == "true"

    whole = await anonymous.post(f"{base}/whole/{KEY}", json={"name": "Bob"})
    assert whole.status_code == 200, whole.text
    assert whole.json()["state"]["current"] == "SUCCESS"
    assert whole.json()["outputs"] == {"greeting": "hi Bob"}
    assert whole.json()["trigger"]["variables"]["body"] == {"name": "Bob"}

    failed = await anonymous.post(f"{base}/fails/{KEY}")
    assert failed.status_code == 500
    assert failed.json()["state"]["current"] == "FAILED"

    text = await anonymous.post(f"{base}/plain/{KEY}", json={"name": "Cy"})
    assert text.status_code == 202
    assert text.headers["content-type"].startswith("text/plain")
    assert text.text == "hi Cy"


async def test_a_body_over_the_webhook_limit_is_refused_with_413_naming_the_limit(
    server: Any, client: httpx.AsyncClient, anonymous: httpx.AsyncClient
) -> None:
    ns = _ns()
    await deploy(client, _flow(ns, "big", _return("hi")))
    before = await _executions_created(server, ns)
    url = f"/api/v1/executions/webhook/{ns}/big/{KEY}"
    over = b"x" * (1024 * 1024 + 1)
    announced = await anonymous.post(url, content=over, headers={"Content-Type": "text/plain"})
    assert announced.status_code == 413
    message = announced.json()["message"]
    assert "1 MiB (1048576 bytes)" in message and "TIERCEL_MAX_WEBHOOK_BYTES" in message

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(17):
            yield b"y" * 65536

    streamed = await anonymous.post(url, content=chunks(), headers={"Content-Type": "text/plain"})
    assert streamed.status_code == 413
    assert "TIERCEL_MAX_WEBHOOK_BYTES" in streamed.json()["message"]
    assert await _executions_created(server, ns) == before
    at_limit = await anonymous.post(
        url, content=b"z" * (1024 * 1024), headers={"Content-Type": "text/plain"}
    )
    assert at_limit.status_code == 200, at_limit.text


async def test_webhooks_need_no_credentials_but_open_no_other_route(
    client: httpx.AsyncClient, anonymous: httpx.AsyncClient
) -> None:
    ns = _ns()
    await deploy(client, _flow(ns, "open", _return("hi")))
    # A server calling a webhook sends no Origin; a page posting cross-site may start the flow
    # too (as Kestra lets it): it can only do what the key allows.
    for headers in ({}, {"Origin": "https://elsewhere.example", "Sec-Fetch-Site": "cross-site"}):
        answer = await anonymous.post(
            f"/api/v1/executions/webhook/{ns}/open/{KEY}",
            content=b"ping",
            headers={"Content-Type": "text/plain", **headers},
        )
        assert answer.status_code == 200, answer.text
    execution_id = answer.json()["id"]
    assert (await anonymous.get(f"/api/v1/executions/{execution_id}")).status_code == 401
    assert (await anonymous.post(f"/api/v1/executions/{ns}/open", json={})).status_code == 401
    assert (await anonymous.get(f"/api/v1/flows/{ns}/open")).status_code == 401
    assert (await anonymous.get(f"/api/v1/executions/webhook/{ns}")).status_code in (401, 404)
    cross_site = await client.post(
        f"/api/v1/executions/{ns}/open",
        content=b"a=b",
        headers={"Content-Type": "text/plain", "Origin": "https://elsewhere.example"},
    )
    assert cross_site.status_code in (403, 415)
    # HEAD (link checkers, proxies) starts nothing.
    assert (await anonymous.head(f"/api/v1/executions/webhook/{ns}/open/{KEY}")).status_code == 405


async def test_conditions_decide_and_an_unmet_one_answers_204(
    server: Any, client: httpx.AsyncClient, anonymous: httpx.AsyncClient
) -> None:
    ns = _ns()
    trigger = (
        "    conditions:\n      - type: io.kestra.plugin.core.condition.ExpressionCondition\n"
        "        expression: \"{{ trigger.body.hello == 'world' }}\"\n"
    )
    await deploy(client, _flow(ns, "cond", _return("{{ trigger.body.hello }}"), trigger))
    url = f"/api/v1/executions/webhook/{ns}/cond/{KEY}"
    assert (await anonymous.post(url, json={"hello": "moon"})).status_code == 204
    assert (await anonymous.post(url, content=b"not json")).status_code == 204
    assert await _executions_created(server, ns) == 0
    met = await anonymous.post(url, json={"hello": "world"})
    assert met.status_code == 200, met.text
    assert _value(await _ended(client, met.json()["id"])) == "world"
    assert await _executions_created(server, ns) == 1


async def test_rendered_keys_inputs_and_labels_of_the_webhook(
    client: httpx.AsyncClient, anonymous: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    ns = _ns()
    monkeypatch.setenv("SECRET_WEBHOOK_KEY", base64.b64encode(b"from-a-secret-0123456789").decode())
    dynamic = (
        f"id: dynamic\nnamespace: {ns}\ninputs:\n  - id: who\n    type: STRING\n"
        f"tasks:\n{_return('{{ inputs.who }}')}"
        "triggers:\n  - id: by_flow\n    type: io.kestra.plugin.core.trigger.Webhook\n"
        '    key: "{{ flow.id }}-0123456789abcdef"\n'
        '    inputs:\n      who: "{{ trigger.body.user }}"\n'
        "    labels:\n      source: github\n"
        "  - id: by_secret\n    type: io.kestra.core.models.triggers.types.Webhook\n"
        "    key: \"{{ secret('WEBHOOK_KEY') }}\"\n"
        '    inputs:\n      who: "{{ trigger.parameters.user[0] }}"\n'
    )
    await deploy(client, dynamic)
    base = f"/api/v1/executions/webhook/{ns}/dynamic"
    by_flow = await anonymous.post(f"{base}/dynamic-0123456789abcdef", json={"user": "ada"})
    assert by_flow.status_code == 200, by_flow.text
    assert by_flow.json()["trigger"]["id"] == "by_flow"
    assert {"key": "source", "value": "github"} in by_flow.json()["labels"]
    assert _value(await _ended(client, by_flow.json()["id"])) == "ada"
    by_secret = await anonymous.get(f"{base}/from-a-secret-0123456789?user=bob")
    assert by_secret.status_code == 200, by_secret.text
    assert by_secret.json()["trigger"]["id"] == "by_secret"
    assert _value(await _ended(client, by_secret.json()["id"])) == "bob"
    # The secret's value is the key, not a template to send.
    raw = "%7B%7B%20secret('WEBHOOK_KEY')%20%7D%7D"
    assert (await anonymous.get(f"{base}/{raw}?user=x")).status_code == 404
    # The Kestra tenant path reaches the same webhook.
    tenant = await anonymous.get(
        f"/api/v1/main/executions/webhook/{ns}/dynamic/from-a-secret-0123456789?user=cy"
    )
    assert tenant.status_code == 200, tenant.text


async def test_a_webhook_without_a_usable_key_is_refused_at_its_line(
    client: httpx.AsyncClient,
) -> None:
    ns = _ns()
    cases = {
        "": ("Property `key` is required", 8),
        f"    key: {'k' * 257}\n": ("at most 256", 10),
        "    key: a/b\n": ("'/'", 10),
        f"    key: {KEY}\n    responseContentType: text/html\n": ("responseContentType", 11),
        f"    key: {KEY}\n    wiat: true\n": ("Unknown property `wiat`", 11),
    }
    for trigger, (expected, line) in cases.items():
        source = (
            f"id: bad\nnamespace: {ns}\ntasks:\n{_return('hi')}"
            "triggers:\n  - id: hook\n    type: io.kestra.plugin.core.trigger.Webhook\n" + trigger
        )
        answer = await client.post("/api/v1/flows", content=source, headers=YAML)
        assert answer.status_code == 422, (trigger, answer.text)
        [problem] = answer.json()["details"]
        assert expected in problem["message"], (trigger, problem)
        assert problem["line"] == line, (trigger, problem)


@pytest.fixture
def small_webhook_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TIERCEL_MAX_WEBHOOK_BYTES", "1KiB")


async def test_the_webhook_limit_is_a_server_setting(
    small_webhook_limit: None, client: httpx.AsyncClient, anonymous: httpx.AsyncClient
) -> None:
    ns = _ns()
    await deploy(client, _flow(ns, "small", _return("hi")))
    url = f"/api/v1/executions/webhook/{ns}/small/{KEY}"
    assert (await anonymous.post(url, json={"pad": "p" * 900})).status_code == 200
    refused = await anonymous.post(url, json={"pad": "p" * 1100})
    assert refused.status_code == 413
    assert "1 KiB (1024 bytes)" in refused.json()["message"]
    # Other bodies keep their own limit.
    assert (
        await client.post(
            "/api/v1/flows/validate", content=_flow(ns, "x" * 2000, _return("hi")), headers=YAML
        )
    ).status_code == 200


async def test_hostile_webhook_requests_are_answered_without_a_server_error(
    server: Any, client: httpx.AsyncClient
) -> None:
    """Odd bodies, content types, keys, query parameters and headers reach a webhook whose
    condition, inputs and tasks read them: every answer is a 2xx or a 4xx, and each 200 is an
    execution recorded with the request."""
    import json
    import urllib.parse

    from hypothesis import given, settings
    from hypothesis import strategies as st

    from tests.fuzz.strategies import hostile_strings, json_values

    ns = _ns()
    trigger = (
        "    conditions:\n      - type: io.kestra.plugin.core.condition.Expression\n"
        '        expression: "{{ trigger.parameters.skip is not defined }}"\n'
        '    inputs:\n      raw: "{{ trigger.body }}"\n'
    )
    extra = "inputs:\n  - id: raw\n    type: STRING\n    required: false\n"
    tasks = _return("{{ trigger.body | json }} {{ trigger.headers | json }} {{ inputs.raw }}")
    await deploy(client, _flow(ns, "hostile", tasks, trigger, extra=extra))
    answers: dict[int, int] = {}
    started: list[str] = []
    bodies = st.one_of(
        st.binary(max_size=300),
        json_values.map(lambda v: json.dumps(v).encode()),
        st.sampled_from([b"[" * 5000, b'{"a": ' + b"[" * 150 + b"]" * 150 + b"}", b'"\\u0000"',
                         b'{"a\\u0000": 1}', b"{\"n\": 123456789012345678901234567890}"]),
    )  # fmt: skip
    keys = st.one_of(st.just(KEY), hostile_strings.filter(lambda s: "\x00" not in s))
    params = st.lists(st.tuples(hostile_strings, hostile_strings), max_size=3)
    header_values = st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=200)
    content_types = st.sampled_from(
        ["application/json", "text/plain", "application/x-www-form-urlencoded",
         "multipart/form-data; boundary=x", "application/octet-stream", "", "text/plain; charset=latin-1"]
    )  # fmt: skip

    with httpx.Client(base_url=str(client.base_url), timeout=30) as http:

        @settings(max_examples=80, deadline=None, database=None)
        @given(st.sampled_from(METHODS), keys, bodies, params, content_types, header_values)
        def case(
            method: str,
            key: str,
            body: bytes,
            query: list[tuple[str, str]],
            content_type: str,
            header: str,
        ) -> None:
            segment = urllib.parse.quote(key.encode("utf-8", "surrogatepass"), safe="")
            headers = {"X-Odd": header.strip()}
            if content_type:
                headers["Content-Type"] = content_type
            answer = http.request(
                method,
                f"/api/v1/executions/webhook/{ns}/hostile/{segment}",
                params=[(k.encode("utf-8", "surrogatepass"), v.encode("utf-8", "surrogatepass"))
                        for k, v in query],
                content=body if method != "GET" else None,
                headers=headers,
            )  # fmt: skip
            answers[answer.status_code] = answers.get(answer.status_code, 0) + 1
            assert answer.status_code < 500, answer.text
            if answer.status_code == 200:
                started.append(answer.json()["id"])

        await trio.to_thread.run_sync(case)
    assert answers.get(200), answers
    assert await _executions_created(server, ns) == len(started)
    for execution_id in started[:5]:
        assert (await _ended(client, execution_id))["state"]["current"] in ("SUCCESS", "FAILED")


async def test_a_retried_delivery_with_the_same_idempotency_key_starts_one_execution(
    server: Any, client: httpx.AsyncClient, anonymous: httpx.AsyncClient
) -> None:
    ns = _ns()
    await deploy(client, _flow(ns, "retried", _return("{{ trigger.body.n }}")))
    url = f"/api/v1/executions/webhook/{ns}/retried/{KEY}"
    delivery = {"Idempotency-Key": f"delivery-{uuid.uuid4().hex}"}
    first = await anonymous.post(url, json={"n": 1}, headers=delivery)
    again = await anonymous.post(url, json={"n": 1}, headers=delivery)
    other = await anonymous.post(url, json={"n": 2})
    assert first.status_code == again.status_code == other.status_code == 200
    assert first.json()["id"] == again.json()["id"] != other.json()["id"]
    assert await _executions_created(server, ns) == 2
    bad = await anonymous.post(url, json={}, headers={"Idempotency-Key": "k" * 300})
    assert bad.status_code == 400 and "Idempotency-Key" in bad.json()["message"]


async def test_the_webhook_type_is_listed_with_its_documented_schema(
    client: httpx.AsyncClient,
) -> None:
    listed = (await client.get("/api/v1/plugins")).json()
    [entry] = [p for p in listed if p["type"] == "io.kestra.plugin.core.trigger.Webhook"]
    assert entry["kind"] == "trigger"
    assert "io.kestra.core.models.triggers.types.Webhook" in entry["aliases"]
    described = (await client.get("/api/v1/plugins/io.kestra.plugin.core.trigger.Webhook")).json()
    schema = described["schema"]
    properties = schema.get("properties") or next(iter(schema["$defs"].values()))["properties"]
    assert "key" in properties and "256" in properties["key"]["description"]
    assert {"wait", "returnOutputs", "inputs", "conditions"} <= set(properties)


async def test_tasks_see_the_trigger_variables_of_a_subflow_too(client: httpx.AsyncClient) -> None:
    """`{{ trigger.* }}` is what the trigger recorded (as in Kestra), for every trigger."""
    ns = _ns()
    await deploy(
        client, f"id: child\nnamespace: {ns}\ntasks:\n{_return('{{ trigger.executionId }}')}"
    )
    parent = (
        f"id: parent\nnamespace: {ns}\ntasks:\n  - id: sub\n"
        f"    type: io.kestra.plugin.core.flow.Subflow\n    namespace: {ns}\n    flowId: child\n"
    )
    await deploy(client, parent)
    started = await client.post(f"/api/v1/executions/{ns}/parent?wait=true", json={})
    assert started.json()["state"]["current"] == "SUCCESS", started.text
    found = (await client.get(f"/api/v1/executions/search?namespace={ns}&flowId=child")).json()
    with trio.fail_after(20):
        while not found["results"]:
            await trio.sleep(0.1)
            found = (
                await client.get(f"/api/v1/executions/search?namespace={ns}&flowId=child")
            ).json()
    child = await _ended(client, found["results"][0]["id"])
    assert _value(child) == started.json()["id"]
