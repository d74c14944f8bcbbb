"""Kestra's maintenance tasks: PurgeExecutions, PurgeLogs and PurgeKV remove what the read
models, storage and the KV store show, and never an event."""

from __future__ import annotations

import datetime as dt
import functools
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio

from engine import events as ev
from engine import kv
from engine.commands import create_execution, deploy_flow, load_execution, wait_for_end
from engine.errors import NotFound
from engine.execution import Execution
from engine.server import ServerContext, run_server
from engine.store import StoredEvent
from projections.logs import LogsProjection


@pytest.fixture
async def engine(database_url: str, tmp_path: Path) -> AsyncIterator[ServerContext]:
    # The projections too: purges read the executions and logs read models.
    async with trio.open_nursery() as nursery:
        ctx = await nursery.start(
            functools.partial(
                run_server,
                database_url,
                ("executor", "worker", "indexer"),
                data_dir=tmp_path,
                heartbeat_interval=0.5,
            )
        )
        yield ctx
        nursery.cancel_scope.cancel()


@pytest.fixture
def ns() -> str:
    return f"test.p{uuid.uuid4().hex[:12]}"


async def _run(ctx: ServerContext, source: str) -> Execution:
    record = await deploy_flow(ctx.store, source)
    xid = await create_execution(ctx.store, record.namespace, record.id, {})
    return await wait_for_end(ctx.store, ctx.notifier, xid, timeout=60)


async def _eventually(check: Any, what: str, timeout: float = 30) -> Any:
    """Poll `check()` until it is truthy (the projections catch up on their own time)."""
    with trio.move_on_after(timeout):
        while True:
            value = await check()
            if value:
                return value
            await trio.sleep(0.05)
    pytest.fail(f"timed out waiting for {what}")


async def _rows(ctx: ServerContext, sql: str, *params: Any) -> list[dict[str, Any]]:
    return await ctx.db.fetchall(sql, params)


def _victim(namespace: str, flow_id: str = "victim") -> str:
    return f"""
id: {flow_id}
namespace: {namespace}
tasks:
  - id: hello
    type: io.kestra.plugin.core.log.Log
    message: hello from {flow_id}
  - id: boom
    type: io.kestra.plugin.core.log.Log
    level: ERROR
    message: an error line
  - id: file
    type: io.kestra.plugin.scripts.shell.Commands
    commands:
      - echo kept > out.txt
    outputFiles:
      - out.txt
"""


def _outputs(state: Execution, task_id: str) -> dict[str, Any]:
    [run] = [r for r in state.taskruns.values() if r.taskId == task_id]
    return dict(run.outputs or {})


async def _projected(ctx: ServerContext, ids: list[str]) -> None:
    async def ready() -> bool:
        rows = await _rows(
            ctx, "SELECT id FROM executions WHERE id = ANY(%s) AND end_date IS NOT NULL", ids
        )
        logs = await _rows(
            ctx, "SELECT DISTINCT execution_id FROM logs WHERE execution_id = ANY(%s)", ids
        )
        return len(rows) == len(ids) and len(logs) == len(ids)

    await _eventually(ready, "the read models of the executions")


def _purger(namespace: str, task: str) -> str:
    return f"""
id: purger
namespace: {namespace}
tasks:
{task}
"""


