"""YAML read within bounds: no document, however hostile, costs more than its limits allow.

A YAML text is read in two steps. Composing builds the node graph, where an alias (`*a`) is a
second reference to the node its anchor (`&a`) names; that is where the limits are checked, as
the nodes arrive, so a document beyond them is refused after reading only as much of it as
proves it:

- its size in characters (`max_chars`);
- how deeply collections nest (`max_depth`), aliases counted at the depth they expand to, so
  nothing later (building the values, encoding them as JSON) recurses deeper;
- how many alias references it holds (`max_aliases`);
- how many values it expands to once every alias is written out (`max_nodes`). An alias adds the
  whole size of what it names, computed once per anchor, so a "billion laughs" document (aliases
  of lists of aliases) is refused at the first alias that crosses the limit, in milliseconds.

Building then turns nodes into plain values (dict, list, str, int, float, bool, None, date and
datetime) keeping each node's line and column by field path, and reports as problems what JSON,
PostgreSQL or the rest of Tiercel cannot hold: a list or mapping used as a mapping key (other
keys are read as text, as Kestra reads them), an integer outside 64 bits, a NUL character or a
lone surrogate in a string, `!!binary` data, a scalar that does not read as its explicit tag.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import re
from typing import Any

import yaml
from yaml.composer import Composer
from yaml.constructor import SafeConstructor
from yaml.events import AliasEvent
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode
from yaml.resolver import Resolver

from engine.errors import Problem


@dataclasses.dataclass(frozen=True)
class YamlLimits:
    """What one YAML document may hold."""

    max_chars: int = 10 * 1024 * 1024
    """Characters of the text."""
    max_depth: int = 100
    """Levels of nested lists and mappings (Kestra's own test flows use at most 14)."""
    max_nodes: int = 200_000
    """Values (scalars, lists, mappings) once every alias is expanded."""
    max_aliases: int = 1_000
    """Alias references (`*name`)."""


DEFAULT_LIMITS = YamlLimits()

_MIN_INT = -(2**63)
_MAX_INT = 2**64 - 1
_MAX_NUMBER_CHARS = 100
"""An integer of 64 bits is written in far fewer characters; longer ones are refused before
they are computed (YAML 1.1's base-60 integers cost quadratic time to compute)."""
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")
_NOT_YAML = re.compile("[^\x09\x0a\x0d\x20-\x7e\x85\xa0-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
"""Characters YAML text may not hold (both readers refuse them; found first, they are named
with their line whichever reader runs)."""
_MERGE = "tag:yaml.org,2002:merge"
_STR = "tag:yaml.org,2002:str"
_INT = "tag:yaml.org,2002:int"
_FLOAT = "tag:yaml.org,2002:float"
_BINARY = "tag:yaml.org,2002:binary"


class YamlLimitError(yaml.MarkedYAMLError):
    """A document beyond one of its limits; `problem` says which and what to do."""


class _BoundedComposer(Composer):
    """PyYAML's composer, measuring each node as it is composed: its depth, and the size and
    height it has once its aliases are expanded."""

    limits: YamlLimits

    def _start_bounds(self, limits: YamlLimits) -> None:
        self.limits = limits
        self.depth = 0
        self.nodes = 0
        self.aliases = 0
        # [expanded size, expanded height] of each node being composed, innermost last.
        self.frames: list[list[int]] = []
        # Size and height of each finished anchored node, by anchor name.
        self.measured: dict[str, tuple[int, int]] = {}
        self.anchor_marks: dict[str, Any] = {}

    def compose_node(self, parent: Node | None, index: Any) -> Node | None:
        event: Any = self.peek_event()  # type: ignore[attr-defined]
        limits = self.limits
        if isinstance(event, AliasEvent):
            node = super().compose_node(parent, index)  # raises on an unknown anchor
            anchor: str = str(event.anchor)
            mark: Any = event.start_mark
            self.aliases += 1
            if self.aliases > limits.max_aliases:
                raise YamlLimitError(
                    problem=f"more than {limits.max_aliases} aliases (*name): write the values "
                    "out, or repeat fewer of them",
                    problem_mark=mark,
                )
            if anchor not in self.measured:
                raise YamlLimitError(
                    problem=f"the alias *{anchor} refers to a node that contains it (&{anchor} "
                    f"at line {self.anchor_marks[anchor].line + 1}): a recursive structure "
                    "cannot be read; write the value out",
                    problem_mark=mark,
                )
            size, height = self.measured[anchor]
            if self.depth + height > limits.max_depth:
                raise YamlLimitError(
                    problem=f"the alias *{anchor} nests values more than {limits.max_depth} "
                    "levels deep where it is used: write a flatter structure",
                    problem_mark=mark,
                )
            self._count(size, mark, anchor)
            self._add_to_parent(size, height)
            return node
        self.depth += 1
        if self.depth > limits.max_depth:
            raise YamlLimitError(
                problem=f"values are nested more than {limits.max_depth} levels deep: write a "
                "flatter structure",
                problem_mark=event.start_mark,
            )
        self._count(1, event.start_mark, None)
        own_anchor: str | None = getattr(event, "anchor", None)
        if own_anchor is not None and own_anchor not in self.anchors:
            self.anchor_marks[own_anchor] = event.start_mark
        self.frames.append([1, 1])
        node = super().compose_node(parent, index)
        size, height = self.frames.pop()
        self.depth -= 1
        if own_anchor is not None:
            self.measured[own_anchor] = (size, height)
        self._add_to_parent(size, height)
        return node

    def compose_document(self) -> Node | None:
        node = super().compose_document()
        self.measured = {}
        self.anchor_marks = {}
        return node

    def _add_to_parent(self, size: int, height: int) -> None:
        if self.frames:
            frame = self.frames[-1]
            frame[0] += size
            frame[1] = max(frame[1], height + 1)

    def _count(self, added: int, mark: Any, anchor: str | None) -> None:
        self.nodes += added
        if self.nodes <= self.limits.max_nodes:
            return
        limit = self.limits.max_nodes
        if anchor is None:
            problem = f"the document holds more than {limit} values: split it into smaller ones"
        else:
            problem = (
                f"the aliases expand the document to more than {limit} values (here *{anchor} "
                f"repeats the {added} values of &{anchor}, line "
                f"{self.anchor_marks[anchor].line + 1}); aliases of aliases multiply: write "
                "the values out, or repeat fewer of them"
            )
        raise YamlLimitError(problem=problem, problem_mark=mark)


class _PyLoader(_BoundedComposer, yaml.SafeLoader):
    def __init__(self, stream: str, limits: YamlLimits) -> None:
        yaml.SafeLoader.__init__(self, stream)
        self._start_bounds(limits)


_Loader: Any = _PyLoader
if yaml.__with_libyaml__:  # pragma: no branch - the C reader is several times faster
    from yaml._yaml import CParser

    class _CLoader(_BoundedComposer, CParser, SafeConstructor, Resolver):
        """libyaml's reader and parser (events) under the bounded composer."""

        def __init__(self, stream: str, limits: YamlLimits) -> None:
            CParser.__init__(self, stream)
            SafeConstructor.__init__(self)
            Resolver.__init__(self)
            Composer.__init__(self)
            self._start_bounds(limits)

    _Loader = _CLoader


def compose(source: str, limits: YamlLimits = DEFAULT_LIMITS) -> Node | None:
    """The node graph of a one-document YAML text (None when it is empty); a `yaml.YAMLError`
    says why it cannot be read, a `YamlLimitError` which limit it crosses and where."""
    if len(source) > limits.max_chars:
        raise YamlLimitError(
            problem=f"the text holds {len(source)} characters, over the limit of "
            f"{limits.max_chars}: split it into smaller documents"
        )
    found = _NOT_YAML.search(source)
    if found:
        raise yaml.MarkedYAMLError(
            problem=f"the character U+{ord(found.group()):04X} cannot appear in YAML text "
            "(control characters and lone surrogates are not allowed): remove it",
            problem_mark=_mark_at(source, found.start()),
        )
    loader = _Loader(source, limits)
    try:
        node: Node | None = loader.get_single_node()
        return node
    finally:
        loader.dispose()


def _mark_at(source: str, index: int) -> Any:
    line = source.count("\n", 0, index)
    column = index - (source.rfind("\n", 0, index) + 1)
    return yaml.Mark("<text>", index, line, column, None, None)  # type: ignore[arg-type]


def load_with_marks(
    source: str, limits: YamlLimits = DEFAULT_LIMITS
) -> tuple[Any, dict[str, tuple[int, int]], list[Problem]]:
    """Read one YAML document as plain values, with the (line, column) of each value by field
    path (`tasks[0].id`); every problem found is returned, none raised. The value is None when
    the text cannot be read at all (then the problems say why)."""
    try:
        node = compose(source, limits)
    except YamlLimitError as exc:
        return None, {}, [_problem("The YAML is beyond a limit: ", exc)]
    except yaml.MarkedYAMLError as exc:
        if "maximum nesting depth" in str(exc.problem):  # libyaml's own bound, above ours
            exc.problem = f"values are nested more than {limits.max_depth} levels deep: write a flatter structure"
            return None, {}, [_problem("The YAML is beyond a limit: ", exc)]
        return None, {}, [_problem("Invalid YAML: ", exc, "; fix the syntax at this position")]
    except yaml.YAMLError as exc:  # a reader error: no mark, only an offset
        return None, {}, [Problem(f"Invalid YAML: {exc}; fix the text")]
    marks: dict[str, tuple[int, int]] = {}
    problems: list[Problem] = []
    if node is None:
        return None, marks, problems
    return _Builder(marks, problems).build(node, ""), marks, problems


def load(source: str, limits: YamlLimits = DEFAULT_LIMITS) -> Any:
    """Read one YAML document as plain values; a `ValueError` says what is wrong and where."""
    value, _marks, problems = load_with_marks(source, limits)
    if problems:
        raise ValueError("; ".join(str(p) for p in problems))
    return value


def _problem(prefix: str, exc: yaml.MarkedYAMLError, suffix: str = "") -> Problem:
    mark = exc.problem_mark or exc.context_mark
    reason = ", ".join(str(part) for part in (exc.context, exc.problem) if part) or "unreadable"
    return Problem(
        f"{prefix}{reason}{suffix}",
        "",
        mark.line + 1 if mark else None,
        mark.column + 1 if mark else None,
    )


class _Builder:
    """Nodes to plain values, recording marks and problems (depth is bounded by the composer,
    so the recursion is too)."""

    def __init__(self, marks: dict[str, tuple[int, int]], problems: list[Problem]) -> None:
        self.marks = marks
        self.problems = problems
        self.scalars = SafeConstructor()

    def add(self, node: Node, path: str, message: str) -> None:
        mark = node.start_mark
        self.problems.append(Problem(message, path, mark.line + 1, mark.column + 1))

    def build(self, node: Node, path: str) -> Any:
        self.marks[path] = (node.start_mark.line + 1, node.start_mark.column + 1)
        if isinstance(node, MappingNode):
            return self.mapping(node, path)
        if isinstance(node, SequenceNode):
            return [self.build(item, f"{path}[{i}]") for i, item in enumerate(node.value)]
        return self.scalar(node, path)

    def mapping(self, node: MappingNode, path: str) -> dict[str, Any]:
        out: dict[str, Any] = {}
        merged, own = self.pairs(node, path)
        seen: set[str] = set()
        for key_node, value_node in own:
            key = self.key(key_node, path)
            if key is None:
                continue
            child = f"{path}.{key}" if path else key
            if key in seen:
                self.add(
                    key_node, child, f"Duplicate key '{key}': each key may appear once in a mapping"
                )
            seen.add(key)
            out[key] = self.build(value_node, child)
        for key_node, value_node in merged:  # merged keys (`<<: *a`) give way to the node's own
            key = self.key(key_node, path)
            if key is not None and key not in out:
                out[key] = self.build(value_node, f"{path}.{key}" if path else key)
        return out

    def pairs(
        self, node: MappingNode, path: str
    ) -> tuple[list[tuple[Node, Node]], list[tuple[Node, Node]]]:
        """The pairs merged into `node` by `<<` keys (the first source wins), and its own."""
        merged: list[tuple[Node, Node]] = []
        own: list[tuple[Node, Node]] = []
        for key_node, value_node in node.value:
            if key_node.tag != _MERGE:
                own.append((key_node, value_node))
                continue
            sources = value_node.value if isinstance(value_node, SequenceNode) else [value_node]
            for source in sources:
                if not isinstance(source, MappingNode):
                    self.add(source, path, "A merge (`<<:`) takes a mapping or a list of mappings")
                    continue
                inner_merged, inner_own = self.pairs(source, path)
                merged.extend(inner_own + inner_merged)
        unique: dict[Any, tuple[Node, Node]] = {}
        for pair in merged:
            name = pair[0].value if isinstance(pair[0], ScalarNode) else id(pair[0])
            unique.setdefault(name, pair)
        return list(unique.values()), own

    def key(self, node: Node, path: str) -> str | None:
        if not isinstance(node, ScalarNode):
            kind = "a mapping" if isinstance(node, MappingNode) else "a list"
            self.add(node, path, f"A mapping key must be plain text, not {kind}")
            return None
        # As Kestra reads YAML: a key is the text written (`1`, `true`, `on` stay text).
        text = str(node.value)
        if _UNSTORABLE.search(text):
            self.add(node, path, "A key holds a NUL character or a lone surrogate: remove it")
            return None
        return text

    def scalar(self, node: Node, path: str) -> Any:
        tag = node.tag
        text = node.value
        if tag == _BINARY:
            self.add(node, path, "Binary values (!!binary) are not supported: write text instead")
            return None
        if tag in (_INT, _FLOAT) and len(text) > _MAX_NUMBER_CHARS:
            self.add(
                node,
                path,
                f"A number of {len(text)} characters is beyond 64 bits: write it in quotes "
                "to keep it as text",
            )
            return None
        try:
            value = self.scalars.construct_object(node, deep=True)
        except yaml.MarkedYAMLError as exc:
            self.add(node, path, f"Cannot read this value: {exc.problem or exc}")
            return None
        except (ValueError, TypeError, KeyError, IndexError, AttributeError, OverflowError):
            # An explicit tag the text does not fit (`!!int abc`, `!!bool maybe`).
            shown = text if len(text) <= 40 else text[:40] + "..."
            self.add(node, path, f"Cannot read {shown!r} as {tag.rsplit(':', 1)[-1]}")
            return None
        if isinstance(value, int) and not isinstance(value, bool):
            if not _MIN_INT <= value <= _MAX_INT:
                self.add(
                    node,
                    path,
                    f"The integer {text} is outside 64 bits (-2^63 to 2^64-1): write it in "
                    "quotes to keep it as text",
                )
                return None
        elif isinstance(value, str) and _UNSTORABLE.search(value):
            self.add(
                node,
                path,
                "The text holds a NUL character (\\0) or a lone surrogate, which cannot be "
                "stored: remove it",
            )
            return None
        elif not isinstance(value, str | float | bool | dt.date | type(None)):
            # Only SafeConstructor's scalar types reach here; anything else is refused.
            self.add(node, path, f"Unsupported value of type {type(value).__name__}")
            return None
        return value
