"""Browser tests: a real server (`tiercel server local` in its own process, on a database of its
own in the test cluster) driven through Debian's chromium by Playwright.

Playwright never downloads a browser here: it launches `/usr/bin/chromium` (installed by
`.ci/run` with apt when missing). Without it, or without the playwright package, every test of
this folder is skipped and says why.
"""

from __future__ import annotations

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

from tests.conftest import ADMIN_PASSWORD, own_database

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TIERCEL = [sys.executable, "-m", "engine.cli"]


def _skip_reason() -> str | None:
    if not CHROMIUM.exists():
        return f"{CHROMIUM} is absent: install Debian's chromium (apt-get install chromium)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright is not installed (pip install -e '.[test]')"
    return None


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    reason = _skip_reason()
    if reason is None:
        return
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.skip(reason=reason))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def ui_database(database_url: str) -> Iterator[str]:
    """A database of the UI server's own: the server lives for the whole session in another
    process (with a master key of its own), and its executor and worker must not take the
    executions of the tests that run after these."""
    with own_database(database_url, "ui") as url:
        yield url


@pytest.fixture(scope="session")
def ui_server(ui_database: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The base URL of a server with accounts on (admin / the test admin password)."""
    folder = tmp_path_factory.mktemp("ui-server")
    port = _free_port()
    output = folder / "server.log"
    env = {**os.environ, "TIERCEL_ADMIN_PASSWORD": ADMIN_PASSWORD}
    env.pop("TIERCEL_DATABASE_URL", None)
    command = [*TIERCEL, "server", "local", "--port", str(port), "--host", "127.0.0.1"]
    command += ["--database-url", ui_database, "--data-dir", str(folder / "data")]
    with output.open("w") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, output.read_text()
            try:
                if httpx.get(f"{base}/health/readiness", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, f"server never ready:\n{output.read_text()}"
            time.sleep(0.1)
        yield base
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True
        )
        yield launched
        launched.close()


@pytest.fixture
def context(browser: Any, ui_server: str) -> Iterator[Any]:
    """A fresh browser profile (no cookies) at 1280x800 on the server."""
    ctx = browser.new_context(base_url=ui_server, viewport={"width": 1280, "height": 800})
    ctx.set_default_timeout(10_000)
    yield ctx
    ctx.close()


@pytest.fixture
def page(context: Any) -> Any:
    """A page whose uncaught script errors fail the test."""
    opened = context.new_page()
    errors: list[str] = []
    opened.on("pageerror", lambda error: errors.append(str(error)))
    yield opened
    assert not errors, f"script errors on the page: {errors}"


@pytest.fixture
def csrf(context: Any) -> str:
    """Signs the browser in as the admin (through the login API, as the login page does) and
    answers the session's CSRF token, for the API calls a test makes beside the page."""
    answer = context.request.post(
        "/api/v1/login", data={"username": "admin", "password": ADMIN_PASSWORD}
    )
    assert answer.ok, answer.text()
    return str(answer.json()["csrfToken"])


def deploy_in_browser(context: Any, csrf: str, source: str) -> None:
    """Deploy the flow `source` through the API in the browser's signed-in session (`csrf`),
    asserting it was taken."""
    answer = context.request.post(
        "/api/v1/flows",
        data=source,
        headers={"Content-Type": "application/x-yaml", "X-CSRF-Token": csrf},
    )
    assert answer.ok, answer.text()


@pytest.fixture
def signed_in(csrf: str, page: Any) -> Any:
    """The page of a browser signed in as the admin."""
    return page
