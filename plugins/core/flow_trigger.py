"""`io.kestra.plugin.core.trigger.Flow` and the conditions it evaluates on ended executions.

The trigger and its conditions are pure: the scheduler (engine/scheduler.py, `FlowTriggers`)
feeds them each execution that ends, as a `ConditionContext` whose variables hold `trigger`
(executionId, namespace, flowId, flowRevision, state, outputs) and `labels` (the ended
execution's labels); it records which grouped conditions were met and starts the executions.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable
from typing import Any

import msgspec

from engine.plugin import (
    Condition,
    ConditionContext,
    parse_duration,
    register_condition,
    register_trigger,
)
from engine.triggers import (
    ConditionGroup,
    ExecutionTrigger,
    TimeWindow,
    parse_condition,
)
from plugins.core.schedule import SCHEDULE_CONDITIONS, STATES

_CONDITION = "io.kestra.plugin.core.condition."
_OLD_CONDITION = "io.kestra.core.models.conditions.types."
WINDOW_TYPES = ("DURATION_WINDOW", "SLIDING_WINDOW", "DAILY_TIME_WINDOW", "DAILY_TIME_DEADLINE")


def _ended(ctx: ConditionContext) -> dict[str, Any]:
    found = ctx.variables.get("trigger")
    return found if isinstance(found, dict) else {}


def _labels(given: Any) -> dict[str, str]:
    if isinstance(given, dict):
        return {str(k): str(v) for k, v in given.items()}
    if isinstance(given, list):
        return {
            str(item["key"]): str(item.get("value"))
            for item in given
            if isinstance(item, dict) and "key" in item
        }
    return {}


def _bad_states(field: str, states: list[str] | None) -> list[tuple[str, str]]:
    wrong = [s for s in states or [] if s.upper() not in STATES]
    if wrong:
        return [(field, f"Unknown state(s) {', '.join(wrong)}: use e.g. SUCCESS, FAILED, WARNING")]
    return []


# --- conditions on the ended execution -------------------------------------------------------


@register_condition(
    f"{_CONDITION}ExecutionStatus",
    f"{_CONDITION}ExecutionStatusCondition",
    f"{_OLD_CONDITION}ExecutionStatusCondition",
)
class ExecutionStatus(Condition, kw_only=True):
    """Holds when the ended execution's state is in `in` and not in `notIn`."""

    in_: list[str] | None = msgspec.field(default=None, name="in")
    """States that hold (any when absent)."""
    notIn: list[str] | None = None
    """States that do not hold."""

    def problems(self) -> list[tuple[str, str]]:
        return _bad_states("in", self.in_) + _bad_states("notIn", self.notIn)

    def test(self, ctx: ConditionContext) -> bool:
        state = str(_ended(ctx).get("state") or "").upper()
        if self.in_ is not None and state not in {s.upper() for s in self.in_}:
            return False
        return not (self.notIn is not None and state in {s.upper() for s in self.notIn})


@register_condition(
    f"{_CONDITION}ExecutionFlow",
    f"{_CONDITION}ExecutionFlowCondition",
    f"{_OLD_CONDITION}ExecutionFlowCondition",
)
class ExecutionFlow(Condition, kw_only=True):
    """Holds when the ended execution is of the flow `namespace`.`flowId`."""

    namespace: str
    flowId: str

    def test(self, ctx: ConditionContext) -> bool:
        ended = _ended(ctx)
        return ended.get("namespace") == self.namespace and ended.get("flowId") == self.flowId


@register_condition(
    f"{_CONDITION}ExecutionNamespace",
    f"{_CONDITION}ExecutionNamespaceCondition",
    f"{_OLD_CONDITION}ExecutionNamespaceCondition",
)
class ExecutionNamespace(Condition, kw_only=True):
    """Holds when the ended execution's namespace equals `namespace` (or starts or ends with it,
    as `comparison` says)."""

    namespace: str
    comparison: str | None = None
    """EQUALS (the default), PREFIX or SUFFIX."""
    prefix: bool = False
    """Deprecated: same as `comparison: PREFIX`."""

    def problems(self) -> list[tuple[str, str]]:
        if self.comparison and self.comparison.upper() not in ("EQUALS", "PREFIX", "SUFFIX"):
            return [("comparison", "comparison must be EQUALS, PREFIX or SUFFIX")]
        return []

    def test(self, ctx: ConditionContext) -> bool:
        namespace = str(_ended(ctx).get("namespace") or "")
        comparison = "PREFIX" if self.prefix else (self.comparison or "EQUALS").upper()
        if comparison == "PREFIX":
            return namespace == self.namespace or namespace.startswith(self.namespace)
        if comparison == "SUFFIX":
            return namespace.endswith(self.namespace)
        return namespace == self.namespace