async def test_purge_executions_removes_rows_logs_and_files_but_never_events(
    engine: ServerContext, ns: str
) -> None:
    first = await _run(engine, _victim(f"{ns}.team"))
    second = await _run(engine, _victim(f"{ns}.team"))
    other = await _run(engine, _victim(f"{ns}other", "bystander"))
    ids = [first.id, second.id, other.id]
    await _projected(engine, ids)
    assert engine.storage is not None
    files = [_outputs(s, "file")["outputFiles"]["out.txt"] for s in (first, second, other)]
    assert all(engine.storage.exists(uri) for uri in files)

    purger = await _run(
        engine,
        _purger(
            f"{ns}maintenance",
            f"""
  - id: purge
    type: io.kestra.plugin.core.execution.PurgeExecutions
    namespace: {ns}
    endDate: "{{{{ now() | dateAdd(1, 'DAYS') }}}}"
    states: [SUCCESS, WARNING]
""",
        ),
    )
    assert purger.state == "SUCCESS", purger
    counts = _outputs(purger, "purge")
    assert counts["executionsCount"] == 2
    assert counts["logsCount"] == 4  # two lines of each purged execution
    assert counts["storagesCount"] >= 2
    assert counts["metricsCount"] == 0

    async def gone() -> bool:
        rows = await _rows(engine, "SELECT id FROM executions WHERE id = ANY(%s)", ids)
        return {r["id"] for r in rows} == {other.id}

    await _eventually(gone, "the purged executions to leave the executions list")

    async def logs_gone() -> bool:
        # The logs read model is a projection of its own, which may trail the executions one.
        logs = await _rows(
            engine, "SELECT DISTINCT execution_id FROM logs WHERE execution_id = ANY(%s)", ids
        )
        return [r["execution_id"] for r in logs] == [other.id]

    await _eventually(logs_gone, "the purged executions' logs to leave the logs read model")
    assert [engine.storage.exists(uri) for uri in files] == [False, False, True]
    for state in (first, second):
        with pytest.raises(NotFound):
            await load_execution(engine.store, state.id)
        # Never an event: the history is the audit trail.
        history = await engine.store.read_execution(state.id)
        assert isinstance(history[0].event, ev.ExecutionCreated)
        assert isinstance(history[-1].event, ev.ExecutionPurged)


async def test_purge_executions_leaves_states_it_was_not_asked_for(
    engine: ServerContext, ns: str
) -> None:
    victim = await _run(engine, _victim(ns))
    await _projected(engine, [victim.id])
    purger = await _run(
        engine,
        _purger(
            f"{ns}maintenance",
            f"""
  - id: purge
    type: io.kestra.plugin.core.execution.PurgeExecutions
    namespace: {ns}
    flowId: victim
    endDate: "{{{{ now() | dateAdd(1, 'DAYS') }}}}"
    states: [FAILED, KILLED]
""",
        ),
    )
    assert _outputs(purger, "purge")["executionsCount"] == 0
    await load_execution(engine.store, victim.id)  # still there


async def test_purge_executions_before_a_date_keeps_newer_ones(
    engine: ServerContext, ns: str
) -> None:
    victim = await _run(engine, _victim(ns))
    await _projected(engine, [victim.id])
    purger = await _run(
        engine,
        _purger(
            f"{ns}maintenance",
            f"""
  - id: purge
    type: io.kestra.plugin.core.execution.PurgeExecutions
    namespace: {ns}
    endDate: "{{{{ now() | dateAdd(-1, 'MONTHS') }}}}"
""",
        ),
    )
    assert _outputs(purger, "purge")["executionsCount"] == 0
    await load_execution(engine.store, victim.id)


async def test_purge_logs_keeps_error_lines_when_asked(engine: ServerContext, ns: str) -> None:
    victim = await _run(engine, _victim(ns))
    await _projected(engine, [victim.id])
    purger = await _run(
        engine,
        _purger(
            f"{ns}maintenance",
            f"""
  - id: purge
    type: io.kestra.plugin.core.log.PurgeLogs
    namespace: {ns}
    endDate: "{{{{ now() | dateAdd(1, 'HOURS') }}}}"
    logLevels: [TRACE, DEBUG, INFO, WARN]
""",
        ),
    )
    assert purger.state == "SUCCESS", purger
    assert _outputs(purger, "purge") == {"count": 1}

    async def only_errors() -> list[str] | None:
        rows = await _rows(
            engine, "SELECT level FROM logs WHERE execution_id = %s ORDER BY seq", victim.id
        )
        levels = [r["level"] for r in rows]
        return levels if levels == ["ERROR"] else None

    await _eventually(only_errors, "the INFO line to be purged")
    await load_execution(engine.store, victim.id)  # the execution itself stays


