"""Secrets never leak: a real server runs flows whose scripts (real subprocesses) use secrets
from the environment, the namespace store and SECRET inputs; afterwards the raw `events` table,
the logs read model and the API's answers are searched for the values and hold none of them,
while the scripts provably received them."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from engine import secrets
from engine.server import ServerContext
from tests.conftest import ADMIN_PASSWORD
from tests.integration.conftest import deploy, events_holding, sha256, task_outputs
from tests.integration.test_verify import _verify as verify_process

TIERCEL = [sys.executable, "-m", "engine.cli"]


@pytest.fixture
def ns() -> str:
    return f"test.s{uuid.uuid4().hex[:12]}"


def _value(label: str) -> str:
    return f"{label}-{uuid.uuid4().hex}"


def _needles(*values: str) -> list[str]:
    """Each value, its base64 (as given and as `echo | base64` prints it) and its hex."""
    found = []
    for value in values:
        data = value.encode()
        found += [
            value,
            base64.b64encode(data).decode().rstrip("="),
            base64.b64encode(data + b"\n").decode().rstrip("="),
            data.hex(),
        ]
    return found


async def _run(client: httpx.AsyncClient, ns: str, flow_id: str, inputs: dict[str, Any]) -> Any:
    answer = await client.post(f"/api/v1/executions/{ns}/{flow_id}?wait=true", json=inputs)
    assert answer.status_code == 200, answer.text
    return answer.json()


LEAKY_FLOW = """
id: leaky
namespace: {ns}
inputs:
  - id: pw
    type: SECRET
tasks:
  - id: log
    type: io.kestra.plugin.core.log.Log
    message: "env {{{{ secret('ENV_TOKEN') }}}} store {{{{ secret('STORED') }}}} input {{{{ inputs.pw }}}}"
  - id: shell
    type: io.kestra.plugin.scripts.shell.Script
    env:
      TOKEN: "{{{{ secret('ENV_TOKEN') }}}}"
      STORED: "{{{{ secret('STORED') }}}}"
      PW: "{{{{ inputs.pw }}}}"
    script: |
      echo "token=$TOKEN stored=$STORED pw=$PW"
      echo "$TOKEN" | base64
      printf %s "$PW" | base64
      env
      echo "I am $(id -un), home $HOME" >&2
      sha=$(printf %s "$TOKEN" | sha256sum | cut -c1-64)
      stored=$(printf %s "$STORED" | sha256sum | cut -c1-64)
      pw=$(printf %s "$PW" | sha256sum | cut -c1-64)
      leaked=$(env | grep -E '^(SECRET_|TIERCEL_|PG)' | cut -d= -f1 | tr '\\n' ' ')
      echo "::{{\\"outputs\\": {{\\"sha\\": \\"$sha\\", \\"stored\\": \\"$stored\\", \\"pw\\": \\"$pw\\", \\"leaked\\": \\"$leaked\\", \\"raw\\": \\"$TOKEN\\"}}}}::"
  - id: python
    type: io.kestra.plugin.scripts.python.Script
    env:
      TOKEN: "{{{{ secret('ENV_TOKEN') }}}}"
    script: |
      import hashlib, os
      from kestra import Kestra
      print(dict(os.environ))
      Kestra.outputs({{"sha": hashlib.sha256(os.environ["TOKEN"].encode()).hexdigest(),
                      "names": sorted(os.environ)}})
  - id: output
    type: io.kestra.plugin.core.output.OutputValues
    values:
      token: "{{{{ secret('ENV_TOKEN') }}}}"
      nested: ["x", "{{{{ inputs.pw }}}}"]
  - id: kv
    type: io.kestra.plugin.core.kv.Set
    key: token
    value: "kept {{{{ secret('ENV_TOKEN') }}}}"
  - id: fail
    type: io.kestra.plugin.core.execution.Fail
    allowFailure: true
    errorMessage: "refused with {{{{ secret('ENV_TOKEN') }}}} and {{{{ secret('STORED') }}}}"
