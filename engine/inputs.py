"""Execution inputs: checked and converted against the flow's declared inputs before anything
is recorded. Every bad input is reported, by name, at once.

The values an execution records are plain JSON, as Kestra stores them: DATETIME as ISO-8601 UTC
text (`2024-06-01T10:00:00Z`), DATE and TIME as ISO-8601 text, DURATION as an ISO-8601 duration
(`PT1H30M`), FILE as a `kestra://` URI, JSON and YAML as the data they hold, ARRAY and
MULTISELECT as lists. An input whose id holds dots (`nested.string`) is nested, so templates read
it as `{{ inputs.nested.string }}`.

Inputs are resolved in the order of their `dependsOn`: an input whose `condition` is false for
the values before it is skipped (its value is null, it is not required and not validated).
"""

from __future__ import annotations

import datetime as dt
import json
import math
import re
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import trio

from engine import patterns, safe_yaml
from engine.duration import parse_duration
from engine.errors import InputValidationError, Problem, TemplateError, TiercelError
from engine.storage import SCHEME, uri_path
from engine.templating import is_template, render_typed

if TYPE_CHECKING:
    from engine.flow import Flow, Input

CHOICE_TYPES = frozenset({"SELECT", "ENUM", "MULTISELECT"})
"""Input types whose value is taken among `values`."""

_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}
_INT = re.compile(r"^[+-]?\d+$")
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
_URI = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:\S*$")
VALIDATOR_TIMEOUT = 1.0
"""Seconds an input's `validator` may take to match a value (see `engine.patterns`)."""


async def resolve_inputs_off_loop(flow: Flow, given: Mapping[str, Any]) -> dict[str, Any]:
    """`resolve_inputs` in a worker thread when the flow declares inputs: their conditions
    render templates (up to the render's time limit) and their validators match patterns (up
    to `VALIDATOR_TIMEOUT`), which must not hold up the event loop serving everyone else."""
    if not flow.inputs:
        return resolve_inputs(flow, given)
    return await trio.to_thread.run_sync(resolve_inputs, flow, given)


def resolve_inputs(flow: Flow, given: Mapping[str, Any]) -> dict[str, Any]:
    """The typed input values for an execution of `flow`; raise `InputValidationError` with
    one problem (path `inputs.<id>`) per bad, missing or unknown input."""
    problems: list[Problem] = []
    declared = {i.id_: i for i in flow.inputs}
    flat = _flatten_given(given, declared)
    for name in flat:
        if name not in declared:
            problems.append(
                Problem(
                    f"Unknown input '{name}': flow {flow.namespace}.{flow.id} declares "
                    + (", ".join(sorted(declared)) or "no inputs"),
                    f"inputs.{name}",
                )
            )
    try:
        ordered = dependency_order(flow.inputs)
    except ValueError as exc:  # checked when the flow is saved; not for every input list
        raise InputValidationError(f"The inputs cannot be resolved: {exc}") from None
    values: dict[str, Any] = {}
    failed: set[str] = set()
    skipped: set[str] = set()
    for inp in ordered:
        name = inp.id_
        depends = inp.dependsOn.inputs if inp.dependsOn else []
        if any(d in failed for d in depends):
            failed.add(name)  # its dependency is reported already
            continue
        if any(d in skipped for d in depends):
            skipped.add(name)
            values[name] = None
            continue
        if inp.dependsOn and inp.dependsOn.condition:
            context = {
                "inputs": nest(values),
                "flow": {"id": flow.id, "namespace": flow.namespace, "revision": flow.revision},
            }
            try:
                shown = _truthy(render_typed(inp.dependsOn.condition, context))
            except TemplateError as exc:
                problems.append(
                    Problem(
                        f"Input '{name}': its dependsOn condition failed: {exc.message}",
                        f"inputs.{name}",
                    )
                )
                failed.add(name)
                continue
            if not shown:
                skipped.add(name)
                values[name] = None
                continue
        raw = flat.get(name)
        if raw is None or raw == "":
            raw = inp.defaults
        if raw is None:
            if inp.required:
                # A prefill is only what the form showed: left empty, the input has no value.
                missing = (
                    f"Input '{name}' is required and was left empty (its prefill is a suggestion, "
                    "not a default): give it a value"
                    if inp.prefill is not None
                    else f"Input '{name}' is required and has no default: give it a value"
                )
                problems.append(Problem(missing, f"inputs.{name}"))
                failed.add(name)
            else:
                values[name] = None
            continue
        try:
            values[name] = convert(inp, raw)
        except ValueError as exc:
            problems.append(Problem(f"Input '{name}' ({inp.type}): {exc}", f"inputs.{name}"))
            failed.add(name)
    if problems:
        n = len(problems)
        raise InputValidationError(
            f"Invalid inputs ({n} problem{'s' if n != 1 else ''}): nothing was started", problems
        )
    return nest(values)