@register_condition(f"{_CONDITION}ExecutionLabels", f"{_CONDITION}ExecutionLabelsCondition")
class ExecutionLabels(Condition, kw_only=True):
    """Holds when the ended execution has every one of `labels` (key and value)."""

    labels: Any
    """A mapping, or Kestra's list of {key, value}."""

    def problems(self) -> list[tuple[str, str]]:
        if not _labels(self.labels):
            return [("labels", "labels must be a mapping or a list of {key, value}")]
        return []

    def test(self, ctx: ConditionContext) -> bool:
        have = ctx.variables.get("labels") or {}
        return all(have.get(k) == v for k, v in _labels(self.labels).items())


FLOW_CONDITIONS = frozenset(
    {
        f"{_CONDITION}ExecutionStatus",
        f"{_CONDITION}ExecutionFlow",
        f"{_CONDITION}ExecutionNamespace",
        f"{_CONDITION}ExecutionLabels",
        f"{_CONDITION}MultipleCondition",
        *SCHEDULE_CONDITIONS,
    }
)
"""The condition types a Flow trigger evaluates (date conditions on the day it ended)."""


def _window(raw: Any, window: str | None, advance: str | None) -> TimeWindow:
    """A `timeWindow` mapping (or the older `window`/`windowAdvance`) as a TimeWindow; raises
    ValueError naming what is wrong."""
    spec = raw if isinstance(raw, dict) else {}
    kind = str(spec.get("type") or "DURATION_WINDOW").upper()
    if kind not in WINDOW_TYPES:
        raise ValueError(f"timeWindow.type must be one of {', '.join(WINDOW_TYPES)}")

    def time_of(name: str) -> dt.time | None:
        value = spec.get(name)
        return dt.time.fromisoformat(str(value)) if value is not None else None

    size = spec.get("window") or window
    ahead = spec.get("windowAdvance") or advance
    return TimeWindow(
        kind,
        parse_duration(str(size)) if size else dt.timedelta(days=1),
        parse_duration(str(ahead)) if ahead else dt.timedelta(0),
        time_of("startTime"),
        time_of("endTime"),
        time_of("deadline"),
    )


@register_condition(
    f"{_CONDITION}MultipleCondition",
    f"{_CONDITION}Multiple",
    f"{_OLD_CONDITION}MultipleCondition",
)
class MultipleCondition(Condition, kw_only=True):
    """Holds once every one of its `conditions` was met, each by some ended execution, within
    one time window; then (with `resetOnSuccess`) they must all be met again."""

    id: str
    conditions: dict[str, Any]
    """The conditions by key (the key names what is remembered as met)."""
    timeWindow: dict[str, Any] | None = None
    """{type: DURATION_WINDOW | SLIDING_WINDOW | DAILY_TIME_WINDOW | DAILY_TIME_DEADLINE,
    window, windowAdvance, startTime, endTime, deadline}; a day by default."""
    sla: dict[str, Any] | None = None
    """Older name of `timeWindow`."""
    window: str | None = None
    """Older form: the window's duration."""
    windowAdvance: str | None = None
    """Older form: the window's start, after midnight."""
    resetOnSuccess: bool = True

    def problems(self) -> list[tuple[str, str]]:
        found: list[tuple[str, str]] = []
        if not self.conditions:
            found.append(("conditions", "MultipleCondition needs at least one condition"))
        allowed = FLOW_CONDITIONS - {f"{_CONDITION}MultipleCondition"}
        for key, raw in list(self.conditions.items()):
            if isinstance(raw, Condition):
                continue  # parsed already (a recorded flow read again)
            parsed = parse_condition(
                raw,
                f"conditions.{key}",
                lambda where, message: found.append((where, message)),
                allowed,
            )
            if parsed is not None:
                self.conditions[key] = parsed  # the nested conditions are parsed here once
        try:
            self.time_window()
        except ValueError as exc:
            found.append(("timeWindow", str(exc)))
        return found

    def time_window(self) -> TimeWindow:
        """Its window, whichever form the flow wrote it in."""
        return _window(self.timeWindow or self.sla, self.window, self.windowAdvance)

    def group(self) -> ConditionGroup:
        """The group the scheduler records and fires."""
        keys: dict[str, Callable[[ConditionContext], bool]] = {
            k: c.test for k, c in self.conditions.items() if isinstance(c, Condition)
        }
        return ConditionGroup(self.id, keys, self.time_window(), self.resetOnSuccess)

    def test(self, ctx: ConditionContext) -> bool:
        # Judged by the scheduler over many executions (see `group`), not on one.
        return True


