"""Execution inputs: every Kestra type is converted or refused, naming the input; wrong input
definitions are rejected when the flow is validated."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine.duration import parse_duration
from engine.errors import FlowValidationError, InputValidationError
from engine.flow import parse_flow
from engine.inputs import iso_duration, resolve_inputs

TASKS = "tasks:\n  - id: t\n    type: io.kestra.plugin.core.log.Log\n    message: hi\n"

FLOW = """
id: inputs
namespace: test.inputs
inputs:
  - id: name
    type: STRING
    validator: "^[a-z]+$"
  - id: count
    type: INT
    min: 1
    max: 10
  - id: ratio
    type: FLOAT
    required: false
  - id: flag
    type: BOOLEAN
    defaults: false
  - id: when
    type: DATETIME
    after: "2024-01-01T00:00:00Z"
    required: false
  - id: day
    type: DATE
    before: "2030-01-01"
    required: false
  - id: at
    type: TIME
    required: false
  - id: wait
    type: DURATION
    required: false
  - id: doc
    type: JSON
    required: false
  - id: conf
    type: YAML
    required: false
  - id: link
    type: URI
    required: false
  - id: mail
    type: EMAIL
    required: false
  - id: pick
    type: SELECT
    values: [a, b]
    required: false
  - id: picks
    type: MULTISELECT
    values: [a, b, c]
    required: false
  - id: nums
    type: ARRAY
    itemType: INT
    required: false
  - id: data
    type: FILE
    required: false
  - name: legacy
    type: STRING
    required: false
