"""What an operator and a new user see of a running Tiercel: readiness naming a database that went
away, JSON log lines from every server command, the throwaway database of `tiercel flow test`,
and the packaging and README facts the first hour relies on. Real PostgreSQL, real processes,
real HTTP."""

from __future__ import annotations

import functools
import json
import os
import signal
import socket
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import httpx
import pytest
import trio

REPO = Path(__file__).resolve().parents[2]
TIERCEL = [sys.executable, "-m", "engine.cli"]
ADMIN_PASSWORD = "operations-password"

HELLO = """\
id: hello
namespace: test.operations
tasks:
  - id: say
    type: io.kestra.plugin.core.log.Log
    message: hello
"""


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A template cache of this module's own (built by the first test that needs it)."""
    return tmp_path_factory.mktemp("template-cache")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- readiness -------------------------------------------------------------------------------------


async def _readiness(base: str) -> httpx.Response:
    async with httpx.AsyncClient(timeout=10) as http:
        return await http.get(f"{base}/health/readiness")


async def _wait_readiness(base: str, status: int, timeout: float) -> httpx.Response:
    with trio.fail_after(timeout):
        while True:
            response = await _readiness(base)
            if response.status_code == status:
                return response
            await trio.sleep(0.2)


async def test_readiness_names_the_database_while_it_is_stopped_and_recovers(
    tmp_path: Path, cache_dir: Path, nursery: trio.Nursery
) -> None:
    from engine.cli import _migrations_key
    from engine.embedded import EmbeddedPostgres, seed_from_template
    from engine.migrate import migrate
    from engine.server import run_server

    data = tmp_path / "pg"
    await trio.to_thread.run_sync(
        lambda: seed_from_template(data, migrate, _migrations_key(), cache_dir=cache_dir)
    )
    postgres = EmbeddedPostgres(data)
    url = await trio.to_thread.run_sync(postgres.start)
    try:
        ctx = await nursery.start(
            functools.partial(
                run_server,
                url,
                ("executor", "worker", "scheduler", "indexer", "webserver"),
                host="127.0.0.1",
                port=0,
                data_dir=tmp_path / "files",
                admin_password=ADMIN_PASSWORD,
                heartbeat_interval=0.5,
            )
        )
        base = ctx.extra["urls"][0]
        up = (await _wait_readiness(base, 200, 30)).json()
        components = up["components"]
        assert components["database"] == {"status": "UP"}
        for name in ("service:executor", "service:worker", "service:scheduler"):
            assert components[name]["status"] == "UP", name
        for name in ("projection:executions", "projection:logs", "projection:flows"):
            assert components[name]["status"] == "UP" and components[name]["lag"] == 0, name

        await trio.to_thread.run_sync(postgres.stop)
        down = (await _wait_readiness(base, 503, 30)).json()
        assert down["status"] == "DOWN"
        assert down["components"]["database"] == {
            "status": "DOWN",
            "reason": "The database does not answer",
        }
        assert down["message"].startswith("Not ready: database (The database does not answer)")

        postgres = EmbeddedPostgres(data)
        assert await trio.to_thread.run_sync(postgres.start) == url
        back = (await _wait_readiness(base, 200, 90)).json()
        assert back["status"] == "UP" and "message" not in back
    finally:
        nursery.cancel_scope.cancel()
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(postgres.stop)


# --- JSON log lines --------------------------------------------------------------------------------


SERVER_COMMANDS = ("standalone", "executor", "worker", "scheduler", "indexer", "webserver")


def test_every_server_command_writes_only_json_lines_with_log_format_json(
    tmp_path: Path,
) -> None:
    # A database that refuses connections: each command says so (and that it keeps trying)
    # at once, and stops on SIGINT; `server local` is covered with its own database in
    # test_cli_first_hour.
    dead = f"postgresql://tiercel@127.0.0.1:{_free_port()}/tiercel"
    env = {**os.environ, "TIERCEL_ADMIN_PASSWORD": ADMIN_PASSWORD}
    env.pop("TIERCEL_SECRET_KEY", None)
    started: dict[str, tuple[subprocess.Popen[str], Path]] = {}
    try:
        for name in SERVER_COMMANDS:
            output = tmp_path / f"{name}.log"
            port = ["--port", str(_free_port())] if name in ("standalone", "webserver") else []
            with output.open("w") as out:
                started[name] = (
                    subprocess.Popen(
                        [
                            *TIERCEL,
                            "server",
                            name,
                            "--log-format",
                            "json",
                            "--database-url",
                            dead,
                            "--data-dir",
                            str(tmp_path / name),
                            *port,
                        ],
                        stdout=out,
                        stderr=subprocess.STDOUT,
                        text=True,
                        env=env,
                        cwd="/",
                    ),
                    output,
                )
        deadline = time.monotonic() + 60
        for name, (proc, output) in started.items():
            while "PostgreSQL" not in output.read_text():
                assert proc.poll() is None, (name, output.read_text())
                assert time.monotonic() < deadline, (name, output.read_text())
                time.sleep(0.1)
        for proc, _ in started.values():
            proc.send_signal(signal.SIGINT)
        for name, (proc, output) in started.items():
            assert proc.wait(30) == 0, (name, output.read_text())
            lines = [line for line in output.read_text().splitlines() if line.strip()]
            records = [json.loads(line) for line in lines]  # every line, or this fails
            for record in records:
                assert {"timestamp", "level", "logger", "thread", "message"} <= set(record)
            assert any(r["level"] == "WARN" and "PostgreSQL" in r["message"] for r in records), name
            assert any(r["message"] == "Received SIGINT: stopping" for r in records), name
    finally:
        for proc, _ in started.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()


