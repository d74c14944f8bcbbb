"""The API as Kestra's clients read it, through a real server: the executions search in both
its forms (plain parameters and `filters[field][OPERATION]=value`), and the JSON shapes of
Kestra's client models (flows, executions, task runs, attempts, log lines)."""

from __future__ import annotations

import datetime as dt
import uuid

import httpx
import trio

from tests.conftest import deploy

SEARCH = "/api/v1/executions/search"


def _ns() -> str:
    return f"test.shapes.n{uuid.uuid4().hex[:8]}"


def _flow(namespace: str, flow_id: str = "hello", fail: bool = False) -> str:
    task = (
        "  - id: boom\n    type: io.kestra.plugin.core.execution.Fail\n"
        if fail
        else "  - id: say\n    type: io.kestra.plugin.core.log.Log\n    message: hi\n"
    )
    return f"id: {flow_id}\nnamespace: {namespace}\ntasks:\n{task}"


async def _run(client: httpx.AsyncClient, namespace: str, flow_id: str, *labels: str) -> str:
    params: list[tuple[str, str]] = [("wait", "true"), *(("labels", label) for label in labels)]
    response = await client.post(f"/api/v1/executions/{namespace}/{flow_id}", params=params)
    assert response.status_code == 200, response.text
    return str(response.json()["id"])


async def _until_indexed(client: httpx.AsyncClient, namespace: str, count: int) -> None:
    """Wait until the search's read model holds `count` ended executions under `namespace`."""
    with trio.fail_after(15):
        while True:
            answer = (
                await client.get(
                    SEARCH,
                    params={"namespace": namespace, "state": ["SUCCESS", "FAILED"], "size": 100},
                )
            ).json()
            if answer["total"] >= count:
                return
            await trio.sleep(0.05)


async def test_search_answers_kestra_filters_form_like_the_plain_parameters(
    client: httpx.AsyncClient,
) -> None:
    ns = _ns()
    await deploy(client, _flow(ns))
    await deploy(client, _flow(f"{ns}.etl", "load"))
    await deploy(client, _flow(ns, "broken", fail=True))
    await deploy(client, _flow(f"{ns}x", "hello"))
    hello = await _run(client, ns, "hello", "env:prod", "team:a")
    load = await _run(client, f"{ns}.etl", "load", "env:dev")
    broken = await _run(client, ns, "broken", "env:prod")
    await _run(client, f"{ns}x", "hello", "env:prod")
    await _until_indexed(client, ns, 3)

    async def ids(params: list[tuple[str, str]] | dict[str, str]) -> list[str]:
        response = await client.get(SEARCH, params=params)
        assert response.status_code == 200, response.text
        return [e["id"] for e in response.json()["results"]]

    prefix = {"filters[namespace][PREFIX]": ns}
    assert await ids(prefix) == [broken, load, hello]
    assert await ids({"filters[namespace][EQUALS]": ns}) == [broken, hello]
    assert await ids({**prefix, "filters[flowId][EQUALS]": "load"}) == [load]
    assert await ids({**prefix, "filters[state][EQUALS]": "FAILED"}) == [broken]
    assert await ids({**prefix, "filters[state][IN]": "[FAILED,SUCCESS]"}) == [
        broken,
        load,
        hello,
    ]
    assert await ids([*prefix.items(), ("filters[state][IN]", "failed")]) == [broken]
    assert await ids({**prefix, "filters[state][NOT_IN]": "FAILED,KILLED"}) == [load, hello]
    assert await ids({**prefix, "filters[state][NOT_EQUALS]": "SUCCESS"}) == [broken]
    assert await ids({**prefix, "filters[labels][EQUALS][env]": "prod"}) == [broken, hello]
    assert await ids(
        {**prefix, "filters[labels][EQUALS][env]": "prod", "filters[labels][EQUALS][team]": "a"}
    ) == [hello]
    assert await ids({**prefix, "filters[labels][EQUALS]": "env:dev"}) == [load]
    assert await ids({**prefix, "filters[q][EQUALS]": "etl"}) == [load]
    assert await ids({**prefix, "filters[scope][EQUALS]": "USER"}) == [broken, load, hello]
    # Both forms together narrow each other; filters that exclude each other find nothing.
    assert await ids({**prefix, "state": "FAILED", "filters[labels][EQUALS][env]": "prod"}) == [
        broken
    ]
    assert await ids({**prefix, "state": "FAILED", "filters[state][EQUALS]": "SUCCESS"}) == []

    everything = (await client.get(SEARCH, params=prefix)).json()["results"]
    by_id = {e["id"]: e for e in everything}
    load_start = dt.datetime.fromisoformat(by_id[load]["state"]["startDate"])
    load_end = dt.datetime.fromisoformat(by_id[load]["state"]["endDate"])
    at = load_start.isoformat()
    assert await ids({**prefix, "filters[startDate][GREATER_THAN_OR_EQUAL_TO]": at}) == [
        broken,
        load,
    ]
    assert await ids({**prefix, "filters[startDate][GREATER_THAN]": at}) == [broken]
    assert await ids({**prefix, "filters[startDate][LESS_THAN_OR_EQUAL_TO]": at}) == [
        load,
        hello,
    ]
    assert await ids({**prefix, "filters[startDate][LESS_THAN]": at}) == [hello]
    assert await ids(
        {**prefix, "filters[endDate][LESS_THAN_OR_EQUAL_TO]": load_end.isoformat()}
    ) == [load, hello]
    assert await ids({**prefix, "filters[timeRange][EQUALS]": "PT1H"}) == [broken, load, hello]
    assert await ids({**prefix, "timeRange": "P1D"}) == [broken, load, hello]


