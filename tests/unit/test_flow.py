"""Parsing and validating flows: typed structs, and every problem at its line and field."""

from __future__ import annotations

import msgspec
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


# --- find_task answers from the flow it is asked on ----------------------------------------------


def _flow_with_task(task_id: str, message: str) -> str:
    return (
        f"id: f-{task_id}\nnamespace: test.find\ntasks:\n  - id: {task_id}\n"
        f"    type: io.kestra.plugin.core.log.Log\n    message: {message}\n"
    )


def test_find_task_answers_from_its_own_flow_after_others_are_collected() -> None:
    # Flows made and dropped one after another reuse the same memory (and so the same id()):
    # each must still find its own tasks, never those of a flow that lived there before.
    for i in range(200):
        flow = parse_flow(_flow_with_task("shared" if i % 2 else f"only{i}", f"m{i}"))
        if i % 2:
            task = flow.find_task("shared")
            assert task is not None and task.message == f"m{i}"
            assert flow.find_task(f"only{i - 1}") is None
        else:
            assert flow.find_task("shared") is None
            task = flow.find_task(f"only{i}")
            assert task is not None and task.message == f"m{i}"
        del flow, task  # freed at once: the next flow may take its place in memory


def test_find_task_of_a_replaced_flow_sees_the_new_tasks() -> None:
    flow = parse_flow(GOOD)
    assert flow.find_task("ret") is not None
    other = parse_flow(_flow_with_task("fresh", "x"))
    replaced = msgspec.structs.replace(flow, tasks=other.tasks)
    assert replaced.find_task("fresh") is not None
    assert replaced.find_task("ret") is None
    assert flow.find_task("fresh") is None


def test_find_task_cache_is_not_encoded_with_the_flow() -> None:
    flow = parse_flow(GOOD)
    assert flow.find_task("say") is not None
    assert "_task_index" not in flow_to_dict(flow)
    assert flow_from_dict(flow_to_dict(flow)) == flow


# --- retry policies are checked when the flow is saved --------------------------------------------

RETRY_FLOW = """\
id: retries
namespace: test.retry
tasks:
  - id: t
    type: io.kestra.plugin.core.log.Log
    message: hi
    retry:
{policy}
"""


def _retry_problems(policy: str) -> list[str]:
    indented = "\n".join("      " + line for line in policy.strip().splitlines())
    return _problems(RETRY_FLOW.format(policy=indented))


def test_retry_with_a_bad_interval_is_rejected_at_its_line() -> None:
    problems = _retry_problems("type: constant\ninterval: soon\nmaxAttempt: 3")
    assert len(problems) == 1
    assert problems[0].startswith("9:17 tasks[0].retry.interval:")
    assert "'soon' is not an ISO-8601 duration such as PT30S" in problems[0]


@pytest.mark.parametrize(
    ("policy", "where", "says"),
    [
        ("type: sometimes\nmaxAttempt: 3", "8:13 tasks[0].retry.type", "use one of constant"),
        ("maxAttempt: 3\ninterval: PT1S", "8:7 tasks[0].retry", "needs a `type`"),
        ("type: exponential\ninterval: PT1S\nmaxInterval: 5 minutes", "retry.maxInterval", "PT5M"),
        ("type: random\nminInterval: PT1\nmaxInterval: PT5S", "retry.minInterval", "ISO-8601"),
        ("type: constant\ninterval: PT1S\nmaxDuration: 60", "retry.maxDuration", "not 60"),
        ("type: constant\ninterval: PT1S\nmaxAttempt: 0", "retry.maxAttempt", "at least 1"),
        ("type: constant\ninterval: PT1S\nmaxAttempts: three", "retry.maxAttempts", "at least 1"),
        ("type: constant\ninterval: PT1S\nmaxAttempt: 2.5", "retry.maxAttempt", "whole number"),
        ("type: exponential\ninterval: PT1S\ndelayFactor: fast", "retry.delayFactor", "number"),
        ("type: constant\ninterval: PT1S\nbehavior: AGAIN", "retry.behavior", "RETRY_FAILED_TASK"),
        ("type: constant\ninterval: PT1S\nwarningOnRetry: maybe", "retry.warningOnRetry", "true"),
        ("type: constant\ninterval: PT1S\nmaxAttemps: 3", "retry.maxAttemps", "Unknown retry"),
        ("type: constant\ninterval: PT1S\ndelayFactor: 2", "retry.delayFactor", "exponential"),
        ("type: random\nminInterval: PT9S\nmaxInterval: PT1S", "retry.minInterval", "longer"),
    ],
)
def test_bad_retry_policy_names_the_field_and_what_to_write(
    policy: str, where: str, says: str
) -> None:
    problems = _retry_problems(policy)
    assert any(where in p and says in p for p in problems), problems
    assert all(p.split(":")[0].isdigit() for p in problems), problems  # each has its line


