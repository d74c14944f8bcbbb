"""The REST API over real HTTP, against a real server and PostgreSQL."""

from __future__ import annotations

import uuid

import httpx
import trio

from tests.conftest import deploy

YAML = {"content-type": "application/x-yaml"}


def _ns() -> str:
    return f"test.api.n{uuid.uuid4().hex[:8]}"


def _parallel_flow(ns: str, flow_id: str = "hello") -> str:
    return f"""\
id: {flow_id}
namespace: {ns}
labels:
  team: data
inputs:
  - id: who
    type: STRING
    defaults: world
  - id: times
    type: INT
    required: false
tasks:
  - id: both
    type: io.kestra.plugin.core.flow.Parallel
    tasks:
      - id: a
        type: io.kestra.plugin.core.log.Log
        message: "hello {{{{ inputs.who }}}} from a"
      - id: b
        type: io.kestra.plugin.core.log.Log
        message: "hello {{{{ inputs.who }}}} from b"
  - id: answer
    type: io.kestra.plugin.core.debug.Return
    format: "{{{{ flow.namespace }}}}.{{{{ flow.id }}}}"
"""


async def test_health_liveness_and_readiness_answer_up(client: httpx.AsyncClient) -> None:
    for path in ("/health", "/health/liveness", "/health/readiness"):
        response = await client.get(path)
        assert response.status_code == 200
        assert response.json()["status"] == "UP"


async def test_parallel_logs_execution_succeeds_with_logs_and_audit_trail(
    client: httpx.AsyncClient,
) -> None:
    ns = _ns()
    await deploy(client, _parallel_flow(ns))
    response = await client.post(
        f"/api/v1/executions/{ns}/hello?wait=true", json={"who": "tiercel"}
    )
    assert response.status_code == 200, response.text
    execution = response.json()
    assert execution["state"]["current"] == "SUCCESS"
    runs = {r["taskId"]: r for r in execution["taskRunList"]}
    assert set(runs) == {"both", "a", "b", "answer"}
    assert runs["answer"]["outputs"] == {"value": f"{ns}.hello"}
    assert {"key": "team", "value": "data"} in execution["labels"]

    logs = (await client.get(f"/api/v1/logs/{execution['id']}")).json()
    assert sorted(line["message"] for line in logs) == [
        "hello tiercel from a",
        "hello tiercel from b",
    ]
    assert all(line["executionId"] == execution["id"] for line in logs)

    events = (await client.get(f"/api/v1/executions/{execution['id']}/events")).json()
    seqs = [e["seq"] for e in events]
    assert seqs == sorted(seqs)
    types = [e["type"] for e in events]
    assert types[0] == "ExecutionCreated" and types[-1] == "ExecutionStateChanged"
    assert types.count("AttemptSucceeded") == 3 and types.count("AttemptLogged") == 2
    assert events[0]["actor"] == "user:admin" and events[0]["data"]["inputs"]["who"] == "tiercel"
    assert {e["actor"] for e in events} >= {"user:admin", "executor"}

    # the state as it stood at the first event: created, nothing run yet
    early = (await client.get(f"/api/v1/executions/{execution['id']}?at={seqs[0]}")).json()
    assert early["state"]["current"] == "CREATED" and early["taskRunList"] == []


async def test_multipart_inputs_and_label_query_reach_the_execution(
    client: httpx.AsyncClient,
) -> None:
    ns = _ns()
    await deploy(client, _parallel_flow(ns))
    response = await client.post(
        f"/api/v1/executions/{ns}/hello?wait=true&labels=env:prod",
        files={"who": (None, "multipart"), "times": (None, "3")},
    )
    assert response.status_code == 200, response.text
    execution = response.json()
    assert execution["inputs"] == {"who": "multipart", "times": 3}
    assert {"key": "env", "value": "prod"} in execution["labels"]


async def test_bad_inputs_are_refused_with_422_and_start_nothing(
    client: httpx.AsyncClient,
) -> None:
    ns = _ns()
    await deploy(client, _parallel_flow(ns))
    response = await client.post(f"/api/v1/executions/{ns}/hello", json={"times": "many"})
    assert response.status_code == 422
    body = response.json()
    assert "nothing was started" in body["message"]
    assert any(d["path"] == "inputs.times" for d in body["details"])
    await trio.sleep(0.3)
    search = (await client.get(f"/api/v1/executions/search?namespace={ns}")).json()
    assert search["total"] == 0


async def test_flow_revisions_update_and_delete(client: httpx.AsyncClient) -> None:
    ns = _ns()
    first = await deploy(client, _parallel_flow(ns))
    assert first["revision"] == 1
    again = await client.post("/api/v1/flows", content=_parallel_flow(ns), headers=YAML)
    assert again.status_code == 409
    changed = _parallel_flow(ns).replace("team: data", "team: ops")
    updated = await client.put(f"/api/v1/flows/{ns}/hello", content=changed, headers=YAML)
    assert updated.status_code == 200 and updated.json()["revision"] == 2
    labels = (await client.get(f"/api/v1/flows/{ns}/hello")).json()["labels"]
    assert labels == [{"key": "team", "value": "ops"}]
    old = (await client.get(f"/api/v1/flows/{ns}/hello?revision=1")).json()
    assert old["labels"] == [{"key": "team", "value": "data"}]
    assert old["source"] == _parallel_flow(ns)
    revisions = (await client.get(f"/api/v1/flows/{ns}/hello/revisions")).json()
    assert [r["revision"] for r in revisions] == [1, 2]

    moved = _parallel_flow(ns, "other")
    wrong = await client.put(f"/api/v1/flows/{ns}/hello", content=moved, headers=YAML)
    assert wrong.status_code == 400 and "cannot be changed" in wrong.json()["message"]

    assert (await client.delete(f"/api/v1/flows/{ns}/hello")).status_code == 204
    assert (await client.get(f"/api/v1/flows/{ns}/hello")).status_code == 404
    assert (await client.get(f"/api/v1/flows/{ns}/hello?revision=2")).status_code == 200
    gone = await client.post(f"/api/v1/executions/{ns}/hello")
    assert gone.status_code == 404


