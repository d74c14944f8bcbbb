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

    # The projections panel: every read model's lag (its Rebuild button: test_projections_ui.py).
    projection = page.locator("#projections tr[data-projection='executions']")
    projection.wait_for()
    assert projection.locator("td.lag").inner_text().isdigit()
    assert projection.get_by_role("button", name="Rebuild").is_enabled()


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
    chart.locator("rect.bar").first.wait_for()
    # The bars, in the chart's order; the same figures behind "Show data".
    bars = chart.locator("rect.bar")
    assert [bars.nth(i).get_attribute("data-category") for i in range(2)] == ["ok", "bad"]
    assert [bars.nth(i).get_attribute("data-value") for i in range(2)] == ["2", "1"]
    chart.get_by_text("Show data").click()
    texts = chart.locator("tbody tr").all_inner_texts()
    assert texts[0].split()[:2] == ["ok", "2"] and texts[1].split()[:2] == ["bad", "1"]
    assert (
        page.locator("#chart-note").inner_text().endswith("Counted from the executions read model")
    )
    assert f"dashboard={board}" in page.url


EVERY_CHART = """id: {id}
title: Every chart of {ns}
charts:
  - id: timeline
    type: io.kestra.plugin.core.dashboard.chart.TimeSeries
    chartOptions: {{displayName: Executions over time, column: date, colorByColumn: state}}
    data:
      type: io.kestra.plugin.core.dashboard.data.Executions
      columns:
        date: {{field: START_DATE}}
        state: {{field: STATE}}
        total: {{agg: COUNT, displayName: Executions}}
      where:
        - {{field: NAMESPACE, type: EQUAL_TO, value: {ns}}}
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
  - id: per_state
    type: io.kestra.plugin.core.dashboard.chart.Pie
    chartOptions: {{displayName: Per state, column: state}}
    data:
      type: io.kestra.plugin.core.dashboard.data.Executions
      columns:
        state: {{field: STATE}}
        total: {{agg: COUNT}}
      where:
        - {{field: NAMESPACE, type: EQUAL_TO, value: {ns}}}
  - id: ratio
    type: io.kestra.plugin.core.dashboard.chart.KPI
    chartOptions: {{displayName: Success ratio, numberType: PERCENTAGE}}
    data:
      type: io.kestra.plugin.core.dashboard.data.ExecutionsKPI
      columns: {{field: ID, agg: COUNT}}
      where:
        - {{field: NAMESPACE, type: EQUAL_TO, value: {ns}}}
      numerator:
        - {{field: STATE, type: IN, values: [SUCCESS]}}
  - id: runs
    type: io.kestra.plugin.core.dashboard.chart.Table
    chartOptions: {{displayName: Runs, pageSize: 2}}
    data:
      type: io.kestra.plugin.core.dashboard.data.Executions
      columns:
        id: {{field: ID}}
        flow: {{field: FLOW_ID}}
      where:
        - {{field: NAMESPACE, type: EQUAL_TO, value: {ns}}}
  - id: broken
    type: io.kestra.plugin.core.dashboard.chart.Table
    chartOptions: {{displayName: Asks too many rows, pageSize: 20000}}
    data:
      type: io.kestra.plugin.core.dashboard.data.Executions
      columns:
        id: {{field: ID}}
  - id: note
    type: io.kestra.plugin.core.dashboard.chart.Markdown
    content: |
      # On call
      **Bold** and <b>raw</b> <script>window.injected = 1</script>
      - one
      - two
      [a link](javascript:window.injected=2) and [the docs](https://example.org/docs)
"""


def _saved_dashboard(context: Any, csrf: str, yaml: str, board: str) -> None:
    _post(context, csrf, "/api/v1/dashboards", yaml)
    deadline = time.monotonic() + 30
    while board not in str(context.request.get(f"/api/v1/dashboards?q={board}").json()):
        assert time.monotonic() < deadline, "the dashboard never listed"
        time.sleep(0.1)


