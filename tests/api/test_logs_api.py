"""The logs read model through a real server, as Kestra's clients call it: the search with
each filter and full text, the histogram, an execution's lines, following them as they are
logged, and downloading them."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson
import pytest
import trio

from tests.api.test_auth import _bearer, _token
from tests.conftest import deploy

SEARCH = "/api/v1/logs/search"


def _ns() -> str:
    return f"test.logs.n{uuid.uuid4().hex[:8]}"


def _levels_flow(namespace: str, word: str) -> str:
    tasks = "".join(
        f"  - id: {task}\n    type: io.kestra.plugin.core.log.Log\n    level: {level}\n"
        f"    message: {message}\n"
        for task, level, message in (
            ("detail", "DEBUG", "debug detail of the run"),
            ("greet", "INFO", f"hello {word} from {{{{ flow.id }}}}"),
            ("disk", "WARN", "disk almost full"),
            ("boom", "ERROR", "the upload failed"),
        )
    )
    return f"id: levels\nnamespace: {namespace}\ntasks:\n{tasks}"


def _script_flow(namespace: str, commands: list[str], flow_id: str = "script") -> str:
    lines = "".join(f"      - {c}\n" for c in commands)
    return (
        f"id: {flow_id}\nnamespace: {namespace}\ntasks:\n  - id: run\n"
        f"    type: io.kestra.plugin.scripts.shell.Commands\n    commands:\n{lines}"
    )


async def _run(client: httpx.AsyncClient, namespace: str, flow_id: str, wait: bool = True) -> str:
    response = await client.post(f"/api/v1/executions/{namespace}/{flow_id}?wait={wait}")
    assert response.is_success, response.text
    return str(response.json()["id"])


async def _search(client: httpx.AsyncClient, **params: Any) -> dict[str, Any]:
    answer = await client.get(SEARCH, params=params)
    assert answer.status_code == 200, answer.text
    return dict(answer.json())


async def _messages(client: httpx.AsyncClient, **params: Any) -> list[str]:
    return sorted(
        line["message"] for line in (await _search(client, size=100, **params))["results"]
    )


async def test_log_search_filters_by_level_namespace_flow_execution_task_time_and_text(
    client: httpx.AsyncClient,
) -> None:
    ns = _ns()
    word = f"quartz{uuid.uuid4().hex[:6]}"
    await deploy(client, _levels_flow(ns, word))
    await deploy(client, _script_flow(f"{ns}.etl", ["echo line one", "echo line two"]))
    levels = await _run(client, ns, "levels")
    script = await _run(client, f"{ns}.etl", "script")
    with trio.fail_after(15):
        while (await _search(client, namespace=ns))["total"] < 6:
            await trio.sleep(0.05)

    everything = await _search(client, namespace=ns, size=100)
    assert everything["total"] == 6 and not everything["totalIsEstimate"]
    line = next(r for r in everything["results"] if r["taskId"] == "greet")
    assert line["namespace"] == ns and line["flowId"] == "levels"
    assert line["executionId"] == levels and line["level"] == "INFO"

    # Minimum level, in both forms (Kestra's level filter is a minimum too).
    assert await _messages(client, namespace=ns, minLevel="WARN") == [
        "disk almost full",
        "the upload failed",
    ]
    assert await _messages(client, **{"filters[namespace][PREFIX]": ns, "minLevel": "error"}) == [
        "the upload failed"
    ]
    assert await _messages(client, namespace=ns, **{"filters[level][EQUALS]": "WARNING"}) == [
        "disk almost full",
        "the upload failed",
    ]
    # The namespace and those under it, or that one only.
    assert await _messages(client, **{"filters[namespace][EQUALS]": f"{ns}.etl"}) == [
        "line one",
        "line two",
    ]
    assert len(await _messages(client, **{"filters[namespace][EQUALS]": ns})) == 4
    assert (await _search(client, namespace=f"{ns}.et"))["total"] == 0
    # Flow, execution, task.
    assert len(await _messages(client, namespace=ns, flowId="script")) == 2
    assert len(await _messages(client, executionId=levels)) == 4
    assert await _messages(client, **{"filters[executionId][EQUALS]": script}) == [
        "line one",
        "line two",
    ]
    assert await _messages(client, namespace=ns, taskId="disk") == ["disk almost full"]
    assert (
        await _search(
            client, namespace=ns, flowId="levels", **{"filters[flowId][EQUALS]": "script"}
        )
    )["total"] == 0
    assert (await _search(client, namespace=ns, triggerId="schedule"))["total"] == 0
    # Time: every line is from the last hour, none is from the future or last year.
    assert (await _search(client, namespace=ns, timeRange="PT1H"))["total"] == 6
    assert (await _search(client, namespace=ns, startDate="2999-01-01T00:00:00Z"))["total"] == 0
    assert (await _search(client, namespace=ns, endDate="2001-01-01T00:00:00Z"))["total"] == 0
    assert (
        await _search(
            client,
            namespace=ns,
            **{
                "filters[startDate][GREATER_THAN_OR_EQUAL_TO]": "2001-01-01T00:00:00Z",
                "filters[endDate][LESS_THAN_OR_EQUAL_TO]": "2999-01-01T00:00:00Z",
            },
        )
    )["total"] == 6

    # Full text: words of the message, as prefixes, and the ids a line belongs to.
    assert await _messages(client, q=word) == [f"hello {word} from levels"]
    assert await _messages(client, q=word[:-2].upper()) == [f"hello {word} from levels"]
    assert await _messages(client, **{"filters[q][EQUALS]": f"{word} levels"}) == [
        f"hello {word} from levels"
    ]
    assert await _messages(client, q=f"{word} nowhere") == []
    assert len(await _messages(client, q=levels)) == 4
    assert await _messages(client, q=f"{script} two") == ["line two"]
    assert await _messages(client, namespace=ns, q="upload fail") == ["the upload failed"]
    assert len(await _messages(client, q=f"{ns}.etl")) == 2

    # Paging: pages of two, newest first, or oldest first.
    first = await _search(client, namespace=ns, size=2, page=1)
    second = await _search(client, namespace=ns, size=2, page=2)
    assert first["total"] == second["total"] == 6
    newest = [r["timestamp"] for r in first["results"] + second["results"]]
    assert newest == sorted(newest, reverse=True)
    oldest = await _search(client, namespace=ns, size=100, sort="timestamp:asc")
    assert [r["timestamp"] for r in oldest["results"]] == sorted(
        r["timestamp"] for r in everything["results"]
    )
    assert (await _search(client, namespace=ns, size=4, page=3))["results"] == []
    # Under the tenant prefix Kestra's clients send.
    tenant = await client.get("/api/v1/main/logs/search", params={"namespace": ns, "size": 100})
    assert tenant.json() == everything


async def test_bad_log_search_parameters_get_a_400_naming_them(
    client: httpx.AsyncClient,
) -> None:
    for params, named in (
        ({"minLevel": "LOUD"}, "minLevel"),
        ({"size": "0"}, "size"),
        ({"size": "100000"}, "size"),
        ({"page": "x"}, "page"),
        ({"page": "0"}, "page"),
        ({"page": "100000", "size": "1000"}, "page"),
        ({"sort": "message:desc"}, "sort"),
        ({"startDate": "yesterday"}, "startDate"),
        ({"timeRange": "an hour"}, "timeRange"),
        ({"q": "!!!"}, "q"),
        ({"q": "x" * 501}, "q"),
        ({"colour": "red"}, "colour"),
        ({"filters[colour][EQUALS]": "red"}, "filters[colour][EQUALS]"),
        ({"filters[namespace][REGEX]": "a.*"}, "filters[namespace][REGEX]"),
        ({"filters[level][EQUALS]": "LOUD"}, "filters[level][EQUALS]"),
        ({"filters[q]": "x"}, "filters[q]"),
    ):
        for path in (SEARCH, "/api/v1/logs/histogram"):
            if path.endswith("histogram") and named in ("page", "size", "sort"):
                continue
            answer = await client.get(path, params=params)
            assert answer.status_code == 400, (path, params, answer.text)
            assert named in answer.json()["message"], (params, answer.text)
    for params, named in (({"minLevel": "LOUD"}, "minLevel"), ({"attempt": "x"}, "attempt")):
        ns = _ns()
        await deploy(client, _script_flow(ns, ["echo hi"]))
        xid = await _run(client, ns, "script")
        for tail in ("", "/download"):
            answer = await client.get(f"/api/v1/logs/{xid}{tail}", params=params)
            assert answer.status_code == 400 and named in answer.json()["message"], answer.text
        break
    assert (await client.get("/api/v1/logs/doesNotExist/download")).status_code == 404
    assert (await client.get("/api/v1/logs/doesNotExist/follow")).status_code == 404


async def test_histogram_counts_each_level_per_bucket_and_adds_up_to_the_search(
    client: httpx.AsyncClient,
) -> None:
    ns = _ns()
    await deploy(client, _levels_flow(ns, "histo"))
    await deploy(client, _script_flow(f"{ns}.sub", ["echo a", "echo b", "echo c >&2"]))
    for _ in range(2):
        await _run(client, ns, "levels")
    await _run(client, f"{ns}.sub", "script")
    with trio.fail_after(15):
        while (await _search(client, namespace=ns))["total"] < 11:
            await trio.sleep(0.05)

    for params in (
        {"namespace": ns},
        {"namespace": ns, "timeRange": "PT1H"},
        {"namespace": ns, "minLevel": "WARN", "timeRange": "P1D"},
        {"namespace": ns, "q": "disk"},
        {"filters[namespace][EQUALS]": f"{ns}.sub", "timeRange": "PT5M"},
    ):
        histogram = (await client.get("/api/v1/logs/histogram", params=params)).json()
        total = (await _search(client, **params))["total"]
        assert histogram["total"] == total > 0, (params, histogram)
        assert sum(b["total"] for b in histogram["buckets"]) == total
        assert all(b["total"] == sum(b["counts"].values()) for b in histogram["buckets"])
        assert 1 <= len(histogram["buckets"]) <= 121
        dates = [b["date"] for b in histogram["buckets"]]
        assert dates == sorted(dates)
    # The bucket size follows the range: at most 120 buckets of a round size.
    hour = (
        await client.get("/api/v1/logs/histogram", params={"namespace": ns, "timeRange": "PT1H"})
    ).json()
    assert hour["interval"] == "PT30S" and len(hour["buckets"]) in (120, 121)
    day = (
        await client.get("/api/v1/logs/histogram", params={"namespace": ns, "timeRange": "P1D"})
    ).json()
    assert day["interval"] == "PT30M"
    levels = {}
    for bucket in hour["buckets"]:
        for level, n in bucket["counts"].items():
            levels[level] = levels.get(level, 0) + n
    assert levels == {"DEBUG": 2, "INFO": 4, "WARN": 2, "ERROR": 3}
    week = await client.get(
        "/api/v1/logs/histogram",
        params={
            "namespace": ns,
            "startDate": "2026-01-01T00:00:00Z",
            "endDate": "2026-01-08T00:00:00Z",
        },
    )
    assert week.json()["interval"] == "PT3H" and week.json()["total"] == 0


def _around_now(before: dt.timedelta, after: dt.timedelta) -> dict[str, str]:
    now = dt.datetime.now(dt.UTC)
    return {
        "startDate": (now - before).isoformat().replace("+00:00", "Z"),
        "endDate": (now + after).isoformat().replace("+00:00", "Z"),
    }


async def _histogram_matches_search(client: httpx.AsyncClient, params: dict[str, Any]) -> int:
    histogram = (await client.get("/api/v1/logs/histogram", params=params)).json()
    total = (await _search(client, **params))["total"]
    assert histogram["total"] == total, (params, histogram)
    assert sum(b["total"] for b in histogram["buckets"]) == total
    assert all(
        b["total"] == sum(b["counts"].values()) > 0 or not b["counts"] for b in histogram["buckets"]
    )
    return int(total)


async def test_histogram_over_days_counts_every_line_and_follows_purges(
    client: httpx.AsyncClient, server: Any
) -> None:
    # Ranges ending after now: the minutes (2 hours: 1-minute buckets) and hours (7 days:
    # 3-hour buckets) holding this test's lines are inside the range, where the histogram
    # reads the counts kept per minute and per hour rather than the lines.
    ns = _ns()
    await deploy(client, _levels_flow(ns, "purged"))
    await deploy(client, _script_flow(f"{ns}.etl", ["echo kept one", "echo kept two"]))
    first = await _run(client, ns, "levels")
    await _run(client, ns, "levels")
    await _run(client, f"{ns}.etl", "script")
    with trio.fail_after(15):
        while (await _search(client, namespace=ns))["total"] < 10:
            await trio.sleep(0.05)

    hours, days = (
        _around_now(dt.timedelta(hours=1), dt.timedelta(hours=1)),
        _around_now(dt.timedelta(days=6), dt.timedelta(days=1)),
    )
    filters: list[dict[str, Any]] = [
        {"namespace": ns},
        {"namespace": ns, "minLevel": "WARN"},
        {"filters[namespace][EQUALS]": ns},
        {"namespace": ns, "flowId": "script"},
        {"namespace": ns, "taskId": "disk"},  # not counted: read from the lines
    ]
    expected = [10, 4, 8, 2, 2]
    for span in (hours, days):
        for params, n in zip(filters, expected, strict=True):
            assert await _histogram_matches_search(client, {**params, **span}) == n
    week = (await client.get("/api/v1/logs/histogram", params={"namespace": ns, **days})).json()
    assert week["interval"] == "PT3H"
    by_level: dict[str, int] = {}
    for bucket in week["buckets"]:
        for level, n in bucket["counts"].items():
            by_level[level] = by_level.get(level, 0) + n
    assert by_level == {"DEBUG": 2, "INFO": 4, "WARN": 2, "ERROR": 2}

    # An execution purged with its logs, then the WARN and ERROR lines purged by a task:
    # the histogram follows, at every range, and still adds up to the search.
    assert (await client.delete(f"/api/v1/executions/{first}")).status_code == 204
    purger = (
        f"id: purger\nnamespace: {ns}ops\ntasks:\n  - id: purge\n"
        f"    type: io.kestra.plugin.core.log.PurgeLogs\n    namespace: {ns}\n"
        "    endDate: \"{{ now() | dateAdd(1, 'HOURS') }}\"\n    logLevels: [WARN, ERROR]\n"
    )
    await deploy(client, purger)
    await _run(client, f"{ns}ops", "purger")
    with trio.fail_after(15):
        while (await _search(client, namespace=ns))["total"] != 4:
            await trio.sleep(0.05)
    for span in (hours, days, {}):
        assert await _histogram_matches_search(client, {"namespace": ns, **span}) == 4
        assert (
            await _histogram_matches_search(client, {"namespace": ns, "minLevel": "WARN", **span})
            == 0
        )
        assert (
            await _histogram_matches_search(client, {"namespace": ns, "flowId": "levels", **span})
            == 2
        )
    # A count the purges brought to zero is gone, as a rebuild (which never counted those
    # lines) would not have it.
    for table in ("log_counts", "log_counts_hourly"):
        row = await server.db.fetchone(
            f"SELECT count(*) FILTER (WHERE count <= 0) AS empty, sum(count) AS lines"
            f" FROM {table} WHERE namespace = %s OR namespace LIKE %s",
            (ns, f"{ns}.%"),
        )
        assert row == {"empty": 0, "lines": 4}, table
    token = await _token(client, "viewer", [f"{ns}.etl"])
    async with httpx.AsyncClient(
        base_url=client.base_url, headers=_bearer(token), timeout=60
    ) as viewer:
        for span in (hours, days):
            seen = await viewer.get("/api/v1/logs/histogram", params={"namespace": ns, **span})
            assert seen.json()["total"] == 2


async def test_scoped_token_searches_and_follows_only_its_namespaces(
    client: httpx.AsyncClient,
) -> None:
    ns = _ns()
    await deploy(client, _script_flow(f"{ns}.team", ["echo ours"]))
    await deploy(client, _script_flow(f"{ns}.other", ["echo theirs"]))
    ours = await _run(client, f"{ns}.team", "script")
    theirs = await _run(client, f"{ns}.other", "script")
    with trio.fail_after(15):
        while (await _search(client, namespace=ns))["total"] < 2:
            await trio.sleep(0.05)
    token = await _token(client, "viewer", [f"{ns}.team"])
    async with httpx.AsyncClient(
        base_url=client.base_url, headers=_bearer(token), timeout=60
    ) as viewer:
        seen = (await viewer.get(SEARCH, params={"namespace": ns})).json()
        assert [line["message"] for line in seen["results"]] == ["ours"] and seen["total"] == 1
        histogram = (await viewer.get("/api/v1/logs/histogram", params={"q": theirs})).json()
        assert histogram["total"] == 0
        for tail in ("", "/download", "/follow"):
            assert (await viewer.get(f"/api/v1/logs/{theirs}{tail}")).status_code == 403
        download = await viewer.get(f"/api/v1/logs/{ours}/download")
        assert download.text.endswith(" INFO [run] ours\n")


async def _events(stream: httpx.Response) -> AsyncIterator[tuple[str, str, dict[str, Any]]]:
    """The server-sent events of `stream` as (event, id, data)."""
    fields: dict[str, str] = {}
    async for line in stream.aiter_lines():
        if line.startswith(":"):
            continue
        if line == "":
            if fields:
                yield (
                    fields.get("event", "message"),
                    fields.get("id", ""),
                    orjson.loads(fields.get("data", "{}")),
                )
            fields = {}
            continue
        name, _, value = line.partition(":")
        fields[name] = value.removeprefix(" ")


async def test_follow_streams_the_backlog_then_new_lines_and_ends_with_the_execution(
    client: httpx.AsyncClient,
) -> None:
    ns = _ns()
    # The script waits for a file the test creates, so the second line is logged once the
    # stream is open.
    gate = f"/tmp/tiercel-logs-gate-{uuid.uuid4().hex}"
    await deploy(
        client,
        _script_flow(
            ns,
            [
                "echo before the wait",
                f"'while [ ! -e {gate} ]; do sleep 0.05; done'",
                "echo after the wait",
                "echo a warning >&2",
            ],
        ),
    )
    xid = await _run(client, ns, "script", wait=False)
    with trio.fail_after(20):
        while not (await client.get(f"/api/v1/logs/{xid}")).json():
            await trio.sleep(0.05)
    got: list[tuple[str, str, str]] = []
    with trio.fail_after(30):
        async with client.stream("GET", f"/api/v1/logs/{xid}/follow") as stream:
            assert stream.status_code == 200
            assert stream.headers["content-type"].startswith("text/event-stream")
            async for event, kind, data in _events(stream):
                got.append((event, kind, data.get("message", "")))
                if data.get("message") == "before the wait":
                    with open(gate, "w"):
                        pass
    # stdout and stderr are read side by side: their lines are in order within each.
    assert got[:2] == [("message", "start", ""), ("message", "progress", "before the wait")]
    assert sorted(got[2:4]) == [
        ("message", "progress", "a warning"),
        ("message", "progress", "after the wait"),
    ]
    assert got[4:] == [("end", "end", "")]
    # An ended execution: its lines at once (at the level asked for), and the end.
    async with client.stream("GET", f"/api/v1/logs/{xid}/follow?minLevel=ERROR") as stream:
        again = [(e, k, d.get("message", "")) async for e, k, d in _events(stream)]
    assert again == [
        ("message", "start", ""),
        ("message", "progress", "a warning"),
        ("end", "end", ""),
    ]

    # The download: one text line per log line, in order.
    download = await client.get(f"/api/v1/logs/{xid}/download")
    assert download.status_code == 200
    assert download.headers["content-type"].startswith("text/plain")
    assert f'filename="{xid}.log"' in download.headers["content-disposition"]
    lines = download.text.splitlines()
    shown = [line.split(" ", 1)[1] for line in lines]
    assert shown[0] == "INFO [run] before the wait"
    assert sorted(shown[1:]) == ["ERROR [run] a warning", "INFO [run] after the wait"]
    assert all(line[:4].isdigit() and line.split(" ", 1)[0].endswith("Z") for line in lines)
    only = await client.get(
        f"/api/v1/logs/{xid}/download", params={"minLevel": "ERROR", "taskId": "run"}
    )
    assert only.text.splitlines() == [line for line in lines if " ERROR " in line]
    assert (await client.get(f"/api/v1/logs/{xid}", params={"attempt": 1})).json()


async def test_a_text_search_matching_many_lines_gives_an_estimated_total_without_counting(
    client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    # As at ten million lines: a word matches "many" lines and the table is too large to
    # count them in.
    from projections import logs as logs_model

    ns = _ns()
    word = f"plenty{uuid.uuid4().hex[:6]}"
    await deploy(
        client, _script_flow(ns, [f"echo {word} one", f"echo {word} two", f"echo {word} 3"])
    )
    await _run(client, ns, "script")
    with trio.fail_after(15):
        while (await _search(client, namespace=ns))["total"] < 3:
            await trio.sleep(0.05)
    monkeypatch.setattr(logs_model, "PROBE_UP_TO", 1)
    monkeypatch.setattr(logs_model, "COUNT_TEXT_UP_TO", 0)
    page = await _search(client, q=word, size=2)
    assert [r["message"].split()[0] for r in page["results"]] == [word, word]
    assert page["totalIsEstimate"] and page["total"] >= 2
    # A page that ends before its size knows its total: exact, as before.
    assert await _search(client, q=word, size=10) == {
        **(await _search(client, q=word, size=10)),
        "total": 3,
        "totalIsEstimate": False,
    }
