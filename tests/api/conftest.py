"""A real server (executor, worker, projections and API) on a free port, reached over HTTP."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import trio

from engine.server import run_server
from tests.conftest import ADMIN_PASSWORD


@pytest.fixture
async def server(database_url: str, nursery: trio.Nursery, tmp_path: Any) -> Any:
    ctx = await nursery.start(
        lambda task_status: run_server(
            database_url,
            host="127.0.0.1",
            port=0,
            data_dir=tmp_path,
            heartbeat_interval=0.5,
            admin_password=ADMIN_PASSWORD,
            task_status=task_status,
        )
    )
    return ctx


@pytest.fixture
async def client(server: Any) -> AsyncIterator[httpx.AsyncClient]:
    url = server.extra["urls"][0]
    async with httpx.AsyncClient(base_url=url, timeout=60, auth=("admin", ADMIN_PASSWORD)) as http:
        yield http
