"""The scheduler against a real PostgreSQL and a real engine: Schedule triggers start
executions, once per tick even with two schedulers, and not at all when disabled."""

from __future__ import annotations

import datetime as dt
import functools
import uuid
from pathlib import Path
from typing import Any

import msgspec
import pytest
import trio

import plugins.core  # noqa: F401  (registers the Schedule trigger)
from engine import events as ev
from engine.commands import (
    delete_flow,
    deploy_flow,
    toggle_trigger,
    trigger_enabled,
    wait_for_end,
)
from engine.scheduler import Scheduler
from engine.secrets import open_events
from engine.server import ServerContext, run_server
from engine.store import StoredEvent


def _flow(ns: str, trigger: str, *, flow_id: str = "scheduled", tasks: str | None = None) -> str:
    body = tasks or (
        "  - id: log\n"
        "    type: io.kestra.plugin.core.log.Log\n"
        "    message: 'tick {{ trigger.date }}'\n"
    )
    return f"id: {flow_id}\nnamespace: {ns}\ntasks:\n{body}triggers:\n{trigger}"


PER_SECOND = (
    "  - id: every-second\n"
    "    type: io.kestra.plugin.core.trigger.Schedule\n"
    "    withSeconds: true\n"
    '    cron: "* * * * * *"\n'
)


async def _fired(
    ctx: ServerContext, ns: str, flow_id: str, trigger_id: str
) -> list[ev.TriggerFired]:
    history = await ctx.store.read_stream(ev.trigger_stream(ns, flow_id, trigger_id))
    return [e.event for e in history if isinstance(e.event, ev.TriggerFired)]


async def _created(ctx: ServerContext, ns: str, flow_id: str) -> list[dict[str, Any]]:
    def read(conn: Any) -> list[dict[str, Any]]:
        rows = conn.execute(
            "SELECT seq, stream_id, data::text FROM events WHERE type = 'ExecutionCreated'"
            " AND data->>'namespace' = %s AND data->>'flowId' = %s ORDER BY seq",
            (ns, flow_id),
        ).fetchall()
        found = [
            StoredEvent(seq, stream, 0, "ExecutionCreated", ev.decode(data), {}, dt.datetime.now())
            for seq, stream, data in rows
        ]
        # Inputs are recorded sealed with each execution's key: read them as the engine does.
        return [msgspec.to_builtins(e.event) for e in open_events(conn, found)]

    return await ctx.store.db.run(read)


async def _run_scheduler(nursery: trio.Nursery, ctx: ServerContext, ns: str) -> Scheduler:
    scheduler = Scheduler(ctx.store, ctx.notifier, namespace=ns, health=ctx.health)
    await nursery.start(scheduler.run)
    return scheduler


async def test_schedule_starts_executions_that_see_the_trigger_dates(
    engine: ServerContext, ns: str
) -> None:
    source = _flow(
        ns,
        PER_SECOND + "    inputs:\n      when: '{{ trigger.date }}'\n"
        "    labels:\n      team: data\n",
    ).replace(
        "tasks:\n",
        "labels:\n  owner: ops\ninputs:\n  - id: when\n    type: STRING\ntasks:\n",
    )
    await deploy_flow(engine.store, source)
    try:
        async with trio.open_nursery() as nursery:
            await _run_scheduler(nursery, engine, ns)
            with trio.fail_after(20):
                while len(await _created(engine, ns, "scheduled")) < 2:
                    await trio.sleep(0.2)
            nursery.cancel_scope.cancel()
    finally:
        await delete_flow(engine.store, ns, "scheduled")
    created = (await _created(engine, ns, "scheduled"))[0]
    trigger = created["trigger"]
    assert trigger["id"] == "every-second"
    assert trigger["type"] == "io.kestra.plugin.core.trigger.Schedule"
    variables = trigger["variables"]
    date = dt.datetime.fromisoformat(variables["date"])
    assert dt.datetime.fromisoformat(variables["next"]) - date == dt.timedelta(seconds=1)
    assert date - dt.datetime.fromisoformat(variables["previous"]) == dt.timedelta(seconds=1)
    assert created["inputs"]["when"] == variables["date"]
    labels = {label["key"]: label["value"] for label in created["labels"]}
    assert labels["owner"] == "ops" and labels["team"] == "data"
    assert labels["system.correlationId"] == created["executionId"]
    state = await wait_for_end(engine.store, engine.notifier, created["executionId"], timeout=30)
    assert state.state == "SUCCESS"
    fired = await _fired(engine, ns, "scheduled", "every-second")
    assert fired[0].executionId == created["executionId"] and fired[0].date == variables["date"]


