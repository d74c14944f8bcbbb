"""`tiercel sys reindex`: read models rebuilt from position 0 while a server runs give the same
rows, the API keeps answering meanwhile, and a rebuild cancelled midway changes nothing."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
import trio

from engine.commands import create_execution, deploy_flow, resume_execution, wait_for_end
from engine.db import Database, runtime_url
from engine.server import ServerContext
from engine.store import load_checkpoint
from projections import reindex as rebuild
from projections.runner import all_projections, run_projection
from tests.conftest import admin_client, start_server

T = TypeVar("T")


@pytest.fixture
async def cluster(
    database_url: str, nursery: trio.Nursery, tmp_path: Path
) -> AsyncIterator[tuple[ServerContext, httpx.AsyncClient]]:
    """A server running everything (the projections too), and a client of its API."""
    ctx = await start_server(database_url, nursery, tmp_path)
    async with admin_client(ctx) as http:
        yield ctx, http


@pytest.fixture
async def owner(database_url: str) -> AsyncIterator[Database]:
    """The database as its owner, who may create and rename tables (as `sys reindex` does)."""
    db = Database(database_url, max_size=2)
    yield db
    await db.close()


def _flows(ns: str) -> list[str]:
    return [
        f"id: hello\nnamespace: {ns}\nlabels:\n  team: reindex\ntasks:\n"
        "  - id: greet\n    type: io.kestra.plugin.core.log.Log\n"
        "    message: hello {{ execution.id }}\n"
        "  - id: twice\n    type: io.kestra.plugin.core.log.Log\n"
        "    message: [first line, second line]\n",
        f"id: broken\nnamespace: {ns}\ntasks:\n"
        "  - id: say\n    type: io.kestra.plugin.core.log.Log\n    message: about to fail\n"
        "  - id: fail\n    type: io.kestra.plugin.core.execution.Fail\n    errorMessage: it broke\n",
        f"id: paused\nnamespace: {ns}\ntasks:\n"
        "  - id: a\n    type: io.kestra.plugin.core.debug.Return\n    format: a\n"
        "  - id: wait\n    type: io.kestra.plugin.core.flow.Pause\n"
        "  - id: b\n    type: io.kestra.plugin.core.log.Log\n    message: resumed\n",
        # Deployed, never run: what it calls and listens to is the topology read model's.
        f"id: caller\nnamespace: {ns}\ntasks:\n"
        f"  - id: run\n    type: io.kestra.plugin.core.flow.Subflow\n    namespace: {ns}\n"
        "    flowId: hello\n"
        "triggers:\n  - id: after\n    type: io.kestra.plugin.core.trigger.Flow\n"
        "    conditions:\n      - type: io.kestra.plugin.core.condition.ExecutionNamespace\n"
        f"        namespace: nowhere.{ns}\n",
    ]


async def _history(ctx: ServerContext, ns: str) -> list[str]:
    """Run a real history in `ns`: three successes with logs, a failure, a pause resumed."""
    for source in _flows(ns):
        await deploy_flow(ctx.store, source)
    ids = []
    for _ in range(3):
        ids.append(await create_execution(ctx.store, ns, "hello", {}, labels={"run": "x"}))
    ids.append(await create_execution(ctx.store, ns, "broken", {}))
    for xid in ids:
        await wait_for_end(ctx.store, ctx.notifier, xid, timeout=60)
    paused = await create_execution(ctx.store, ns, "paused", {})
    state = await wait_for_end(ctx.store, ctx.notifier, paused, timeout=60, until_paused=True)
    assert state.state == "PAUSED"
    await resume_execution(ctx.store, paused)
    assert (await wait_for_end(ctx.store, ctx.notifier, paused, timeout=60)).state == "SUCCESS"
    return [*ids, paused]


async def _caught_up(http: httpx.AsyncClient, position: int) -> list[dict[str, Any]]:
    """`GET /api/v1/projections` once every projection has applied the log up to `position`."""
    with trio.fail_after(30):
        while True:
            answer = await http.get("/api/v1/projections")
            assert answer.status_code == 200, answer.text
            entries = answer.json()
            if all(e["position"] >= position for e in entries):
                return list(entries)
            await trio.sleep(0.1)


async def _snapshot(db: Database, ns: str, ids: list[str]) -> dict[str, list[dict[str, Any]]]:
    """The three read models' rows of this test's flows and executions, every column."""
    return {
        "flows": await db.fetchall(
            "SELECT * FROM flows WHERE namespace = %s ORDER BY flow_id", (ns,)
        ),
        "executions": await db.fetchall(
            "SELECT * FROM executions WHERE namespace = %s ORDER BY id", (ns,)
        ),
        "logs": await db.fetchall(
            "SELECT * FROM logs WHERE execution_id = ANY(%s) ORDER BY seq, line", (ids,)
        ),
        # The executions projection's rollups (counts and durations per hour and state).
        "execution_stats": await db.fetchall(
            "SELECT * FROM execution_stats WHERE namespace = %s ORDER BY 1, 2, 3, 4", (ns,)
        ),
        "execution_durations": await db.fetchall(
            "SELECT * FROM execution_durations WHERE namespace = %s ORDER BY 1, 2, 3, 4, 5",
            (ns,),
        ),
        # The logs projection's counts per minute and per hour (the histogram's).
        "log_counts": await db.fetchall(
            "SELECT * FROM log_counts WHERE namespace = %s ORDER BY 1, 2, 3, 4", (ns,)
        ),
        "log_counts_hourly": await db.fetchall(
            "SELECT * FROM log_counts_hourly WHERE namespace = %s ORDER BY 1, 2, 3", (ns,)
        ),
        # The topology read model: what each flow calls and what its Flow triggers listen to.
        "flow_calls": await db.fetchall(
            "SELECT * FROM flow_calls WHERE namespace = %s ORDER BY 1, 2, 3, 4", (ns,)
        ),
        "flow_listeners": await db.fetchall(
            "SELECT * FROM flow_listeners WHERE namespace = %s ORDER BY 1, 2", (ns,)
        ),
        # The audit trail's commands (projections/audit.py).
        "audit": await db.fetchall("SELECT * FROM audit WHERE namespace = %s ORDER BY seq", (ns,)),
    }


async def _definitions(db: Database) -> list[Any]:
    """The read-model tables' indexes, columns (with their statistics targets) and rights."""
    indexes = await db.fetchall(
        "SELECT tablename, indexname, indexdef FROM pg_indexes"
        " WHERE schemaname = current_schema() AND tablename IN ('flows', 'executions', 'logs')"
        " ORDER BY indexname"
    )
    columns = await db.fetchall(
        "SELECT c.relname, a.attname, a.atttypid, a.attcollation, a.attnotnull,"
        " a.attstattarget, a.attgenerated, c.relacl::text"
        " FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid"
        " WHERE c.relnamespace = current_schema()::regnamespace"
        " AND c.relname IN ('flows', 'executions', 'logs') AND a.attnum > 0"
        " ORDER BY c.relname, a.attnum"
    )
    return [*indexes, *columns]


