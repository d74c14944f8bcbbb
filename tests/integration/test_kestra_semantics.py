"""Kestra's expression and input details, as Kestra's own documentation uses them."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
import yaml

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


# --- a Kestra configuration file, through the real command ----------------------------------------

TIERCEL = [sys.executable, "-m", "engine.cli"]

CONFIGURED_FLOW = """
id: configured
namespace: test.config
tasks:
  - id: values
    type: io.kestra.plugin.core.debug.Return
    format: "{{ envs.team }}/{{ globals.environment }}/{{ globals['my-var'] }}"
  - id: file
    type: io.kestra.plugin.scripts.shell.Commands
    commands:
      - echo "{{ globals.nested.region }}" > region.txt
    outputFiles:
      - region.txt
"""


def _jdbc(url: str) -> tuple[str, str | None, str | None]:
    """The test database as Kestra's `datasources.postgres` writes it."""
    parts = urlsplit(url)
    host = parts.netloc.rsplit("@", 1)[-1]
    return f"jdbc:postgresql://{host}{parts.path}?{parts.query}", parts.username, parts.password


def _kestra_config(tmp_path: Path, database_url: str, port: int) -> Path:
    jdbc, user, password = _jdbc(database_url)
    config = {
        "datasources": {"postgres": {"url": jdbc, "username": user, "password": password}},
        "micronaut": {"server": {"port": port}},
        "kestra": {
            "repository": {"type": "postgres"},
            "queue": {"type": "postgres"},
            "url": "http://localhost:8080/",
            "server": {"basic-auth": {"enabled": False}},
            "storage": {"type": "local", "local": {"base-path": str(tmp_path / "storage")}},
            "tasks": {"tmp-dir": {"path": str(tmp_path / "wd")}},
            "variables": {
                "env-vars-prefix": "KESTRA_",
                "globals": {"environment": "staging", "myVar": "mine", "nested": {"region": "eu"}},
            },
        },
    }
    path = tmp_path / "application.yml"
    path.write_text(yaml.safe_dump(config))
    return path


def _env() -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("TIERCEL_DATABASE_URL", "TIERCEL_STORAGE_DIR", "TIERCEL_ADMIN_PASSWORD")
    }
    env.update(KESTRA_TEAM="data-eng", TIERCEL_SECRET_THING="never shown")
    return env


