"""The embedded PostgreSQL of `tiercel server local`: one owner per data directory, recovery
after a crash, no process left behind, nothing changed outside the data directory.

Real processes throughout: owners are subprocesses killed with SIGKILL, servers are real
PostgreSQL servers, and leftovers are looked for in /proc.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psycopg
import pytest

import engine.embedded
from engine.embedded import LOCK_FILE, SERVICE_ACCOUNT, EmbeddedPostgres
from engine.errors import DatabaseUnavailable

ROOT = Path(__file__).resolve().parents[2]
TIERCEL = str(Path(sys.executable).with_name("tiercel"))

OWNER = """\
import sys, time
from pathlib import Path
from engine.embedded import EmbeddedPostgres
print(EmbeddedPostgres(Path(sys.argv[1])).start(), flush=True)
time.sleep(300)
"""


def _postgres_pids(data_dir: Path) -> list[int]:
    """Live postgres processes whose command line names `data_dir` (zombies have none)."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if "postgres" in cmdline and f"{data_dir}/" in cmdline and "-D" in cmdline:
            pids.append(int(proc.name))
    return pids


def _postmaster_pid(data_dir: Path) -> int:
    return int((data_dir / "postgres" / "postmaster.pid").read_text().split()[0])


def _wait_dead(pid: int) -> None:
    """Until `pid` has exited (an exited process may wait a while to be reaped)."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
        except FileNotFoundError:
            return
        if state in ("Z", "X"):
            return
        time.sleep(0.01)
    pytest.fail(f"PID {pid} did not exit")


def _answers(url: str) -> bool:
    with psycopg.connect(url, connect_timeout=5) as conn:
        return conn.execute("SELECT 1").fetchone() == (1,)


@pytest.fixture
def data_dir(tmp_path: Path) -> Iterator[Path]:
    """A data directory of this test's own; a server a failed test leaves there is stopped."""
    path = tmp_path / "data"
    yield path
    for pid in _postgres_pids(path):
        os.kill(pid, signal.SIGQUIT)


