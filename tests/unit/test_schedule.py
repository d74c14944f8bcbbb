"""The Schedule trigger's arithmetic and conditions, and how flows declare triggers."""

from __future__ import annotations

import datetime as dt
import zoneinfo
from typing import Any

import msgspec
import pytest

import plugins.core  # noqa: F401  (registers the trigger and condition types)
from engine.errors import FlowValidationError
from engine.flow import flow_from_dict, flow_to_dict, parse_flow
from engine.scheduler import plan
from engine.triggers import ConditionContext, parse_condition
from plugins.core.schedule import Schedule

PARIS = zoneinfo.ZoneInfo("Europe/Paris")
UTC = dt.UTC


def _schedule(cron: str, **extra: Any) -> Schedule:
    return msgspec.convert({"id": "s", "type": "x", "cron": cron, **extra}, Schedule)


def _ticks(schedule: Schedule, start: dt.datetime, end: dt.datetime) -> list[dt.datetime]:
    out: list[dt.datetime] = []
    tick = schedule.next_fire(start)
    while tick is not None and tick < end:
        out.append(tick)
        tick = schedule.next_fire(tick)
    return out


def _day(year: int, month: int, day: int) -> tuple[dt.datetime, dt.datetime]:
    start = dt.datetime(year, month, day, tzinfo=PARIS)
    following = dt.date(year, month, day) + dt.timedelta(days=1)
    end = dt.datetime.combine(following, dt.time(), tzinfo=PARIS)
    return start - dt.timedelta(microseconds=1), end


def test_hourly_schedule_fires_23_times_on_the_spring_forward_day_in_paris() -> None:
    ticks = _ticks(_schedule("0 * * * *", timezone="Europe/Paris"), *_day(2024, 3, 31))
    assert len(ticks) == 23 == len(set(ticks))
    assert all(b - a == dt.timedelta(hours=1) for a, b in zip(ticks, ticks[1:], strict=False))
    local = [t.astimezone(PARIS).strftime("%H:%M") for t in ticks]
    assert local[:3] == ["00:00", "01:00", "03:00"]


def test_hourly_schedule_fires_25_times_on_the_fall_back_day_in_paris() -> None:
    ticks = _ticks(_schedule("0 * * * *", timezone="Europe/Paris"), *_day(2024, 10, 27))
    assert len(ticks) == 25 == len(set(ticks))
    assert all(b - a == dt.timedelta(hours=1) for a, b in zip(ticks, ticks[1:], strict=False))


def test_daily_at_0230_fires_once_when_0230_does_not_exist() -> None:
    schedule = _schedule("30 2 * * *", timezone="Europe/Paris")
    start, end = _day(2024, 3, 31)
    ticks = _ticks(schedule, start, end)
    assert [t.astimezone(PARIS).isoformat() for t in ticks] == ["2024-03-31T03:30:00+02:00"]


def test_daily_at_0230_fires_once_when_0230_happens_twice() -> None:
    schedule = _schedule("30 2 * * *", timezone="Europe/Paris")
    ticks = _ticks(schedule, *_day(2024, 10, 27))
    assert [t.astimezone(PARIS).isoformat() for t in ticks] == ["2024-10-27T02:30:00+02:00"]


@pytest.mark.parametrize("cron", ["0 * * * *", "30 2 * * *", "*/15 * * * *"])
@pytest.mark.parametrize("day", [(2024, 3, 31), (2024, 10, 27)])
def test_previous_fire_walks_back_over_the_same_ticks(cron: str, day: tuple[int, int, int]) -> None:
    schedule = _schedule(cron, timezone="Europe/Paris")
    start, end = _day(*day)
    ticks = _ticks(schedule, start - dt.timedelta(days=1), end + dt.timedelta(days=1))
    assert [schedule.previous_fire(t) for t in ticks[1:]] == ticks[:-1]


def test_per_second_schedule_has_no_gap_or_double_over_a_dst_change() -> None:
    schedule = _schedule("* * * * * *", withSeconds=True, timezone="Europe/Paris")
    change = dt.datetime(2024, 10, 27, 1, tzinfo=UTC)
    ticks = _ticks(schedule, change - dt.timedelta(seconds=5), change + dt.timedelta(seconds=5))
    assert len(ticks) == 9
    assert all(b - a == dt.timedelta(seconds=1) for a, b in zip(ticks, ticks[1:], strict=False))


def test_with_seconds_reads_the_seconds_field_first() -> None:
    schedule = _schedule("30 0 12 * * *", withSeconds=True)
    tick = schedule.next_fire(dt.datetime(2024, 1, 1, tzinfo=UTC))
    assert tick == dt.datetime(2024, 1, 1, 12, 0, 30, tzinfo=UTC)


