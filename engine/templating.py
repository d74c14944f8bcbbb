"""Pebble-compatible templates rendered in Jinja2's immutable sandbox.

Flows written for Kestra use Pebble syntax. Most of it is Jinja syntax already; the rest is
translated before compiling: `a ?? b` and `a ??? b` (coalescing), `c ? a : b` (ternary),
`equals`, `contains`, `elseif`, `null`, `is null`, `is empty`, and Pebble's 0-based `loop.index`.
Values print the way Kestra prints them: maps and lists as JSON, booleans as `true`/`false`,
null as an empty string. A template that cannot be rendered raises `TemplateError` naming the
expression.

Templates come from flows, and their values from inputs and outputs: no render may run for long
or grow without bound. One render (with every `render()` it nests) is limited in time
(`RENDER_TIMEOUT`), in loop iterations (`MAX_LOOP_ITERATIONS`), in what it builds (`MAX_BUILT`)
and in the size of its output and of any one value (`MAX_TEXT`); `range`, `*`, `+`, `**`, `~`,
`%`, the padding and joining filters, regular expressions and `fromYaml` check their own bounds
before they compute anything. Python cannot interrupt a running thread, so the time limit is a
deadline checked where the work happens: at every loop iteration, call, filter, test, operator
and piece of output. Past a limit, the render fails with a `TemplateError` naming the expression
and the limit. The callers render off the event loop (the executor's batches, workers'
`render_async`), so that no render holds up the API or heartbeats meanwhile.
"""

from __future__ import annotations

import base64
import copy
import datetime as dt
import functools
import hashlib
import json
import logging
import math
import operator
import os
import pprint
import re
import string
import time
import types
import unicodedata
import urllib.parse
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextvars import ContextVar
from typing import Any, ParamSpec, TypeVar

import jinja2
import regex
import yaml
from jinja2 import filters as jinja_filters
from jinja2 import nodes
from jinja2.compiler import CodeGenerator, Frame
from jinja2.runtime import Context, LoopContext
from jinja2.sandbox import ImmutableSandboxedEnvironment, SandboxedFormatter
from jinja2.utils import _PassArg

from engine import jq_sandbox, patterns, safe_yaml
from engine.duration import parse_duration
from engine.errors import TemplateError

log = logging.getLogger(__name__)

MAX_RECURSION = 10
MAX_RENDER_CALLS = 1000
"""How many `render()` calls one render may make in all: nested renders can multiply."""
MAX_RENDER_NESTING = 10
"""How deep `render()` may call itself through the variables it renders."""
MAX_SEQUENCE = 1_000_000
"""The longest text or list that `*` or `range()` may build, and the longest list that `+`
and the list filters may build."""
MAX_POWER_BITS = 100_000
"""The largest integer (in bits) that `**` or `*` may compute: beyond it, it would take
minutes."""
MAX_TEXT = 16 * 1024 * 1024
"""The longest text (in characters) that one render may output, and that any one operation may
build: `~`, `+`, `%`, a format, a padding, joining or replacing filter, a value printed as JSON.
As large as the largest task output, so that any output can be rendered."""
MAX_BUILT = 64 * 1024 * 1024
"""How much one render may build in all: the characters of every text (and 8 per item of every
list) that its output, operators, filters and calls produce, kept or not."""
MAX_LOOP_ITERATIONS = 1_000_000
"""How many loop iterations one render may run in all, nested loops and `render()` included."""
DEFAULT_RENDER_TIMEOUT = 5.0
MAX_EXCERPT = 160
"""How much of a template an error message quotes."""


def _timeout_from_environment() -> float:
    text = os.environ.get("TIERCEL_RENDER_TIMEOUT", "").strip()
    if not text:
        return DEFAULT_RENDER_TIMEOUT
    try:
        seconds = float(text)
    except ValueError:
        seconds = math.nan
    if not 0 < seconds < math.inf:
        log.warning(
            "TIERCEL_RENDER_TIMEOUT=%r is not a positive number of seconds; renders are limited "
            "to %g s",
            text,
            DEFAULT_RENDER_TIMEOUT,
        )
        return DEFAULT_RENDER_TIMEOUT
    return seconds


RENDER_TIMEOUT = _timeout_from_environment()
"""Seconds one render may take (`TIERCEL_RENDER_TIMEOUT`, 5 by default)."""


# --- what one render may spend ----------------------------------------------------------------


class _Budget:
    """What one render, with the renders it nests, has spent of its limits."""

    __slots__ = (
        "timeout",
        "deadline",
        "iterations",
        "built",
        "spent",
        "render_calls",
        "render_depth",
    )

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.deadline = time.monotonic() + timeout
        self.iterations = 0
        self.built = 0
        self.spent = 0
        self.render_calls = 0
        self.render_depth = 0

    def check_time(self) -> None:
        """Fail once the render has run past its deadline."""
        if time.monotonic() > self.deadline:
            # The limit is not in the message: it is the server's setting, and the message is
            # recorded in the decision that `sys verify` replays, possibly under another setting.
            raise TemplateError(
                "rendering took longer than the time limit of one render (TIERCEL_RENDER_TIMEOUT, "
                f"{DEFAULT_RENDER_TIMEOUT:g} s unless configured); make the expression do less work"
            )

    def spend(self, size: int) -> None:
        """Count `size` more characters (or list slots) built, and check the time (after
        anything large, and every 64 small pieces: output in a loop is the hot path)."""
        self.built += size
        if self.built > MAX_BUILT:
            raise TemplateError(
                f"the values built by one render exceed {MAX_BUILT} characters (the limit); "
                "work on smaller values or fewer of them"
            )
        self.spent += 1
        if size > 65536 or not self.spent & 63:
            self.check_time()

    def iterate(self, iterable: Iterable[Any]) -> Iterator[Any]:
        """The items of `iterable`, each counted as one loop iteration."""
        for item in iterable:
            self.iterations += 1
            if self.iterations > MAX_LOOP_ITERATIONS:
                raise TemplateError(
                    f"loops ran more than {MAX_LOOP_ITERATIONS} iterations in one render (the "
                    "limit); loop over fewer items"
                )
            if not self.iterations & 255:
                self.check_time()
            yield item


_BUDGET: ContextVar[_Budget | None] = ContextVar("_BUDGET", default=None)
"""The budget of the render running in this context (None outside any render)."""

_P = ParamSpec("_P")
_R = TypeVar("_R")


