"""The web UI stays readable at 1280x800: triggers named in the topology, a wide graph at a
legible size, short task runs visible in the Gantt, and controls that say what they need."""

from __future__ import annotations

import time
import uuid
from typing import Any

from tests.ui.conftest import deploy_in_browser

WIDE = """id: wide
namespace: {ns}
tasks:
  - id: extract
    type: io.kestra.plugin.core.log.Log
    message: e
  - id: transform
    type: io.kestra.plugin.core.flow.Parallel
    tasks:
      - id: clean_orders
        type: io.kestra.plugin.core.log.Log
        message: c
      - id: enrich_customers
        type: io.kestra.plugin.core.log.Log
        message: e
  - id: check_volume
    type: io.kestra.plugin.core.flow.If
    condition: "{{{{ true }}}}"
    then:
      - id: load_warehouse
        type: io.kestra.plugin.core.log.Log
        message: l
    else:
      - id: low_volume
        type: io.kestra.plugin.core.log.Log
        message: w
  - id: publish
    type: io.kestra.plugin.core.log.Log
    message: p
  - id: notify
    type: io.kestra.plugin.core.log.Log
    message: n
triggers:
  - id: every_morning
    type: io.kestra.plugin.core.trigger.Schedule
    cron: "0 6 * * *"
  - id: upstream_done
    type: io.kestra.plugin.core.trigger.Flow
    conditions:
      - type: io.kestra.plugin.core.condition.ExecutionFlow
        namespace: {ns}
        flowId: other
"""
QUICK = """id: quick
namespace: {ns}
tasks:
  - id: blink
    type: io.kestra.plugin.core.log.Log
    message: fast
  - id: wait
    type: io.kestra.plugin.core.flow.Sleep
    duration: PT2S
"""


def _ns() -> str:
    return f"test.ui.r{uuid.uuid4().hex[:8]}"


def test_topology_names_each_trigger_and_labels_their_group_triggers(
    signed_in: Any, context: Any, csrf: str
) -> None:
    page, ns = signed_in, _ns()
    deploy_in_browser(context, csrf, WIDE.format(ns=ns))
    page.goto(f"/ui/flows/{ns}/wide")
    graph = page.locator("#graph svg")
    graph.locator("g.node").first.wait_for()

    assert "Triggers" in graph.locator(".cluster").all_text_contents()
    assert "·" not in graph.locator(".cluster").all_text_contents()
    schedule = graph.locator('g.trigger[data-trigger-id="every_morning"]')
    assert schedule.locator("text").all_text_contents() == ["every_morning", "Schedule"]
    upstream = graph.locator('g.trigger[data-trigger-id="upstream_done"]')
    assert upstream.locator("text").all_text_contents() == ["upstream_done", "Flow"]


def test_wide_topology_keeps_legible_labels_and_scrolls_sideways_with_a_hint(
    signed_in: Any, context: Any, csrf: str
) -> None:
    page, ns = signed_in, _ns()
    deploy_in_browser(context, csrf, WIDE.format(ns=ns))
    page.goto(f"/ui/flows/{ns}/wide")
    container = page.locator("#graph")
    container.locator("svg g.node").first.wait_for()

    label = container.locator('g.node[data-task-id="notify"] text').first
    # The label's drawn height: a fitted graph would shrink its 12 px text far below 10 px.
    assert label.bounding_box()["height"] >= 10
    sizes = container.evaluate(
        "box => ({ scroll: box.scrollWidth, client: box.clientWidth,"
        " svg: box.querySelector('svg').getBoundingClientRect().height,"
        " box: box.getBoundingClientRect().height })"
    )
    assert sizes["scroll"] > sizes["client"]  # the rest is a scroll away
    assert sizes["box"] - sizes["svg"] < 40  # no empty band under the graph
    assert page.get_by_text("scroll sideways to see all of it").is_visible()

    # The switch still fits the whole graph on demand, and the hint goes.
    page.locator("#fit-graph").click()
    assert container.evaluate("box => box.scrollWidth <= box.clientWidth + 1")
    assert not page.get_by_text("scroll sideways to see all of it").is_visible()


def test_small_topology_is_drawn_at_its_own_size_without_a_scrollbar(
    signed_in: Any, context: Any, csrf: str
) -> None:
    page, ns = signed_in, _ns()
    deploy_in_browser(context, csrf, QUICK.format(ns=ns))
    page.goto(f"/ui/flows/{ns}/quick")
    container = page.locator("#graph")
    container.locator("svg g.node").first.wait_for()
    assert container.evaluate("box => box.scrollWidth <= box.clientWidth")
    assert container.get_attribute("data-scale") == "1.00"
    assert not page.get_by_text("scroll sideways to see all of it").is_visible()


