"""What the fuzzers send: Kestra's own flows mutated (bytes flipped, hostile YAML inserted, values
replaced, lines cut or repeated), flows built as data with odd values anywhere, and JSON of
every shape."""

from __future__ import annotations

import re
import uuid
from functools import cache
from pathlib import Path
from typing import Any

import msgspec
import yaml
from hypothesis import strategies as st

from engine.plugin import registered, task_type


def bomb(levels: int) -> bytes:
    names = "abcdefghijklmnop"
    lines = [f"b{names[0]}: &{names[0]} [" + ",".join(["lol"] * 10) + "]"]
    for i in range(1, levels):
        refs = ",".join([f"*{names[i - 1]}"] * 10)
        lines.append(f"b{names[i]}: &{names[i]} [{refs}]")
    return ("\n".join(lines) + "\n").encode()


HOSTILE_SNIPPETS: list[bytes] = [
    bomb(6),
    bomb(9),
    b"deep: " + b"[" * 900 + b"]" * 900 + b"\n",
    b"deep: " + b"{a: " * 300 + b"1" + b"}" * 300 + b"\n",
    b"".join(b"  " * i + b"k:\n" for i in range(400)) + b"  " * 400 + b"x\n",
    b"".join(b"  " * i + b"-\n" for i in range(400)) + b"  " * 400 + b"x\n",
    b"big: 123456789012345678901234567890\n",
    b"big: -99999999999999999999\n",
    b"big: " + b"9" * 5000 + b"\n",
    b"sexagesimal: 1" + b":59" * 300 + b"\n",
    b"float: 1e999999\n",
    b"nan: .nan\ninf: -.inf\n",
    b"hex: 0xFFFFFFFFFFFFFFFFFFFFFFFF\n",
    b"bin: !!binary aGVsbG8=\n",
    b"obj: !!python/object/apply:os.system [id]\n",
    b"tagged: !!int abc\n",
    b"tagged: !!timestamp nope\n",
    b"tagged: !!bool maybe\n",
    b"tagged: !!float x\n",
    b"custom: !mytag x\n",
    b"? [a, b]\n: complex key\n",
    b"? {a: 1}\n: mapping key\n",
    b"1: int key\ntrue: bool key\nnull: null key\n~: tilde\n1.5: float key\n",
    b'nul: "a\\0b"\n',
    b'surrogate: "\\ud800"\n',
    b"raw: \x00\n",
    b"ctrl: \x01\x02\x7f\n",
    b"latin1: caf\xe9\n",
    b"bad: \xff\xfe\xfd\n",
    b"overlong: \xc0\xaf\n",
    b"encoded_surrogate: \xed\xa0\x80\n",
    b"recursive: &r [1, *r]\n",
    b"undefined: *nowhere\n",
    b"merge:\n  <<: 5\n",
    b"merge:\n  <<: [1, 2]\n",
    b"merge:\n  <<: *nowhere\n",
    b"dup: 1\ndup: 2\n",
    b"\t- tab indented\n",
    b"---\nsecond: document\n",
    b"...\n",
    b"%YAML 1.1\n---\n",
    b"%TAG ! tag:evil.com,2000:\n---\n",
    b"anchor: &a\n  x: 1\nanchor2: &a\n  y: 2\n",
    b"long: " + b"x" * 200_000 + b"\n",
    b"key" * 400 + b": long implicit key\n",
    b"type: {a: 1}\n",
    b"type: [a, b]\n",
    b"type: 5\n",
    b"cases: 5\n",
    b"cases: [a, b]\n",
    b"cases:\n  1:\n    - id: c1\n      type: io.kestra.plugin.core.log.Log\n      message: m\n",
    b"cases: {null: [], true: []}\n",
    b"id: " + b"x" * 300 + b"\n",
    b"namespace: " + b"n" * 300 + b"\n",
    b"namespace: UPPER.case\n",
    b"id: with space\n",
    b"id: has.dot\n",
    b"tasks: 5\n",
    b"tasks: {a: 1}\n",
    b"tasks: [5, null, [], {}]\n",
    b"tasks:\n  - id: x\n    type: {a: 1}\n",
    b"tasks:\n  - id: [x]\n    type: io.kestra.plugin.core.log.Log\n",
    b"inputs: 5\n",
    b"inputs:\n  - id: i\n    type: STRING\n    validator: '(' \n",
    b"inputs:\n  - id: i\n    type: STRING\n    validator: 'a{4294967296}'\n",
    b"inputs:\n  - id: i\n    type: INT\n    min: 99999999999999999999999\n",
    b"inputs:\n  - id: i\n    type: DATETIME\n    after: 9999-12-31T23:59:59-12:00\n",
    b"inputs:\n  - id: i\n    type: SELECT\n    values: {a: 1}\n",
    b"inputs:\n  - id: i\n    type: ARRAY\n    itemType: [INT]\n",
    b"inputs:\n  - id: i\n    dependsOn: {inputs: 5}\n    type: STRING\n",
    b"labels: [1, 2, {key: [x]}]\n",
    b"labels: {system.x: y, a: {b: c}}\n",
    b"variables: 5\n",
    b"triggers: [5, {id: [x]}, {type: 5}]\n",
    b"outputs: [5, {id: {a: 1}}]\n",
    b"pluginDefaults: [{type: 5, values: 5}]\n",
    b"retry: {type: [x], maxAttempt: 99999999999999999999}\n",
    b"retry: {type: constant, interval: P99999999999999D, maxAttempt: 3}\n",
    b"concurrency: {limit: -1, behavior: {}}\n",
    b"disabled: maybe\n",
    b"listeners: 5\n",
    b"listeners: [{tasks: 5}]\n",
    b"dependsOn: 5\n",
    b"dependsOn: [[1]]\n",
    b"task: 5\n",
    b"value: '{{ ' \n",
    b"timeout: P99999999999999D\n",
    b"duration: -PT1S\n",
    b"\xef\xbb\xbf",
]
"""Bits of YAML (and not YAML) that have crashed, hung or exhausted YAML readers."""