async def test_two_schedulers_fire_each_second_once_without_gaps(
    database_url: str, tmp_path: Path, ns: str
) -> None:
    async with trio.open_nursery() as nursery:
        first = await nursery.start(
            functools.partial(
                run_server, database_url, ("executor", "worker"), data_dir=tmp_path / "a"
            )
        )
        second = await nursery.start(
            functools.partial(run_server, database_url, (), data_dir=tmp_path / "b")
        )
        await deploy_flow(first.store, _flow(ns, PER_SECOND))
        try:
            one = await _run_scheduler(nursery, first, ns)
            two = await _run_scheduler(nursery, second, ns)
            await trio.sleep(30)  # the proof: a per-second schedule over 30 s
        finally:
            await delete_flow(first.store, ns, "scheduled")
        await trio.sleep(1.5)  # a pass under way when the flow was deleted ends
        fired = await _fired(first, ns, "scheduled", "every-second")
        created = await _created(first, ns, "scheduled")
        nursery.cancel_scope.cancel()
    dates = [dt.datetime.fromisoformat(f.date) for f in fired]
    assert len(dates) >= 28
    assert len(set(dates)) == len(dates)
    assert all(b - a == dt.timedelta(seconds=1) for a, b in zip(dates, dates[1:], strict=False))
    assert sorted(c["executionId"] for c in created) == sorted(f.executionId for f in fired)
    # Both schedulers took part: each fired ticks or found the other had fired them first.
    assert one.fired + two.fired == len(fired)
    assert one.fired + one.lost > 0 and two.fired + two.lost > 0
    assert len({c["trigger"]["variables"]["date"] for c in created}) == len(created)


async def test_a_disabled_trigger_fires_nothing(engine: ServerContext, ns: str) -> None:
    await deploy_flow(engine.store, _flow(ns, PER_SECOND + "    disabled: true\n"))
    await deploy_flow(engine.store, _flow(ns, PER_SECOND, flow_id="toggled"))
    await toggle_trigger(engine.store, ns, "toggled", "every-second", False)
    off = _flow(ns, PER_SECOND, flow_id="switched-off").replace(
        "tasks:\n", "disabled: true\ntasks:\n"
    )
    await deploy_flow(engine.store, off)
    await deploy_flow(engine.store, _flow(ns, PER_SECOND, flow_id="deleted"))
    await delete_flow(engine.store, ns, "deleted")
    try:
        async with trio.open_nursery() as nursery:
            await _run_scheduler(nursery, engine, ns)
            await trio.sleep(3)
            nursery.cancel_scope.cancel()
    finally:
        for flow_id in ("scheduled", "toggled", "switched-off"):
            await delete_flow(engine.store, ns, flow_id)
    for flow_id in ("scheduled", "toggled", "switched-off", "deleted"):
        assert await _created(engine, ns, flow_id) == [], flow_id
    assert await trigger_enabled(engine.store, ns, "toggled", "every-second") is False


