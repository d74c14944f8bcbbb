"""The executions search's trigger, parent and condition-group filters, its sort on every
column, the CLI query syntax, and the execution statistics, through a real server."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

import httpx
import pytest
import trio

from engine.errors import InvalidRequest
from projections.executions import parse_query, search
from tests.api.test_auth import _bearer, _token
from tests.conftest import deploy

YAML = {"Content-Type": "application/x-yaml"}
SEARCH = "/api/v1/executions/search"
KEY = "groups-0123456789abcdef0123456789"
SUBFLOW = "io.kestra.plugin.core.flow.Subflow"
WEBHOOK = "io.kestra.plugin.core.trigger.Webhook"


def _ns() -> str:
    return f"test.groups.n{uuid.uuid4().hex[:8]}"


def _log(task_id: str = "say") -> str:
    return f"  - id: {task_id}\n    type: io.kestra.plugin.core.log.Log\n    message: hi\n"


def _flows(ns: str) -> list[str]:
    return [
        f"id: hello\nnamespace: {ns}\ntasks:\n{_log()}",
        f"id: two\nnamespace: {ns}.sub\ntasks:\n{_log('a')}{_log('b')}"
        "  - id: nap\n    type: io.kestra.plugin.core.flow.Sleep\n    duration: PT0.3S\n",
        f"id: broken\nnamespace: {ns}\ntasks:\n"
        "  - id: boom\n    type: io.kestra.plugin.core.execution.Fail\n",
        f"id: hooked\nnamespace: {ns}\ntasks:\n{_log()}"
        f"triggers:\n  - id: hook\n    type: {WEBHOOK}\n    key: {KEY}\n",
        f"id: parent\nnamespace: {ns}\ntasks:\n"
        f"  - id: start_child\n    type: {SUBFLOW}\n    namespace: {ns}\n    flowId: hello\n",
        f"id: gate\nnamespace: {ns}\ntasks:\n"
        "  - id: wait\n    type: io.kestra.plugin.core.flow.Pause\n",
    ]


async def _run(client: httpx.AsyncClient, ns: str, flow_id: str, labels: str = "") -> str:
    query = f"?wait=true&labels={labels}" if labels else "?wait=true"
    answer = await client.post(f"/api/v1/executions/{ns}/{flow_id}{query}")
    assert answer.status_code == 200, answer.text
    return str(answer.json()["id"])


async def _search(client: httpx.AsyncClient, params: Any) -> dict[str, Any]:
    answer = await client.get(SEARCH, params=params)
    assert answer.status_code == 200, (params, answer.text)
    return dict(answer.json())


async def _ids(client: httpx.AsyncClient, params: Any) -> list[str]:
    return [e["id"] for e in (await _search(client, params))["results"]]


async def _settled(client: httpx.AsyncClient, ns: str, want: dict[str, str]) -> list[Any]:
    """The search rows of `ns` once each execution of `want` shows its state there."""
    with trio.fail_after(30):
        while True:
            rows = (await _search(client, {"namespace": ns, "size": 100}))["results"]
            shown = {r["id"]: r["state"]["current"] for r in rows}
            if all(shown.get(x) == s for x, s in want.items()):
                return list(rows)
            await trio.sleep(0.05)


@pytest.fixture
async def corpus(client: httpx.AsyncClient) -> dict[str, Any]:
    """A namespace with executions of every kind: manual ones (with labels), a failure, a
    subflow and its parent, a webhook's, a paused one, and one of a second flow revision."""
    ns = _ns()
    for source in _flows(ns):
        await deploy(client, source)
    x: dict[str, Any] = {"ns": ns}
    x["hello"] = await _run(client, ns, "hello", "env:prod")
    x["two"] = await _run(client, f"{ns}.sub", "two", "env:dev")
    x["broken"] = await _run(client, ns, "broken", "env:prod")
    hooked = await client.post(f"/api/v1/executions/webhook/{ns}/hooked/{KEY}", json={})
    assert hooked.status_code == 200, hooked.text
    x["hooked"] = hooked.json()["id"]
    x["parent"] = await _run(client, ns, "parent")
    gate = await client.post(f"/api/v1/executions/{ns}/gate")
    assert gate.status_code == 200, gate.text
    x["gate"] = gate.json()["id"]
    # A second revision of hello: executions of flow revision 2.
    second = f"id: hello\nnamespace: {ns}\ntasks:\n{_log()}{_log('again')}"
    updated = await client.put(f"/api/v1/flows/{ns}/hello", content=second, headers=YAML)
    assert updated.status_code == 200, updated.text
    x["hello2"] = await _run(client, ns, "hello", "env:dev")
    want = {x[k]: "SUCCESS" for k in ("hello", "two", "hooked", "parent", "hello2")}
    want |= {x["broken"]: "FAILED", x["gate"]: "PAUSED"}
    rows = await _settled(client, ns, want)
    x["child"] = next(r["id"] for r in rows if r.get("parentId") == x["parent"])
    x["rows"] = await _settled(client, ns, {**want, x["child"]: "SUCCESS"})
    return x