def _bounded(func: Callable[_P, _R]) -> Callable[_P, _R]:
    """`func` (an entry point of rendering) within one budget: its own when it is called from
    outside any render, the enclosing render's when a template calls it."""

    @functools.wraps(func)
    def within_budget(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        if _BUDGET.get() is not None:
            return func(*args, **kwargs)
        token = _BUDGET.set(_Budget(RENDER_TIMEOUT))
        try:
            return func(*args, **kwargs)
        finally:
            _BUDGET.reset(token)

    return within_budget


def _size(value: Any) -> int:
    """What building `value` costs: its characters, or 8 per slot of a list."""
    if isinstance(value, str | bytes):
        return len(value)
    if isinstance(value, list | tuple | Mapping):
        return 8 * len(value)
    return 0


def _spend(value: _R) -> _R:
    """`value`, counted as built by the render running (if any)."""
    budget = _BUDGET.get()
    if budget is not None:
        budget.spend(_size(value))
    return value


def _check_time() -> None:
    budget = _BUDGET.get()
    if budget is not None:
        budget.check_time()


def _remaining_time() -> float:
    """Seconds left to the render running (its whole timeout outside any render)."""
    budget = _BUDGET.get()
    if budget is None:
        return RENDER_TIMEOUT
    return max(budget.deadline - time.monotonic(), 0.001)


def _text_size(value: Any, limit: int = MAX_TEXT) -> int:
    """About how many characters `value` takes as text (JSON or Python's `str`), counted only up
    to just past `limit`. A list or map that appears many times (`[x] * 1000`, YAML aliases) is
    measured once, so a small structure that prints huge is measured quickly."""
    memo: dict[int, int] = {}

    def measure(item: Any) -> int:
        if isinstance(item, str):
            return len(item) + 2
        if item is None or isinstance(item, bool | float):
            return 24
        if isinstance(item, int):
            return item.bit_length() // 3 + 2
        if isinstance(item, Mapping | list | tuple | set | frozenset):
            key = id(item)
            known = memo.get(key)
            if known is not None:
                return known
            total = 2
            if isinstance(item, Mapping):
                for k, v in item.items():
                    total += measure(k) + measure(v) + 2
                    if total > limit:
                        break
            else:
                for element in item:
                    total += measure(element) + 2
                    if total > limit:
                        break
            memo[key] = total
            return total
        if isinstance(item, bytes):
            return 3 * len(item) + 3
        return 32

    return measure(value)


def _check_text(size: int, what: str) -> None:
    """Refuse building a text of `size` characters when it is over the limit."""
    if size > MAX_TEXT:
        raise TemplateError(
            f"{what} would build a text of at least {size} characters; at most {MAX_TEXT} are "
            "allowed"
        )


def _check_items(size: int, what: str) -> None:
    """Refuse building a list of `size` items when it is over the limit."""
    if size > MAX_SEQUENCE:
        raise TemplateError(
            f"{what} would build a list of {size} items; at most {MAX_SEQUENCE} are allowed"
        )


def _str(value: Any, what: str) -> str:
    """Python's `str(value)`, refused when it would be too long."""
    if not isinstance(value, str):
        _check_text(_text_size(value), what)
    return str(value)


def is_template(value: str) -> bool:
    """Whether `value` contains an expression or a tag to render."""
    return "{{" in value or "{%" in value


# --- Pebble → Jinja translation -----------------------------------------------------------------

_TOKEN = re.compile(
    r"""
    (?P<ws>\s+)
  | (?P<str>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')
  | (?P<num>\d+(?:\.\d+)?(?:[eE][+-]?\d+)?)
  | (?P<name>[A-Za-z_][A-Za-z0-9_]*)
  | (?P<op>\?\?\?|\?\?|\*\*|//|==|!=|<=|>=|\.\.|[-+*/%~<>=!?:.,|()\[\]{}])
    """,
    re.VERBOSE,
)
_OPEN = {"(": ")", "[": "]", "{": "}"}
_CLOSE = {")", "]", "}"}


def _tokens(source: str, where: str) -> list[str]:
    out: list[str] = []
    pos = 0
    while pos < len(source):
        match = _TOKEN.match(source, pos)
        if match is None:
            raise TemplateError(
                f"Cannot read '{_excerpt(where)}': unexpected character {source[pos]!r} at "
                f"offset {pos}; check the expression's syntax"
            )
        if match.lastgroup != "ws":
            out.append(match.group())
        pos = match.end()
    return out


def _split_top(tokens: list[str], separators: set[str]) -> list[tuple[str, list[str]]]:
    """Split at separators outside brackets: [(separator before, tokens), ...]."""
    parts: list[tuple[str, list[str]]] = [("", [])]
    depth = 0
    for tok in tokens:
        if tok in _OPEN:
            depth += 1
        elif tok in _CLOSE:
            depth -= 1
        if depth == 0 and tok in separators:
            parts.append((tok, []))
        else:
            parts[-1][1].append(tok)
    return parts


def _find_ternary(tokens: list[str]) -> tuple[int, int] | None:
    depth = 0
    question = -1
    nested = 0
    for i, tok in enumerate(tokens):
        if tok in _OPEN:
            depth += 1
        elif tok in _CLOSE:
            depth -= 1
        elif depth == 0 and tok == "?":
            if question < 0:
                question = i
            else:
                nested += 1
        elif depth == 0 and tok == ":" and question >= 0:
            if nested == 0:
                return question, i
            nested -= 1
    return None


def _expression(tokens: list[str]) -> str:
    """Translate one Pebble expression (a token list) into a Jinja expression."""
    ternary = _find_ternary(tokens)
    if ternary is not None:
        q, c = ternary
        cond, yes, no = tokens[:q], tokens[q + 1 : c], tokens[c + 1 :]
        return f"(({_expression(yes)}) if ({_expression(cond)}) else ({_expression(no)}))"
    parts = _split_top(tokens, {"??", "???"})
    if len(parts) > 1:
        # One n-ary call, compiled by _CodeGenerator into code that evaluates each operand at
        # most once, left to right: the text and the work grow linearly with the chain.
        if not all(part for _, part in parts):
            raise TemplateError("'??' and '???' need a value on each side")
        rest = ", ".join(f"{op!r}, ({_plain(part)})" for op, part in parts[1:])
        return f"(({_plain(parts[0][1])})|{_COALESCE}({rest}))"
    return _plain(tokens)


def _plain(tokens: list[str]) -> str:
    """Translate tokens free of top-level `?`: recurse into brackets, rename Pebble words."""
    out: list[str] = []
    i = 0
    while i < len(tokens):
        tok = tokens[i]
        if tok in _OPEN:
            close = _OPEN[tok]
            depth, j = 1, i + 1
            while j < len(tokens) and depth:
                if tokens[j] in _OPEN:
                    depth += 1
                elif tokens[j] in _CLOSE:
                    depth -= 1
                j += 1
            inner = tokens[i + 1 : j - 1] if depth == 0 else tokens[i + 1 : j]
            items = []
            for _, item in _split_top(inner, {","}):
                if tok == "{":
                    kv = _split_top(item, {":"})
                    if len(kv) >= 2:
                        key = kv[0][1]
                        value = item[len(key) + 1 :]
                        items.append(f"{_expression(key)}: {_expression(value)}")
                        continue
                if tok == "[" and out and out[-1] not in ("(", "[", ",", "in", ":", "{"):
                    # a subscript may be a slice, keep its colons
                    sl = _split_top(item, {":"})
                    items.append(":".join(_expression(p) for _, p in sl))
                    continue
                items.append(_expression(item))
            out.append(tok + ", ".join(items) + (close if depth == 0 else ""))
            i = j
            continue
        prev = out[-1] if out else ""
        if tok == "equals":
            out.append("==")
        elif tok == "contains" and prev not in (".", "|", "is"):
            out.append("is __contains")
        elif tok == "index" and prev == "." and len(out) > 1 and out[-2] == "loop":
            out.append("index0")
        elif tok == "revindex" and prev == "." and len(out) > 1 and out[-2] == "loop":
            out.append("revindex0")
        elif tok == "?":
            raise TemplateError("A '?' without its ':' - write 'condition ? then : else'")
        else:
            out.append(tok)
        i += 1
    return _join(out)


def _join(tokens: list[str]) -> str:
    text = ""
    for tok in tokens:
        if (
            text
            and (tok[0].isalnum() or tok[0] in "_'\"")
            and (text[-1].isalnum() or text[-1] in "_'\")]}")
        ):
            text += " "
        elif (
            text and tok not in (".", ",", ")", "]", "}", "(", "[", "|") and text[-1] not in ".([{|"
        ):
            text += " "
        text += tok
    return text


_BLOCK = re.compile(r"\{\{-?|\{%-?|\{#")


def translate(source: str) -> str:
    """The Jinja equivalent of a Pebble template."""
    out: list[str] = []
    pos = 0
    while True:
        match = _BLOCK.search(source, pos)
        if match is None:
            out.append(source[pos:])
            return "".join(out)
        out.append(source[pos : match.start()])
        opener = match.group()
        if opener == "{#":
            end = source.find("#}", match.end())
            end = len(source) if end < 0 else end + 2
            out.append(source[match.start() : end])
            pos = end
            continue
        closer = "}}" if opener.startswith("{{") else "%}"
        end = _find_close(source, match.end(), closer)
        if end < 0:
            raise TemplateError(
                f"Cannot read '{_excerpt(source)}': '{opener}' is never closed; add '{closer}'"
            )
        body = source[match.end() : end]
        trim = ""
        if body.endswith("-"):
            body, trim = body[:-1], "-"
        stop = end + 2
        if opener.startswith("{%"):
            words = body.split(None, 1)
            tag = words[0] if words else ""
            if tag == "raw":
                raw_end = re.compile(r"\{%-?\s*endraw\s*-?%\}").search(source, stop)
                finish = raw_end.end() if raw_end else len(source)
                out.append(source[match.start() : finish])
                pos = finish
                continue
            if tag == "elseif":
                tag = "elif"
            rest = words[1] if len(words) > 1 else ""
            out.append(f"{opener} {tag} {_statement(tag, rest, source)} {trim}%}}")
        else:
            out.append(f"{opener} {_expression(_tokens(body, source))} {trim}}}}}")
        pos = stop


def _statement(tag: str, rest: str, where: str) -> str:
    if not rest.strip():
        return ""
    if tag == "for":
        target, _, iterable = rest.partition(" in ")
        return f"{target.strip()} in {_expression(_tokens(iterable, where))}"
    if tag == "set":
        target, _, value = rest.partition("=")
        return f"{target.strip()} = {_expression(_tokens(value, where))}"
    if tag in ("if", "elif"):
        return _expression(_tokens(rest, where))
    return rest


def _find_close(source: str, start: int, closer: str) -> int:
    quote = ""
    i = start
    while i < len(source) - 1:
        ch = source[i]
        if quote:
            if ch == "\\":
                i += 2
                continue
            if ch == quote:
                quote = ""
        elif ch in "'\"":
            quote = ch
        elif source.startswith(closer, i):
            return i
        i += 1
    return -1


# --- the environment ------------------------------------------------------------------------------

_COALESCE = "__coalesce"
"""The filter that `??` and `???` translate to: `(a)|__coalesce('??', (b), '???', (c))`."""


_ITERATIONS = "__iterations"
"""The marker filter that a `for` loop's iterable is wrapped in, compiled to
`environment.iterations(...)` (Jinja allows no node types of our own)."""


class _CodeGenerator(CodeGenerator):
    """Compiles `_COALESCE` lazily, and the parts of a template that can repeat within the
    render's budget; everything else as Jinja does.

    Jinja has no expression that names a value once and tests it, so `a ?? b` written as
    `a if a is not null else b` evaluates `a` twice, and a chain doubles its size and its work
    with every `??`. Here the chain becomes `environment.coalesce(a, '??', lambda: b, ...)`:
    each operand is evaluated once at most, and only while the values before it are missing.

    A loop's iterable goes through `environment.iterations`, text of the template through
    `environment.emitted` and `~` through `environment.join_text`, so that a loop, even an empty
    one, counts its iterations and checks the deadline, and repeated text counts as built.
    """

    def visit_For(self, node: nodes.For, frame: Frame) -> None:
        counted = copy.copy(node)
        counted.iter = nodes.Filter(node.iter, _ITERATIONS, [], [], None, None, lineno=node.lineno)
        super().visit_For(counted, frame)

    def _output_const_repr(self, group: Iterable[Any]) -> str:
        return f"environment.emitted({super()._output_const_repr(group)})"

    def visit_Concat(self, node: nodes.Concat, frame: Frame) -> None:
        self.write("environment.join_text((")
        for arg in node.nodes:
            self.visit(arg, frame)
            self.write(", ")
        self.write("))")

    def visit_Filter(self, node: nodes.Filter, frame: Frame) -> None:
        args = node.args
        if node.name == _ITERATIONS and node.node is not None:
            self.write("environment.iterations(")
            self.visit(node.node, frame)
            self.write(")")
            return
        if (
            node.name != _COALESCE
            or node.node is None
            or node.kwargs
            or node.dyn_args is not None
            or node.dyn_kwargs is not None
            or len(args) % 2
            or not all(
                isinstance(op, nodes.Const) and op.value in ("??", "???") for op in args[::2]
            )
        ):
            super().visit_Filter(node, frame)
            return
        # Soft, as Jinja's own conditional expression: a filter unknown in a branch that is
        # not taken fails only if it is reached.
        frame = frame.soft()
        self.write("environment.coalesce(")
        self.visit(node.node, frame)
        for op, operand in zip(args[::2], args[1::2], strict=True):
            self.write(", ")
            self.visit(op, frame)
            self.write(", lambda: ")
            self.visit(operand, frame)
        self.write(")")


class _Undefined(jinja2.ChainableUndefined, jinja2.StrictUndefined):
    """Chains through `a.b.c` (so `??` and `is defined` work) but fails when printed or used."""

    __slots__ = ()


def _power(base: Any, exponent: Any) -> Any:
    if (
        isinstance(base, int)
        and isinstance(exponent, int)
        and exponent > 0
        and abs(base) > 1
        and abs(base).bit_length() * exponent > MAX_POWER_BITS
    ):
        raise TemplateError(
            f"{base} ** {exponent} is too large to compute (more than {MAX_POWER_BITS} bits)"
        )
    _check_time()
    return operator.pow(base, exponent)


def _multiply(left: Any, right: Any) -> Any:
    for sequence, times in ((left, right), (right, left)):
        if (
            isinstance(sequence, str | list | tuple)
            and isinstance(times, int)
            and len(sequence) * times > MAX_SEQUENCE
        ):
            raise TemplateError(
                f"Repeating a {type(sequence).__name__} of {len(sequence)} items {times} times "
                f"is too large (more than {MAX_SEQUENCE} items)"
            )
    if (
        isinstance(left, int)
        and isinstance(right, int)
        and left.bit_length() + right.bit_length() > MAX_POWER_BITS
    ):
        raise TemplateError(
            f"Multiplying integers of {left.bit_length()} and {right.bit_length()} bits is too "
            f"large to compute (more than {MAX_POWER_BITS} bits)"
        )
    return _spend(operator.mul(left, right))


def _add(left: Any, right: Any) -> Any:
    if isinstance(left, str) and isinstance(right, str):
        _check_text(len(left) + len(right), "'+'")
    elif isinstance(left, list | tuple) and isinstance(right, list | tuple):
        _check_items(len(left) + len(right), "'+'")
    return _spend(operator.add(left, right))


def _modulo(left: Any, right: Any) -> Any:
    if isinstance(left, str):
        _check_text(_percent_size(left, right), f"'{_excerpt(left)}' % ...")
        return _spend(left % right)
    _check_time()
    return operator.mod(left, right)


# `%[(key)][flags][width][.precision][length]type`, as Python's `%` operator reads it.
_PERCENT_SPEC = re.compile(r"%(?:\(([^)]*)\))?[-#0 +]*(\*|\d+)?(?:\.(\*|\d*))?[hlL]?(.?)", re.S)


def _percent_size(fmt: str, args: Any) -> int:
    """At most how long `fmt % args` is: its text, plus each conversion's width, precision and
    value as text. A width or precision given as `*` is refused."""
    total = len(fmt)
    position = 0
    for match in _PERCENT_SPEC.finditer(fmt):
        key, width, precision, kind = match.groups()
        if kind == "%":
            continue
        if width == "*" or precision == "*":
            raise TemplateError(
                f"'{_excerpt(fmt)}' takes a width or precision from its values ('*'); write "
                "the number in the format instead"
            )
        if key is not None:
            value = args.get(key) if isinstance(args, Mapping) else None
        elif isinstance(args, tuple):
            value = args[position] if position < len(args) else None
            position += 1
        else:
            value = args
        total += int(width or 0) + int(precision or 0) + _text_size(value)
    return total


# `[[fill]align][sign][z][#][0][width][grouping][.precision][type]` of `str.format`.
_FORMAT_SPEC = re.compile(r"(?:.?[<>=^])?[-+ ]?z?#?0?(\d*)[,_]?(?:\.(\d+))?[a-zA-Z%]?", re.S)
_FORMATTER = string.Formatter()


def _format_size(fmt: str, args: Any, kwargs: Mapping[str, Any], get_field: Any) -> int:
    """At most how long `fmt.format(*args, **kwargs)` is (`get_field` finds a field's value)."""
    total = 0
    position = 0
    for literal, field, spec, _conversion in _FORMATTER.parse(fmt):
        total += len(literal)
        if field is None:
            continue
        if "{" in (spec or ""):
            raise TemplateError(
                f"'{_excerpt(fmt)}' computes a format from its values ('{{:{{}}}}'); write the "
                "format out instead"
            )
        if field == "" or field[0] in ".[":
            field = f"{position}{field}"
            position += 1
        match = _FORMAT_SPEC.fullmatch(spec or "")
        if match is None:  # a spec of the value's own (a date's strftime): grows with its length
            total += 64 * len(spec or "")
        else:
            total += int(match.group(1) or 0) + int(match.group(2) or 0)
        total += _text_size(get_field(field, args, kwargs)[0])
    return total


def at_render_time(func: Callable[..., Any]) -> Callable[..., Any]:
    """`func` as a filter or test that Jinja calls only while rendering, within its budget.

    Jinja evaluates a filter or test whose arguments are constants while it compiles the
    template (to print its result as static text), unless the callable takes the render
    context. Compiled templates are cached, so a folded call would run once, outside any
    render and its error handling, and its result be reused by every later render.
    Each call checks the render's deadline, and what it returns counts as built.
    """
    if getattr(func, "_at_render_time", False):
        return func
    passes = _PassArg.from_obj(func)

    @jinja2.pass_context
    def call(context: Context, *args: Any, **kwargs: Any) -> Any:
        budget = _BUDGET.get()
        if budget is not None:
            budget.check_time()
        if passes is _PassArg.context:
            result = func(context, *args, **kwargs)
        elif passes is _PassArg.environment:
            result = func(context.environment, *args, **kwargs)
        elif passes is _PassArg.eval_context:
            result = func(context.eval_ctx, *args, **kwargs)
        else:
            result = func(*args, **kwargs)
        if budget is not None and not (args and result is args[0]):
            budget.spend(_size(result))
        return result

    call._at_render_time = True  # type: ignore[attr-defined]
    call.__name__ = getattr(func, "__name__", "filter")
    return call


_PADDING_METHODS = frozenset({"center", "ljust", "rjust", "zfill"})


def _check_method(method: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, ...]:
    """Refuse a call of a text's or an integer's method that would build too long a result
    (`'a'.center(10**9)`); the arguments to call it with (an iterable to join, read once)."""
    owner = getattr(method, "__self__", None)
    name = getattr(method, "__name__", "")
    what = f"{name}()"
    if isinstance(owner, str | bytes | bytearray):
        tab: Any = "\t" if isinstance(owner, str) else b"\t"
        if name in _PADDING_METHODS:
            width = args[0] if args else kwargs.get("width", 0)
            if isinstance(width, int):
                _check_text(width, what)
        elif name == "expandtabs":
            size = args[0] if args else kwargs.get("tabsize", 8)
            if isinstance(size, int):
                _check_text(len(owner) + owner.count(tab) * size, what)
        elif name == "replace" and len(args) >= 2:
            old, new = args[0], args[1]
            if isinstance(old, str | bytes) and isinstance(new, str | bytes):
                grows = max(len(new) - len(old), 0)
                _check_text(len(owner) + owner.count(old) * grows, what)  # type: ignore[arg-type]
        elif name == "join" and args:
            items = list(args[0])
            sizes = sum(len(i) if isinstance(i, str | bytes) else 0 for i in items)
            _check_text(sizes + max(len(items) - 1, 0) * len(owner), what)
            args = (items, *args[1:])
        elif name == "translate" and args and isinstance(args[0], Mapping):
            longest = max((len(v) for v in args[0].values() if isinstance(v, str)), default=1)
            _check_text(len(owner) * max(longest, 1), what)
    elif isinstance(owner, int) and name == "to_bytes":
        length = args[0] if args else kwargs.get("length", 1)
        if isinstance(length, int):
            _check_text(length, what)
    return args


class _RenderTime(dict[str, Callable[..., Any]]):
    """Filters or tests: each one put here is made to run at render time (`at_render_time`)."""

    def __setitem__(self, name: str, func: Callable[..., Any]) -> None:
        super().__setitem__(name, at_render_time(func))

    def update(self, *args: Any, **kwargs: Any) -> None:
        for name, func in dict(*args, **kwargs).items():
            self[name] = func

    def setdefault(self, name: str, func: Callable[..., Any]) -> Callable[..., Any]:
        if name not in self:
            self[name] = func
        return self[name]


class _Environment(ImmutableSandboxedEnvironment):
    """Maps are read by key first: `outputs.t1.values` is the output, not `dict.values`.

    `**`, `*`, `+`, `%` and `~` are bounded, and so are calls, loops and output (see the
    module's docstring), so that no expression can keep the executor or a worker busy for long.
    Filters and tests run at render time only (`at_render_time`).
    """

    intercepted_binops = frozenset({"**", "*", "+", "%"})
    code_generator_class = _CodeGenerator

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.binop_table["**"] = _power
        self.binop_table["*"] = _multiply
        self.binop_table["+"] = _add
        self.binop_table["%"] = _modulo
        # Jinja types these as plain dicts of functions; _RenderTime is one that wraps them.
        filters, tests = _RenderTime(), _RenderTime()
        filters.update(self.filters)
        tests.update(self.tests)
        self.filters = filters
        self.tests = tests  # type: ignore[assignment]

    def coalesce(self, value: Any, *alternatives: Any) -> Any:
        """Pebble's `??` (null or undefined gives the next) and `???` (undefined gives the
        next), applied left to right; `alternatives` alternate an operator and a function
        that computes the next operand."""
        for i in range(0, len(alternatives), 2):
            missing = _missing(value) if alternatives[i] == "??" else _undefined(value)
            if missing:
                value = alternatives[i + 1]()
        return value

    def iterations(self, iterable: Iterable[Any]) -> Iterable[Any]:
        """The iterable of a `for` loop, its items counted as iterations of the render."""
        budget = _BUDGET.get()
        return iterable if budget is None else budget.iterate(iterable)

    def emitted(self, text: str) -> str:
        """Text of the template as it is output, counted as built."""
        budget = _BUDGET.get()
        if budget is not None:
            budget.spend(len(text))
        return text

    def join_text(self, values: tuple[Any, ...]) -> str:
        """`a ~ b ~ ...`: the values as text, joined (Jinja's `str_join`), within `MAX_TEXT`."""
        texts = [v if isinstance(v, str) else _str(v, "'~'") for v in values]
        _check_text(sum(map(len, texts)), "'~'")
        return _spend("".join(texts))

    def call(
        self, context: Context, obj: Any, /, *args: Any, **kwargs: Any
    ) -> Any:  # the sandbox's positional-only signature
        budget = _BUDGET.get()
        if budget is not None:
            budget.check_time()
        if isinstance(obj, LoopContext) and args:
            # `loop(children)` in a recursive loop: its items are iterations too
            args = (self.iterations(args[0]), *args[1:])
        elif isinstance(obj, types.BuiltinMethodType):
            args = _check_method(obj, args, kwargs)
        return _spend(super().call(context, obj, *args, **kwargs))

    def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
        wrapped = super().wrap_str_format(value)
        if wrapped is None:
            return None
        fmt: str = value.__self__
        as_map = value.__name__ == "format_map"
        get_field = SandboxedFormatter(self).get_field

        def bounded(*args: Any, **kwargs: Any) -> str:
            if as_map and len(args) == 1 and not kwargs:
                size = _format_size(fmt, (), args[0], get_field)
            else:
                size = _format_size(fmt, args, kwargs, get_field)
            _check_text(size, f"'{_excerpt(fmt)}'.{value.__name__}(...)")
            return _spend(wrapped(*args, **kwargs))

        return bounded

    def getattr(self, obj: Any, attribute: str) -> Any:
        if isinstance(obj, Mapping):
            if attribute in obj:
                return obj[attribute]
            return self.undefined(obj=obj, name=attribute)
        return super().getattr(obj, attribute)

    def getitem(self, obj: Any, argument: Any) -> Any:
        if isinstance(obj, Mapping):
            if argument in obj:
                return obj[argument]
            return self.undefined(obj=obj, name=argument)
        return super().getitem(obj, argument)

    def is_safe_attribute(self, obj: Any, attr: str, value: Any) -> bool:
        return super().is_safe_attribute(obj, attr, value) and not attr.startswith("_")


def to_text(value: Any) -> str:
    """A value as Kestra prints it."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    if isinstance(value, dt.datetime):
        return _iso(value)
    if isinstance(value, dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, Mapping | list | tuple):
        return to_json(value)
    if isinstance(value, jinja2.Undefined):
        return str(value)  # raises: an undefined value is an error
    return str(value)


def _json_default(value: Any) -> Any:
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, set | frozenset | tuple):
        return list(value)
    if isinstance(value, jinja2.Undefined):
        return str(value)
    return str(value)


def to_json(value: Any) -> str:
    """Compact JSON, as Kestra's `json`/`toJson` filters write it; a value that would take more
    than `MAX_TEXT` characters is refused before it is written."""
    if isinstance(value, Mapping | list | tuple):
        _check_text(_text_size(value), "Writing the value as JSON")
    return json.dumps(value, default=_json_default, separators=(",", ":"), ensure_ascii=False)


def _finalize(value: Any) -> Any:
    if isinstance(value, jinja2.Undefined):
        return value
    text = to_text(value)
    budget = _BUDGET.get()
    if budget is not None:
        budget.spend(len(text))
    return text


def _missing(value: Any) -> bool:
    return value is None or isinstance(value, jinja2.Undefined)


def _undefined(value: Any) -> bool:
    return isinstance(value, jinja2.Undefined)


# --- dates ----------------------------------------------------------------------------------------

_JAVA_LETTERS = re.compile(r"'[^']*'|([A-Za-z])\1*")
_NAMED_FORMATS = {
    "iso": "ISO", "iso_date_time": "ISO", "iso_zoned_date_time": "ISO",
    "iso_offset_date_time": "ISO", "iso_instant": "INSTANT",
    "iso_sec": "yyyy-MM-dd'T'HH:mm:ssXXX", "iso_milli": "yyyy-MM-dd'T'HH:mm:ss.SSSXXX",
    "sql": "yyyy-MM-dd HH:mm:ss.SSSSSS", "sql_milli": "yyyy-MM-dd HH:mm:ss.SSS",
    "sql_seconds": "yyyy-MM-dd HH:mm:ss", "iso_local_date_time": "yyyy-MM-dd'T'HH:mm:ss.SSSSSS",
    "iso_date": "yyyy-MM-dd", "iso_local_date": "yyyy-MM-dd",
    "iso_time": "HH:mm:ss.SSSSSS", "iso_local_time": "HH:mm:ss.SSSSSS",
}  # fmt: skip


def to_datetime(
    value: Any, existing_format: str | None = None, zone: str | None = None
) -> dt.datetime:
    """A datetime from a datetime, a date, an ISO string or epoch seconds."""
    if isinstance(value, dt.datetime):
        result = value
    elif isinstance(value, dt.date):
        result = dt.datetime(value.year, value.month, value.day, tzinfo=dt.UTC)
    elif isinstance(value, int | float) and not isinstance(value, bool):
        result = dt.datetime.fromtimestamp(value, dt.UTC)
    elif isinstance(value, str):
        text = value.strip()
        try:
            if existing_format:
                result = dt.datetime.strptime(text, _strftime_pattern(existing_format))
            else:
                result = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError as exc:
            raise TemplateError(f"Cannot read {value!r} as a date: {exc}") from None
    else:
        raise TemplateError(f"Cannot read {value!r} as a date")
    if result.tzinfo is None:
        result = result.replace(tzinfo=dt.UTC)
    if zone:
        result = result.astimezone(_zone(zone))
    return result


def _zone(name: str) -> dt.tzinfo:
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    if name.upper() in ("UTC", "Z", "GMT"):
        return dt.UTC
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise TemplateError(
            f"Unknown time zone {name!r}; use an IANA name like 'Europe/Paris'"
        ) from None


def _strftime_pattern(java: str) -> str:
    mapping = {
        "yyyy": "%Y", "uuuu": "%Y", "yy": "%y", "MMMM": "%B", "MMM": "%b", "MM": "%m",
        "dd": "%d", "HH": "%H", "hh": "%I", "mm": "%M", "ss": "%S", "a": "%p",
        "EEEE": "%A", "EEE": "%a", "E": "%a", "D": "%j", "DDD": "%j", "XXX": "%z",
        "xxx": "%z", "Z": "%z", "X": "%z", "z": "%Z", "SSSSSS": "%f",
    }  # fmt: skip
    out = []
    for match in _JAVA_LETTERS.finditer(java):
        run = match.group()
        if run.startswith("'"):
            out.append(run[1:-1].replace("%", "%%") or "'")
        else:
            out.append(mapping.get(run, run))
    # keep what lies between the letter runs
    result, last = "", 0
    for piece, match in zip(out, _JAVA_LETTERS.finditer(java), strict=True):
        result += java[last : match.start()].replace("%", "%%") + piece
        last = match.end()
    return result + java[last:].replace("%", "%%")


def _offset(value: dt.datetime) -> str:
    delta = value.utcoffset() or dt.timedelta()
    sign = "-" if delta < dt.timedelta() else "+"
    minutes = abs(int(delta.total_seconds())) // 60
    return f"{sign}{minutes // 60:02d}:{minutes % 60:02d}"


def _iso(value: dt.datetime) -> str:
    text = value.isoformat()
    return text[:-6] + "Z" if text.endswith("+00:00") else text


def format_datetime(value: dt.datetime, pattern: str) -> str:
    """Format with a Java `DateTimeFormatter` pattern or one of Kestra's named formats."""
    pattern = _NAMED_FORMATS.get((pattern or "iso").lower(), pattern)
    if pattern == "ISO":
        return _iso(value)
    if pattern == "INSTANT":
        return _iso(value.astimezone(dt.UTC))
    out, last = [], 0
    for match in _JAVA_LETTERS.finditer(pattern):
        out.append(pattern[last : match.start()])
        last = match.end()
        run = match.group()
        if run.startswith("'"):
            out.append(run[1:-1] or "'")
            continue
        letter, n = run[0], len(run)
        if letter in "yu":
            out.append(f"{value.year % 100:02d}" if n == 2 else f"{value.year:0{n}d}")
        elif letter == "M":
            out.append(
                value.strftime("%B" if n >= 4 else "%b") if n >= 3 else f"{value.month:0{n}d}"
            )
        elif letter == "d":
            out.append(f"{value.day:0{n}d}")
        elif letter == "D":
            out.append(f"{value.timetuple().tm_yday:0{n}d}")
        elif letter == "H":
            out.append(f"{value.hour:0{n}d}")
        elif letter == "h":
            out.append(f"{(value.hour % 12) or 12:0{n}d}")
        elif letter == "m":
            out.append(f"{value.minute:0{n}d}")
        elif letter == "s":
            out.append(f"{value.second:0{n}d}")
        elif letter == "S":
            out.append(f"{value.microsecond:06d}{'0' * 3}"[:n])
        elif letter == "n":
            out.append(str(value.microsecond * 1000))
        elif letter == "a":
            out.append("AM" if value.hour < 12 else "PM")
        elif letter == "E":
            out.append(value.strftime("%A" if n >= 4 else "%a"))
        elif letter in "Xx":
            offset = _offset(value)
            out.append("Z" if letter == "X" and offset in ("+00:00", "") else offset)
        elif letter == "Z":
            out.append(value.strftime("%z"))
        elif letter == "z":
            out.append(value.strftime("%Z"))
        elif letter == "V":
            out.append(str(value.tzinfo))
        else:
            raise TemplateError(f"Unsupported date pattern letter {letter!r} in {pattern!r}")
    out.append(pattern[last:])
    return "".join(out)


_UNITS = {
    "NANOS": dt.timedelta(microseconds=0.001), "MICROS": dt.timedelta(microseconds=1),
    "MILLIS": dt.timedelta(milliseconds=1), "SECONDS": dt.timedelta(seconds=1),
    "MINUTES": dt.timedelta(minutes=1), "HOURS": dt.timedelta(hours=1),
    "HALF_DAYS": dt.timedelta(hours=12), "DAYS": dt.timedelta(days=1),
    "WEEKS": dt.timedelta(weeks=1),
}  # fmt: skip


def _add_months(value: dt.datetime, months: int) -> dt.datetime:
    import calendar

    month0 = value.month - 1 + months
    year, month = value.year + month0 // 12, month0 % 12 + 1
    day = min(value.day, calendar.monthrange(year, month)[1])
    return value.replace(year=year, month=month, day=day)


def _f_date(
    value: Any, format: str = "", timeZone: str | None = None, existingFormat: str | None = None
) -> str:
    return format_datetime(to_datetime(value, existingFormat, timeZone), format)


def _f_date_add(
    value: Any, amount: int, unit: str, format: str = "", timeZone: str | None = None,
    existingFormat: str | None = None,
) -> str:  # fmt: skip
    moment = to_datetime(value, existingFormat, timeZone)
    unit = unit.upper()
    if unit == "MONTHS":
        moment = _add_months(moment, int(amount))
    elif unit == "YEARS":
        moment = _add_months(moment, 12 * int(amount))
    elif unit in _UNITS:
        moment = moment + _UNITS[unit] * amount
    else:
        raise TemplateError(
            f"Unknown unit {unit!r} for dateAdd; use one of {sorted(_UNITS) + ['MONTHS', 'YEARS']}"
        )
    return format_datetime(moment, format)


def _epoch(value: Any, scale: int, existing: str | None, zone: str | None) -> int:
    moment = to_datetime(value, existing, zone)
    delta = moment - dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
    micros = (delta.days * 86400 + delta.seconds) * 1_000_000 + delta.microseconds
    return micros * scale // 1_000_000 if scale < 1_000_000 else micros * (scale // 1_000_000)


# --- jq --------------------------------------------------------------------------------------------

# jq builtins that reach outside the value they are given. Templates are rendered inside the
# executor, whose decisions must replay identically, and inside workers that hold the database URL
# and secrets in their environment: neither may leak into an expression's result.
_ENVIRONMENT = (
    "it reads the process environment (database URL, secrets); pass values through inputs, "
    "variables or secrets instead"
)
_CLOCK = (
    "it reads the wall clock, so a replayed execution would compute another value; use the "
    "template's `now()` instead (the execution's own time where the executor renders)"
)
_INPUT = "jq sees only the value piped into the filter; there is no further input to read"
_STDERR = "it writes to the process's standard error; return the value instead"
_HOST = "it describes the host's files and paths, which expressions must not depend on"
_LOCAL_TIME = "it depends on the host's time zone; use `gmtime` and `strftime` (UTC) instead"
_MODULES = "it loads jq modules from the host's files; write the definitions inline with `def`"
JQ_REFUSED: dict[str, str] = {
    "env": _ENVIRONMENT, "$ENV": _ENVIRONMENT,
    "now": _CLOCK,
    "input": _INPUT, "inputs": _INPUT, "input_filename": _INPUT, "input_line_number": _INPUT,
    "debug": _STDERR, "stderr": _STDERR,
    "$__loc__": _HOST, "$__prog_args": _HOST, "get_search_list": _HOST,
    "get_prog_origin": _HOST, "get_jq_origin": _HOST,
    "localtime": _LOCAL_TIME, "strflocaltime": _LOCAL_TIME,
    "import": _MODULES, "include": _MODULES, "modulemeta": _MODULES,
}  # fmt: skip
"""Words of a jq program that are refused, with the reason given to the user."""

_JQ_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:::[A-Za-z_][A-Za-z0-9_]*)*")