@pytest.mark.parametrize(
    ("mode", "fired", "skipped"), [("ALL", 12, 0), ("LAST", 1, 11), ("NONE", 0, 12)]
)
async def test_missed_schedules_are_recovered_as_recover_missed_schedules_says(
    engine: ServerContext, ns: str, mode: str, fired: int, skipped: int
) -> None:
    trigger = (
        "  - id: five\n"
        "    type: io.kestra.plugin.core.trigger.Schedule\n"
        '    cron: "*/5 * * * *"\n'
        f"    recoverMissedSchedules: {mode}\n"
    )
    await deploy_flow(engine.store, _flow(ns, trigger))
    try:
        row = await engine.store.db.fetchone(
            "SELECT recorded_at FROM events WHERE stream_id = %s ORDER BY version DESC LIMIT 1",
            (ev.flow_stream(ns, "scheduled"),),
        )
        assert row is not None
        deployed = row["recorded_at"]
        # The scheduler comes back after an hour and some: twelve 5-minute ticks were missed,
        # the last one two minutes ago.
        first_tick = deployed.replace(second=0, microsecond=0) + dt.timedelta(
            minutes=5 - deployed.minute % 5
        )
        now = first_tick + dt.timedelta(minutes=55 + 2)
        scheduler = Scheduler(engine.store, engine.notifier, namespace=ns, clock=lambda: now)
        await scheduler.run_once()
        await scheduler.run_once()  # nothing more: the missed ticks are settled
    finally:
        await delete_flow(engine.store, ns, "scheduled")
    history = await engine.store.read_stream(ev.trigger_stream(ns, "scheduled", "five"))
    fired_events = [e.event for e in history if isinstance(e.event, ev.TriggerFired)]
    skips = [e.event for e in history if isinstance(e.event, ev.TriggerSkipped)]
    assert len(fired_events) == fired
    assert sum(s.count for s in skips) == skipped
    assert len(await _created(engine, ns, "scheduled")) == fired
    if mode == "LAST":
        last = dt.datetime.fromisoformat(fired_events[0].date)
        assert last == first_tick + dt.timedelta(minutes=55)


async def test_stop_after_disables_the_trigger_once_an_execution_fails(
    engine: ServerContext, ns: str
) -> None:
    tasks = "  - id: boom\n    type: io.kestra.plugin.core.execution.Fail\n"
    await deploy_flow(
        engine.store, _flow(ns, PER_SECOND + "    stopAfter: [FAILED]\n", tasks=tasks)
    )
    try:
        async with trio.open_nursery() as nursery:
            await _run_scheduler(nursery, engine, ns)
            with trio.fail_after(30):
                while await trigger_enabled(engine.store, ns, "scheduled", "every-second"):
                    await trio.sleep(0.2)
            count = len(await _fired(engine, ns, "scheduled", "every-second"))
            await trio.sleep(2.5)
            assert len(await _fired(engine, ns, "scheduled", "every-second")) == count
            nursery.cancel_scope.cancel()
    finally:
        await delete_flow(engine.store, ns, "scheduled")
    history = await engine.store.read_stream(ev.trigger_stream(ns, "scheduled", "every-second"))
    toggles = [e.event for e in history if isinstance(e.event, ev.TriggerToggled)]
    assert toggles[-1].enabled is False and "FAILED" in (toggles[-1].reason or "")


async def test_a_bad_trigger_does_not_stop_the_others(engine: ServerContext, ns: str) -> None:
    # The input is required and its value fails to render: that tick records why, and the
    # other flow's schedule goes on.
    bad = _flow(
        ns,
        PER_SECOND + "    inputs:\n      n: '{{ nothing.here }}'\n",
        flow_id="bad",
    ).replace("tasks:\n", "inputs:\n  - id: n\n    type: INT\ntasks:\n")
    await deploy_flow(engine.store, bad)
    await deploy_flow(engine.store, _flow(ns, PER_SECOND, flow_id="good"))
    try:
        async with trio.open_nursery() as nursery:
            await _run_scheduler(nursery, engine, ns)
            with trio.fail_after(20):
                while len(await _created(engine, ns, "good")) < 2:
                    await trio.sleep(0.2)
            nursery.cancel_scope.cancel()
    finally:
        await delete_flow(engine.store, ns, "bad")
        await delete_flow(engine.store, ns, "good")
    assert await _created(engine, ns, "bad") == []
    fired = await _fired(engine, ns, "bad", "every-second")
    assert fired and fired[0].executionId is None and "nothing" in (fired[0].error or "")