def _condition(raw: dict[str, Any]) -> Any:
    problems: list[tuple[str, str]] = []
    found = parse_condition(raw, "c", lambda p, m: problems.append((p, m)), None)
    assert found is not None, problems
    return found


def _on(day: dt.date) -> ConditionContext:
    return ConditionContext(date=dt.datetime.combine(day, dt.time(), tzinfo=UTC))


C = "io.kestra.plugin.core.condition."


def test_day_week_and_weekend_conditions_look_at_the_tick() -> None:
    monday, saturday = dt.date(2024, 1, 1), dt.date(2024, 1, 6)
    day_week = _condition({"type": f"{C}DayWeek", "dayOfWeek": "MONDAY"})
    weekend = _condition({"type": f"{C}Weekend"})
    assert day_week.test(_on(monday)) and not day_week.test(_on(saturday))
    assert weekend.test(_on(saturday)) and not weekend.test(_on(monday))


def test_day_week_in_month_finds_the_first_and_last_weekday() -> None:
    first = _condition({"type": f"{C}DayWeekInMonth", "dayOfWeek": "MONDAY", "dayInMonth": "FIRST"})
    last = _condition({"type": f"{C}DayWeekInMonth", "dayOfWeek": "FRIDAY", "dayInMonth": "LAST"})
    assert first.test(_on(dt.date(2024, 1, 1))) and not first.test(_on(dt.date(2024, 1, 8)))
    assert last.test(_on(dt.date(2024, 1, 26))) and not last.test(_on(dt.date(2024, 1, 19)))


def test_not_and_or_combine_nested_conditions() -> None:
    weekday = _condition({"type": f"{C}Not", "conditions": [{"type": f"{C}Weekend"}]})
    either = _condition(
        {
            "type": f"{C}Or",
            "conditions": [
                {"type": f"{C}DayWeek", "dayOfWeek": "MONDAY"},
                {"type": f"{C}DayWeek", "dayOfWeek": "TUESDAY"},
            ],
        }
    )
    assert weekday.test(_on(dt.date(2024, 1, 3))) and not weekday.test(_on(dt.date(2024, 1, 6)))
    assert either.test(_on(dt.date(2024, 1, 2))) and not either.test(_on(dt.date(2024, 1, 3)))


def test_expression_condition_renders_with_the_trigger_variables() -> None:
    from engine.templating import render_typed

    cond = _condition({"type": f"{C}ExpressionCondition", "expression": "{{ trigger.n > 2 }}"})
    ctx = ConditionContext(variables={"trigger": {"n": 3}}, render=render_typed)
    assert cond.test(ctx)
    ctx = ConditionContext(variables={"trigger": {"n": 1}}, render=render_typed)
    assert not cond.test(ctx)


FLOW = """id: f
namespace: n
tasks:
  - id: a
    type: io.kestra.plugin.core.log.Log
    message: hi
triggers:
"""


def _problems(triggers: str) -> list[tuple[int | None, str, str]]:
    with pytest.raises(FlowValidationError) as info:
        parse_flow(FLOW + triggers)
    return [(p.line, p.path, p.message) for p in info.value.details]


def test_a_misspelled_schedule_property_is_refused_at_its_line() -> None:
    found = _problems(
        "  - id: s\n    type: io.kestra.plugin.core.trigger.Schedule\n    cronn: '* * * * *'\n"
    )
    assert (10, "triggers[0].cronn") in {(line, path) for line, path, _ in found}


def test_an_unknown_trigger_type_is_refused_at_its_line() -> None:
    found = _problems("  - id: s\n    type: io.kestra.plugin.core.trigger.Nope\n")
    assert found[0][:2] == (9, "triggers[0].type") and "Unknown trigger type" in found[0][2]


@pytest.mark.parametrize(
    ("extra", "field"),
    [
        ("    cron: '* * * *'\n", "cron"),
        ("    cron: '61 * * * *'\n", "cron"),
        ("    cron: '* * * * *'\n    timezone: Mars/Olympus\n", "timezone"),
        ("    cron: '* * * * *'\n    recoverMissedSchedules: SOME\n", "recoverMissedSchedules"),
        ("    cron: '* * * * *'\n    stopAfter: [DONE]\n", "stopAfter"),
    ],
)
def test_bad_schedule_values_are_refused_with_their_field(extra: str, field: str) -> None:
    found = _problems("  - id: s\n    type: io.kestra.plugin.core.trigger.Schedule\n" + extra)
    assert any(path == f"triggers[0].{field}" for _, path, _ in found), found


