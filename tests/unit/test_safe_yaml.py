"""Hostile YAML is refused quickly, with its line, and never crashes the parser."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from engine import safe_yaml
from engine.errors import FlowValidationError
from engine.flow import parse_flow
from engine.safe_yaml import YamlLimits, load, load_with_marks


@pytest.fixture(params=["c", "python"])
def reader(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Each test runs with libyaml's reader and with PyYAML's pure-Python one."""
    if request.param == "python":
        monkeypatch.setattr(safe_yaml, "_Loader", safe_yaml._PyLoader)
    elif not yaml.__with_libyaml__:
        pytest.skip("libyaml is not installed")
    yield request.param


def billion_laughs(levels: int = 9, width: int = 9) -> str:
    names = "abcdefghijklmnop"
    lines = [f"a: &a [{','.join(['lol'] * width)}]"]
    for i in range(1, levels):
        refs = ",".join([f"*{names[i - 1]}"] * width)
        lines.append(f"{names[i]}: &{names[i]} [{refs}]")
    return "\n".join(lines) + "\n"


def messages(source: str, limits: YamlLimits = safe_yaml.DEFAULT_LIMITS) -> list[str]:
    return [str(p) for p in load_with_marks(source, limits)[2]]


def flow_problems(source: str) -> list[str]:
    with pytest.raises(FlowValidationError) as caught:
        parse_flow(source)
    return [str(p) for p in caught.value.details]


FLOW = "id: f\nnamespace: company.team\ntasks:\n  - id: t\n    type: io.kestra.plugin.core.log.Log\n    message: hi\n"


# --- limits --------------------------------------------------------------------------------------


def test_billion_laughs_is_refused_in_milliseconds_naming_the_alias(reader: str) -> None:
    bomb = billion_laughs()
    assert len(bomb) < 700  # a billion values once expanded
    started = time.perf_counter()
    found = messages(bomb)
    elapsed = time.perf_counter() - started
    assert elapsed < 0.1, f"took {elapsed:.3f} s"
    assert len(found) == 1
    assert "aliases expand the document to more than 200000 values" in found[0]
    assert found[0].split(":")[0].isdigit()  # the line of the alias that crossed the limit


def test_billion_laughs_sent_as_a_flow_is_a_validation_error(reader: str) -> None:
    started = time.perf_counter()
    problems = flow_problems(FLOW + billion_laughs().replace("a:", "va:", 1))
    assert time.perf_counter() - started < 0.1
    assert any("aliases expand" in p for p in problems)


@pytest.mark.parametrize("style", ["flow", "block", "mapping"])
def test_deep_nesting_is_refused_at_the_depth_limit_without_recursion_error(
    reader: str, style: str
) -> None:
    depth = 900
    if style == "flow":
        source = "v: " + "[" * depth + "]" * depth
    elif style == "block":
        source = "".join("  " * i + "-\n" for i in range(depth)) + "  " * depth + "x\n"
    else:
        source = "".join("  " * i + f"k{i}:\n" for i in range(depth)) + "  " * depth + "x\n"
    found = messages(source)
    assert len(found) == 1
    assert "nested more than 100 levels deep" in found[0]
    assert found[0].split(":")[0].isdigit()
    assert any(
        "nested more than 100" in p
        for p in flow_problems(FLOW + "variables:\n  " + source.replace("\n", "\n  "))
    )


def test_nesting_up_to_the_limit_is_read(reader: str) -> None:
    source = "[" * 100 + "]" * 100
    value = load(source)
    for _ in range(99):
        value = value[0]
    assert value == []
    assert "nested more than 100" in messages("[" * 101 + "]" * 101)[0]


def test_an_alias_counts_at_the_depth_it_expands_to(reader: str) -> None:
    deep = "[" * 60 + "]" * 60
    source = f"a: &a {deep}\nb: " + "[" * 50 + "*a" + "]" * 50 + "\n"
    found = messages(source)
    assert len(found) == 1 and "the alias *a nests values more than 100 levels" in found[0]
    assert found[0].startswith("2:")


def test_a_recursive_alias_is_refused(reader: str) -> None:
    found = messages("a: &a [1, *a]\n")
    assert len(found) == 1 and "refers to a node that contains it" in found[0]


def test_too_many_aliases_are_refused(reader: str) -> None:
    source = "a: &a x\nb: [" + ", ".join(["*a"] * 1001) + "]\n"
    assert "more than 1000 aliases" in messages(source)[0]
    assert load("a: &a x\nb: [" + ", ".join(["*a"] * 1000) + "]\n")["b"][-1] == "x"