def _owner(data_dir: Path) -> tuple[subprocess.Popen[str], str]:
    """Another process that starts the embedded PostgreSQL in `data_dir` and keeps it."""
    proc = subprocess.Popen(
        [sys.executable, "-c", OWNER, str(data_dir)], cwd=ROOT, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    url = proc.stdout.readline().strip()
    assert url, f"the owner process exited with {proc.wait()}"
    return proc, url


def _kill(proc: subprocess.Popen[str]) -> None:
    proc.kill()
    proc.wait(timeout=10)


def test_start_then_stop_leaves_no_postgres_process_and_a_second_stop_is_harmless(
    data_dir: Path,
):
    embedded = EmbeddedPostgres(data_dir)
    url = embedded.start()
    assert _answers(url)
    assert _postgres_pids(data_dir)
    embedded.stop()
    assert _postgres_pids(data_dir) == []
    embedded.stop()
    assert not (data_dir / "postgres" / "postmaster.pid").exists()


def test_server_listens_on_a_unix_socket_in_the_data_dir_and_on_no_tcp_port(data_dir: Path):
    with EmbeddedPostgres(data_dir) as embedded:
        assert f"host={data_dir}/postgres" in embedded.url
        with psycopg.connect(embedded.url) as conn:
            row = conn.execute(
                "SELECT current_setting('listen_addresses'), inet_server_addr()"
            ).fetchone()
        assert row == ("", None)


def test_start_leaves_the_modes_of_parent_directories_unchanged(tmp_path: Path):
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    private.chmod(0o700)
    before = {p: stat.S_IMODE(p.stat().st_mode) for p in (private, *private.parents)}
    with EmbeddedPostgres(private / "data") as embedded:
        assert _answers(embedded.url)
        after = {p: stat.S_IMODE(p.stat().st_mode) for p in before}
    assert after == before
    assert stat.S_IMODE(private.stat().st_mode) == 0o700


def test_a_second_owner_is_refused_with_the_pid_of_the_first(data_dir: Path):
    owner, url = _owner(data_dir)
    try:
        with pytest.raises(DatabaseUnavailable, match=f"PID {owner.pid}\\b"):
            EmbeddedPostgres(data_dir).start()
        assert _answers(url), "the refused start must leave the owner's server alone"
        assert (data_dir / LOCK_FILE).read_text().strip() == str(owner.pid)
    finally:
        _kill(owner)
        with EmbeddedPostgres(data_dir):
            pass


def test_server_left_running_by_a_killed_owner_is_adopted_and_stopped_by_the_next(
    data_dir: Path,
):
    owner, _ = _owner(data_dir)
    postmaster = _postmaster_pid(data_dir)
    _kill(owner)
    assert _postgres_pids(data_dir) == [postmaster], "the server outlives its killed owner"

    embedded = EmbeddedPostgres(data_dir)
    assert _answers(embedded.start())
    assert _postmaster_pid(data_dir) == postmaster
    embedded.stop()
    assert _postgres_pids(data_dir) == []


def test_stale_postmaster_pid_of_a_killed_server_does_not_block_the_next_start(data_dir: Path):
    owner, _ = _owner(data_dir)
    postmaster = _postmaster_pid(data_dir)
    _kill(owner)
    os.kill(postmaster, signal.SIGKILL)
    _wait_dead(postmaster)
    assert (data_dir / "postgres" / "postmaster.pid").exists()

    embedded = EmbeddedPostgres(data_dir)
    assert _answers(embedded.start())
    assert _postmaster_pid(data_dir) != postmaster
    embedded.stop()
    assert _postgres_pids(data_dir) == []


def test_data_dir_too_long_for_a_unix_socket_path_still_serves(tmp_path: Path):
    data_dir = tmp_path / ("d" * 100)
    with EmbeddedPostgres(data_dir) as embedded:
        assert _answers(embedded.url)
    assert _postgres_pids(data_dir) == []


@pytest.mark.skipif(os.geteuid() != 0, reason="only root needs another account for PostgreSQL")
def test_as_root_without_user_namespaces_it_runs_as_a_service_account_and_widens_nothing(
    monkeypatch: pytest.MonkeyPatch,
):
    # A container that forbids user namespaces, as Docker's default seccomp profile does.
    monkeypatch.setattr(engine.embedded, "_user_namespace_prefix", lambda: None)
    # A directory of the test's own that every account may traverse (/tmp itself is 1777),
    # holding one that only root may enter.
    base = Path(tempfile.mkdtemp(prefix="tiercel-test-"))
    base.chmod(0o755)
    try:
        private = base / "private"
        private.mkdir(mode=0o700)
        private.chmod(0o700)
        with pytest.raises(DatabaseUnavailable, match=f"{private} \\(mode 0700\\)"):
            EmbeddedPostgres(private / "data").start()
        assert stat.S_IMODE(private.stat().st_mode) == 0o700

        with EmbeddedPostgres(base / "data") as embedded:
            assert _answers(embedded.url)
            assert (base / "data" / "postgres").owner() == SERVICE_ACCOUNT
        assert _postgres_pids(base / "data") == []
    finally:
        for pid in _postgres_pids(base):
            os.kill(pid, signal.SIGQUIT)
        shutil.rmtree(base)


# --- tiercel server local, as a user runs it ---------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _server_local(data_dir: Path, port: int, log: Path) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if k != "TIERCEL_DATABASE_URL"}
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [TIERCEL, "server", "local", "--data-dir", str(data_dir), "--port", str(port)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        if proc.poll() is not None:
            pytest.fail(f"server local exited with {proc.returncode}:\n{log.read_text()}")
        time.sleep(0.1)
    proc.kill()
    pytest.fail(f"server local did not answer /health in 60 s:\n{log.read_text()}")


def test_server_local_starts_again_after_a_sigkill_and_leaves_no_postgres_on_sigterm(
    data_dir: Path, tmp_path: Path
):
    port = _free_port()
    first = _server_local(data_dir, port, tmp_path / "first.log")
    first.kill()
    first.wait(timeout=10)
    assert _postgres_pids(data_dir), "the killed server's PostgreSQL is still running"

    second = _server_local(data_dir, port, tmp_path / "second.log")
    second.send_signal(signal.SIGTERM)
    assert second.wait(timeout=30) == 0
    assert _postgres_pids(data_dir) == []


def test_second_server_local_on_the_same_data_dir_exits_naming_the_first(
    data_dir: Path, tmp_path: Path
):
    port = _free_port()
    first = _server_local(data_dir, port, tmp_path / "first.log")
    try:
        env = {k: v for k, v in os.environ.items() if k != "TIERCEL_DATABASE_URL"}
        second = subprocess.run(
            [TIERCEL, "server", "local", "--data-dir", str(data_dir), "--port", str(_free_port())],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert second.returncode != 0
        assert f"PID {first.pid}" in second.stderr
        assert str(data_dir) in second.stderr
        assert "Traceback" not in second.stderr
        assert httpx.get(f"http://127.0.0.1:{port}/health", timeout=5).status_code == 200
    finally:
        first.send_signal(signal.SIGTERM)
        first.wait(timeout=30)
    assert _postgres_pids(data_dir) == []
