"""The executions and logs read models against a real PostgreSQL: what each search filter finds,
in which order, how pages and totals behave, and that the projections are idempotent."""

from __future__ import annotations

import datetime as dt
import json
import random
import re
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest

from engine import events as ev
from engine.db import Database
from engine.migrate import migrate
from engine.store import Append, EventStore, StoredEvent
from projections import executions as model
from projections.executions import ExecutionsProjection, Search
from projections.logs import LogsProjection, execution_lines
from tests.conftest import own_database

LEVELS = ["TRACE", "DEBUG", "INFO", "WARN", "ERROR"]


@pytest.fixture(scope="module")
def search_database_url(database_url: str) -> Iterator[str]:
    """A database of its own: the histories below are written by hand to shape the read models
    (a KILLED or WARNING end with no task behind it), not decided by the engine, so they must
    not reach the executors of other tests nor the replay check of the whole session."""
    with own_database(database_url, "search") as url:
        migrate(url)
        yield url


@pytest.fixture
async def db(search_database_url: str) -> AsyncIterator[Database]:
    database = Database(search_database_url)
    yield database
    await database.close()


@dataclass
class Spec:
    """One execution to record: where it runs, how it ends, its labels."""

    namespace: str
    flow_id: str = "hello"
    state: str | None = "SUCCESS"  # None: still running
    labels: dict[str, str] = field(default_factory=dict)
    task_runs: int = 1
    log_lines: int = 0
    id: str = field(default_factory=lambda: uuid.uuid4().hex[:22])


def _events(spec: Spec) -> list[Append]:
    xid = spec.id
    labels = [{"key": k, "value": v} for k, v in spec.labels.items()]
    main: list[ev.Event] = [
        ev.ExecutionCreated(
            executionId=xid,
            namespace=spec.namespace,
            flowId=spec.flow_id,
            flowRevision=1,
            flow={"id": spec.flow_id, "namespace": spec.namespace, "tasks": []},
            labels=labels,
        ),
        ev.ExecutionStateChanged(executionId=xid, state="RUNNING"),
    ]
    main += [
        ev.TaskRunCreated(executionId=xid, taskRunId=f"{xid}-t{i}", taskId=f"t{i}")
        for i in range(spec.task_runs)
    ]
    appends = [Append(ev.execution_stream(xid), main)]
    if spec.log_lines:
        lines = [
            {"level": "INFO", "message": f"line {i}", "timestamp": "2024-05-01T10:00:00.000Z"}
            for i in range(spec.log_lines)
        ]
        appends.append(
            Append(
                ev.attempt_stream(xid, f"{xid}-t0", 1),
                [
                    ev.AttemptLogged(
                        executionId=xid, taskRunId=f"{xid}-t0", taskId="t0", attempt=1, lines=lines
                    )
                ],
            )
        )
    if spec.state is not None:
        appends.append(
            Append(
                ev.execution_stream(xid),
                [ev.ExecutionStateChanged(executionId=xid, state=spec.state, outputs={"n": 1})],
            )
        )
    return appends


async def _record(store: EventStore, specs: Sequence[Spec]) -> list[StoredEvent]:
    """Append the events of `specs`, one append per execution so that start dates differ;
    return them as a projection reads them."""
    for spec in specs:
        await store.append_many(_events(spec))
    found: list[StoredEvent] = []
    for spec in specs:
        found += await store.read_execution(spec.id)
    return sorted(found, key=lambda e: e.seq)


def _only(events: Sequence[StoredEvent], projection: Any) -> list[StoredEvent]:
    return [e for e in events if e.type in projection.types]


async def _apply(db: Database, projection: Any, events: Sequence[StoredEvent]) -> None:
    def work(conn: psycopg.Connection[Any]) -> None:
        with conn.transaction():
            projection.apply(_only(events, projection), conn)

    await db.run(work)


async def _rows(db: Database, table: str, ids: Sequence[str]) -> list[dict[str, Any]]:
    column = "id" if table == "executions" else "execution_id"
    order = "id" if table == "executions" else "seq, line"
    return await db.fetchall(
        f"SELECT * FROM {table} WHERE {column} = ANY(%s) ORDER BY {order}", (list(ids),)
    )


async def _search(db: Database, search: Search, **paging: Any) -> model.Page:
    paging.setdefault("page", 1)
    paging.setdefault("size", 1000)
    return await db.run(lambda conn: model.search(conn, "true", [], search, **paging))


def _ids(page: model.Page) -> list[str]:
    return [r["id"] for r in page.rows]


