"""History through a real server: executions and flows as they stood at a past position or
time, an execution's timeline, the audit trail (search, filters, paging, JSON Lines export,
client address and reason) and the diff of two flow revisions."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

import httpx
import orjson
import trio
import yaml

from tests.api.test_auth import _bearer, _token
from tests.conftest import deploy

YAML = {"Content-Type": "application/x-yaml"}


def _ns() -> str:
    return f"test.history.n{uuid.uuid4().hex[:8]}"


def _failing_flow(namespace: str, flow_id: str = "etl") -> str:
    return (
        f"id: {flow_id}\nnamespace: {namespace}\ntasks:\n"
        "  - id: extract\n    type: io.kestra.plugin.core.log.Log\n    message: extracting\n"
        "  - id: load\n    type: io.kestra.plugin.core.execution.Fail\n"
    )


def _flow(namespace: str, flow_id: str = "hello", message: str = "one") -> str:
    return (
        f"id: {flow_id}\nnamespace: {namespace}\ntasks:\n"
        f"  - id: say\n    type: io.kestra.plugin.core.log.Log\n    message: {message}\n"
    )


async def _run(client: httpx.AsyncClient, namespace: str, flow_id: str) -> dict[str, Any]:
    response = await client.post(f"/api/v1/executions/{namespace}/{flow_id}?wait=true")
    assert response.status_code == 200, response.text
    return dict(response.json())


async def _audit(client: httpx.AsyncClient, want: int, **params: Any) -> dict[str, Any]:
    """The audit search's answer once the read model holds `want` rows for `params`."""
    with trio.fail_after(15):
        while True:
            response = await client.get("/api/v1/audit", params=params)
            assert response.status_code == 200, response.text
            answer = dict(response.json())
            if answer["total"] >= want:
                return answer
            await trio.sleep(0.05)