def test_a_document_over_the_size_limit_is_refused_before_it_is_read(reader: str) -> None:
    limits = YamlLimits(max_chars=1000)
    found = messages("a: " + "x" * 2000, limits)
    assert len(found) == 1 and "2003 characters, over the limit of 1000" in found[0]


def test_too_many_values_are_refused(reader: str) -> None:
    found = messages("[" + ",".join(["1"] * 101) + "]", YamlLimits(max_nodes=100))
    assert len(found) == 1 and "holds more than 100 values" in found[0]


def test_ordinary_anchors_and_merges_still_work(reader: str) -> None:
    value = load(
        "base: &base {type: constant, interval: PT1S}\n"
        "one:\n  <<: *base\n  interval: PT5S\n"
        "two: *base\n"
        "three:\n  <<: [{a: 1}, {a: 2, b: 2}]\n"
    )
    assert value["one"] == {"type": "constant", "interval": "PT5S"}
    assert value["two"] == {"type": "constant", "interval": "PT1S"}
    assert value["three"] == {"a": 1, "b": 2}


# --- values that cannot be stored ----------------------------------------------------------------


def test_integers_beyond_64_bits_are_refused_with_their_line(reader: str) -> None:
    found = messages("a: 1\nb: 123456789012345678901234567890\n")
    assert found == [
        "2:4 b: The integer 123456789012345678901234567890 is outside 64 bits (-2^63 to 2^64-1):"
        " write it in quotes to keep it as text"
    ]
    assert load(f"a: {2**64 - 1}\nb: {-(2**63)}\n") == {"a": 2**64 - 1, "b": -(2**63)}
    assert "beyond 64 bits" in messages("a: " + "1" * 5000)[0]  # not computed at all
    assert "beyond 64 bits" in messages("a: 1" + ":1" * 2000)[0]  # base 60


def test_mapping_keys_are_read_as_the_text_written(reader: str) -> None:
    assert load("1: a\ntrue: b\non: c\nnull: d\n1.5: e\n") == {
        "1": "a",
        "true": "b",
        "on": "c",
        "null": "d",
        "1.5": "e",
    }
    assert "Duplicate key '1'" in messages("1: a\n'1': b\n")[0]


def test_a_list_or_mapping_as_a_key_is_refused(reader: str) -> None:
    assert messages("? [a, b]\n: 1\n") == ["1:3: A mapping key must be plain text, not a list"]
    assert "not a mapping" in messages("{a: 1}: 2\n")[0]


@pytest.mark.parametrize(
    "source, expected",
    [
        ('a: "nul \\0 here"\n', "NUL character"),
        ("a: !!binary aGVsbG8=\n", "!!binary"),
        ("a: !!int abc\n", "as int"),
        ("a: !!bool maybe\n", "as bool"),
        ("a: !!int\n", "as int"),
        ("a: !!float\n", "as float"),
        ("a: !!timestamp yesterday\n", "as timestamp"),
        ("a: !!float x\n", "as float"),
        ("a: !!python/object:os.system x\n", "Cannot read this value"),
        ("a: !custom x\n", "Cannot read this value"),
    ],
)
def test_values_that_cannot_be_stored_are_problems_at_their_line(
    reader: str, source: str, expected: str
) -> None:
    found = messages(source)
    assert len(found) == 1 and expected in found[0], found
    assert found[0].startswith("1:4 a:")


def test_an_escaped_lone_surrogate_is_refused(reader: str) -> None:
    # libyaml refuses the escape itself; PyYAML reads it, and the value is then refused.
    found = messages('a: "\\ud800"\n')
    assert len(found) == 1 and ("lone surrogate" in found[0] or "escape" in found[0]), found


def test_characters_yaml_does_not_allow_are_named_with_their_line(reader: str) -> None:
    assert messages("a: 1\nb: x\x00y\n") == [
        "2:5: Invalid YAML: the character U+0000 cannot appear in YAML text (control characters"
        " and lone surrogates are not allowed): remove it; fix the syntax at this position"
    ]
    assert "U+D800" in messages("a: \ud800\n")[0]


def test_syntax_errors_keep_their_line(reader: str) -> None:
    found = messages("a: [1, 2\nb: 3\n")
    assert len(found) == 1 and found[0].startswith(("2:", "3:")) and "Invalid YAML" in found[0]


