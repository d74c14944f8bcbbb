"""`io.kestra.plugin.core.trigger.Schedule` and the conditions a schedule evaluates.

The schedule's arithmetic is pure: `next_fire(after)` and `previous_fire(before)` give the
ticks of the cron in the trigger's time zone, as aware UTC datetimes; the scheduler
(engine/scheduler.py) decides which of them fire.
"""

from __future__ import annotations

import calendar
import datetime as dt
import zoneinfo
from typing import Any

from croniter import croniter

from engine.plugin import (
    Condition,
    ConditionContext,
    ScheduledTrigger,
    parse_duration,
    register_condition,
    register_trigger,
)

RECOVER_MODES = ("ALL", "LAST", "NONE")
STATES = frozenset(
    {
        "CREATED",
        "RUNNING",
        "PAUSED",
        "SUCCESS",
        "WARNING",
        "FAILED",
        "KILLED",
        "CANCELLED",
        "QUEUED",
        "RETRYING",
        "RETRIED",
        "KILLING",
        "RESTARTED",
        "SKIPPED",
        "BREAKPOINT",
    }
)
DAYS = ("MONDAY", "TUESDAY", "WEDNESDAY", "THURSDAY", "FRIDAY", "SATURDAY", "SUNDAY")
DAY_IN_MONTH = ("FIRST", "SECOND", "THIRD", "FOURTH", "LAST")

_CONDITION = "io.kestra.plugin.core.condition."
_OLD_CONDITION = "io.kestra.core.models.conditions.types."


# --- conditions --------------------------------------------------------------------------------


def _tick_date(cond_date: str | None, ctx: ConditionContext) -> dt.date | None:
    """The date a date condition looks at: the tick, or its own `date` expression rendered."""
    if cond_date and cond_date.strip() not in ("{{ trigger.date }}", "{{trigger.date}}"):
        if ctx.render is None:
            return ctx.date.date() if ctx.date else None
        value = str(ctx.render(cond_date, ctx.variables))
        try:
            return dt.datetime.fromisoformat(value.replace("Z", "+00:00")).date()
        except ValueError:
            return dt.date.fromisoformat(value[:10])
    return ctx.date.date() if ctx.date else None


@register_condition(
    f"{_CONDITION}DayWeek", f"{_CONDITION}DayWeekCondition", f"{_OLD_CONDITION}DayWeekCondition"
)
class DayWeek(Condition, kw_only=True):
    """Holds on one day of the week."""

    dayOfWeek: str
    """MONDAY ... SUNDAY."""
    date: str | None = None
    """The date to check (default: the tick, `{{ trigger.date }}`)."""

    def problems(self) -> list[tuple[str, str]]:
        if self.dayOfWeek.upper() not in DAYS:
            return [("dayOfWeek", f"dayOfWeek must be one of {', '.join(DAYS)}")]
        return []

    def test(self, ctx: ConditionContext) -> bool:
        day = _tick_date(self.date, ctx)
        return day is not None and DAYS[day.weekday()] == self.dayOfWeek.upper()


@register_condition(
    f"{_CONDITION}DayWeekInMonth",
    f"{_CONDITION}DayWeekInMonthCondition",
    f"{_OLD_CONDITION}DayWeekInMonthCondition",
)
class DayWeekInMonth(Condition, kw_only=True):
    """Holds on the first, second, third, fourth or last given weekday of the month."""

    dayOfWeek: str
    """MONDAY ... SUNDAY."""
    dayInMonth: str
    """FIRST, SECOND, THIRD, FOURTH or LAST."""
    date: str | None = None
    """The date to check (default: the tick, `{{ trigger.date }}`)."""

    def problems(self) -> list[tuple[str, str]]:
        found = []
        if self.dayOfWeek.upper() not in DAYS:
            found.append(("dayOfWeek", f"dayOfWeek must be one of {', '.join(DAYS)}"))
        if self.dayInMonth.upper() not in DAY_IN_MONTH:
            found.append(("dayInMonth", f"dayInMonth must be one of {', '.join(DAY_IN_MONTH)}"))
        return found

    def test(self, ctx: ConditionContext) -> bool:
        day = _tick_date(self.date, ctx)
        if day is None or DAYS[day.weekday()] != self.dayOfWeek.upper():
            return False
        which = self.dayInMonth.upper()
        if which == "LAST":
            return day.day + 7 > calendar.monthrange(day.year, day.month)[1]
        return (day.day - 1) // 7 == DAY_IN_MONTH.index(which)


