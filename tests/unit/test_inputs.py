"""Execution inputs: every Kestra type is converted or refused, naming the input."""

from __future__ import annotations

import pytest

from engine.errors import FlowValidationError, InputValidationError
from engine.flow import parse_flow
from engine.inputs import resolve_inputs

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
tasks:
  - id: t
    type: io.kestra.plugin.core.log.Log
    message: hi
"""


@pytest.fixture(scope="module")
def flow():
    return parse_flow(FLOW)


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
    assert values["doc"] == {"a": [1, 2]} and values["conf"] == {"a": 1, "b": ["x"]}
    assert values["picks"] == ["a", "c"] and values["nums"] == [1, 2, 3]
    assert values["legacy"] == "old"


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


def test_every_missing_required_input_is_reported_at_once(flow) -> None:
    with pytest.raises(InputValidationError) as info:
        resolve_inputs(flow, {})
    assert {p.path for p in info.value.details} == {"inputs.name", "inputs.count"}


@pytest.mark.parametrize(
    ("definition", "words"),
    [
        ("- id: x\n    type: STRING\n    validator: '[a-'", "Invalid regular expression"),
        ("- id: x\n    type: NOPE", "NOPE"),
        ("- id: x\n    type: ARRAY", "itemType"),
        ("- id: x\n    type: SELECT", "values"),
        ("- id: x\n    type: STRING\n  - id: x\n    type: INT", "Duplicate"),
    ],
)
def test_bad_input_definitions_are_rejected_at_validation(definition, words) -> None:
    source = (
        "id: f\nnamespace: test.inputs\ninputs:\n  "
        + definition
        + "\ntasks:\n  - id: t\n    type: io.kestra.plugin.core.log.Log\n    message: hi\n"
    )
    with pytest.raises(FlowValidationError) as info:
        parse_flow(source)
    assert any(words in str(p) for p in info.value.details), info.value.details