def test_every_chart_type_is_drawn_and_a_failing_chart_keeps_its_error_to_itself(
    signed_in: Any, context: Any, csrf: str
) -> None:
    page, ns = signed_in, _ns()
    _executions(context, csrf, ns, {"ok": 2, "bad": 1})
    board = f"ui-{uuid.uuid4().hex[:8]}"
    _saved_dashboard(context, csrf, EVERY_CHART.format(id=board, ns=ns), board)
    page.goto(f"/ui/dashboards?dashboard={board}")
    page.locator("#custom-heading", has_text=f"Every chart of {ns}").wait_for()
    # Each chart is asked on its own: wait until every one is drawn or has its error.
    page.wait_for_function(
        "document.querySelectorAll('#custom-charts .chart').length === 7"
        " && !document.querySelector('#custom-charts .chart:not([data-state])')"
    )

    # TimeSeries: uPlot draws a series per state, named in its legend.
    timeline = page.locator("#chart-timeline")
    timeline.locator(".uplot canvas").first.wait_for()
    assert timeline.locator(".timeseries").get_attribute("data-series") == "2"
    legend = timeline.locator(".u-legend .u-series").all_inner_texts()
    assert len(legend) == 3  # the time, then the two states
    assert any("FAILED" in s for s in legend) and any("SUCCESS" in s for s in legend)
    # Hovering the plot shows each series' value at the cursor in the legend.
    timeline.locator(".u-over").hover(position={"x": 5, "y": 5})
    timeline.locator(".u-over").hover()
    page.wait_for_function(
        "[...document.querySelectorAll('#chart-timeline .u-legend .u-value')]"
        ".slice(1).some((cell) => /^[0-9]+$/.test(cell.textContent.trim()))"
    )

    # Bar: one bar per flow, longest first.
    assert page.locator("#chart-per_flow rect.bar").count() == 2

    # Pie: a slice per state, and a legend with each value and its share.
    pie = page.locator("#chart-per_state")
    assert pie.locator("svg .slice").count() == 2
    assert pie.locator("svg").get_attribute("role") == "img"
    shares = pie.locator(".chart-legend li").all_inner_texts()
    assert sorted(shares) == ["FAILED: 1 (33.3 %)", "SUCCESS: 2 (66.7 %)"]

    # KPI: the ratio as a percentage, with its label and the counts it comes from.
    ratio = page.locator("#chart-ratio .chart-kpi")
    assert ratio.locator(".value").inner_text() == "66.7 %"
    assert "Success ratio" in ratio.inner_text() and "2 of 3" in ratio.inner_text()

    # Markdown: its marks rendered, its HTML shown as text and never run.
    note = page.locator("#chart-note .markdown")
    assert note.locator("h4").inner_text() == "On call"
    assert note.locator("strong").inner_text() == "Bold"
    assert note.locator("li").count() == 2
    assert "<b>raw</b>" in note.inner_text() and "<script>" in note.inner_text()
    assert note.locator("b, script").count() == 0
    assert page.evaluate("window.injected") is None
    assert note.locator("a").count() == 1
    assert note.locator("a").get_attribute("href") == "https://example.org/docs"

    # Table: two rows a page, the route's paging, and headers that sort.
    runs = page.locator("#chart-runs")
    assert runs.locator("tbody tr").count() == 2
    assert runs.locator(".page-of").inner_text() == "Page 1 of 2 (3 rows)"
    first_page = runs.locator("tbody tr").all_inner_texts()
    runs.get_by_role("button", name="Next").click()
    runs.locator(".page-of", has_text="Page 2 of 2").wait_for()
    assert runs.locator("tbody tr").count() == 1
    assert runs.locator("tbody tr").inner_text() not in first_page
    runs.get_by_role("button", name="Previous").click()
    runs.locator(".page-of", has_text="Page 1 of 2").wait_for()
    runs.get_by_role("button", name="flow").click()
    assert runs.locator("th", has_text="flow").get_attribute("aria-sort") == "ascending"
    flows = [r.split()[1] for r in runs.locator("tbody tr").all_inner_texts()]
    assert flows == sorted(flows)

    # The chart the API refuses shows why in its own box; the others are drawn regardless.
    assert "pageSize" in page.locator("#chart-broken .chart-error").inner_text()
    assert page.locator("#chart-per_flow").get_attribute("data-state") == "drawn"

    # Every chart but Markdown and Table has its figures as a table too.
    page.locator("#chart-per_state").get_by_text("Show data").click()
    assert page.locator("#chart-per_state .show-data tbody tr").count() == 2

    # The namespace typed narrows every chart: another namespace leaves them without a row.
    page.get_by_label("Namespace").fill(f"{ns}.elsewhere")
    page.get_by_label("Namespace").press("Enter")
    page.locator("#chart-per_flow", has_text="No row in this range.").wait_for()
    page.locator("#chart-ratio .value", has_text="—").wait_for()
    assert page.locator("#chart-note strong").inner_text() == "Bold"


def test_dashboard_editor_shows_a_problem_at_its_line_then_saves(
    signed_in: Any, context: Any, csrf: str
) -> None:
    page = signed_in
    board = f"ed-{uuid.uuid4().hex[:8]}"
    page.goto("/ui/dashboards")
    page.get_by_role("link", name="New dashboard").click()
    page.wait_for_url("**/ui/dashboards/new")
    page.locator(".cm-content", has_text="title:").wait_for()
    page.locator(".cm-content").click()
    page.keyboard.press("Control+A")
    page.keyboard.insert_text(
        f"id: {board}\ntitle: Drafted\ncolour: blue\ncharts:\n  - id: note\n"
        "    type: Markdown\n    content: hello\n"
    )
    problem = page.locator("#problems li[data-line='3']")
    problem.wait_for()
    assert "colour" in problem.inner_text()

    # Remove the unknown key: the editor says the source is valid, and Save creates it.
    page.get_by_text("colour: blue").click()
    page.keyboard.press("Home")
    page.keyboard.press("Shift+End")
    page.keyboard.press("Backspace")
    page.keyboard.press("Backspace")
    page.locator("#validation-status", has_text="Valid").wait_for()
    page.get_by_role("button", name="Save").click()
    page.wait_for_url(f"**/ui/dashboards/{board}/edit")
    assert context.request.get(f"/api/v1/dashboards/{board}").json()["title"] == "Drafted"

    # Saving again changes the same dashboard.
    page.get_by_text("title: Drafted").click()
    page.keyboard.press("End")
    page.keyboard.insert_text(" again")
    page.get_by_role("button", name="Save").click()
    page.locator("#dashboard-editor-page[data-saves='2']").wait_for()
    assert context.request.get(f"/api/v1/dashboards/{board}").json()["title"] == "Drafted again"
    page.get_by_role("link", name="View").click()
    page.locator("#chart-note .markdown", has_text="hello").wait_for()


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
