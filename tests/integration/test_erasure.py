"""Erasure without rewriting history: what users give an execution (its inputs, SECRET or
not, its resume values) is recorded sealed with the execution's own key, so the raw `events`
table never holds it in clear; purging the execution destroys the key, after which the events
are still there and still replay, its values read as `<erased>`, and its read-model rows, logs
and files are gone. A real server runs real scripts; the events are searched with SQL."""

from __future__ import annotations

import base64
import datetime as dt
import os
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from engine import events as ev
from engine import secrets
from engine.server import ServerContext
from engine.storage import LocalStorage, execution_prefix
from engine.store import StoredEvent
from tests.integration.conftest import deploy, events_holding, sha256, task_outputs
from tests.integration.test_verify import _verify as verify_process


@pytest.fixture
def ns() -> str:
    return f"test.e{uuid.uuid4().hex[:12]}"


def _needles(*values: str) -> list[str]:
    """Each value, and its base64 and hex (what a careless encoding would leave)."""
    found = []
    for value in values:
        data = value.encode()
        found += [value, base64.b64encode(data).decode().rstrip("="), data.hex()]
    return found


async def _until(client: httpx.AsyncClient, execution_id: str, states: set[str]) -> Any:
    with trio.fail_after(60):
        while True:
            answer = await client.get(f"/api/v1/executions/{execution_id}")
            if answer.status_code == 200 and answer.json()["state"]["current"] in states:
                return answer.json()
            await trio.sleep(0.1)


async def _settled(server: ServerContext, sql: str, args: tuple[Any, ...], want: bool) -> bool:
    """Whether the read model comes to hold (or no longer hold) the rows of `sql` in time
    (the projections run beside the API)."""
    with trio.move_on_after(30):
        while bool(await server.db.fetchall(sql, args)) != want:
            await trio.sleep(0.1)
        return True
    return False


ERASABLE = """
id: erasable
namespace: {ns}
inputs:
  - id: name
    type: STRING
  - id: pw
    type: SECRET
tasks:
  - id: check
    type: io.kestra.plugin.core.flow.If
    condition: "{{{{ inputs.name | length == 38 }}}}"
    then:
      - id: script
        type: io.kestra.plugin.scripts.shell.Commands
        env:
          PW: "{{{{ inputs.pw }}}}"
        outputFiles: ["kept.txt"]
        commands:
          - echo "started"
          - printf %s "{{{{ inputs.name }}}}" | sha256sum | cut -c1-64 > kept.txt
          - |
            echo "::{{\\"outputs\\": {{\\"name\\": \\"$(cat kept.txt)\\", \\"pw\\": \\"$(printf %s "$PW" | sha256sum | cut -c1-64)\\"}}}}::"
    else:
      - id: wrong
        type: io.kestra.plugin.core.execution.Fail
        errorMessage: "the If did not see the input"
"""


