"""Kestra's expression and input details, as Kestra's own documentation uses them."""

from __future__ import annotations

import pytest

from engine.commands import create_execution, deploy_flow
from engine.errors import FlowValidationError, InputValidationError
from engine.flow import parse_flow
from engine.inputs import resolve_inputs
from engine.server import ServerContext
from tests.integration.conftest import run_flow


def _runs(state):  # type: ignore[no-untyped-def]
    return {r.taskId: r for r in state.taskruns.values()}


async def test_kestra_documented_retry_example_succeeds_on_its_fifth_attempt(
    engine: ServerContext, ns: str
) -> None:
    # The example of Kestra's retries page and "retries" blueprint: "this flow retries 4 times
    # and succeeds on the 5th attempt", since attemptsCount counts the attempts made before.
    source = f"""
id: retry
namespace: {ns}
description: This flow retries 4 times and succeeds on the 5th attempt
tasks:
  - id: failed
    type: io.kestra.plugin.scripts.shell.Commands
    taskRunner:
      type: io.kestra.plugin.core.runner.Process
    commands:
      - 'if [ "{{{{taskrun.attemptsCount}}}}" -eq 4 ]; then exit 0; else exit 1; fi'
    retry:
      type: constant
      interval: PT0.25S
      maxAttempt: 5
      maxDuration: PT1M
      warningOnRetry: true
errors:
  - id: never_happen
    type: io.kestra.plugin.core.debug.Return
    format: Never happened {{{{task.id}}}}
"""
    state = await run_flow(engine, source)
    runs = _runs(state)
    assert len(runs["failed"].attempts) == 5
    assert [a.state for a in runs["failed"].attempts] == ["FAILED"] * 4 + ["SUCCESS"]
    assert runs["failed"].state == "WARNING"  # warningOnRetry
    assert "never_happen" not in runs
    assert state.state == "WARNING"


async def test_kestra_corpus_retry_success_ends_after_four_attempts(
    engine: ServerContext, ns: str
) -> None:
    # Kestra's own test flow retry-success.yaml: it succeeds when attemptsCount == 3, the
    # fourth attempt, and Kestra's test expects 4 attempts in WARNING.
    source = f"""
id: retry-success
namespace: {ns}
tasks:
- id: failed
  type: io.kestra.plugin.core.log.Log
  message: "{{{{ taskrun.attemptsCount == 3 ? 'ok' : ko}}}}"
  retry:
    type: constant
    interval: PT0.1S
    maxAttempt: 4
    maxDuration: PT15S
    warningOnRetry: true
errors:
  - id: never-happen
    type: io.kestra.plugin.core.log.Log
    message: Never {{{{task.id}}}}
"""
    state = await run_flow(engine, source)
    runs = _runs(state)
    assert len(runs["failed"].attempts) == 4
    assert state.state == "WARNING"


async def test_first_attempt_sees_attempts_count_zero(engine: ServerContext, ns: str) -> None:
    source = f"""
id: count
namespace: {ns}
tasks:
  - id: first
    type: io.kestra.plugin.core.debug.Return
    format: "{{{{ taskrun.attemptsCount }}}}"
"""
    state = await run_flow(engine, source)
    assert _runs(state)["first"].outputs == {"value": "0"}


def _flow_with_inputs(ns: str, inputs: str) -> str:
    return f"""
id: prefilled
namespace: {ns}
inputs:
{inputs}
tasks:
  - id: show
    type: io.kestra.plugin.core.debug.Return
    format: "{{{{ inputs.region ?? 'none' }}}}"
"""


def test_prefill_is_not_applied_to_an_optional_input_left_empty() -> None:
    flow = parse_flow(
        _flow_with_inputs(
            "test.prefill",
            "  - id: region\n    type: STRING\n    prefill: eu-west-1\n    required: false\n",
        )
    )
    assert resolve_inputs(flow, {}) == {"region": None}
    assert resolve_inputs(flow, {"region": ""}) == {"region": None}
    assert resolve_inputs(flow, {"region": "us-east-1"}) == {"region": "us-east-1"}


def test_required_input_with_only_a_prefill_left_empty_is_an_error() -> None:
    flow = parse_flow(
        _flow_with_inputs("test.prefill", "  - id: region\n    type: STRING\n    prefill: eu\n")
    )
    with pytest.raises(InputValidationError) as caught:
        resolve_inputs(flow, {})
    assert "region" in str(caught.value) and "prefill" in str(caught.value)


def test_prefill_and_defaults_on_one_input_is_refused_at_its_line() -> None:
    source = _flow_with_inputs(
        "test.prefill",
        "  - id: region\n    type: STRING\n    defaults: eu\n    prefill: us\n",
    )
    with pytest.raises(FlowValidationError) as caught:
        parse_flow(source)
    [problem] = caught.value.details
    assert problem.path == "inputs[0].prefill" and problem.line is not None


def test_prefill_of_the_wrong_type_is_refused() -> None:
    source = _flow_with_inputs(
        "test.prefill", "  - id: region\n    type: INT\n    prefill: many\n    required: false\n"
    )
    with pytest.raises(FlowValidationError) as caught:
        parse_flow(source)
    assert caught.value.details[0].path == "inputs[0].prefill"


async def test_optional_prefilled_input_left_empty_runs_with_null(
    engine: ServerContext, ns: str
) -> None:
    source = _flow_with_inputs(
        ns, "  - id: region\n    type: STRING\n    prefill: eu-west-1\n    required: false\n"
    )
    state = await run_flow(engine, source)
    assert state.inputs == {"region": None}
    assert _runs(state)["show"].outputs == {"value": "none"}


async def test_required_prefilled_input_left_empty_starts_nothing(
    engine: ServerContext, ns: str
) -> None:
    source = _flow_with_inputs(ns, "  - id: region\n    type: STRING\n    prefill: eu-west-1\n")
    record = await deploy_flow(engine.store, source)
    with pytest.raises(InputValidationError):
        await create_execution(engine.store, record.namespace, record.id, {})