def test_editor_preview_takes_the_height_of_the_editor(
    signed_in: Any, context: Any, csrf: str
) -> None:
    page, ns = signed_in, _ns()
    deploy_in_browser(context, csrf, WIDE.format(ns=ns))
    page.goto(f"/ui/flows/{ns}/wide/edit")
    preview = page.locator("#graph")
    preview.locator("svg g.node").first.wait_for()
    editor = page.locator("#editor").bounding_box()
    box = preview.bounding_box()
    assert abs(box["height"] - editor["height"]) < 8
    assert (
        preview.locator('g.node[data-task-id="extract"] text').first.bounding_box()["height"] >= 10
    )


def test_gantt_shows_a_task_run_of_milliseconds_as_a_visible_bar_with_its_exact_duration(
    signed_in: Any, context: Any, csrf: str
) -> None:
    page, ns = signed_in, _ns()
    deploy_in_browser(context, csrf, QUICK.format(ns=ns))
    answer = context.request.post(f"/api/v1/executions/{ns}/quick", headers={"X-CSRF-Token": csrf})
    assert answer.ok, answer.text()
    execution_id = answer.json()["id"]
    deadline = time.monotonic() + 30
    while context.request.get(f"/api/v1/executions/{execution_id}").json()["state"][
        "current"
    ] not in ("SUCCESS", "WARNING", "FAILED", "KILLED"):
        assert time.monotonic() < deadline
        time.sleep(0.1)

    page.goto(f"/ui/executions/{execution_id}")
    page.locator("#execution-state[data-state='SUCCESS']").wait_for()
    bar = page.locator("#gantt .gantt-row[data-task-id='blink'] .gantt-bar")
    millis = int(bar.get_attribute("data-duration-ms"))
    assert millis < 500  # a few milliseconds against a run of two seconds
    assert bar.bounding_box()["width"] >= 4
    title = bar.get_attribute("title")
    assert title.endswith(f"{millis} ms"), title


def test_placeholders_fit_their_boxes_and_a_disabled_follow_says_why(signed_in: Any) -> None:
    page = signed_in
    fits = (
        "input => { const c = document.createElement('canvas').getContext('2d');"
        " c.font = getComputedStyle(input).font;"
        " return c.measureText(input.placeholder).width <= input.clientWidth; }"
    )
    page.goto("/ui/flows")
    search = page.get_by_label("Search")
    assert search.evaluate(fits)
    assert "description" in search.get_attribute("title")
    page.goto("/ui/logs")
    text = page.locator("#log-q")
    assert text.evaluate(fits)
    assert page.locator("#follow").is_disabled()
    assert page.get_by_text("Choose an execution").is_visible()


def test_dashboard_of_recent_executions_shows_their_hours_and_totals_in_the_legend(
    signed_in: Any, context: Any, csrf: str
) -> None:
    page, ns = signed_in, _ns()
    deploy_in_browser(context, csrf, QUICK.format(ns=ns).replace("PT2S", "PT0.1S"))
    for _ in range(3):
        answer = context.request.post(
            f"/api/v1/executions/{ns}/quick", headers={"X-CSRF-Token": csrf}
        )
        assert answer.ok, answer.text()
    deadline = time.monotonic() + 30
    while True:
        stats = context.request.get(f"/api/v1/dashboards/default/stats?namespace={ns}").json()
        if stats["states"].get("SUCCESS") == 3:
            break
        assert time.monotonic() < deadline, stats
        time.sleep(0.1)

    page.goto(f"/ui/dashboards?namespace={ns}")
    page.locator("#state-chart .uplot").wait_for()
    # Executions of the last minutes: the chart spans their hours, not a spike at the edge
    # of 24 empty ones.
    assert int(page.locator("#state-chart").get_attribute("data-buckets")) <= 4
    # Without hovering, the legend gives each series' total rather than "--".
    legend = page.locator("#state-chart .u-legend")
    success = legend.locator(".u-series", has_text="SUCCESS").locator(".u-value")
    assert success.inner_text() == "3"
    assert "--" not in legend.locator(".u-value").all_inner_texts()
    # The percentiles stay on one line.
    figure = page.locator("#kpi-percentiles")
    line = figure.evaluate("node => parseFloat(getComputedStyle(node).lineHeight) || 30")
    assert figure.bounding_box()["height"] < 1.5 * line
