"""Shared fixtures: one real PostgreSQL for the whole run.

`TIERCEL_TEST_DATABASE_URL` when set; otherwise a testcontainers PostgreSQL when a Docker daemon
answers; otherwise the embedded PostgreSQL. Tests make their own ids, so they share it.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import os
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
import trio

from engine.db import Database, Notifier, runtime_role
from engine.migrate import migrate
from engine.store import CHANNEL, EventStore

SHARED = Path(__file__).resolve().parents[2] / "shared"


@pytest.fixture
def kestra_flows() -> Path:
    """`flows/` of the Kestra corpus; the test is skipped, saying why, when it is absent."""
    from tests.conformance.runner import corpus_dir

    corpus = corpus_dir()
    if corpus is None:
        pytest.skip(
            f"Kestra corpus not found at {SHARED / 'kestra-corpus'} (set TIERCEL_KESTRA_CORPUS)"
        )
    return corpus / "flows"


# One internal storage for every server the session starts (and for `tiercel sys verify` run
# over what they recorded, which reads large values back from it).
if "TIERCEL_STORAGE_DIR" not in os.environ:
    _STORAGE = tempfile.TemporaryDirectory(prefix="tiercel-test-storage-")
    os.environ["TIERCEL_STORAGE_DIR"] = _STORAGE.name

SESSION_START = dt.datetime.now(dt.UTC)
"""When this test session began (tests that scan the database look at what it recorded)."""


def _docker_answers() -> bool:
    try:
        import docker  # type: ignore[import-untyped]

        docker.from_env(timeout=2).ping()
        return True
    except Exception:
        return False


ADMIN_PASSWORD = "tiercel-test-admin"
"""The password of the `admin` account every test server's API accepts."""


def _prepare(url: str) -> None:
    """Migrate the test database and give it the admin account the API tests log in with."""
    from engine import accounts
    from engine.errors import Conflict

    migrate(url)

    async def admin() -> None:
        db = Database(url, max_size=1)
        try:
            await accounts.create_user(
                EventStore(db), "admin", ADMIN_PASSWORD, accounts.ADMIN, actor="system:tests"
            )
        except Conflict:
            pass
        finally:
            await db.close()

    trio.run(admin)


async def start_server(
    database_url: str, nursery: trio.Nursery, data_dir: Path, **options: Any
) -> Any:
    """Start a whole server (API, executor, worker, projections) on `database_url` in `nursery`,
    its API on a free port of 127.0.0.1 taking the admin with `ADMIN_PASSWORD`; answers its
    `ServerContext` once it serves. `options` go to `run_server` as they are, over these
    (`roles`, `extra`, ...), for a test that needs a server set apart."""
    from engine.server import run_server

    settings: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": 0,
        "data_dir": data_dir,
        "heartbeat_interval": 0.5,
        "admin_password": ADMIN_PASSWORD,
        **options,
    }
    return await nursery.start(functools.partial(run_server, database_url, **settings))


def admin_client(ctx: Any, timeout: float = 60) -> httpx.AsyncClient:
    """A client of the API of the server `ctx` (from `start_server`), signed in as the admin;
    open it with `async with`."""
    return httpx.AsyncClient(
        base_url=ctx.extra["urls"][0], timeout=timeout, auth=("admin", ADMIN_PASSWORD)
    )


async def deploy(http: httpx.AsyncClient, source: str) -> dict[str, Any]:
    """Deploy the flow `source` through the API, asserting it was taken; answers the flow as
    the API shows it."""
    answer = await http.post(
        "/api/v1/flows", content=source, headers={"Content-Type": "application/x-yaml"}
    )
    assert answer.status_code == 200, answer.text
    flow: dict[str, Any] = answer.json()
    return flow


@contextlib.contextmanager
def own_database(database_url: str, prefix: str, *, prepare: bool = False) -> Iterator[str]:
    """The URL of a new, empty database in the cluster of `database_url` (named `prefix_` and
    a random suffix), for tests whose flows, executions or processes must not meet the others';
    with `prepare`, migrated and with the admin account (`_prepare`). It is dropped at the end,
    with the runtime role the server makes for it."""
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    info = psycopg.conninfo.conninfo_to_dict(database_url)
    info["dbname"] = name
    url = psycopg.conninfo.make_conninfo(**info)
    try:
        if prepare:
            _prepare(url)
        yield url
    finally:
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
            conn.execute(f'DROP ROLE IF EXISTS "{runtime_role(name)}"')


@pytest.fixture(scope="session")
def database_url() -> Iterator[str]:
    url = os.environ.get("TIERCEL_TEST_DATABASE_URL")
    if url:
        _prepare(url)
        yield url
        return
    if _docker_answers():
        from testcontainers.postgres import PostgresContainer  # type: ignore[import-untyped]

        with PostgresContainer("postgres:16-alpine", driver=None) as pg:
            url = pg.get_connection_url()
            _prepare(url)
            yield url
        return
    from engine.embedded import EmbeddedPostgres

    with tempfile.TemporaryDirectory(prefix="tiercel-test-") as tmp:
        embedded = EmbeddedPostgres(Path(tmp))
        url = embedded.start()
        try:
            _prepare(url)
            yield url
        finally:
            embedded.stop()


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[Database]:
    database = Database(database_url)
    yield database
    await database.close()


@pytest.fixture
def store(db: Database) -> EventStore:
    return EventStore(db)


@pytest.fixture
async def notifier(database_url: str, nursery: trio.Nursery) -> Notifier:
    n = Notifier(database_url, CHANNEL)
    await nursery.start(n.run)
    return n


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "last: run after every other test")


# `make test` runs two pytest-xdist workers (`-n 2 --dist loadfile`: each file in one worker,
# each worker with a database of its own). The fuzzers' case counts come back from the workers
# (tests/fuzz/conftest.py) and are printed here, in the controller.
_FUZZ_CASES: list[str] = []


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: Any) -> None:
    _FUZZ_CASES.extend(getattr(node, "workeroutput", {}).get("fuzz_cases", []))


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if _FUZZ_CASES:
        terminalreporter.section("fuzz cases")
        for line in _FUZZ_CASES:
            terminalreporter.write_line(line)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    items.sort(key=lambda item: item.get_closest_marker("last") is not None)
