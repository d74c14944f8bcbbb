"""The event store against a real PostgreSQL: invariants 1-3."""

from __future__ import annotations

import uuid

import psycopg
import pytest
import trio

from engine import events as ev
from engine.db import Database, Notifier
from engine.errors import WrongExpectedVersion
from engine.store import ANY, NO_STREAM, Append, EventStore, StoredEvent
from engine.subscription import Subscription


def _hb(worker: str, n: int = 0) -> ev.WorkerHeartbeat:
    return ev.WorkerHeartbeat(workerId=worker, hostname=str(n))


async def test_append_then_read_stream_returns_events_in_version_order(store: EventStore):
    stream = f"test:{uuid.uuid4()}"
    await store.append(stream, [_hb("a", 1), _hb("a", 2)], expected_version=NO_STREAM)
    await store.append(stream, [_hb("a", 3)], expected_version=1)
    got = await store.read_stream(stream)
    assert [e.version for e in got] == [0, 1, 2]
    assert [e.event.hostname for e in got] == ["1", "2", "3"]
    assert got[0].seq < got[1].seq < got[2].seq


async def test_append_with_stale_expected_version_is_rejected_and_writes_nothing(
    store: EventStore,
):
    stream = f"test:{uuid.uuid4()}"
    await store.append(stream, [_hb("a")], expected_version=NO_STREAM)
    with pytest.raises(WrongExpectedVersion, match="version 0"):
        await store.append(stream, [_hb("b")], expected_version=NO_STREAM)
    assert len(await store.read_stream(stream)) == 1


async def test_retried_append_with_same_command_id_is_not_duplicated(store: EventStore):
    stream = f"test:{uuid.uuid4()}"
    command = str(uuid.uuid4())
    first = await store.append(stream, [_hb("a"), _hb("a")], command_id=command)
    again = await store.append(stream, [_hb("a"), _hb("a")], command_id=command)
    assert first.status == "written" and again.status == "duplicate"
    assert again.first_seq == first.first_seq
    assert len(await store.read_stream(stream)) == 2


async def test_batch_append_reports_conflicts_per_stream_and_writes_the_rest(store: EventStore):
    a, b = f"test:{uuid.uuid4()}", f"test:{uuid.uuid4()}"
    await store.append(a, [_hb("a")])
    results = await store.append_many(
        [Append(a, [_hb("a")], NO_STREAM), Append(b, [_hb("b")], NO_STREAM)]
    )
    assert [r.status for r in results] == ["conflict", "written"]
    assert len(await store.read_stream(b)) == 1


async def test_events_table_rejects_update_delete_and_truncate(store: EventStore, db: Database):
    stream = f"test:{uuid.uuid4()}"
    await store.append(stream, [_hb("a")])
    for sql in (
        "UPDATE events SET type = 'X' WHERE stream_id = %s",
        "DELETE FROM events WHERE stream_id = %s",
        "TRUNCATE events",
    ):
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="append-only"):
            await db.execute(sql, (stream,) if "%s" in sql else None)
    assert len(await store.read_stream(stream)) == 1


async def test_subscriber_sees_every_concurrent_append_once_in_order_across_reconnect(
    store: EventStore, db: Database, database_url: str, nursery: trio.Nursery
):
    """4 appenders x 5,000 events while a subscriber runs and its LISTEN connection is killed."""
    writers, per_writer, batch = 4, 5000, 50
    run = uuid.uuid4().hex[:8]
    start = await store.head()
    notifier = Notifier(database_url, "tiercel_events")
    await nursery.start(notifier.run)
    seen: list[StoredEvent] = []
    done = trio.Event()
    expected = writers * per_writer

    async def handler(events: list[StoredEvent]) -> None:
        seen.extend(e for e in events if e.stream_id.startswith(f"race:{run}:"))
        if len(seen) >= expected:
            done.set()

    sub = Subscription(store, notifier, position=start, poll_interval=5.0, batch_size=700)
    nursery.start_soon(sub.run, handler)

    async def writer(w: int) -> None:
        pool = Database(database_url, max_size=2)
        writer_store = EventStore(pool)
        for i in range(0, per_writer, batch):
            stream = f"race:{run}:{w}:{i // 500}"
            await writer_store.append(
                stream, [_hb(str(w), i + k) for k in range(batch)], expected_version=ANY
            )
        await pool.close()

    async def kill_listener() -> None:
        await trio.sleep(0.3)
        pid = notifier.backend_pid()
        assert pid is not None
        await db.execute("SELECT pg_terminate_backend(%s)", (pid,))

    async with trio.open_nursery() as inner:
        for w in range(writers):
            inner.start_soon(writer, w)
        inner.start_soon(kill_listener)
    with trio.fail_after(60):
        await done.wait()

    assert notifier.reconnects >= 1
    seqs = [e.seq for e in seen]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs) == expected
    for w in range(writers):
        mine = [int(e.event.hostname) for e in seen if e.event.workerId == str(w)]
        assert mine == list(range(per_writer))