async def test_trigger_type_trigger_id_parent_and_child_filters_find_their_executions(
    client: httpx.AsyncClient, corpus: dict[str, Any]
) -> None:
    ns, child, parent = corpus["ns"], corpus["child"], corpus["parent"]
    base = {"namespace": ns}
    assert await _ids(client, {**base, "filters[trigger][EQUALS]": SUBFLOW}) == [child]
    assert await _ids(client, {**base, "trigger": WEBHOOK}) == [corpus["hooked"]]
    assert set(await _ids(client, {**base, "filters[trigger][IN]": f"{SUBFLOW},{WEBHOOK}"})) == {
        child,
        corpus["hooked"],
    }
    others = await _ids(client, {**base, "filters[trigger][NOT_EQUALS]": SUBFLOW})
    assert child not in others and len(others) == len(corpus["rows"]) - 1
    assert await _ids(client, {**base, "filters[triggerId][EQUALS]": "hook"}) == [corpus["hooked"]]
    assert await _ids(client, {**base, "triggerId": "start_child"}) == [child]
    assert await _ids(client, {"filters[triggerExecutionId][EQUALS]": parent}) == [child]
    assert await _ids(client, {"triggerExecutionId": parent}) == [child]
    assert await _ids(client, {"filters[parentId][EQUALS]": parent}) == [child]
    assert await _ids(client, {**base, "childFilter": "CHILD"}) == [child]
    main = await _ids(client, {**base, "filters[childFilter][EQUALS]": "MAIN"})
    assert child not in main and len(main) == len(corpus["rows"]) - 1
    # Exclusive filters answer nothing, without a query.
    assert await _ids(client, {"parentId": parent, "filters[childFilter][EQUALS]": "MAIN"}) == []
    for params, named in (
        ({"filters[trigger][REGEX]": "x"}, "REGEX"),
        ({"childFilter": "SOME"}, "CHILD"),
        ({"filters[triggerExecutionId][IN]": "a,b"}, "triggerExecutionId"),
    ):
        answer = await client.get(SEARCH, params=params)
        assert answer.status_code == 400, (params, answer.text)
        assert named in answer.json()["message"]