# --- preconditions -----------------------------------------------------------------------------


def _filter_holds(spec: dict[str, Any], ctx: ConditionContext) -> bool:
    """One `where` filter: {field, type, value | values}."""
    ended = _ended(ctx)
    field = str(spec.get("field") or "").upper()
    kind = str(spec.get("type") or "EQUAL_TO").upper()
    value = spec.get("value")
    values = [str(v) for v in spec.get("values") or []]
    subject: Any
    if field == "FLOW_ID":
        subject = ended.get("flowId")
    elif field == "NAMESPACE":
        subject = ended.get("namespace")
    elif field == "STATE":
        subject = ended.get("state")
    elif field == "EXPRESSION":
        subject = ctx.render(str(value), ctx.variables) if ctx.render else None
        truth = str(subject).strip().lower() == "true" if isinstance(subject, str) else subject
        return bool(truth) if kind != "IS_FALSE" else not truth
    else:
        return False
    text = None if subject is None else str(subject)
    if kind == "EQUAL_TO":
        return text == str(value)
    if kind == "NOT_EQUAL_TO":
        return text != str(value)
    if kind == "IS_NULL":
        return text is None
    if kind == "IS_NOT_NULL":
        return text is not None
    if text is None:
        return False
    if kind == "STARTS_WITH":
        return text.startswith(str(value))
    if kind == "ENDS_WITH":
        return text.endswith(str(value))
    if kind == "CONTAINS":
        return str(value) in text
    if kind == "REGEX":
        return re.fullmatch(str(value), text) is not None
    if kind == "IN":
        return text in values
    if kind == "NOT_IN":
        return text not in values
    if kind == "IS_TRUE":
        return text.lower() == "true"
    if kind == "IS_FALSE":
        return text.lower() == "false"
    return False


FILTER_TYPES = frozenset(
    {
        "EQUAL_TO",
        "NOT_EQUAL_TO",
        "IS_NULL",
        "IS_NOT_NULL",
        "IS_TRUE",
        "IS_FALSE",
        "STARTS_WITH",
        "ENDS_WITH",
        "CONTAINS",
        "REGEX",
        "IN",
        "NOT_IN",
    }
)


def _precondition_problems(pre: dict[str, Any]) -> list[tuple[str, str]]:
    found: list[tuple[str, str]] = []
    known = {"id", "flows", "where", "timeWindow", "resetOnSuccess", "type"}
    for key in pre:
        if key not in known:
            found.append((key, f"Unknown property `{key}` of preconditions"))
    flows = pre.get("flows") or []
    if not isinstance(flows, list):
        return [*found, ("flows", "`flows` must be a list of {namespace, flowId, states}")]
    for i, item in enumerate(flows):
        if not isinstance(item, dict) or not item.get("namespace"):
            found.append((f"flows[{i}]", "Each flow needs a `namespace` (and a `flowId`)"))
            continue
        states = item.get("states")
        if states is not None and not isinstance(states, list):
            found.append((f"flows[{i}].states", "`states` must be a list of states"))
        else:
            found += _bad_states(f"flows[{i}].states", states)
    where = pre.get("where") or []
    if not isinstance(where, list):
        return [*found, ("where", "`where` must be a list of {id, filters}")]
    for i, item in enumerate(where):
        if not isinstance(item, dict) or not item.get("id"):
            found.append((f"where[{i}]", "Each `where` needs an `id` and `filters`"))
            continue
        for j, spec in enumerate(item.get("filters") or []):
            kind = str((spec or {}).get("type") or "EQUAL_TO").upper()
            field = str((spec or {}).get("field") or "").upper()
            if field not in ("FLOW_ID", "NAMESPACE", "STATE", "EXPRESSION"):
                found.append(
                    (
                        f"where[{i}].filters[{j}].field",
                        "field must be FLOW_ID, NAMESPACE, STATE or EXPRESSION",
                    )
                )
            if kind not in FILTER_TYPES:
                found.append(
                    (
                        f"where[{i}].filters[{j}].type",
                        f"type must be one of {', '.join(sorted(FILTER_TYPES))}",
                    )
                )
    if not flows and not where:
        found.append(("", "preconditions need `flows` or `where`"))
    try:
        _window(pre.get("timeWindow"), None, None)
    except ValueError as exc:
        found.append(("timeWindow", str(exc)))
    return found


