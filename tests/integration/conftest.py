"""An engine (executor and worker) on the test database, and a way to run one flow on it."""

from __future__ import annotations

import functools
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio

from engine.commands import create_execution, deploy_flow, wait_for_end
from engine.execution import Execution
from engine.server import ServerContext, run_server


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