@register_condition(
    f"{_CONDITION}Weekend", f"{_CONDITION}WeekendCondition", f"{_OLD_CONDITION}WeekendCondition"
)
class Weekend(Condition, kw_only=True):
    """Holds on Saturdays and Sundays."""

    date: str | None = None
    """The date to check (default: the tick, `{{ trigger.date }}`)."""

    def test(self, ctx: ConditionContext) -> bool:
        day = _tick_date(self.date, ctx)
        return day is not None and day.weekday() >= 5


@register_condition(
    f"{_CONDITION}Not", f"{_CONDITION}NotCondition", f"{_OLD_CONDITION}NotCondition"
)
class Not(Condition, kw_only=True):
    """Holds when none of its conditions holds."""

    conditions: list[Any]
    """The conditions that must all be false."""

    __condition_fields__ = ("conditions",)

    def test(self, ctx: ConditionContext) -> bool:
        return not any(c.test(ctx) for c in self.conditions)


@register_condition(f"{_CONDITION}Or", f"{_CONDITION}OrCondition", f"{_OLD_CONDITION}OrCondition")
class Or(Condition, kw_only=True):
    """Holds when at least one of its conditions holds."""

    conditions: list[Any]
    """The conditions of which one must be true."""

    __condition_fields__ = ("conditions",)

    def test(self, ctx: ConditionContext) -> bool:
        return any(c.test(ctx) for c in self.conditions)


@register_condition(
    f"{_CONDITION}Expression",
    f"{_CONDITION}ExpressionCondition",
    f"{_OLD_CONDITION}VariableCondition",
)
class Expression(Condition, kw_only=True):
    """Holds when the expression renders true (`{{ trigger.date | date('HH') == '02' }}`)."""

    expression: str
    """The expression, rendered with the trigger's variables."""

    def test(self, ctx: ConditionContext) -> bool:
        if ctx.render is None:
            return True
        value = ctx.render(self.expression, ctx.variables)
        if isinstance(value, str):
            return value.strip().lower() == "true"
        return bool(value)


SCHEDULE_CONDITIONS = frozenset(
    {
        f"{_CONDITION}DayWeek",
        f"{_CONDITION}DayWeekInMonth",
        f"{_CONDITION}Weekend",
        f"{_CONDITION}Not",
        f"{_CONDITION}Or",
        f"{_CONDITION}Expression",
    }
)
"""The condition types a schedule evaluates (on each tick)."""


# --- the trigger ---------------------------------------------------------------------------------