HOSTILE_VALUES: list[str] = [
    "",
    "~",
    "null",
    "[]",
    "{}",
    "{a: 1}",
    "[1, [2, [3]]]",
    "*nowhere",
    "&a x",
    "!!binary aGVsbG8=",
    "!!int abc",
    "123456789012345678901234567890",
    "-9223372036854775809",
    "18446744073709551616",
    "1e999",
    ".nan",
    "0x" + "F" * 40,
    "'\\0'",
    '"\\0"',
    '"\\ud800"',
    "x" * 1000,
    "'{{'",
    "'{% for %}'",
    "2024-13-45",
    "9999-12-31T23:59:59-12:00",
    "P99999999999999D",
    "'(a|a)+$'",
    "'${x}'",
    "../../etc/passwd",
]
"""Scalars (as written in YAML) put in place of a value."""


@cache
def corpus(folder: Path) -> tuple[bytes, ...]:
    """Every flow file of the Kestra corpus, as bytes."""
    return tuple(p.read_bytes() for p in sorted(folder.rglob("*.y*ml")))


def unique_id() -> str:
    return "fz" + uuid.uuid4().hex[:12]


def renamed(source: bytes, flow_id: str) -> bytes:
    """The flow with its own id and a namespace under `fuzz.`, so each case is a new flow."""
    source = re.sub(rb"(?m)^id:.*$", b"id: " + flow_id.encode(), source, count=1)
    return re.sub(rb"(?m)^namespace:.*$", b"namespace: fuzz." + flow_id.encode(), source, count=1)


_LINE_VALUE = re.compile(rb"(?m)^(\s*-?\s*[A-Za-z_][\w.-]*:)[ \t]+\S.*$")

operation = st.one_of(
    st.tuples(st.just("flip"), st.integers(0, 10**6), st.integers(0, 255)),
    st.tuples(
        st.just("insert"),
        st.integers(0, 10**6),
        st.sampled_from(HOSTILE_SNIPPETS),
        st.sampled_from([b"", b"  ", b"    ", b"      "]),
    ),
    st.tuples(st.just("value"), st.integers(0, 10**6), st.sampled_from(HOSTILE_VALUES)),
    st.tuples(st.just("delete"), st.integers(0, 10**6), st.integers(1, 200)),
    st.tuples(st.just("truncate"), st.integers(0, 10**6)),
    st.tuples(st.just("repeat"), st.integers(0, 10**6), st.integers(2, 5)),
    st.tuples(st.just("bytes"), st.integers(0, 10**6), st.binary(min_size=1, max_size=8)),
)


def mutate(source: bytes, ops: list[tuple[Any, ...]]) -> bytes:
    """`source` with each operation applied in turn."""
    data = bytearray(source)
    for op in ops:
        kind, at = op[0], op[1]
        size = max(len(data), 1)
        if kind == "flip" and data:
            data[at % len(data)] = op[2]
        elif kind == "insert":
            lines = bytes(data).splitlines(keepends=True) or [b""]
            index = at % (len(lines) + 1)
            snippet = b"".join(op[3] + line for line in op[2].splitlines(keepends=True))
            if not snippet.endswith(b"\n"):
                snippet += b"\n"
            data = bytearray(b"".join(lines[:index]) + snippet + b"".join(lines[index:]))
        elif kind == "value":
            found = list(_LINE_VALUE.finditer(bytes(data)))
            if found:
                match = found[at % len(found)]
                replacement = match.group(1) + b" " + op[2].encode()
                data[match.start() : match.end()] = replacement
        elif kind == "delete":
            start = at % size
            del data[start : start + op[2]]
        elif kind == "truncate":
            del data[at % size :]
        elif kind == "repeat":
            lines = bytes(data).splitlines(keepends=True)
            if lines:
                index = at % len(lines)
                lines[index] = lines[index] * op[2]
                data = bytearray(b"".join(lines))
        elif kind == "bytes":
            start = at % size
            data[start:start] = op[2]
    return bytes(data)