def _time(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00"))


async def test_as_of_a_position_or_a_time_shows_the_execution_before_it_failed(
    client: httpx.AsyncClient,
) -> None:
    ns = _ns()
    await deploy(client, _failing_flow(ns))
    failed = await _run(client, ns, "etl")
    assert failed["state"]["current"] == "FAILED"
    xid = failed["id"]
    timeline = (await client.get(f"/api/v1/executions/{xid}/timeline?size=1000")).json()
    entries = timeline["results"]
    failure = next(e for e in entries if (e.get("executionState") or {}).get("to") == "FAILED")
    before = entries[entries.index(failure) - 1]

    by_position = await client.get(f"/api/v1/executions/{xid}", params={"asOf": before["position"]})
    assert by_position.status_code == 200, by_position.text
    then = by_position.json()
    assert then["state"]["current"] == "RUNNING"
    assert int(by_position.headers["X-Tiercel-As-Of-Position"]) == before["position"]
    runs = {run["taskId"]: run["state"]["current"] for run in then["taskRunList"]}
    assert runs["extract"] == "SUCCESS"
    # `at` still answers the same, and what stands now is FAILED.
    at = await client.get(f"/api/v1/executions/{xid}", params={"at": before["position"]})
    assert at.json() == then
    now = (await client.get(f"/api/v1/executions/{xid}")).json()
    assert now["state"]["current"] == "FAILED"

    # By time: the last event recorded before the failure's millisecond.
    earlier = [e for e in entries if _time(e["time"]) < _time(failure["time"])]
    moment = earlier[-1]["time"]
    by_time = await client.get(f"/api/v1/executions/{xid}", params={"asOf": moment})
    assert by_time.status_code == 200, by_time.text
    assert by_time.json()["state"]["current"] == "RUNNING"
    assert int(by_time.headers["X-Tiercel-As-Of-Position"]) == max(
        e["position"] for e in entries if e["time"] <= moment
    )
    offset = _time(moment).astimezone(dt.timezone(dt.timedelta(hours=2))).isoformat()
    same = await client.get(f"/api/v1/executions/{xid}", params={"asOf": offset})
    assert same.json() == by_time.json()

    first = entries[0]
    too_early = await client.get(
        f"/api/v1/executions/{xid}", params={"asOf": first["position"] - 1}
    )
    assert too_early.status_code == 404
    assert "did not exist yet" in too_early.json()["message"]
    assert str(first["position"]) in too_early.json()["message"]
    long_ago = await client.get(f"/api/v1/executions/{xid}", params={"asOf": "2001-01-01T00:00Z"})
    assert long_ago.status_code == 404
    for bad in ("yesterday", "-3", "", "2024-13-01"):
        refused = await client.get(f"/api/v1/executions/{xid}", params={"asOf": bad})
        assert refused.status_code == 400, (bad, refused.text)
        assert "asOf" in refused.json()["message"]
    both = await client.get(f"/api/v1/executions/{xid}", params={"asOf": 5, "at": 5})
    assert both.status_code == 400


async def test_timeline_entries_match_the_events_and_each_position_works_as_as_of(
    client: httpx.AsyncClient,
) -> None:
    ns = _ns()
    await deploy(client, _failing_flow(ns))
    xid = (await _run(client, ns, "etl"))["id"]
    events = (await client.get(f"/api/v1/executions/{xid}/events")).json()
    timeline = (await client.get(f"/api/v1/executions/{xid}/timeline?size=1000")).json()
    entries = timeline["results"]
    assert timeline["total"] == len(events) == len(entries)
    assert [(e["position"], e["type"], e["actor"], e["stream"]) for e in entries] == [
        (e["seq"], e["type"], e["actor"], e["stream"]) for e in events
    ]
    summaries = [e["summary"] for e in entries]
    assert summaries[0].startswith(f"execution created from flow {ns}.etl revision 1")
    assert any(s.startswith("task run extract created") for s in summaries)
    assert any("claimed by worker" in s for s in summaries)
    assert "execution RUNNING → FAILED" in summaries
    assert any(
        e.get("taskRunState") == {"from": "RUNNING", "to": "FAILED"} and e["taskId"] == "load"
        for e in entries
    )
    assert any(
        e.get("taskRunState") == {"from": "CREATED", "to": "RUNNING"}
        and e["type"] == "AttemptClaimed"
        for e in entries
    )
    # Every position of the timeline is a moment `asOf` shows; the last is the execution now.
    states = []
    for entry in entries:
        answer = await client.get(f"/api/v1/executions/{xid}", params={"asOf": entry["position"]})
        assert answer.status_code == 200, answer.text
        states.append(answer.json()["state"]["current"])
    assert states[0] == "CREATED" and states[-1] == "FAILED"
    assert answer.json() == (await client.get(f"/api/v1/executions/{xid}")).json()

    # Paged for the scrubber: by page, or after a position.
    second = (await client.get(f"/api/v1/executions/{xid}/timeline?size=3&page=2")).json()
    assert [e["position"] for e in second["results"]] == [e["position"] for e in entries[3:6]]
    first = (await client.get(f"/api/v1/executions/{xid}/timeline?size=3")).json()
    after = (
        await client.get(f"/api/v1/executions/{xid}/timeline?size=3&after={first['next']}")
    ).json()
    assert after["results"] == second["results"]
    missing = await client.get("/api/v1/executions/nope/timeline")
    assert missing.status_code == 404
    bad = await client.get(f"/api/v1/executions/{xid}/timeline?size=0")
    assert bad.status_code == 400 and "size" in bad.json()["message"]


async def test_flow_as_of_shows_the_revision_of_then_deleted_or_not(
    client: httpx.AsyncClient,
) -> None:
    ns = _ns()
    await deploy(client, _flow(ns, message="one"))
    updated = await client.put(
        f"/api/v1/flows/{ns}/hello", content=_flow(ns, message="two"), headers=YAML
    )
    assert updated.status_code == 200
    assert (await client.delete(f"/api/v1/flows/{ns}/hello")).status_code == 204
    diff = (await client.get(f"/api/v1/flows/{ns}/hello/revisions/1/diff/2")).json()
    first, second = diff["from"]["position"], diff["to"]["position"]

    at_first = await client.get(f"/api/v1/flows/{ns}/hello", params={"asOf": first})
    assert at_first.status_code == 200, at_first.text
    body = at_first.json()
    assert (body["revision"], body["deleted"]) == (1, False)
    assert "message: one" in body["source"]
    assert at_first.headers["X-Tiercel-Actor"] == "user:admin"
    between = (await client.get(f"/api/v1/flows/{ns}/hello", params={"asOf": second})).json()
    assert between["revision"] == 2 and "message: two" in between["source"]
    # Deleted now: the plain read says so, the flow as of now shows it deleted.
    assert (await client.get(f"/api/v1/flows/{ns}/hello")).status_code == 404
    head = second + 1_000_000
    gone = (await client.get(f"/api/v1/flows/{ns}/hello", params={"asOf": head})).json()
    assert gone["deleted"] is True and "message: two" in gone["source"]
    by_time = await client.get(f"/api/v1/flows/{ns}/hello", params={"asOf": diff["from"]["date"]})
    assert by_time.json()["revision"] == 1

    before = await client.get(f"/api/v1/flows/{ns}/hello", params={"asOf": first - 1})
    assert before.status_code == 404
    message = before.json()["message"]
    assert "did not exist yet" in message and f"position {first}" in message
    unknown = await client.get(f"/api/v1/flows/{ns}/nope", params={"asOf": first})
    assert unknown.status_code == 404 and "does not exist" in unknown.json()["message"]


async def test_audit_search_finds_a_flow_update_by_its_actor_with_the_diff(
    client: httpx.AsyncClient,
) -> None:
    ns = _ns()
    alice = f"alice{uuid.uuid4().hex[:6]}"
    created = await client.post(
        "/api/v1/users",
        json={"username": alice, "password": "correct horse battery", "role": "editor"},
    )
    assert created.status_code == 201, created.text
    await deploy(client, _flow(ns, message="one"))
    async with httpx.AsyncClient(
        base_url=client.base_url, timeout=60, auth=(alice, "correct horse battery")
    ) as as_alice:
        changed = await as_alice.put(
            f"/api/v1/flows/{ns}/hello",
            content=_flow(ns, message="two"),
            headers={**YAML, "X-Tiercel-Reason": "ticket OPS-42: louder greeting"},
        )
    assert changed.status_code == 200, changed.text

    found = await _audit(client, 1, actor=f"user:{alice}", kind="flow", namespace=ns)
    [row] = found["results"]
    assert row["action"] == "update" and row["type"] == "FlowUpdated"
    assert (row["resourceId"], row["namespace"]) == ("hello", ns)
    assert row["clientAddress"] == "127.0.0.1"
    assert row["reason"] == "ticket OPS-42: louder greeting"
    assert row["details"]["revision"] == 2 and "source" not in row["details"]

    diff = await client.get(row["links"]["diff"])
    assert diff.status_code == 200, diff.text
    body = diff.json()
    assert body["from"]["revision"] == 1 and body["from"]["actor"] == "user:admin"
    assert body["to"]["actor"] == f"user:{alice}"
    assert body["to"]["reason"] == "ticket OPS-42: louder greeting"
    assert "-    message: one\n" in body["diff"] and "+    message: two\n" in body["diff"]
    assert body["diff"].startswith(f"--- {ns}.hello revision 1\n+++ {ns}.hello revision 2\n")

    unknown = await client.get(f"/api/v1/flows/{ns}/hello/revisions/1/diff/7")
    assert unknown.status_code == 404
    assert "no revision 7" in unknown.json()["message"] and "1, 2" in unknown.json()["message"]
    bad = await client.get(f"/api/v1/flows/{ns}/hello/revisions/one/diff/2")
    assert bad.status_code == 400
    nothing = await client.get(f"/api/v1/flows/{ns}/nope/revisions/1/diff/2")
    assert nothing.status_code == 404 and "does not exist" in nothing.json()["message"]


async def test_audit_search_filters_pages_and_exports_json_lines(
    client: httpx.AsyncClient,
) -> None:
    ns = _ns()
    start = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)
    await deploy(client, _flow(ns, message="one"))
    await deploy(client, _flow(ns, "other"))
    put = await client.put(
        f"/api/v1/flows/{ns}/hello", content=_flow(ns, message="two"), headers=YAML
    )
    assert put.status_code == 200
    runs = [(await _run(client, ns, "hello"))["id"] for _ in range(2)]
    kv = await client.put(
        f"/api/v1/namespaces/{ns}/kv/colour?reason=repaint",
        content=b'"blue"',
        headers={"Content-Type": "application/json"},
    )
    assert kv.status_code < 300, kv.text

    everything = await _audit(client, 6, namespace=ns)
    rows = everything["results"]
    assert everything["total"] == 6 and everything["totalIsEstimate"] is False
    positions = [r["position"] for r in rows]
    assert positions == sorted(positions, reverse=True)  # newest first
    assert [(r["kind"], r["action"]) for r in rows] == [
        ("kv", "set"),
        ("execution", "create"),
        ("execution", "create"),
        ("flow", "update"),
        ("flow", "create"),
        ("flow", "create"),
    ]
    assert rows[0]["reason"] == "repaint" and rows[0]["resourceId"] == "colour"
    assert all(r["actor"] == "user:admin" and r["clientAddress"] == "127.0.0.1" for r in rows)

    async def search(**params: Any) -> list[dict[str, Any]]:
        response = await client.get("/api/v1/audit", params={"namespace": ns, **params})
        assert response.status_code == 200, response.text
        return list(response.json()["results"])

    executions = await search(kind="execution")
    assert sorted(r["resourceId"] for r in executions) == sorted(runs)
    assert executions[0]["links"]["timeline"] == f"/api/v1/executions/{runs[1]}/timeline"
    assert [r["resourceId"] for r in await search(kind="execution", resourceId=runs[0])] == [
        runs[0]
    ]
    assert [r["type"] for r in await search(action="update")] == ["FlowUpdated"]
    assert len(await search(type="FlowCreated")) == 2
    assert len(await search(startDate=start.isoformat())) == 6
    assert await search(endDate=start.isoformat()) == []
    later = (dt.datetime.now(dt.UTC) + dt.timedelta(minutes=1)).isoformat()
    assert await search(startDate=later) == []
    assert await search(namespace=f"{ns}x") == []  # a sibling is not a child

    page_one = (await client.get("/api/v1/audit", params={"namespace": ns, "size": 4})).json()
    page_two = (
        await client.get("/api/v1/audit", params={"namespace": ns, "size": 4, "page": 2})
    ).json()
    assert [r["position"] for r in page_one["results"] + page_two["results"]] == positions
    assert page_one["total"] == 6
    after = await search(size=4, before=page_one["next"])
    assert [r["position"] for r in after] == positions[4:]

    export = await client.get("/api/v1/audit/export", params={"namespace": ns})
    assert export.status_code == 200
    assert export.headers["content-type"].startswith("application/x-ndjson")
    lines = [orjson.loads(line) for line in export.text.splitlines()]
    assert lines == rows
    negotiated = await client.get(
        "/api/v1/audit", params={"namespace": ns}, headers={"Accept": "application/x-ndjson"}
    )
    assert [orjson.loads(line) for line in negotiated.text.splitlines()] == rows

    for params in ({"startDate": "soon"}, {"size": "0"}, {"before": "x"}, {"actor": "a" * 600}):
        refused = await client.get("/api/v1/audit", params=params)
        assert refused.status_code == 400, (params, refused.text)

    # The OpenAPI document lists the filters, and asOf on the routes that take it.
    document = yaml.safe_load((await client.get("/api/v1/openapi.yml")).text)
    listed = {p["name"] for p in document["paths"]["/api/v1/audit"]["get"]["parameters"]}
    assert {"kind", "resourceId", "namespace", "actor", "action", "startDate", "endDate"} <= listed
    for path in ("/api/v1/executions/{execution_id}", "/api/v1/flows/{namespace}/{flow_id}"):
        assert "asOf" in {p["name"] for p in document["paths"][path]["get"]["parameters"]}


