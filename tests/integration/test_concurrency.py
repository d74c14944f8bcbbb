"""Flow concurrency limits on a real engine and PostgreSQL: at most `limit` executions of a
flow run at once, the others wait in arrival order (or are cancelled or failed, saying why),
and `tiercel sys submit-queued` starts queued ones by hand."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest
import trio

from engine import events as ev
from engine.commands import create_execution, deploy_flow, kill_execution, wait_for_end
from engine.concurrency import LedgerMoved, Ledgers, check, ledger_stream
from engine.execution.concurrency import Arrival, Change, Limit
from engine.plugin import TERMINAL_STATES
from engine.server import ServerContext
from engine.store import NO_STREAM, EventStore

TIERCEL = [sys.executable, "-m", "engine.cli"]
BURST = 500


def _flow(ns: str, flow_id: str, limit: int, behavior: str, task: str) -> str:
    return f"""
id: {flow_id}
namespace: {ns}
concurrency:
  limit: {limit}
  behavior: {behavior}
tasks:
{task}
"""


LOG = """
  - id: hello
    type: io.kestra.plugin.core.log.Log
    message: "{{ execution.id }}"
"""
PAUSE = """
  - id: wait
    type: io.kestra.plugin.core.flow.Pause
"""


async def _states(ctx: ServerContext, ids: list[str]) -> list[tuple[int, str, str]]:
    """(position, execution id, state) of every state change of `ids`, in log order, with
    their creations as CREATED."""
    rows = await ctx.store.db.fetchall(
        "SELECT seq, type, data::text AS data FROM events WHERE stream_id = ANY(%s)"
        " AND type IN ('ExecutionCreated', 'ExecutionStateChanged') ORDER BY seq",
        ([ev.execution_stream(x) for x in ids],),
    )
    out = []
    for r in rows:
        event = ev.decode(r["data"])
        state = "CREATED" if isinstance(event, ev.ExecutionCreated) else event.state  # type: ignore[union-attr]
        out.append((int(r["seq"]), event.executionId, state))  # type: ignore[union-attr]
    return out


async def _until(ctx: ServerContext, xid: str, state: str, timeout: float = 30) -> None:
    with trio.fail_after(timeout):
        while True:
            if any(s == state for _, x, s in await _states(ctx, [xid])):
                return
            await trio.sleep(0.05)


async def _ended(ctx: ServerContext, ids: list[str], timeout: float = 240) -> None:
    with trio.fail_after(timeout):
        while True:
            ended = {x for _, x, s in await _states(ctx, ids) if s in TERMINAL_STATES}
            if len(ended) == len(ids):
                return
            await trio.sleep(0.2)


def _most_running(changes: list[tuple[int, str, str]]) -> int:
    running: set[str] = set()
    most = 0
    for _, xid, state in changes:
        if state in TERMINAL_STATES:
            running.discard(xid)
        elif state not in ("CREATED", "QUEUED"):
            running.add(xid)
        most = max(most, len(running))
    return most


async def test_burst_never_runs_more_than_the_limit_and_starts_queued_ones_in_arrival_order(
    engine: ServerContext, ns: str
) -> None:
    record = await deploy_flow(engine.store, _flow(ns, "limited", 2, "QUEUE", LOG))
    ids: list[str] = []

    async def submit(i: int) -> None:
        ids.append(await create_execution(engine.store, ns, record.id, {}))

    async with trio.open_nursery() as nursery:
        for i in range(BURST):
            nursery.start_soon(submit, i)
    await _ended(engine, ids)

    changes = await _states(engine, ids)
    assert _most_running(changes) == 2
    final: dict[str, str] = {}
    for _, xid, state in changes:
        final[xid] = state
    assert set(final.values()) == {"SUCCESS"}
    queued = [x for _, x, s in changes if s == "QUEUED"]
    assert len(queued) >= BURST - 2 - 10  # all but those that found a free slot
    created = [x for _, x, s in changes if s == "CREATED"]
    started = [x for _, x, s in changes if s == "RUNNING"]
    assert started == created  # every one started in the order it arrived
    # Every slot taken was released: the ledger holds nobody.
    rows = await engine.store.db.fetchall(
        "SELECT type, count(*) AS n FROM events WHERE stream_id = %s GROUP BY type",
        (ledger_stream(ns, record.id),),
    )
    counts = {r["type"]: r["n"] for r in rows}
    assert counts["ConcurrencySlotTaken"] == BURST
    assert counts["ConcurrencySlotReleased"] == BURST


async def test_subflow_executions_of_a_limited_flow_wait_for_their_slot(
    engine: ServerContext, ns: str
) -> None:
    child = await deploy_flow(engine.store, _flow(ns, "child", 1, "QUEUE", LOG))
    await deploy_flow(
        engine.store,
        f"""
