"""Processes outlive their database: a PostgreSQL restart or terminated connections delay work,
never lose it, and readiness says DOWN while the database is away.

Each test that breaks the database runs its own PostgreSQL (never the shared test database).
"""

from __future__ import annotations

import functools
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
import trio

from engine import events as ev
from engine.backoff import Backoff, is_transient, retry
from engine.commands import create_execution, deploy_flow, load_execution
from engine.db import Database, Notifier
from engine.embedded import EmbeddedPostgres
from engine.errors import DatabaseUnavailable
from engine.health import Health
from engine.migrate import migrate
from engine.server import ServerContext, run_server
from engine.store import CHANNEL, EventStore, StoredEvent
from engine.subscription import Subscription

TERMINATE_ALL = (
    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
    " WHERE pid <> pg_backend_pid() AND datname = current_database()"
)


class Postgres:
    """A PostgreSQL of the test's own that the test may stop, start and cut off."""

    def __init__(self, data_dir: Path) -> None:
        self.embedded = EmbeddedPostgres(data_dir)
        self.url = self.embedded.start()

    async def stop(self) -> None:
        await trio.to_thread.run_sync(self.embedded.stop)

    async def start(self) -> None:
        url = await trio.to_thread.run_sync(self.embedded.start)
        assert url == self.url

    async def restart(self, down_for: float) -> None:
        await self.stop()
        await trio.sleep(down_for)
        await self.start()

    def terminate_all(self) -> int:
        """End every other connection to the database, as an administrator's shutdown would."""
        with psycopg.connect(self.url, autocommit=True) as conn:
            return len(conn.execute(TERMINATE_ALL).fetchall())


@pytest.fixture
def pg(tmp_path: Path) -> Iterator[Postgres]:
    server = Postgres(tmp_path / "pg")
    try:
        yield server
    finally:
        server.embedded.stop()


TIMERS_ONLY = """
  - id: nap
    type: io.kestra.plugin.core.flow.Sleep
    duration: PT1S
  - id: rest
    type: io.kestra.plugin.core.flow.Sleep
    duration: PT0.5S
"""
"""Tasks the executor and the timer service run alone, without a worker."""


def _flow(ns: str, tasks: str | None = None) -> str:
    if tasks is not None:
        return f"id: naps\nnamespace: {ns}\ntasks:{tasks}"
    return f"""
id: naps
namespace: {ns}
tasks:
  - id: work
    type: io.kestra.plugin.scripts.shell.Commands
    taskRunner:
      type: io.kestra.plugin.core.runner.Process
    commands:
      - sleep 1
  - id: rest
    type: io.kestra.plugin.core.flow.Sleep
    duration: PT0.5S
  - id: done
    type: io.kestra.plugin.core.debug.Return
    format: "{{{{ execution.id }}}}"
"""


async def _serve(
    nursery: trio.Nursery, pg: Postgres, tmp_path: Path, roles: tuple[str, ...]
) -> ServerContext:
    ctx: ServerContext = await nursery.start(
        functools.partial(
            run_server,
            pg.url,
            (*roles, "webserver"),
            data_dir=tmp_path / "server",
            heartbeat_interval=0.5,
            host="127.0.0.1",
            port=0,
        )
    )
    return ctx