async def test_search_refuses_what_it_cannot_answer_naming_it(client: httpx.AsyncClient) -> None:
    cases = {
        "state=DONE": ({"state": "DONE"}, "DONE"),
        "filters[state][IN]": ({"filters[state][IN]": "SUCCESS,FINISHED"}, "FINISHED"),
        "unknown field": ({"filters[color][EQUALS]": "red"}, "color"),
        "unsupported operation": ({"filters[namespace][REGEX]": "a.*"}, "REGEX"),
        "unknown operation": ({"filters[flowId][LIKE]": "a"}, "LIKE"),
        "unknown parameter": ({"status": "FAILED"}, "status"),
        "bad date": ({"filters[startDate][GREATER_THAN]": "yesterday"}, "yesterday"),
        "bad duration": ({"filters[timeRange][EQUALS]": "24 hours"}, "24 hours"),
        "nested group": ({"filters[or][0][or][1][state][EQUALS]": "FAILED"}, "do not nest"),
        "label without key": ({"filters[labels][EQUALS]": "prod"}, "key"),
        "no state": ({"filters[state][IN]": "[]"}, "names no state"),
    }
    for case, (params, named) in cases.items():
        response = await client.get(SEARCH, params=params)
        assert response.status_code == 400, (case, response.text)
        assert named in response.json()["message"], (case, response.text)


async def test_an_execution_and_its_search_row_show_the_same_dates_to_the_millisecond(
    client: httpx.AsyncClient,
) -> None:
    ns = _ns()
    source = (
        _flow(ns) + "  - id: again\n    type: io.kestra.plugin.core.log.Log\n    message: bye\n"
    )
    await deploy(client, source)
    execution_id = await _run(client, ns, "hello")
    await _until_indexed(client, ns, 1)
    execution = (await client.get(f"/api/v1/executions/{execution_id}")).json()
    row = (await client.get(SEARCH, params={"namespace": ns})).json()["results"][0]
    assert row["id"] == execution_id
    assert row["state"] == execution["state"]
    assert [h["state"] for h in row["state"]["histories"]] == ["CREATED", "RUNNING", "SUCCESS"]
    assert row["state"]["endDate"] == execution["state"]["histories"][-1]["date"]