def convert(inp: Input, raw: Any) -> Any:
    """One input value converted to its declared type and checked against the input's
    constraints; a `ValueError` says what is wrong with it."""
    converter = _CONVERTERS.get(inp.type)
    if converter is None:
        raise ValueError(f"unknown input type {inp.type!r}")
    return converter(inp, raw)


def bound(inp: Input, name: str) -> Any:
    """The parsed `min`, `max`, `after` or `before` of `inp` (None when unset); a `ValueError`
    says why it does not fit the input's type."""
    value = getattr(inp, name)
    if value is None:
        return None
    kind = inp.type
    if kind == "INT":
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"`{name}` must be an integer, not {value!r}")
        return value
    if kind == "FLOAT":
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"`{name}` must be a number, not {value!r}")
        return float(value)
    if kind == "DURATION":
        try:
            return parse_duration(str(value))
        except ValueError:
            raise ValueError(
                f"`{name}` must be an ISO-8601 duration such as PT30S, not {value!r}"
            ) from None
    if kind in ("DATETIME", "DATE", "TIME"):
        if kind == "TIME" and isinstance(value, int) and not isinstance(value, bool):
            raise ValueError(
                f'`{name}` must be a time such as "10:30:00": write it in quotes (YAML reads '
                "an unquoted 10:30:00 as a number)"
            )
        parsed = _temporal(kind, value)
        if parsed is None:
            raise ValueError(f"`{name}` must be an ISO-8601 {kind.lower()}, not {value!r}")
        return parsed
    raise ValueError(f"`{name}` does not apply to a {kind} input")


def choices(inp: Input) -> list[Any] | None:
    """The values a SELECT, ENUM or MULTISELECT input offers (`options` is MULTISELECT's old
    name for `values`)."""
    return inp.values if inp.values is not None else inp.options


def dependency_order(inputs: list[Input]) -> list[Input]:
    """The inputs with each one after those it `dependsOn` (declaration order otherwise); a
    `ValueError` names a cycle."""
    by_id = {i.id_: i for i in inputs}
    ordered: list[Input] = []
    done: set[str] = set()

    def visit(inp: Input, trail: list[str]) -> None:
        if inp.id_ in done:
            return
        if inp.id_ in trail:
            cycle = " -> ".join([*trail[trail.index(inp.id_) :], inp.id_])
            raise ValueError(f"inputs depend on each other in a cycle: {cycle}")
        for dep in inp.dependsOn.inputs if inp.dependsOn else []:
            if dep in by_id:
                visit(by_id[dep], [*trail, inp.id_])
        done.add(inp.id_)
        ordered.append(inp)

    for inp in inputs:
        visit(inp, [])
    return ordered


def nest(values: Mapping[str, Any]) -> dict[str, Any]:
    """Values by input id, with dotted ids (`a.b`) made nested maps (`{"a": {"b": ...}}`)."""
    out: dict[str, Any] = {}
    for key, value in values.items():
        parts = key.split(".")
        target = out
        for part in parts[:-1]:
            child = target.setdefault(part, {})
            if not isinstance(child, dict):
                break
            target = child
        else:
            target[parts[-1]] = value
            continue
        out[key] = value  # a plain value already holds the prefix: keep the dotted key
    return out


def _flatten_given(given: Mapping[str, Any], declared: Mapping[str, Any]) -> dict[str, Any]:
    """Given values by input id: nested maps (`{"a": {"b": 1}}`) for dotted ids are accepted."""
    flat: dict[str, Any] = {}
    for key, value in given.items():
        key = str(key)
        prefix = key + "."
        if (
            key not in declared
            and isinstance(value, Mapping)
            and any(d.startswith(prefix) for d in declared)
        ):
            inner = _flatten_given({prefix + str(k): v for k, v in value.items()}, declared)
            flat.update(inner)
        else:
            flat[key] = value
    return flat