class Readiness:
    """Polls `/health/readiness` over HTTP and keeps every answer."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        self.answers: list[tuple[int, dict[str, Any]]] = []

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        async with httpx.AsyncClient(base_url=self.base_url, timeout=15) as http:
            task_status.started()
            while True:
                response = await http.get("/health/readiness")
                self.answers.append((response.status_code, response.json()))
                await trio.sleep(0.1)

    def statuses(self) -> list[int]:
        return [code for code, _ in self.answers]


async def _start_executions(
    ctx: ServerContext, ns: str, count: int, tasks: str | None = None
) -> list[str]:
    record = await deploy_flow(ctx.store, _flow(ns, tasks))
    return [await create_execution(ctx.store, record.namespace, record.id) for _ in range(count)]


async def _states(ctx: ServerContext, ids: list[str]) -> dict[str, str]:
    async def load() -> dict[str, str]:
        return {xid: (await load_execution(ctx.store, xid)).state for xid in ids}

    return await retry(load, what="reading executions")


async def _why(ctx: ServerContext, ids: list[str]) -> dict[str, list[str]]:
    """The task-run messages of every execution of `ids` that did not succeed."""
    out: dict[str, list[str]] = {}
    for xid in ids:
        state = await load_execution(ctx.store, xid)
        if state.state != "SUCCESS":
            out[xid] = [f"{r.taskId} {r.state}: {r.message}" for r in state.taskruns.values()]
    return out


async def _wait_until_ended(ctx: ServerContext, ids: list[str], timeout: float) -> dict[str, str]:
    with trio.move_on_after(timeout):
        while True:
            states = await _states(ctx, ids)
            if all(s in ("SUCCESS", "WARNING", "FAILED", "KILLED") for s in states.values()):
                return states
            await trio.sleep(0.5)
    return await _states(ctx, ids)


async def _read_model_states(ctx: ServerContext, ids: list[str], timeout: float) -> dict[str, str]:
    """The executions read model's states, once it shows every one of `ids` ended."""
    rows: list[dict[str, Any]] = []
    with trio.move_on_after(timeout):
        while True:
            rows = await ctx.db.fetchall(
                "SELECT id, state FROM executions WHERE id = ANY(%s) AND end_date IS NOT NULL",
                (ids,),
            )
            if len(rows) == len(ids):
                break
            await trio.sleep(0.3)
    return {r["id"]: r["state"] for r in rows}


async def _wait_ready(readiness: Readiness, timeout: float) -> None:
    with trio.move_on_after(timeout):
        while not readiness.answers or readiness.answers[-1][0] != 200:
            await trio.sleep(0.1)


async def _survive_restart(
    pg: Postgres, tmp_path: Path, nursery: trio.Nursery, roles: tuple[str, ...], tasks: str | None
) -> None:
    server = await _serve(nursery, pg, tmp_path, roles)
    readiness = Readiness(server.extra["urls"][0])
    await nursery.start(readiness.run)
    await _wait_ready(readiness, 10)
    assert readiness.statuses()[-1] == 200, readiness.answers[-1]

    ns = f"test.n{uuid.uuid4().hex[:12]}"
    ids = await _start_executions(server, ns, 20, tasks)
    await trio.sleep(1.0)
    before = await _states(server, ids)
    assert "RUNNING" in before.values(), before  # the outage comes mid-run

    await pg.restart(down_for=3.0)

    states = await _wait_until_ended(server, ids, timeout=120)
    assert states == dict.fromkeys(ids, "SUCCESS"), await _why(server, ids)
    assert await _read_model_states(server, ids, timeout=30) == dict.fromkeys(ids, "SUCCESS")

    await _wait_ready(readiness, 30)
    down = [body for code, body in readiness.answers if code == 503]
    assert down, "readiness never reported the outage"
    assert all(body["status"] == "DOWN" and body["message"] for body in down)
    assert any(c["status"] == "DOWN" for body in down for c in body["components"].values())
    code, body = readiness.answers[-1]
    assert code == 200 and body["status"] == "UP", body
    assert all(c["status"] == "UP" for c in body["components"].values())


async def test_executions_succeed_when_postgres_restarts_mid_run(
    pg: Postgres, tmp_path: Path, nursery: trio.Nursery
) -> None:
    await _survive_restart(pg, tmp_path, nursery, ("executor", "worker", "indexer"), None)


async def test_executor_timers_and_projections_carry_on_when_postgres_restarts(
    pg: Postgres, tmp_path: Path, nursery: trio.Nursery
) -> None:
    await _survive_restart(pg, tmp_path, nursery, ("executor", "indexer"), TIMERS_ONLY)


