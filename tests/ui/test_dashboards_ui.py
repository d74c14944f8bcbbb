"""The dashboards, audit and plugins pages in a real browser: the default dashboard's "All"
series is the sum of the states, a custom dashboard is drawn chart by chart, the projections
panel shows lags and how to rebuild, the audit trail links to its objects, and a plugin's
documentation comes with an example."""

from __future__ import annotations

import time
import uuid
from typing import Any

OK = """id: ok
namespace: {ns}
tasks:
  - id: hello
    type: io.kestra.plugin.core.log.Log
    message: hello
"""
BAD = """id: bad
namespace: {ns}
tasks:
  - id: boom
    type: io.kestra.plugin.core.execution.Fail
"""
DASHBOARD = """id: {id}
title: Flows of {ns}
description: Executions per flow of one namespace
charts:
  - id: per_flow
    type: io.kestra.plugin.core.dashboard.chart.Bar
    chartOptions: {{displayName: Executions per flow, column: flow}}
    data:
      type: io.kestra.plugin.core.dashboard.data.Executions
      columns:
        flow: {{field: FLOW_ID}}
        total: {{agg: COUNT}}
      where:
        - {{field: NAMESPACE, type: EQUAL_TO, value: {ns}}}
      orderBy:
        - {{column: total, order: DESC}}
  - id: note
    type: io.kestra.plugin.core.dashboard.chart.Markdown
    content: "Counted from the executions read model"
"""


def _ns() -> str:
    return f"test.ui.d{uuid.uuid4().hex[:8]}"


def _post(context: Any, csrf: str, path: str, yaml: str | None = None) -> Any:
    headers = {"X-CSRF-Token": csrf}
    if yaml is not None:
        headers["Content-Type"] = "application/x-yaml"
    answer = context.request.post(path, data=yaml, headers=headers)
    assert answer.ok, answer.text()
    return answer.json()


def _executions(context: Any, csrf: str, ns: str, runs: dict[str, int]) -> list[str]:
    """Deploy the flows, run each as often as asked, and wait until the dashboard counts them."""
    ids = []
    for flow, times in runs.items():
        _post(context, csrf, "/api/v1/flows", (OK if flow == "ok" else BAD).format(ns=ns))
        ids += [_post(context, csrf, f"/api/v1/executions/{ns}/{flow}")["id"] for _ in range(times)]
    deadline = time.monotonic() + 30
    while True:
        stats = context.request.get(f"/api/v1/dashboards/default/stats?namespace={ns}").json()
        ended = sum(n for s, n in stats["states"].items() if s in ("SUCCESS", "FAILED"))
        if ended == len(ids):
            return ids
        assert time.monotonic() < deadline, stats
        time.sleep(0.1)


def test_default_dashboard_all_series_equals_the_sum_of_the_states(
    signed_in: Any, context: Any, csrf: str
) -> None:
    page, ns = signed_in, _ns()
    ids = _executions(context, csrf, ns, {"ok": 3, "bad": 2})
    page.goto(f"/ui/dashboards?namespace={ns}")
    page.locator("#kpi-total", has_text="5").wait_for()
    assert page.locator("#kpi-success").inner_text() == "60.0 %"

    rows = page.locator("#state-table tbody tr")
    assert rows.count() >= 1
    for i in range(rows.count()):
        counts = [int(c) for c in rows.nth(i).locator("td.count").all_inner_texts()]
        assert int(rows.nth(i).locator("td.all").inner_text()) == sum(counts)
    footer = page.locator("#state-table tfoot")
    assert footer.locator("td[data-state='SUCCESS']").inner_text() == "3"
    assert footer.locator("td[data-state='FAILED']").inner_text() == "2"
    assert footer.locator("td.all").inner_text() == "5"
    assert page.locator("#state-chart .uplot").count() == 1  # the chart is drawn too

    failures = page.locator("#failures a")
    assert len(failures.all_inner_texts()) == 2
    assert set(failures.all_inner_texts()) <= set(ids)

    # The projections panel: every read model's lag, and the command that rebuilds one.
    projection = page.locator("#projections tr[data-projection='executions']")
    projection.wait_for()
    assert projection.locator("td.lag").inner_text().isdigit()
    projection.get_by_role("button", name="Rebuild…").click()
    command = page.locator("#rebuild-command")
    assert command.inner_text() == "tiercel sys reindex --projection executions"


def test_custom_dashboard_is_drawn_chart_by_chart(signed_in: Any, context: Any, csrf: str) -> None:
    page, ns = signed_in, _ns()
    _executions(context, csrf, ns, {"ok": 2, "bad": 1})
    board = f"ui-{uuid.uuid4().hex[:8]}"
    _post(context, csrf, "/api/v1/dashboards", DASHBOARD.format(id=board, ns=ns))
    deadline = time.monotonic() + 30
    while board not in str(context.request.get(f"/api/v1/dashboards?q={board}").json()):
        assert time.monotonic() < deadline, "the dashboard never listed"
        time.sleep(0.1)

    page.goto("/ui/dashboards")
    page.get_by_label("Dashboard", exact=True).select_option(board)
    page.locator("#custom-heading", has_text=f"Flows of {ns}").wait_for()
    chart = page.locator("#chart-per_flow")
    chart.locator("tbody tr").first.wait_for()
    texts = chart.locator("tbody tr").all_inner_texts()
    assert texts[0].split()[:2] == ["ok", "2"] and texts[1].split()[:2] == ["bad", "1"]
    assert (
        page.locator("#chart-note").inner_text().endswith("Counted from the executions read model")
    )
    assert f"dashboard={board}" in page.url


def test_audit_trail_links_a_label_change_to_its_execution(
    signed_in: Any, context: Any, csrf: str
) -> None:
    page, ns = signed_in, _ns()
    [execution_id] = _executions(context, csrf, ns, {"ok": 1})
    answer = context.request.post(
        f"/api/v1/executions/{execution_id}/labels?reason=tidy",
        data='[{"key": "audited", "value": "yes"}]',
        headers={"X-CSRF-Token": csrf, "Content-Type": "application/json"},
    )
    assert answer.ok, answer.text()

    page.goto("/ui/audit")
    page.get_by_label("Object id").fill(execution_id)
    page.get_by_role("button", name="Search").click()
    row = page.locator("#audit-rows tr", has_text="ExecutionLabelsChanged").filter(
        has_text=execution_id
    )
    row.wait_for()
    assert "Reason: tidy" in row.inner_text()
    row.get_by_role("link", name=execution_id).click()
    page.wait_for_url(f"**/ui/executions/{execution_id}")
    page.locator("#execution-state[data-state='SUCCESS']").wait_for()


def test_plugin_documentation_lists_properties_and_an_example(signed_in: Any) -> None:
    page = signed_in
    page.goto("/ui/plugins")
    page.get_by_label("Search plugins").fill("core.log.Log")
    page.locator("#plugin-list button[data-type='io.kestra.plugin.core.log.Log']").click()
    page.locator("#plugin-title", has_text="io.kestra.plugin.core.log.Log").wait_for()
    example = page.locator("#plugin-example").inner_text()
    assert "type: io.kestra.plugin.core.log.Log" in example and "message:" in example
    message = page.locator("#plugin-doc tr", has_text="message")
    assert "required" in message.first.inner_text()
    assert "type=io.kestra.plugin.core.log.Log" in page.url
