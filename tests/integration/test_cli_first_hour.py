"""A new user's first hour with the `tiercel` command: real processes (`python -m engine.cli`),
a real embedded PostgreSQL, real HTTP. What it prints is what is asserted."""

from __future__ import annotations

import importlib.metadata
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

TIERCEL = [sys.executable, "-m", "engine.cli"]

HELLO = """\
id: hello
namespace: test.firsthour
inputs:
  - id: count
    type: INT
    defaults: 1
tasks:
  - id: say
    type: io.kestra.plugin.core.log.Log
    message: "count={{ inputs.count }}"
"""

FILE_INPUT = """\
id: with_file
namespace: test.firsthour
inputs:
  - id: data
    type: FILE
tasks:
  - id: content
    type: io.kestra.plugin.core.output.OutputValues
    values:
      text: "{{ read(inputs.data) }}"
"""

FAILING = """\
id: failing
namespace: test.firsthour
tasks:
  - id: script
    type: io.kestra.plugin.scripts.shell.Commands
    commands:
      - echo preparing the report
      - echo the input folder is empty
      - exit 3
"""


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The environment of every command: one template cache for the whole module."""
    out = dict(os.environ)
    out["TIERCEL_CACHE_DIR"] = str(tmp_path_factory.mktemp("cache"))
    out.pop("TIERCEL_DATABASE_URL", None)
    return out


def _run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*TIERCEL, *args], capture_output=True, text=True, timeout=120, env=env, cwd="/"
    )


def _lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


def _one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    """The single line a failed command printed (and that it printed nothing else)."""
    assert result.returncode == 1, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stdout + result.stderr
    printed = _lines(result.stdout) + _lines(result.stderr)
    assert len(printed) == 1, printed
    return printed[0]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- version and help ------------------------------------------------------------------------------


def test_version_prints_the_installed_version(env: dict[str, str]) -> None:
    result = _run(env, "--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"tiercel {importlib.metadata.version('tiercel')}"


def test_each_server_command_shows_only_its_own_options_and_what_it_needs(
    env: dict[str, str],
) -> None:
    helps = {
        name: _run(env, "server", name, "--help").stdout
        for name in ("local", "standalone", "executor", "worker", "indexer", "webserver")
    }
    for name, text in helps.items():
        assert "--log-format" in text, name
    assert "--port" in helps["local"] and "--flows" in helps["local"]
    assert "--flow-path" in helps["standalone"] and "--thread" in helps["worker"]  # Kestra's
    assert "--port" in helps["webserver"] and "--worker-slots" not in helps["webserver"]
    for name in ("executor", "worker", "indexer"):
        assert "--port" not in helps[name] and "--no-auth" not in helps[name], name
        assert "--flows" not in helps[name], name
    assert "--worker-slots" in helps["worker"]
    for name in ("standalone", "executor", "worker", "indexer", "webserver"):
        # Help text wraps anywhere, even inside an option's name.
        assert "needs--database-url" in "".join(helps[name].split()), name

    missing = _one_line_error(_run(env, "server", "worker"))
    assert "--database-url" in missing


# --- flow test -------------------------------------------------------------------------------------


def test_flow_test_errors_are_one_line_never_a_traceback(
    env: dict[str, str], tmp_path: Path
) -> None:
    flow = tmp_path / "hello.yaml"
    flow.write_text(HELLO)
    bad_config = tmp_path / "tiercel.yml"
    bad_config.write_text("worker-slots: many\n")

    missing = _one_line_error(_run(env, "flow", "test", str(tmp_path / "nope.yaml")))
    assert missing == f"Error: Flow file {tmp_path / 'nope.yaml'} does not exist"

    bad_value = _one_line_error(_run(env, "flow", "test", str(flow), "--input", "count=many"))
    assert bad_value == "Error: Input 'count' (INT): 'many' is not an integer"

    not_a_pair = _one_line_error(_run(env, "flow", "test", str(flow), "--input", "count"))
    assert "--input 'count' must be KEY=VALUE" in not_a_pair

    no_file = _one_line_error(
        _run(env, "flow", "test", str(flow), "--input", f"count=@{tmp_path / 'gone.csv'}")
    )
    assert (
        no_file
        == f"Error: --input count: cannot read {tmp_path / 'gone.csv'}: No such file or directory"
    )

    config = _one_line_error(_run(env, "flow", "test", str(flow), "--config", str(bad_config)))
    assert "worker-slots" in config and str(bad_config) in config

    as_json = _run(env, "flow", "test", str(flow), "--input", "count=many", "--json")
    assert as_json.returncode == 1
    error = json.loads(as_json.stdout)["error"]
    assert error["details"][0]["path"] == "inputs.count"


def test_flow_test_passes_a_file_to_a_file_input(env: dict[str, str], tmp_path: Path) -> None:
    flow = tmp_path / "with_file.yaml"
    flow.write_text(FILE_INPUT)
    data = tmp_path / "orders.csv"
    data.write_text("id,total\n1,9.5\n")
    result = _run(env, "flow", "test", str(flow), "--input", f"data=@{data}", "--json")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["state"] == "SUCCESS"
    (run,) = summary["taskRuns"]
    assert run["outputs"]["values"]["text"] == "id,total\n1,9.5\n"


def test_flow_test_summary_says_why_a_task_failed(env: dict[str, str], tmp_path: Path) -> None:
    flow = tmp_path / "failing.yaml"
    flow.write_text(FAILING)

    text = _run(env, "flow", "test", str(flow))
    assert text.returncode == 1
    assert "FAILED" in text.stdout
    assert "error: Command failed with exit code 3" in text.stdout
    assert "the input folder is empty" in text.stdout

    as_json = _run(env, "flow", "test", str(flow), "--json")
    assert as_json.returncode == 1
    (run,) = json.loads(as_json.stdout)["taskRuns"]
    assert run["state"] == "FAILED"
    assert run["error"] == "Command failed with exit code 3"
    messages = [line["message"] for line in run["lastLogs"]]
    assert "preparing the report" in messages and "the input folder is empty" in messages


def test_flow_test_copies_one_cached_template_cluster(env: dict[str, str], tmp_path: Path) -> None:
    flow = tmp_path / "hello.yaml"
    flow.write_text(HELLO)
    for count in ("1", "2"):
        result = _run(env, "flow", "test", str(flow), "--input", f"count={count}")
        assert result.returncode == 0, result.stderr
    clusters = list(Path(env["TIERCEL_CACHE_DIR"]).glob("cluster-*"))
    assert len(clusters) == 1, clusters


# --- server local ----------------------------------------------------------------------------------


class _Server:
    def __init__(self, proc: subprocess.Popen[str], port: int, output: Path) -> None:
        self.proc, self.port, self.output = proc, port, output

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def lines(self) -> list[str]:
        return _lines(self.output.read_text())


@pytest.fixture
def start_server(env: dict[str, str], tmp_path: Path) -> Iterator[Any]:
    started: list[_Server] = []

    def start(*args: str) -> _Server:
        port = _free_port()
        output = tmp_path / f"server-{port}.log"
        run_env = {**env, "TIERCEL_ADMIN_PASSWORD": "first-hour-password"}
        with output.open("w") as out:
            proc = subprocess.Popen(
                [
                    *TIERCEL,
                    "server",
                    "local",
                    "--port",
                    str(port),
                    "--data-dir",
                    str(tmp_path / "data"),
                    *args,
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                text=True,
                env=run_env,
                cwd="/",
            )
        server = _Server(proc, port, output)
        started.append(server)
        return server

    yield start
    for server in started:
        if server.proc.poll() is None:
            server.proc.send_signal(signal.SIGINT)
            try:
                server.proc.wait(30)
            except subprocess.TimeoutExpired:
                server.proc.kill()
                server.proc.wait()


def _ready(server: _Server, timeout: float = 60) -> httpx.Response:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert server.proc.poll() is None, server.output.read_text()
        try:
            response = httpx.get(f"{server.base}/health/readiness", timeout=2)
            if response.status_code == 200:
                return response
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"never ready:\n{server.output.read_text()}")


def _stop(server: _Server) -> None:
    server.proc.send_signal(signal.SIGINT)
    assert server.proc.wait(30) == 0, server.output.read_text()


def test_server_local_says_where_the_api_and_docs_are_and_nothing_else_at_info(
    start_server: Any,
) -> None:
    server = start_server()
    _ready(server)
    _stop(server)
    info = [line for line in server.lines() if " INFO " in line]
    up = f"Tiercel is up: API http://localhost:{server.port}/api/v1"
    assert len(info) == 2 and up in info[0], server.lines()
    assert f"(OpenAPI http://localhost:{server.port}/api/v1/openapi.yml)" in info[0]
    assert "stopping" in info[1]
    assert not any("initdb" in line.lower() for line in server.lines())
    assert not any(" DEBUG " in line for line in server.lines())


def test_flows_folder_is_deployed_before_readiness_and_a_bad_flow_is_one_line(
    start_server: Any, tmp_path: Path
) -> None:
    folder = tmp_path / "flows"
    folder.mkdir()
    (folder / "hello.yaml").write_text(HELLO)
    (folder / "broken.yaml").write_text(
        "id: broken\nnamespace: test.firsthour\ntasks:\n  - id: t\n    type: nope.Task\n"
    )
    settings = tmp_path / "tiercel.yml"
    settings.write_text("not-a-setting: 1\n")
    server = start_server("--flows", str(folder), "--log-format", "json", "--config", str(settings))
    _ready(server)
    # Ready means deployed: the flow is there at the first answer.
    flow = httpx.get(
        f"{server.base}/api/v1/flows/test.firsthour/hello",
        auth=("admin", "first-hour-password"),
        timeout=10,
    )
    assert flow.status_code == 200, flow.text
    missing = httpx.get(
        f"{server.base}/api/v1/flows/test.firsthour/broken",
        auth=("admin", "first-hour-password"),
        timeout=10,
    )
    assert missing.status_code == 404
    _stop(server)

    # Every line is JSON, even what is logged while the command line is read.
    records = [json.loads(line) for line in server.lines()]
    assert "not-a-setting" in records[0]["message"] and records[0]["level"] == "WARN"
    errors = [r for r in records if r["level"] == "ERROR"]
    assert len(errors) == 1, records
    assert (
        f"{folder / 'broken.yaml'}:5:11 tasks[0].type: Unknown task type 'nope.Task'"
        in (errors[0]["message"])
    )
    assert any(
        r["message"] == f"Deployed 1 flow(s) from {folder}; 1 not deployed (see above)"
        for r in records
    )
    assert {"timestamp", "level", "logger", "thread", "message"} <= set(records[0])


def test_a_template_unused_for_a_day_is_cleared_when_another_is_built(tmp_path: Path) -> None:
    from engine.embedded import EmbeddedPostgres, seed_from_template

    cache = tmp_path / "cache"
    old, recent = cache / "cluster-0ld", cache / "cluster-recent"
    for folder in (old, recent):
        (folder / "postgres").mkdir(parents=True)
    two_days_ago = time.time() - 2 * 86400
    os.utime(old, (two_days_ago, two_days_ago))
    setups: list[str] = []
    seed_from_template(tmp_path / "data", setups.append, "a key of its own", cache_dir=cache)
    assert len(setups) == 1  # built once, by running the setup on a server of its own
    assert not old.exists() and recent.exists()
    server = EmbeddedPostgres(tmp_path / "data")
    try:
        server.start()  # the copy is a cluster that starts
    finally:
        server.stop()