async def test_rebuilt_logs_read_model_purges_the_same_lines(database_url: str) -> None:
    # A rebuild replays the purge at its position: lines logged before it that match go,
    # lines logged after it stay, whatever their timestamps.
    import psycopg

    xid = f"x{uuid.uuid4().hex[:12]}"
    now = dt.datetime.now(dt.UTC)

    def logged(seq: int, level: str) -> StoredEvent:
        event = ev.AttemptLogged(
            executionId=xid,
            taskRunId="tr",
            taskId="t",
            attempt=1,
            lines=[{"level": level, "message": f"line {seq}", "timestamp": now.isoformat()}],
        )
        return StoredEvent(seq, ev.execution_stream(xid), seq, "AttemptLogged", event, {}, now)

    purge = ev.LogsPurged(executionIds=[xid], levels=["INFO"])
    batch = [
        logged(10**15 + 1, "INFO"),
        logged(10**15 + 2, "ERROR"),
        StoredEvent(10**15 + 3, "purge:t/1", 1, "LogsPurged", purge, {}, now),
        logged(10**15 + 4, "INFO"),
    ]
    with psycopg.connect(database_url) as conn:
        LogsProjection().apply(batch, conn)
        rows = conn.execute(
            "SELECT seq, level FROM logs WHERE execution_id = %s ORDER BY seq", (xid,)
        ).fetchall()
        conn.rollback()
    assert rows == [(10**15 + 2, "ERROR"), (10**15 + 4, "INFO")]


async def test_purge_kv_deletes_expired_keys_only_by_default(
    engine: ServerContext, ns: str
) -> None:
    store = engine.store
    short = dt.timedelta(milliseconds=50)
    await kv.kv_set(store, ns, "old_token", "a", ttl=short)
    await kv.kv_set(store, ns, "config", "b")
    await kv.kv_set(store, f"{ns}.child", "old_cache", "c", ttl=short)
    await kv.kv_set(store, f"{ns}x", "old_elsewhere", "d", ttl=short)
    await trio.sleep(0.1)
    purger = await _run(
        engine,
        _purger(
            f"{ns}maintenance",
            f"""
  - id: expired
    type: io.kestra.plugin.core.kv.PurgeKV
    namespaces: [{ns}]
  - id: everything_b
    type: io.kestra.plugin.core.kv.PurgeKV
    namespaces: [{ns}]
    includeChildNamespaces: false
    keyPattern: "conf*"
    expiredOnly: false
""",
        ),
    )
    assert purger.state == "SUCCESS", purger
    assert _outputs(purger, "expired") == {"size": 2}  # old_token and the child's old_cache
    assert _outputs(purger, "everything_b") == {"size": 1}
    assert await kv.kv_entries(store, ns) == {}
    # Another namespace is not touched: its expired key is still recorded as set.
    last = (await store.read_stream(ev.kv_stream(f"{ns}x", "old_elsewhere")))[-1]
    assert isinstance(last.event, ev.KVSet)
    deleted = (await store.read_stream(ev.kv_stream(ns, "old_token")))[-1]
    assert isinstance(deleted.event, ev.KVDeleted)


def test_purge_tasks_are_checked_when_the_flow_is_saved() -> None:
    from engine.errors import FlowValidationError
    from engine.flow import parse_flow

    source = """
id: bad
namespace: test.purge
tasks:
  - id: logs
    type: io.kestra.plugin.core.log.PurgeLogs
    endDate: "2024-01-01T00:00:00Z"
    logLevels: [LOUD]
  - id: executions
    type: io.kestra.plugin.core.execution.PurgeExecutions
    endDate: "2024-01-01T00:00:00Z"
    flowId: alone
    purgeLog: maybe
  - id: keys
    type: io.kestra.plugin.core.kv.PurgeKV
    namespaces: [a]
    namespacePattern: "b*"
"""
    with pytest.raises(FlowValidationError) as caught:
        parse_flow(source)
    paths = sorted(p.path for p in caught.value.details)
    assert paths == [
        "tasks[0].logLevels",
        "tasks[1].flowId",
        "tasks[1].purgeLog",
        "tasks[2].namespacePattern",
    ]