@st.composite
def mutated_flow(draw: st.DrawFn, folder: Path, flow_id: str | None = None) -> bytes:
    """A corpus flow, renamed, then mutated."""
    source = draw(st.sampled_from(corpus(folder)))
    source = renamed(source, flow_id or unique_id())
    return mutate(source, draw(st.lists(operation, max_size=4)))


# --- flows built as data -------------------------------------------------------------------------

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    st.sampled_from(["STRING", "INT", "io.kestra.plugin.core.log.Log", "PT1S", "{{ x }}", "a.b"]),
    st.dates(),
    st.datetimes(),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(
            st.one_of(st.text(max_size=8), st.integers(-5, 5), st.booleans()), inner, max_size=4
        ),
    ),
    max_leaves=12,
)


@cache
def _task_types() -> tuple[str, ...]:
    return tuple(sorted(registered()))


@cache
def _fields(type_name: str) -> tuple[str, ...]:
    cls = task_type(type_name)
    return tuple(f.encode_name for f in msgspec.structs.fields(cls)) if cls else ()


@st.composite
def task(draw: st.DrawFn, depth: int = 0) -> dict[Any, Any]:
    """A task of a registered type with some of its properties set to anything."""
    type_name = draw(st.sampled_from(_task_types()))
    out: dict[Any, Any] = {
        "id": draw(st.sampled_from(["t", "u", "v"])) + str(draw(st.integers(0, 999))),
        "type": type_name,
    }
    names = [n for n in _fields(type_name) if n not in ("id", "type")]
    if names:
        for name in draw(st.lists(st.sampled_from(names), max_size=4, unique=True)):
            if name in ("tasks", "errors", "defaults", "then", "else", "finally") and depth < 2:
                out[name] = draw(st.one_of(st.lists(task(depth + 1), max_size=2), values))
            else:
                out[name] = draw(values)
    return out


FLOW_FIELDS = [
    "id", "namespace", "tasks", "inputs", "labels", "variables", "errors", "finally",
    "afterExecution", "outputs", "triggers", "pluginDefaults", "disabled", "retry",
    "concurrency", "listeners", "description", "revision", "sla", "unknown",
]  # fmt: skip


@st.composite
def structured_flow(draw: st.DrawFn, flow_id: str | None = None) -> bytes:
    """A flow written as data: real tasks, with odd values put anywhere, dumped as YAML."""
    flow_id = flow_id or unique_id()
    flow: dict[Any, Any] = {
        "id": flow_id,
        "namespace": f"fuzz.{flow_id}",
        "tasks": draw(st.lists(task(), min_size=1, max_size=3)),
    }
    if draw(st.booleans()):
        flow["inputs"] = [
            {"id": f"i{n}", "type": draw(st.sampled_from(["STRING", "INT", "FLOAT", "BOOLEAN", "DATETIME", "DATE", "TIME", "DURATION", "FILE", "JSON", "YAML", "URI", "EMAIL", "SELECT", "MULTISELECT", "ARRAY", "SECRET", "ENUM", "BOOL", "x"])), **draw(st.dictionaries(st.sampled_from(["defaults", "required", "validator", "min", "max", "after", "before", "values", "itemType", "dependsOn", "displayName", "allowCustomValue", "options", "expression", "extension"]), values, max_size=3))}
            for n in range(draw(st.integers(1, 3)))
        ]  # fmt: skip
    for name in draw(st.lists(st.sampled_from(FLOW_FIELDS), max_size=3, unique=True)):
        flow[name] = draw(values)
    try:
        text = yaml.safe_dump(flow, sort_keys=False, allow_unicode=draw(st.booleans()))
    except yaml.YAMLError:
        text = repr(flow)
    return text.encode("utf-8", errors="surrogatepass")


def flow_source(folder: Path, flow_id: str | None = None) -> st.SearchStrategy[bytes]:
    """Either kind of flow source."""
    return st.one_of(mutated_flow(folder, flow_id), structured_flow(flow_id))


# --- JSON ------------------------------------------------------------------------------------------

hostile_strings = st.one_of(
    st.text(max_size=30),
    st.sampled_from(
        ["\x00", "a\x00b", "{{ 1 }}", "kestra:///x", "kestra:///../../etc/passwd", "../x", "x" * 5000,
         "2024-13-45", "9999-12-31T23:59:59-12:00", "P99999999999999D", "1e999", "NaN", "[1,2", "[" * 2000,
         "123456789012345678901234567890", "-9223372036854775809", "a: &a [*a]", "@", "a@b.c", "http://x"]
    ),
)  # fmt: skip
json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-(2**80), 2**80), st.floats(allow_nan=False, allow_infinity=False), hostile_strings),
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(hostile_strings, inner, max_size=4)),
    max_leaves=15,
)  # fmt: skip