async def test_an_executions_inputs_are_sealed_in_its_events_and_erased_by_a_purge(
    server: ServerContext, client: httpx.AsyncClient, ns: str
) -> None:
    name = f"erase-{uuid.uuid4().hex}"
    pw = f"pw-{uuid.uuid4().hex}"
    await deploy(client, ERASABLE.format(ns=ns))

    started = await client.post(
        f"/api/v1/executions/{ns}/erasable?wait=true", json={"name": name, "pw": pw}
    )
    assert started.status_code == 200, started.text
    execution = started.json()
    xid = execution["id"]

    # The If condition and the script saw the inputs' values.
    assert execution["state"]["current"] == "SUCCESS", execution
    assert task_outputs(execution, "script")["vars"] == {"name": sha256(name), "pw": sha256(pw)}
    # The API shows the STRING input, and masks the SECRET one.
    shown = (await client.get(f"/api/v1/executions/{xid}")).json()
    assert shown["inputs"] == {"name": name, "pw": "******"}
    # The raw log never holds either of them, in any event.
    for needle in _needles(name, pw):
        assert await events_holding(server, needle) == [], needle
    created = await server.db.fetchone(
        "SELECT data FROM events WHERE stream_id = %s AND type = 'ExecutionCreated'",
        (f"exec:{xid}",),
    )
    assert created is not None
    assert secrets.is_sealed(created["data"]["inputs"]["name"])
    assert secrets.is_encrypted(created["data"]["inputs"]["pw"])
    # Its read-model row, logs and file exist before the purge.
    assert await _settled(server, "SELECT 1 FROM executions WHERE id = %s", (xid,), True)
    assert await _settled(server, "SELECT 1 FROM logs WHERE execution_id = %s", (xid,), True)
    file_uri = task_outputs(execution, "script")["outputFiles"]["kept.txt"]
    before = await client.get(f"/api/v1/executions/{xid}/file", params={"path": file_uri})
    assert before.status_code == 200 and before.text.strip() == sha256(name)
    assert isinstance(server.storage, LocalStorage)
    root = server.storage.root

    def files_of(execution_id: str) -> Path:
        return root / execution_prefix(ns, "erasable", execution_id).lstrip("/")

    assert files_of(xid).exists()
    last = await server.db.fetchone(
        "SELECT max(seq) AS seq FROM events WHERE stream_id LIKE %s", (f"exec:{xid}%",)
    )
    assert last is not None

    assert (await client.delete(f"/api/v1/executions/{xid}")).status_code == 204

    # The key is gone, the events stay, and what they sealed reads as <erased>.
    assert not await server.db.fetchall(
        "SELECT 1 FROM execution_keys WHERE execution_id = %s", (xid,)
    )
    assert (await client.get(f"/api/v1/executions/{xid}")).status_code == 404
    as_it_was = await client.get(f"/api/v1/executions/{xid}", params={"at": last["seq"]})
    assert as_it_was.status_code == 200, as_it_was.text
    assert as_it_was.json()["inputs"] == {"name": secrets.ERASED, "pw": secrets.ERASED}
    assert as_it_was.json()["state"]["current"] == "SUCCESS"
    recorded = (await client.get(f"/api/v1/executions/{xid}/events")).json()
    first = next(e for e in recorded if e["type"] == "ExecutionCreated")
    assert first["data"]["inputs"] == {"name": secrets.ERASED, "pw": secrets.ERASED}
    assert any(e["type"] == "ExecutionPurged" for e in recorded)
    # Read-model row, logs and files are gone.
    assert await _settled(server, "SELECT 1 FROM executions WHERE id = %s", (xid,), False)
    assert await _settled(server, "SELECT 1 FROM logs WHERE execution_id = %s", (xid,), False)
    assert not files_of(xid).exists()
    # And the history still replays.
    verified = await trio.to_thread.run_sync(lambda: verify_process(server.url, "--execution", xid))
    assert verified.returncode == 0, verified.stdout + verified.stderr


PAUSED = """
id: paused
namespace: {ns}
tasks:
  - id: gate
    type: io.kestra.plugin.core.flow.Pause
    onResume:
      - id: answer
        type: STRING
      - id: code
        type: SECRET
  - id: decide
    type: io.kestra.plugin.core.flow.If
    condition: "{{{{ outputs.gate.onResume.answer | length == 39 }}}}"
    then:
      - id: use
        type: io.kestra.plugin.scripts.shell.Commands
        env:
          C: "{{{{ outputs.gate.onResume.code }}}}"
        commands:
          - |
            echo "::{{\\"outputs\\": {{\\"answer\\": \\"$(printf %s "{{{{ outputs.gate.onResume.answer }}}}" | sha256sum | cut -c1-64)\\", \\"code\\": \\"$(printf %s "$C" | sha256sum | cut -c1-64)\\"}}}}::"
    else:
      - id: wrong
        type: io.kestra.plugin.core.execution.Fail
        errorMessage: "the If did not see the resume value"
"""