def jq_words(program: str) -> list[tuple[str, str, int]]:
    """The tokens of a jq program that matter for what it may reach, as (kind, text, offset).

    Kinds: `name` (a builtin, a keyword or a defined function), `field` (`.name`), `var`
    (`$name`, text with the `$`), `string` (one per literal, its content dropped) and `punct`
    (one character of punctuation). Code inside string interpolation (`"\\(...)"`) is read as
    code; comments and the contents of strings are skipped. A program jq would reject may be
    read loosely: this only has to see every name that jq would call.
    """
    words: list[tuple[str, str, int]] = []
    # Open brackets; '"' marks an interpolation whose ')' resumes the enclosing string.
    stack: list[str] = []
    in_string = False
    pos, end = 0, len(program)
    while pos < end:
        ch = program[pos]
        if in_string:
            if ch == "\\":
                if program.startswith("\\(", pos):
                    stack.append('"')
                    words.append(("punct", "(", pos))
                    in_string = False
                pos += 2
            elif ch == '"':
                in_string = False
                pos += 1
            else:
                pos += 1
            continue
        if ch.isspace():
            pos += 1
        elif ch == "#":
            newline = program.find("\n", pos)
            pos = end if newline < 0 else newline + 1
        elif ch == '"':
            words.append(("string", '"', pos))
            in_string = True
            pos += 1
        elif ch == "$":
            # `$ name` with a space was accepted by older jq versions: read it the same way.
            start = pos + 1
            while start < end and program[start] in " \t\r\n":
                start += 1
            match = _JQ_NAME.match(program, start)
            if match is None:
                words.append(("punct", ch, pos))
                pos += 1
            else:
                words.append(("var", "$" + match.group(), pos))
                pos = match.end()
        elif ch == "." and (match := _JQ_NAME.match(program, pos + 1)) is not None:
            words.append(("field", match.group(), pos))
            pos = match.end()
        elif ch == "@" and (match := _JQ_NAME.match(program, pos + 1)) is not None:
            words.append(("format", match.group(), pos))
            pos = match.end()
        elif (match := _JQ_NAME.match(program, pos)) is not None:
            words.append(("name", match.group(), pos))
            pos = match.end()
        elif ch.isdigit():
            while pos < end and (program[pos].isalnum() or program[pos] == "."):
                pos += 1
        else:
            if ch in "([{":
                stack.append(ch)
            elif ch in ")]}" and stack:
                if stack.pop() == '"' and ch == ")":
                    in_string = True
            words.append(("punct", ch, pos))
            pos += 1
    return words