# --- flow test's throwaway database ----------------------------------------------------------------


def _tree_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file() and not p.is_symlink())


def test_flow_test_copies_a_slim_cached_template_on_every_run(
    tmp_path: Path, cache_dir: Path
) -> None:
    flow = tmp_path / "hello.yaml"
    flow.write_text(HELLO)
    env = {**os.environ, "TIERCEL_CACHE_DIR": str(cache_dir)}
    env.pop("TIERCEL_DATABASE_URL", None)
    timings = []
    for _ in range(3):
        began = time.monotonic()
        result = subprocess.run(
            [*TIERCEL, "flow", "test", str(flow), "--json"],
            capture_output=True,
            text=True,
            timeout=120,
            env=env,
            cwd="/",
        )
        timings.append(time.monotonic() - began)
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout)["state"] == "SUCCESS"
    (template,) = cache_dir.glob("cluster-*")
    pgdata = template / "postgres"
    # Small, so each run's copy is quick: 1 MB WAL segments with none recycled ahead, and no
    # template databases (a fresh cluster is about 40 MB, 16 of them one WAL segment).
    assert _tree_bytes(pgdata) < 16 * 2**20, _tree_bytes(pgdata)
    assert _tree_bytes(pgdata / "pg_wal") <= 3 * 2**20
    print(f"flow test, cold then warm: {', '.join(f'{t:.2f}s' for t in timings)}")


# --- server local's first line -------------------------------------------------------------------


def test_server_local_names_the_api_openapi_ui_and_docs_and_each_answers(tmp_path: Path) -> None:
    port = _free_port()
    output = tmp_path / "local.log"
    env = {**os.environ, "TIERCEL_ADMIN_PASSWORD": ADMIN_PASSWORD}
    env.pop("TIERCEL_DATABASE_URL", None)
    with output.open("w") as out:
        proc = subprocess.Popen(
            [*TIERCEL, "server", "local", "--port", str(port), "--data-dir", str(tmp_path / "d")],
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
            cwd="/",
        )
    try:
        deadline = time.monotonic() + 90
        while "Tiercel is up" not in output.read_text():
            assert proc.poll() is None, output.read_text()
            assert time.monotonic() < deadline, output.read_text()
            time.sleep(0.1)
        (up,) = [line for line in output.read_text().splitlines() if "Tiercel is up" in line]
        base = f"http://localhost:{port}"
        assert up.endswith(
            f"Tiercel is up: API {base}/api/v1 (OpenAPI {base}/api/v1/openapi.yml), "
            f"UI {base}/ui/, docs {(REPO / 'docs').as_uri()}"
        ), up
        auth = ("admin", ADMIN_PASSWORD)
        openapi = httpx.get(f"{base}/api/v1/openapi.yml", auth=auth, timeout=10)
        assert openapi.status_code == 200 and "openapi:" in openapi.text
        ui = httpx.get(f"{base}/ui/", auth=auth, timeout=10, follow_redirects=True)
        assert ui.status_code == 200 and "<html" in ui.text.lower()
        assert (REPO / "docs" / "operations.md").is_file()
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(60) == 0, output.read_text()


# --- packaging and README --------------------------------------------------------------------------


def test_the_license_is_an_spdx_expression_so_installing_prints_no_deprecation() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    # setuptools >= 77 warns about a license table and refuses license classifiers beside an
    # SPDX expression.
    assert project["license"] == "Apache-2.0"
    assert not [c for c in project.get("classifiers", []) if c.startswith("License ::")]


def test_readme_says_where_the_conformance_corpus_is_read_and_why_it_may_be_skipped() -> None:
    readme = " ".join((REPO / "README.md").read_text().split())  # as rendered: lines joined
    suite = (REPO / "tests" / "conformance" / "test_kestra_corpus.py").read_text()
    assert "../shared/kestra-corpus" in readme
    reason = "Kestra corpus not found at ../shared/kestra-corpus"
    assert reason in suite and reason in readme