async def test_server_scheduler_role_fires_a_schedule(
    database_url: str, tmp_path: Path, ns: str
) -> None:
    async with trio.open_nursery() as nursery:
        ctx = await nursery.start(
            functools.partial(
                run_server, database_url, ("executor", "worker", "scheduler"), data_dir=tmp_path
            )
        )
        await deploy_flow(ctx.store, _flow(ns, PER_SECOND))
        try:
            with trio.fail_after(20):
                while not await _created(ctx, ns, "scheduled"):
                    await trio.sleep(0.2)
        finally:
            await delete_flow(ctx.store, ns, "scheduled")
        nursery.cancel_scope.cancel()


async def test_scheduler_fires_the_ticks_missed_while_postgres_was_down(tmp_path: Path) -> None:
    # A PostgreSQL of this test's own, stopped for a few seconds under a running scheduler.
    from engine.embedded import EmbeddedPostgres

    embedded = EmbeddedPostgres(tmp_path / "pg")
    url = embedded.start()
    ns = f"test.outage{uuid.uuid4().hex[:8]}"
    try:
        async with trio.open_nursery() as nursery:
            ctx = await nursery.start(
                functools.partial(run_server, url, ("scheduler",), data_dir=tmp_path / "s")
            )
            await deploy_flow(ctx.store, _flow(ns, PER_SECOND))
            with trio.fail_after(20):
                while len(await _fired(ctx, ns, "scheduled", "every-second")) < 2:
                    await trio.sleep(0.2)
            await trio.to_thread.run_sync(embedded.stop)
            await trio.sleep(3)
            assert url == await trio.to_thread.run_sync(embedded.start)
            with trio.fail_after(60):
                while True:
                    try:
                        fired = await _fired(ctx, ns, "scheduled", "every-second")
                    except Exception:
                        fired = []
                    if fired and _parse(fired[-1].date) > _utcnow() - dt.timedelta(seconds=2):
                        break
                    await trio.sleep(0.3)
            await delete_flow(ctx.store, ns, "scheduled")
            nursery.cancel_scope.cancel()
    finally:
        await trio.to_thread.run_sync(embedded.stop)
    dates = [_parse(f.date) for f in fired]
    assert len(dates) >= 5 and len(set(dates)) == len(dates)
    assert all(b - a == dt.timedelta(seconds=1) for a, b in zip(dates, dates[1:], strict=False))


def _parse(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text)


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


FIVE_MINUTES = (
    "  - id: five\n"
    "    type: io.kestra.plugin.core.trigger.Schedule\n"
    '    cron: "*/5 * * * *"\n'
    "    inputs:\n"
    "      day: '{{ trigger.date }}'\n"
)
WITH_INPUTS = "inputs:\n  - id: day\n    type: STRING\n  - id: source\n    type: STRING\n    defaults: live\ntasks:\n"


async def _backfilled(ctx: ServerContext, ns: str) -> list[dict[str, Any]]:
    return [
        c
        for c in await _created(ctx, ns, "scheduled")
        if any(label["key"] == "backfill" for label in c["labels"])
    ]