async def test_condition_groups_join_by_or_and_a_quick_interval_applies_to_every_group(
    client: httpx.AsyncClient, corpus: dict[str, Any]
) -> None:
    ns = corpus["ns"]
    failed_or_dev = {
        "filters[namespace][PREFIX]": ns,
        "filters[timeRange][EQUALS]": "PT1H",
        "filters[or][0][state][EQUALS]": "FAILED",
        "filters[or][1][labels][EQUALS][env]": "dev",
    }
    found = await _search(client, failed_or_dev)
    # Newest first, each once.
    assert [e["id"] for e in found["results"]] == [
        corpus["hello2"],
        corpus["broken"],
        corpus["two"],
    ]
    assert found["total"] == 3
    # A group's filters all apply: group 1 is now dev executions of flow `two` only.
    narrowed = {**failed_or_dev, "filters[or][1][flowId][EQUALS]": "two"}
    assert await _ids(client, narrowed) == [corpus["broken"], corpus["two"]]
    # An execution matching two groups is listed once; pages walk them without a repeat.
    overlapping = {
        "namespace": ns,
        "filters[or][0][labels][EQUALS][env]": "prod",
        "filters[or][1][flowId][EQUALS]": "hello",
        "size": 1,
    }
    pages = [await _search(client, {**overlapping, "page": p}) for p in (1, 2, 3, 4)]
    walked = [e["id"] for page in pages for e in page["results"]]
    hello_runs = {corpus["hello"], corpus["hello2"], corpus["child"]}
    assert set(walked) == hello_runs | {corpus["broken"]} and len(walked) == 4
    assert all(page["total"] == 4 for page in pages)
    # The interval and every other filter outside the groups narrow all of them: started
    # after the failure, only the second revision's run is left of the groups' executions.
    broken = next(r for r in corpus["rows"] if r["id"] == corpus["broken"])
    later = {
        **failed_or_dev,
        "filters[startDate][GREATER_THAN]": broken["state"]["startDate"],
    }
    assert await _ids(client, later) == [corpus["hello2"]]
    # An AND group is a plain filter; a group no execution can match drops out of the OR.
    assert await _ids(
        client,
        {
            "namespace": ns,
            "filters[and][0][state][EQUALS]": "FAILED",
            "filters[or][0][flowId][EQUALS]": "broken",
            "filters[or][1][state][IN]": "SUCCESS",
            "filters[or][1][state][NOT_IN]": "SUCCESS",
        },
    ) == [corpus["broken"]]
    nested = await client.get(SEARCH, params={"filters[or][0][or][0][state][EQUALS]": "FAILED"})
    assert nested.status_code == 400 and "do not nest" in nested.json()["message"]


def _sort_value(row: dict[str, Any], field: str) -> Any:
    state = row["state"]
    if field == "state.duration":
        if "endDate" not in state:
            return None
        return dt.datetime.fromisoformat(state["endDate"]) - dt.datetime.fromisoformat(
            state["startDate"]
        )
    if field.startswith("state."):
        return state.get(field.split(".")[1])
    return row[field]


def _expected(rows: list[dict[str, Any]], field: str) -> list[str]:
    """Ascending by `field`, running ones (no end) last, ties newest first then by id
    descending: the order the search promises."""
    by_start = sorted(rows, key=lambda r: (r["state"]["startDate"], r["id"]), reverse=True)
    if field == "state.startDate":
        return [r["id"] for r in reversed(by_start)]
    if field == "id":
        return sorted(r["id"] for r in rows)
    ended = [r for r in by_start if _sort_value(r, field) is not None]
    running = [r for r in by_start if _sort_value(r, field) is None]
    ordered = sorted(ended, key=lambda r: _sort_value(r, field))  # stable: ties keep order
    return [r["id"] for r in ordered + running]


def _assert_ordered(rows: list[dict[str, Any]], got: list[str], field: str) -> None:
    by_id = {r["id"]: r for r in rows}
    assert sorted(got) == sorted(by_id)
    values = [_sort_value(by_id[i], field) for i in got]
    ended = [v for v in values if v is not None]
    assert values[: len(ended)] == ended  # running ones last
    if field == "state.endDate":
        ended = [dt.datetime.fromisoformat(v) for v in ended]
    ms = dt.timedelta(milliseconds=1)
    assert all(a <= b + ms for a, b in zip(ended, ended[1:], strict=False)), (field, values)