def _is_object_key(words: list[tuple[str, str, int]], i: int) -> bool:
    """Whether the name at `i` is a key of an object construction (`{env: 1}`, or `{env}` which
    means `{env: .env}`), not a call."""
    before = words[i - 1][1] if i > 0 and words[i - 1][0] == "punct" else ""
    after = words[i + 1][1] if i + 1 < len(words) and words[i + 1][0] == "punct" else ""
    if before not in ("{", ",") or after not in (":", ",", "}"):
        return False
    # The comma must separate the entries of an object, not items of an array or arguments.
    depth = 0
    for kind, text, _ in reversed(words[:i]):
        if kind != "punct":
            continue
        if text in ")]}":
            depth += 1
        elif text in "([{":
            if depth == 0:
                return text == "{"
            depth -= 1
    return False


def check_jq(program: str) -> None:
    """Raise `TemplateError` when a jq program uses a builtin that reaches outside its input
    (environment, clock, further inputs, standard error, files); see `JQ_REFUSED`."""
    words = jq_words(program)
    for i, (kind, text, _) in enumerate(words):
        if kind == "var" and text in JQ_REFUSED:
            word = text
        elif kind == "name" and text in JQ_REFUSED and not _is_object_key(words, i):
            word = text
        else:
            continue
        raise TemplateError(
            f"jq's `{word}` is not available in Tiercel expressions: {JQ_REFUSED[word]} "
            f"(in the jq program {_excerpt(program)!r})"
        )