async def test_namespace_prefix_finds_the_namespace_and_those_under_it_only(
    db: Database, store: EventStore
) -> None:
    root = f"test.search.n{uuid.uuid4().hex[:8]}"
    names = [root, f"{root}.b", f"{root}.b.c", f"{root}b", f"{root}-b", f"{root}_b", f"{root}/b"]
    specs = [Spec(namespace=n) for n in names]
    await _apply(db, ExecutionsProjection(), await _record(store, specs))
    by_namespace = {s.id: s.namespace for s in specs}

    found = await _search(db, Search(namespace=root))
    assert sorted(by_namespace[x] for x in _ids(found)) == sorted(names[:3])
    assert found.total == 3 and not found.estimated
    under = await _search(db, Search(namespace=f"{root}.b"))
    assert sorted(by_namespace[x] for x in _ids(under)) == [f"{root}.b", f"{root}.b.c"]
    # A scope as auth writes it (LIKE, on the byte-wise namespace column) agrees.
    scope = "(namespace = %s OR namespace LIKE %s)"
    scoped = await db.run(
        lambda conn: model.search(conn, scope, [root, root + ".%"], Search(), page=1, size=100)
    )
    assert sorted(by_namespace[x] for x in _ids(scoped)) == sorted(names[:3])


def _matches(spec: Spec, start: dt.datetime, end: dt.datetime | None, search: Search) -> bool:
    """What a search must find, computed in Python from what was recorded."""
    if search.namespace and not (
        spec.namespace == search.namespace or spec.namespace.startswith(search.namespace + ".")
    ):
        return False
    if search.flow_id and spec.flow_id != search.flow_id:
        return False
    state = spec.state or "RUNNING"
    if search.states and state not in {s.upper() for s in search.states}:
        return False
    if search.start_date and start < search.start_date:
        return False
    if search.end_date and (end is None or end > search.end_date):
        return False
    if any(spec.labels.get(k) != v for k, v in search.labels.items()):
        return False
    if search.q:
        words = re.findall("[0-9a-z]+", search.q.lower())
        haystack = re.findall("[0-9a-z]+", f"{spec.namespace} {spec.flow_id}".lower())
        in_words = bool(words) and all(any(h.startswith(w) for h in haystack) for w in words)
        if not spec.id.startswith(search.q) and not in_words:
            return False
    return True


async def test_every_filter_and_their_combinations_find_exactly_the_matching_executions(
    db: Database, store: EventStore
) -> None:
    rng = random.Random(11)
    root = f"test.search.n{uuid.uuid4().hex[:8]}"
    namespaces = [root, f"{root}.east", f"{root}.east.lab", f"{root}.west", f"{root}west"]
    flows = ["ingest-daily", "report", "sync-eu"]
    states = ["SUCCESS", "FAILED", "WARNING", "KILLED", None]
    specs = [
        Spec(
            namespace=rng.choice(namespaces),
            flow_id=rng.choice(flows),
            state=rng.choice(states),
            labels={
                k: v
                for k, v in (
                    ("env", rng.choice(["prod", "dev"])),
                    ("team", rng.choice(["a", "b", "c"])),
                    ("tier", rng.choice(["gold", None])),
                )
                if v is not None
            },
        )
        for _ in range(60)
    ]
    await _apply(db, ExecutionsProjection(), await _record(store, specs))
    rows = {r["id"]: r for r in await _rows(db, "executions", [s.id for s in specs])}
    starts = sorted(r["start_date"] for r in rows.values())
    ends = sorted(r["end_date"] for r in rows.values() if r["end_date"])
    middle, late = starts[20], ends[40]

    searches = [
        Search(namespace=root),
        Search(namespace=f"{root}.east"),
        Search(namespace=f"{root}.east", flow_id="report"),
        Search(flow_id="sync-eu"),
        Search(states=["FAILED"]),
        Search(states=["failed", "KILLED"]),
        Search(states=["RUNNING"]),
        Search(labels={"env": "prod"}),
        Search(labels={"env": "dev", "team": "b"}),
        Search(labels={"tier": "gold", "team": "a", "env": "prod"}),
        Search(start_date=middle),
        Search(end_date=late),
        Search(start_date=middle, end_date=late),
        Search(q="ingest"),
        Search(q="east.lab"),
        Search(q="lab east"),
        Search(q="Daily"),
        Search(q="SYNC"),
        Search(q=specs[7].id[:6]),
        Search(namespace=root, states=["SUCCESS", "WARNING"], labels={"env": "prod"}),
        Search(namespace=f"{root}.west", q="report", start_date=middle),
        Search(flow_id="report", labels={"team": "c"}, end_date=late),
    ]
    mine = {s.id for s in specs}
    sizes: list[int] = []
    for search in searches:
        expected = {
            s.id
            for s in specs
            if _matches(s, rows[s.id]["start_date"], rows[s.id]["end_date"], search)
        }
        sizes.append(len(expected))
        found = await _search(db, search)
        # Other tests' executions share the database: a search without a namespace finds
        # theirs too.
        assert set(_ids(found)) & mine == expected, search
        if search.namespace:
            assert set(_ids(found)) == expected, search
            assert found.total == len(expected) and not found.estimated
    # The filters are neither all-pass nor all-empty on this data.
    assert all(0 < n < len(specs) for n in sizes), sizes