def test_kestra_corpus_reads_as_pyyaml_reads_it(kestra_flows: Path) -> None:
    def stringify_keys(value: Any) -> Any:
        if isinstance(value, dict):
            return {str(k): stringify_keys(v) for k, v in value.items()}
        if isinstance(value, list):
            return [stringify_keys(v) for v in value]
        return value

    files = sorted(kestra_flows.rglob("*.y*ml"))
    assert files
    for path in files:
        source = path.read_text()
        try:
            expected = stringify_keys(yaml.safe_load(source))
        except yaml.YAMLError:
            assert load_with_marks(source)[2], path
            continue
        value, _marks, problems = load_with_marks(source)
        if any("Duplicate key" in str(p) for p in problems):
            continue  # PyYAML keeps the last one silently
        assert not problems, (path, problems)
        assert value == expected, path


# --- flows -----------------------------------------------------------------------------------------


SWITCH = "  - id: s\n    type: io.kestra.plugin.core.flow.Switch\n    value: x\n"


@pytest.mark.parametrize(
    "extra, expected",
    [
        (
            "inputs:\n  - id: i\n    type: {a: 1}\n",
            "9:11 inputs[0].type: Unknown input type a mapping",
        ),
        ("inputs:\n  - id: i\n    type: [STRING]\n", "Unknown input type a list"),
        (
            SWITCH.replace("  - id: s", "  - id: s2") + "    cases: 5\n",
            "Must be a mapping of names to task lists",
        ),
        (SWITCH + "    cases: [a, b]\n", "Must be a mapping of names to task lists"),
        ("variables:\n  big: 123456789012345678901234567890\n", "outside 64 bits"),
        (
            "  - id: d\n    type: io.kestra.plugin.core.flow.Dag\n    tasks:\n      - 5\n",
            "Each item must be a mapping with a `task`",
        ),
        (
            "  - id: d\n    type: io.kestra.plugin.core.flow.Dag\n    tasks:\n"
            "      - task: {id: x, type: io.kestra.plugin.core.log.Log, message: m}\n"
            "        dependsOn: 5\n",
            "`dependsOn` must be a list of task ids",
        ),
        (
            "triggers:\n  - id: has.dot\n    type: io.kestra.plugin.core.trigger.Schedule\n",
            "Trigger id",
        ),
        (
            "outputs:\n  - {id: o, value: x, type: STRING}\n  - {id: o, value: y, type: STRING}\n",
            "Duplicate output id",
        ),
        ("listeners: 5\n", "listeners"),
    ],
)
def test_odd_types_anywhere_are_validation_problems(extra: str, expected: str) -> None:
    problems = flow_problems(FLOW + extra)
    assert any(expected in p for p in problems), problems


def test_a_switch_case_named_by_a_number_is_the_text_of_that_number() -> None:
    flow = parse_flow(
        FLOW + SWITCH + "    cases:\n      1:\n        - id: c\n"
        "          type: io.kestra.plugin.core.log.Log\n          message: m\n"
    )
    switch = flow.find_task("s")
    assert switch is not None and list(switch.cases) == ["1"]  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    "field, value, expected",
    [
        ("id", "x" * 101, "Flow id 'xxxx"),
        ("id", "x" * 100, None),
        ("namespace", "n" * 151, "at most 150"),
        ("namespace", "n" * 150, None),
        ("namespace", "Company.Team", "lower-case"),
        ("id", "bad id", "may only hold"),
        ("id", "'ends-with-newline\\n'", None),
    ],
)
def test_flow_ids_and_namespaces_follow_kestra_rules(
    field: str, value: str, expected: str | None
) -> None:
    source = FLOW.replace(
        f"{field}: {'f' if field == 'id' else 'company.team'}", f"{field}: {value}", 1
    )
    if value.endswith("\\n'"):
        source = source.replace(value, '"ends-with-newline\\n"')
        expected = "may only hold"
    if expected is None:
        parse_flow(source)
        return
    problems = flow_problems(source)
    assert any(
        expected in p and p.split(":")[0].isdigit() and f" {field}: " in p for p in problems
    ), problems


@pytest.mark.parametrize(
    "task_id, expected",
    [("a.b", "no dots"), ("t" * 101, "at most 100"), ("-a", "may only hold"), ("t" * 100, None)],
)
def test_task_ids_follow_kestra_rules(task_id: str, expected: str | None) -> None:
    source = FLOW.replace("  - id: t\n", f"  - id: {task_id}\n")
    if expected is None:
        parse_flow(source)
        return
    problems = flow_problems(source)
    assert any(expected in p and p.startswith("4:") for p in problems), problems


def test_input_ids_are_bounded() -> None:
    source = FLOW + f"inputs:\n  - id: {'i' * 101}\n    type: STRING\n"
    assert any("at most 100" in p and p.startswith("8:") for p in flow_problems(source))
    parse_flow(FLOW + "inputs:\n  - id: nested.ok\n    type: STRING\n")