@functools.lru_cache(maxsize=1024)
def _checked_jq(program: str) -> None:
    check_jq(program)


def _jq(value: Any, expression: Any) -> list[Any]:
    # libjq runs in a child process (engine.jq_sandbox): a runaway program must not abort or
    # freeze the executor or a worker rendering this template.
    if not isinstance(expression, str):
        raise TemplateError(f"jq needs its program as text, e.g. jq('.a'), not {expression!r}")
    _checked_jq(expression)
    data = json.loads(value) if isinstance(value, str) else json.loads(to_json(value))
    # One text per value, so that equal values share the sandbox's cached answer.
    return jq_sandbox.run(expression, json.dumps(data, separators=(",", ":")))


# --- filters, tests and functions -----------------------------------------------------------------


def _from_json(value: Any) -> Any:
    if not isinstance(value, str | bytes):
        return value
    try:
        return json.loads(value)
    except ValueError as exc:
        raise TemplateError(f"Cannot parse JSON {str(value)[:80]!r}: {exc}") from None


def _default(value: Any, fallback: Any = "") -> Any:
    if _missing(value) or value == "" or value == [] or value == {}:
        return fallback
    return value


def _length(value: Any) -> int:
    if _missing(value):
        return 0
    if isinstance(value, int | float):
        return len(str(value))
    return len(value)