@pytest.mark.parametrize(
    ("roles", "tasks"),
    [(("executor", "worker", "indexer"), None), (("executor", "indexer"), TIMERS_ONLY)],
    ids=["with-worker", "timers-only"],
)
async def test_executions_succeed_when_every_connection_is_terminated(
    pg: Postgres,
    tmp_path: Path,
    nursery: trio.Nursery,
    roles: tuple[str, ...],
    tasks: str | None,
) -> None:
    server = await _serve(nursery, pg, tmp_path, roles)
    ns = f"test.n{uuid.uuid4().hex[:12]}"
    ids = await _start_executions(server, ns, 20, tasks)
    for _ in range(3):
        await trio.sleep(0.7)
        assert await trio.to_thread.run_sync(pg.terminate_all) > 0

    states = await _wait_until_ended(server, ids, timeout=120)
    assert states == dict.fromkeys(ids, "SUCCESS"), await _why(server, ids)
    assert await _read_model_states(server, ids, timeout=30) == dict.fromkeys(ids, "SUCCESS")
    assert server.notifier.reconnects >= 3
    with trio.move_on_after(10):
        while not server.health.is_up:
            await trio.sleep(0.1)
    assert server.health.is_up, server.health.down_components()


async def test_server_started_while_postgres_is_down_waits_for_it(
    pg: Postgres, tmp_path: Path, nursery: trio.Nursery
) -> None:
    await pg.stop()
    started: list[ServerContext] = []

    async def serve() -> None:
        ctx = await nursery.start(
            functools.partial(
                run_server,
                pg.url,
                ("executor", "worker", "indexer"),
                data_dir=tmp_path / "server",
                heartbeat_interval=0.5,
            )
        )
        started.append(ctx)

    nursery.start_soon(serve)
    await trio.sleep(2.0)
    assert not started  # still waiting, not exited
    await pg.start()
    with trio.fail_after(30):
        while not started:
            await trio.sleep(0.1)
    ctx = started[0]
    ids = await _start_executions(ctx, f"test.n{uuid.uuid4().hex[:12]}", 2)
    states = await _wait_until_ended(ctx, ids, timeout=60)
    assert states == dict.fromkeys(ids, "SUCCESS"), await _why(ctx, ids)


async def test_a_query_right_after_connections_are_terminated_succeeds(pg: Postgres) -> None:
    db = Database(pg.url, max_size=4)
    try:
        async with trio.open_nursery() as nursery:  # fill the pool with idle connections
            for _ in range(4):
                nursery.start_soon(db.execute, "SELECT pg_sleep(0.1)")
        assert await trio.to_thread.run_sync(pg.terminate_all) >= 4
        await trio.sleep(0.2)
        row = await db.fetchone("SELECT 1 AS ok")
        assert row == {"ok": 1}
    finally:
        await db.close()


async def test_a_stopped_postgres_fails_queries_fast_with_database_unavailable(
    pg: Postgres,
) -> None:
    db = Database(pg.url)
    try:
        assert await db.ping()
        await pg.stop()
        with trio.fail_after(5), pytest.raises((DatabaseUnavailable, psycopg.OperationalError)):
            await db.fetchone("SELECT 1")
        with trio.fail_after(5), pytest.raises(DatabaseUnavailable):
            await db.fetchone("SELECT 1")
        await pg.start()
        assert await db.fetchone("SELECT 1 AS ok") == {"ok": 1}
    finally:
        await db.close()


async def test_subscription_survives_a_restart_and_reports_down_meanwhile(
    pg: Postgres, nursery: trio.Nursery
) -> None:
    await trio.to_thread.run_sync(migrate, pg.url)
    db = Database(pg.url)
    store = EventStore(db)
    notifier = Notifier(pg.url, CHANNEL)
    await nursery.start(notifier.run)
    seen: list[StoredEvent] = []

    async def handle(batch: list[StoredEvent]) -> None:
        seen.extend(batch)

    sub = Subscription(store, notifier, types=["WorkerHeartbeat"], name="test", poll_interval=0.1)
    await nursery.start(sub.run, handle)

    async def beat(n: int) -> None:
        await store.append(ev.worker_stream("w"), [ev.WorkerHeartbeat(workerId=f"{n}")])

    await beat(1)
    await pg.stop()
    with trio.fail_after(10):
        while "test" not in notifier.health.down_components():
            await trio.sleep(0.05)
    assert not notifier.is_connected
    down = notifier.health.down_components()
    assert "test" in down and down["test"].reason
    await pg.start()
    await retry(lambda: beat(2), what="appending")
    with trio.fail_after(20):
        while len(seen) < 2 or not notifier.health.is_up:
            await trio.sleep(0.05)
    assert [e.event.workerId for e in seen] == ["1", "2"]  # type: ignore[union-attr]
    assert notifier.is_connected
    await db.close()


