"""Property-based fuzzing of everything a client sends: a real server, over HTTP.

`TIERCEL_FUZZ_CASES` sets the number of cases each fuzzer runs (200 by default, so `make test`
stays quick; CI runs more). Each fuzzer reports how many it ran, and the answers it got, in a
"fuzz cases" section at the end of the test run.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import psycopg
import pytest

from tests.api.conftest import client, server  # noqa: F401 - the real server, over HTTP
from tests.conftest import own_database
from tests.fuzz.harness import ROOT, Http, reported


@pytest.fixture(scope="session")
def database_url(database_url: str) -> Iterator[str]:
    """A database of the fuzzers' own in the test cluster: they deploy thousands of flows,
    which the tests sharing the session's database (dependency graphs read every flow) must
    not find there."""
    with own_database(database_url, "fuzz", prepare=True) as url:
        yield url


def pytest_terminal_summary(terminalreporter: Any) -> None:
    # A run without pytest-xdist's workers; with them tests/conftest.py prints what each
    # worker sent back.
    if hasattr(terminalreporter.config, "workerinput"):
        return
    lines = reported()
    if lines:
        terminalreporter.section("fuzz cases")
        for line in lines:
            terminalreporter.write_line(line)


def pytest_sessionfinish(session: pytest.Session) -> None:
    workeroutput = getattr(session.config, "workeroutput", None)
    if workeroutput is not None:  # a pytest-xdist worker: its controller prints the counts
        workeroutput["fuzz_cases"] = reported()


@pytest.fixture
def http(client: httpx.AsyncClient, server: Any) -> Iterator[Http]:  # noqa: F811
    paths = [
        str(server.data_dir or ""),
        os.environ.get("TIERCEL_STORAGE_DIR", ""),
        str(ROOT),
        sys.prefix,
    ]
    blocking = Http(str(client.base_url), paths)
    yield blocking
    blocking.close()


@pytest.fixture
def count_events(database_url: str) -> Iterator[Callable[..., int]]:
    """How many events of some types (and of one flow) the log holds: a refused request must
    leave these counts as they were."""
    conn = psycopg.connect(database_url, autocommit=True)

    def count(types: tuple[str, ...], flow_id: str | None = None) -> int:
        query = "SELECT count(*) FROM events WHERE type = ANY(%s)"
        params: list[Any] = [list(types)]
        if flow_id is not None:
            query += " AND data->>'flowId' = %s"
            params.append(flow_id)
        row = conn.execute(query, params).fetchone()
        return int(row[0]) if row else 0

    yield count
    conn.close()