async def test_execution_pins_the_revision_it_started_with(client: httpx.AsyncClient) -> None:
    ns = _ns()
    source = f"""\
id: slow
namespace: {ns}
tasks:
  - id: wait
    type: io.kestra.plugin.core.flow.Sleep
    duration: PT0.5S
  - id: said
    type: io.kestra.plugin.core.debug.Return
    format: first
"""
    await deploy(client, source)
    started = (await client.post(f"/api/v1/executions/{ns}/slow")).json()
    await client.put(
        f"/api/v1/flows/{ns}/slow", content=source.replace("first", "second"), headers=YAML
    )
    with trio.fail_after(30):
        while True:
            execution = (await client.get(f"/api/v1/executions/{started['id']}")).json()
            if execution["state"]["current"] == "SUCCESS":
                break
            await trio.sleep(0.1)
    assert execution["flowRevision"] == 1
    said = next(r for r in execution["taskRunList"] if r["taskId"] == "said")
    assert said["outputs"] == {"value": "first"}


async def test_invalid_flow_gets_422_with_every_problem_located(
    client: httpx.AsyncClient,
) -> None:
    source = "id: bad\nnamespace: test.api\ntasks:\n  - id: t\n    type: nope.Task\n  - id: t\n"
    response = await client.post("/api/v1/flows", content=source, headers=YAML)
    assert response.status_code == 422
    details = response.json()["details"]
    assert {"path": "tasks[0].type", "line": 5, "column": 11} | {
        "message": details[0]["message"]
    } in details
    assert len(details) >= 2

    empty = await client.post("/api/v1/flows", content="", headers=YAML)
    assert empty.status_code == 400 and "empty" in empty.json()["message"]


async def test_validate_reports_each_document(client: httpx.AsyncClient) -> None:
    good = _parallel_flow(_ns())
    bad = "id: broken\nnamespace: x\ntasks: []\n"
    response = await client.post(
        "/api/v1/flows/validate", content=good + "---\n" + bad, headers=YAML
    )
    assert response.status_code == 200
    first, second = response.json()
    assert "constraints" not in first and first["flow"] == "hello"
    assert second["index"] == 1 and second["constraints"]


async def test_flow_and_execution_search_filter_and_page(client: httpx.AsyncClient) -> None:
    ns = _ns()
    for name in ("alpha", "beta", "gamma"):
        await deploy(client, _parallel_flow(ns, name))
    for _ in range(3):
        response = await client.post(f"/api/v1/executions/{ns}/alpha?wait=true")
        assert response.json()["state"]["current"] == "SUCCESS"
    await client.post(f"/api/v1/executions/{ns}/beta?wait=true")

    with trio.fail_after(10):
        while True:
            flows = (await client.get(f"/api/v1/flows/search?namespace={ns}&size=2")).json()
            found = (await client.get(f"/api/v1/executions/search?namespace={ns}")).json()
            if flows["total"] == 3 and found["total"] == 4:
                break
            await trio.sleep(0.1)
    assert [f["id"] for f in flows["results"]] == ["alpha", "beta"]
    page2 = (await client.get(f"/api/v1/flows/search?namespace={ns}&size=2&page=2")).json()
    assert [f["id"] for f in page2["results"]] == ["gamma"]
    by_flow = (
        await client.get(f"/api/v1/executions/search?namespace={ns}&flowId=alpha&state=SUCCESS")
    ).json()
    assert by_flow["total"] == 3
    assert all(e["state"]["current"] == "SUCCESS" for e in by_flow["results"])
    q = (await client.get(f"/api/v1/flows/search?namespace={ns}&q=amm")).json()
    assert [f["id"] for f in q["results"]] == ["gamma"]


async def test_kill_stops_a_sleeping_execution(client: httpx.AsyncClient) -> None:
    ns = _ns()
    await deploy(
        client,
        f"id: nap\nnamespace: {ns}\ntasks:\n  - id: z\n"
        "    type: io.kestra.plugin.core.flow.Sleep\n    duration: PT1H\n",
    )
    execution = (await client.post(f"/api/v1/executions/{ns}/nap")).json()
    killed = await client.delete(f"/api/v1/executions/{execution['id']}/kill")
    assert killed.status_code == 202
    with trio.fail_after(20):
        while True:
            state = (await client.get(f"/api/v1/executions/{execution['id']}")).json()
            if state["state"]["current"] == "KILLED":
                break
            await trio.sleep(0.1)
    again = await client.delete(f"/api/v1/executions/{execution['id']}/kill")
    assert again.status_code == 409


async def test_errors_are_json_with_the_right_status(client: httpx.AsyncClient) -> None:
    unknown = await client.get("/api/v1/executions/doesNotExist")
    assert unknown.status_code == 404 and "doesNotExist" in unknown.json()["message"]
    assert (await client.get("/api/v1/logs/doesNotExist")).status_code == 404
    assert (await client.get("/api/v1/flows/no/such")).status_code == 404
    bad_page = await client.get("/api/v1/flows/search?size=lots")
    assert bad_page.status_code == 400 and "size" in bad_page.json()["message"]
    route = await client.get("/api/v1/nothing/here")
    assert route.status_code == 404 and route.json()["details"] == []