async def _table_ids(db: Database) -> dict[str, int]:
    rows = await db.fetchall(
        "SELECT relname, oid::bigint AS id FROM pg_class WHERE relnamespace ="
        " current_schema()::regnamespace AND relname IN ('flows', 'executions', 'logs')"
    )
    return {r["relname"]: r["id"] for r in rows}


async def test_reindex_rebuilds_every_read_model_with_the_same_rows_while_the_server_runs(
    cluster: tuple[ServerContext, httpx.AsyncClient], owner: Database, ns: str
) -> None:
    ctx, http = cluster
    ids = await _history(ctx, ns)
    head = await ctx.store.head()
    entries = await _caught_up(http, head)
    assert {e["name"] for e in entries} == {p.name for p in all_projections()}
    for e in entries:
        assert e["head"] >= head and e["lag"] == e["head"] - e["position"] >= 0
        assert e["status"] in ("UP_TO_DATE", "CATCHING_UP")
    before = await _snapshot(owner, ns, ids)
    assert len(before["executions"]) == 5 and len(before["flows"]) == 4
    assert len(before["flow_calls"]) == 1 and len(before["flow_listeners"]) == 1
    assert {r["kind"] for r in before["audit"]} >= {"flow", "execution"}
    assert sum(r["count"] for r in before["execution_stats"]) == 5
    assert sum(r["count"] for r in before["execution_durations"]) == 5
    assert {r["state"] for r in before["executions"]} == {"SUCCESS", "FAILED"}
    assert any(r["message"] == "resumed" for r in before["logs"])
    definitions = await _definitions(owner)
    tables = await _table_ids(owner)

    seen: list[tuple[str, int, int]] = []
    done = await rebuild.reindex(
        owner,
        all_projections(),
        storage=ctx.storage,
        on_progress=lambda p: seen.append((p.projection, p.done, p.total)),
    )

    assert [r.projection for r in done] == [p.name for p in all_projections()]
    # Every column of every row equal, the bookkeeping ones too (`last_seq`, the positions of
    # the log lines, the generated search columns): no column legitimately differs.
    assert await _snapshot(owner, ns, ids) == before
    # The same indexes under the same names, columns, statistics targets and rights.
    assert await _definitions(owner) == definitions
    assert set((await _table_ids(owner)).values()).isdisjoint(tables.values())  # new tables
    for name in ("flows", "executions", "logs"):
        last = [s for s in seen if s[0] == name][-1]
        assert last[1] >= last[2] >= head  # the bar reached its total
    # The live projections follow the log on the new tables (the runtime role may write them).
    later = await create_execution(ctx.store, ns, "hello", {})
    await wait_for_end(ctx.store, ctx.notifier, later, timeout=60)
    await _caught_up(http, await ctx.store.head())
    answer = await http.get("/api/v1/executions/search", params={"namespace": ns})
    assert answer.status_code == 200 and answer.json()["total"] == 6
    logs = await http.get(f"/api/v1/logs/{later}")
    assert [line["message"] for line in logs.json()][-2:] == ["first line", "second line"]