def test_bad_flow_level_retry_is_rejected_at_its_line() -> None:
    source = """\
id: retries
namespace: test.retry
retry:
  type: constant
  interval: PT1S
  maxAttempt: -1
tasks:
  - id: t
    type: io.kestra.plugin.core.log.Log
    message: hi
"""
    problems = _problems(source)
    assert len(problems) == 1 and problems[0].startswith("6:15 retry.maxAttempt:"), problems


@pytest.mark.parametrize(
    "policy",
    [
        "type: constant\ninterval: PT0.25s\nmaxAttempt: 3\nmaxDuration: PT15S\n"
        "warningOnRetry: true",
        "type: exponential\ninterval: PT1S\nmaxInterval: PT5M\ndelayFactor: 1.5\nmaxAttempt: 4",
        "type: random\nminInterval: PT0.20S\nmaxInterval: PT0.50S\nmaxAttempt: 3",
        "type: constant\ninterval: PT2S\nmaxDuration: PT6S\nbehavior: CREATE_NEW_EXECUTION",
        'type: constant\ninterval: "{{ vars.wait }}"\nmaxAttempt: "{{ inputs.tries }}"',
    ],
)
def test_valid_and_templated_retry_policies_are_accepted(policy: str) -> None:
    indented = "\n".join("      " + line for line in policy.splitlines())
    flow = parse_flow(RETRY_FLOW.format(policy=indented))
    assert flow.tasks[0].retry is not None


def test_retry_of_a_recorded_flow_is_read_as_it_was_accepted() -> None:
    # A flow recorded in an execution's history keeps the meaning it had when it was recorded.
    raw = flow_to_dict(parse_flow(GOOD))
    raw["tasks"][1]["retry"] = {"type": "constant", "interval": "PT1S", "jitter": True}
    assert flow_from_dict(raw).tasks[1].retry == raw["tasks"][1]["retry"]


def test_a_recorded_flow_is_read_as_recorded_even_when_todays_rules_refuse_it() -> None:
    # Recorded by a version that allowed upper-case namespaces and a task's own id twice.
    raw = {
        "id": "old",
        "namespace": "Legacy.Team",
        "tasks": [
            {"id": "t", "type": "io.kestra.plugin.core.log.Log", "message": "a"},
            {"id": "t", "type": "io.kestra.plugin.core.log.Log", "message": "b"},
        ],
    }
    flow = flow_from_dict(raw)
    assert flow.namespace == "Legacy.Team" and len(flow.tasks) == 2
    with pytest.raises(FlowValidationError):
        parse_flow(
            "id: old\nnamespace: Legacy.Team\ntasks:\n  - id: t\n    type: io.kestra.plugin.core.log.Log\n    message: a\n"
        )


def test_a_recorded_flow_whose_task_type_is_gone_cannot_be_read() -> None:
    raw = {"id": "old", "namespace": "legacy", "tasks": [{"id": "t", "type": "gone.Task"}]}
    with pytest.raises(FlowValidationError, match="Unknown task type"):
        flow_from_dict(raw)