def test_flow_test_renders_envs_and_globals_of_a_kestra_config(
    tmp_path: Path, database_url: str
) -> None:
    flow = tmp_path / "flow.yaml"
    flow.write_text(CONFIGURED_FLOW)
    config = _kestra_config(tmp_path, database_url, 8080)
    result = subprocess.run(
        [*TIERCEL, "flow", "test", str(flow), "--config", str(config), "--json",
         "--database-url", database_url],
        capture_output=True, text=True, timeout=120, env=_env(),
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    summary = json.loads(result.stdout)
    outputs = {r["taskId"]: r["outputs"] for r in summary["taskRuns"]}
    assert outputs["values"] == {"value": "data-eng/staging/mine"}
    # Kestra's keys Tiercel does not read are named once; none is a traceback.
    assert "not read by Tiercel, ignored: kestra.url" in result.stderr
    assert "Traceback" not in result.stderr


def test_wrong_value_in_a_kestra_config_is_one_line_naming_the_key(tmp_path: Path) -> None:
    flow = tmp_path / "flow.yaml"
    flow.write_text(CONFIGURED_FLOW)
    config = tmp_path / "bad.yml"
    config.write_text("kestra:\n  variables:\n    globals: [not, a, mapping]\n")
    result = subprocess.run(
        [*TIERCEL, "flow", "test", str(flow), "--config", str(config)],
        capture_output=True, text=True, timeout=60, env=_env(),
    )  # fmt: skip
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "`kestra.variables.globals` must be a mapping" in lines[0]


def test_server_runs_on_a_kestra_application_file(tmp_path: Path, database_url: str) -> None:
    port = _free_port()
    config = _kestra_config(tmp_path, database_url, port)
    log = tmp_path / "server.log"
    with log.open("wb") as out:
        # No --database-url, --port or --no-auth: all of it comes from Kestra's keys.
        server = subprocess.Popen(
            [*TIERCEL, "server", "standalone", "--config", str(config)],
            env=_env(), stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    base = f"http://127.0.0.1:{port}/api/v1"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{base[:-7]}/health/readiness", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert server.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        ns = f"test.c{uuid.uuid4().hex[:10]}"
        source = CONFIGURED_FLOW.replace("test.config", ns)
        created = httpx.post(
            f"{base}/flows", content=source, headers={"Content-Type": "application/x-yaml"}
        )
        assert created.status_code == 200, created.text
        run = httpx.post(f"{base}/executions/{ns}/configured?wait=true", timeout=60)
        assert run.status_code == 200, run.text
        execution = run.json()
        assert execution["state"]["current"] == "SUCCESS", execution
        outputs = {t["taskId"]: t.get("outputs") for t in execution["taskRunList"]}
        assert outputs["values"] == {"value": "data-eng/staging/mine"}
        # Task files live under Kestra's storage base-path, working dirs under its tmp-dir.
        stored = list((tmp_path / "storage").rglob("region.txt"))
        assert [p.read_text() for p in stored] == ["eu\n"]
        assert list((tmp_path / "wd").glob("*.lock"))

        # A property accepted but not honoured is a warning in the answers, at its line.
        warned = IGNORED_PROPERTIES.replace("test.warn", ns)
        checked = httpx.post(
            f"{base}/flows/validate", content=warned, headers={"Content-Type": "application/x-yaml"}
        )
        assert checked.status_code == 200, checked.text
        [entry] = checked.json()
        assert any(w.startswith("5:3 sla: ") for w in entry["warnings"]), entry
        saved = httpx.post(
            f"{base}/flows", content=warned, headers={"Content-Type": "application/x-yaml"}
        )
        assert saved.status_code == 200, saved.text
        assert saved.json()["warnings"] == entry["warnings"]
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)
    text = log.read_text()
    assert "not read by Tiercel, ignored: kestra.url" in text
    assert f"Flow {ns}.ignored revision 1: 5:3 sla: Flow SLAs are not checked" in text
    assert text.count("not read by Tiercel") == 1


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- nothing accepted and silently ignored ---------------------------------------------------------

IGNORED_PROPERTIES = """id: ignored
namespace: test.warn

sla:
  - id: too_long
    type: MAX_DURATION
    behavior: FAIL
    duration: PT1H
tasks:
  - id: in_docker
    type: io.kestra.plugin.scripts.shell.Commands
    taskRunner:
      type: io.kestra.plugin.scripts.runner.docker.Docker
    containerImage: ubuntu:22.04
    commands:
      - echo hi
  - id: on_process
    type: io.kestra.plugin.scripts.shell.Commands
    taskRunner:
      type: io.kestra.plugin.core.runner.Process
    containerImage: ubuntu:22.04
    commands:
      - echo hi
triggers:
  - id: nightly
    type: io.kestra.plugin.core.trigger.Schedule
    cron: "0 2 * * *"
"""


def test_properties_accepted_but_not_honoured_are_warnings_at_their_lines() -> None:
    warnings: list = []
    flow = parse_flow(IGNORED_PROPERTIES, warnings=warnings)
    assert flow.id == "ignored"  # still valid
    found = {(w.line, w.path): w.message for w in warnings}
    assert set(found) == {
        (5, "sla"),
        (13, "tasks[0].taskRunner"),
        (14, "tasks[0].containerImage"),
    }
    assert "io.kestra.plugin.scripts.runner.docker.Docker" in found[(13, "tasks[0].taskRunner")]
    assert "ubuntu:22.04" in found[(14, "tasks[0].containerImage")]
    # On the process runner Kestra ignores the image too: nothing differs, nothing is said.
    assert not any(w.path.startswith("tasks[1]") for w in warnings)


def test_plain_flow_has_no_warnings() -> None:
    warnings: list = []
    parse_flow(CONFIGURED_FLOW, warnings=warnings)
    assert warnings == []


def test_flow_validate_prints_warnings_naming_the_line(tmp_path: Path) -> None:
    flow = tmp_path / "ignored.yaml"
    flow.write_text(IGNORED_PROPERTIES)
    result = subprocess.run(
        [*TIERCEL, "flow", "validate", str(flow)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"warning: {flow}:5:3 sla: Flow SLAs are not checked yet" in result.stdout
    assert f"warning: {flow}:13:7 tasks[0].taskRunner" in result.stdout