"""


async def test_secrets_reach_scripts_but_never_events_logs_or_api_answers(
    server: ServerContext, client: httpx.AsyncClient, ns: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    env_token, stored, pw = _value("envtok"), _value("stored"), _value("pw")
    monkeypatch.setenv("SECRET_ENV_TOKEN", base64.b64encode(env_token.encode()).decode())
    # In the parent namespace: a flow's namespace reads its parents' secrets too.
    parent, child = ns, f"{ns}.team"
    put = await client.put(f"/api/v1/namespaces/{parent}/secrets/STORED", json={"value": stored})
    assert put.status_code == 200, put.text
    await deploy(client, LEAKY_FLOW.format(ns=child))

    execution = await _run(client, child, "leaky", {"pw": pw})

    assert execution["state"]["current"] == "WARNING", execution  # only `fail` failed
    # The scripts really received the values...
    shell = task_outputs(execution, "shell")["vars"]
    assert shell["sha"] == sha256(env_token)
    assert shell["stored"] == sha256(stored)
    assert shell["pw"] == sha256(pw)
    assert shell["raw"] == "******"
    # ...in an environment holding nothing of the server's.
    assert shell["leaked"].strip() == ""
    python = task_outputs(execution, "python")["vars"]
    assert python["sha"] == sha256(env_token)
    assert not [n for n in python["names"] if n.startswith(("SECRET_", "TIERCEL_", "PG"))]
    assert {"PATH", "HOME", "TMPDIR", "WORKING_DIR", "OUTPUT_DIR", "TOKEN"} <= set(python["names"])
    # Outputs, failure messages and the SECRET input are masked where the API shows them.
    assert task_outputs(execution, "output")["values"] == {
        "token": "******",
        "nested": ["x", "******"],
    }
    kv = await server.db.fetchone(
        "SELECT data FROM events WHERE stream_id = %s", (f"kv:{child}/token",)
    )
    assert kv is not None and kv["data"]["value"] == "kept ******"
    fail = next(r for r in execution["taskRunList"] if r["taskId"] == "fail")
    assert execution["inputs"] == {"pw": "******"}
    answer = await client.get(f"/api/v1/executions/{execution['id']}")
    search = await client.get("/api/v1/executions/search", params={"namespace": child})
    logs = await client.get(f"/api/v1/logs/{execution['id']}")
    assert logs.status_code == 200
    messages = [line["message"] for line in logs.json()]
    assert any("refused with ****** and ******" in m for m in messages), messages
    assert "env ****** store ****** input ******" in messages
    assert "token=****** stored=****** pw=******" in messages
    assert any("'TOKEN': '******'" in m for m in messages), "the Python script's os.environ"

    needles = _needles(env_token, stored, pw)
    for text in (answer.text, search.text, logs.text, json.dumps(execution), json.dumps(fail)):
        for needle in needles:
            assert needle not in text
    rows = await server.db.fetchall(
        "SELECT message FROM logs WHERE execution_id = %s", (execution["id"],)
    )
    assert rows, "the logs read model holds the execution's lines"
    for row in rows:
        for needle in needles:
            assert needle not in row["message"]
    for needle in needles:
        assert await events_holding(server, needle) == [], needle
    # What the events hold instead: the input encrypted with the execution's own key.
    created = await server.db.fetchone(
        "SELECT data FROM events WHERE stream_id = %s AND type = 'ExecutionCreated'",
        (f"exec:{execution['id']}",),
    )
    assert created is not None
    assert secrets.is_encrypted(created["data"]["inputs"]["pw"])
    key = await server.db.fetchone(
        "SELECT wrapped FROM execution_keys WHERE execution_id = %s", (execution["id"],)
    )
    assert key is not None and key["wrapped"] is True
    # The store keeps the value encrypted too.
    row = await server.db.fetchone(
        "SELECT ciphertext FROM namespace_secrets WHERE namespace = %s AND key = 'STORED'",
        (parent,),
    )
    assert row is not None and stored not in row["ciphertext"]
    # Replay agrees with what was recorded: the core folds the encrypted value as plain data.
    verify = await trio.to_thread.run_sync(
        lambda: verify_process(server.url, "--execution", execution["id"])
    )
    assert verify.returncode == 0, verify.stdout + verify.stderr


SUBFLOW_PARENT = """
id: parent
namespace: {ns}
inputs:
  - id: pw
    type: SECRET
tasks:
  - id: call
    type: io.kestra.plugin.core.flow.Subflow
    namespace: {ns}
    flowId: child
    wait: true
    inputs:
      pw: "{{{{ inputs.pw }}}}"
"""

SUBFLOW_CHILD = """
id: child
namespace: {ns}
inputs:
  - id: pw
    type: SECRET
tasks:
  - id: shell
    type: io.kestra.plugin.scripts.shell.Commands
    env:
      PW: "{{{{ inputs.pw }}}}"
    commands:
      - echo "child got $PW"
      - |
        echo "::{{\\"outputs\\": {{\\"sha\\": \\"$(printf %s "$PW" | sha256sum | cut -c1-64)\\"}}}}::"