def test_a_condition_that_does_not_apply_to_a_schedule_is_refused() -> None:
    found = _problems(
        "  - id: s\n    type: io.kestra.plugin.core.trigger.Schedule\n    cron: '* * * * *'\n"
        "    conditions:\n      - type: io.kestra.plugin.core.condition.Nope\n"
    )
    assert any(path == "triggers[0].conditions[0].type" for _, path, _ in found)


def test_a_recorded_flow_with_a_trigger_no_longer_readable_still_reads() -> None:
    flow = parse_flow(
        FLOW + "  - id: s\n    type: io.kestra.plugin.core.trigger.Schedule\n"
        "    cron: '0 2 * * *'\n"
    )
    recorded = flow_to_dict(flow)
    assert flow_from_dict(recorded).triggers[0].id == "s"
    recorded["triggers"] = [{"id": "old", "type": "gone.Type", "cronn": 1}]
    assert flow_from_dict(recorded).triggers == []


def _at(hour: int, minute: int = 0) -> dt.datetime:
    return dt.datetime(2024, 1, 1, hour, minute, tzinfo=UTC)


@pytest.mark.parametrize(
    ("mode", "fired", "skipped"), [("ALL", 12, 0), ("LAST", 1, 11), ("NONE", 0, 12)]
)
def test_missed_ticks_follow_recover_missed_schedules(mode: str, fired: int, skipped: int) -> None:
    schedule = _schedule("*/5 * * * *", recoverMissedSchedules=mode)
    decided = plan(schedule, _at(0), _at(1, 2), lambda tick: True)
    assert (len(decided.fire), len(decided.skipped)) == (fired, skipped)


def test_a_tick_on_time_fires_whatever_the_recovery_mode() -> None:
    schedule = _schedule("*/5 * * * *", recoverMissedSchedules="NONE")
    decided = plan(
        schedule,
        _at(0),
        _at(
            1,
            0,
        )
        + dt.timedelta(seconds=3),
        lambda tick: True,
    )
    assert decided.fire == [_at(1)] and len(decided.skipped) == 11


def test_ticks_whose_conditions_fail_are_not_fired() -> None:
    schedule = _schedule("0 0 * * *")
    start = dt.datetime(2024, 1, 1, tzinfo=UTC)  # a Monday
    decided = plan(
        schedule,
        start - dt.timedelta(seconds=1),
        start + dt.timedelta(days=6, hours=1),
        lambda tick: tick.weekday() < 5,
    )
    assert [t.day for t in decided.fire] == [1, 2, 3, 4, 5]


@pytest.mark.parametrize(("mode", "fired"), [("LAST", 1), ("NONE", 0)])
def test_hours_missed_by_a_per_second_schedule_fire_only_what_the_mode_says(
    mode: str, fired: int
) -> None:
    schedule = _schedule("* * * * * *", withSeconds=True, recoverMissedSchedules=mode)
    now = _at(12) + dt.timedelta(minutes=30, seconds=0.5)
    base = now - dt.timedelta(hours=2)
    fires: list[dt.datetime] = []
    passed = 0
    for _ in range(100):  # one pass after another, as the scheduler goes on from its cursor
        decided = plan(schedule, base, now, lambda tick: True)
        fires += decided.fire
        passed += len(decided.skipped) + decided.dropped
        if decided.cursor is None:
            break
        base = decided.cursor
    on_time = 60  # the last minute's ticks are on time, not missed: they fire
    assert len(fires) == fired + on_time
    assert passed + len(fires) == 7200
    if mode == "LAST":
        assert fires[0] == now - dt.timedelta(seconds=60.5)


def test_a_flow_trigger_is_kept_with_its_properties_and_runs_without_a_warning() -> None:
    warnings: list[Any] = []
    flow = parse_flow(
        FLOW + "  - id: listen\n    type: io.kestra.plugin.core.trigger.Flow\n"
        "    states: [SUCCESS]\n    conditions:\n"
        "      - type: io.kestra.plugin.core.condition.ExecutionFlow\n"
        "        namespace: up.ns\n        flowId: up\n",
        warnings=warnings,
    )
    shown = flow_to_dict(flow)["triggers"][0]
    assert shown["states"] == ["SUCCESS"] and shown["conditions"][0]["flowId"] == "up"
    assert flow_to_dict(flow_from_dict(flow_to_dict(flow)))["triggers"][0] == shown
    assert warnings == []