def _replace(value: Any, old: Any, new: Any = None, regexp: bool = False) -> str:
    text = to_text(value)
    pairs = old.items() if isinstance(old, Mapping) else [(old, new)]
    for a, b in pairs:
        if regexp:
            text = _regex_sub(str(a), to_text(b), text)
            continue
        a, b = str(a), to_text(b)
        _check_text(len(text) + text.count(a) * max(len(b) - len(a), 0), "replace")
        text = text.replace(a, b)
        _spend(text)
    return text


def _regex_failure(pattern: str, exc: Exception) -> TemplateError:
    if isinstance(exc, TimeoutError):
        return TemplateError(
            f"the regular expression {_excerpt(pattern)!r} ran past the time limit of the render "
            f"(TIERCEL_RENDER_TIMEOUT, {DEFAULT_RENDER_TIMEOUT:g} s unless configured); simplify "
            "it (nested repetitions "
            "such as '(a+)+' can take exponential time)"
        )
    return TemplateError(f"invalid regular expression {_excerpt(pattern)!r}: {exc}")


def _regex_sub(pattern: str, replacement: str, text: str) -> str:
    """`re.sub`, within the render's time and `MAX_TEXT`: the `regex` engine stops a match that
    runs past the deadline (backtracking can take exponential time)."""
    built = len(text)
    literal = "\\" not in replacement

    def expand(match: Any) -> str:
        nonlocal built
        piece = replacement if literal else str(match.expand(replacement))
        built += len(piece) - (match.end() - match.start())
        if built > MAX_TEXT:
            _check_text(built, f"replace({_excerpt(pattern)!r}, regexp=true)")
        return piece

    try:
        return str(patterns.compiled(pattern).sub(expand, text, timeout=_remaining_time()))
    except patterns.PatternError as exc:
        raise TemplateError(str(exc)) from None
    except (TimeoutError, regex.error) as exc:
        raise _regex_failure(pattern, exc) from None


def _split(value: Any, delimiter: str, limit: int | None = None) -> list[str]:
    text = to_text(value)
    if limit is None or limit <= 0:
        if len(delimiter) <= 1:
            return text.split(delimiter)
        try:
            return list(patterns.compiled(delimiter).split(text, timeout=_remaining_time()))
        except patterns.PatternError as exc:
            raise TemplateError(str(exc)) from None
        except (TimeoutError, regex.error) as exc:
            raise _regex_failure(delimiter, exc) from None
    return text.split(delimiter, limit - 1)


def _slugify(value: Any) -> str:
    text = unicodedata.normalize("NFKD", to_text(value)).encode("ascii", "ignore").decode()
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def _number(value: Any, type: str | None = None) -> int | float:
    text = to_text(value).strip()
    kind = (type or "").upper()
    try:
        if kind in ("INT", "INTEGER", "LONG", "BIGINTEGER"):
            return int(float(text)) if "." in text else int(text)
        if kind in ("FLOAT", "DOUBLE", "BIGDECIMAL"):
            return float(text)
        return int(text) if re.fullmatch(r"[-+]?\d+", text) else float(text)
    except ValueError:
        raise TemplateError(f"Cannot read {text!r} as a number") from None


def _title(value: Any) -> str:
    return re.sub(r"(^|\s)(\S)", lambda m: m.group(1) + m.group(2).upper(), to_text(value))


def _abbreviate(value: Any, length: int) -> str:
    text = to_text(value)
    return text if len(text) <= length else text[: max(length - 3, 0)] + "..."


def _slice(value: Any, start: int = 0, end: int | None = None) -> Any:
    return value[start:end]


def _chunk(value: Iterable[Any], size: int) -> list[list[Any]]:
    items = list(value)
    return [items[i : i + size] for i in range(0, len(items), size)]


def _flatten(value: Iterable[Any]) -> list[Any]:
    out: list[Any] = []
    for item in value:
        out.extend(item if isinstance(item, list | tuple) else [item])
        if len(out) > MAX_SEQUENCE:
            _check_items(len(out), "flatten")
    return out


def _distinct(value: Iterable[Any]) -> list[Any]:
    # In linear time for hashable items, so that a long list cannot take hours
    out: list[Any] = []
    seen: set[Any] = set()
    unhashable: list[Any] = []
    for item in value:
        try:
            if item in seen:
                continue
            seen.add(item)
        except TypeError:
            _check_time()
            if item in unhashable:
                continue
            unhashable.append(item)
        out.append(item)
    return out


def _padded(value: Any, width: Any, prefix: Any, what: str) -> tuple[str, str]:
    """The text of `value` and the padding of `width` times `prefix`, within `MAX_TEXT`."""
    text = to_text(value)
    if isinstance(width, int) and isinstance(prefix, str):
        _check_text(len(text) + (text.count("\n") + 1) * width * len(prefix), what)
    return text, prefix * width