def _truthy(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() not in ("", "false", "0", "null", "none")
    return bool(value)


# --- one converter per type ----------------------------------------------------------------------


def _text(raw: Any) -> str:
    if isinstance(raw, str):
        return raw
    if isinstance(raw, bool):
        return "true" if raw else "false"
    if isinstance(raw, int | float):
        return str(raw)
    if isinstance(raw, dt.date | dt.time):
        return raw.isoformat()
    return json.dumps(raw, default=str)


def _string(inp: Input, raw: Any) -> str:
    """STRING, and SECRET (checked as a STRING; the execution records its value encrypted
    with a key of its own, see `engine.secrets.encrypt_inputs`)."""
    value = _text(raw)
    if inp.validator and not patterns.fullmatch(inp.validator, value, timeout=VALIDATOR_TIMEOUT):
        shown = "the value" if inp.type == "SECRET" else f"'{value}'"
        raise ValueError(f"{shown} does not match the pattern {inp.validator}")
    return value


def _email(inp: Input, raw: Any) -> str:
    value = _text(raw).strip()
    if not _EMAIL.match(value):
        raise ValueError(f"'{value}' is not an e-mail address (name@example.com)")
    return value


def _uri(inp: Input, raw: Any) -> str:
    value = _text(raw).strip()
    if not _URI.match(value):
        raise ValueError(f"'{value}' is not a URI (scheme:..., e.g. https://example.com/a)")
    return value


def _int(inp: Input, raw: Any) -> int:
    value: int | None = None
    if isinstance(raw, bool):
        value = None
    elif isinstance(raw, int):
        value = raw
    elif isinstance(raw, float) and raw.is_integer():
        value = int(raw)
    elif isinstance(raw, str) and _INT.match(raw.strip()) and len(raw.strip()) <= 40:
        value = int(raw.strip())
    elif isinstance(raw, str) and _INT.match(raw.strip()):
        raise ValueError(f"{_shown(raw)} is beyond 64 bits (-2^63 to 2^63-1)")
    if value is None:
        raise ValueError(f"'{_shown(raw)}' is not an integer")
    if not MIN_INT <= value <= MAX_INT:
        raise ValueError(f"{_shown(raw)} is beyond 64 bits (-2^63 to 2^63-1)")
    _check_range(inp, value, value)
    return value


def _float(inp: Input, raw: Any) -> float:
    value: float | None = None
    if isinstance(raw, int | float) and not isinstance(raw, bool):
        value = float(raw)
    elif isinstance(raw, str):
        try:
            value = float(raw.strip())
        except ValueError:
            value = None
    if value is None or not math.isfinite(value):
        raise ValueError(f"'{raw}' is not a number")
    _check_range(inp, value, value)
    return value


def _boolean(inp: Input, raw: Any) -> bool:
    if isinstance(raw, bool):
        return raw
    text = _text(raw).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ValueError(f"'{raw}' is not a boolean (true or false)")


def _duration(inp: Input, raw: Any) -> str:
    if isinstance(raw, dt.timedelta):
        value = raw
    else:
        try:
            value = parse_duration(_text(raw))
        except ValueError:
            raise ValueError(
                f"'{raw}' is not an ISO-8601 DURATION such as PT30S, PT5M or P1D"
            ) from None
    _check_range(inp, value, iso_duration(value))
    return iso_duration(value)


def iso_duration(value: dt.timedelta) -> str:
    """A duration written as Kestra writes one: hours, minutes and seconds (`PT36H`,
    `PT1M30S`, `PT0.5S`, `PT0S`)."""
    micros = round(value.total_seconds() * 1_000_000)
    sign = "-" if micros < 0 else ""
    micros = abs(micros)
    hours, rest = divmod(micros, 3_600_000_000)
    minutes, rest = divmod(rest, 60_000_000)
    seconds, fraction = divmod(rest, 1_000_000)
    text = "PT"
    if hours:
        text += f"{sign}{hours}H"
    if minutes:
        text += f"{sign}{minutes}M"
    if seconds or fraction or text == "PT":
        digits = f".{fraction:06d}".rstrip("0") if fraction else ""
        text += f"{sign}{seconds}{digits}S"
    return text


def _temporal_value(inp: Input, raw: Any) -> str:
    kind = inp.type
    value = _temporal(kind, raw)
    if value is None:
        extra = " without a time zone" if kind == "TIME" else ""
        raise ValueError(f"'{_text(raw)}' is not an ISO-8601 {kind.lower()}{extra}")
    text = _iso_temporal(value)
    _check_range(inp, value, text)
    return text


def _temporal(kind: str, raw: Any) -> Any:
    """A DATETIME (aware, naive ones taken as UTC), DATE or TIME (without zone), or None."""
    try:
        if kind == "DATETIME":
            if isinstance(raw, dt.datetime):
                moment = raw
            elif isinstance(raw, dt.date):
                moment = dt.datetime.combine(raw, dt.time())
            elif isinstance(raw, str):
                moment = dt.datetime.fromisoformat(raw.strip().replace("Z", "+00:00"))
            else:
                return None
            moment = moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)
            # In UTC now, so nothing later overflows (9999-12-31T23:00-12:00 is in year 10000).
            return moment.astimezone(dt.UTC)
        if kind == "DATE":
            if isinstance(raw, dt.datetime):
                return None
            if isinstance(raw, dt.date):
                return raw
            return dt.date.fromisoformat(raw.strip()) if isinstance(raw, str) else None
        if isinstance(raw, dt.time):
            moment_t = raw
        elif isinstance(raw, str):
            moment_t = dt.time.fromisoformat(raw.strip())
        else:
            return None
        return moment_t if moment_t.tzinfo is None else None
    except (ValueError, OverflowError):
        return None


