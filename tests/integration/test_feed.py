"""The process's feed of the log: what its consumers read from memory is the log itself, in
order and once, whether this process or another one appended it."""

from __future__ import annotations

import uuid

import trio

from engine import events as ev
from engine.commands import create_execution, deploy_flow, wait_for_end
from engine.db import Database, Notifier
from engine.execution.state import Execution
from engine.feed import Feed
from engine.server import ServerContext
from engine.store import EventStore


def _kv(namespace: str, i: int) -> ev.KVSet:
    return ev.KVSet(namespace=namespace, key=f"k{i}", value={"n": i, "b": [1, 2], "a": "x"})


async def _start(
    nursery: trio.Nursery, database_url: str, notifier: Notifier
) -> tuple[EventStore, Feed, Database]:
    db = Database(database_url)
    store = EventStore(db)
    feed = Feed(store, notifier)
    await nursery.start(feed.run)
    store.feed = feed
    store.committed = notifier.committed
    return store, feed, db


async def test_own_appends_reach_the_feed_without_reading_the_log(
    database_url: str, notifier: Notifier, nursery: trio.Nursery
) -> None:
    store, feed, db = await _start(nursery, database_url, notifier)
    reads = 0
    real_read_all = store.read_all

    async def counted(*args: object, **kwargs: object) -> object:
        nonlocal reads
        reads += 1
        return await real_read_all(*args, **kwargs)  # type: ignore[arg-type]

    store.read_all = counted  # type: ignore[method-assign]
    ns = f"feed{uuid.uuid4().hex[:8]}"
    for i in range(20):
        result = await store.append(ev.kv_stream(ns, f"k{i}"), [_kv(ns, i)])
        assert result.last_seq is not None
        # Held at once, before any notification comes back.
        assert feed.head >= result.last_seq
    await trio.sleep(0.3)
    # Other tests of the session may append meanwhile: only those need reading.
    assert reads < 20
    held = feed.after(feed.start or 0, ["KVSet"], 10_000)
    assert held is not None
    mine = [e for e in held[0] if e.stream_id.startswith(f"kv:{ns}")]
    assert [e.event.key for e in mine] == [f"k{i}" for i in range(20)]  # type: ignore[union-attr]
    # What the feed holds is what a reader reads back (jsonb's order of keys included).
    read_back = await real_read_all(mine[0].seq - 1, 1)
    assert read_back[0] == mine[0]
    await db.close()


async def test_the_feed_holds_every_event_once_in_order_when_processes_append_together(
    database_url: str, notifier: Notifier, nursery: trio.Nursery
) -> None:
    store, feed, db = await _start(nursery, database_url, notifier)
    other_db = Database(database_url)
    other = EventStore(other_db)  # another process: no feed, no offers
    ns = f"feed{uuid.uuid4().hex[:8]}"
    start = feed.head

    async def appender(target: EventStore, name: str) -> None:
        for i in range(30):
            await target.append(ev.kv_stream(ns, f"{name}-{i}"), [_kv(ns, i)])

    async with trio.open_nursery() as inner:
        for n in range(4):
            inner.start_soon(appender, store, f"own{n}")
        for n in range(2):
            inner.start_soon(appender, other, f"other{n}")
    head = await store.head()
    with trio.fail_after(10):
        while feed.head < head:
            await feed.wait(feed.generation, 0.5)
    held = feed.after(start, None, 1_000_000)
    assert held is not None
    seqs = [e.seq for e in held[0] if e.seq <= head]
    logged = [e.seq for e in await store.read_all(start, 1_000_000) if e.seq <= head]
    assert seqs == logged
    assert len([e for e in held[0] if e.stream_id.startswith(f"kv:{ns}")]) == 180
    await other_db.close()
    await db.close()


async def test_waiters_of_a_process_see_ends_recorded_by_another_one_through_its_feed(
    engine: ServerContext, database_url: str, notifier: Notifier, nursery: trio.Nursery
) -> None:
    # This test's store, feed and notifier stand for an API process; `engine` runs the flows.
    store, feed, db = await _start(nursery, database_url, notifier)
    ns = f"feed{uuid.uuid4().hex[:8]}"
    source = f"id: steps\nnamespace: {ns}\ntasks:\n" + "".join(
        f"  - id: t{i}\n    type: io.kestra.plugin.core.debug.Return\n    format: '{i}'\n"
        for i in range(5)
    )
    await deploy_flow(engine.store, source)
    ids = [await create_execution(engine.store, ns, "steps") for _ in range(3)]
    with trio.fail_after(30):
        async with trio.open_nursery() as waiting:
            ended: list[Execution] = []

            async def wait(xid: str) -> None:
                ended.append(await wait_for_end(store, notifier, xid, timeout=30))

            for xid in ids:
                waiting.start_soon(wait, xid)
    assert sorted(e.id for e in ended) == sorted(ids)
    assert all(e.state == "SUCCESS" and len(e.taskruns) == 5 for e in ended)
    # A waiter started after the end returns at once, from the fold.
    again = await wait_for_end(store, notifier, ids[0], timeout=1)
    assert again.state == "SUCCESS"
    await db.close()