def _indent(value: Any, width: int, prefix: str = " ") -> str:
    text, pad = _padded(value, width, prefix, "indent")
    return "\n".join((pad + line) if i else line for i, line in enumerate(text.split("\n")))


def _nindent(value: Any, width: int, prefix: str = " ") -> str:
    text, pad = _padded(value, width, prefix, "nindent")
    return "\n" + "\n".join(pad + line for line in text.split("\n"))


def _center(value: Any, width: int = 80) -> str:
    text = _str(value, "center")
    if isinstance(width, int):
        _check_text(width, "center")
    return text.center(width)


def _format(value: Any, *args: Any, **kwargs: Any) -> str:
    # Jinja's `format` filter, bounded as `%` is
    if args and kwargs:
        raise TemplateError("format takes positional or named values, not both")
    return str(_modulo(_str(value, "format"), kwargs or args))


def _join_texts(value: Iterable[Any], separator: str = "") -> str:
    texts: list[str] = []
    size = 0
    for item in value:
        text = to_text(item)
        size += len(text) + len(separator)
        if size > MAX_TEXT + len(separator):
            _check_text(size - len(separator), "join")
        texts.append(text)
    return separator.join(texts)


def _batch(value: Iterable[Any], linecount: int, fill_with: Any = None) -> Iterator[list[Any]]:
    if fill_with is not None and isinstance(linecount, int):
        _check_items(linecount, "batch")
    return jinja_filters.do_batch(value, linecount, fill_with)


MAX_WORDWRAP_TEXT = 256 * 1024
"""The longest text `wordwrap` reads."""


@jinja2.pass_environment
def _wordwrap(
    environment: jinja2.Environment,
    value: str,
    width: int = 79,
    break_long_words: bool = True,
    wrapstring: str | None = None,
    break_on_hyphens: bool = True,
) -> str:
    text = str(value)
    if len(text) > MAX_WORDWRAP_TEXT:
        # Python's textwrap breaks a long word in quadratic time: 1 MB takes seconds
        raise TemplateError(
            f"wordwrap reads at most {MAX_WORDWRAP_TEXT} characters; this text has {len(text)}"
        )
    if isinstance(width, int):
        lines = len(text) // max(width, 1) + text.count("\n") + 1
        _check_items(lines, "wordwrap")
        wrap = environment.newline_sequence if wrapstring is None else wrapstring
        _check_text(len(text) + lines * len(wrap), "wordwrap")
    return jinja_filters.do_wordwrap(
        environment, text, width, break_long_words, wrapstring, break_on_hyphens
    )


@jinja2.pass_environment
def _sum(
    environment: jinja2.Environment, iterable: Iterable[Any], attribute: Any = None, start: Any = 0
) -> Any:
    if attribute is not None:
        iterable = map(jinja_filters.make_attrgetter(environment, attribute), iterable)
    items = list(iterable)
    if all(isinstance(i, int | float) for i in items) and isinstance(start, int | float):
        return sum(items, start)
    total = start
    for item in items:  # lists or texts: each step bounded as `+` is
        total = _add(total, item)
    return total


def _pprint(value: Any) -> str:
    _check_text(_text_size(value), "pprint")
    return pprint.pformat(value)


def _merge(value: Any, other: Any) -> Any:
    if isinstance(value, Mapping):
        return {**value, **other}
    _check_items(len(value) + len(other), "merge")
    return [*value, *other]


def _number_format(value: Any, pattern: str) -> str:
    decimals = len(pattern.split(".", 1)[1]) if "." in pattern else 0
    grouping = "," if "," in pattern else ""
    return f"{float(value):{grouping}.{decimals}f}"


def _to_yaml(value: Any) -> str:
    return yaml.safe_dump(json.loads(to_json(value)), sort_keys=False, allow_unicode=True)


def _from_yaml(value: Any) -> Any:
    # Read with the limits of flows (size, depth, aliases, values once aliases are expanded),
    # so that a "billion laughs" document is refused in milliseconds.
    if not isinstance(value, str):
        return value
    try:
        return safe_yaml.load(value)
    except ValueError as exc:
        raise TemplateError(f"fromYaml cannot read this YAML: {exc}") from None


def _is_json(value: Any) -> bool:
    if not isinstance(value, str):
        return False
    try:
        json.loads(value)
    except ValueError:
        return False
    return True


def _empty(value: Any) -> bool:
    if _missing(value):
        return True
    if isinstance(value, str):
        return value.strip() == ""
    if isinstance(value, Mapping | list | tuple | set):
        return len(value) == 0
    return False


def _contains(container: Any, item: Any) -> bool:
    if _missing(container):
        return False
    if isinstance(item, list | tuple) and not isinstance(container, str):
        for i in item:  # each look-up may scan the whole container: keep to the deadline
            _check_time()
            if i not in container:
                return False
        return True
    return bool(item in container)


def _range(start: int, end: int, step: int = 1) -> list[int]:
    # Pebble's range includes its end
    numbers = range(start, end + (1 if step > 0 else -1), step)
    if len(numbers) > MAX_SEQUENCE:
        raise TemplateError(
            f"range({start}, {end}) has {len(numbers)} numbers; at most {MAX_SEQUENCE} are allowed"
        )
    return list(numbers)


@jinja2.pass_context
def _render_function(context: Context, value: Any, recursive: bool = True) -> Any:
    if not isinstance(value, str):
        return value
    budget = _BUDGET.get()
    if budget is None:  # called outside a render: give it one
        return _bounded(_render_function)(context, value, recursive)
    # A variable that renders itself twice would double the work at each level: the calls and
    # the nesting of `render()` are counted within the render that started them.
    budget.render_calls += 1
    budget.render_depth += 1
    try:
        if budget.render_depth > MAX_RENDER_NESTING:
            raise TemplateError(
                f"render() is nested more than {MAX_RENDER_NESTING} deep: a variable probably "
                "renders itself; break the cycle"
            )
        if budget.render_calls > MAX_RENDER_CALLS:
            raise TemplateError(
                f"render() was called more than {MAX_RENDER_CALLS} times for one expression; "
                "simplify the variables it renders"
            )
        variables = context.get_all()
        if not recursive:
            return render(value, variables)
        return render_recursive(value, variables)
    finally:
        budget.render_depth -= 1


@jinja2.pass_context
def _current_each_output(context: Context, output: Any) -> Any:
    values = [p.get("taskrun", {}).get("value") for p in reversed(context.get("parents") or [])]
    taskrun = context.get("taskrun") or {}
    values.append(taskrun.get("value"))
    current = output
    for value in values:
        if value is None:
            continue
        if isinstance(current, Mapping) and value in current:
            current = current[value]
    return current


def _now(timeZone: str | None = None, **_: Any) -> dt.datetime:
    moment = dt.datetime.now(dt.UTC)
    return moment.astimezone(_zone(timeZone)) if timeZone else moment


def _unavailable(name: str, why: str = "", kind: str = "function") -> Callable[..., Any]:
    def call(*args: Any, **kwargs: Any) -> Any:
        raise TemplateError(f"The {kind} {name}() is not available here{why}")

    return call


_RANDOM = (
    ": its result is random, and the executor must decide the same way each time it replays "
    "an execution"
)


def _to_duration(value: Any) -> float:
    return parse_duration(value).total_seconds()


