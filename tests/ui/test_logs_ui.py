"""The logs page in a real browser: dragging across the histogram narrows the search to the
span dragged over."""

from __future__ import annotations

import time
import uuid
from typing import Any

FLOW = """id: {flow}
namespace: {ns}
tasks:
  - id: say
    type: io.kestra.plugin.core.log.Log
    message: "{word} line"
"""


def _lines(context: Any, ns: str) -> list[dict[str, Any]]:
    answer = context.request.get(f"/api/v1/logs/search?namespace={ns}&size=100")
    return list(answer.json()["results"])


def _run_and_wait_for_line(context: Any, csrf: str, ns: str, word: str) -> None:
    headers = {"X-CSRF-Token": csrf}
    source = FLOW.format(flow=word, ns=ns, word=word)
    answer = context.request.post(
        "/api/v1/flows", data=source, headers={**headers, "Content-Type": "application/x-yaml"}
    )
    assert answer.ok, answer.text()
    assert context.request.post(f"/api/v1/executions/{ns}/{word}", headers=headers).ok
    deadline = time.monotonic() + 30
    while not any(word in line["message"] for line in _lines(context, ns)):
        assert time.monotonic() < deadline, f"no {word} line logged"
        time.sleep(0.1)


def test_dragging_across_the_histogram_narrows_the_list_to_that_span(
    signed_in: Any, context: Any, csrf: str
) -> None:
    page, ns = signed_in, f"test.ui.l{uuid.uuid4().hex[:8]}"
    _run_and_wait_for_line(context, csrf, ns, "alpha")
    time.sleep(2.5)  # the histogram counts per second here: two buckets apart at least
    _run_and_wait_for_line(context, csrf, ns, "beta")

    page.goto(f"/ui/logs?namespace={ns}&range=")
    messages = page.locator("#log-rows .log-message")
    page.wait_for_function(
        "() => [...document.querySelectorAll('#log-rows .log-message')]"
        ".some(m => m.textContent.includes('alpha'))"
    )
    assert any("beta" in m for m in messages.all_inner_texts())
    buckets = page.locator("#histogram g.bucket:not([data-total='0'])")
    assert buckets.count() >= 2

    # Drag across the last bucket that holds lines: only the beta line's second.
    box = buckets.last.locator("rect.hit").bounding_box()
    assert box is not None
    y = box["y"] + box["height"] / 2
    page.mouse.move(box["x"] + 2, y)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] / 2, y, steps=4)
    page.mouse.move(box["x"] + box["width"] - 2, y, steps=4)
    page.mouse.up()

    page.locator("#time-span").wait_for()
    page.wait_for_function(
        "() => { const m = [...document.querySelectorAll('#log-rows .log-message')];"
        " return m.length > 0 && m.every(x => !x.textContent.includes('alpha')); }"
    )
    assert all("beta" in m for m in messages.all_inner_texts())
    assert "startDate=" in page.url and "endDate=" in page.url

    # Clearing the span brings the whole range back.
    page.get_by_role("button", name="Clear the time span").click()
    page.wait_for_function(
        "() => [...document.querySelectorAll('#log-rows .log-message')]"
        ".some(m => m.textContent.includes('alpha'))"
    )


SLOW = """id: slow
namespace: {ns}
tasks:
  - id: before
    type: io.kestra.plugin.core.log.Log
    message: before the pause
  - id: wait
    type: io.kestra.plugin.core.flow.Sleep
    duration: PT1.5S
  - id: after
    type: io.kestra.plugin.core.log.Log
    message: after the pause
"""


def test_follow_mode_shows_lines_as_the_execution_logs_them(
    signed_in: Any, context: Any, csrf: str
) -> None:
    page, ns = signed_in, f"test.ui.l{uuid.uuid4().hex[:8]}"
    headers = {"X-CSRF-Token": csrf}
    answer = context.request.post(
        "/api/v1/flows",
        data=SLOW.format(ns=ns),
        headers={**headers, "Content-Type": "application/x-yaml"},
    )
    assert answer.ok, answer.text()
    execution_id = context.request.post(f"/api/v1/executions/{ns}/slow", headers=headers).json()[
        "id"
    ]
    page.goto(f"/ui/logs?executionId={execution_id}&range=")
    page.get_by_label("Follow the execution").check()
    page.locator("#log-rows .log-message", has_text="before the pause").wait_for()
    page.locator("#log-rows .log-message", has_text="after the pause").wait_for(timeout=20_000)
    page.locator("#log-count", has_text="the execution ended").wait_for()
    assert not page.get_by_label("Follow the execution").is_checked()
