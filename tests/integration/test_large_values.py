"""Large inputs and outputs live in internal storage: events carry their URI, every reader sees
the whole value."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from engine import events as ev
from engine.commands import create_execution, deploy_flow, load_execution, wait_for_end
from engine.db import Database
from engine.server import ServerContext
from engine.storage import LocalStorage
from engine.store import LARGE_VALUE_BYTES, _hydrate, _offload, unresolved

BIG = 400_000


async def _event_rows(db: Database, xid: str, type_: str) -> list[dict]:
    base = f"exec:{xid}"
    return await db.fetchall(
        "SELECT data, octet_length(data::text) AS bytes FROM events"
        " WHERE stream_id >= %s AND stream_id < %s AND type = %s ORDER BY seq",
        (base, base + "0", type_),
    )


async def test_a_large_output_is_stored_once_and_the_next_task_sees_all_of_it(
    engine: ServerContext, ns: str, db: Database, database_url: str, tmp_path: Path
) -> None:
    source = (
        f"id: big\nnamespace: {ns}\ntasks:\n"
        "  - id: make\n    type: io.kestra.plugin.core.debug.Return\n"
        f"    format: \"{{{{ 'x' * {BIG} }}}}\"\n"
        "  - id: measure\n    type: io.kestra.plugin.core.debug.Return\n"
        '    format: "{{ outputs.make.value | length }}"\n'
    )
    record = await deploy_flow(engine.store, source)
    xid = await create_execution(engine.store, record.namespace, record.id)
    state = await wait_for_end(engine.store, engine.notifier, xid, timeout=60)
    assert state.state == "SUCCESS"
    outputs = {r.taskId: r.outputs for r in state.taskruns.values()}
    assert outputs["measure"] == {"value": str(BIG)}
    assert len(outputs["make"]["value"]) == BIG
    [big, small] = await _event_rows(db, xid, "AttemptSucceeded")
    assert big["bytes"] < 2_000 and big["data"]["outputsUri"].startswith("kestra://")
    assert "outputsUri" not in small["data"]
    # The API's read of the execution folds the whole value back too.
    reread = await load_execution(engine.store, xid)
    assert {r.taskId: r.outputs for r in reread.taskruns.values()} == outputs
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "engine.cli",
            "sys",
            "verify",
            "--database-url",
            database_url,
            "--data-dir",
            str(tmp_path),
            "--execution",
            xid,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr


async def test_a_large_input_is_recorded_by_reference(
    engine: ServerContext, ns: str, db: Database
) -> None:
    source = (
        f"id: takes\nnamespace: {ns}\ninputs:\n  - id: text\n    type: STRING\ntasks:\n"
        "  - id: measure\n    type: io.kestra.plugin.core.debug.Return\n"
        '    format: "{{ inputs.text | length }}"\n'
    )
    record = await deploy_flow(engine.store, source)
    xid = await create_execution(engine.store, record.namespace, record.id, {"text": "y" * BIG})
    state = await wait_for_end(engine.store, engine.notifier, xid, timeout=60)
    assert state.state == "SUCCESS"
    [run] = state.taskruns.values()
    assert run.outputs == {"value": str(BIG)}
    [created] = await _event_rows(db, xid, "ExecutionCreated")
    assert created["bytes"] < 20_000 and created["data"]["inputsUri"].startswith("kestra://")


def test_a_value_whose_file_is_gone_is_reported_not_misread(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "storage")
    value = {"value": "z" * (LARGE_VALUE_BYTES + 1)}
    created = ev.ExecutionCreated(
        executionId="x1", namespace="test.large", flowId="f", flowRevision=1, flow={}, inputs=value
    )
    lean = _offload(created, storage)
    assert lean.inputs == {} and lean.inputsUri and unresolved(lean)
    back = _hydrate(lean, storage)
    assert back == created and unresolved(back) is None
    storage.delete_prefix("_events")
    lost = _hydrate(lean, storage)
    assert lost.inputs == {}
    reason = unresolved(lost)
    assert reason and "cannot be read" in reason and lean.inputsUri in reason
