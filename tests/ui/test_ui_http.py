"""The UI's pages over plain HTTP: what a browser and an API client get without a session,
and pages that never fail on a cookie they cannot read."""

from __future__ import annotations

import base64

import httpx

from tests.conftest import ADMIN_PASSWORD

HTML = {"Accept": "text/html,application/xhtml+xml,*/*;q=0.8"}


def test_browser_without_session_is_sent_to_login_and_api_client_gets_401(ui_server: str) -> None:
    with httpx.Client(base_url=ui_server, timeout=30) as http:
        browser = http.get("/ui/flows?q=x", headers=HTML)
        assert browser.status_code == 302
        assert browser.headers["Location"].endswith("/ui/login?next=%2Fui%2Fflows%3Fq%3Dx")
        client = http.get("/ui/flows")
        assert client.status_code == 401 and "WWW-Authenticate" in client.headers
        assert client.json()["message"]
        root = http.get("/", headers=HTML)
        assert root.status_code == 302 and root.headers["Location"].endswith("/ui/")
        login = http.get("/ui/login?next=//elsewhere.example/", headers=HTML)
        assert login.status_code == 200 and 'data-next="/ui/"' in login.text


def test_page_with_basic_auth_ignores_an_unreadable_session_cookie(ui_server: str) -> None:
    forged = base64.urlsafe_b64encode(b'{"not": "a session"}').decode() + ".x"
    with httpx.Client(base_url=ui_server, timeout=30, auth=("admin", ADMIN_PASSWORD)) as http:
        http.cookies.set("tiercel_session", forged)
        page = http.get("/ui/flows", headers=HTML)
    assert page.status_code == 200
    assert '<meta name="csrf-token" content="">' in page.text