"""


def _flow(inputs: str) -> Any:
    return parse_flow(f"id: f\nnamespace: test.inputs\ninputs:\n{inputs}\n{TASKS}")


def _one(definition: str, value: Any) -> Any:
    """The converted value of the single input `x` defined by `definition`."""
    flow = _flow("  - id: x\n    " + definition.strip().replace("\n", "\n    "))
    return resolve_inputs(flow, {"x": value})["x"]


def _refusal(definition: str, value: Any) -> str:
    flow = _flow("  - id: x\n    " + definition.strip().replace("\n", "\n    "))
    with pytest.raises(InputValidationError) as info:
        resolve_inputs(flow, {"x": value})
    [problem] = info.value.details
    assert problem.path == "inputs.x"
    assert "'x'" in problem.message
    return problem.message


def _definition_problems(inputs: str) -> list[str]:
    with pytest.raises(FlowValidationError) as info:
        _flow(inputs)
    assert all(p.line is not None for p in info.value.details)
    return [str(p) for p in info.value.details]


@pytest.fixture(scope="module")
def flow() -> Any:
    return parse_flow(FLOW + TASKS)


def test_good_values_are_converted_to_their_types(flow) -> None:
    values = resolve_inputs(
        flow,
        {
            "name": "ada",
            "count": "3",
            "ratio": "0.5",
            "when": "2025-06-01T10:00:00Z",
            "day": "2025-06-01",
            "at": "10:30:00",
            "wait": "PT5M",
            "doc": '{"a": [1, 2]}',
            "conf": "a: 1\nb: [x]",
            "link": "https://example.com/x",
            "mail": "ada@example.com",
            "pick": "b",
            "picks": '["a", "c"]',
            "nums": "[1, 2, 3]",
            "data": "kestra:///test/inputs/executions/x/inputs/data/f.csv",
            "legacy": "old",
        },
    )
    assert values["count"] == 3 and values["ratio"] == 0.5 and values["flag"] is False
    assert values["when"] == "2025-06-01T10:00:00Z" and values["day"] == "2025-06-01"
    assert values["at"] == "10:30:00" and values["wait"] == "PT5M"
    assert values["doc"] == {"a": [1, 2]} and values["conf"] == {"a": 1, "b": ["x"]}
    assert values["picks"] == ["a", "c"] and values["nums"] == [1, 2, 3]
    assert values["legacy"] == "old" and values["mail"] == "ada@example.com"
    assert json.loads(json.dumps(values)) == values


@pytest.mark.parametrize(
    ("given", "path", "words"),
    [
        ({"name": "Ada1"}, "inputs.name", "does not match"),
        ({"count": "0"}, "inputs.count", "below the minimum"),
        ({"count": "11"}, "inputs.count", "above the maximum"),
        ({"count": "three"}, "inputs.count", "not an integer"),
        ({"ratio": "half"}, "inputs.ratio", "not a number"),
        ({"flag": "maybe"}, "inputs.flag", "not a boolean"),
        ({"when": "2023-06-01T00:00:00Z"}, "inputs.when", "must be after"),
        ({"when": "yesterday"}, "inputs.when", "not an ISO-8601"),
        ({"day": "2031-01-01"}, "inputs.day", "must be before"),
        ({"at": "25:00"}, "inputs.at", "not an ISO-8601"),
        ({"wait": "five minutes"}, "inputs.wait", "DURATION"),
        ({"doc": "{oops"}, "inputs.doc", "not valid JSON"),
        ({"link": "no scheme"}, "inputs.link", "not a URI"),
        ({"mail": "ada"}, "inputs.mail", "not an e-mail"),
        ({"pick": "z"}, "inputs.pick", "not one of"),
        ({"picks": '["a", "z"]'}, "inputs.picks", "not among"),
        ({"nums": '[1, "x"]'}, "inputs.nums", "not an integer"),
        ({"data": "/etc/passwd"}, "inputs.data", "kestra://"),
        ({"nope": "1"}, "inputs.nope", "Unknown input"),
    ],
)
def test_a_bad_value_is_refused_naming_the_input(flow, given, path, words) -> None:
    good = {"name": "ada", "count": 3}
    with pytest.raises(InputValidationError) as info:
        resolve_inputs(flow, {**good, **given})
    problems = [p for p in info.value.details if p.path == path]
    assert problems and words in problems[0].message, info.value.details
    assert "nothing was started" in info.value.message


def test_every_missing_required_input_is_reported_at_once(flow) -> None:
    with pytest.raises(InputValidationError) as info:
        resolve_inputs(flow, {})
    assert {p.path for p in info.value.details} == {"inputs.name", "inputs.count"}
    assert all("is required" in p.message for p in info.value.details)


def test_every_bad_value_is_reported_at_once(flow) -> None:
    with pytest.raises(InputValidationError) as info:
        resolve_inputs(flow, {"name": "A", "count": "x", "mail": "no", "nope": 1})
    paths = {p.path for p in info.value.details}
    assert paths == {"inputs.name", "inputs.count", "inputs.mail", "inputs.nope"}
    assert "(4 problems)" in info.value.message


@pytest.mark.parametrize(
    ("definition", "value", "expected"),
    [
        ("type: STRING", 42, "42"),
        ("type: STRING", True, "true"),
        ("type: STRING\nvalidator: 'A\\d+'", "A12", "A12"),
        ("type: INT", 7, 7),
        ("type: INT", " -3 ", -3),
        ("type: INT", 4.0, 4),
        ("type: INT\nmin: 10\nmax: 20", "10", 10),
        ("type: FLOAT", "1e3", 1000.0),
        ("type: FLOAT\nmin: 0.1\nmax: 0.5", 0.5, 0.5),
        ("type: BOOLEAN", "TRUE", True),
        ("type: BOOL", "no", False),
        ("type: BOOLEAN", False, False),
        ("type: DATETIME", "2024-03-01T12:00:00+02:00", "2024-03-01T10:00:00Z"),
        ("type: DATETIME", "2024-03-01T12:00:00", "2024-03-01T12:00:00Z"),
        ("type: DATETIME", "2024-03-01T12:00:00.250Z", "2024-03-01T12:00:00.250Z"),
        ("type: DATE\nafter: 2023-01-01\nbefore: 2023-12-31", "2023-05-05", "2023-05-05"),
        ("type: TIME\nafter: '01:00:00'\nbefore: '11:59:59'", "10:15", "10:15:00"),
        ("type: DURATION", "P1DT2H", "PT26H"),
        ("type: DURATION", "pt90s", "PT1M30S"),
        ("type: DURATION\nmin: PT10S\nmax: PT20S", "PT10S", "PT10S"),
        ("type: JSON", '[{"a": null}]', [{"a": None}]),
        ("type: JSON", {"already": "parsed"}, {"already": "parsed"}),
        ("type: YAML", "when: 2024-01-02\nn: [1]", {"when": "2024-01-02", "n": [1]}),
        ("type: URI", "s3://bucket/key", "s3://bucket/key"),
        ("type: EMAIL", "a.b@example.org", "a.b@example.org"),
        ("type: SECRET", "p@ss w0rd", "p@ss w0rd"),
        ("type: SELECT\nvalues: [a, b]", "a", "a"),
        ("type: SELECT\nvalues: [1, 2]", 2, "2"),
        ("type: SELECT\nvalues: [a]\nallowCustomValue: true", "zz", "zz"),
        ("type: SELECT\nexpression: '{{ kv(\"x\") }}'", "anything", "anything"),
        ("type: ENUM\nvalues: [RED, BLUE]", "BLUE", "BLUE"),
        ("type: MULTISELECT\nvalues: [a, b]", ["b", "a"], ["b", "a"]),
        ("type: MULTISELECT\nvalues: [a, b]", "a", ["a"]),
        ("type: MULTISELECT\noptions: [a, b]", '["b"]', ["b"]),
        ("type: MULTISELECT\nvalues: [a]\nallowCustomValue: true", ["a", "q"], ["a", "q"]),
        ("type: ARRAY\nitemType: STRING", ["a", 1], ["a", "1"]),
        ("type: ARRAY\nitemType: FLOAT", "[1, 2.5]", [1.0, 2.5]),
        (
            "type: ARRAY\nitemType: DATETIME",
            ["2024-01-01T00:00:00+01:00"],
            ["2023-12-31T23:00:00Z"],
        ),
        ("type: ARRAY\nitemType: JSON", ['{"a": 1}', {"b": 2}], [{"a": 1}, {"b": 2}]),
        (
            "type: FILE",
            "kestra:///ns/f/executions/e/inputs/x/a.csv",
            "kestra:///ns/f/executions/e/inputs/x/a.csv",
        ),
    ],
)
def test_each_type_converts_a_good_value(definition: str, value: Any, expected: Any) -> None:
    assert _one(definition, value) == expected


@pytest.mark.parametrize(
    ("definition", "value", "words"),
    [
        ("type: STRING\nvalidator: 'A\\d+'", "A12b", "does not match the pattern"),
        ("type: STRING\nvalidator: '(a|aa)+$'", "a" * 60 + "!", "took over 1 s"),
        ("type: INT", True, "not an integer"),
        ("type: INT", "1.5", "not an integer"),
        ("type: INT", [1], "not an integer"),
        ("type: INT\nmin: 10\nmax: 20", 21, "above the maximum 20"),
        ("type: FLOAT", "nan", "not a number"),
        ("type: FLOAT", "inf", "not a number"),
        ("type: FLOAT\nmin: 0.1\nmax: 0.5", "0.05", "below the minimum 0.1"),
        ("type: BOOLEAN", "2", "not a boolean"),
        ("type: DATETIME", "2024-13-01T00:00:00Z", "not an ISO-8601 datetime"),
        ("type: DATETIME\nbefore: '2024-01-01T00:00:00Z'", "2024-01-01T00:00:00Z", "before"),
        ("type: DATE", "2024-02-30", "not an ISO-8601 date"),
        ("type: DATE", "2024-02-01T10:00:00", "not an ISO-8601 date"),
        ("type: DATE\nafter: 2023-01-01", "2023-01-01", "must be after 2023-01-01"),
        ("type: TIME", "10:00:00+02:00", "without a time zone"),
        ("type: TIME\nbefore: '11:59:59'", "12:00", "must be before 11:59:59"),
        ("type: DURATION", "10 minutes", "ISO-8601 DURATION"),
        ("type: DURATION\nmin: PT10S\nmax: PT20S", "PT21S", "above the maximum PT20S"),
        ("type: DURATION\nmin: PT10S", "PT1S", "below the minimum PT10S"),
        ("type: JSON", "NaN", "not valid JSON"),
        ("type: JSON", "{'single': 'quotes'}", "not valid JSON"),
        ("type: YAML", "a: [unclosed", "not valid YAML"),
        ("type: YAML", "9999-12-31T23:51:00-0:09", "does not exist in UTC"),
        ("type: URI", "http://exa mple.com", "not a URI"),
        ("type: EMAIL", "a@b", "not an e-mail"),
        ("type: SELECT\nvalues: [a, b]", "c", "'c' is not one of a, b"),
        ("type: SELECT\nvalues: [a, b]", ["a"], "takes one value"),
        ("type: ENUM\nvalues: [RED, BLUE]", "red", "not one of"),
        ("type: MULTISELECT\nvalues: [a, b]", ["a", "c", "d"], "c, d not among the values a, b"),
        ("type: MULTISELECT\nvalues: [a, b]", "[a", "not a JSON list"),
        ("type: ARRAY\nitemType: INT", "1,2", "not a list"),
        ("type: ARRAY\nitemType: INT", {"a": 1}, "not a list"),
        ("type: ARRAY\nitemType: INT", [1, 2, "three"], "item [2]: 'three' is not an integer"),
        ("type: ARRAY\nitemType: EMAIL", ["a@b.c", "x"], "item [1]"),
        ("type: FILE", "https://example.com/a.csv", "kestra://"),
        ("type: FILE", "kestra:///ns/../../etc/passwd", "'..'"),
        ("type: FILE", 3, "kestra://"),
    ],
)
def test_each_type_refuses_a_bad_value_naming_the_input(
    definition: str, value: Any, words: str
) -> None:
    message = _refusal(definition, value)
    assert words in message, message


def test_a_secret_is_stored_as_given_and_never_echoed_in_an_error() -> None:
    assert _one("type: SECRET", "s3cr3t!") == "s3cr3t!"
    message = _refusal("type: SECRET\nvalidator: '[a-z]+'", "Hunter2")
    assert "Hunter2" not in message and "does not match" in message


def test_defaults_fill_missing_and_empty_values_and_are_converted() -> None:
    flow = _flow(
        "  - id: n\n    type: INT\n    defaults: 5\n"
        "  - id: when\n    type: DATETIME\n    defaults: 2013-08-09T14:19:00Z\n"
        "  - id: conf\n    type: YAML\n    defaults:\n      a: [1, 2]\n"
        "  - id: empty\n    type: STRING\n    defaults: ''\n"
    )
    values = resolve_inputs(flow, {"n": ""})
    assert values == {
        "n": 5,
        "when": "2013-08-09T14:19:00Z",
        "conf": {"a": [1, 2]},
        "empty": "",
    }


def test_an_optional_input_without_value_is_null() -> None:
    flow = _flow("  - id: x\n    type: INT\n    required: false")
    assert resolve_inputs(flow, {}) == {"x": None}


def test_dotted_ids_are_nested_and_may_be_given_nested() -> None:
    flow = _flow(
        "  - id: nested.string\n    type: STRING\n"
        "  - id: nested.more.int\n    type: INT\n"
        "  - id: plain\n    type: BOOLEAN\n    required: false"
    )
    expected = {"nested": {"string": "s", "more": {"int": 2}}, "plain": None}
    assert resolve_inputs(flow, {"nested.string": "s", "nested.more.int": "2"}) == expected
    assert resolve_inputs(flow, {"nested": {"string": "s", "more": {"int": 2}}}) == expected
    with pytest.raises(InputValidationError) as info:
        resolve_inputs(flow, {"nested.string": "s"})
    assert [p.path for p in info.value.details] == ["inputs.nested.more.int"]


def test_inputs_are_resolved_after_those_they_depend_on() -> None:
    flow = _flow(
        "  - id: services\n    type: SELECT\n    values: [ec2, gce]\n"
        "    dependsOn:\n      inputs: [cloud]\n      condition: \"{{ inputs.cloud == 'AWS' }}\"\n"
        "  - id: cloud\n    type: SELECT\n    values: [AWS, GCP]"
    )
    assert resolve_inputs(flow, {"cloud": "AWS", "services": "ec2"}) == {
        "cloud": "AWS",
        "services": "ec2",
    }
    # the condition is false: the input is skipped, neither required nor checked
    assert resolve_inputs(flow, {"cloud": "GCP", "services": "nope"}) == {
        "cloud": "GCP",
        "services": None,
    }
    with pytest.raises(InputValidationError) as info:
        resolve_inputs(flow, {"cloud": "AWS"})
    assert [p.path for p in info.value.details] == ["inputs.services"]


def test_an_input_depending_on_a_bad_one_is_not_reported_twice() -> None:
    flow = _flow(
        "  - id: a\n    type: INT\n"
        "  - id: b\n    type: STRING\n    dependsOn:\n      inputs: [a]\n"
        '      condition: "{{ inputs.a > 1 }}"'
    )
    with pytest.raises(InputValidationError) as info:
        resolve_inputs(flow, {"a": "x", "b": "y"})
    assert [p.path for p in info.value.details] == ["inputs.a"]


def test_a_condition_that_cannot_be_rendered_is_reported_on_its_input() -> None:
    flow = _flow(
        "  - id: a\n    type: INT\n"
        "  - id: b\n    type: STRING\n    dependsOn:\n      inputs: [a]\n"
        '      condition: "{{ inputs.missing.deeper > 1 }}"'
    )
    with pytest.raises(InputValidationError) as info:
        resolve_inputs(flow, {"a": 1, "b": "y"})
    [problem] = info.value.details
    assert problem.path == "inputs.b" and "condition" in problem.message


@pytest.mark.parametrize(
    ("inputs", "words"),
    [
        ("  - id: x\n    type: STRING\n    validator: '[a-'", "Invalid regular expression"),
        ("  - id: x\n    type: SECRET\n    validator: '(?P<'", "Invalid regular expression"),
        (
            "  - id: x\n    type: STRING\n    validator: '((a{1000}){1000}){1000}'",
            "repeats its parts more than 100,000 times",
        ),
        ("  - id: x\n    type: NOPE", "Unknown input type 'NOPE'"),
        ("  - id: x\n    type: string", "write it in capitals: STRING"),
        ("  - id: x", "needs a `type`"),
        ("  - type: STRING", "needs an `id`"),
        ("  - id: 'a b'\n    type: STRING", "may only hold letters"),
        ("  - id: x\n    type: ARRAY", "needs an `itemType`"),
        ("  - id: x\n    type: ARRAY\n    itemType: ARRAY", "cannot be the item type"),
        ("  - id: x\n    type: ARRAY\n    itemType: FILE", "cannot be the item type"),
        ("  - id: x\n    type: MULTISELECT\n    values: [a]\n    itemType: NOPE", "item type"),
        ("  - id: x\n    type: SELECT", "non-empty `values`"),
        ("  - id: x\n    type: ENUM\n    values: []", "non-empty `values`"),
        ("  - id: x\n    type: SELECT\n    values: [{a: 1}]", "plain values"),
        ("  - id: x\n    type: MULTISELECT\n    values: [a]\n    options: [a]", "not both"),
        ("  - id: x\n    type: STRING\n  - id: x\n    type: INT", "Duplicate input id 'x'"),
        ("  - id: x\n    type: STRING\n    min: 1", "`min` does not apply to type STRING"),
        ("  - id: x\n    type: INT\n    validator: a", "`validator` does not apply to type INT"),
        ("  - id: x\n    type: INT\n    colour: red", "Unknown input property `colour`"),
        ("  - id: x\n    type: INT\n    min: one", "`min` must be an integer"),
        ("  - id: x\n    type: INT\n    min: 5\n    max: 1", "`min` is beyond `max`"),
        ("  - id: x\n    type: FLOAT\n    max: '1'", "`max` must be a number"),
        ("  - id: x\n    type: DURATION\n    min: 10s", "ISO-8601 duration"),
        ("  - id: x\n    type: DURATION\n    min: PT2M\n    max: PT1M", "beyond"),
        ("  - id: x\n    type: DATE\n    after: soon", "`after` must be an ISO-8601 date"),
        ("  - id: x\n    type: TIME\n    after: 10:00:00", "write it in quotes"),
        (
            "  - id: x\n    type: DATETIME\n    after: '2024-02-01T00:00:00Z'\n"
            "    before: '2024-01-01T00:00:00Z'",
            "`after` is beyond `before`",
        ),
        ("  - id: x\n    type: FILE\n    defaults: a.csv", "cannot have defaults"),
        ("  - id: x\n    type: INT\n    defaults: many", "default is not valid"),
        ("  - id: x\n    type: SELECT\n    values: [a]\n    defaults: b", "default is not valid"),
        ("  - id: x\n    type: INT\n    required: maybe", "Expected `bool`"),
        ("  - id: a\n    type: STRING\n  - id: a.b\n    type: STRING", "would nest under"),
        (
            "  - id: x\n    type: STRING\n    dependsOn:\n      inputs: [ghost]",
            "depends on 'ghost', which is not an input",
        ),
        ("  - id: x\n    type: STRING\n    dependsOn:\n      inputs: [x]", "on itself"),
        ("  - id: x\n    type: STRING\n    dependsOn:\n      when: y", "Unknown property"),
        (
            "  - id: a\n    type: STRING\n    dependsOn:\n      inputs: [b]\n"
            "  - id: b\n    type: STRING\n    dependsOn:\n      inputs: [a]",
            "cycle: a -> b -> a",
        ),
        ("  - just text", "must be a mapping"),
    ],
)
def test_bad_input_definitions_are_rejected_at_validation(inputs: str, words: str) -> None:
    problems = _definition_problems(inputs)
    assert any(words in p for p in problems), problems


def test_every_bad_input_definition_is_reported_with_its_line() -> None:
    with pytest.raises(FlowValidationError) as info:
        _flow(
            "  - id: a\n    type: INT\n    min: x\n"
            "  - id: b\n    type: STRING\n    validator: '('\n"
            "  - id: c\n    type: FOO\n"
        )
    found = {(p.path, p.line) for p in info.value.details}
    assert found == {
        ("inputs[0].min", 6),
        ("inputs[1].validator", 9),
        ("inputs[2].type", 11),
    }


def test_templated_defaults_are_not_checked_when_the_flow_is_saved() -> None:
    flow = _flow('  - id: x\n    type: DATETIME\n    defaults: "{{ now() }}"')
    assert flow.inputs[0].defaults == "{{ now() }}"


def test_the_deprecated_name_key_stands_for_id() -> None:
    flow = _flow("  - name: old\n    type: INT")
    assert flow.inputs[0].id_ == "old"
    assert resolve_inputs(flow, {"old": "1"}) == {"old": 1}


@pytest.mark.parametrize(
    "name",
    [
        "inputs.yaml",
        "inputs-bad-type.yaml",
        "inputs-bad-validator-syntax.yaml",
        "inputs-validation.yaml",
        "duplicate-inputs.yaml",
    ],
)
def test_kestra_invalid_input_flows_are_rejected(name: str, kestra_flows: Path) -> None:
    with pytest.raises(FlowValidationError) as info:
        parse_flow((kestra_flows / "invalids" / name).read_text())
    assert any(p.path.startswith("inputs") and p.line for p in info.value.details)


def test_kestra_valid_flows_with_inputs_have_no_input_problem(kestra_flows: Path) -> None:
    checked = 0
    for path in sorted((kestra_flows / "valids").glob("*.y*ml")):
        source = path.read_text()
        if "inputs:" not in source:
            continue
        checked += 1
        try:
            parse_flow(source)
        except FlowValidationError as exc:
            assert not [p for p in exc.details if p.path.startswith("inputs")], path.name
    assert checked > 30


def test_kestra_inputs_flow_resolves_to_json_values(kestra_flows: Path) -> None:
    flow = parse_flow((kestra_flows / "valids" / "inputs.yaml").read_text())
    values = resolve_inputs(
        flow,
        {
            "string": "s",
            "enum": "ENUM_VALUE",
            "int": "12",
            "float": "4.2",
            "instant": "2023-12-24T23:00:00.000Z",
            "file": "kestra:///io/kestra/tests/inputs/executions/e/inputs/file/a.txt",
            "secret": "pw",
            "array": "[1, 2, 3]",
            "nested.string": "n",
            "validatedDuration": "PT15S",
            "validatedTime": "11:27:49",
        },
    )
    assert values["instant"] == "2023-12-24T23:00:00Z"
    assert values["nested"]["string"] == "n" and values["nested"]["more"] == {"int": None}
    assert values["yaml"]["list"][1] == {"key": "key2", "value": "value2"}
    assert values["empty"] == "" and values["instantDefaults"] == "2013-08-09T14:19:00Z"
    assert json.loads(json.dumps(values)) == values


@given(st.timedeltas(min_value=dt.timedelta(0), max_value=dt.timedelta(days=3650)))
def test_a_duration_written_back_parses_to_the_same_duration(value: dt.timedelta) -> None:
    assert parse_duration(iso_duration(value)) == value


@given(
    st.datetimes(
        min_value=dt.datetime(1900, 1, 1),
        max_value=dt.datetime(2200, 1, 1),
        timezones=st.just(dt.UTC),
    )
)
def test_a_datetime_stored_and_given_again_is_the_same_value(value: dt.datetime) -> None:
    flow = _flow("  - id: x\n    type: DATETIME")
    stored = resolve_inputs(flow, {"x": value.isoformat()})["x"]
    assert resolve_inputs(flow, {"x": stored})["x"] == stored
    assert dt.datetime.fromisoformat(stored.replace("Z", "+00:00")) == value