async def test_audit_rows_a_namespace_scoped_viewer_sees_and_a_too_long_reason(
    client: httpx.AsyncClient,
) -> None:
    ns, other = _ns(), _ns()
    await deploy(client, _flow(ns))
    await deploy(client, _flow(other))
    await _audit(client, 1, namespace=other)
    token = await _token(client, "viewer", [ns])
    async with httpx.AsyncClient(
        base_url=client.base_url, headers=_bearer(token), timeout=60
    ) as viewer:
        seen = (await viewer.get("/api/v1/audit")).json()["results"]
        assert seen and {r["namespace"] for r in seen} == {ns}
        elsewhere = await viewer.get("/api/v1/audit", params={"namespace": other})
        assert elsewhere.json()["results"] == []
        # Accounts belong to no namespace: only an admin reaching every namespace sees them.
        tokens = await _audit(client, 1, kind="token", action="create")
        assert tokens["results"][0]["type"] == "TokenCreated"
        assert (await viewer.get("/api/v1/audit?kind=token")).json()["results"] == []

    refused = await client.put(
        f"/api/v1/flows/{ns}/hello",
        content=_flow(ns, message="two"),
        headers={**YAML, "X-Tiercel-Reason": "x" * 1001},
    )
    assert refused.status_code == 400 and "reason" in refused.json()["message"]
    unchanged = (await client.get(f"/api/v1/flows/{ns}/hello")).json()
    assert unchanged["revision"] == 1


async def test_commands_without_authentication_are_recorded_as_anonymous(
    database_url: str, nursery: trio.Nursery, tmp_path: Any
) -> None:
    from engine.server import run_server

    ctx = await nursery.start(
        lambda task_status: run_server(
            database_url,
            ("webserver",),
            host="127.0.0.1",
            port=0,
            data_dir=tmp_path,
            auth_enabled=False,
            task_status=task_status,
        )
    )
    ns = _ns()
    async with httpx.AsyncClient(base_url=ctx.extra["urls"][0], timeout=30) as http:
        await deploy(http, _flow(ns))
        started = await http.post(f"/api/v1/executions/{ns}/hello?reason=smoke")
        assert started.status_code == 200, started.text
        events = (await http.get(f"/api/v1/executions/{started.json()['id']}/events")).json()
        diff = (await http.get(f"/api/v1/flows/{ns}/hello/revisions/1/diff/1")).json()
    assert events[0]["actor"] == "anonymous"
    assert diff["to"]["actor"] == "anonymous" and diff["diff"] == ""
    assert diff["to"]["clientAddress"] == "127.0.0.1"