@register_trigger(
    "io.kestra.plugin.core.trigger.Schedule", "io.kestra.core.models.triggers.types.Schedule"
)
class Schedule(ScheduledTrigger, kw_only=True):
    """Start the flow on a cron schedule, in a time zone."""

    cron: str
    """A 5-field cron expression (6 fields, seconds first, with `withSeconds`), or an alias:
    @yearly, @annually, @monthly, @weekly, @daily, @midnight, @hourly."""
    withSeconds: bool = False
    """Whether `cron` has a leading seconds field."""
    timezone: str = "Etc/UTC"
    """The IANA time zone the cron is read in (e.g. Europe/Paris); DST changes fire no tick
    twice and miss none."""
    inputs: dict[str, Any] = {}
    """Inputs of the executions the schedule starts (templates see `trigger.*`)."""
    recoverMissedSchedules: str | None = None
    """After downtime: ALL ticks missed fire (the default), only the LAST, or NONE."""
    lateMaximumDelay: str | None = None
    """Ticks later than this duration are skipped (ISO-8601)."""
    backfill: dict[str, Any] | None = None
    """Deprecated in Kestra: use POST /api/v1/triggers/backfill."""
    scheduleConditions: list[Any] | None = None
    """Deprecated alias of `conditions`."""

    __condition_fields__ = ("conditions", "scheduleConditions")

    def condition_types(self) -> frozenset[str] | None:
        return SCHEDULE_CONDITIONS

    def problems(self) -> list[tuple[str, str]]:
        found: list[tuple[str, str]] = []
        try:
            self.zone()
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            found.append(
                ("timezone", f"Unknown time zone {self.timezone!r}: use e.g. Europe/Paris")
            )
        fields = 6 if self.withSeconds else 5
        expr = self.cron.strip()
        if expr.startswith("@"):
            if expr.lower() not in _ALIASES:
                found.append(
                    ("cron", f"Unknown cron alias {expr!r}: use one of {', '.join(_ALIASES)}")
                )
        elif len(expr.split()) != fields:
            hint = " (set withSeconds: true for a seconds field)" if len(expr.split()) == 6 else ""
            found.append(("cron", f"cron {expr!r} must have {fields} fields{hint}"))
        elif not croniter.is_valid(self._expression()):
            found.append(("cron", f"cron {expr!r} is not a valid cron expression"))
        if (
            self.recoverMissedSchedules is not None
            and self.recoverMissedSchedules.upper() not in RECOVER_MODES
        ):
            found.append(
                (
                    "recoverMissedSchedules",
                    f"recoverMissedSchedules must be one of {', '.join(RECOVER_MODES)}",
                )
            )
        if self.lateMaximumDelay is not None:
            try:
                parse_duration(self.lateMaximumDelay)
            except (ValueError, TypeError):
                found.append(
                    ("lateMaximumDelay", "lateMaximumDelay must be an ISO-8601 duration (PT1H)")
                )
        for state in self.stopAfter or []:
            if state.upper() not in STATES:
                found.append(("stopAfter", f"Unknown state {state!r} in stopAfter"))
        return found

    def next_fire(self, after: dt.datetime) -> dt.datetime | None:
        """The first tick strictly after `after` (aware), as an aware UTC datetime; None
        when the cron never fires again.

        The cron is read in wall-clock time of `timezone`. A wall time skipped by a DST
        change (02:30 on a spring-forward night) fires once, shifted forward by the gap
        (03:30); a wall time that occurs twice (fall-back) fires on its first occurrence only,
        unless the cron fires every hour (hour field `*`), which then fires in both hours, as
        the day really has them. So no tick fires twice, and none is missed."""
        zone = self.zone()
        after = after.astimezone(dt.UTC)
        margin = _transition_margin(zone, after)
        start = after.astimezone(zone).replace(tzinfo=None, fold=0) - margin
        it = croniter(self._expression(), start, ret_type=dt.datetime)
        every_hour = self._every_hour()
        best: dt.datetime | None = None
        for _ in range(_SEARCH_LIMIT):
            naive = it.get_next(dt.datetime)
            if best is not None and naive > _wall(best, zone) + margin:
                break  # no later wall time can fire earlier, even across the change
            for instant in _instants(naive, zone, every_hour):
                if instant > after and (best is None or instant < best):
                    best = instant
            if best is not None and not margin:
                break
        return best

    def previous_fire(self, before: dt.datetime) -> dt.datetime | None:
        """The last tick strictly before `before` (aware), as an aware UTC datetime (the
        same reading of DST changes as `next_fire`); None when there is none."""
        zone = self.zone()
        before = before.astimezone(dt.UTC)
        margin = _transition_margin(zone, before)
        start = before.astimezone(zone).replace(tzinfo=None, fold=0) + margin + _SECOND
        it = croniter(self._expression(), start, ret_type=dt.datetime)
        every_hour = self._every_hour()
        best: dt.datetime | None = None
        for _ in range(_SEARCH_LIMIT):
            naive = it.get_prev(dt.datetime)
            if best is not None and naive < _wall(best, zone) - margin:
                break
            for instant in _instants(naive, zone, every_hour):
                if instant < before and (best is None or instant > best):
                    best = instant
            if best is not None and not margin:
                break
        return best

    def local(self, instant: dt.datetime) -> dt.datetime:
        """`instant` in the schedule's time zone."""
        return instant.astimezone(self.zone())

    def recover_mode(self) -> str:
        """ALL (Kestra's default), LAST or NONE."""
        return (self.recoverMissedSchedules or "ALL").upper()

    def late_limit(self) -> dt.timedelta | None:
        """`lateMaximumDelay` as a duration."""
        return parse_duration(self.lateMaximumDelay) if self.lateMaximumDelay else None

    def execution_inputs(self) -> dict[str, Any]:
        """The `inputs` given to each execution."""
        return self.inputs

    def _every_hour(self) -> bool:
        expr = self.cron.strip()
        if expr.startswith("@"):
            return expr.lower() == "@hourly"
        parts = expr.split()
        hour = parts[2] if self.withSeconds else parts[1]
        return hour in ("*", "*/1")

    def zone(self) -> zoneinfo.ZoneInfo:
        """The schedule's time zone."""
        return zoneinfo.ZoneInfo(self.timezone)

    def _expression(self) -> str:
        expr = self.cron.strip()
        if expr.startswith("@"):
            expr = _ALIASES[expr.lower()]
        if self.withSeconds and not self.cron.strip().startswith("@"):
            # croniter reads seconds as a sixth, trailing field; Kestra writes them first.
            parts = expr.split()
            expr = " ".join([*parts[1:], parts[0]])
        return expr


