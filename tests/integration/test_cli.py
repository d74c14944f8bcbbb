"""The `tiercel` command as a user runs it: real subprocesses, real PostgreSQL."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

TIERCEL = [sys.executable, "-m", "engine.cli"]

PARALLEL = """\
id: hello
namespace: test.cli
tasks:
  - id: both
    type: io.kestra.plugin.core.flow.Parallel
    tasks:
      - id: a
        type: io.kestra.plugin.core.log.Log
        message: "hello from a"
      - id: b
        type: io.kestra.plugin.core.log.Log
        message: "hello from b"
  - id: answer
    type: io.kestra.plugin.core.debug.Return
    format: "{{ flow.namespace }}.{{ flow.id }}"
"""


def _run(*args: str, **kw) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*TIERCEL, *args], capture_output=True, text=True, timeout=120, **kw)


def test_flow_validate_exits_1_and_prints_every_problem(tmp_path: Path):
    good = tmp_path / "good.yaml"
    good.write_text(PARALLEL)
    bad = tmp_path / "bad.yaml"
    bad.write_text("id: x\nnamespace: y\ntasks:\n  - id: t\n    type: nope.Task\n  - id: t\n")
    ok = _run("flow", "validate", str(good))
    assert ok.returncode == 0 and "test.cli.hello" in ok.stdout
    failed = _run("flow", "validate", str(good), str(bad))
    assert failed.returncode == 1
    assert "bad.yaml:5:11 tasks[0].type: Unknown task type 'nope.Task'" in failed.stdout
    assert "Duplicate task id 't'" in failed.stdout


def test_flow_test_prints_json_summary_and_exit_code(tmp_path: Path, database_url: str):
    flow = tmp_path / "hello.yaml"
    flow.write_text(PARALLEL)
    result = _run("flow", "test", str(flow), "--json")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["state"] == "SUCCESS"
    assert [r["taskId"] for r in summary["taskRuns"]] == ["both", "a", "b", "answer"]
    assert summary["taskRuns"][-1]["outputs"] == {"value": "test.cli.hello"}
    failing = tmp_path / "fail.yaml"
    failing.write_text(
        "id: f\nnamespace: test.cli\ntasks:\n  - id: boom\n"
        "    type: io.kestra.plugin.core.execution.Fail\n"
    )
    result = _run("flow", "test", str(failing), "--json", "--database-url", database_url)
    assert result.returncode == 1
    assert json.loads(result.stdout)["state"] == "FAILED"


def test_config_is_accepted_before_and_after_the_subcommand(tmp_path: Path):
    config = tmp_path / "config.yaml"
    config.write_text("tiercel:\n  port: 9999\n")
    flow = tmp_path / "hello.yaml"
    flow.write_text(PARALLEL)
    before = _run("--config", str(config), "flow", "validate", str(flow))
    after = _run("flow", "validate", str(flow), "--config", str(config))
    assert before.returncode == after.returncode == 0
    missing = _run("flow", "validate", str(flow), "--config", str(tmp_path / "nope.yaml"))
    assert missing.returncode != 0 and "nope.yaml" in missing.stderr


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _postgres_pids(data_dir: Path) -> list[int]:
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if "postgres" in cmdline and str(data_dir) in cmdline:
            pids.append(int(proc.name))
    return pids


def _start_server(data_dir: Path, port: int, log: Path) -> subprocess.Popen[bytes]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("TIERCEL_DATABASE_URL", "TIERCEL_ADMIN_PASSWORD")
    }
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [*TIERCEL, "server", "local", "--port", str(port), "--data-dir", str(data_dir)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health/readiness", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        if proc.poll() is not None:
            pytest.fail(f"tiercel server local exited with {proc.returncode}")
        time.sleep(0.2)
    proc.kill()
    pytest.fail("tiercel server local did not become ready in 60 s")


def test_server_local_serves_stops_its_postgres_on_sigterm_and_keeps_data(tmp_path: Path):
    data_dir = tmp_path / "data"
    port = _free_port()
    base = f"http://127.0.0.1:{port}/api/v1"
    server = _start_server(data_dir, port, tmp_path / "first.log")
    try:
        # The first start creates the admin account and prints its password once.
        found = re.search(
            r"Log in as\s+admin\s+with the password\s+(\S+)", (tmp_path / "first.log").read_text()
        )
        assert found, (tmp_path / "first.log").read_text()
        auth = ("admin", found.group(1))
        assert httpx.get(f"{base}/flows/search", timeout=10).status_code == 401
        created = httpx.post(
            f"{base}/flows",
            content=PARALLEL,
            headers={"Content-Type": "application/x-yaml"},
            timeout=10,
            auth=auth,
        )
        assert created.status_code == 200, created.text
        # Accounts and tokens are managed on the running server's own database.
        issued = subprocess.run(
            [*TIERCEL, "tokens", "create", "--name", "ci", "--role", "runner",
             "--data-dir", str(data_dir)],
            capture_output=True, text=True, timeout=60,
            env={k: v for k, v in os.environ.items() if k != "TIERCEL_DATABASE_URL"},
        )  # fmt: skip
        assert issued.returncode == 0, issued.stderr
        token = {"Authorization": f"Bearer {issued.stdout.strip()}"}
        me = httpx.get(f"{base}/me", headers=token, timeout=10)
        assert me.status_code == 200 and me.json()["role"] == "runner", me.text
        run = httpx.post(f"{base}/executions/test.cli/hello?wait=true", timeout=60, auth=auth)
        assert run.status_code == 200, run.text
        execution = run.json()
        assert execution["state"]["current"] == "SUCCESS"
        execution_id = execution["id"]
        deadline = time.monotonic() + 10
        while True:
            logs = httpx.get(f"{base}/logs/{execution_id}", timeout=10, auth=auth).json()
            if len(logs) >= 2 or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert sorted(line["message"] for line in logs) == ["hello from a", "hello from b"]
        events = httpx.get(f"{base}/executions/{execution_id}/events", timeout=10, auth=auth).json()
        assert events[0]["type"] == "ExecutionCreated"
        assert any(
            e["type"] == "ExecutionStateChanged" and e["data"]["state"] == "SUCCESS" for e in events
        )
        assert _postgres_pids(data_dir)
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)
    assert server.returncode == 0
    assert _postgres_pids(data_dir) == []

    server = _start_server(data_dir, port, tmp_path / "second.log")
    try:
        assert "with the password" not in (tmp_path / "second.log").read_text()
        again = httpx.get(f"{base}/executions/{execution_id}", timeout=10, auth=auth)
        assert again.status_code == 200
        assert again.json()["state"]["current"] == "SUCCESS"
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)
    assert _postgres_pids(data_dir) == []
