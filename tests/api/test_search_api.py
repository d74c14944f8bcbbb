"""The executions search and the logs of an execution through a real server, as Kestra's
clients call them: filters, totals, paging, sort, the namespaces a token may see."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import trio

from tests.api.test_auth import _bearer, _token

YAML = {"Content-Type": "application/x-yaml"}


def _ns() -> str:
    return f"test.search.n{uuid.uuid4().hex[:8]}"


def _flow(namespace: str, flow_id: str = "hello", fail: bool = False) -> str:
    task = (
        "  - id: boom\n    type: io.kestra.plugin.core.execution.Fail\n"
        if fail
        else "  - id: say\n    type: io.kestra.plugin.core.log.Log\n    message: hi from {{ flow.id }}\n"
    )
    return f"id: {flow_id}\nnamespace: {namespace}\ntasks:\n{task}"


async def _run(client: httpx.AsyncClient, namespace: str, flow_id: str, labels: str = "") -> str:
    query = f"?wait=true&labels={labels}" if labels else "?wait=true"
    response = await client.post(f"/api/v1/executions/{namespace}/{flow_id}{query}")
    assert response.status_code == 200, response.text
    return str(response.json()["id"])


ENDED = {"SUCCESS", "WARNING", "FAILED", "KILLED", "CANCELLED"}


async def _found(client: httpx.AsyncClient, want: int, **params: Any) -> dict[str, Any]:
    """The search answer once the read model holds `want` executions for `params`, each in
    the state it ended in (the read model trails the log)."""
    with trio.fail_after(15):
        while True:
            answer = (await client.get("/api/v1/executions/search", params=params)).json()
            ended = all(e["state"]["current"] in ENDED for e in answer["results"])
            if answer["total"] >= want and ended:
                return dict(answer)
            await trio.sleep(0.05)


async def test_search_filters_page_and_sort_executions_as_kestra_clients_expect(
    client: httpx.AsyncClient,
) -> None:
    ns = _ns()
    for source in (_flow(ns), _flow(f"{ns}.etl", "load-daily"), _flow(f"{ns}x", "hello")):
        assert (await client.post("/api/v1/flows", content=source, headers=YAML)).is_success
    assert (
        await client.post("/api/v1/flows", content=_flow(ns, "broken", fail=True), headers=YAML)
    ).is_success
    hello = [await _run(client, ns, "hello", "env:prod") for _ in range(3)]
    load = await _run(client, f"{ns}.etl", "load-daily", "env:dev")
    broken = await _run(client, ns, "broken", "env:prod")
    await _run(client, f"{ns}x", "hello")

    everything = await _found(client, 5, namespace=ns)
    assert everything["total"] == 5 and everything["totalIsEstimate"] is False
    # Newest first; the sibling namespace `<ns>x` is not under `<ns>`.
    assert [e["id"] for e in everything["results"]] == [broken, load, *reversed(hello)]

    async def ids(**params: Any) -> list[str]:
        answer = (await client.get("/api/v1/executions/search", params=params)).json()
        return [e["id"] for e in answer["results"]]

    assert await ids(namespace=f"{ns}.etl") == [load]
    assert await ids(namespace=ns, flowId="hello") == list(reversed(hello))
    assert await ids(namespace=ns, state="FAILED") == [broken]
    assert await ids(namespace=ns, state=["FAILED", "SUCCESS"], labels="env:dev") == [load]
    assert await ids(namespace=ns, state="failed,success", labels="env:prod") == [
        broken,
        *reversed(hello),
    ]
    assert await ids(namespace=ns, q="load") == [load]
    assert await ids(namespace=ns, q="etl.load") == [load]
    assert await ids(namespace=ns, q=broken[:10]) == [broken]
    assert await ids(namespace=ns, sort="state.startDate:asc", size=2) == hello[:2]

    # endDate bounds the end date (Kestra's meaning): the first runs ended before the last
    # started.
    last_run = next(e for e in everything["results"] if e["id"] == broken)
    first_runs = await ids(namespace=ns, endDate=last_run["state"]["startDate"])
    assert set(first_runs) == {*hello, load}
    assert await ids(namespace=ns, startDate=last_run["state"]["startDate"]) == [broken]

    # Pages, and the cursor that continues without an offset.
    page2 = (
        await client.get(
            "/api/v1/executions/search", params={"namespace": ns, "size": 2, "page": 2}
        )
    ).json()
    assert [e["id"] for e in page2["results"]] == [hello[2], hello[1]]
    assert page2["total"] == 5
    first = (
        await client.get("/api/v1/executions/search", params={"namespace": ns, "size": 3})
    ).json()
    assert first["next"]
    rest = (
        await client.get(
            "/api/v1/executions/search",
            params={"namespace": ns, "size": 3, "after": first["next"]},
        )
    ).json()
    assert [e["id"] for e in first["results"] + rest["results"]] == [
        e["id"] for e in everything["results"]
    ]
    assert rest["next"] is None


async def test_bad_search_parameters_are_refused_with_a_message(
    client: httpx.AsyncClient,
) -> None:
    for params, word in (
        ({"sort": "labels:asc"}, "state.startDate"),
        ({"after": "garbage"}, "after"),
        ({"page": "100000", "size": "100"}, "after="),
        ({"startDate": "yesterday"}, "startDate"),
        ({"labels": "no-colon"}, "key:value"),
    ):
        answer = await client.get("/api/v1/executions/search", params=params)
        assert answer.status_code == 400, (params, answer.text)
        assert word in answer.json()["message"]


async def test_logs_of_an_execution_carry_its_namespace_and_flow_id(
    client: httpx.AsyncClient,
) -> None:
    ns = _ns()
    assert (
        await client.post("/api/v1/flows", content=_flow(f"{ns}.a", "speaker"), headers=YAML)
    ).is_success
    xid = await _run(client, f"{ns}.a", "speaker")
    logs = (await client.get(f"/api/v1/logs/{xid}")).json()
    assert [(line["namespace"], line["flowId"], line["message"]) for line in logs] == [
        (f"{ns}.a", "speaker", "hi from speaker")
    ]
    assert (await client.get(f"/api/v1/logs/{xid}?minLevel=ERROR")).json() == []


async def test_a_scoped_token_finds_only_executions_of_its_namespaces(
    client: httpx.AsyncClient,
) -> None:
    mine, other = _ns(), _ns()
    for ns in (mine, f"{mine}.sub", other, f"{mine}x"):
        assert (await client.post("/api/v1/flows", content=_flow(ns), headers=YAML)).is_success
        await _run(client, ns, "hello", "env:prod")
    await _found(client, 1, namespace=f"{mine}x")
    await _found(client, 1, namespace=other)
    token = await _token(client, "viewer", [mine])
    async with httpx.AsyncClient(
        base_url=client.base_url, headers=_bearer(token), timeout=60
    ) as viewer:
        for params in ({"size": 1000}, {"labels": "env:prod", "size": 1000}, {"q": "hello"}):
            answer = (await viewer.get("/api/v1/executions/search", params=params)).json()
            assert {e["namespace"] for e in answer["results"]} == {mine, f"{mine}.sub"}, params
            assert answer["total"] == 2
        outside = (
            await viewer.get("/api/v1/executions/search", params={"namespace": other})
        ).json()
        assert outside["results"] == [] and outside["total"] == 0
        flows = (await viewer.get("/api/v1/flows/search", params={"size": 1000})).json()
        assert {f["namespace"] for f in flows["results"]} == {mine, f"{mine}.sub"}