async def test_resume_values_are_sealed_used_by_the_next_tasks_and_erased_by_a_purge(
    server: ServerContext, client: httpx.AsyncClient, ns: str
) -> None:
    answer = f"answer-{uuid.uuid4().hex}"
    code = f"code-{uuid.uuid4().hex}"
    await deploy(client, PAUSED.format(ns=ns))
    started = await client.post(f"/api/v1/executions/{ns}/paused", json={})
    assert started.status_code == 200, started.text
    xid = started.json()["id"]
    await _until(client, xid, {"PAUSED"})

    resumed = await client.post(
        f"/api/v1/executions/{xid}/resume", json={"answer": answer, "code": code}
    )
    assert resumed.status_code in (200, 204), resumed.text
    execution = await _until(client, xid, {"SUCCESS", "FAILED", "WARNING", "KILLED"})

    assert execution["state"]["current"] == "SUCCESS", execution
    assert task_outputs(execution, "use")["vars"] == {
        "answer": sha256(answer),
        "code": sha256(code),
    }
    assert task_outputs(execution, "gate")["onResume"] == {"answer": answer, "code": "******"}
    for needle in _needles(answer, code):
        assert await events_holding(server, needle) == [], needle

    assert (await client.delete(f"/api/v1/executions/{xid}")).status_code == 204

    recorded = (await client.get(f"/api/v1/executions/{xid}/events")).json()
    resume = next(e for e in recorded if e["type"] == "ExecutionResumeRequested")
    assert resume["data"]["inputs"] == {"answer": secrets.ERASED, "code": secrets.ERASED}
    verified = await trio.to_thread.run_sync(lambda: verify_process(server.url, "--execution", xid))
    assert verified.returncode == 0, verified.stdout + verified.stderr


def test_events_recorded_with_clear_inputs_read_as_they_were() -> None:
    old = StoredEvent(
        1,
        "exec:old",
        0,
        "ExecutionCreated",
        ev.ExecutionCreated(
            executionId="old",
            namespace="a",
            flowId="f",
            flowRevision=1,
            flow={},
            inputs={"name": "clear", "n": 3},
            trigger={
                "id": "hook",
                "type": "io.kestra.plugin.core.trigger.Webhook",
                "variables": {"body": {"a": 1}},
            },
        ),
        {},
        dt.datetime.now(dt.UTC),
    )
    # Nothing sealed: nothing is opened, and the database is not asked (no connection given).
    [read] = secrets.open_events(None, [old])  # type: ignore[arg-type]
    assert read is old


def test_a_sealed_value_opens_only_with_its_key() -> None:
    key, other = os.urandom(32), os.urandom(32)
    value = {"nested": [1, "two", None], "n": 1.5}
    sealed = secrets.seal_value(key, value)
    assert secrets.is_sealed(sealed)
    assert secrets.open_value(key, sealed) == value
    with pytest.raises(ValueError):
        secrets.open_value(other, sealed)


SUBFLOW_CHILD = """
id: child
namespace: {ns}
inputs:
  - id: given
    type: STRING
tasks:
  - id: check
    type: io.kestra.plugin.core.flow.If
    condition: "{{{{ inputs.given | length == 38 }}}}"
    then:
      - id: fine
        type: io.kestra.plugin.core.log.Log
        message: "a value of the right length"
    else:
      - id: wrong
        type: io.kestra.plugin.core.execution.Fail
        errorMessage: "the child did not see its input"
"""

SUBFLOW_PARENT = """
id: parent
namespace: {ns}
inputs:
  - id: name
    type: STRING
tasks:
  - id: call
    type: io.kestra.plugin.core.flow.Subflow
    namespace: {ns}
    flowId: child
    wait: true
    transmitFailed: true
    inputs:
      given: "{{{{ inputs.name }}}}"
"""


async def test_an_input_passed_to_a_subflow_is_sealed_in_the_request_and_in_the_child(
    server: ServerContext, client: httpx.AsyncClient, ns: str
) -> None:
    name = f"child-{uuid.uuid4().hex}"
    await deploy(client, SUBFLOW_CHILD.format(ns=ns))
    await deploy(client, SUBFLOW_PARENT.format(ns=ns))

    started = await client.post(f"/api/v1/executions/{ns}/parent?wait=true", json={"name": name})
    assert started.status_code == 200, started.text
    execution = started.json()

    assert execution["state"]["current"] == "SUCCESS", execution
    child_id = task_outputs(execution, "call")["executionId"]
    child = (await client.get(f"/api/v1/executions/{child_id}")).json()
    assert child["state"]["current"] == "SUCCESS" and child["inputs"] == {"given": name}
    for needle in _needles(name):
        assert await events_holding(server, needle) == [], needle
    request = await server.db.fetchone(
        "SELECT data FROM events WHERE stream_id = %s AND type = 'SubflowExecutionRequested'",
        (f"exec:{execution['id']}",),
    )
    assert request is not None and secrets.is_sealed(request["data"]["inputs"]["given"])