async def test_sort_by_each_column_ascending_and_descending_with_stable_pages(
    client: httpx.AsyncClient, corpus: dict[str, Any]
) -> None:
    ns, rows = corpus["ns"], corpus["rows"]
    assert {r["flowRevision"] for r in rows} == {1, 2}
    assert len({r["taskRunCount"] for r in rows}) >= 3
    for field in (
        "id",
        "namespace",
        "flowId",
        "state.current",
        "state.startDate",
        "state.endDate",
        "state.duration",
        "flowRevision",
        "taskRunCount",
    ):
        got = await _ids(client, {"namespace": ns, "sort": f"{field}:asc", "size": 100})
        if field in ("state.endDate", "state.duration"):
            # The database orders by microseconds, the API shows milliseconds: check the
            # order within a millisecond, running executions last.
            _assert_ordered(rows, got, field)
            ascending = got
        else:
            ascending = _expected(rows, field)
        assert got == ascending, field
        got = await _ids(client, {"namespace": ns, "sort": f"{field}:desc", "size": 100})
        assert got == list(reversed(ascending)), field
        # Page by page, the same order, and the total on each page.
        paged: list[str] = []
        for page in range(1, len(rows) + 1):
            answer = await _search(
                client, {"namespace": ns, "sort": f"{field}:asc", "size": 2, "page": page}
            )
            assert answer["total"] == len(rows)
            paged += [e["id"] for e in answer["results"]]
            if not answer["results"]:
                break
        assert paged == ascending, field
    # Several states are read state by state and merged: the sort holds across them.
    two_states = {"namespace": ns, "state": "SUCCESS,FAILED", "size": 100}
    got = await _ids(client, {**two_states, "sort": "flowId:asc"})
    assert got == [i for i in _expected(rows, "flowId") if i != corpus["gate"]]
    for params, named in (
        ({"sort": "labels:asc"}, "state.startDate"),
        ({"sort": "flowId:sideways"}, "flowId"),
        ({"sort": ["flowId:asc", "id:asc"]}, "one column"),
        ({"sort": "flowId:asc", "after": "abc"}, "after"),
    ):
        answer = await client.get(SEARCH, params=params)
        assert answer.status_code == 400, (params, answer.text)
        assert named in answer.json()["message"]


async def test_a_cli_query_finds_what_the_same_api_filters_find(
    server: Any, client: httpx.AsyncClient, corpus: dict[str, Any]
) -> None:
    from api.execution_filters import read_filters

    ns = corpus["ns"]
    # Condition groups in the query: the same executions as the API's filters[or][N].
    grouped = parse_query(f"namespace:{ns} timeRange:PT1H (state:FAILED OR labels:env:dev)")
    page = await server.db.run(lambda conn: search(conn, "true", [], grouped, page=1, size=100))
    assert [r["id"] for r in page.rows] == [corpus["hello2"], corpus["broken"], corpus["two"]]
    query = parse_query(f"state:FAILED state:SUCCESS namespace:{ns} labels:env:prod timeRange:PT1H")
    api = read_filters(
        [
            ("state", "FAILED,SUCCESS"),
            ("namespace", ns),
            ("labels", "env:prod"),
            ("timeRange", "PT1H"),
        ],
        dt.datetime.now(dt.UTC),
    ).search
    assert (query.states, query.namespace, query.labels) == (api.states, api.namespace, api.labels)
    assert query.start_date is not None and api.start_date is not None
    assert abs(query.start_date - api.start_date) < dt.timedelta(seconds=5)
    parsed = parse_query(
        f'trigger:{SUBFLOW} parentId:{corpus["parent"]} namespace={ns} q:"hello world" extra'
    )
    assert parsed.trigger_types == [SUBFLOW] and parsed.parent_id == corpus["parent"]
    assert parsed.namespace == ns and parsed.namespace_exact
    assert parsed.q == "hello world extra"
    for bad in (
        "colour:red",
        "state:DONE",
        "startDate:yesterday",
        "labels:novalue",
        "flowId:",
        "(state:FAILED",
        "state:FAILED OR state:KILLED",
    ):
        with pytest.raises(InvalidRequest) as refused:
            parse_query(f"namespace:{ns} {bad}")
        assert bad in str(refused.value)


async def _stats(client: httpx.AsyncClient, **params: Any) -> list[dict[str, Any]]:
    answer = await client.get("/api/v1/executions/stats/daily", params=params)
    assert answer.status_code == 200, answer.text
    return list(answer.json())