async def test_subscription_handler_bug_is_logged_and_retried_not_fatal(
    database_url: str, nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    db = Database(database_url)
    store = EventStore(db)
    notifier = Notifier(database_url, CHANNEL)
    await nursery.start(notifier.run)
    worker = f"w{uuid.uuid4().hex[:12]}"
    head = await db.fetchone("SELECT coalesce(max(seq), 0) AS seq FROM events")
    assert head is not None
    handled: list[str] = []
    retries: list[int] = []

    async def handle(batch: list[StoredEvent]) -> None:
        mine = [e for e in batch if getattr(e.event, "workerId", None) == worker]
        if mine and not retries:
            raise RuntimeError("boom in handler")
        handled.extend(e.event.workerId for e in mine)  # type: ignore[union-attr]

    sub = Subscription(
        store,
        notifier,
        position=head["seq"],
        types=["WorkerHeartbeat"],
        name="buggy",
        on_retry=lambda: retries.append(1),
    )
    await nursery.start(sub.run, handle)
    await store.append(ev.worker_stream(worker), [ev.WorkerHeartbeat(workerId=worker)])
    with trio.fail_after(10):
        while "buggy" not in notifier.health.down_components():
            await trio.sleep(0.02)
    assert "boom in handler" in notifier.health.down_components()["buggy"].reason
    with trio.fail_after(10):
        while not handled:
            await trio.sleep(0.05)
    assert handled == [worker] and retries == [1]
    assert notifier.health.is_up
    assert any(r.exc_info and "boom in handler" in str(r.exc_info[1]) for r in caplog.records)
    await db.close()


def test_outages_are_transient_and_bugs_are_not() -> None:
    outages = [
        psycopg.errors.AdminShutdown("terminating connection due to administrator command"),
        psycopg.OperationalError("connection refused"),
        psycopg.errors.SerializationFailure("could not serialize access"),
        psycopg.errors.DeadlockDetected("deadlock detected"),
        psycopg.InterfaceError("the connection is closed"),
        DatabaseUnavailable("Cannot connect to PostgreSQL"),
        ExceptionGroup("nursery", [DatabaseUnavailable("a"), psycopg.OperationalError("b")]),
    ]
    bugs = [
        psycopg.errors.UndefinedColumn('column "pid" does not exist'),
        psycopg.errors.UniqueViolation("duplicate key"),
        KeyError("x"),
        ExceptionGroup("nursery", [DatabaseUnavailable("a"), ValueError("b")]),
    ]
    assert [is_transient(e) for e in outages] == [True] * len(outages)
    assert [is_transient(e) for e in bugs] == [False] * len(bugs)


def test_backoff_doubles_up_to_its_cap_and_starts_over_after_a_success() -> None:
    backoff = Backoff()
    assert [backoff.failed() for _ in range(8)] == [0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 5.0, 5.0]
    backoff.reset()
    assert backoff.failed() == 0.1


async def test_retry_reports_down_while_failing_and_up_once_it_succeeds() -> None:
    health = Health()
    calls: list[str] = []

    async def flaky() -> str:
        calls.append("try")
        if len(calls) < 3:
            raise DatabaseUnavailable("Cannot connect to PostgreSQL: refused")
        assert "refused" in health.down_components()["thing"].reason  # DOWN while it failed
        return "done"

    assert await retry(flaky, what="flaky", health=health, component="thing") == "done"
    assert len(calls) == 3 and health.is_up and health.get("thing") is not None

    async def bug() -> None:
        raise ValueError("a bug")

    with pytest.raises(ValueError):
        await retry(bug, what="bug")
