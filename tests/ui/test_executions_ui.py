"""The executions pages in a real browser: a live Gantt, replay from a task, filter chips in
condition groups, a bulk action previewed by its dry run, and the history scrubber."""

from __future__ import annotations

import time
import uuid
from typing import Any

from tests.ui.conftest import deploy_in_browser

FLOW = """id: {flow}
namespace: {ns}
tasks:
  - id: first
    type: io.kestra.plugin.core.log.Log
    message: "first of {{{{ execution.id }}}}"
  - id: wait
    type: io.kestra.plugin.core.flow.Sleep
    duration: {sleep}
  - id: last
    type: io.kestra.plugin.core.log.Log
    message: last
"""
FAILING = """id: {flow}
namespace: {ns}
tasks:
  - id: first
    type: io.kestra.plugin.core.log.Log
    message: before the failure
  - id: boom
    type: io.kestra.plugin.core.execution.Fail
    errorMessage: broken on purpose
"""
WARNING = """id: {flow}
namespace: {ns}
tasks:
  - id: shaky
    type: io.kestra.plugin.core.execution.Fail
    allowFailure: true
"""
ENDED = ("SUCCESS", "WARNING", "FAILED", "KILLED")


def _ns() -> str:
    return f"test.ui.x{uuid.uuid4().hex[:8]}"


def _run(context: Any, csrf: str, ns: str, flow: str, labels: tuple[str, ...] = ()) -> str:
    query = "&".join(f"labels={label}" for label in labels)
    answer = context.request.post(
        f"/api/v1/executions/{ns}/{flow}?{query}", headers={"X-CSRF-Token": csrf}
    )
    assert answer.ok, answer.text()
    return str(answer.json()["id"])