class _Gated(Database):
    """The owner's database, whose calls stop at `gate` from the `after`-th on: a rebuild
    paused midway, at a point the test chooses."""

    def __init__(self, url: str, after: int) -> None:
        super().__init__(url, max_size=2)
        self.after = after
        self.calls = 0
        self.paused = trio.Event()
        self.gate = trio.Event()

    async def run(self, fn: Callable[[Any], T]) -> T:
        self.calls += 1
        if self.calls > self.after and not self.gate.is_set():
            self.paused.set()
            await self.gate.wait()
        return await super().run(fn)


async def _search(http: httpx.AsyncClient, ns: str) -> int:
    answer = await http.get("/api/v1/executions/search", params={"namespace": ns})
    assert answer.status_code == 200, answer.text
    return int(answer.json()["total"])


async def test_searches_answer_during_a_reindex_and_a_cancelled_one_leaves_the_live_tables(
    cluster: tuple[ServerContext, httpx.AsyncClient],
    owner: Database,
    database_url: str,
    ns: str,
) -> None:
    ctx, http = cluster
    ids = await _history(ctx, ns)
    await _caught_up(http, await ctx.store.head())
    before = await _snapshot(owner, ns, ids)
    executions = [p for p in all_projections() if p.name == "executions"]

    # Paused after its tables are made and two batches of ten events are applied.
    gated = _Gated(database_url, after=7)
    async with trio.open_nursery() as nursery:
        cancel = trio.CancelScope()

        async def run_reindex() -> None:
            with cancel:
                await rebuild.reindex(gated, executions, storage=ctx.storage, batch_size=10)

        nursery.start_soon(run_reindex)
        with trio.fail_after(30):
            await gated.paused.wait()
        assert await _search(http, ns) == 5
        entry = next(
            e for e in (await http.get("/api/v1/projections")).json() if e["name"] == "executions"
        )
        assert entry["rebuild"]["position"] > 0
        assert await owner.fetchone("SELECT to_regclass('tiercel_rebuild.executions') AS t")
        cancel.cancel()
        gated.gate.set()
    await gated.close()

    # The live table serves as before; the rebuild's table and checkpoint are gone.
    assert await _search(http, ns) == 5
    assert await _snapshot(owner, ns, ids) == before
    row = await owner.fetchone("SELECT to_regclass('tiercel_rebuild.executions') AS t")
    assert row is not None and row["t"] is None
    assert not await owner.fetchall("SELECT 1 FROM checkpoints WHERE name LIKE 'rebuild:%'")

    # A later reindex works while executions run and searches keep answering, through the
    # swap: never an error, never fewer executions than a moment before.
    totals: list[int] = []
    more: list[str] = []
    async with trio.open_nursery() as nursery:
        finished = trio.Event()

        async def keep_searching() -> None:
            while not finished.is_set():
                totals.append(await _search(http, ns))
                await trio.sleep(0.01)

        async def keep_running() -> None:
            for _ in range(3):
                more.append(await create_execution(ctx.store, ns, "hello", {}))
                await trio.sleep(0.02)

        nursery.start_soon(keep_searching)
        nursery.start_soon(keep_running)
        await rebuild.reindex(owner, executions, storage=ctx.storage, batch_size=20)
        finished.set()
    assert totals and totals == sorted(totals) and set(totals) <= {5, 6, 7, 8}
    for xid in more:
        await wait_for_end(ctx.store, ctx.notifier, xid, timeout=60)
    await _caught_up(http, await ctx.store.head())
    assert await _search(http, ns) == 8
    # What the rebuild and the live projection made together is what a rebuild alone makes.
    after = await _snapshot(owner, ns, [*ids, *more])
    await rebuild.reindex(owner, executions, storage=ctx.storage)
    assert await _snapshot(owner, ns, [*ids, *more]) == after
    assert [r for r in after["executions"] if r["id"] in ids] == before["executions"]