async def test_results_come_newest_first_and_pages_and_cursors_cover_every_row_once(
    db: Database, store: EventStore
) -> None:
    root = f"test.search.n{uuid.uuid4().hex[:8]}"
    specs = [Spec(namespace=root) for _ in range(23)]
    await _apply(db, ExecutionsProjection(), await _record(store, specs))
    newest_first = [s.id for s in reversed(specs)]

    pages = [await _search(db, Search(namespace=root), page=p, size=5) for p in range(1, 7)]
    assert [x for p in pages for x in _ids(p)] == newest_first
    assert [p.total for p in pages] == [23] * 6 and not any(p.estimated for p in pages)
    assert pages[-1].rows == [] and pages[-2].next is None

    walked: list[str] = []
    cursor: str | None = None
    while True:
        page = await _search(db, Search(namespace=root), size=4, after=cursor)
        walked += _ids(page)
        if page.next is None:
            break
        cursor = page.next
    assert walked == newest_first

    # Several states are read state by state and merged: the same order, pages and cursor.
    states = ["SUCCESS", "FAILED", "KILLED"]
    mixed = [Spec(namespace=f"{root}-m", state=states[i % 3]) for i in range(14)]
    await _apply(db, ExecutionsProjection(), await _record(store, mixed))
    wanted = [s.id for s in reversed(mixed) if s.state in ("FAILED", "KILLED")]
    two = Search(namespace=f"{root}-m", states=["killed", "FAILED"])
    paged = [await _search(db, two, page=p, size=3) for p in range(1, 5)]
    assert [x for p in paged for x in _ids(p)] == wanted
    assert paged[0].total == len(wanted)
    first = await _search(db, two, size=5)
    rest = await _search(db, two, size=5, after=first.next)
    assert _ids(first) + _ids(rest) == wanted and rest.next is None
    assert _ids(await _search(db, two, size=100, ascending=True)) == list(reversed(wanted))

    oldest_first = await _search(db, Search(namespace=root), size=10, ascending=True)
    assert _ids(oldest_first) == [s.id for s in specs][:10]
    rest = await _search(
        db, Search(namespace=root), size=100, ascending=True, after=oldest_first.next
    )
    assert _ids(rest) == [s.id for s in specs][10:]