async def test_flows_carry_kestra_labels_list_disabled_updated_and_tenant(
    client: httpx.AsyncClient,
) -> None:
    ns = _ns()
    source = f"id: labelled\nnamespace: {ns}\nlabels:\n  team: data\n  env: prod\n" + (
        "tasks:\n  - id: say\n    type: io.kestra.plugin.core.log.Log\n    message: hi\n"
    )
    created = await deploy(client, source)
    assert created["labels"] == [
        {"key": "team", "value": "data"},
        {"key": "env", "value": "prod"},
    ]
    assert created["disabled"] is False and created["deleted"] is False
    assert created["tenantId"] == "main"
    fetched = (await client.get(f"/api/v1/flows/{ns}/labelled")).json()
    # The POST answer's `updated` is the revision's recorded date, as a read shows it.
    assert created["updated"] == fetched["updated"]
    assert dt.datetime.fromisoformat(created["updated"]).tzinfo is not None
    # The search reads the flows read model, which follows the deploy closely, not at once.
    with trio.fail_after(15):
        while True:
            listed = (await client.get("/api/v1/flows/search", params={"namespace": ns})).json()
            if listed["results"]:
                break
            await trio.sleep(0.05)
    assert listed["results"][0]["labels"] == created["labels"]
    assert listed["results"][0]["disabled"] is False


async def test_execution_task_runs_attempts_and_logs_have_kestra_shapes(
    client: httpx.AsyncClient,
) -> None:
    ns = _ns()
    await deploy(client, _flow(ns))
    execution = (await client.get(f"/api/v1/executions/{await _run(client, ns, 'hello')}")).json()
    assert execution["tenantId"] == "main"
    assert execution["deleted"] is False
    assert execution["metadata"]["attemptNumber"] == 1
    [run] = execution["taskRunList"]
    assert run["tenantId"] == "main"
    assert "iteration" in run and run["iteration"] is None
    [attempt] = run["attempts"]
    state = attempt["state"]
    assert state["current"] == "SUCCESS"
    assert [h["state"] for h in state["histories"]] == ["CREATED", "RUNNING", "SUCCESS"]
    assert state["startDate"] == state["histories"][0]["date"]
    assert state["endDate"] == state["histories"][-1]["date"]
    assert state["duration"].startswith("PT") and state["duration"].endswith("S")
    # The attempt lies within its task run.
    assert run["state"]["startDate"] <= state["startDate"] <= state["endDate"]
    assert state["endDate"] <= run["state"]["endDate"]

    with trio.fail_after(15):
        while not (lines := (await client.get(f"/api/v1/logs/{execution['id']}")).json()):
            await trio.sleep(0.05)
    [line] = lines
    assert line["tenantId"] == "main" and line["message"] == "hi"
    assert line["taskRunId"] == run["id"] and line["attemptNumber"] == 1
    for key in ("triggerId", "thread", "executionKind"):
        assert key in line and line[key] is None


async def test_a_subflow_execution_names_the_task_that_started_it_in_its_trigger(
    client: httpx.AsyncClient,
) -> None:
    ns = _ns()
    await deploy(client, _flow(ns, "child"))
    parent = (
        f"id: parent\nnamespace: {ns}\ntasks:\n"
        f"  - id: start_child\n    type: io.kestra.plugin.core.flow.Subflow\n"
        f"    namespace: {ns}\n    flowId: child\n"
    )
    await deploy(client, parent)
    parent_id = await _run(client, ns, "parent")
    await _until_indexed(client, ns, 2)
    [row] = (await client.get(SEARCH, params={"namespace": ns, "flowId": "child"})).json()[
        "results"
    ]
    child = (await client.get(f"/api/v1/executions/{row['id']}")).json()
    assert child["parentId"] == parent_id
    trigger = child["trigger"]
    assert trigger["id"] == "start_child"
    assert trigger["type"] == "io.kestra.plugin.core.flow.Subflow"
    assert trigger["variables"]["executionId"] == parent_id
    assert row["trigger"] == trigger
