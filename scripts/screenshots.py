"""Screenshots of the web UI's main pages for the README, from a throwaway server.

Run from the repository's root with the project's virtual environment (`make screenshots`):

    .venv/bin/python -m scripts.screenshots [--out docs/screenshots]

It starts `tiercel server local` on a free port with its own data directory (an embedded
PostgreSQL) in a temporary folder and an admin password it sets, deploys a few example flows
(a data pipeline with Parallel and If, a report with inputs, a sync that fails), runs them in
waves a few seconds apart so the charts have a spread in time, signs in through the login page
with Playwright in Debian's chromium (`/usr/bin/chromium`, launched as tests/ui/conftest.py
does: no browser is downloaded) at 1280x800, saves one PNG per page and stops the server.
It takes about a minute.
"""

from __future__ import annotations

import argparse
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
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
VIEWPORT = {"width": 1280, "height": 800}
ENDED = ("SUCCESS", "WARNING", "FAILED", "KILLED")

PIPELINE = """id: daily_sales
namespace: shop.analytics
description: Extract yesterday's orders, clean and enrich them in parallel, load the warehouse.
labels:
  team: analytics
variables:
  table: analytics.sales_daily
tasks:
  - id: extract
    type: io.kestra.plugin.scripts.shell.Script
    script: |
      echo "Fetching orders of {{ execution.startDate | date('yyyy-MM-dd') }}"
      rows=$(( $(od -An -N2 -tu2 /dev/urandom) % 3000 ))
      echo "::{\\"outputs\\": {\\"rows\\": $rows}}::"
  - id: transform
    type: io.kestra.plugin.core.flow.Parallel
    tasks:
      - id: clean_orders
        type: io.kestra.plugin.core.log.Log
        message: "Cleaning {{ outputs.extract.vars.rows }} orders"
      - id: enrich_customers
        type: io.kestra.plugin.core.flow.Sleep
        duration: PT2S
      - id: fx_rates
        type: io.kestra.plugin.core.debug.Return
        format: EUR
  - id: check_volume
    type: io.kestra.plugin.core.flow.If
    condition: "{{ outputs.extract.vars.rows > 1000 }}"
    then:
      - id: load_warehouse
        type: io.kestra.plugin.core.log.Log
        message: "Loading into {{ vars.table }}"
    else:
      - id: low_volume
        type: io.kestra.plugin.core.log.Log
        level: WARN
        message: "Only {{ outputs.extract.vars.rows }} rows: load skipped"
  - id: notify
    type: io.kestra.plugin.core.log.Log
    message: "Sales of the day loaded"
triggers:
  - id: every_morning
    type: io.kestra.plugin.core.trigger.Schedule
    cron: "0 6 * * *"
"""
REPORT = """id: weekly_report
namespace: shop.marketing
description: Build the sales report of the last days and mail it.
inputs:
  - id: recipient
    type: STRING
    defaults: team@example.com
  - id: days
    type: INT
    defaults: 7
  - id: format
    type: SELECT
    values: [PDF, CSV, HTML]
    defaults: PDF
  - id: include_refunds
    type: BOOLEAN
    defaults: false
tasks:
  - id: build
    type: io.kestra.plugin.core.output.OutputValues
    values:
      title: "Sales of the last {{ inputs.days }} days"
  - id: render
    type: io.kestra.plugin.core.log.Log
    message: "Rendering '{{ outputs.build.values.title }}' as {{ inputs.format }}"
  - id: send
    type: io.kestra.plugin.core.log.Log
    message: "Sent to {{ inputs.recipient }}"
triggers:
  - id: monday_morning
    type: io.kestra.plugin.core.trigger.Schedule
    cron: "0 7 * * MON"
"""
FAILING = """id: sync_inventory
namespace: shop.ops
description: Reconcile stock levels with the warehouse API.
tasks:
  - id: fetch_stock
    type: io.kestra.plugin.core.log.Log
    message: Fetching stock levels from the warehouse API
  - id: reconcile
    type: io.kestra.plugin.core.execution.Fail
    errorMessage: "Warehouse API answered 503 Service Unavailable"
errors:
  - id: page_on_call
    type: io.kestra.plugin.core.log.Log
    level: ERROR
    message: "Inventory sync failed in {{ execution.id }}"
"""
REPORT_INPUTS = [
    {"recipient": "sales@example.com", "days": 7, "format": "PDF"},
    {"recipient": "ceo@example.com", "days": 30, "format": "HTML", "include_refunds": True},
    {"recipient": "finance@example.com", "days": 7, "format": "CSV"},
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def server(folder: Path, password: str) -> Iterator[str]:
    """A `tiercel server local` on its own data directory in `folder`; answers its base URL and
    stops it (SIGINT, as Ctrl-C does) on the way out."""
    port = _free_port()
    output = folder / "server.log"
    env = {**os.environ, "TIERCEL_ADMIN_PASSWORD": password}
    env.pop("TIERCEL_DATABASE_URL", None)
    command = [sys.executable, "-m", "engine.cli", "server", "local", "--host", "127.0.0.1"]
    command += ["--port", str(port), "--data-dir", str(folder / "data")]
    with output.open("w") as out:
        proc = subprocess.Popen(command, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, env=env)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                raise SystemExit(f"the server stopped:\n{output.read_text()}")
            try:
                if httpx.get(f"{base}/health/readiness", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit(f"the server was never ready:\n{output.read_text()}")
            time.sleep(0.2)
        yield base
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def populate(api: httpx.Client, waves: int, pause: float) -> str:
    """Deploy the example flows and run them in `waves` a few seconds apart; answers the id of
    the last pipeline execution once every execution has ended."""
    for source in (PIPELINE, REPORT, FAILING):
        api.post(
            "/api/v1/flows", content=source, headers={"Content-Type": "application/x-yaml"}
        ).raise_for_status()
    started: list[str] = []
    pipeline = ""
    for wave in range(waves):
        env = "prod" if wave % 2 else "staging"
        answer = api.post(f"/api/v1/executions/shop.analytics/daily_sales?labels=env:{env}")
        pipeline = answer.raise_for_status().json()["id"]
        started.append(pipeline)
        inputs = REPORT_INPUTS[wave % len(REPORT_INPUTS)]
        answer = api.post("/api/v1/executions/shop.marketing/weekly_report", json=inputs)
        started.append(answer.raise_for_status().json()["id"])
        if wave % 2 == 1:
            answer = api.post("/api/v1/executions/shop.ops/sync_inventory?labels=env:prod")
            started.append(answer.raise_for_status().json()["id"])
        if wave < waves - 1:
            time.sleep(pause)
    deadline = time.monotonic() + 120
    for execution_id in started:
        while api.get(f"/api/v1/executions/{execution_id}").json()["state"]["current"] not in ENDED:
            if time.monotonic() > deadline:
                raise SystemExit(f"execution {execution_id} never ended")
            time.sleep(0.2)
    return pipeline


def shoot(page: Any, out: Path, name: str, errors: list[str]) -> None:
    """Save the viewport as `out/name.png` once fonts are in and the page's requests settled."""
    page.wait_for_load_state("networkidle")
    page.evaluate("document.fonts.ready")
    page.wait_for_timeout(400)  # charts and graphs draw after their data arrives
    path = out / f"{name}.png"
    page.screenshot(path=str(path), animations="disabled")
    note = f" (script errors: {errors})" if errors else ""
    print(
        f"{path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}: "
        f"{path.stat().st_size // 1024} KiB{note}"
    )
    errors.clear()


def pages(page: Any, pipeline_execution: str) -> list[tuple[str, Callable[[], None]]]:
    """Each screenshot's name and how to bring the page to the state shown."""

    def flows() -> None:
        page.goto("/ui/flows")
        page.locator("#flow-rows .sparkline").first.wait_for()

    def topology() -> None:
        page.goto("/ui/flows/shop.analytics/daily_sales#topology")
        page.locator("#graph svg g.node").first.wait_for()

    def editor() -> None:
        page.goto("/ui/flows/shop.analytics/daily_sales/edit")
        page.locator("#graph svg g.node").first.wait_for()  # the live preview
        # Complete an expression on the last task's message: the outputs of the tasks above.
        # (Through the keyboard: clicking a line scrolls the editor sideways to its middle.)
        page.locator(".cm-content").click()
        page.keyboard.press("Control+End")
        for _ in range(5):  # above the trigger, on the `notify` task's message
            page.keyboard.press("ArrowUp")
        page.keyboard.press("End")
        page.keyboard.press("ArrowLeft")
        page.keyboard.insert_text(": {{ outputs.")
        page.keyboard.press("Control+Space")
        page.locator(".cm-tooltip-autocomplete li").first.wait_for()
        page.locator(".cm-scroller").evaluate("scroller => { scroller.scrollLeft = 0; }")

    def executions() -> None:
        page.goto("/ui/executions")
        page.locator("#execution-rows tr[data-execution-id]").first.wait_for()

    def execution() -> None:
        page.goto(f"/ui/executions/{pipeline_execution}")
        page.locator("#execution-state[data-state='SUCCESS']").wait_for()
        page.locator("#gantt .gantt-row[data-task-id='notify']").wait_for()
        # A task run's details beside the Gantt: its attempts and outputs.
        page.locator("#gantt .gantt-row[data-task-id='extract'] .gantt-label").click()

    def logs() -> None:
        page.goto("/ui/logs?range=")
        page.locator("#histogram g.bucket:not([data-total='0'])").first.wait_for()
        page.locator("#log-rows .log-message").first.wait_for()

    def dashboard() -> None:
        page.goto("/ui/dashboards")
        page.locator("#state-chart .uplot").wait_for()

    return [
        ("flows", flows),
        ("flow-topology", topology),
        ("editor-completion", editor),
        ("executions", executions),
        ("execution-gantt", execution),
        ("logs-histogram", logs),
        ("dashboard", dashboard),
    ]


def capture(base: str, password: str, pipeline_execution: str, out: Path) -> None:
    """Sign in through the login page and save every page of `pages`."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True
        )
        context = browser.new_context(base_url=base, viewport=VIEWPORT, color_scheme="light")
        context.set_default_timeout(20_000)
        page = context.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.goto("/ui/login")
        page.get_by_label("Username").fill("admin")
        page.get_by_label("Password").fill(password)
        page.get_by_role("button", name="Sign in").click()
        page.wait_for_url(lambda url: "/login" not in url)
        for name, show in pages(page, pipeline_execution):
            show()
            shoot(page, out, name, errors)
        browser.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "screenshots")
    parser.add_argument("--waves", type=int, default=6, help="rounds of executions (default 6)")
    parser.add_argument("--pause", type=float, default=6.0, help="seconds between rounds")
    args = parser.parse_args()
    if not CHROMIUM.exists():
        raise SystemExit(
            f"{CHROMIUM} is absent: install Debian's chromium (apt-get install chromium)"
        )
    args.out.mkdir(parents=True, exist_ok=True)
    password = secrets.token_urlsafe(18)
    with tempfile.TemporaryDirectory(prefix="tiercel-screenshots-") as folder:
        with server(Path(folder), password) as base:
            with httpx.Client(base_url=base, auth=("admin", password), timeout=30) as api:
                pipeline_execution = populate(api, args.waves, args.pause)
            capture(base, password, pipeline_execution, args.out.resolve())


if __name__ == "__main__":
    main()
