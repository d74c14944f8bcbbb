"""`tiercel users` and `tiercel tokens` on the database, and the server settings for auth."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import httpx

TIERCEL = [sys.executable, "-m", "engine.cli"]


def _cli(database_url: str, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "TIERCEL_DATABASE_URL"}
    return subprocess.run(
        [*TIERCEL, *args, "--database-url", database_url],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )


def test_users_and_tokens_are_created_listed_and_revoked_from_the_cli(database_url: str):
    name = f"ops{uuid.uuid4().hex[:6]}"
    made = _cli(
        database_url, "users", "create", name, "--role", "editor", "--namespace", "team.a",
        "--password-stdin", stdin="s3cret-password\n",
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    again = _cli(database_url, "users", "create", name, "--password-stdin", stdin="another-pw\n")
    assert again.returncode == 1 and "exists already" in again.stderr
    short = _cli(database_url, "users", "create", name + "x", "--password-stdin", stdin="abc\n")
    assert short.returncode == 1 and "too short" in short.stderr
    assert "Traceback" not in again.stderr + short.stderr

    listed = _cli(database_url, "users", "list")
    assert f"{name}  editor  team.a" in listed.stdout

    token = _cli(
        database_url, "tokens", "create", "--name", "ci", "--role", "runner",
        "--namespace", "team.a", "--owner", name, "--expires", "P7D",
    )  # fmt: skip
    assert token.returncode == 0, token.stderr
    secret = token.stdout.strip()
    assert secret.startswith("tct_") and "shown only now" in token.stderr
    token_id = secret.split("_")[1]
    tokens = _cli(database_url, "tokens", "list", "--json")
    assert token_id in tokens.stdout and secret.split("_", 2)[2] not in tokens.stdout

    assert _cli(database_url, "tokens", "revoke", token_id).returncode == 0
    assert "REVOKED" in _cli(database_url, "tokens", "list").stdout
    assert _cli(database_url, "users", "revoke", name).returncode == 0
    assert "REVOKED" in _cli(database_url, "users", "list").stdout


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_no_auth_binds_loopback_only_and_refuses_another_host(tmp_path: Path, database_url: str):
    refused = subprocess.run(
        [*TIERCEL, "server", "standalone", "--no-auth", "--host", "0.0.0.0",
         "--database-url", database_url, "--port", str(_free_port())],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert refused.returncode == 1 and "binds 127.0.0.1 only" in refused.stderr


def test_kestra_basic_auth_keys_set_the_first_account(tmp_path: Path):
    """`kestra.server.basic-auth` in the config file: its user is the first account."""
    import signal
    import time

    config = tmp_path / "application.yaml"
    config.write_text(
        "kestra:\n  server:\n    basic-auth:\n      enabled: true\n"
        "      username: admin@kestra.io\n      password: Kestra-Passw0rd\n"
    )
    port = _free_port()
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("TIERCEL_DATABASE_URL", "TIERCEL_ADMIN_PASSWORD")
    }
    log = tmp_path / "server.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [*TIERCEL, "--config", str(config), "server", "local", "--port", str(port),
             "--data-dir", str(tmp_path / "data")],
            env=env, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{base}/health/readiness", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        assert httpx.get(f"{base}/api/v1/me", timeout=10).status_code == 401
        me = httpx.get(f"{base}/api/v1/me", auth=("admin@kestra.io", "Kestra-Passw0rd"))
        assert me.status_code == 200 and me.json()["role"] == "admin"
        assert "Kestra-Passw0rd" not in log.read_text()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
