"""Through a real server: a hostile template fails its own task run quickly, with a message
naming the limit, and `/health` keeps answering while templates render (they render off the
event loop that serves the API, in the executor and in the worker alike)."""

from __future__ import annotations

import time
import uuid
from typing import Any

import httpx
import pytest
import trio

from engine import templating
from tests.api.conftest import client, server  # noqa: F401 - the fixtures of a real server

YAML = {"Content-Type": "application/x-yaml"}
SLOW = (
    "{% macro f(n) %}{% if n > 0 %}{{ f(n - 1) }}{{ f(n - 1) }}{% endif %}{% endmacro %}{{ f(40) }}"
)
"""A template that only the time limit stops (2**40 macro calls, nothing counted)."""


def _flow(ns: str, flow_id: str, task: str) -> str:
    return f"id: {flow_id}\nnamespace: {ns}\ntasks:\n{task}"


def _quoted(template: str) -> str:
    return "'" + template.replace("'", "''") + "'"


async def _run(http: httpx.AsyncClient, source: str) -> dict[str, Any]:
    deployed = await http.post("/api/v1/flows", content=source, headers=YAML)
    assert deployed.status_code == 200, deployed.text
    flow = deployed.json()
    started = await http.post(f"/api/v1/executions/{flow['namespace']}/{flow['id']}?wait=true")
    assert started.status_code == 200, started.text
    execution: dict[str, Any] = started.json()
    return execution


async def _run_watching_health(
    http: httpx.AsyncClient, source: str
) -> tuple[dict[str, Any], float, int]:
    """Run the flow while asking /health every 50 ms: the execution, the slowest answer (s) and
    how many answers came."""
    slowest = 0.0
    answers = 0
    result: dict[str, Any] = {}

    async def run(cancel: trio.CancelScope) -> None:
        result.update(await _run(http, source))
        cancel.cancel()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(run, nursery.cancel_scope)
        while True:
            started = time.monotonic()
            response = await http.get("/health")
            assert response.status_code == 200
            slowest = max(slowest, time.monotonic() - started)
            answers += 1
            await trio.sleep(0.05)
    return result, slowest, answers


def _failure(execution: dict[str, Any], task_id: str) -> str:
    assert execution["state"]["current"] == "FAILED", execution
    runs = [r for r in execution["taskRunList"] if r["taskId"] == task_id]
    assert runs and runs[0]["state"]["current"] == "FAILED", execution
    return str(runs[0].get("message", ""))


@pytest.mark.parametrize(
    ("template", "limit"),
    [
        ("{% for i in range(0, 10**8) %}{% endfor %}", "at most 1000000"),
        (
            "{% for i in range(0, 10000) %}{% for j in range(0, 10000) %}{% endfor %}{% endfor %}",
            "loops ran more than 1000000 iterations",
        ),
        ("{{ 'a' * 10**9 }}", "too large"),
        ("{{ 2 ** 1000000000 }}", "too large to compute"),
    ],
)
async def test_hostile_log_message_fails_its_task_quickly_with_the_limit(
    client: httpx.AsyncClient,  # noqa: F811
    template: str,
    limit: str,
) -> None:
    ns = f"test.tpl{uuid.uuid4().hex[:10]}"
    task = f"  - id: hostile\n    type: io.kestra.plugin.core.log.Log\n    message: {_quoted(template)}\n"
    started = time.monotonic()
    execution, slowest, _ = await _run_watching_health(client, _flow(ns, "hostile", task))
    message = _failure(execution, "hostile")
    assert limit in message and template in message
    assert time.monotonic() - started < 10
    assert slowest < 1.0


@pytest.mark.parametrize(
    ("task", "task_id", "limit"),
    [
        (
            "  - id: branch\n    type: io.kestra.plugin.core.flow.If\n"
            "    condition: \"{{ 'a' * 10**9 }}\"\n    then:\n"
            "      - id: never\n        type: io.kestra.plugin.core.log.Log\n        message: x\n",
            "branch",
            "too large",
        ),
        (
            "  - id: choose\n    type: io.kestra.plugin.core.flow.Switch\n"
            "    value: '{% for i in range(0, 9999) %}{% for j in range(0, 9999) %}{% endfor %}"
            "{% endfor %}'\n    cases:\n      a:\n"
            "        - id: never\n          type: io.kestra.plugin.core.log.Log\n"
            "          message: x\n",
            "choose",
            "loops ran more than",
        ),
        (
            "  - id: each\n    type: io.kestra.plugin.core.flow.ForEach\n"
            "    values: \"{{ ['a' * 999999] * 999999 }}\"\n    tasks:\n"
            "      - id: never\n        type: io.kestra.plugin.core.log.Log\n        message: x\n",
            "each",
            "at most 16777216",
        ),
        (
            "  - id: give\n    type: io.kestra.plugin.core.debug.Return\n"
            "    format: \"{{ '%1000000000s' % 'a' }}\"\n",
            "give",
            "at most 16777216",
        ),
    ],
)
async def test_hostile_flow_control_and_task_properties_fail_their_task_run(
    client: httpx.AsyncClient,  # noqa: F811
    task: str,
    task_id: str,
    limit: str,
) -> None:
    ns = f"test.tpl{uuid.uuid4().hex[:10]}"
    execution = await _run(client, _flow(ns, "hostile", task))
    assert limit in _failure(execution, task_id)


@pytest.mark.parametrize(
    ("task", "task_id"),
    [
        # rendered by the worker
        (
            f"  - id: slow\n    type: io.kestra.plugin.core.log.Log\n    message: {_quoted(SLOW)}\n",
            "slow",
        ),
        # rendered by the executor
        (
            "  - id: slow\n    type: io.kestra.plugin.core.flow.If\n"
            f"    condition: {_quoted(SLOW)}\n    then:\n"
            "      - id: never\n        type: io.kestra.plugin.core.log.Log\n        message: x\n",
            "slow",
        ),
    ],
)
async def test_health_answers_promptly_while_a_template_runs_to_its_time_limit(
    client: httpx.AsyncClient,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
    task: str,
    task_id: str,
) -> None:
    monkeypatch.setattr(templating, "RENDER_TIMEOUT", 2.0)
    ns = f"test.tpl{uuid.uuid4().hex[:10]}"
    execution, slowest, answers = await _run_watching_health(client, _flow(ns, "slow", task))
    assert "longer than the time limit of one render" in _failure(execution, task_id)
    # /health was asked all along the 2 s the render took, and never waited for it
    assert answers >= 10
    assert slowest < 1.0
