"""Parsing and validating flows: typed structs, and every problem at its line and field."""

from __future__ import annotations

import pytest

from engine.errors import FlowValidationError
from engine.flow import flow_from_dict, flow_to_dict, parse_flow
from engine.plugin import FlowableTask, canonical_name

GOOD = """\
id: hello
namespace: company.team
description: Says hello
labels:
  env: dev
inputs:
  - id: name
    type: STRING
    defaults: world
  - id: count
    type: INT
    required: false
variables:
  greeting: hello
tasks:
  - id: group
    type: io.kestra.plugin.core.flow.Sequential
    tasks:
      - id: say
        type: io.kestra.plugin.core.log.Log
        message: "{{ vars.greeting }} {{ inputs.name }}"
  - id: ret
    type: io.kestra.core.tasks.debugs.Return
    format: "{{ inputs.name }}"
outputs:
  - id: out
    type: STRING
    value: "{{ outputs.ret.value }}"
"""


def _problems(source: str) -> list[str]:
    with pytest.raises(FlowValidationError) as info:
        parse_flow(source)
    return [str(p) for p in info.value.details]


def test_valid_flow_parses_into_typed_tasks_inputs_and_outputs():
    flow = parse_flow(GOOD)
    assert (flow.id, flow.namespace, flow.labels) == ("hello", "company.team", {"env": "dev"})
    assert [i.id_ for i in flow.inputs] == ["name", "count"]
    assert flow.inputs[1].required is False
    group = flow.tasks[0]
    assert isinstance(group, FlowableTask)
    assert [t.id for t in group.branches()["tasks"]] == ["say"]
    assert flow.find_task("say") is not None
    assert flow.outputs[0].id_ == "out"


def test_deprecated_type_alias_resolves_to_the_same_task_type():
    flow = parse_flow(GOOD)
    assert canonical_name(type(flow.tasks[1])) == "io.kestra.plugin.core.debug.Return"


def test_flow_survives_a_round_trip_through_plain_data():
    flow = parse_flow(GOOD)
    again = flow_from_dict(flow_to_dict(flow))
    assert flow_to_dict(again) == flow_to_dict(flow)


def test_every_problem_is_reported_at_once_with_line_and_field_path():
    source = """\
id: bad flow
namespace: Bad
tasks:
  - id: a
    type: io.kestra.plugin.core.log.Log
  - id: a
    type: io.kestra.plugin.core.debug.Nope
  - id: c
    type: io.kestra.plugin.core.log.Log
    message: hi
    colour: blue
"""
    problems = _problems(source)
    assert any(p.startswith("1:5 id:") and "bad flow" in p for p in problems)
    assert any(p.startswith("2:12 namespace:") for p in problems)
    assert any("tasks[0].message" in p and "required" in p for p in problems)
    assert any(p.startswith("6:9 tasks[1].id") and "Duplicate task id 'a'" in p for p in problems)
    assert any(p.startswith("7:11 tasks[1].type") and "Unknown task type" in p for p in problems)
    assert any("tasks[2].colour" in p and "Unknown property" in p for p in problems)
    assert len(problems) >= 6


def test_wrong_property_type_names_the_nested_field():
    source = """\
id: f
namespace: ns
tasks:
  - id: seq
    type: io.kestra.plugin.core.flow.Sequential
    tasks:
      - id: p
        type: io.kestra.plugin.core.flow.Parallel
        concurrent: lots
        tasks:
          - id: l
            type: io.kestra.plugin.core.log.Log
            message: x
"""
    problems = _problems(source)
    assert any(p.startswith("9:21 tasks[0].tasks[0].concurrent") for p in problems), problems


def test_yaml_syntax_error_names_the_line():
    problems = _problems("id: x\nnamespace: y\ntasks: [\n  - id: a\n")
    assert len(problems) == 1 and "Invalid YAML" in problems[0]
    assert problems[0].split(":")[0].isdigit()


def test_empty_task_list_and_missing_tasks_are_rejected():
    assert any("tasks" in p for p in _problems("id: x\nnamespace: y\n"))
    assert any("empty" in p for p in _problems("id: x\nnamespace: y\ntasks: []\n"))


def test_duplicate_input_ids_and_unknown_input_type_are_rejected():
    source = """\
id: x
namespace: y
inputs:
  - id: a
    type: STRING
  - id: a
    type: STRING
  - id: b
    type: FOO
tasks:
  - id: t
    type: io.kestra.plugin.core.log.Log
    message: m
"""
    problems = _problems(source)
    assert any("Duplicate input id 'a'" in p for p in problems)
    assert any("Unknown input type 'FOO'" in p for p in problems)


def test_duplicate_yaml_key_is_rejected():
    source = "id: x\nnamespace: y\nnamespace: z\ntasks:\n  - id: t\n    type: io.kestra.plugin.core.log.Log\n    message: m\n"
    assert any("Duplicate key 'namespace'" in p for p in _problems(source))


def test_invalid_duration_of_sleep_is_rejected_at_validation():
    source = "id: x\nnamespace: y\ntasks:\n  - id: t\n    type: io.kestra.plugin.core.flow.Sleep\n    duration: soon\n"
    assert any("tasks[0].duration" in p and "ISO-8601" in p for p in _problems(source))


def test_plugin_defaults_fill_missing_properties_and_forced_ones_override() -> None:
    flow = parse_flow(
        """
id: defaults
namespace: test.flow
pluginDefaults:
  - type: io.kestra.plugin.core.log
    values:
      level: WARN
      message: from defaults
  - type: io.kestra.plugin.core.debug.Return
    forced: true
    values:
      format: forced
tasks:
  - id: own
    type: io.kestra.plugin.core.log.Log
    message: mine
  - id: filled
    type: io.kestra.plugin.core.log.Log
  - id: ret
    type: io.kestra.plugin.core.debug.Return
    format: ignored
"""
    )
    own, filled, ret = flow.tasks
    assert (own.message, own.level) == ("mine", "WARN")
    assert (filled.message, filled.level) == ("from defaults", "WARN")
    assert ret.format == "forced"


def test_bad_plugin_defaults_are_reported_where_they_are() -> None:
    with pytest.raises(FlowValidationError) as info:
        parse_flow(
            "id: d\nnamespace: test.flow\npluginDefaults:\n  - values: {a: 1}\n"
            "tasks:\n  - id: t\n    type: io.kestra.plugin.core.log.Log\n    message: x\n"
        )
    assert info.value.details[0].path == "pluginDefaults[0]"