_ALIASES = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}

_SEARCH_LIMIT = 100_000
"""Ticks looked at before concluding a cron never fires (a `30 0 30 2 *` never does)."""
_SECOND = dt.timedelta(seconds=1)


def _transition_margin(zone: zoneinfo.ZoneInfo, at: dt.datetime) -> dt.timedelta:
    """How far before (or after) `at` in wall time the search for ticks must start so that a
    DST change near `at` is seen: the size of the change when one is within three hours, else
    nothing (a per-second cron is then not walked for hours for nothing)."""
    window = dt.timedelta(hours=3)
    low, high = at - window, at + window
    before, after = low.astimezone(zone).utcoffset(), high.astimezone(zone).utcoffset()
    if before is None or after is None or before == after:
        return dt.timedelta(0)
    while high - low > _SECOND:  # the instant of the change, to the second
        middle = low + (high - low) / 2
        if middle.astimezone(zone).utcoffset() == before:
            low = middle
        else:
            high = middle
    change = abs(after - before) + _SECOND
    return change if abs(at - high) <= change else dt.timedelta(0)


def _wall(instant: dt.datetime, zone: zoneinfo.ZoneInfo) -> dt.datetime:
    return instant.astimezone(zone).replace(tzinfo=None, fold=0)


def _instants(naive: dt.datetime, zone: zoneinfo.ZoneInfo, every_hour: bool) -> list[dt.datetime]:
    """The UTC instants at which wall time `naive` of `zone` fires (see `Schedule.next_fire`)."""
    first = naive.replace(tzinfo=zone, fold=0).astimezone(dt.UTC)
    second = naive.replace(tzinfo=zone, fold=1).astimezone(dt.UTC)
    if first == second:
        return [first]
    if first.astimezone(zone).replace(tzinfo=None) != naive:
        # A wall time skipped by the change: fold 0 reads it with the offset before the gap,
        # which is the same wall time shifted forward by the gap.
        return [first]
    return [first, second] if every_hour else [first]