async def test_sys_reindex_command_rebuilds_a_projection_with_a_progress_bar(
    database_url: str, owner: Database
) -> None:
    keys = "SELECT namespace, flow_id FROM flows ORDER BY namespace, flow_id"
    before, tables = await owner.fetchall(keys), await _table_ids(owner)
    tiercel = [sys.executable, "-m", "engine.cli", "sys", "reindex"]
    done = await trio.run_process(
        [*tiercel, "--projection", "flows", "--database-url", database_url],
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr.decode()
    assert "Rebuilt flows up to position" in done.stdout.decode()
    bar = done.stderr.decode()
    assert "flows" in bar and "events" in bar and "ev/s" in bar and "ETA" in bar
    # (Row equality is the first test's: here no server ran, so the live table may lag.)
    assert set(map(str, before)) <= set(map(str, await owner.fetchall(keys)))
    assert (await _table_ids(owner))["flows"] != tables["flows"]

    unknown = await trio.run_process(
        [*tiercel, "--projection", "nope", "--database-url", database_url],
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )
    assert unknown.returncode == 2
    known = ", ".join(sorted(p.name for p in all_projections()))
    assert f"Unknown projection 'nope'; known: {known}" in unknown.stderr.decode()

    # The engine's runtime role may not create tables: told to connect as the owner.
    refused = await trio.run_process(
        [*tiercel, "--projection", "flows", "--database-url", runtime_url(database_url)],
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )
    assert refused.returncode == 1
    message = refused.stderr.decode()
    assert "may not create or replace the read-model tables" in message
    assert "Traceback" not in message


async def test_reindex_after_a_killed_one_drops_its_leftovers_and_swaps_in(
    owner: Database,
) -> None:
    logs = [p for p in all_projections() if p.name == "logs"]
    # What a `sys reindex` killed midway leaves: its half-filled tables and its checkpoint.
    live = await owner.run(rebuild._live_schema)
    await owner.run(lambda conn: rebuild._create_tables(conn, logs[0], live))
    await owner.execute(
        "INSERT INTO tiercel_rebuild.logs (seq, line, execution_id, timestamp, level, message)"
        " VALUES (-1, 0, 'left-over', now(), 'INFO', 'from the killed rebuild')"
    )
    await owner.execute(
        "INSERT INTO checkpoints (name, position) VALUES ('rebuild:logs', 1)"
        " ON CONFLICT (name) DO UPDATE SET position = 1"
    )

    await rebuild.reindex(owner, logs)

    assert not await owner.fetchall("SELECT 1 FROM logs WHERE execution_id = 'left-over'")
    assert not await owner.fetchall("SELECT 1 FROM checkpoints WHERE name LIKE 'rebuild:%'")
    assert not await owner.fetchall(
        "SELECT 1 FROM pg_namespace WHERE nspname = 'tiercel_rebuild'"
    )  # the rebuild's schema too


class _Recording:
    """A projection that records which events it was given, in memory."""

    types = ("FlowCreated",)
    tables: tuple[str, ...] = ()

    def __init__(self, name: str, applied: list[int]) -> None:
        self.name = name
        self.applied = applied

    def apply(self, batch: list[Any], conn: Any) -> None:
        self.applied.extend(e.seq for e in batch)


async def test_two_runners_of_one_projection_apply_each_event_once(
    store: Any, notifier: Any, owner: Database, ns: str
) -> None:
    name = f"test-{ns.rsplit('.', 1)[-1]}"
    applied: list[int] = []
    try:
        async with trio.open_nursery() as nursery:
            for _ in range(2):  # as two indexer processes would
                await nursery.start(run_projection, _Recording(name, applied), store, notifier)
            for i in range(5):
                await deploy_flow(
                    store,
                    f"id: f{i}\nnamespace: {ns}\ntasks:\n"
                    "  - id: t\n    type: io.kestra.plugin.core.debug.Return\n    format: x\n",
                )
            head = await store.head()
            with trio.fail_after(30):
                while await load_checkpoint(store.db, f"projection:{name}") < head:
                    await trio.sleep(0.05)
            nursery.cancel_scope.cancel()
    finally:
        await owner.execute("DELETE FROM checkpoints WHERE name = %s", (f"projection:{name}",))
    created = await owner.fetchall(
        "SELECT seq FROM events WHERE type = 'FlowCreated' AND seq <= %s ORDER BY seq", (head,)
    )
    assert sorted(applied) == [r["seq"] for r in created]  # every one, none twice
