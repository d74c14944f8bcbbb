"""A real server (executor, worker, projections and API) on a free port, reached over HTTP."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import trio

from tests.conftest import admin_client, start_server


@pytest.fixture
async def server(database_url: str, nursery: trio.Nursery, tmp_path: Any) -> Any:
    return await start_server(database_url, nursery, tmp_path)


@pytest.fixture
async def client(server: Any) -> AsyncIterator[httpx.AsyncClient]:
    async with admin_client(server) as http:
        yield http