id: parent
namespace: {ns}
tasks:
  - id: call
    type: io.kestra.plugin.core.flow.Subflow
    namespace: {ns}
    flowId: {child.id}
    wait: true
""",
    )
    parents = [await create_execution(engine.store, ns, "parent", {}) for _ in range(6)]
    for xid in parents:
        ended = await wait_for_end(engine.store, engine.notifier, xid, timeout=60)
        assert ended.state == "SUCCESS"
    rows = await engine.store.db.fetchall(
        "SELECT data->>'executionId' AS xid FROM events WHERE type = 'ExecutionCreated'"
        " AND data->>'flowId' = 'child' AND data->>'namespace' = %s",
        (ns,),
    )
    children = [r["xid"] for r in rows]
    assert len(children) == 6
    changes = await _states(engine, children)
    assert _most_running(changes) == 1
    assert [s for _, x, s in changes if s in TERMINAL_STATES] == ["SUCCESS"] * 6


async def test_cancel_behavior_cancels_an_execution_over_the_limit_saying_why(
    engine: ServerContext, ns: str
) -> None:
    record = await deploy_flow(engine.store, _flow(ns, "cancel", 1, "CANCEL", PAUSE))
    first = await create_execution(engine.store, ns, record.id, {})
    await wait_for_end(engine.store, engine.notifier, first, until_paused=True, timeout=30)
    second = await create_execution(engine.store, ns, record.id, {})
    refused = await wait_for_end(engine.store, engine.notifier, second, timeout=30)
    assert refused.state == "CANCELLED"
    assert refused.message is not None
    assert f"{ns}.cancel allows at most 1 concurrent execution" in refused.message
    assert not refused.taskruns  # no task ran
    await kill_execution(engine.store, first)
    assert (await wait_for_end(engine.store, engine.notifier, first, timeout=30)).state == "KILLED"
    # The slot is free again: a new execution runs.
    third = await create_execution(engine.store, ns, record.id, {})
    paused = await wait_for_end(engine.store, engine.notifier, third, until_paused=True, timeout=30)
    assert paused.state == "PAUSED"
    await kill_execution(engine.store, third)


async def test_fail_behavior_fails_an_execution_over_the_limit_saying_why(
    engine: ServerContext, ns: str
) -> None:
    record = await deploy_flow(engine.store, _flow(ns, "fail", 1, "FAIL", PAUSE))
    first = await create_execution(engine.store, ns, record.id, {})
    await wait_for_end(engine.store, engine.notifier, first, until_paused=True, timeout=30)
    second = await create_execution(engine.store, ns, record.id, {})
    refused = await wait_for_end(engine.store, engine.notifier, second, timeout=30)
    assert refused.state == "FAILED"
    assert refused.message is not None and "concurrency.limit" in refused.message
    assert "behavior FAIL" in refused.message
    await kill_execution(engine.store, first)
    await wait_for_end(engine.store, engine.notifier, first, timeout=30)


async def test_queued_execution_starts_when_a_running_one_ends_and_a_killed_one_leaves_the_queue(
    engine: ServerContext, ns: str
) -> None:
    record = await deploy_flow(engine.store, _flow(ns, "queue", 1, "QUEUE", PAUSE))
    first = await create_execution(engine.store, ns, record.id, {})
    await wait_for_end(engine.store, engine.notifier, first, until_paused=True, timeout=30)
    second = await create_execution(engine.store, ns, record.id, {})
    third = await create_execution(engine.store, ns, record.id, {})
    await _until(engine, third, "QUEUED")
    await kill_execution(engine.store, second)
    killed = await wait_for_end(engine.store, engine.notifier, second, timeout=30)
    assert [s for s, _ in killed.histories] == ["CREATED", "QUEUED", "KILLED"]
    await kill_execution(engine.store, first)
    await wait_for_end(engine.store, engine.notifier, first, timeout=30)
    # The killed one gave its place: the third takes the freed slot.
    paused = await wait_for_end(engine.store, engine.notifier, third, until_paused=True, timeout=30)
    assert [s for s, _ in paused.histories][:3] == ["CREATED", "QUEUED", "RUNNING"]
    await kill_execution(engine.store, third)
    await wait_for_end(engine.store, engine.notifier, third, timeout=30)


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*TIERCEL, *args], capture_output=True, text=True, timeout=120)


async def test_submit_queued_starts_queued_executions_whatever_the_limit(
    engine: ServerContext, ns: str, database_url: str
) -> None:
    record = await deploy_flow(engine.store, _flow(ns, "held", 1, "QUEUE", PAUSE))
    other = await deploy_flow(engine.store, _flow(ns, "other", 1, "QUEUE", PAUSE))
    first = await create_execution(engine.store, ns, record.id, {})
    await wait_for_end(engine.store, engine.notifier, first, until_paused=True, timeout=30)
    waiting = [await create_execution(engine.store, ns, record.id, {}) for _ in range(2)]
    other_first = await create_execution(engine.store, ns, other.id, {})
    await wait_for_end(engine.store, engine.notifier, other_first, until_paused=True, timeout=30)
    other_waiting = await create_execution(engine.store, ns, other.id, {})
    for xid in [*waiting, other_waiting]:
        await _until(engine, xid, "QUEUED")

    done = await trio.to_thread.run_sync(
        lambda: _cli(
            "sys",
            "submit-queued",
            "--database-url",
            database_url,
            "--namespace",
            ns,
            "--flow",
            record.id,
        )  # fmt: skip
    )
    assert done.returncode == 0, done.stderr
    assert "Started 2 queued execution(s)" in done.stdout
    assert set(done.stdout.split()[:2]) == set(waiting)
    for xid in waiting:
        paused = await wait_for_end(
            engine.store, engine.notifier, xid, until_paused=True, timeout=30
        )
        assert paused.state == "PAUSED"
    # The other flow's queue was not touched.
    assert [s for _, _, s in await _states(engine, [other_waiting])] == ["CREATED", "QUEUED"]
    again = await trio.to_thread.run_sync(
        lambda: _cli("sys", "submit-queued", "--database-url", database_url, "--flow", record.id)
    )
    assert "Started 0 queued execution(s)" in again.stdout
    for xid in [first, *waiting, other_first, other_waiting]:
        await kill_execution(engine.store, xid)
    for xid in [first, *waiting, other_first, other_waiting]:
        assert (await wait_for_end(engine.store, engine.notifier, xid, timeout=30)).terminal
    await _ended(engine, [other_waiting])


def test_flow_validate_names_a_bad_limit_and_an_unknown_behavior_at_their_line(
    tmp_path: Any,
) -> None:
    path = tmp_path / "bad.yml"
    path.write_text(
        "id: bad\nnamespace: company.team\nconcurrency:\n  limit: 0\n  behavior: DROP\n"
        "tasks:\n  - id: a\n    type: io.kestra.plugin.core.log.Log\n    message: hi\n"
    )
    done = _cli("flow", "validate", str(path))
    assert done.returncode == 1
    assert ":4:" in done.stdout and "concurrency.limit" in done.stdout
    assert ":5:" in done.stdout and "Unknown concurrency behavior 'DROP'" in done.stdout


async def test_a_ledger_that_moved_after_it_was_read_writes_nothing_and_is_planned_again(
    store: EventStore, ns: str
) -> None:
    ledgers = Ledgers(store)
    changes: list[tuple[str, str, Change]] = [(ns, "f", Arrival("x1", Limit(1)))]
    appends, commands = await ledgers.appends(changes, {"actor": "test"})
    # Another executor takes the only slot meanwhile.
    await store.append(
        ledger_stream(ns, "f"),
        [ev.ConcurrencySlotTaken(namespace=ns, flowId="f", executionId="other")],
        expected_version=NO_STREAM,
    )
    with pytest.raises(LedgerMoved):
        await store.append_many(appends, extra=check(commands))
    assert await store.read_stream(ev.execution_stream("x1")) == []
    appends, commands = await ledgers.appends(changes, {"actor": "test"})
    await store.append_many(appends, extra=check(commands))
    [told] = [e.event for e in await store.read_stream(ev.execution_stream("x1"))]
    assert told == ev.ConcurrencyLimitReached(executionId="x1", limit=1, behavior="QUEUE")
    ledger = [e.type for e in await store.read_stream(ledger_stream(ns, "f"))]
    assert ledger == ["ConcurrencySlotTaken", "ConcurrencyQueued"]