async def test_a_backfill_of_one_day_of_a_five_minute_schedule_starts_288_executions(
    engine: ServerContext, ns: str
) -> None:
    from engine.scheduler import start_backfill, trigger_status

    await deploy_flow(engine.store, _flow(ns, FIVE_MINUTES).replace("tasks:\n", WITH_INPUTS))
    day = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
    status = await start_backfill(
        engine.store,
        ns,
        "scheduled",
        "five",
        start=day,
        end=day + dt.timedelta(days=1),
        inputs={"source": "backfill"},
        labels=[{"key": "backfill", "value": "january"}],
    )
    assert status["backfill"]["total"] == 288 and status["backfill"]["fired"] == 0
    progress = []
    try:
        async with trio.open_nursery() as nursery:
            await _run_scheduler(nursery, engine, ns)
            with trio.fail_after(120):
                while not status["backfill"]["ended"]:
                    await trio.sleep(0.5)
                    status = await trigger_status(engine.store, ns, "scheduled", "five")
                    progress.append(status["backfill"]["fired"])
            nursery.cancel_scope.cancel()
    finally:
        await delete_flow(engine.store, ns, "scheduled")
    assert status["backfill"]["fired"] == 288
    assert progress == sorted(progress) and len(set(progress)) > 2  # seen to grow, in steps
    created = await _backfilled(engine, ns)
    assert len(created) == 288
    days = sorted(c["inputs"]["day"] for c in created)
    assert days[0] == day.isoformat() and len(set(days)) == 288
    assert all(c["inputs"]["source"] == "backfill" for c in created)
    assert all(c["trigger"]["id"] == "five" for c in created)


async def test_a_paused_backfill_fires_nothing_until_it_is_resumed(
    engine: ServerContext, ns: str
) -> None:
    from engine.scheduler import pause_backfill, start_backfill

    await deploy_flow(engine.store, _flow(ns, FIVE_MINUTES).replace("tasks:\n", WITH_INPUTS))
    day = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
    scheduler = Scheduler(engine.store, engine.notifier, namespace=ns)
    try:
        await start_backfill(
            engine.store,
            ns,
            "scheduled",
            "five",
            start=day,
            end=day + dt.timedelta(hours=5),
            labels=[{"key": "backfill", "value": "x"}],
        )
        await scheduler.run_once()
        first = len(await _backfilled(engine, ns))
        assert 0 < first < 60
        paused = await pause_backfill(engine.store, ns, "scheduled", "five", True)
        assert paused["backfill"]["paused"] is True
        for _ in range(3):
            await scheduler.run_once()
        assert len(await _backfilled(engine, ns)) == first
        await pause_backfill(engine.store, ns, "scheduled", "five", False)
        for _ in range(20):
            await scheduler.run_once()
    finally:
        await delete_flow(engine.store, ns, "scheduled")
    assert len(await _backfilled(engine, ns)) == 60


async def test_backfill_requests_that_cannot_be_carried_out_are_refused(
    engine: ServerContext, ns: str
) -> None:
    from engine.errors import Conflict, InputValidationError, InvalidRequest, NotFound
    from engine.scheduler import start_backfill

    await deploy_flow(engine.store, _flow(ns, FIVE_MINUTES).replace("tasks:\n", WITH_INPUTS))
    day = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
    later = day + dt.timedelta(hours=1)
    try:
        with pytest.raises(InvalidRequest, match="must come after"):
            await start_backfill(engine.store, ns, "scheduled", "five", start=later, end=day)
        with pytest.raises(NotFound, match="no trigger 'nope'"):
            await start_backfill(engine.store, ns, "scheduled", "nope", start=day, end=later)
        with pytest.raises(InvalidRequest, match="more than"):
            await start_backfill(
                engine.store, ns, "scheduled", "five", start=day, end=day.replace(year=2030)
            )
        with pytest.raises((InputValidationError, InvalidRequest)):
            await start_backfill(
                engine.store,
                ns,
                "scheduled",
                "five",
                start=day,
                end=later,
                inputs={"unknown": {"x": 1}, "day": ["not", "text"]},
            )
        await start_backfill(engine.store, ns, "scheduled", "five", start=day, end=later)
        with pytest.raises(Conflict, match="has not ended"):
            await start_backfill(engine.store, ns, "scheduled", "five", start=day, end=later)
    finally:
        await delete_flow(engine.store, ns, "scheduled")