async def test_a_total_above_the_counting_limit_is_an_estimate_and_flagged(
    db: Database, store: EventStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = f"test.search.n{uuid.uuid4().hex[:8]}"
    await _apply(
        db, ExecutionsProjection(), await _record(store, [Spec(namespace=root) for _ in range(12)])
    )
    monkeypatch.setattr(model, "COUNT_EXACT_UP_TO", 5)
    first = await _search(db, Search(namespace=root), size=3)
    assert first.estimated and first.total >= 6 and len(first.rows) == 3
    # The last page knows how many rows there are: no estimate needed.
    last = await _search(db, Search(namespace=root), page=3, size=5)
    assert len(last.rows) == 2 and last.total == 12 and not last.estimated


async def test_a_page_too_deep_is_refused_with_the_cursor_to_use_instead(db: Database) -> None:
    from engine.errors import InvalidRequest

    with pytest.raises(InvalidRequest, match="after="):
        await _search(db, Search(), page=model.MAX_OFFSET // 10 + 2, size=10)
    with pytest.raises(InvalidRequest, match="'after'"):
        await _search(db, Search(), after="not-a-cursor")


async def test_logs_carry_the_namespace_and_flow_id_of_their_execution(
    db: Database, store: EventStore
) -> None:
    root = f"test.search.n{uuid.uuid4().hex[:8]}"
    specs = [
        Spec(namespace=f"{root}.a", flow_id="f1", log_lines=3),
        Spec(namespace=root, flow_id="f2", log_lines=2),
    ]
    events = await _record(store, specs)
    projection = LogsProjection()
    await _apply(db, projection, events)
    rows = await _rows(db, "logs", [s.id for s in specs])
    assert [(r["execution_id"], r["namespace"], r["flow_id"], r["message"]) for r in rows] == [
        (specs[0].id, f"{root}.a", "f1", "line 0"),
        (specs[0].id, f"{root}.a", "f1", "line 1"),
        (specs[0].id, f"{root}.a", "f1", "line 2"),
        (specs[1].id, root, "f2", "line 0"),
        (specs[1].id, root, "f2", "line 1"),
    ]
    # A projection that starts afresh (nothing cached) finds them from the events too.
    lines = await db.run(lambda conn: execution_lines(conn, specs[1].id, LEVELS))
    assert [(r["namespace"], r["flow_id"]) for r in lines] == [(root, "f2")] * 2


async def test_projections_replayed_over_their_rows_give_the_same_rows(
    db: Database, store: EventStore
) -> None:
    root = f"test.search.n{uuid.uuid4().hex[:8]}"
    specs = [
        Spec(namespace=root, task_runs=3, log_lines=2, labels={"env": "prod"}),
        Spec(namespace=root, state=None, task_runs=2, log_lines=1),
        Spec(namespace=f"{root}.x", state="FAILED", task_runs=1),
    ]
    events = await _record(store, specs)
    ids = [s.id for s in specs]
    executions, logs = ExecutionsProjection(), LogsProjection()

    # One event at a time, as a live projection sees them.
    for e in events:
        await _apply(db, executions, [e])
        await _apply(db, logs, [e])
    once = (await _rows(db, "executions", ids), await _rows(db, "logs", ids))
    assert {r["id"]: r["task_run_count"] for r in once[0]} == dict(zip(ids, [3, 2, 1], strict=True))
    by_id = {r["id"]: r for r in once[0]}
    assert [h["state"] for h in by_id[specs[0].id]["histories"]] == [
        "CREATED",
        "RUNNING",
        "SUCCESS",
    ]
    assert by_id[specs[1].id]["state"] == "RUNNING" and by_id[specs[1].id]["end_date"] is None

    # Replayed from the start, in one batch, in batches cut elsewhere, and a batch straddling
    # what was applied: nothing changes.
    await _apply(db, executions, events)
    await _apply(db, logs, events)
    half = len(events) // 2
    for part in (events[:half], events[half - 1 :], events[1:3]):
        await _apply(db, ExecutionsProjection(), part)
        await _apply(db, LogsProjection(), part)
    assert (await _rows(db, "executions", ids), await _rows(db, "logs", ids)) == once

    # Rebuilt from nothing in one batch, the rows are the same as built event by event.
    await db.execute("DELETE FROM executions WHERE id = ANY(%s)", (ids,))
    await db.execute("DELETE FROM logs WHERE execution_id = ANY(%s)", (ids,))
    await _apply(db, ExecutionsProjection(), events)
    await _apply(db, LogsProjection(), events)
    assert (await _rows(db, "executions", ids), await _rows(db, "logs", ids)) == once


async def test_a_purged_execution_leaves_both_read_models_even_when_replayed(
    db: Database, store: EventStore
) -> None:
    spec = Spec(namespace=f"test.search.n{uuid.uuid4().hex[:8]}", log_lines=2)
    events = await _record(store, [spec])
    await store.append(ev.execution_stream(spec.id), [ev.ExecutionPurged(executionId=spec.id)])
    everything = await store.read_execution(spec.id)
    for projection in (ExecutionsProjection(), LogsProjection()):
        await _apply(db, projection, events)
        await _apply(db, projection, everything)
        await _apply(db, projection, everything)
    assert await _rows(db, "executions", [spec.id]) == []
    assert await _rows(db, "logs", [spec.id]) == []


def test_quick_search_bench_prints_every_read_beside_its_target_and_a_plan(
    database_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from bench.search import main

    out = tmp_path / "search.json"
    assert main(["--quick", "--database-url", database_url, "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    for line in ("events/s through EventStore.append_many", "Projection executions caught up",
                 "Projection logs caught up", "100-row INSERT batches", "no filter",
                 "label correlationId", "q=<id prefix>", "logs of one execution",
                 "Plan of the slowest", "Execution Time"):  # fmt: skip
        assert line in printed, line
    results = json.loads(out.read_text())
    assert results["seed"]["executions"] == 1000 and results["seed"]["log_lines"] == 10000
    assert results["projections"]["executions"]["events_per_s"] > 0
    assert results["projections"]["logs"]["events"] > 0
    reads = results["reads"]
    assert reads["no filter"]["total"] == 1000 and not reads["no filter"]["estimated"]
    assert reads["label correlationId"]["total"] == 1
    assert reads["logs of one execution"]["lines"] == 10
    for entry in reads.values():
        for timing in (entry.get("page1"), entry.get("page100"), entry.get("logs")):
            if timing is not None:
                assert timing["p95_ms"] >= timing["p50_ms"] > 0
