"""An engine (executor and worker) on the test database, and a way to run one flow on it; a
whole server with a master key, reached over HTTP."""

from __future__ import annotations

import base64
import functools
import hashlib
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import trio

from engine import secrets
from engine.commands import create_execution, deploy_flow, wait_for_end
from engine.execution import Execution
from engine.server import ServerContext, run_server
from tests.api.conftest import client  # noqa: F401 - the API of `server`, signed in as the admin
from tests.conftest import (
    deploy,  # noqa: F401 - the tests here import it from this file
    start_server,
)

MASTER_KEY = base64.b64encode(b"k" * 32).decode()
"""The master key of `server` (a `tiercel` command a test runs on its database needs it too)."""


@pytest.fixture
def ns() -> str:
    """A namespace of this test's own."""
    return f"test.n{uuid.uuid4().hex[:12]}"


@pytest.fixture
async def engine(database_url: str, tmp_path: Path) -> AsyncIterator[ServerContext]:
    async with trio.open_nursery() as nursery:
        ctx = await nursery.start(
            functools.partial(
                run_server,
                database_url,
                ("executor", "worker"),
                data_dir=tmp_path,
                heartbeat_interval=0.5,
            )
        )
        yield ctx
        nursery.cancel_scope.cancel()


async def run_flow(ctx: ServerContext, source: str, inputs: dict | None = None) -> Execution:
    """Deploy `source`, run it with `inputs` and return the execution once it has ended."""
    record = await deploy_flow(ctx.store, source)
    xid = await create_execution(ctx.store, record.namespace, record.id, inputs or {})
    return await wait_for_end(ctx.store, ctx.notifier, xid, timeout=60)


@pytest.fixture
def master_key(monkeypatch: pytest.MonkeyPatch) -> str:
    """`MASTER_KEY`, set in this test's environment (where the server reads it)."""
    monkeypatch.setenv(secrets.KEY_ENV, MASTER_KEY)
    return MASTER_KEY


@pytest.fixture
async def server(
    database_url: str, nursery: trio.Nursery, tmp_path: Path, master_key: str
) -> ServerContext:
    """A whole server (API, executor, worker, projections) on the test database, sealing what
    users give executions with `master_key` (`client`, from tests/api, reaches its API)."""
    ctx: ServerContext = await start_server(database_url, nursery, tmp_path)
    return ctx


async def events_holding(server: ServerContext, needle: str) -> list[str]:
    """The types of the events whose raw data or metadata hold `needle` anywhere."""
    rows = await server.db.fetchall(
        "SELECT type FROM events WHERE strpos(data::text, %s) > 0 OR strpos(meta::text, %s) > 0",
        (needle, needle),
    )
    return [r["type"] for r in rows]


def task_outputs(execution: dict[str, Any], task_id: str) -> dict[str, Any]:
    """The outputs of the task run of `task_id` in an execution as the API shows it."""
    run = next(r for r in execution["taskRunList"] if r["taskId"] == task_id)
    outputs: dict[str, Any] = run["outputs"]
    return outputs


def sha256(value: str) -> str:
    """The hex SHA-256 of `value`, as the scripts of these tests print what they received."""
    return hashlib.sha256(value.encode()).hexdigest()


# `make test` runs the suite in two pytest-xdist workers, each with a database of its own, and
# the session-wide check (tests/integration/test_verify.py) sees only its worker's: a file whose
# histories must refold checks them itself, after its tests (`pytestmark =
# pytest.mark.usefixtures("history_start")`, then a last test calling `assert_refolds_since`).


@pytest.fixture(scope="module")
def history_start(database_url: str) -> int:
    """The log's position before the first test of the file that uses it."""
    with psycopg.connect(database_url) as conn:
        row = conn.execute("SELECT coalesce(max(seq), 0) FROM events").fetchone()
    return int(row[0]) if row else 0


def assert_refolds_since(database_url: str, position: int) -> None:
    """`tiercel sys verify --since position`, in a process of its own, refolds every history."""
    from tests.integration.test_verify import _verify

    result = _verify(database_url, "--since", str(position))
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-2000:]
    assert "every history refolds" in result.stdout