"""


async def test_a_secret_input_passed_to_a_subflow_is_encrypted_with_the_childs_own_key(
    server: ServerContext, client: httpx.AsyncClient, ns: str
) -> None:
    pw = _value("subpw")
    await deploy(client, SUBFLOW_CHILD.format(ns=ns))
    await deploy(client, SUBFLOW_PARENT.format(ns=ns))

    execution = await _run(client, ns, "parent", {"pw": pw})

    assert execution["state"]["current"] == "SUCCESS", execution
    child_id = task_outputs(execution, "call")["executionId"]
    child = (await client.get(f"/api/v1/executions/{child_id}")).json()
    assert child["inputs"] == {"pw": "******"}
    assert task_outputs(child, "shell")["vars"]["sha"] == sha256(pw)
    logs = (await client.get(f"/api/v1/logs/{child_id}")).json()
    assert "child got ******" in [line["message"] for line in logs]
    for needle in _needles(pw):
        assert await events_holding(server, needle) == []
    keys = await server.db.fetchall(
        "SELECT execution_id FROM execution_keys WHERE execution_id = ANY(%s)",
        ([execution["id"], child_id],),
    )
    assert len(keys) == 2


async def test_purging_an_execution_destroys_its_key(
    server: ServerContext, client: httpx.AsyncClient, ns: str
) -> None:
    source = f"""
id: purged
namespace: {ns}
inputs:
  - id: pw
    type: SECRET
tasks:
  - id: log
    type: io.kestra.plugin.core.log.Log
    message: "{{{{ inputs.pw }}}}"
"""
    await deploy(client, source)
    execution = await _run(client, ns, "purged", {"pw": _value("gone")})
    created = await server.db.fetchone(
        "SELECT data FROM events WHERE stream_id = %s AND type = 'ExecutionCreated'",
        (f"exec:{execution['id']}",),
    )
    assert created is not None
    sealed = created["data"]["inputs"]

    assert (await client.delete(f"/api/v1/executions/{execution['id']}")).status_code == 204

    assert (
        await server.db.fetchone(
            "SELECT 1 AS x FROM execution_keys WHERE execution_id = %s", (execution["id"],)
        )
        is None
    )
    with pytest.raises(Exception, match="purged"):
        await secrets.decrypt_values(server.db, execution["id"], sealed)


async def test_a_secret_set_with_the_cli_from_stdin_is_used_by_a_flow_and_never_shown(
    server: ServerContext, database_url: str, ns: str, master_key: str
) -> None:
    value = _value("cli")
    env = {**os.environ, secrets.KEY_ENV: master_key}
    base = ["--database-url", database_url]

    def cli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*TIERCEL, "secrets", *args, *base],
            input=stdin,
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
        )

    done = await trio.to_thread.run_sync(lambda: cli("set", ns, "FROM_CLI", stdin=value + "\n"))
    assert done.returncode == 0, done.stderr
    assert value not in done.stdout + done.stderr
    listed = await trio.to_thread.run_sync(lambda: cli("list", ns))
    assert listed.returncode == 0, listed.stderr
    assert "FROM_CLI" in listed.stdout and value not in listed.stdout

    source = f"""
id: fromcli
namespace: {ns}
tasks:
  - id: shell
    type: io.kestra.plugin.scripts.shell.Commands
    env:
      V: "{{{{ secret('FROM_CLI') }}}}"
    commands:
      - |
        echo "::{{\\"outputs\\": {{\\"sha\\": \\"$(printf %s "$V" | sha256sum | cut -c1-64)\\"}}}}::"
"""
    url = server.extra["urls"][0]
    async with httpx.AsyncClient(base_url=url, timeout=60, auth=("admin", ADMIN_PASSWORD)) as http:
        await deploy(http, source)
        execution = await _run(http, ns, "fromcli", {})
    assert task_outputs(execution, "shell")["vars"]["sha"] == sha256(value), (
        "the final newline is dropped"
    )

    removed = await trio.to_thread.run_sync(lambda: cli("delete", ns, "FROM_CLI"))
    assert removed.returncode == 0, removed.stderr
    again = await trio.to_thread.run_sync(lambda: cli("delete", ns, "FROM_CLI"))
    assert again.returncode != 0 and "no secret FROM_CLI" in again.stderr


def test_server_local_makes_a_private_master_key_once_and_keeps_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.delenv(secrets.KEY_ENV, raising=False)
    monkeypatch.setattr(secrets, "_configured", None)
    key_file = tmp_path / secrets.KEY_FILE

    first = secrets.configure_master_key(None, tmp_path, generate=True)
    key = secrets.master_key()
    second = secrets.configure_master_key(None, tmp_path, generate=True)

    assert first == second == str(key_file)
    assert key is not None and len(key) == 32 and secrets.master_key() == key
    assert key_file.stat().st_mode & 0o777 == 0o600
    assert str(key_file) in caplog.text  # says where it is, once
    assert caplog.text.count("Generated the master key") == 1
    # Another database (standalone, workers) never gets a key made up on its own.
    monkeypatch.setattr(secrets, "_configured", None)
    assert secrets.configure_master_key(None, tmp_path / "elsewhere", generate=False) is None
    assert secrets.master_key() is None


async def test_a_secret_given_on_resume_is_recorded_encrypted_and_reaches_the_next_task(
    server: ServerContext, client: httpx.AsyncClient, ns: str
) -> None:
    code = _value("resume")
    source = f"""