FILTERS: dict[str, Callable[..., Any]] = {
    "json": to_json, "toJson": to_json, "tojson": to_json, "toIon": to_json,
    "fromJson": _from_json, "jq": _jq, "yaml": _to_yaml, "toYaml": _to_yaml, "fromYaml": _from_yaml,
    "date": _f_date, "dateAdd": _f_date_add,
    "timestamp": lambda v, existingFormat=None, timeZone=None: _epoch(v, 1, existingFormat, timeZone),
    "timestampMilli": lambda v, existingFormat=None, timeZone=None: _epoch(v, 1000, existingFormat, timeZone),
    "timestampMicro": lambda v, existingFormat=None, timeZone=None: _epoch(v, 1_000_000, existingFormat, timeZone),
    "timestampNano": lambda v, existingFormat=None, timeZone=None: _epoch(v, 1_000_000_000, existingFormat, timeZone),
    "default": _default, "length": _length,
    "first": lambda v: (v[0] if v else None), "last": lambda v: (v[-1] if v else None),
    "keys": lambda v: list(v.keys()), "values": lambda v: list(v.values()),
    "upper": lambda v: to_text(v).upper(), "lower": lambda v: to_text(v).lower(),
    "title": _title, "capitalize": lambda v: to_text(v)[:1].upper() + to_text(v)[1:],
    "trim": lambda v: to_text(v).strip(), "replace": _replace, "split": _split,
    "join": _join_texts, "slugify": _slugify, "center": _center, "format": _format, "batch": _batch,
    "wordwrap": _wordwrap, "sum": _sum, "pprint": _pprint,
    "abs": abs, "number": _number, "numberFormat": _number_format, "abbreviate": _abbreviate,
    "sort": lambda v: sorted(v), "rsort": lambda v: sorted(v, reverse=True),
    "reverse": lambda v: v[::-1] if isinstance(v, str) else list(reversed(list(v))),
    "slice": _slice, "chunk": _chunk, "flatten": _flatten, "distinct": _distinct, "merge": _merge,
    "indent": _indent, "nindent": _nindent,
    "base64encode": lambda v: base64.b64encode(to_text(v).encode()).decode(),
    "base64decode": lambda v: base64.b64decode(to_text(v)).decode(),
    "urlencode": lambda v: urllib.parse.quote_plus(to_text(v)),
    "urldecode": lambda v: urllib.parse.unquote_plus(to_text(v)),
    "md5": lambda v: hashlib.md5(to_text(v).encode()).hexdigest(),
    "sha1": lambda v: hashlib.sha1(to_text(v).encode()).hexdigest(),
    "sha256": lambda v: hashlib.sha256(to_text(v).encode()).hexdigest(),
    "sha512": lambda v: hashlib.sha512(to_text(v).encode()).hexdigest(),
    "string": to_text, "escapeChar": lambda v, type="single": to_text(v).replace("'", "\\'"),
    "startsWith": lambda v, p: to_text(v).startswith(p), "endsWith": lambda v, p: to_text(v).endswith(p),
    "substringBefore": lambda v, s: to_text(v).split(s, 1)[0],
    "substringAfter": lambda v, s: to_text(v).split(s, 1)[1] if s in to_text(v) else "",
    "substringBeforeLast": lambda v, s: to_text(v).rsplit(s, 1)[0],
    "substringAfterLast": lambda v, s: to_text(v).rsplit(s, 1)[1] if s in to_text(v) else "",
    "toDuration": _to_duration, "random": _unavailable("random", _RANDOM, "filter"),
}  # fmt: skip

TESTS: dict[str, Callable[..., bool]] = {
    "null": _missing, "empty": _empty, "json": _is_json, "__contains": _contains,
    "map": lambda v: isinstance(v, Mapping), "iterable": lambda v: isinstance(v, list | tuple | Mapping | str),
    "even": lambda v: int(v) % 2 == 0, "odd": lambda v: int(v) % 2 == 1,
}  # fmt: skip

GLOBALS: dict[str, Any] = {
    "null": None, "now": _now, "range": _range, "render": _render_function,
    "fromJson": _from_json, "json": _from_json, "yaml": _from_yaml, "fromYaml": _from_yaml,
    "currentEachOutput": _current_each_output, "max": max, "min": min,
    "read": _unavailable("read"), "kv": _unavailable("kv"), "secret": _unavailable("secret"),
    "lipsum": _unavailable("lipsum", _RANDOM),
}  # fmt: skip


def _make_environment() -> _Environment:
    # optimized=False: nothing is gained by folding constants ahead of time, and a template
    # then runs as written, each part of it at render time.
    env = _Environment(
        undefined=_Undefined,
        finalize=_finalize,
        autoescape=False,
        keep_trailing_newline=True,
        optimized=False,
    )
    env.filters.update(FILTERS)
    env.tests.update(TESTS)
    env.globals.update(GLOBALS)
    return env


_ENV = _make_environment()


@functools.lru_cache(maxsize=4096)
def _compiled_template(source: str) -> jinja2.Template:
    try:
        return _ENV.from_string(translate(source))
    except jinja2.TemplateSyntaxError as exc:
        raise TemplateError(
            f"Cannot read '{_excerpt(source)}': {exc.message} (line {exc.lineno}); "
            "check the expression"
        ) from None


@functools.lru_cache(maxsize=4096)
def _compiled_expression(expression: str) -> Callable[..., Any]:
    try:
        translated = _expression(_tokens(expression, expression))
        return _ENV.compile_expression(translated, undefined_to_none=False)
    except jinja2.TemplateSyntaxError as exc:
        raise TemplateError(
            f"Cannot read '{_excerpt('{{ ' + expression.strip() + ' }}')}': {exc.message}"
        ) from None


_SINGLE = re.compile(r"^\s*\{\{-?(.*?)-?\}\}\s*$", re.DOTALL)


def _excerpt(text: str) -> str:
    """`text` as an error message quotes it: shortened when long."""
    if len(text) <= MAX_EXCERPT:
        return text
    return f"{text[:MAX_EXCERPT]}... ({len(text)} characters)"


def _describe(exc: Exception) -> str:
    """Why a render failed, in words a flow's author can act on."""
    if isinstance(exc, RecursionError):
        return "the expression nests too deeply (or a value renders itself); simplify it"
    if isinstance(exc, MemoryError):
        return "the expression builds a value too large to hold in memory"
    try:
        text = str(exc)
    except Exception:
        text = ""
    if isinstance(exc, jinja2.exceptions.SecurityError):
        return f"{text} (expressions may read values, not reach into Python objects)"
    if isinstance(exc, jinja2.TemplateError):
        return text or type(exc).__name__
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _fail(source: str, exc: Exception) -> TemplateError:
    """Any failure of rendering `source` as a `TemplateError` that names the expression."""
    quoted = _excerpt(source)
    if isinstance(exc, TemplateError):
        if quoted in exc.message:
            return exc
        return TemplateError(f"Cannot render '{quoted}': {exc.message}")
    if isinstance(exc, jinja2.UndefinedError):
        reason = _describe(exc)
        name = re.match(r"'([^']+)' is undefined", reason)
        if name:
            reason = f"missing variable '{name.group(1)}'"
        return TemplateError(f"Cannot render '{quoted}': {reason}")
    return TemplateError(f"Cannot render '{quoted}': {_describe(exc)}")


def render(template: str, context: Mapping[str, Any]) -> str:
    """Render a template to text, within the limits of one render (see the module's docstring).

    Every failure (an undefined variable, a syntax error, an operation the sandbox refuses, a
    division by zero, a limit reached, ...) raises `TemplateError` naming the template and the
    cause. Only `BaseException`s that are not errors (cancellation, interrupts) pass through
    unchanged.
    """
    if isinstance(template, str) and not is_template(template):
        return template
    return _render(template, context)


@_bounded
def _render(template: str, context: Mapping[str, Any]) -> str:
    try:
        if not isinstance(template, str):
            return to_text(template)
        compiled = _compiled_template(template)
        # Jinja's `Template.render`, with the output measured as it is produced
        parts: list[str] = []
        size = 0
        for chunk in compiled.root_render_func(compiled.new_context(dict(context))):
            size += len(chunk)
            if size > MAX_TEXT:
                raise TemplateError(
                    f"the output is longer than {MAX_TEXT} characters, the limit of one render"
                )
            parts.append(chunk)
        return "".join(parts)
    except Exception as exc:
        raise _fail(str(template), exc) from None


@_bounded
def evaluate(expression: str, context: Mapping[str, Any]) -> Any:
    """The native value of one expression (without the braces); fails like `render`, and when
    the value would be longer than `MAX_TEXT` once written out."""
    try:
        value = _compiled_expression(expression)(**context)
        if isinstance(value, jinja2.Undefined):
            str(value)  # raises: an undefined value is an error
        if isinstance(value, Mapping | list | tuple):
            # whoever takes the value will write it out (as JSON, as the items of a loop)
            _check_text(_text_size(value), "The value")
    except Exception as exc:
        raise _fail("{{ " + str(expression).strip() + " }}", exc) from None
    return value


@_bounded
def render_typed(template: str, context: Mapping[str, Any]) -> Any:
    """Like `render`, but a template that is exactly one `{{ expr }}` keeps the value's type."""
    if not isinstance(template, str):
        return render_value(template, context)
    match = _SINGLE.match(template)
    if match and "{{" not in match.group(1) and "}}" not in match.group(1):
        return evaluate(match.group(1), context)
    return render(template, context)


@_bounded
def render_value(value: Any, context: Mapping[str, Any]) -> Any:
    """Render every string inside lists and maps (keys too), leaving other values as they are;
    fails like `render`."""
    try:
        return _render_value(value, context)
    except TemplateError:
        raise
    except Exception as exc:
        try:
            shown = to_json(value)
        except Exception:
            shown = f"a {type(value).__name__}"
        raise _fail(shown, exc) from None


def _render_value(value: Any, context: Mapping[str, Any]) -> Any:
    if isinstance(value, str):
        return render(value, context)
    if isinstance(value, Mapping):
        return {render(str(k), context): _render_value(v, context) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_render_value(v, context) for v in value]
    return value


@_bounded
def render_recursive(template: str, context: Mapping[str, Any]) -> str:
    """Render until the text holds no more templates (Kestra's `render()`), at most 10 times;
    fails like `render`."""
    text = template
    for _ in range(MAX_RECURSION):
        rendered = render(text, context)
        if rendered == text or not is_template(rendered):
            return rendered
        text = rendered
    raise TemplateError(
        f"Cannot render '{_excerpt(str(template))}': still templated after {MAX_RECURSION} "
        "passes; a variable probably renders itself"
    )