def _iso_temporal(value: dt.datetime | dt.date | dt.time) -> str:
    if isinstance(value, dt.datetime):
        try:
            value = value.astimezone(dt.UTC)
        except OverflowError:  # 9999-12-31T23:51:00-00:09 is past year 9999 in UTC
            raise ValueError(
                f"{value.isoformat()} does not exist in UTC (it falls outside years 1 to 9999)"
            ) from None
        spec = (
            "seconds"
            if not value.microsecond
            else "milliseconds"
            if value.microsecond % 1000 == 0
            else "microseconds"
        )
        return value.isoformat(timespec=spec).replace("+00:00", "Z")
    return value.isoformat()


def _check_range(inp: Input, value: Any, shown: Any) -> None:
    """Bounds: `min`/`max` inclusive, `after`/`before` exclusive, as Kestra checks them."""
    low, high = ("after", "before") if inp.type in ("DATETIME", "DATE", "TIME") else ("min", "max")
    lower, upper = bound(inp, low), bound(inp, high)
    if low == "min":
        if lower is not None and value < lower:
            raise ValueError(f"{shown} is below the minimum {inp.min}")
        if upper is not None and value > upper:
            raise ValueError(f"{shown} is above the maximum {inp.max}")
    else:
        if lower is not None and not value > lower:
            raise ValueError(f"'{shown}' must be after {_iso_temporal(lower)}")
        if upper is not None and not value < upper:
            raise ValueError(f"'{shown}' must be before {_iso_temporal(upper)}")


def _file(inp: Input, raw: Any) -> str:
    if not isinstance(raw, str) or not raw.startswith(SCHEME):
        raise ValueError(
            "a FILE input takes an uploaded file (multipart/form-data) or a kestra:// URI"
        )
    try:
        uri_path(raw)
    except TiercelError as exc:
        raise ValueError(exc.message) from None
    return raw


def _json(inp: Input, raw: Any) -> Any:
    if isinstance(raw, str):
        return bounded(_json_text(raw, "not valid JSON"))
    return _json_safe(bounded(raw))


def _yaml(inp: Input, raw: Any) -> Any:
    if isinstance(raw, str):
        try:
            return _json_safe(safe_yaml.load(raw))
        except ValueError as exc:
            raise ValueError(f"not valid YAML: {exc}") from None
    return _json_safe(bounded(raw))


def _json_text(raw: str, what: str) -> Any:
    try:
        return json.loads(raw, parse_constant=_no_constant)
    except RecursionError:
        raise ValueError(f"{what}: nested more than {MAX_DEPTH} levels deep") from None
    except ValueError as exc:
        raise ValueError(f"{what}: {exc}") from None


MAX_DEPTH = 100
"""Levels of nesting a JSON or YAML value may hold (as a YAML document, engine/safe_yaml.py)."""
MIN_INT, MAX_INT = -(2**63), 2**63 - 1
"""The integers an input may hold: those of 64 bits (what JSON readers agree on)."""