id: paused
namespace: {ns}
tasks:
  - id: pause
    type: io.kestra.plugin.core.flow.Pause
    onResume:
      - id: code
        type: SECRET
  - id: use
    type: io.kestra.plugin.scripts.shell.Commands
    env:
      C: "{{{{ outputs.pause.onResume.code }}}}"
    commands:
      - echo "code $C"
      - |
        echo "::{{\\"outputs\\": {{\\"sha\\": \\"$(printf %s "$C" | sha256sum | cut -c1-64)\\"}}}}::"
"""
    await deploy(client, source)
    started = await client.post(f"/api/v1/executions/{ns}/paused", json={})
    execution_id = started.json()["id"]
    with trio.fail_after(30):
        while (await client.get(f"/api/v1/executions/{execution_id}")).json()["state"][
            "current"
        ] != "PAUSED":
            await trio.sleep(0.1)

    resumed = await client.post(f"/api/v1/executions/{execution_id}/resume", json={"code": code})
    assert resumed.status_code in (200, 204), resumed.text
    with trio.fail_after(30):
        while True:
            execution = (await client.get(f"/api/v1/executions/{execution_id}")).json()
            if execution["state"]["current"] in ("SUCCESS", "FAILED", "WARNING"):
                break
            await trio.sleep(0.1)

    assert execution["state"]["current"] == "SUCCESS", execution
    assert task_outputs(execution, "use")["vars"]["sha"] == sha256(code)
    assert task_outputs(execution, "pause")["onResume"] == {"code": "******"}
    logs = (await client.get(f"/api/v1/logs/{execution_id}")).json()
    assert "code ******" in [line["message"] for line in logs]
    for needle in _needles(code):
        assert await events_holding(server, needle) == []


async def test_a_script_cannot_keep_a_link_to_the_workers_environment_as_an_output_file(
    server: ServerContext, client: httpx.AsyncClient, ns: str
) -> None:
    source = f"""
id: linked
namespace: {ns}
tasks:
  - id: shell
    type: io.kestra.plugin.scripts.shell.Commands
    outputFiles: ["leak.txt"]
    commands:
      - ln -s /proc/self/environ leak.txt
"""
    await deploy(client, source)

    execution = await _run(client, ns, "linked", {})

    assert execution["state"]["current"] == "FAILED"
    run = next(r for r in execution["taskRunList"] if r["taskId"] == "shell")
    assert "leads outside the working directory" in run.get("message", ""), run
    assert task_outputs(execution, "shell").get("outputFiles") is None


def test_masking_covers_the_value_its_lines_and_the_encodings_a_script_prints() -> None:
    masker = secrets.Masker()
    key = "-----BEGIN KEY-----\nAbCdEf123456\n-----END KEY-----"
    masker.add(key)
    masker.add("s3cr3t/+?&")
    masker.add("ab")
    data = b"s3cr3t/+?&"

    for printed in [
        key,
        "AbCdEf123456",  # one line of a multi-line value, as a script prints it
        "s3cr3t/+?&",
        base64.b64encode(data).decode(),
        base64.b64encode(data + b"\n").decode(),  # echo "$X" | base64
        base64.urlsafe_b64encode(data).decode(),
        data.hex(),
        "s3cr3t%2F%2B%3F%26",  # URL-encoded
        json.dumps(key)[1:-1],  # inside a JSON string
    ]:
        assert masker.text(f"before {printed} after") == "before ****** after", printed
    # A value this short is masked where it stands alone, not inside other words.
    assert masker.text("ab, cab and abc; ab") == "******, cab and abc; ******"
    assert masker.value({"k": ["s3cr3t/+?&", 1], "s3cr3t/+?&": None}) == {
        "k": ["******", 1],
        "******": None,
    }
