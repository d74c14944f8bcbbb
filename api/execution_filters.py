"""The filters of `GET /api/v1/executions/search`, read from its query string.

Two forms say the same thing: the plain parameters (`namespace=`, `state=`, `labels=key:value`,
...) and Kestra's `filters[field][OPERATION]=value` form, which Kestra's UI and client SDK send
(`filters[labels][EQUALS][env]=prod`, `filters[state][IN]=FAILED,WARNING`). Both narrow one
`projections.executions.Search`, whose SQL stays index lookups; a field or an operation it
cannot answer that way is refused with a 400 that names it, as is an unknown parameter or
state, never answered with a page the filter was silently left out of.

Condition groups (Kestra's filter builder, issue #16433): `filters[or][N][field][OPERATION]`
puts a filter in group N; the groups are joined by OR, and every filter outside them (a quick
interval `timeRange`, say) applies to all of them: `timeRange AND (group 0 OR group 1)`. The
filters of one group all apply (AND). `filters[and][N][...]` filters are plain AND filters.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from engine.errors import InvalidRequest, Problem
from projections.executions import (
    SORTS,
    STATES,
    Search,
    parse_date,
    parse_duration,
    parse_states,
)

PARAMETERS = (
    "page",
    "size",
    "sort",
    "after",
    "namespace",
    "flowId",
    "state",
    "labels",
    "startDate",
    "endDate",
    "timeRange",
    "q",
    "scope",
    "triggerId",
    "trigger",
    "triggerExecutionId",
    "parentId",
    "childFilter",
)
"""The plain query parameters of the search (besides `filters[...]`)."""

OPERATIONS: dict[str, tuple[str, ...]] = {
    "namespace": ("EQUALS", "PREFIX"),
    "flowId": ("EQUALS",),
    "state": ("EQUALS", "NOT_EQUALS", "IN", "NOT_IN"),
    "labels": ("EQUALS",),
    "startDate": (
        "GREATER_THAN_OR_EQUAL_TO",
        "GREATER_THAN",
        "LESS_THAN_OR_EQUAL_TO",
        "LESS_THAN",
    ),
    "endDate": ("LESS_THAN_OR_EQUAL_TO", "LESS_THAN"),
    "timeRange": ("EQUALS",),
    "q": ("EQUALS",),
    "scope": ("EQUALS", "IN"),
    "triggerId": ("EQUALS", "IN"),
    "trigger": ("EQUALS", "NOT_EQUALS", "IN", "NOT_IN"),
    "triggerExecutionId": ("EQUALS",),
    "parentId": ("EQUALS",),
    "childFilter": ("EQUALS",),
}
"""Each field of `filters[field][OPERATION]` and the operations answered on it."""

KESTRA_OPERATIONS = frozenset(
    {
        "EQUALS",
        "NOT_EQUALS",
        "GREATER_THAN",
        "LESS_THAN",
        "GREATER_THAN_OR_EQUAL_TO",
        "LESS_THAN_OR_EQUAL_TO",
        "IN",
        "NOT_IN",
        "STARTS_WITH",
        "ENDS_WITH",
        "CONTAINS",
        "REGEX",
        "PREFIX",
    }
)

_FILTER = re.compile(r"filters\[([^\[\]]*)\]\[([^\[\]]*)\](?:\[(.*)\])?")
_GROUP = re.compile(r"filters\[(or|and)\]\[(\d{1,3})\](\[.*)", re.IGNORECASE)
_MS = dt.timedelta(milliseconds=1)
_LAST_OF_MS = dt.timedelta(microseconds=999)


@dataclass
class Filters:
    """What the query string asks for, merged from both forms."""

    search: Search = field(default_factory=Search)
    nothing: bool = False
    """The filters exclude each other (two different flows, disjoint states): no execution
    can match, and none is looked for."""


SORT_ALIASES = {
    "startDate": "state.startDate",
    "endDate": "state.endDate",
    "duration": "state.duration",
    "state": "state.current",
}
"""Shorter names the sort parameter also takes."""


def read_sort(values: list[str]) -> tuple[str, bool]:
    """Kestra's `sort=field:asc|desc` (one field; desc when no direction is given) as the
    key of `projections.executions.SORTS` and whether it is ascending."""
    given = [v for v in values if v]
    if not given:
        return "state.startDate", False
    if len(set(given)) > 1:
        raise _bad(f"Sort by one column, got {', '.join(given)}", "sort")
    name, _, direction = given[0].rpartition(":") if ":" in given[0] else (given[0], "", "desc")
    name = SORT_ALIASES.get(name, name)
    if name not in SORTS or direction.lower() not in ("asc", "desc"):
        raise _bad(
            f"Cannot sort executions by {given[0]!r}: write field:asc or field:desc with field "
            f"one of {', '.join(SORTS)}",
            "sort",
        )
    return name, direction.lower() == "asc"


def _bad(message: str, path: str) -> InvalidRequest:
    return InvalidRequest(message, [Problem(message, path)])


def _date(value: str, path: str) -> dt.datetime:
    return parse_date(value, path)


def _duration(value: str, path: str) -> dt.timedelta:
    return parse_duration(value, path)


def _values(raw: str) -> list[str]:
    """A list value as Kestra takes it: `A,B` or `[A,B]`."""
    text = raw.strip()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    return [v.strip() for v in text.split(",") if v.strip()]


def _states(values: Iterable[str], path: str) -> set[str]:
    return parse_states(list(values), path)


class _Reader:
    def __init__(self) -> None:
        self.out = Filters()
        self.states_left: set[str] | None = None
        self.namespace_given: str | None = None
        self.plain_states: set[str] = set()

    def namespace(self, value: str, exact: bool, path: str) -> None:
        s = self.out.search
        if s.namespace is not None and (s.namespace, s.namespace_exact) != (value, exact):
            raise _bad(
                f"{path} conflicts with the namespace filter given before "
                f"({self.namespace_given}): give one namespace filter",
                path,
            )
        s.namespace, s.namespace_exact = value, exact
        self.namespace_given = path

    def flow_id(self, value: str) -> None:
        s = self.out.search
        if s.flow_id is not None and s.flow_id != value:
            self.out.nothing = True
        s.flow_id = value

    def states(self, states: set[str]) -> None:
        left = states if self.states_left is None else self.states_left & states
        self.states_left = left
        if not left:
            self.out.nothing = True

    def label(self, key: str, value: str, path: str) -> None:
        if not key:
            raise _bad(
                f"{path} must name a label: key:value, or filters[labels][EQUALS][key]", path
            )
        labels = self.out.search.labels
        if labels.get(key, value) != value:
            self.out.nothing = True
        labels[key] = value

    def started_after(self, at: dt.datetime) -> None:
        s = self.out.search
        s.start_date = at if s.start_date is None else max(s.start_date, at)

    def started_before(self, at: dt.datetime) -> None:
        s = self.out.search
        s.started_before = at if s.started_before is None else min(s.started_before, at)

    def ended_before(self, at: dt.datetime) -> None:
        s = self.out.search
        s.end_date = at if s.end_date is None else min(s.end_date, at)

    def query(self, value: str, path: str) -> None:
        s = self.out.search
        if s.q is not None and s.q != value:
            raise _bad(f"{path} is a second text search: give one q", path)
        s.q = value

    def trigger_types(self, types: list[str], excluded: bool) -> None:
        s = self.out.search
        if excluded:
            s.trigger_types_excluded = sorted({*s.trigger_types_excluded, *types})
        elif s.trigger_types:
            left = sorted(set(s.trigger_types) & set(types))
            self.out.nothing = self.out.nothing or not left
            s.trigger_types = left
        else:
            s.trigger_types = sorted(set(types))

    def trigger_ids(self, ids: list[str]) -> None:
        s = self.out.search
        left = sorted(set(ids) & set(s.trigger_ids)) if s.trigger_ids else sorted(set(ids))
        self.out.nothing = self.out.nothing or not left
        s.trigger_ids = left

    def trigger_execution(self, value: str) -> None:
        s = self.out.search
        if s.trigger_execution_id not in (None, value):
            self.out.nothing = True
        s.trigger_execution_id = value

    def parent(self, value: str) -> None:
        s = self.out.search
        if s.parent_id not in (None, value):
            self.out.nothing = True
        s.parent_id = value

    def child(self, value: str, path: str) -> None:
        kind = value.upper()
        if kind not in ("CHILD", "MAIN", "ALL"):
            raise _bad(f"{path} must be CHILD, MAIN or ALL, got {value!r}", path)
        if kind == "ALL":
            return
        s = self.out.search
        wanted = kind == "CHILD"
        if s.child is not None and s.child != wanted:
            self.out.nothing = True
        s.child = wanted

    def finish(self) -> Filters:
        """The filters read, their states settled (plain `state=` repeats are one list)."""
        if self.plain_states:
            self.states(self.plain_states)
        if self.states_left is not None:
            self.out.search.states = sorted(self.states_left)
        return self.out

    def scope(self, values: list[str], path: str) -> None:
        scopes = {v.upper() for v in values}
        if scopes - {"USER", "SYSTEM"}:
            raise _bad(f"{path} must be USER or SYSTEM, got {', '.join(values)}", path)
        if "USER" not in scopes:
            # Tiercel has no system flows: every execution is a user one.
            self.out.nothing = True


def read_filters(args: Iterable[tuple[str, str]], now: dt.datetime) -> Filters:
    """The search that the query string `args` (name, value pairs, repeats kept) asks for."""
    reader = _Reader()
    groups: dict[int, _Reader] = {}
    for name, value in args:
        group = _GROUP.fullmatch(name)
        if group is not None:
            joined, index, rest = group.group(1).lower(), int(group.group(2)), group.group(3)
            # An AND group adds its filters to all the others: it is the search's own.
            target = reader if joined == "and" else groups.setdefault(index, _Reader())
            _kestra_filter(target, "filters" + rest, value, now, shown=name)
        elif name.startswith("filters["):
            _kestra_filter(reader, name, value, now)
        elif name in PARAMETERS:
            _plain(reader, name, value, now)
        else:
            raise _bad(
                f"Unknown query parameter {name!r} for the executions search; it takes "
                f"{', '.join(PARAMETERS)}, filters[field][OPERATION]=value and condition "
                "groups filters[or][N][field][OPERATION]=value",
                name,
            )
    out = reader.finish()
    if groups:
        # A group no execution can match drops out of the OR; if none is left, nothing can.
        alive = [g.finish() for _, g in sorted(groups.items())]
        out.search.any_of = [g.search for g in alive if not g.nothing]
        out.nothing = out.nothing or not out.search.any_of
    return out


def _plain(reader: _Reader, name: str, value: str, now: dt.datetime) -> None:
    if value == "" or name in ("page", "size", "sort", "after"):
        return  # an empty parameter is no filter; paging is read by the route
    if name == "namespace":
        reader.namespace(value, False, name)
    elif name == "flowId":
        reader.flow_id(value)
    elif name == "state":
        # Repeated, it is one list (state=FAILED&state=WARNING: either), applied at the end.
        reader.plain_states |= _states(_values(value), name)
    elif name == "labels":
        key, sep, label_value = value.partition(":")
        if not sep:
            raise _bad(f"Label filter {value!r} must be written key:value", name)
        reader.label(key, label_value, name)
    elif name == "startDate":
        reader.started_after(_date(value, name))
    elif name == "endDate":
        reader.ended_before(_date(value, name) + _LAST_OF_MS)
    elif name == "timeRange":
        reader.started_after(now - _duration(value, name))
    elif name == "q":
        reader.query(value, name)
    elif name == "scope":
        reader.scope(_values(value), name)
    elif name == "triggerId":
        reader.trigger_ids(_values(value))
    elif name == "trigger":
        reader.trigger_types(_values(value), excluded=False)
    elif name == "triggerExecutionId":
        reader.trigger_execution(value)
    elif name == "parentId":
        reader.parent(value)
    elif name == "childFilter":
        reader.child(value, name)


def _kestra_filter(
    reader: _Reader, name: str, value: str, now: dt.datetime, shown: str | None = None
) -> None:
    """Read one `filters[field][OPERATION](...)` parameter (`shown`: its name as given, when
    it stood in a condition group)."""
    match = _FILTER.fullmatch(name)
    name = shown or name
    if match is None:
        raise _bad(
            f"Query parameter {name!r} is not a filter: write filters[field][OPERATION]=value "
            "(filters[labels][EQUALS][key]=value for a label), or "
            "filters[or][N][field][OPERATION]=value in a condition group",
            name,
        )
    fieldname, operation, sub = match.group(1), match.group(2).upper(), match.group(3)
    if fieldname.lower() in ("and", "or"):
        raise _bad(
            f"{name}: condition groups do not nest; write filters[{fieldname.lower()}][N]"
            "[field][OPERATION]=value with N a group number",
            name,
        )
    if fieldname not in OPERATIONS:
        raise _bad(
            f"Unknown or unsupported filter field {fieldname!r} in {name}; the executions "
            f"search filters on {', '.join(OPERATIONS)}",
            name,
        )
    supported = OPERATIONS[fieldname]
    if operation not in supported:
        what = "Unknown" if operation not in KESTRA_OPERATIONS else "Unsupported"
        raise _bad(
            f"{what} operation {match.group(2)!r} on {fieldname} in {name}; the executions "
            f"search answers {', '.join(supported)} on {fieldname}",
            name,
        )
    if sub is not None and fieldname != "labels":
        raise _bad(f"{name}: only a label filter names a key in a third bracket", name)
    if fieldname == "labels":
        if sub is not None:
            reader.label(sub, value, name)
        else:
            key, sep, label_value = value.partition(":")
            if not sep:
                raise _bad(f"{name} must be key:value, or name its key: {name}[key]=value", name)
            reader.label(key, label_value, name)
        return
    if value == "":
        raise _bad(f"{name} has no value", name)
    if fieldname == "namespace":
        reader.namespace(value, operation == "EQUALS", name)
    elif fieldname == "flowId":
        reader.flow_id(value)
    elif fieldname == "state":
        given = _states(_values(value), name)
        if operation in ("EQUALS", "NOT_EQUALS") and len(given) != 1:
            raise _bad(f"{name} takes one state; use IN or NOT_IN for several", name)
        reader.states(given if operation in ("EQUALS", "IN") else set(STATES - given))
    elif fieldname == "startDate":
        at = _date(value, name)
        if operation == "GREATER_THAN_OR_EQUAL_TO":
            reader.started_after(at)
        elif operation == "GREATER_THAN":
            reader.started_after(at + _MS)
        elif operation == "LESS_THAN_OR_EQUAL_TO":
            reader.started_before(at + _LAST_OF_MS)
        else:
            reader.started_before(at - _MS + _LAST_OF_MS)
    elif fieldname == "endDate":
        at = _date(value, name)
        last = at + _LAST_OF_MS
        reader.ended_before(last if operation == "LESS_THAN_OR_EQUAL_TO" else last - _MS)
    elif fieldname == "timeRange":
        reader.started_after(now - _duration(value, name))
    elif fieldname == "q":
        reader.query(value, name)
    elif fieldname == "scope":
        reader.scope(_values(value), name)
    elif fieldname == "triggerId":
        reader.trigger_ids(_values(value) if operation == "IN" else [value])
    elif fieldname == "trigger":
        types = _values(value) if operation in ("IN", "NOT_IN") else [value]
        reader.trigger_types(types, excluded=operation in ("NOT_EQUALS", "NOT_IN"))
    elif fieldname == "triggerExecutionId":
        reader.trigger_execution(value)
    elif fieldname == "parentId":
        reader.parent(value)
    elif fieldname == "childFilter":
        reader.child(value, name)