def _ended(context: Any, execution_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + 30
    while True:
        execution = context.request.get(f"/api/v1/executions/{execution_id}").json()
        if execution["state"]["current"] in ENDED:
            return dict(execution)
        assert time.monotonic() < deadline, execution["state"]
        time.sleep(0.1)


def test_gantt_of_a_running_execution_reaches_success_without_reloading(
    signed_in: Any, context: Any, csrf: str
) -> None:
    page, ns = signed_in, _ns()
    deploy_in_browser(context, csrf, FLOW.format(flow="live", ns=ns, sleep="PT3S"))
    execution_id = _run(context, csrf, ns, "live")
    page.goto(f"/ui/executions/{execution_id}")
    state = page.locator("#execution-state")
    state.wait_for()
    assert state.get_attribute("data-state") not in ENDED  # still running when the page opened
    page.evaluate("window.pageMarker = 'same page'")
    page.locator("#gantt .gantt-row[data-task-id='wait'][data-state='RUNNING']").wait_for()

    page.locator("#execution-state[data-state='SUCCESS']").wait_for(timeout=20_000)
    rows = page.locator("#gantt .gantt-row")
    assert [rows.nth(i).get_attribute("data-task-id") for i in range(rows.count())] == [
        "first",
        "wait",
        "last",
    ]
    assert {rows.nth(i).get_attribute("data-state") for i in range(3)} == {"SUCCESS"}
    assert page.evaluate("window.pageMarker") == "same page"  # updated in place, not reloaded

    page.get_by_role("tab", name="Topology").click()
    node = page.locator("#graph g.node[data-task-id='last']")
    node.wait_for()
    assert "state-SUCCESS" in (node.get_attribute("class") or "")


def test_replay_from_a_task_opens_the_new_execution_which_keeps_earlier_runs(
    signed_in: Any, context: Any, csrf: str
) -> None:
    page, ns = signed_in, _ns()
    deploy_in_browser(context, csrf, FLOW.format(flow="again", ns=ns, sleep="PT0.1S"))
    original = _run(context, csrf, ns, "again")
    _ended(context, original)
    page.goto(f"/ui/executions/{original}")
    page.locator("#execution-state[data-state='SUCCESS']").wait_for()

    page.locator("#gantt .gantt-row[data-task-id='wait'] .gantt-label").click()
    page.get_by_role("button", name="Replay from this task").click()
    page.wait_for_url(lambda url: "/ui/executions/" in url and original not in url)
    replay_id = page.url.rsplit("/", 1)[-1].split("#")[0]
    page.locator("#execution-state[data-state='SUCCESS']").wait_for(timeout=20_000)
    assert page.locator("#facts").get_by_role("link", name=original).is_visible()

    replay = _ended(context, replay_id)
    assert replay["replayOf"] == original
    runs = {r["taskId"]: r for r in replay["taskRunList"]}
    assert set(runs) == {"first", "wait", "last"}
    kept = [r for r in _ended(context, original)["taskRunList"] if r["taskId"] == "first"]
    # The run before the task is kept as it ran, not run again.
    assert runs["first"]["state"]["startDate"] == kept[0]["state"]["startDate"]


def test_executions_filtered_by_two_states_and_a_label_then_bulk_labelled_after_dry_run(
    signed_in: Any, context: Any, csrf: str
) -> None:
    page, ns = signed_in, _ns()
    for source, flow in ((FLOW, "ok"), (FAILING, "bad"), (WARNING, "meh")):
        deploy_in_browser(context, csrf, source.format(flow=flow, ns=ns, sleep="PT0S"))
    wanted = {
        _run(context, csrf, ns, "ok", ("team:a",)),
        _run(context, csrf, ns, "bad", ("team:a",)),
    }
    others = {
        _run(context, csrf, ns, "ok", ("team:b",)),  # another label
        _run(context, csrf, ns, "meh", ("team:a",)),  # WARNING: another state
    }
    for execution_id in wanted | others:
        _ended(context, execution_id)

    page.goto("/ui/executions")
    page.get_by_label("Filter", exact=True).select_option("namespace")
    page.get_by_label("Value", exact=True).fill(ns)
    page.get_by_role("button", name="Add to group").click()
    page.get_by_label("Filter", exact=True).select_option("state")
    page.get_by_label("SUCCESS", exact=True).check()
    page.get_by_label("FAILED", exact=True).check()
    page.get_by_role("button", name="Add to group").click()
    page.get_by_label("Filter", exact=True).select_option("labels")
    page.get_by_label("Value", exact=True).fill("team:a")
    page.get_by_role("button", name="Add to group").click()

    rows = page.locator("#execution-rows tr[data-execution-id]")
    page.wait_for_function(
        "n => document.querySelectorAll('#execution-rows tr[data-execution-id]').length === n",
        arg=2,
    )
    shown = {rows.nth(i).get_attribute("data-execution-id") for i in range(rows.count())}
    assert shown == wanted

    # The same list after a reload: the filters live in the URL.
    page.reload()
    page.wait_for_function(
        "n => document.querySelectorAll('#execution-rows tr[data-execution-id]').length === n",
        arg=2,
    )
    assert page.locator("#groups .chip").count() == 3

    # A second condition group, joined by OR: the team:b execution of the namespace too.
    page.get_by_label("Filter", exact=True).select_option("namespace")
    page.get_by_label("Value", exact=True).fill(ns)
    page.get_by_role("button", name="Add as OR group").click()
    page.get_by_label("Filter", exact=True).select_option("labels")
    page.get_by_label("Value", exact=True).fill("team:b")
    page.get_by_role("button", name="Add to group").click()
    page.wait_for_function(
        "n => document.querySelectorAll('#execution-rows tr[data-execution-id]').length === n",
        arg=3,
    )
    assert page.get_by_role("group", name="Condition group 2").inner_text().count(ns) == 1
    page.get_by_role("button", name="Remove filter label team:b").click()
    page.get_by_role("button", name=f"Remove filter namespace {ns}").last.click()
    page.wait_for_function(
        "n => document.querySelectorAll('#execution-rows tr[data-execution-id]').length === n",
        arg=2,
    )

    # A bulk action on every match: the dry run's count is shown before anything changes.
    page.get_by_label("Action", exact=True).select_option("labels")
    page.get_by_label("Labels to set").fill("checked:yes")
    page.get_by_role("button", name="On every match…").click()
    assert page.locator("#bulk-count").inner_text() == "2"
    for execution_id in wanted:
        labels = context.request.get(f"/api/v1/executions/{execution_id}").json()["labels"]
        assert {"key": "checked", "value": "yes"} not in labels
    page.get_by_role("button", name="Labels 2 executions").click()
    page.locator("#bulk-progress[data-state='SUCCESS']").wait_for(timeout=20_000)
    for execution_id in wanted:
        labels = context.request.get(f"/api/v1/executions/{execution_id}").json()["labels"]
        assert {"key": "checked", "value": "yes"} in labels

    # By selection: the one row ticked is the one the dry run counts.
    one = sorted(wanted)[0]
    page.get_by_label(f"Select execution {one}").check()
    assert page.locator("#selected-count").inner_text() == "1 selected"
    page.get_by_label("Action", exact=True).select_option("kill")
    page.get_by_role("button", name="On selected…").click()
    page.locator("#bulk-count[data-count='1']").wait_for()
    assert "1 would be refused" in page.locator("#bulk-dry-run").inner_text()  # it ended
    assert page.get_by_role("button", name="Kill 0 executions").is_disabled()


def test_history_of_a_failed_execution_scrubbed_to_before_its_failure(
    signed_in: Any, context: Any, csrf: str
) -> None:
    page, ns = signed_in, _ns()
    deploy_in_browser(context, csrf, FAILING.format(flow="fails", ns=ns))
    execution_id = _run(context, csrf, ns, "fails")
    assert _ended(context, execution_id)["state"]["current"] == "FAILED"

    page.goto(f"/ui/executions/{execution_id}#history")
    page.locator("#asof-state[data-state='FAILED']").wait_for()
    events = page.locator("#history-events li")
    failed_at = int(
        page.locator("#history-events li.state-FAILED").first.get_attribute("data-index")
    )
    assert failed_at > 0

    page.locator("#history-slider").fill(str(failed_at - 1))
    before = events.nth(failed_at - 1).get_attribute("data-position")
    page.locator(f"#asof-state[data-position='{before}']").wait_for()
    assert page.locator("#asof-state").get_attribute("data-state") == "RUNNING"
    assert events.nth(failed_at - 1).get_attribute("aria-current") == "step"
    first = page.locator("#asof-gantt .gantt-row[data-task-id='first']")
    assert first.get_attribute("data-state") == "SUCCESS"
    assert page.locator("#execution-state").get_attribute("data-state") == "FAILED"  # still now

    page.get_by_role("button", name="Back to now").click()
    page.locator("#asof-state[data-state='FAILED']").wait_for()


def test_kill_from_the_execution_page_shows_killed_without_reloading(
    signed_in: Any, context: Any, csrf: str
) -> None:
    page, ns = signed_in, _ns()
    deploy_in_browser(context, csrf, FLOW.format(flow="long", ns=ns, sleep="PT30S"))
    execution_id = _run(context, csrf, ns, "long")
    page.goto(f"/ui/executions/{execution_id}")
    page.locator("#gantt .gantt-row[data-task-id='wait'][data-state='RUNNING']").wait_for()
    page.evaluate("window.pageMarker = 'same page'")
    page.once("dialog", lambda dialog: dialog.accept())
    page.get_by_role("button", name="Kill", exact=True).click()
    page.locator("#execution-state[data-state='KILLED']").wait_for(timeout=20_000)
    assert page.locator("#gantt .gantt-row[data-task-id='wait']").get_attribute("data-state") in (
        "KILLED",
        "FAILED",
    )
    assert page.get_by_role("button", name="Kill", exact=True).is_disabled()
    assert page.evaluate("window.pageMarker") == "same page"


def test_failed_task_run_set_to_success_from_its_panel_lets_the_execution_succeed(
    signed_in: Any, context: Any, csrf: str
) -> None:
    page, ns = signed_in, _ns()
    deploy_in_browser(context, csrf, FAILING.format(flow="mend", ns=ns))
    execution_id = _run(context, csrf, ns, "mend")
    assert _ended(context, execution_id)["state"]["current"] == "FAILED"
    page.goto(f"/ui/executions/{execution_id}")
    page.locator("#execution-state[data-state='FAILED']").wait_for()

    page.locator("#gantt .gantt-row[data-task-id='boom'] .gantt-label").click()
    page.get_by_role("button", name="Change state…").click()
    dialog = page.get_by_role("dialog")
    dialog.get_by_label("New state").select_option("SUCCESS")
    dialog.get_by_label("Reason (recorded in the audit trail)").fill("fixed by hand")
    dialog.get_by_role("button", name="Change state").click()

    page.locator("#execution-state[data-state='SUCCESS']").wait_for(timeout=20_000)
    boom = page.locator("#gantt .gantt-row[data-task-id='boom']")
    assert boom.get_attribute("data-state") == "SUCCESS"
    deadline = time.monotonic() + 10  # the audit read model follows the log
    while True:
        audit = context.request.get(f"/api/v1/audit?resourceId={execution_id}").json()
        if any(entry["reason"] == "fixed by hand" for entry in audit["results"]):
            break
        assert time.monotonic() < deadline, audit
        time.sleep(0.1)
