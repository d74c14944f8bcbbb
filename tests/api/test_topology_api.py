"""Task graphs of flow revisions and dependencies between flows, through real HTTP."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import trio

from tests.conftest import deploy, own_database


@pytest.fixture(scope="module")
def database_url(database_url: str) -> Iterator[str]:
    """A database of this file's own: a dependency graph reads every flow the caller sees, and
    flows other files deploy (a Flow trigger without conditions listens to every flow) would
    add edges to the exact graphs these tests expect."""
    with own_database(database_url, "topology", prepare=True) as url:
        yield url


YAML = {"Content-Type": "application/x-yaml"}
LOG = "io.kestra.plugin.core.log.Log"


def _ns() -> str:
    return f"test.topology.n{uuid.uuid4().hex[:8]}"


def _log(task_id: str, indent: int = 2) -> str:
    pad = " " * indent
    return f"{pad}- id: {task_id}\n{pad}  type: {LOG}\n{pad}  message: hi\n"


def _flow(namespace: str, flow_id: str, tasks: str, extra: str = "") -> str:
    return f"id: {flow_id}\nnamespace: {namespace}\ntasks:\n{tasks}{extra}"


def _subflow(task_id: str, namespace: str, flow_id: str) -> str:
    return (
        f"  - id: {task_id}\n    type: io.kestra.plugin.core.flow.Subflow\n"
        f"    namespace: {namespace}\n    flowId: {flow_id}\n"
    )


def _listens_to(namespace: str, flow_id: str) -> str:
    return (
        "triggers:\n  - id: after\n    type: io.kestra.plugin.core.trigger.Flow\n"
        "    conditions:\n      - type: io.kestra.plugin.core.condition.ExecutionFlow\n"
        f"        namespace: {namespace}\n        flowId: {flow_id}\n"
    )


def _uids(graph: dict[str, Any]) -> set[str]:
    return {n["uid"] for n in graph["nodes"]}


async def _until(
    client: httpx.AsyncClient, path: str, done: Any, params: dict[str, str] | None = None
) -> dict[str, Any]:
    """The answer of `path` once `done(answer)` holds (the flows read model follows deploys
    closely, not at once)."""
    with trio.fail_after(15):
        while True:
            response = await client.get(path, params=params)
            assert response.status_code == 200, response.text
            body: dict[str, Any] = response.json()
            if done(body):
                return body
            await trio.sleep(0.05)


async def test_graph_of_a_flow_shows_its_tasks_clusters_and_each_revision(
    client: httpx.AsyncClient,
) -> None:
    ns = _ns()
    parallel = (
        "  - id: par\n    type: io.kestra.plugin.core.flow.Parallel\n    tasks:\n"
        + _log("left", 6)
        + _log("right", 6)
    )
    await deploy(client, _flow(ns, "shape", _log("first") + parallel, "errors:\n" + _log("oops")))
    graph = (await client.get(f"/api/v1/flows/{ns}/shape/graph")).json()
    assert {"root.first", "root.par", "root.par.left", "root.par.right", "root.oops"} <= _uids(
        graph
    )
    cluster = next(c for c in graph["clusters"] if c["cluster"]["uid"] == "cluster_root.par")
    assert cluster["cluster"]["relationType"] == "PARALLEL"
    assert {"root.par.left", "root.par.right", cluster["start"], cluster["end"]} <= set(
        cluster["nodes"]
    )
    relations = {(e["source"], e["target"]): e["relation"]["relationType"] for e in graph["edges"]}
    assert relations[("root.par", "root.par.left")] == "PARALLEL"
    assert relations[("root.first", cluster["start"])] == "SEQUENTIAL"
    node = next(n for n in graph["nodes"] if n["uid"] == "root.first")
    assert node["task"] == {"id": "first", "type": LOG, "message": "hi"}

    # A new revision has its own graph; the first one keeps its own.
    update = _flow(ns, "shape", _log("only"))
    assert (await client.put(f"/api/v1/flows/{ns}/shape", content=update, headers=YAML)).is_success
    latest = (await client.get(f"/api/v1/flows/{ns}/shape/graph")).json()
    assert "root.only" in _uids(latest) and "root.par" not in _uids(latest)
    first = await client.get(f"/api/v1/flows/{ns}/shape/graph", params={"revision": "1"})
    assert first.json() == graph
    # Kestra's clients call under the tenant.
    assert (await client.get(f"/api/v1/main/flows/{ns}/shape/graph")).json() == latest


async def test_graph_of_an_unknown_flow_or_revision_is_a_clear_error(
    client: httpx.AsyncClient,
) -> None:
    ns = _ns()
    missing = await client.get(f"/api/v1/flows/{ns}/nope/graph")
    assert missing.status_code == 404 and "does not exist" in missing.json()["message"]
    await deploy(client, _flow(ns, "one", _log("a")))
    gone = await client.get(f"/api/v1/flows/{ns}/one/graph", params={"revision": "7"})
    assert gone.status_code == 404 and "no revision 7" in gone.json()["message"]
    wrong = await client.get(f"/api/v1/flows/{ns}/one/graph", params={"revision": "latest"})
    assert wrong.status_code == 400 and "revision" in wrong.json()["message"]


async def test_graph_of_a_flow_source_before_it_is_saved(client: httpx.AsyncClient) -> None:
    ns = _ns()
    source = _flow(ns, "draft", _log("a") + _log("b"))
    answer = await client.post("/api/v1/flows/graph", content=source, headers=YAML)
    assert answer.status_code == 200, answer.text
    assert {"root.a", "root.b"} <= _uids(answer.json())
    assert (await client.get(f"/api/v1/flows/{ns}/draft")).status_code == 404  # nothing saved
    bad = await client.post(
        "/api/v1/flows/graph", content=_flow(ns, "draft", "  - id: a\n"), headers=YAML
    )
    assert bad.status_code == 422 and bad.json()["details"], bad.text


async def test_dependencies_follow_subflows_and_flow_triggers(client: httpx.AsyncClient) -> None:
    ns = _ns()
    await deploy(client, _flow(ns, "child", _log("work")))
    await deploy(client, _flow(ns, "parent", _subflow("call", ns, "child")))
    await deploy(client, _flow(ns, "listener", _log("x"), _listens_to(ns, "child")))
    await deploy(client, _flow(ns, "grandparent", _subflow("call", ns, "parent")))
    await deploy(client, _flow(ns, "lonely", _log("x")))

    def uid(flow_id: str) -> str:
        return f"main_{ns}_{flow_id}"

    both = await _until(
        client, f"/api/v1/flows/{ns}/child/dependencies", lambda b: len(b["edges"]) == 2
    )
    assert {(e["source"], e["target"], e["relation"]) for e in both["edges"]} == {
        (uid("parent"), uid("child"), "FLOW_TASK"),
        (uid("child"), uid("listener"), "FLOW_TRIGGER"),
    }
    node = next(n for n in both["nodes"] if n["id"] == "child")
    assert node == {"uid": uid("child"), "tenantId": "main", "namespace": ns, "id": "child"}

    upstream = await client.get(
        f"/api/v1/flows/{ns}/child/dependencies", params={"destinationOnly": "true"}
    )
    assert {n["id"] for n in upstream.json()["nodes"]} == {"parent", "child"}
    everything = await _until(
        client,
        f"/api/v1/flows/{ns}/child/dependencies",
        lambda b: len(b["edges"]) == 3,
        {"expandAll": "true"},
    )
    assert {n["id"] for n in everything["nodes"]} == {"grandparent", "parent", "child", "listener"}

    whole = await client.get(f"/api/v1/namespaces/{ns}/dependencies")
    assert whole.status_code == 200
    assert {n["id"] for n in whole.json()["nodes"]} == {
        "child",
        "parent",
        "listener",
        "grandparent",
        "lonely",
    }
    assert len(whole.json()["edges"]) == 3
    # Under the tenant too, and a deleted flow leaves the graph.
    assert (await client.delete(f"/api/v1/flows/{ns}/listener")).status_code == 204
    after = await _until(
        client, f"/api/v1/main/flows/{ns}/child/dependencies", lambda b: len(b["edges"]) == 1
    )
    assert {n["id"] for n in after["nodes"]} == {"parent", "child"}


async def test_dependencies_of_an_unknown_flow_or_with_a_bad_flag_are_refused(
    client: httpx.AsyncClient,
) -> None:
    ns = _ns()
    missing = await client.get(f"/api/v1/flows/{ns}/nope/dependencies")
    assert missing.status_code == 404 and f"{ns}.nope" in missing.json()["message"]
    await deploy(client, _flow(ns, "one", _log("a")))
    # Right after its deploy (whether or not the read model holds it yet): a flow with none.
    fresh = await client.get(f"/api/v1/flows/{ns}/one/dependencies")
    assert fresh.status_code == 200 and fresh.json() == {"nodes": [], "edges": []}
    bad = await client.get(f"/api/v1/flows/{ns}/one/dependencies", params={"expandAll": "yes"})
    assert bad.status_code == 400 and "expandAll" in bad.json()["message"]


async def test_scoped_viewer_sees_no_dependency_from_namespaces_it_cannot_reach(
    client: httpx.AsyncClient,
) -> None:
    mine, other = _ns(), _ns()
    await deploy(client, _flow(mine, "child", _log("work")))
    await deploy(client, _flow(mine, "caller", _subflow("call", mine, "child")))
    await deploy(client, _flow(other, "outsider", _subflow("call", mine, "child")))
    path = f"/api/v1/flows/{mine}/child/dependencies"
    await _until(client, path, lambda b: len(b["edges"]) == 2)  # the admin sees both
    made = await client.post(
        "/api/v1/tokens", json={"name": "topology", "role": "viewer", "namespaces": [mine]}
    )
    assert made.status_code == 201, made.text
    headers = {"Authorization": f"Bearer {made.json()['token']}"}
    async with httpx.AsyncClient(base_url=client.base_url, timeout=30, headers=headers) as viewer:
        seen = (await viewer.get(path)).json()
        assert {n["id"] for n in seen["nodes"]} == {"caller", "child"}
        refused = await viewer.get(f"/api/v1/namespaces/{other}/dependencies")
        assert refused.status_code == 403
        assert (await viewer.get(f"/api/v1/flows/{other}/outsider/graph")).status_code == 403


async def test_expand_all_follows_calls_and_flow_triggers_by_turns_from_the_flow_asked(
    client: httpx.AsyncClient,
) -> None:
    # start -(trigger)-> relay -(call)-> middle -(trigger)-> last -(call)-> end, and a caller
    # of start upstream: every flow is reached only through the one before it.
    ns = _ns()
    await deploy(client, _flow(ns, "start", _log("x")))
    await deploy(client, _flow(ns, "upstream", _subflow("call", ns, "start")))
    await deploy(
        client, _flow(ns, "relay", _subflow("call", ns, "middle"), _listens_to(ns, "start"))
    )
    await deploy(client, _flow(ns, "middle", _log("x")))
    await deploy(client, _flow(ns, "last", _subflow("call", ns, "end"), _listens_to(ns, "middle")))
    await deploy(client, _flow(ns, "end", _log("x")))
    await deploy(client, _flow(ns, "aside", _log("x")))
    every = await _until(
        client,
        f"/api/v1/flows/{ns}/start/dependencies",
        lambda b: len(b["edges"]) == 5,
        {"expandAll": "true"},
    )
    assert {n["id"] for n in every["nodes"]} == {
        "upstream", "start", "relay", "middle", "last", "end"
    }  # fmt: skip
    # Upstream only: what leads to `end`, however far back, and nothing it does not lead to.
    back = await client.get(
        f"/api/v1/flows/{ns}/end/dependencies",
        params={"expandAll": "true", "destinationOnly": "true"},
    )
    assert {n["id"] for n in back.json()["nodes"]} == {
        "upstream", "start", "relay", "middle", "last", "end"
    }  # fmt: skip
    near = await client.get(
        f"/api/v1/flows/{ns}/middle/dependencies", params={"destinationOnly": "true"}
    )
    assert {n["id"] for n in near.json()["nodes"]} == {"relay", "middle"}
