"""The projections panel of the dashboards page in a real browser: an admin rebuilds a read
model with its Rebuild button (after a confirmation) and watches the rebuild end; a viewer
sees the button disabled with the role it needs."""

from __future__ import annotations

import uuid
from typing import Any


def test_admin_clicks_rebuild_confirms_and_sees_the_rebuild_finish(signed_in: Any) -> None:
    page = signed_in
    page.goto("/ui/dashboards")
    row = page.locator("#projections tr[data-projection='flows']")
    row.wait_for()
    asked: list[str] = []

    def accept(dialog: Any) -> None:
        asked.append(dialog.message)
        dialog.accept()

    page.on("dialog", accept)
    row.get_by_role("button", name="Rebuild").click()
    # Started: the button waits for the end, and the panel then says how it went and who asked.
    done = row.locator(".rebuild-state[data-outcome='SUCCESS']")
    done.wait_for(timeout=60_000)
    assert asked and "Rebuild the flows projection" in asked[0]
    assert "Last rebuild success" in done.inner_text()
    assert "user:admin" in done.inner_text()
    assert row.get_by_role("button", name="Rebuild").is_enabled()
    assert row.locator("td.lag").inner_text().isdigit()


def test_admin_who_dismisses_the_confirmation_starts_nothing(signed_in: Any, context: Any) -> None:
    page = signed_in
    page.goto("/ui/dashboards")
    row = page.locator("#projections tr[data-projection='logs']")
    row.wait_for()
    before = next(
        p for p in context.request.get("/api/v1/projections").json() if p["name"] == "logs"
    ).get("lastRebuild")
    page.on("dialog", lambda dialog: dialog.dismiss())
    row.get_by_role("button", name="Rebuild").click()
    page.wait_for_timeout(300)
    after = next(
        p for p in context.request.get("/api/v1/projections").json() if p["name"] == "logs"
    ).get("lastRebuild")
    assert after == before


def test_viewer_sees_rebuild_disabled_with_the_role_it_needs(
    browser: Any, ui_server: str, context: Any, csrf: str
) -> None:
    user = f"viewer-{uuid.uuid4().hex[:8]}"
    created = context.request.post(
        "/api/v1/users",
        data={"username": user, "password": "a long viewer password", "role": "viewer"},
        headers={"X-CSRF-Token": csrf},
    )
    assert created.ok, created.text()
    viewer = browser.new_context(base_url=ui_server, viewport={"width": 1280, "height": 800})
    try:
        page = viewer.new_page()
        page.goto("/ui/dashboards")
        page.get_by_label("Username").fill(user)
        page.get_by_label("Password").fill("a long viewer password")
        page.get_by_role("button", name="Sign in").click()
        page.wait_for_url("**/ui/dashboards")
        button = page.locator("#projections tr[data-projection='executions']").get_by_role(
            "button", name="Rebuild"
        )
        button.wait_for()
        assert button.is_disabled()
        assert button.get_attribute("title") == "Rebuilding a projection needs the admin role"
        assert "Rebuilding needs the admin role" in page.locator("#rebuild-help").inner_text()
    finally:
        viewer.close()
