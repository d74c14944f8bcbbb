"""Execution inputs: checked and converted against the flow's declared inputs before anything
is recorded. Every bad input is reported, by name, at once."""

from __future__ import annotations

import datetime as dt
import json
import re
from typing import Any

import yaml

from engine.duration import parse_duration
from engine.errors import InputValidationError, Problem
from engine.flow import Flow, Input

_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")


def resolve_inputs(flow: Flow, given: dict[str, Any]) -> dict[str, Any]:
    """The typed input values for an execution of `flow`; raise listing every bad one."""
    problems: list[Problem] = []
    declared = {i.id_ for i in flow.inputs}
    for name in given:
        if name not in declared:
            problems.append(
                Problem(
                    f"Unknown input '{name}': flow {flow.namespace}.{flow.id} declares "
                    + (", ".join(sorted(declared)) or "no inputs"),
                    f"inputs.{name}",
                )
            )
    values: dict[str, Any] = {}
    for inp in flow.inputs:
        raw = given.get(inp.id_)
        if raw is None or raw == "":
            raw = inp.defaults
        if raw is None:
            if inp.required:
                problems.append(
                    Problem(
                        f"Input '{inp.id_}' is required and has no default", f"inputs.{inp.id_}"
                    )
                )
            else:
                values[inp.id_] = None
            continue
        try:
            values[inp.id_] = convert(inp, raw)
        except ValueError as exc:
            problems.append(Problem(f"Input '{inp.id_}' ({inp.type}): {exc}", f"inputs.{inp.id_}"))
    if problems:
        raise InputValidationError("Invalid inputs: nothing was started", problems)
    return values


def convert(inp: Input, raw: Any) -> Any:
    """One input value converted to its declared type; ValueError says what is wrong."""
    kind = inp.type
    if kind == "FILE":
        if not isinstance(raw, str) or not raw.startswith("kestra://"):
            raise ValueError(
                "a FILE input takes an uploaded file (multipart/form-data) or a kestra:// URI"
            )
        return raw
    if kind in ("STRING", "SECRET", "URI", "EMAIL"):
        value = (
            raw
            if isinstance(raw, str)
            else json.dumps(raw)
            if not isinstance(raw, (int, float))
            else str(raw)
        )
        if inp.validator and not re.fullmatch(inp.validator, value):
            raise ValueError(f"'{value}' does not match the pattern {inp.validator}")
        if kind == "EMAIL" and not _EMAIL.match(value):
            raise ValueError(f"'{value}' is not an e-mail address")
        if kind == "URI" and not re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:", value):
            raise ValueError(f"'{value}' is not a URI (scheme:...)")
        return value
    if kind == "INT":
        try:
            value_i = int(raw) if not isinstance(raw, bool) and not isinstance(raw, float) else None
        except (TypeError, ValueError):
            value_i = None
        if value_i is None and isinstance(raw, float) and raw.is_integer():
            value_i = int(raw)
        if value_i is None:
            raise ValueError(f"'{raw}' is not an integer")
        _bounds(inp, value_i)
        return value_i
    if kind == "FLOAT":
        try:
            value_f = float(raw)
        except (TypeError, ValueError):
            raise ValueError(f"'{raw}' is not a number") from None
        _bounds(inp, value_f)
        return value_f
    if kind in ("BOOLEAN", "BOOL"):
        if isinstance(raw, bool):
            return raw
        text = str(raw).strip().lower()
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
        raise ValueError(f"'{raw}' is not a boolean (true or false)")
    if kind in ("JSON", "YAML"):
        if not isinstance(raw, str):
            return raw
        try:
            return json.loads(raw) if kind == "JSON" else yaml.safe_load(raw)
        except (json.JSONDecodeError, yaml.YAMLError) as exc:
            raise ValueError(f"not valid {kind}: {exc}") from None
    if kind in ("SELECT", "ENUM"):
        if raw not in (inp.values or []) and not inp.allowCustomValue:
            raise ValueError(f"'{raw}' is not one of {inp.values}")
        return raw
    if kind == "MULTISELECT":
        items = json.loads(raw) if isinstance(raw, str) and raw.startswith("[") else raw
        items = items if isinstance(items, list) else [items]
        bad = [i for i in items if i not in (inp.values or [])]
        if bad and not inp.allowCustomValue:
            raise ValueError(f"{bad} not among {inp.values}")
        return items
    if kind == "ARRAY":
        items = json.loads(raw) if isinstance(raw, str) else raw
        if not isinstance(items, list):
            raise ValueError(f"'{raw}' is not a list")
        item = Input(id_=inp.id_, type=inp.itemType or "STRING")
        return [convert(item, i) for i in items]
    if kind == "DURATION":
        parse_duration(str(raw))
        return str(raw)
    if kind in ("DATETIME", "DATE", "TIME"):
        text = str(raw)
        value = _temporal(kind, text)
        if value is None:
            raise ValueError(f"'{text}' is not an ISO-8601 {kind.lower()}")
        for bound, name in ((inp.after, "after"), (inp.before, "before")):
            if bound is None:
                continue
            limit = _temporal(kind, str(bound))
            if limit is None:
                raise ValueError(f"its `{name}` bound '{bound}' is not an ISO-8601 {kind.lower()}")
            if (name == "after" and not value > limit) or (name == "before" and not value < limit):
                raise ValueError(f"'{text}' must be {name} {bound}")
        return text
    return raw


def _temporal(kind: str, text: str) -> Any:
    try:
        if kind == "DATETIME":
            moment = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
            return moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)
        if kind == "DATE":
            return dt.date.fromisoformat(text)
        return dt.time.fromisoformat(text)
    except ValueError:
        return None


def _bounds(inp: Input, value: float) -> None:
    if inp.min is not None and value < float(inp.min):
        raise ValueError(f"{value} is below the minimum {inp.min}")
    if inp.max is not None and value > float(inp.max):
        raise ValueError(f"{value} is above the maximum {inp.max}")