async def test_daily_stats_count_executions_by_current_state_and_their_durations(
    client: httpx.AsyncClient, corpus: dict[str, Any]
) -> None:
    ns, rows = corpus["ns"], corpus["rows"]
    [today] = await _stats(client, namespace=ns, startDate=rows[0]["state"]["startDate"])
    day = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT00:00:00.000Z")
    assert today["startDate"] == day and today["groupBy"] == "day"
    counts = {s: n for s, n in today["executionCounts"].items() if n}
    assert counts == {"SUCCESS": len(rows) - 2, "FAILED": 1, "PAUSED": 1}
    # Every state is named, 0 when none.
    assert today["executionCounts"]["KILLED"] == 0
    ended = [r for r in rows if "endDate" in r["state"]]
    assert today["duration"]["count"] == len(ended)
    total = sum(
        (
            dt.datetime.fromisoformat(r["state"]["endDate"])
            - dt.datetime.fromisoformat(r["state"]["startDate"])
        ).total_seconds()
        for r in ended
    )
    # The API shows dates to the millisecond; the rollup sums whole milliseconds.
    assert abs(today["duration"]["sum"] - total) <= 0.002 * len(ended)
    assert today["duration"]["avg"] == pytest.approx(today["duration"]["sum"] / len(ended))

    # The paused execution resumed: it moves from PAUSED to SUCCESS in the counts.
    assert (await client.post(f"/api/v1/executions/{corpus['gate']}/resume", json={})).is_success
    with trio.fail_after(30):
        while True:
            today = (await _stats(client, namespace=ns))[-1]
            if today["executionCounts"]["PAUSED"] == 0:
                break
            await trio.sleep(0.05)
    assert today["executionCounts"]["SUCCESS"] == len(rows) - 1
    assert today["duration"]["count"] == len(rows)

    # Kestra's route, a flow of the namespace; a range of days lists each day, empty too.
    week_ago = (dt.datetime.now(dt.UTC) - dt.timedelta(days=6)).isoformat()
    answer = await client.post(
        "/api/v1/stats/executions/daily",
        json={"namespace": ns, "flowId": "hello", "startDate": week_ago},
    )
    assert answer.status_code == 200, answer.text
    days = answer.json()
    assert len(days) == 7 and days[-1]["startDate"] == day
    assert sum(sum(d["executionCounts"].values()) for d in days) == 3  # two runs and a subflow
    tenant = await client.post(
        "/api/v1/main/stats/executions/daily",
        json={"namespace": ns, "flowId": "hello", "startDate": week_ago},
    )
    assert tenant.status_code == 200 and tenant.json() == days
    hours = await _stats(client, namespace=f"{ns}.sub", groupBy="hour")
    assert sum(h["executionCounts"]["SUCCESS"] for h in hours) == 1

    # A token scoped to the sub-namespace counts only its executions.
    token = await _token(client, "viewer", [f"{ns}.sub"])
    async with httpx.AsyncClient(
        base_url=client.base_url, headers=_bearer(token), timeout=60
    ) as viewer:
        scoped = await viewer.get("/api/v1/executions/stats/daily", params={"namespace": ns})
        assert scoped.status_code == 200, scoped.text
        assert sum(sum(d["executionCounts"].values()) for d in scoped.json()) == 1
    for params, named in (
        ({"startDate": "yesterday"}, "startDate"),
        ({"groupBy": "week"}, "groupBy"),
        ({"state": "DONE"}, "DONE"),
        ({"startDate": "2000-01-01T00:00:00Z"}, "narrow"),
        ({"colour": "red"}, "colour"),
    ):
        answer = await client.get("/api/v1/executions/stats/daily", params=params)
        assert answer.status_code == 400, (params, answer.text)
        assert named in answer.json()["message"]
    bad = await client.post("/api/v1/stats/executions/daily", json={"namespace": 3})
    assert bad.status_code == 400 and "namespace" in bad.json()["message"]
