"""Faults that stay inside their execution, checked end to end, and `tiercel sys verify` run in
a fresh process over what was recorded."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from engine.commands import create_execution, deploy_flow, wait_for_end
from engine.db import Database
from engine.server import ServerContext
from tests.conftest import SESSION_START
from tests.integration.conftest import run_flow

TIERCEL = [sys.executable, "-m", "engine.cli"]


def _verify(database_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    """`tiercel sys verify` in a process of its own (so nothing cached here can hide a
    difference)."""
    return subprocess.run(
        [*TIERCEL, "sys", "verify", "--database-url", database_url, *args],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=Path(__file__).resolve().parents[2],
    )


def _one_task(ns: str, task: str) -> str:
    return f"id: f\nnamespace: {ns}\ntasks:\n{task}"


@pytest.mark.parametrize(
    ("task", "expected"),
    [
        (
            "  - id: t\n    type: io.kestra.plugin.core.debug.Return\n"
            "    format: \"{{ jq({}, 'now') }}\"\n",
            "now",
        ),
        (
            "  - id: t\n    type: io.kestra.plugin.core.debug.Return\n"
            "    format: \"{{ jq({}, 'env') }}\"\n",
            "env",
        ),
        (
            "  - id: t\n    type: io.kestra.plugin.core.log.Log\n    message: hi\n"
            "    runIf: \"{{ ''.__class__.__mro__ }}\"\n",
            "__class__",
        ),
    ],
    ids=["jq-now", "jq-env", "sandbox-in-runIf"],
)
async def test_expressions_that_reach_outside_fail_their_task_run_and_verify_passes(
    engine: ServerContext, ns: str, database_url: str, task: str, expected: str
) -> None:
    state = await run_flow(engine, _one_task(ns, task))
    assert state.state == "FAILED"
    [run] = state.taskruns.values()
    assert run.state == "FAILED"
    assert expected in (run.message or ""), run.message
    result = _verify(database_url, "--execution", state.id)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 execution(s)" in result.stdout


async def test_a_bad_retry_interval_fails_its_execution_and_the_engine_goes_on(
    engine: ServerContext, ns: str
) -> None:
    bad = _one_task(
        ns,
        "  - id: t\n    type: io.kestra.plugin.core.execution.Fail\n"
        "    retry:\n      type: constant\n      interval: \"{{ 'soon' }}\"\n      maxAttempt: 2\n",
    )
    state = await run_flow(engine, bad)
    assert state.state == "FAILED"
    [run] = state.taskruns.values()
    assert "interval" in (run.message or "")
    # The same engine still runs other executions.
    good = await run_flow(
        engine,
        f"id: g\nnamespace: {ns}\ntasks:\n"
        "  - id: r\n    type: io.kestra.plugin.core.debug.Return\n    format: ok\n",
    )
    assert good.state == "SUCCESS"


async def test_a_foreach_of_200_kilobyte_outputs_writes_under_a_megabyte_of_events(
    engine: ServerContext, ns: str, db: Database
) -> None:
    padding = "x" * 1000
    source = (
        f"id: big\nnamespace: {ns}\ntasks:\n"
        "  - id: each\n    type: io.kestra.plugin.core.flow.ForEach\n"
        '    values: "{{ range(1, 200) }}"\n    tasks:\n'
        "      - id: r\n        type: io.kestra.plugin.core.debug.Return\n"
        f'        format: "{{{{ taskrun.value }}}}{padding}"\n'
    )
    record = await deploy_flow(engine.store, source)
    xid = await create_execution(engine.store, record.namespace, record.id)
    state = await wait_for_end(engine.store, engine.notifier, xid, timeout=120)
    assert state.state == "SUCCESS"
    assert len(state.taskruns) == 201
    base = f"exec:{xid}"
    row = await db.fetchone(
        "SELECT sum(octet_length(data::text) + octet_length(meta::text)) AS bytes, count(*) AS n"
        " FROM events WHERE stream_id >= %s AND stream_id < %s",
        (base, base + "0"),
    )
    assert row is not None
    assert row["bytes"] < 1_000_000, f"{row['bytes']} bytes in {row['n']} events"


@pytest.mark.last
async def test_sys_verify_in_a_fresh_process_passes_on_every_execution_the_suite_recorded(
    db: Database, database_url: str
) -> None:
    row = await db.fetchone(
        "SELECT coalesce(min(seq), 1) - 1 AS since FROM events WHERE recorded_at >= %s",
        (SESSION_START,),
    )
    assert row is not None
    result = _verify(database_url, "--since", str(row["since"]))
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-2000:]
    assert "every history refolds" in result.stdout