def _flow_key(item: dict[str, Any]) -> str:
    return f"{item.get('namespace')}.{item.get('flowId') or '*'}"


def _flow_test(item: dict[str, Any]) -> Any:
    states = {str(s).upper() for s in item.get("states") or ["SUCCESS"]}
    wanted = _labels(item.get("labels"))

    def test(ctx: ConditionContext) -> bool:
        ended = _ended(ctx)
        have = ctx.variables.get("labels") or {}
        return (
            ended.get("namespace") == item.get("namespace")
            and (not item.get("flowId") or ended.get("flowId") == item.get("flowId"))
            and str(ended.get("state")).upper() in states
            and all(have.get(k) == v for k, v in wanted.items())
        )

    return test


def _where_test(item: dict[str, Any]) -> Any:
    filters = [f for f in item.get("filters") or [] if isinstance(f, dict)]
    any_of = str(item.get("operand") or "AND").upper() == "OR"

    def test(ctx: ConditionContext) -> bool:
        results = (_filter_holds(f, ctx) for f in filters)
        return any(results) if any_of else all(results)

    return test


# --- the trigger ---------------------------------------------------------------------------------


@register_trigger("io.kestra.plugin.core.trigger.Flow", "io.kestra.core.models.triggers.types.Flow")
class FlowTrigger(ExecutionTrigger, kw_only=True):
    """Start the flow when executions of other flows end, as its conditions say."""

    inputs: dict[str, Any] = {}
    """Inputs of the executions it starts (templates see `trigger.*`: `trigger.outputs.x`)."""
    states: list[str] | None = None
    """States of the ended execution that count (every terminal state by default)."""
    preconditions: dict[str, Any] | None = None
    """{id, flows: [{namespace, flowId, states, labels}], where: [{id, operand, filters}],
    timeWindow, resetOnSuccess}: every entry must be met within the window."""

    def condition_types(self) -> frozenset[str] | None:
        return FLOW_CONDITIONS

    def problems(self) -> list[tuple[str, str]]:
        found = _bad_states("states", self.states)
        if self.preconditions is not None:
            if not isinstance(self.preconditions, dict):
                return [*found, ("preconditions", "preconditions must be a mapping")]
            found += [
                (f"preconditions.{w}" if w else "preconditions", m)
                for w, m in _precondition_problems(self.preconditions)
            ]
        return found

    def accepts(self, ctx: ConditionContext) -> bool:
        if self.states is not None:
            state = str(_ended(ctx).get("state") or "").upper()
            if state not in {s.upper() for s in self.states}:
                return False
        return all(c.test(ctx) for c in self.conditions if not isinstance(c, MultipleCondition))

    def groups(self) -> list[ConditionGroup]:
        found = [c.group() for c in self.conditions if isinstance(c, MultipleCondition)]
        pre = self.preconditions
        if pre:
            keys = {_flow_key(f): _flow_test(f) for f in pre.get("flows") or []}
            keys.update({f"where:{w['id']}": _where_test(w) for w in pre.get("where") or []})
            window = _window(pre.get("timeWindow"), None, None)
            reset = bool(pre.get("resetOnSuccess", True))
            found.append(ConditionGroup(str(pre.get("id") or "preconditions"), keys, window, reset))
        return found

    def states_watched(self) -> frozenset[str]:
        return frozenset(s.upper() for s in self.states or [])

    def execution_inputs(self) -> dict[str, Any]:
        return dict(self.inputs)