def bounded(value: Any) -> Any:
    """`value` when what it holds can be recorded and shown as JSON: nested at most MAX_DEPTH
    levels, integers of 64 bits, strings without NUL; a `ValueError` says what is wrong."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, bool) or item is None or isinstance(item, float):
            continue
        if isinstance(item, int):
            if not MIN_INT <= item <= 2**64 - 1:
                raise ValueError(f"the number {_shown(item)} is beyond 64 bits")
        elif isinstance(item, str):
            if "\x00" in item:
                raise ValueError("it holds a NUL character (\\u0000), which cannot be stored")
        elif isinstance(item, Mapping | list | tuple):
            if depth > MAX_DEPTH:
                raise ValueError(f"it is nested more than {MAX_DEPTH} levels deep")
            if isinstance(item, Mapping):
                stack.extend((k, depth + 1) for k in item)
                stack.extend((v, depth + 1) for v in item.values())
            else:
                stack.extend((v, depth + 1) for v in item)
    return value


def _shown(raw: Any) -> str:
    """A value as a message quotes it: cut to 40 characters."""
    text = raw if isinstance(raw, str) else repr(raw)
    return text if len(text) <= 40 else text[:40] + "..."


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON value")


def _json_safe(value: Any) -> Any:
    """`value` with what JSON cannot hold made JSON: dates as ISO text, keys as text."""
    if value is None or isinstance(value, str | bool | int):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{value} is not a JSON number")
        return value
    if isinstance(value, dt.date | dt.time):
        return _iso_temporal(value)
    if isinstance(value, Mapping):
        return {_text(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_json_safe(v) for v in value]
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    raise ValueError(f"a {type(value).__name__} is not a JSON value")


def _is_scalar(value: Any) -> bool:
    return isinstance(value, str | int | float | bool)


def _choose(inp: Input, value: str) -> None:
    offered = choices(inp)
    if inp.allowCustomValue or inp.expression or offered is None:
        return  # values computed by `expression` are not known here: any value is taken
    if value not in [_text(v) for v in offered]:
        raise ValueError(f"'{value}' is not one of {', '.join(_text(v) for v in offered)}")


def _select(inp: Input, raw: Any) -> str:
    if not _is_scalar(raw):
        raise ValueError(f"a {inp.type} input takes one value, not {_text(raw)}")
    value = _text(raw)
    _choose(inp, value)
    return value


def _multiselect(inp: Input, raw: Any) -> list[str]:
    items = _listed(raw)
    bad = [i for i in items if not _is_scalar(i)]
    if bad:
        raise ValueError(f"a MULTISELECT input takes a list of values, not {_text(raw)}")
    texts = [_text(i) for i in items]
    offered = choices(inp)
    if not (inp.allowCustomValue or inp.expression or offered is None):
        allowed = {_text(v) for v in offered}
        wrong = [t for t in texts if t not in allowed]
        if wrong:
            raise ValueError(
                f"{', '.join(wrong)} not among the values {', '.join(_text(v) for v in offered)}"
            )
    return texts


def _array(inp: Input, raw: Any) -> list[Any]:
    from engine.flow import Input

    items = _listed(raw, single=False)
    item = Input(id_=inp.id_, type=inp.itemType or "STRING")
    out = []
    for index, value in enumerate(items):
        try:
            out.append(convert(item, value))
        except ValueError as exc:
            raise ValueError(f"item [{index}]: {exc}") from None
    return out


def _listed(raw: Any, *, single: bool = True) -> list[Any]:
    """A list given as a list, as JSON text (`["a", "b"]`), or (when `single`) one value."""
    if isinstance(raw, list | tuple):
        return list(raw)
    if isinstance(raw, str) and raw.strip().startswith("["):
        parsed = bounded(_json_text(raw, f"'{_shown(raw)}' is not a JSON list"))
        if isinstance(parsed, list):
            return parsed
    if isinstance(raw, Mapping) or not single:
        raise ValueError(f"{_text(raw)} is not a list (give a JSON list such as [1, 2])")
    return [raw]


_CONVERTERS: dict[str, Callable[[Input, Any], Any]] = {
    "STRING": _string,
    "SECRET": _string,
    "EMAIL": _email,
    "URI": _uri,
    "INT": _int,
    "FLOAT": _float,
    "BOOLEAN": _boolean,
    "BOOL": _boolean,
    "DATETIME": _temporal_value,
    "DATE": _temporal_value,
    "TIME": _temporal_value,
    "DURATION": _duration,
    "FILE": _file,
    "JSON": _json,
    "YAML": _yaml,
    "SELECT": _select,
    "ENUM": _select,
    "MULTISELECT": _multiselect,
    "ARRAY": _array,
}


def is_templated(value: Any) -> bool:
    """Whether a default holds an expression (it is then not checked when the flow is saved)."""
    if isinstance(value, str):
        return is_template(value)
    if isinstance(value, Mapping):
        return any(is_templated(v) for v in value.values())
    if isinstance(value, list):
        return any(is_templated(v) for v in value)
    return False
