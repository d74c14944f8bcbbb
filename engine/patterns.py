"""Regular expressions written in flows (input validators, `replace` and `split` in templates),
run within bounds.

They run on the `regex` engine, which can stop a match at a deadline (backtracking can take
exponential time: `(a+)+$` against a long run of `a` and one `b`). That engine expands counted
repetitions when it compiles, so `((a{1000}){1000}){1000}` would need gigabytes before matching
anything: a pattern whose nested counts multiply past `MAX_EXPANSION` is refused first.
"""

from __future__ import annotations

import re
from typing import Any

import regex

MAX_EXPANSION = 100_000
"""The most copies of a pattern's parts its counted repetitions may ask for (compiling such a
pattern takes about 0.2 s)."""

_COUNTED = re.compile(r"(?<!\\)\{\s*(\d+)\s*(?:,\s*(\d*)\s*)?\}")


class PatternError(ValueError):
    """A regular expression that is invalid, too large to compile, or too slow to match."""


def _weight(items: Any) -> int:
    """How many copies of its parts a parsed pattern expands to (sums along a sequence,
    products through nested repetitions)."""
    from re import _constants as c  # type: ignore[attr-defined]

    total = 0
    for op, av in items:
        if op in (c.MAX_REPEAT, c.MIN_REPEAT, getattr(c, "POSSESSIVE_REPEAT", None)):
            low, high, sub = av
            count = low if high == c.MAXREPEAT else high
            total += max(count, 1) * max(_weight(sub), 1)
        elif op is c.SUBPATTERN:
            total += _weight(av[-1])
        elif op is c.BRANCH:
            total += sum(_weight(branch) for branch in av[1])
        elif op in (c.ASSERT, c.ASSERT_NOT):
            total += _weight(av[1])
        elif op is getattr(c, "ATOMIC_GROUP", None):
            total += _weight(av)
        elif op is c.GROUPREF_EXISTS:
            total += _weight(av[1]) + (_weight(av[2]) if av[2] is not None else 0)
        else:
            total += 1
        if total > MAX_EXPANSION:
            return total
    return total


def _textual_weight(pattern: str) -> int:
    """For syntax only `regex` knows (`\\p{L}`...): every count in the pattern multiplied, an
    upper bound of what nesting could make of them."""
    product = 1
    for low, high in _COUNTED.findall(pattern):
        product *= max(int(high or low), 1)
        if product > MAX_EXPANSION:
            break
    return product


def check(pattern: str) -> None:
    """Refuse a pattern whose counted repetitions would expand past `MAX_EXPANSION`."""
    from re import _parser  # type: ignore[attr-defined]

    try:
        weight = _weight(_parser.parse(pattern))
    except (re.error, RecursionError, OverflowError):
        weight = _textual_weight(pattern)
    if weight > MAX_EXPANSION:
        raise PatternError(
            f"the regular expression {_shown(pattern)!r} repeats its parts more than "
            f"{MAX_EXPANSION:,} times (counted repetitions multiply when nested): use fewer or "
            "smaller counts, or an open repetition such as + or *"
        )


def compiled(pattern: str) -> Any:
    """`pattern` compiled by the `regex` engine, once checked."""
    check(pattern)
    try:
        return _compile(pattern)
    except (regex.error, RecursionError, OverflowError) as exc:
        raise PatternError(f"Invalid regular expression {_shown(pattern)!r}: {exc}") from None


_cache: dict[str, Any] = {}


def _compile(pattern: str) -> Any:
    found = _cache.get(pattern)
    if found is None:
        if len(_cache) > 512:
            _cache.clear()
        found = _cache[pattern] = regex.compile(pattern)
    return found


def fullmatch(pattern: str, text: str, *, timeout: float) -> bool:
    """Whether all of `text` matches `pattern`, decided within `timeout` seconds."""
    try:
        return compiled(pattern).fullmatch(text, timeout=timeout) is not None
    except TimeoutError:
        raise PatternError(
            f"matching the regular expression {_shown(pattern)!r} took over {timeout:g} s: "
            "simplify it (nested repetitions such as '(a+)+' can take exponential time)"
        ) from None


def _shown(pattern: str) -> str:
    return pattern if len(pattern) <= 80 else pattern[:80] + "..."
