"""Trigger and condition types: what starts a flow, typed and registered like task types.

A trigger type is a msgspec struct derived from `Trigger`, registered by its Kestra type name
with `register_trigger`; a condition type derives from `Condition` and is registered with
`register_condition`. Plugins reach both through `engine.plugin`, which lists them beside the
task types (with their JSON schema at `/api/v1/plugins`). `parse_trigger` turns one `triggers:`
item of a flow into its struct, reporting an unknown type or property at its path, as tasks are.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import re
from collections.abc import Callable
from typing import Any, ClassVar, TypeVar

import msgspec

Report = Callable[[str, str], None]
"""Where parsing reports a problem: (field path, message)."""


class Condition(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, omit_defaults=True):
    """Properties every condition has, whatever its type."""

    type: str
    """The condition type, e.g. `io.kestra.plugin.core.condition.Weekend`."""

    __condition_fields__: ClassVar[tuple[str, ...]] = ()
    """Fields holding nested conditions (`Not`, `Or`), parsed as conditions too."""

    def problems(self) -> list[tuple[str, str]]:
        """Checks beyond property types, as (field, message) pairs; none by default."""
        return []

    def test(self, ctx: ConditionContext) -> bool:
        """Whether the condition holds for the event being evaluated (a schedule tick, ...)."""
        raise NotImplementedError


@dataclasses.dataclass(frozen=True)
class ConditionContext:
    """What a condition is evaluated against."""

    date: dt.datetime | None = None
    """The tick being evaluated (aware, in the trigger's time zone), for date conditions."""
    variables: dict[str, Any] = dataclasses.field(default_factory=dict)
    """The variables an expression condition renders with (`trigger`, `flow`, ...)."""
    render: Callable[[str, dict[str, Any]], Any] | None = None
    """Renders an expression with variables (given by the shell: conditions stay pure)."""


class Trigger(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, omit_defaults=True):
    """Properties every trigger has, whatever its type (Kestra's AbstractTrigger)."""

    id: str
    """Unique identifier of the trigger within the flow."""
    type: str
    """The trigger type, e.g. `io.kestra.plugin.core.trigger.Schedule`."""
    description: str | None = None
    """Free text shown in the UI."""
    disabled: bool = False
    """When true the trigger starts nothing (until the flow is deployed again without it)."""
    conditions: list[Any] = []
    """Conditions that must all hold for the trigger to start an execution."""
    stopAfter: list[str] | None = None
    """Execution states after which the trigger disables itself (e.g. [FAILED])."""
    labels: Any = None
    """Labels added to the executions the trigger starts (a mapping or a list of {key, value})."""
    logLevel: str | None = None
    """Minimum level of the trigger's logs that are kept."""
    minLogLevel: str | None = None
    """Accepted for compatibility: the trigger's logs follow the flow's."""
    logToFile: bool = False
    """Accepted for compatibility: logs are always kept in the event log."""
    workerGroup: dict[str, Any] | None = None
    """Worker group (not supported: every scheduler evaluates every trigger)."""
    failOnTriggerError: bool = False
    """Accepted for compatibility: an evaluation error is logged and the trigger skipped."""
    allowConcurrent: bool = False
    """Accepted for compatibility."""

    __condition_fields__: ClassVar[tuple[str, ...]] = ("conditions",)

    def problems(self) -> list[tuple[str, str]]:
        """Checks beyond property types, as (field, message) pairs; none by default."""
        return []

    def condition_types(self) -> frozenset[str] | None:
        """The condition types this trigger can evaluate (None: it does not check them)."""
        return None


class ScheduledTrigger(Trigger, kw_only=True):
    """A trigger that fires at ticks of a calendar (the scheduler evaluates it): its type says
    when the ticks are; the scheduler decides which fire, records them and starts the
    executions."""

    def next_fire(self, after: dt.datetime) -> dt.datetime | None:
        """The first tick strictly after `after`, aware; None when there is none."""
        raise NotImplementedError

    def previous_fire(self, before: dt.datetime) -> dt.datetime | None:
        """The last tick strictly before `before`, aware; None when there is none."""
        raise NotImplementedError

    def local(self, instant: dt.datetime) -> dt.datetime:
        """`instant` as the trigger shows its dates (in its time zone)."""
        return instant

    def recover_mode(self) -> str:
        """What to do with ticks missed while no scheduler ran: ALL, LAST or NONE."""
        return "ALL"

    def late_limit(self) -> dt.timedelta | None:
        """Ticks later than this are passed over (None: no limit)."""
        return None

    def execution_inputs(self) -> dict[str, Any]:
        """The inputs of the executions it starts, as written (templates see `trigger.*`)."""
        return {}


@dataclasses.dataclass(frozen=True)
class TimeWindow:
    """Kestra's `timeWindow` of a MultipleCondition or of `preconditions`: within which span
    every condition must have been met."""

    type: str = "DURATION_WINDOW"
    """DURATION_WINDOW (fixed windows of `window`, from midnight UTC shifted by `advance`),
    SLIDING_WINDOW (the last `window`), DAILY_TIME_WINDOW (between `start` and `end` each day,
    UTC) or DAILY_TIME_DEADLINE (from midnight UTC to `deadline` each day)."""
    window: dt.timedelta = dt.timedelta(days=1)
    advance: dt.timedelta = dt.timedelta(0)
    start: dt.time | None = None
    end: dt.time | None = None
    deadline: dt.time | None = None

    def bounds(self, at: dt.datetime) -> tuple[dt.datetime, dt.datetime] | None:
        """The window `at` (aware) falls in, as [start, end]; None when `at` is in none (after
        a daily deadline, outside a daily time window)."""
        at = at.astimezone(dt.UTC)
        midnight = at.replace(hour=0, minute=0, second=0, microsecond=0)
        if self.type == "SLIDING_WINDOW":
            return at - self.window, at
        if self.type == "DAILY_TIME_WINDOW":
            start = dt.datetime.combine(at.date(), self.start or dt.time(0), dt.UTC)
            end = dt.datetime.combine(at.date(), self.end or dt.time.max, dt.UTC)
            return (start, end) if start <= at <= end else None
        if self.type == "DAILY_TIME_DEADLINE":
            end = dt.datetime.combine(at.date(), self.deadline or dt.time.max, dt.UTC)
            return (midnight, end) if at <= end else None
        base = dt.datetime(1970, 1, 1, tzinfo=dt.UTC) + self.advance
        size = self.window if self.window > dt.timedelta(0) else dt.timedelta(days=1)
        start = base + ((at - base) // size) * size
        return start, start + size


@dataclasses.dataclass(frozen=True)
class ConditionGroup:
    """Conditions that must all be met, each by some ended execution, within one time window
    (a `MultipleCondition`, or a Flow trigger's `preconditions`)."""

    id: str
    keys: dict[str, Callable[[ConditionContext], bool]]
    """Each condition by its key: whether an ended execution meets it."""
    window: TimeWindow = TimeWindow()
    reset: bool = True
    """Whether the conditions met are forgotten once the group fires (`resetOnSuccess`)."""


class ExecutionTrigger(Trigger, kw_only=True):
    """A trigger that fires when other executions end (Kestra's Flow trigger): the scheduler
    feeds it every execution that ends, as a `ConditionContext` whose variables hold `trigger`
    (the ended execution, as the started one will see it), `labels` and `flow`."""

    def accepts(self, ctx: ConditionContext) -> bool:
        """Whether the ended execution passes the trigger's plain conditions (every one but
        the grouped ones)."""
        raise NotImplementedError

    def groups(self) -> list[ConditionGroup]:
        """The condition groups that must also be met within a window (none: it fires on
        every execution it accepts)."""
        return []

    def states_watched(self) -> frozenset[str]:
        """States besides the terminal ones that it starts on (RUNNING, PAUSED, ...)."""
        return frozenset()

    def execution_inputs(self) -> dict[str, Any]:
        """The inputs of the executions it starts, as written (templates see `trigger.*`)."""
        return {}


@dataclasses.dataclass(frozen=True)
class PollContext:
    """What a polling trigger looks with."""

    variables: dict[str, Any]
    """The variables its properties render with (`flow`, `trigger.date` of the poll)."""
    render: Callable[[Any, dict[str, Any]], Any]
    """Renders a property (a template, or a mapping or list of them) with variables (given by
    the shell: triggers stay free of the template engine)."""


class PollingTrigger(Trigger, kw_only=True):
    """A trigger that looks at another system every `interval` (the scheduler evaluates it):
    each poll is recorded in the trigger's stream before it runs, so that one scheduler only
    makes it, and it fires when `poll` answers variables."""

    interval: str = "PT60S"
    """How long between two polls (ISO-8601 duration, at least one second)."""

    def poll_interval(self) -> dt.timedelta:
        """`interval` as a duration (one minute when it cannot be read; `problems` says so)."""
        from engine.duration import parse_duration

        try:
            return max(parse_duration(self.interval), dt.timedelta(seconds=1))
        except ValueError:
            return dt.timedelta(seconds=60)

    def poll_timeout(self) -> float:
        """Seconds one poll may take at most (the scheduler abandons it after)."""
        return 30.0

    def problems(self) -> list[tuple[str, str]]:
        from engine.duration import parse_duration

        try:
            every = parse_duration(self.interval)
        except ValueError as exc:
            return [("interval", str(exc))]
        if every < dt.timedelta(seconds=1):
            return [("interval", f"`interval` {self.interval} is under a second: poll less often")]
        return []

    def poll(self, ctx: PollContext) -> dict[str, Any] | None:
        """Look once; the variables of the execution to start (its `trigger.*`), or None when
        there is nothing to start. Blocking: the scheduler calls it in a worker thread."""
        raise NotImplementedError


class PendingTrigger(Trigger, kw_only=True, forbid_unknown_fields=False, dict=True):
    """A Kestra trigger type this installation knows of but does not run: the flow is valid and
    keeps it (with a warning), and the trigger starts nothing. Its properties as written are
    kept (`written`) so that the flow is shown with them."""

    @property
    def written(self) -> dict[str, Any]:
        """The trigger's properties as the flow wrote them."""
        found: dict[str, Any] = self.__dict__.get("_written") or msgspec.to_builtins(self)
        return found

    def condition_types(self) -> frozenset[str] | None:
        return None


KESTRA_TRIGGER_TYPES = frozenset(
    {
        "io.kestra.plugin.core.trigger.Schedule",
        "io.kestra.plugin.core.trigger.ScheduleOnDates",
        "io.kestra.plugin.core.trigger.Flow",
        "io.kestra.plugin.core.trigger.Webhook",
        "io.kestra.plugin.core.http.Trigger",
        "io.kestra.plugin.fs.http.Trigger",
        "io.kestra.core.models.triggers.types.Schedule",
        "io.kestra.core.models.triggers.types.Flow",
        "io.kestra.core.models.triggers.types.Webhook",
    }
)
"""Kestra's core trigger types: one that is not registered here is kept as a `PendingTrigger`
(valid, with a warning) instead of being refused as unknown."""


# --- registry --------------------------------------------------------------------------------

_triggers: dict[str, type[Trigger]] = {}
_conditions: dict[str, type[Condition]] = {}
_canonical: dict[type, str] = {}

TT = TypeVar("TT", bound=type[Trigger])
CT = TypeVar("CT", bound=type[Condition])


def register_trigger(name: str, *aliases: str) -> Callable[[TT], TT]:
    """Class decorator: register a trigger type under its Kestra name and its older aliases."""

    def deco(cls: TT) -> TT:
        for n in (name, *aliases):
            _triggers[n] = cls
        _canonical[cls] = name
        return cls

    return deco


def register_condition(name: str, *aliases: str) -> Callable[[CT], CT]:
    """Class decorator: register a condition type under its Kestra name and its aliases."""

    def deco(cls: CT) -> CT:
        for n in (name, *aliases):
            _conditions[n] = cls
        _canonical[cls] = name
        return cls

    return deco


def _load() -> None:
    # The plugin interface loads the installed packages (entry points) once, for every kind.
    from engine import plugin

    plugin.registered()


def trigger_type(name: str) -> type[Trigger] | None:
    """The class registered for trigger type `name` (canonical or alias), or None."""
    _load()
    return _triggers.get(name)


def condition_type(name: str) -> type[Condition] | None:
    """The class registered for condition type `name` (canonical or alias), or None."""
    _load()
    return _conditions.get(name)


def registered_triggers() -> dict[str, type[Trigger]]:
    """Every registered trigger type name (aliases included) and its class."""
    _load()
    return dict(_triggers)


def registered_conditions() -> dict[str, type[Condition]]:
    """Every registered condition type name (aliases included) and its class."""
    _load()
    return dict(_conditions)


def canonical_name(cls: type) -> str | None:
    """The Kestra type name a trigger or condition class was registered with."""
    return _canonical.get(cls)


# --- parsing ---------------------------------------------------------------------------------


def _msgspec_problem(path: str, exc: msgspec.ValidationError, type_name: str) -> tuple[str, str]:
    text = str(exc)
    where = path
    m = re.search(r" - at `\$(.*)`$", text)
    if m:
        where = path + m.group(1).replace("['", ".").replace("']", "")
        text = text[: m.start()]
    unknown = re.match(r"Object contains unknown field `(.+)`", text)
    if unknown:
        where = f"{where}.{unknown.group(1)}"
        text = f"Unknown property `{unknown.group(1)}` for {type_name}: remove it or fix it"
    missing = re.match(r"Object missing required field `(.+)`", text)
    if missing:
        where = f"{where}.{missing.group(1)}"
        text = f"Property `{missing.group(1)}` is required for {type_name}"
    return where, text


def parse_condition(
    raw: Any, path: str, report: Report, allowed: frozenset[str] | None
) -> Condition | None:
    """One condition as its registered struct, nested conditions included; None (reported)
    when it cannot be read. `allowed`, when given, names the types the trigger evaluates."""
    if not isinstance(raw, dict):
        report(path, "A condition must be a mapping with a `type`")
        return None
    type_name = raw.get("type")
    if not isinstance(type_name, str):
        report(f"{path}.type", "Every condition needs a `type`, e.g. ...condition.Weekend")
        return None
    cls = condition_type(type_name)
    if cls is None:
        report(
            f"{path}.type",
            f"Unknown condition type '{type_name}': check the spelling, or list the installed "
            "types with `tiercel plugins list`",
        )
        return None
    if allowed is not None and canonical_name(cls) not in allowed:
        report(
            f"{path}.type",
            f"Condition {type_name} does not apply to this trigger: use one of "
            + ", ".join(sorted(a.rsplit(".", 1)[-1] for a in allowed)),
        )
        return None
    nested_names = cls.__condition_fields__
    # Nested lists are converted one by one below, so that each problem is found at its path.
    plain = {k: ([] if k in nested_names else v) for k, v in raw.items()}
    ok = True
    nested: dict[str, list[Condition]] = {}
    for name in nested_names:
        if name not in raw:
            continue
        items = raw[name]
        if not isinstance(items, list):
            report(f"{path}.{name}", f"`{name}` must be a list of conditions")
            ok = False
            continue
        parsed = [
            parse_condition(c, f"{path}.{name}[{i}]", report, allowed) for i, c in enumerate(items)
        ]
        ok = ok and all(c is not None for c in parsed)
        nested[name] = [c for c in parsed if c is not None]
    try:
        condition = msgspec.convert(plain, cls)
    except msgspec.ValidationError as exc:
        report(*_msgspec_problem(path, exc, type_name))
        return None
    if nested:
        condition = msgspec.structs.replace(condition, **nested)
    problems = condition.problems()
    for field, message in problems:
        report(f"{path}.{field}" if field else path, message)
    return condition if ok and not problems else None


def parse_trigger(raw: Any, path: str, report: Report) -> tuple[Trigger | None, bool]:
    """One `triggers:` item as its registered struct, its conditions parsed too; None (each
    problem reported at its path) when it cannot be read. The flag says whether the type is a
    Kestra type kept without being run (`PendingTrigger`)."""
    if not isinstance(raw, dict):
        report(path, "A trigger must be a mapping with `id` and `type`")
        return None, False
    type_name = raw.get("type")
    if not isinstance(type_name, str):
        report(
            f"{path}.type",
            "Every trigger needs a `type`, e.g. io.kestra.plugin.core.trigger.Schedule",
        )
        return None, False
    cls: type[Trigger] | None = trigger_type(type_name)
    pending = False
    if cls is None:
        if type_name not in KESTRA_TRIGGER_TYPES:
            report(
                f"{path}.type",
                f"Unknown trigger type '{type_name}': check the spelling, or list the installed "
                "types with `tiercel plugins list`",
            )
            return None, False
        cls, pending = PendingTrigger, True
        # Kept as written: a type known but not run here is shown with all its properties.
    plain = {k: ([] if k in cls.__condition_fields__ else v) for k, v in raw.items()}
    try:
        trigger = msgspec.convert(plain, cls)
    except msgspec.ValidationError as exc:
        report(*_msgspec_problem(path, exc, type_name))
        return None, pending
    ok = True
    allowed = trigger.condition_types()
    nested: dict[str, list[Any]] = {}
    for name in cls.__condition_fields__:
        items = raw.get(name)
        if items is None:
            continue
        if not isinstance(items, list):
            report(f"{path}.{name}", f"`{name}` must be a list of conditions")
            ok = False
            continue
        if pending:
            nested[name] = items  # kept as written: nothing evaluates them
            continue
        parsed = [
            parse_condition(c, f"{path}.{name}[{i}]", report, allowed) for i, c in enumerate(items)
        ]
        ok = ok and all(c is not None for c in parsed)
        nested[name] = [c for c in parsed if c is not None]
    if nested:
        trigger = msgspec.structs.replace(trigger, **nested)
    if isinstance(trigger, PendingTrigger):
        trigger.__dict__["_written"] = dict(raw)
    for field, message in trigger.problems():
        report(f"{path}.{field}" if field else path, message)
        ok = False
    return (trigger if ok else None), pending
