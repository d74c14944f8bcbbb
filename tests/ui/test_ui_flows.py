"""The web UI in a real browser: signing in, writing a flow in the editor (completion,
validation as you type, save) and running it with inputs."""

from __future__ import annotations

import re
import time
import uuid
from typing import Any

from tests.conftest import ADMIN_PASSWORD


def _ns() -> str:
    return f"test.ui.n{uuid.uuid4().hex[:8]}"


def _finished(context: Any, execution_id: str) -> dict[str, Any]:
    """The execution once it ended, read from the API as the browser's session."""
    deadline = time.monotonic() + 30
    while True:
        execution = context.request.get(f"/api/v1/executions/{execution_id}").json()
        if execution["state"]["current"] in ("SUCCESS", "WARNING", "FAILED", "KILLED"):
            return dict(execution)
        assert time.monotonic() < deadline, execution["state"]
        time.sleep(0.1)


def test_login_page_signs_in_and_returns_to_the_page_asked_for(page: Any) -> None:
    page.goto("/ui/flows?q=nothing")
    assert "/ui/login" in page.url  # no session: sent to sign in first
    page.get_by_label("Username").fill("admin")
    page.get_by_label("Password").fill("wrong password")
    page.get_by_role("button", name="Sign in").click()
    assert page.get_by_role("alert").inner_text() == "Invalid username or password"

    page.get_by_label("Password").fill(ADMIN_PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url("**/ui/flows?q=nothing")
    nav = page.get_by_role("navigation", name="Main")
    for section in ("Flows", "Executions", "Logs", "Dashboards", "Audit", "Plugins"):
        assert nav.get_by_role("link", name=section).is_visible()
    assert nav.get_by_role("link", name="Flows").get_attribute("aria-current") == "page"

    page.get_by_role("button", name="Sign out").click()
    page.wait_for_url("**/ui/login")
    page.goto("/ui/")
    assert "/ui/login" in page.url


def test_theme_choice_is_remembered_across_pages(signed_in: Any) -> None:
    page = signed_in
    page.goto("/ui/")
    first = page.evaluate("document.documentElement.dataset.theme")
    page.get_by_role("button", name=re.compile("Switch to (dark|light) theme")).click()
    chosen = page.evaluate("document.documentElement.dataset.theme")
    assert chosen != first
    page.goto("/ui/logs")
    assert page.evaluate("document.documentElement.dataset.theme") == chosen


def test_flow_written_in_editor_with_completion_and_fixed_error_saves_and_runs_with_inputs(
    signed_in: Any, context: Any
) -> None:
    page, ns = signed_in, _ns()
    page.goto("/ui/flows/new")
    editor = page.locator(".cm-content")
    editor.click()
    page.keyboard.press("Control+A")
    page.keyboard.insert_text(
        f"id: greet\nnamespace: {ns}\ninputs:\n  - id: who\n    type: STRING\ntasks:\n"
        "  - id: hello\n    type: io.kestra.plugin.core.log.Log\n"
        '    mesage: "Hello {{ inputs.'
    )
    # Completion of the flow's inputs inside {{ }}: accept `who`.
    page.keyboard.type("w")
    # (Clicked: the editor ignores Enter for a moment after the list opens, so that a key
    # typed just before it appeared does not pick an option.)
    page.locator(".cm-tooltip-autocomplete li", has_text="who").click()
    page.keyboard.insert_text(' }}"')

    # The misspelt property is underlined at its line, with the API's message.
    problems = page.locator("#problems")
    problems.get_by_text("Unknown property `mesage`").wait_for()
    assert "Line 9" in problems.inner_text()
    assert page.locator(".cm-lintRange-error").count() >= 1

    # Fixed in place ("mes" + "s" + "age"): the problem goes away.
    page.keyboard.press("Home")
    for _ in range(3):
        page.keyboard.press("ArrowRight")
    page.keyboard.type("s")
    page.locator("#validation-status", has_text="Valid").wait_for()
    assert problems.inner_text() == ""
    page.locator("#graph svg").wait_for()  # the live topology of the valid flow

    page.get_by_role("button", name="Save").click()
    page.locator("#toast", has_text="revision 1").wait_for()
    saved = context.request.get(f"/api/v1/flows/{ns}/greet").json()
    assert 'message: "Hello {{ inputs.who }}"' in saved["source"]

    # Run: a form from the flow's inputs starts an execution with them.
    page.get_by_role("button", name="Run").click()
    dialog = page.get_by_role("dialog", name="Run the flow")
    dialog.get_by_label("who").fill("browser")
    dialog.get_by_role("button", name="Execute").click()
    link = page.locator("#execution-link")
    link.wait_for()
    execution = _finished(context, link.get_attribute("data-execution-id"))
    assert execution["state"]["current"] == "SUCCESS"
    assert execution["inputs"] == {"who": "browser"}


def test_run_form_has_a_widget_per_input_type_and_says_what_is_missing(
    signed_in: Any, context: Any, csrf: str
) -> None:
    page, ns = signed_in, _ns()
    flow = (
        f"id: typed\nnamespace: {ns}\ninputs:\n"
        "  - id: name\n    type: STRING\n    validator: '^[a-z]+$'\n"
        "  - id: count\n    type: INT\n"
        "  - id: loud\n    type: BOOLEAN\n    defaults: false\n"
        "  - id: colour\n    type: SELECT\n    values: [red, green]\n"
        "tasks:\n  - id: say\n    type: io.kestra.plugin.core.log.Log\n"
        "    message: '{{ inputs.name }} {{ inputs.count }} {{ inputs.loud }} {{ inputs.colour }}'\n"
    )
    created = context.request.post(
        "/api/v1/flows",
        data=flow,
        headers={"Content-Type": "application/x-yaml", "X-CSRF-Token": csrf},
    )
    assert created.ok, created.text()
    page.goto(f"/ui/flows/{ns}/typed")
    page.locator("#graph svg").wait_for()  # the topology tab first
    page.get_by_role("button", name="Run").click()
    dialog = page.get_by_role("dialog", name="Run the flow")
    assert dialog.get_by_label("count").get_attribute("type") == "number"
    assert dialog.get_by_label("loud").get_attribute("type") == "checkbox"
    assert dialog.get_by_label("colour").evaluate("e => e.tagName") == "SELECT"

    dialog.get_by_role("button", name="Execute").click()
    assert dialog.locator("#input-name-error").inner_text() == "A value is required"
    dialog.get_by_label("name").fill("ADA")
    dialog.get_by_label("count").fill("3")
    dialog.get_by_label("loud").check()
    dialog.get_by_label("colour").select_option("green")
    dialog.get_by_role("button", name="Execute").click()
    # The API's own message, at its field; nothing started.
    error = dialog.locator("#input-name-error", has_text="does not match the pattern")
    error.wait_for()
    assert dialog.get_by_label("name").get_attribute("aria-invalid") == "true"
    dialog.get_by_label("name").fill("ada")
    dialog.get_by_role("button", name="Execute").click()

    # The executions tab shows it at once, and its end without a reload.
    row = page.locator("#execution-rows tr[data-execution-id]").first
    row.wait_for()
    execution = _finished(context, row.get_attribute("data-execution-id"))
    assert execution["inputs"] == {"name": "ada", "count": 3, "loud": True, "colour": "green"}
    assert execution["state"]["current"] == "SUCCESS"
    row.locator(".state", has_text="SUCCESS").wait_for()

    # The flows list shows it in the flow's sparkline of last executions.
    page.goto(f"/ui/flows?namespace={ns}")
    spark = page.get_by_role("img", name="Last 1 executions: SUCCESS")
    spark.wait_for()


def test_flow_page_draws_clusters_and_restores_an_old_revision(
    signed_in: Any, context: Any, csrf: str
) -> None:
    page, ns = signed_in, _ns()
    yaml = {"Content-Type": "application/x-yaml", "X-CSRF-Token": csrf}

    def source(word: str) -> str:
        return (
            f"id: branches\nnamespace: {ns}\ntasks:\n"
            "  - id: both\n    type: io.kestra.plugin.core.flow.Parallel\n    tasks:\n"
            "      - id: left\n        type: io.kestra.plugin.core.log.Log\n        message: l\n"
            "      - id: right\n        type: io.kestra.plugin.core.log.Log\n"
            f"        message: {word}\n"
            "errors:\n  - id: alarm\n    type: io.kestra.plugin.core.log.Log\n    message: x\n"
        )

    assert context.request.post("/api/v1/flows", data=source("first"), headers=yaml).ok
    path = f"/api/v1/flows/{ns}/branches"
    assert context.request.put(path, data=source("second"), headers=yaml).ok

    page.goto(f"/ui/flows/{ns}/branches")
    graph = page.locator("#graph svg")
    graph.wait_for()
    assert "both · Parallel" in graph.locator(".cluster").all_text_contents()
    assert graph.locator(".cluster.errors").text_content() == "errors"
    assert graph.locator('[data-task-id="alarm"]').is_visible()

    page.get_by_role("tab", name="Revisions").click()
    diff = page.locator("#diff")
    diff.get_by_text("-        message: first").wait_for()
    assert "+        message: second" in diff.inner_text()

    page.once("dialog", lambda dialog: dialog.accept())
    page.get_by_role("button", name="Restore").click()
    page.locator("#toast", has_text="Revision 1 restored as revision 3").wait_for()
    restored = context.request.get(path).json()
    assert restored["revision"] == 3 and "message: first" in restored["source"]


def test_pages_fit_a_phone_width(browser: Any, ui_server: str) -> None:
    phone = browser.new_context(base_url=ui_server, viewport={"width": 390, "height": 844})
    try:
        answer = phone.request.post(
            "/api/v1/login", data={"username": "admin", "password": ADMIN_PASSWORD}
        )
        assert answer.ok
        page = phone.new_page()
        for path in ("/ui/flows", "/ui/flows/new"):
            page.goto(path)
            page.locator("main h1").wait_for()
            assert page.evaluate("document.documentElement.scrollWidth") <= 390, path
            nav = page.get_by_role("navigation", name="Main")
            assert nav.get_by_role("link", name="Plugins").is_visible()
    finally:
        phone.close()


def test_user_scoped_to_a_namespace_sees_only_its_flows(
    browser: Any, ui_server: str, context: Any, csrf: str
) -> None:
    mine, other = _ns(), _ns()
    admin = {"X-CSRF-Token": csrf}
    for ns in (mine, other):
        flow = f"id: scoped\nnamespace: {ns}\ntasks:\n  - id: t\n    type: io.kestra.plugin.core.log.Log\n    message: m\n"
        answer = context.request.post(
            "/api/v1/flows", data=flow, headers={**admin, "Content-Type": "application/x-yaml"}
        )
        assert answer.ok, answer.text()
    user = f"viewer-{uuid.uuid4().hex[:8]}"
    created = context.request.post(
        "/api/v1/users",
        data={"username": user, "password": "a long viewer password", "role": "viewer",
              "namespaces": [mine]},
        headers=admin,
    )  # fmt: skip
    assert created.ok, created.text()

    viewer = browser.new_context(base_url=ui_server, viewport={"width": 1280, "height": 800})
    try:
        page = viewer.new_page()
        page.goto("/ui/flows")
        page.get_by_label("Username").fill(user)
        page.get_by_label("Password").fill("a long viewer password")
        page.get_by_role("button", name="Sign in").click()
        page.wait_for_url("**/ui/flows")
        page.get_by_role("link", name="scoped").wait_for()
        listed = page.locator("#flow-rows").inner_text()
        assert mine in listed and other not in listed
        assert other.split(".")[-1] not in page.locator("#namespace-tree").inner_text()

        # A viewer reads; the actions above its role are shown disabled.
        page.goto(f"/ui/flows/{mine}/scoped")
        assert page.get_by_role("button", name="Run").is_disabled()
        page.goto(f"/ui/flows/{mine}/scoped/edit")
        page.locator(".cm-content", has_text="scoped").wait_for()
        assert page.get_by_role("button", name="Save").is_disabled()

        refused = page.goto(f"/ui/flows/{other}/scoped")
        assert refused is not None and refused.status == 403
        assert f"may not reach namespace '{other}'" in page.get_by_role("alert").inner_text()
    finally:
        viewer.close()


def test_triggers_tab_disables_a_trigger_and_backfills_its_schedule(
    signed_in: Any, context: Any, csrf: str
) -> None:
    page, ns = signed_in, _ns()
    flow = (
        f"id: ticks\nnamespace: {ns}\ntasks:\n"
        "  - id: t\n    type: io.kestra.plugin.core.log.Log\n    message: tick\n"
        "triggers:\n  - id: hourly\n    type: io.kestra.plugin.core.trigger.Schedule\n"
        "    cron: '0 * * * *'\n"
    )
    headers = {"Content-Type": "application/x-yaml", "X-CSRF-Token": csrf}
    assert context.request.post("/api/v1/flows", data=flow, headers=headers).ok
    state = f"/api/v1/triggers/{ns}/ticks/hourly"

    page.goto(f"/ui/flows/{ns}/ticks#triggers")
    page.get_by_label("Trigger hourly enabled").uncheck()
    page.locator("#toast", has_text="Trigger hourly disabled").wait_for()
    assert context.request.get(state).json()["disabled"] is True

    page.get_by_label("Start", exact=True).fill("2024-01-01T00:00")
    page.get_by_label("End", exact=True).fill("2024-01-01T03:00")
    page.get_by_role("button", name="Start backfill").click()
    page.get_by_text("Backfill of hourly: 3 of 3 executions, ended").wait_for()


def test_editor_completes_task_types_by_list_and_the_properties_of_the_task(
    signed_in: Any,
) -> None:
    page = signed_in
    page.goto("/ui/flows/new")
    page.locator(".cm-content").click()
    page.keyboard.press("Control+A")
    page.keyboard.insert_text(
        "id: typed\nnamespace: test.ui.completion\ntasks:\n  - id: one\n    type: io.kestra.plugin.core.log.L"
    )
    page.keyboard.press("Control+Space")
    options = page.locator(".cm-tooltip-autocomplete li")
    options.first.wait_for()
    assert "io.kestra.plugin.core.log.Log" in options.all_inner_texts()[0]
    page.keyboard.press("Escape")

    # Under `triggers:` only trigger types are offered.
    page.keyboard.insert_text("og\ntriggers:\n  - id: t\n    type: io.kestra.plugin.core.trigger.")
    page.keyboard.press("Control+Space")
    options.first.wait_for()
    offered = options.all_inner_texts()
    assert any("trigger.Schedule" in o for o in offered)
    assert not any(".log.Log" in o or ".flow." in o for o in offered)
    page.keyboard.press("Escape")

    # A property of the Log task, from its schema.
    page.keyboard.press("Control+Home")
    for _ in range(4):
        page.keyboard.press("ArrowDown")
    page.keyboard.press("End")
    page.keyboard.insert_text("\n    mess")
    page.keyboard.press("Control+Space")
    page.locator(".cm-tooltip-autocomplete li", has_text="message").first.wait_for()
