"""Submissions stay right while they get cheap: flows read once per revision, shared commits,
waiters that fold an execution once, and consumers that cost nothing while they have nothing
to do."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
import trio

from engine import events as ev
from engine.batcher import CommitGroup
from engine.commands import (
    create_execution,
    delete_flow,
    deploy_flow,
    idempotent_execution_id,
    load_execution,
    wait_for_end,
)
from engine.db import Database, Notifier
from engine.errors import NotFound, WrongExpectedVersion
from engine.server import ServerContext
from engine.store import CHANNEL, NO_STREAM, Append, EventStore
from engine.subscription import Subscription
from engine.timers import CHECKPOINT as TIMERS
from engine.timers import TimerService
from engine.watchdog import CHECKPOINT as WATCHDOG
from engine.watchdog import Watchdog


def _flow(ns: str, flow_id: str, value: str, *, disabled: bool = False) -> str:
    return (
        f"id: {flow_id}\nnamespace: {ns}\n"
        + ("disabled: true\n" if disabled else "")
        + "tasks:\n  - id: r\n    type: io.kestra.plugin.core.debug.Return\n"
        + f"    format: '{value}'\n"
    )


async def _recorded_flow(store: EventStore, execution_id: str) -> tuple[int, dict[str, Any]]:
    [created] = [
        e.event
        for e in await store.read_execution(execution_id)
        if isinstance(e.event, ev.ExecutionCreated)
    ]
    return created.flowRevision, created.flow


async def test_flow_updated_between_two_submissions_starts_the_new_revision(
    store: EventStore, db: Database, ns: str
) -> None:
    await deploy_flow(store, _flow(ns, "f", "one"))
    first = await create_execution(store, ns, "f")
    # Updated by another process: a store of its own, sharing nothing in memory with `store`.
    other = EventStore(db)
    await deploy_flow(other, _flow(ns, "f", "two"))
    second = await create_execution(store, ns, "f")
    third = await create_execution(store, ns, "f", revision=1)

    revision, flow = await _recorded_flow(store, first)
    assert (revision, flow["tasks"][0]["format"]) == (1, "one")
    revision, flow = await _recorded_flow(store, second)
    assert (revision, flow["tasks"][0]["format"]) == (2, "two")
    revision, flow = await _recorded_flow(store, third)
    assert (revision, flow["tasks"][0]["format"]) == (1, "one")


async def test_flow_deleted_or_disabled_after_a_submission_refuses_the_next(
    store: EventStore, db: Database, ns: str
) -> None:
    await deploy_flow(store, _flow(ns, "gone", "x"))
    await deploy_flow(store, _flow(ns, "paused", "x"))
    await create_execution(store, ns, "gone")
    await create_execution(store, ns, "paused")
    other = EventStore(db)
    await delete_flow(other, ns, "gone")
    await deploy_flow(other, _flow(ns, "paused", "x", disabled=True))

    with pytest.raises(NotFound, match="was deleted"):
        await create_execution(store, ns, "gone")
    with pytest.raises(Exception, match="is disabled"):
        await create_execution(store, ns, "paused")


async def test_concurrent_submissions_with_idempotency_keys_create_one_execution_per_key(
    store: EventStore, ns: str
) -> None:
    await deploy_flow(store, _flow(ns, "f", "x"))
    keys = [f"key-{i}" for i in range(5)]
    outcomes: list[tuple[str, str]] = []

    async def submit(key: str) -> None:
        # What POST /api/v1/executions does with an Idempotency-Key.
        xid = idempotent_execution_id(ns, "f", key)
        try:
            got = await create_execution(store, ns, "f", execution_id=xid)
        except WrongExpectedVersion:
            outcomes.append((key, "exists"))
        else:
            assert got == xid
            outcomes.append((key, "created"))

    async with trio.open_nursery() as nursery:
        for _ in range(4):
            for key in keys:
                nursery.start_soon(submit, key)

    for key in keys:
        assert sorted(o for k, o in outcomes if k == key) == ["created"] + ["exists"] * 3
        history = await store.read_execution(idempotent_execution_id(ns, "f", key))
        assert [e.type for e in history] == ["ExecutionCreated"]


async def test_submission_retried_with_its_command_id_creates_nothing_new(
    store: EventStore, ns: str
) -> None:
    await deploy_flow(store, _flow(ns, "f", "x"))
    command = f"create:{uuid.uuid4()}"
    ids: list[str] = []

    async def submit() -> None:
        ids.append(await create_execution(store, ns, "f", command_id=command))

    async with trio.open_nursery() as nursery:
        for _ in range(6):
            nursery.start_soon(submit)
    assert len(set(ids)) == 1
    assert len(await store.read_execution(ids[0])) == 1


async def test_concurrent_appends_share_commits(store: EventStore, db: Database) -> None:
    group = CommitGroup(store)
    streams = [f"test:{uuid.uuid4()}" for _ in range(50)]
    results = []

    async def append(stream: str) -> None:
        results.append(await group.append(Append(stream, [ev.WorkerLost(workerId="w")])))

    async with trio.open_nursery() as nursery:
        for stream in streams:
            nursery.start_soon(append, stream)

    assert sorted(r.stream_id for r in results) == sorted(streams)
    assert all(r.status == "written" for r in results)
    # Each transaction leaves its id on the rows it wrote.
    row = await db.fetchone(
        "SELECT count(DISTINCT xmin::text) AS n FROM events WHERE stream_id = ANY(%s)",
        (streams,),
    )
    assert row is not None and row["n"] <= 3


async def test_append_the_store_refuses_fails_alone_in_a_shared_commit(
    store: EventStore,
) -> None:
    group = CommitGroup(store)
    good = [f"test:{uuid.uuid4()}" for _ in range(10)]
    bad = f"test:{uuid.uuid4()}"
    errors: list[BaseException] = []

    async def append(stream: str, event: ev.Event) -> None:
        try:
            await group.append(Append(stream, [event]))
        except Exception as exc:
            errors.append(exc)

    unencodable = ev.ExecutionKillRequested(executionId=object())  # type: ignore[arg-type]
    async with trio.open_nursery() as nursery:
        for stream in good[:5]:
            nursery.start_soon(append, stream, ev.WorkerLost(workerId="w"))
        nursery.start_soon(append, bad, unencodable)
        for stream in good[5:]:
            nursery.start_soon(append, stream, ev.WorkerLost(workerId="w"))

    assert len(errors) == 1 and isinstance(errors[0], TypeError)
    for stream in good:
        assert len(await store.read_stream(stream)) == 1
    assert await store.read_stream(bad) == []


async def test_wait_for_end_returns_the_final_state_of_each_execution_waited_on(
    engine: ServerContext, ns: str
) -> None:
    sleep = (
        f"id: slow\nnamespace: {ns}\ntasks:\n"
        "  - id: s\n    type: io.kestra.plugin.core.flow.Sleep\n    duration: PT0.3S\n"
        "  - id: r\n    type: io.kestra.plugin.core.debug.Return\n    format: '{{ execution.id }}'\n"
    )
    await deploy_flow(engine.store, sleep)
    fails = (
        f"id: fails\nnamespace: {ns}\ntasks:\n"
        "  - id: boom\n    type: io.kestra.plugin.core.execution.Fail\n"
    )
    await deploy_flow(engine.store, fails)
    ids = [await create_execution(engine.store, ns, "slow") for _ in range(8)]
    failing = await create_execution(engine.store, ns, "fails")
    ended: dict[str, Any] = {}

    async def wait(xid: str) -> None:
        ended[xid] = await wait_for_end(engine.store, engine.notifier, xid, timeout=60)

    async with trio.open_nursery() as nursery:
        for xid in [*ids, failing, ids[0]]:
            nursery.start_soon(wait, xid)

    for xid in ids:
        state = ended[xid]
        assert state.state == "SUCCESS"
        [returned] = [run for run in state.taskruns.values() if run.taskId == "r"]
        assert returned.outputs == {"value": xid}
        assert state == await load_execution(engine.store, xid)
    assert ended[failing].state == "FAILED"
    # Waiting on an execution that has ended already answers at once with its final state.
    again = await wait_for_end(engine.store, engine.notifier, ids[0], timeout=60)
    assert again == ended[ids[0]]


async def test_wait_for_an_unknown_execution_is_not_found(
    store: EventStore, notifier: Notifier
) -> None:
    with pytest.raises(NotFound):
        await wait_for_end(store, notifier, "nosuchexecution000000", timeout=5)


async def test_subscription_to_rare_types_moves_past_the_others_without_handling_them(
    store: EventStore, notifier: Notifier, nursery: trio.Nursery
) -> None:
    stream = f"test:{uuid.uuid4()}"
    start = await store.head()
    await store.append_many([Append(stream, [ev.WorkerLost(workerId="w")] * 300)])
    head = await store.head()
    handled: list[Any] = []

    async def handle(batch: list[Any]) -> None:
        handled.extend(batch)

    sub = Subscription(
        store, notifier, position=start, types=["TriggerToggled"], batch_size=100, name="rare"
    )
    await nursery.start(sub.run, handle)
    assert handled == []
    assert sub.position >= head  # one read took it to the head it saw, past all 300

    toggled = ev.TriggerToggled(namespace="n", flowId="f", triggerId="t", enabled=False)
    await store.append(f"test:{uuid.uuid4()}", [toggled])
    with trio.fail_after(30):
        while not handled:
            await trio.sleep(0.01)
    assert [e.event for e in handled] == [toggled]


async def test_read_after_with_types_reaches_the_head_only_when_the_batch_is_short(
    store: EventStore,
) -> None:
    stream = f"test:{uuid.uuid4()}"
    start = await store.head()
    hb = [ev.WorkerHeartbeat(workerId="w", hostname=str(i)) for i in range(5)]
    written = await store.append(stream, [*hb, ev.WorkerLost(workerId="w")])
    full, reached = await store.read_after(start, 3, ["WorkerHeartbeat"])
    assert len(full) == 3 and reached == full[-1].seq
    rest, reached = await store.read_after(reached, 3, ["WorkerHeartbeat"])
    assert len(rest) == 2 and reached >= written.last_seq  # type: ignore[operator]
    none, again = await store.read_after(reached, 3, ["WorkerHeartbeat"])
    assert none == [] and again >= reached


async def test_idle_timers_and_watchdog_commit_no_checkpoint(
    database_url: str, db: Database, store: EventStore, nursery: trio.Nursery
) -> None:
    notifier = Notifier(database_url, CHANNEL)
    await nursery.start(notifier.run)
    timers = TimerService(store, notifier)
    watchdog = Watchdog(store, notifier, timeout=0.4)
    await nursery.start(timers.run)
    await nursery.start(watchdog.run)

    async def checkpoints() -> list[dict[str, Any]]:
        return await db.fetchall(
            "SELECT name, position, updated_at FROM checkpoints WHERE name = ANY(%s) ORDER BY name",
            ([TIMERS, WATCHDOG],),
        )

    # Let both catch up with what earlier tests left, then note where they stand.
    head = await store.head()
    with trio.fail_after(60):
        while not all(s.position >= head for s in _subscriptions(timers, watchdog)):
            await trio.sleep(0.05)
    before = await checkpoints()
    # Events neither wants, and time for the watchdog to look for lost workers many times.
    stream = f"test:{uuid.uuid4()}"
    for i in range(20):
        await store.append(stream, [ev.WorkerHeartbeat(workerId="nobody", hostname=str(i))])
    head = await store.head()
    with trio.fail_after(60):
        while not all(s.position >= head for s in _subscriptions(timers, watchdog)):
            await trio.sleep(0.05)
    await trio.sleep(1.0)
    assert notifier.health.is_up
    assert await checkpoints() == before


def _subscriptions(*services: TimerService | Watchdog) -> list[Subscription]:
    return [service.subscription for service in services if service.subscription is not None]


async def test_append_after_a_new_stream_is_taken_conflicts(store: EventStore) -> None:
    stream = f"test:{uuid.uuid4()}"
    group = CommitGroup(store)
    first = await group.append(Append(stream, [ev.WorkerLost(workerId="w")], NO_STREAM))
    second = await group.append(Append(stream, [ev.WorkerLost(workerId="w")], NO_STREAM))
    assert (first.status, second.status) == ("written", "conflict")
