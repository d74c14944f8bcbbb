"""Who may call which route: credentials, roles per namespace, tokens, and the audit of logins."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import pytest
import trio

from api.auth import ROLE_ATTR
from engine.accounts import ROLES

YAML = {"Content-Type": "application/x-yaml"}


def _ns() -> str:
    return f"test.auth.n{uuid.uuid4().hex[:8]}"


def _flow(namespace: str, flow_id: str = "hello") -> str:
    return (
        f"id: {flow_id}\nnamespace: {namespace}\ntasks:\n"
        "  - id: say\n    type: io.kestra.plugin.core.log.Log\n    message: hi\n"
    )


async def _token(client: httpx.AsyncClient, role: str, namespaces: list[str], **extra: Any) -> str:
    response = await client.post(
        "/api/v1/tokens",
        json={"name": f"{role}-test", "role": role, "namespaces": namespaces, **extra},
    )
    assert response.status_code == 201, response.text
    token = response.json()["token"]
    assert isinstance(token, str)
    return token


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


# Every route, the request that reaches it without changing anything (objects that do not
# exist, or a body the route refuses after the access check), and the least role that passes.
# A route missing from this table fails `test_every_route_is_in_the_role_table`.
NS = "test.auth.table"
ROUTES: list[tuple[str, str, dict[str, Any], str]] = [
    ("GET", "/health", {}, "public"),
    ("GET", "/health/liveness", {}, "public"),
    ("GET", "/health/readiness", {}, "public"),
    ("GET", "/api/v1/openapi.yml", {}, "public"),
    ("GET", "/prometheus", {}, "viewer"),
    ("GET", "/metrics", {}, "viewer"),
    ("POST", "/api/v1/login", {"json": {}}, "public"),
    ("POST", "/api/v1/logout", {}, "public"),
    ("POST", "/api/v1/flows", {"content": "id: [", "headers": YAML}, "editor"),
    ("POST", "/api/v1/flows/validate", {"content": _flow(NS), "headers": YAML}, "viewer"),
    ("GET", "/api/v1/flows/search", {}, "viewer"),
    ("GET", f"/api/v1/flows/{NS}/nope", {}, "viewer"),
    ("GET", f"/api/v1/flows/{NS}/nope/revisions", {}, "viewer"),
    ("PUT", f"/api/v1/flows/{NS}/nope", {"content": _flow(NS, "nope"), "headers": YAML}, "editor"),
    ("DELETE", f"/api/v1/flows/{NS}/nope", {}, "editor"),
    ("POST", f"/api/v1/executions/{NS}/nope", {"json": {}}, "runner"),
    ("GET", "/api/v1/executions/search", {}, "viewer"),
    ("GET", "/api/v1/executions/nope", {}, "viewer"),
    ("GET", "/api/v1/executions/nope/events", {}, "viewer"),
    ("GET", "/api/v1/executions/nope/file", {"params": {"path": "kestra:///x"}}, "viewer"),
    ("GET", "/api/v1/executions/nope/file/metas", {"params": {"path": "kestra:///x"}}, "viewer"),
    ("DELETE", "/api/v1/executions/nope", {}, "editor"),
    ("POST", "/api/v1/executions/nope/resume", {"json": {}}, "runner"),
    ("DELETE", "/api/v1/executions/nope/kill", {}, "runner"),
    # History (api/history_routes.py): a timeline, the audit trail, a flow revision diff.
    ("GET", "/api/v1/executions/nope/timeline", {}, "viewer"),
    ("GET", "/api/v1/audit", {}, "viewer"),
    ("GET", "/api/v1/audit/export", {}, "viewer"),
    ("GET", f"/api/v1/flows/{NS}/nope/revisions/1/diff/2", {}, "viewer"),
    # Actions on one execution (api/execution_actions.py).
    ("POST", "/api/v1/executions/nope/replay", {}, "runner"),
    ("POST", "/api/v1/executions/nope/restart", {}, "runner"),
    ("POST", "/api/v1/executions/nope/pause", {}, "runner"),
    ("POST", "/api/v1/executions/nope/state", {"json": {"state": "SUCCESS"}}, "runner"),
    ("POST", "/api/v1/executions/nope/labels", {"json": []}, "runner"),
    ("GET", "/api/v1/plugins", {}, "viewer"),
    ("GET", "/api/v1/plugins/io.kestra.plugin.core.log.Log", {}, "viewer"),
    ("GET", "/api/v1/logs/nope", {}, "viewer"),
    ("GET", "/api/v1/logs/search", {}, "viewer"),
    ("GET", "/api/v1/logs/histogram", {}, "viewer"),
    ("GET", "/api/v1/logs/nope/follow", {}, "viewer"),
    ("GET", "/api/v1/logs/nope/download", {}, "viewer"),
    # Execution statistics from the executions projection's rollups.
    ("GET", "/api/v1/executions/stats/daily", {}, "viewer"),
    ("POST", "/api/v1/stats/executions/daily", {"json": {}}, "viewer"),
    ("GET", f"/api/v1/namespaces/{NS}/secrets", {}, "viewer"),
    ("GET", f"/api/v1/namespaces/{NS}/secrets/nope", {}, "viewer"),
    ("PUT", f"/api/v1/namespaces/{NS}/secrets", {"json": {}}, "editor"),
    ("PUT", f"/api/v1/namespaces/{NS}/secrets/nope", {"json": {}}, "editor"),
    ("DELETE", f"/api/v1/namespaces/{NS}/secrets/nope", {}, "editor"),
    ("GET", "/api/v1/me", {}, "viewer"),
    ("GET", "/api/v1/users", {}, "admin"),
    ("POST", "/api/v1/users", {"json": {"username": "x"}}, "admin"),
    ("PUT", "/api/v1/users/nobody-here", {"json": {"role": "viewer"}}, "admin"),
    ("DELETE", "/api/v1/users/nobody-here", {}, "admin"),
    ("GET", "/api/v1/tokens", {}, "viewer"),
    # Users issue tokens for themselves; a token never mints tokens unless it is an admin's.
    ("POST", "/api/v1/tokens", {"json": {}}, "admin"),
    ("DELETE", "/api/v1/tokens/nope", {}, "viewer"),
    # Kestra's routes for CI/CD and clients (tests/api/test_kestra_routes.py).
    ("GET", f"/api/v1/flows/{NS}", {}, "viewer"),
    ("PUT", f"/api/v1/flows/{NS}", {"content": "id: [", "headers": YAML}, "editor"),
    ("POST", f"/api/v1/flows/{NS}", {"content": "id: [", "headers": YAML}, "editor"),
    ("POST", "/api/v1/flows/import", {"json": {}}, "editor"),
    ("GET", f"/api/v1/flows/{NS}/nope/tasks/nope", {}, "viewer"),
    ("DELETE", "/api/v1/executions/by-ids", {"json": ["nope"]}, "editor"),
    ("GET", "/api/v1/executions/nope/follow", {}, "viewer"),
    ("GET", f"/api/v1/namespaces/{NS}/kv", {}, "viewer"),
    ("DELETE", f"/api/v1/namespaces/{NS}/kv", {"json": {}}, "editor"),
    ("GET", f"/api/v1/namespaces/{NS}/kv/nope", {}, "viewer"),
    (
        "PUT",
        f"/api/v1/namespaces/{NS}/kv/nope",
        {"content": "{", "headers": {"Content-Type": "application/json"}},
        "editor",
    ),
    ("DELETE", f"/api/v1/namespaces/{NS}/kv/nope", {}, "editor"),
    # Public with its key (api/webhooks.py): a wrong key answers 404 and starts nothing.
    ("GET", f"/api/v1/executions/webhook/{NS}/nope/nokey", {}, "public"),
    ("POST", f"/api/v1/executions/webhook/{NS}/nope/nokey", {"json": {}}, "public"),
    ("PUT", f"/api/v1/executions/webhook/{NS}/nope/nokey", {"json": {}}, "public"),
    # Triggers' state and backfills (api/triggers.py).
    ("GET", f"/api/v1/triggers/{NS}/nope/nope", {}, "viewer"),
    (
        "POST",
        "/api/v1/triggers/backfill",
        {"json": {"namespace": NS, "flowId": "nope", "triggerId": "nope"}},
        "editor",
    ),
    ("PUT", "/api/v1/triggers/backfill/pause", {"json": {"namespace": NS}}, "editor"),
    ("PUT", "/api/v1/triggers/backfill/unpause", {"json": {"namespace": NS}}, "editor"),
    ("GET", "/api/v1/triggers/search", {}, "viewer"),
    ("GET", f"/api/v1/triggers/{NS}/nope", {}, "viewer"),
    ("PUT", f"/api/v1/triggers/{NS}/nope/nope", {"json": {"disabled": True}}, "editor"),
    ("PUT", "/api/v1/triggers", {"json": {"namespace": NS}}, "editor"),
    ("POST", f"/api/v1/triggers/{NS}/nope/nope/unlock", {}, "editor"),
    # Where each read model stands in the log (api/projections_routes.py).
    ("GET", "/api/v1/projections", {}, "viewer"),
    # Rebuilding one needs an admin; an unknown name starts nothing (404).
    ("POST", "/api/v1/projections/nope/rebuild", {}, "admin"),
    # Task graphs and dependencies between flows (api/topology_routes.py).
    ("GET", f"/api/v1/flows/{NS}/nope/graph", {}, "viewer"),
    ("POST", "/api/v1/flows/graph", {"content": "id: [", "headers": YAML}, "viewer"),
    ("GET", f"/api/v1/flows/{NS}/nope/dependencies", {}, "viewer"),
    ("GET", f"/api/v1/namespaces/{NS}/dependencies", {}, "viewer"),
    # Dashboards (api/dashboards_routes.py): YAML refused, or dashboards that do not exist.
    ("GET", "/api/v1/dashboards/default/stats", {}, "viewer"),
    ("GET", "/api/v1/dashboards", {}, "viewer"),
    ("POST", "/api/v1/dashboards", {"content": "id: [", "headers": YAML}, "editor"),
    ("POST", "/api/v1/dashboards/validate", {"content": "id: [", "headers": YAML}, "viewer"),
    ("GET", "/api/v1/dashboards/nope", {}, "viewer"),
    ("PUT", "/api/v1/dashboards/nope", {"content": "title: x\n", "headers": YAML}, "editor"),
    ("DELETE", "/api/v1/dashboards/nope", {}, "editor"),
    ("POST", "/api/v1/dashboards/nope/charts/nope", {"json": {}}, "viewer"),
    ("POST", "/api/v1/dashboards/charts/preview", {"json": {}}, "viewer"),
    ("POST", "/api/v1/dashboards/validate/chart", {"content": "id: [", "headers": YAML}, "viewer"),
    ("POST", "/api/v1/dashboards/nope/charts/nope/export/to-csv", {"json": {}}, "viewer"),
    # The metrics read model (api/metrics_routes.py).
    ("GET", "/api/v1/metrics/nope", {}, "viewer"),
    ("GET", f"/api/v1/metrics/names/{NS}/nope", {}, "viewer"),
    ("GET", f"/api/v1/metrics/names/{NS}/nope/nope", {}, "viewer"),
    ("GET", f"/api/v1/metrics/tasks/{NS}/nope", {}, "viewer"),
    ("GET", f"/api/v1/metrics/aggregates/{NS}/nope/nope", {}, "viewer"),
    ("GET", f"/api/v1/metrics/aggregates/{NS}/nope/nope/nope", {}, "viewer"),
    # Bulk operations on executions (api/bulk_routes.py): bodies that choose nothing.
    ("POST", "/api/v1/executions/bulk/replay", {"json": {}}, "runner"),
    ("GET", "/api/v1/bulk", {}, "viewer"),
    ("GET", "/api/v1/bulk/nope", {}, "viewer"),
    ("GET", "/api/v1/bulk/nope/follow", {}, "viewer"),
    ("POST", "/api/v1/bulk/nope/pause", {}, "runner"),
    ("POST", "/api/v1/bulk/nope/resume", {}, "runner"),
    ("POST", "/api/v1/bulk/nope/cancel", {}, "runner"),
    ("POST", "/api/v1/executions/replay/by-ids", {"json": {}}, "runner"),
    ("POST", "/api/v1/executions/replay/by-query", {"params": {"state": "NOPE"}}, "runner"),
    ("POST", "/api/v1/executions/restart/by-ids", {"json": {}}, "runner"),
    ("POST", "/api/v1/executions/restart/by-query", {"params": {"state": "NOPE"}}, "runner"),
    ("DELETE", "/api/v1/executions/kill/by-ids", {"json": {}}, "runner"),
    ("DELETE", "/api/v1/executions/kill/by-query", {"params": {"state": "NOPE"}}, "runner"),
    ("POST", "/api/v1/executions/labels/by-ids", {"json": {}}, "runner"),
    ("POST", "/api/v1/executions/labels/by-query", {"json": {}}, "runner"),
    ("DELETE", "/api/v1/executions/by-query", {"params": {"state": "NOPE"}}, "editor"),
    # The web UI (api/ui/): pages need a session (a browser without one is sent to the login
    # page, an API client gets the 401); the login page, `/` and the static files are public.
    ("GET", "/", {}, "public"),
    ("GET", "/ui/login", {}, "public"),
    ("GET", "/ui/static/ui/app.css", {}, "public"),
    ("GET", "/ui/", {}, "viewer"),
    ("GET", "/ui/flows", {}, "viewer"),
    ("GET", "/ui/flows/new", {}, "viewer"),
    ("GET", f"/ui/flows/{NS}/nope", {}, "viewer"),
    ("GET", f"/ui/flows/{NS}/nope/edit", {}, "viewer"),
    ("GET", "/ui/executions", {}, "viewer"),
    ("GET", "/ui/executions/nope", {}, "viewer"),
    ("GET", "/ui/logs", {}, "viewer"),
    ("GET", "/ui/dashboards", {}, "viewer"),
    ("GET", "/ui/dashboards/new", {}, "viewer"),
    ("GET", "/ui/dashboards/nope/edit", {}, "viewer"),
    ("GET", "/ui/audit", {}, "viewer"),
    ("GET", "/ui/plugins", {}, "viewer"),
]


async def test_every_route_is_in_the_role_table_and_declares_its_access(server: Any) -> None:
    from api.app import create_app

    app = create_app(server)
    table = {(method, _rule_of(path)) for method, path, _, _ in ROUTES}
    missing = []
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static":
            continue
        view = app.view_functions[rule.endpoint]
        assert getattr(view, ROLE_ATTR, None) is not None, f"{rule} declares no access"
        for method in rule.methods - {"HEAD", "OPTIONS"}:
            if (method, rule.rule) not in table:
                missing.append(f"{method} {rule.rule}")
    assert not missing, f"routes missing from the role table: {missing}"


def _rule_of(path: str) -> str:
    replacements = {
        f"/api/v1/flows/{NS}/nope/revisions": "/api/v1/flows/<namespace>/<flow_id>/revisions",
        f"/api/v1/flows/{NS}/nope/graph": "/api/v1/flows/<namespace>/<flow_id>/graph",
        f"/api/v1/flows/{NS}/nope/dependencies": (
            "/api/v1/flows/<namespace>/<flow_id>/dependencies"
        ),
        f"/api/v1/namespaces/{NS}/dependencies": "/api/v1/namespaces/<namespace>/dependencies",
        "/api/v1/dashboards/nope": "/api/v1/dashboards/<dashboard_id>",
        "/api/v1/dashboards/nope/charts/nope": (
            "/api/v1/dashboards/<dashboard_id>/charts/<chart_id>"
        ),
        "/api/v1/dashboards/nope/charts/nope/export/to-csv": (
            "/api/v1/dashboards/<dashboard_id>/charts/<chart_id>/export/to-csv"
        ),
        "/api/v1/metrics/nope": "/api/v1/metrics/<execution_id>",
        f"/api/v1/metrics/names/{NS}/nope": "/api/v1/metrics/names/<namespace>/<flow_id>",
        f"/api/v1/metrics/names/{NS}/nope/nope": (
            "/api/v1/metrics/names/<namespace>/<flow_id>/<task_id>"
        ),
        f"/api/v1/metrics/tasks/{NS}/nope": "/api/v1/metrics/tasks/<namespace>/<flow_id>",
        f"/api/v1/metrics/aggregates/{NS}/nope/nope": (
            "/api/v1/metrics/aggregates/<namespace>/<flow_id>/<metric>"
        ),
        f"/api/v1/metrics/aggregates/{NS}/nope/nope/nope": (
            "/api/v1/metrics/aggregates/<namespace>/<flow_id>/<task_id>/<metric>"
        ),
        "/api/v1/executions/bulk/replay": "/api/v1/executions/bulk/<action>",
        "/api/v1/bulk/nope": "/api/v1/bulk/<job_id>",
        "/api/v1/bulk/nope/follow": "/api/v1/bulk/<job_id>/follow",
        "/api/v1/bulk/nope/pause": "/api/v1/bulk/<job_id>/pause",
        "/api/v1/bulk/nope/resume": "/api/v1/bulk/<job_id>/resume",
        "/api/v1/bulk/nope/cancel": "/api/v1/bulk/<job_id>/cancel",
        f"/api/v1/flows/{NS}/nope": "/api/v1/flows/<namespace>/<flow_id>",
        f"/api/v1/executions/{NS}/nope": "/api/v1/executions/<namespace>/<flow_id>",
        "/api/v1/executions/nope/events": "/api/v1/executions/<execution_id>/events",
        "/api/v1/executions/nope/file/metas": "/api/v1/executions/<execution_id>/file/metas",
        "/api/v1/executions/nope/file": "/api/v1/executions/<execution_id>/file",
        "/api/v1/executions/nope/resume": "/api/v1/executions/<execution_id>/resume",
        "/api/v1/executions/nope/kill": "/api/v1/executions/<execution_id>/kill",
        "/api/v1/executions/nope/timeline": "/api/v1/executions/<execution_id>/timeline",
        f"/api/v1/flows/{NS}/nope/revisions/1/diff/2": (
            "/api/v1/flows/<namespace>/<flow_id>/revisions/<a>/diff/<b>"
        ),
        "/api/v1/executions/nope/replay": "/api/v1/executions/<execution_id>/replay",
        "/api/v1/executions/nope/restart": "/api/v1/executions/<execution_id>/restart",
        "/api/v1/executions/nope/pause": "/api/v1/executions/<execution_id>/pause",
        "/api/v1/executions/nope/state": "/api/v1/executions/<execution_id>/state",
        "/api/v1/executions/nope/labels": "/api/v1/executions/<execution_id>/labels",
        "/api/v1/executions/nope": "/api/v1/executions/<execution_id>",
        "/api/v1/plugins/io.kestra.plugin.core.log.Log": "/api/v1/plugins/<path:type_name>",
        "/api/v1/logs/nope": "/api/v1/logs/<execution_id>",
        "/api/v1/logs/nope/follow": "/api/v1/logs/<execution_id>/follow",
        "/api/v1/logs/nope/download": "/api/v1/logs/<execution_id>/download",
        f"/api/v1/namespaces/{NS}/secrets/nope": "/api/v1/namespaces/<namespace>/secrets/<key>",
        f"/api/v1/namespaces/{NS}/secrets": "/api/v1/namespaces/<namespace>/secrets",
        "/api/v1/users/nobody-here": "/api/v1/users/<username>",
        "/api/v1/tokens/nope": "/api/v1/tokens/<token_id>",
        "/api/v1/projections/nope/rebuild": "/api/v1/projections/<name>/rebuild",
        f"/api/v1/flows/{NS}": "/api/v1/flows/<namespace>",
        f"/api/v1/flows/{NS}/nope/tasks/nope": "/api/v1/flows/<namespace>/<flow_id>/tasks/<task_id>",
        "/api/v1/executions/nope/follow": "/api/v1/executions/<execution_id>/follow",
        f"/api/v1/namespaces/{NS}/kv": "/api/v1/namespaces/<namespace>/kv",
        f"/api/v1/namespaces/{NS}/kv/nope": "/api/v1/namespaces/<namespace>/kv/<path:key>",
        f"/api/v1/triggers/{NS}/nope/nope": "/api/v1/triggers/<namespace>/<flow_id>/<trigger_id>",
        f"/api/v1/triggers/{NS}/nope": "/api/v1/triggers/<namespace>/<flow_id>",
        f"/api/v1/triggers/{NS}/nope/nope/unlock": (
            "/api/v1/triggers/<namespace>/<flow_id>/<trigger_id>/unlock"
        ),
        f"/api/v1/executions/webhook/{NS}/nope/nokey": (
            "/api/v1/executions/webhook/<namespace>/<flow_id>/<key>"
        ),
        "/ui/static/ui/app.css": "/ui/static/<path:filename>",
        f"/ui/flows/{NS}/nope": "/ui/flows/<namespace>/<flow_id>",
        f"/ui/flows/{NS}/nope/edit": "/ui/flows/<namespace>/<flow_id>/edit",
        "/ui/executions/nope": "/ui/executions/<execution_id>",
        "/ui/dashboards/nope/edit": "/ui/dashboards/<dashboard_id>/edit",
    }
    return replacements.get(path, path)


async def test_route_by_role_table_answers_401_403_or_passes(client: httpx.AsyncClient) -> None:
    tokens = {role: await _token(client, role, [NS]) for role in ROLES}
    async with httpx.AsyncClient(base_url=client.base_url, timeout=30) as anonymous:
        for method, path, options, least in ROUTES:
            answer = await anonymous.request(method, path, **options)
            if least == "public":
                assert answer.status_code not in (401, 403), (method, path, answer.text)
                continue
            assert answer.status_code == 401, (method, path, answer.status_code)
            assert "WWW-Authenticate" in answer.headers
            for role in ROLES:
                answer = await anonymous.request(
                    method, path, **{**options, "headers": {**options.get("headers", {}),
                                                            **_bearer(tokens[role])}}
                )  # fmt: skip
                allowed = ROLES.index(role) >= ROLES.index(least)
                if allowed:
                    assert answer.status_code not in (401, 403), (
                        method, path, role, answer.status_code, answer.text,
                    )  # fmt: skip
                else:
                    assert answer.status_code == 403, (method, path, role, answer.status_code)
                    assert least in answer.json()["message"] or "admin" in answer.json()["message"]


async def test_runner_token_runs_but_cannot_deploy_and_scoped_token_cannot_cross(
    client: httpx.AsyncClient,
) -> None:
    mine, other = _ns(), _ns()
    for ns in (mine, other):
        assert (await client.post("/api/v1/flows", content=_flow(ns), headers=YAML)).is_success
    other_run = await client.post(f"/api/v1/executions/{other}/hello?wait=true")
    other_id = other_run.json()["id"]
    runner_token = await _token(client, "runner", [mine])
    editor_token = await _token(client, "editor", [mine])
    base = client.base_url
    async with (
        httpx.AsyncClient(base_url=base, headers=_bearer(runner_token), timeout=60) as runner,
        httpx.AsyncClient(base_url=base, headers=_bearer(editor_token), timeout=60) as editor,
    ):
        refused = await runner.post("/api/v1/flows", content=_flow(mine, "new"), headers=YAML)
        assert refused.status_code == 403 and "editor" in refused.json()["message"]
        assert (await client.get(f"/api/v1/flows/{mine}/new")).status_code == 404

        ran = await runner.post(f"/api/v1/executions/{mine}/hello?wait=true")
        assert ran.status_code == 200 and ran.json()["state"]["current"] == "SUCCESS"
        events = (await runner.get(f"/api/v1/executions/{ran.json()['id']}/events")).json()
        assert events[0]["actor"].startswith("token:runner-test (")

        # The other namespace: no read, no run, no deploy, not even in a search.
        for answer in (
            await editor.get(f"/api/v1/flows/{other}/hello"),
            await editor.post(f"/api/v1/executions/{other}/hello"),
            await editor.post("/api/v1/flows", content=_flow(other, "x"), headers=YAML),
            await editor.get(f"/api/v1/executions/{other_id}"),
            await editor.get(f"/api/v1/logs/{other_id}"),
            await editor.delete(f"/api/v1/executions/{other_id}/kill"),
        ):
            assert answer.status_code == 403, answer.text
            assert other in answer.json()["message"]
        assert (await client.get(f"/api/v1/flows/{other}/x")).status_code == 404
        found = (await editor.get("/api/v1/flows/search?size=1000")).json()
        assert {f["namespace"] for f in found["results"]} == {mine}
        # The executions projection trails the events: wait until both executions are in it
        # (the token's own was recorded last).
        with trio.fail_after(10):
            for namespace in (other, mine):
                while (await client.get(f"/api/v1/executions/search?namespace={namespace}")).json()[
                    "total"
                ] == 0:
                    await trio.sleep(0.05)
        listed = (await editor.get("/api/v1/executions/search?size=1000")).json()
        assert listed["results"] and {e["namespace"] for e in listed["results"]} == {mine}


async def test_revoked_and_expired_tokens_stop_working(client: httpx.AsyncClient) -> None:
    token = await _token(client, "viewer", [])
    anonymous = httpx.AsyncClient(base_url=client.base_url, timeout=30)
    assert (await anonymous.get("/api/v1/me", headers=_bearer(token))).status_code == 200
    token_id = token.split("_")[1]
    assert (await client.delete(f"/api/v1/tokens/{token_id}")).status_code == 204
    with trio.fail_after(5):
        while (await anonymous.get("/api/v1/me", headers=_bearer(token))).status_code != 401:
            await trio.sleep(0.1)
    listed = {t["id"]: t for t in (await client.get("/api/v1/tokens")).json()}
    assert listed[token_id]["status"] == "REVOKED" and "token" not in listed[token_id]

    short = await _token(client, "viewer", [], expires="PT1S")
    await trio.sleep(1.5)
    refused = await anonymous.get("/api/v1/me", headers=_bearer(short))
    assert refused.status_code == 401 and "expired" in refused.json()["message"]
    bad = await anonymous.get("/api/v1/me", headers=_bearer("tct_aaaaaaaaaaaa_" + "x" * 43))
    assert bad.status_code == 401
    await anonymous.aclose()


async def test_users_log_in_with_basic_auth_and_logins_are_recorded(
    client: httpx.AsyncClient, server: Any
) -> None:
    name = f"alice{uuid.uuid4().hex[:6]}"
    created = await client.post(
        "/api/v1/users",
        json={"username": name, "password": "correct horse", "role": "runner"},
    )
    assert created.status_code == 201, created.text
    assert "password" not in created.text.lower().replace('"username"', "")
    async with httpx.AsyncClient(base_url=client.base_url, timeout=30) as http:
        me = await http.get("/api/v1/me", auth=(name, "correct horse"))
        assert me.status_code == 200 and me.json()["role"] == "runner"
        wrong = await http.get("/api/v1/me", auth=(name, "wrong password"))
        assert wrong.status_code == 401
        assert (await http.get("/api/v1/users", auth=(name, "correct horse"))).status_code == 403
        # A user may change their own password, not their role.
        own = await http.put(
            f"/api/v1/users/{name}", json={"role": "admin"}, auth=(name, "correct horse")
        )
        assert own.status_code == 403
    with trio.fail_after(10):
        while True:
            rows = await server.db.fetchall(
                "SELECT type, data, meta FROM events WHERE stream_id = %s ORDER BY seq",
                (f"login:{name}",),
            )
            if {r["type"] for r in rows} >= {"LoginSucceeded", "LoginRefused"}:
                break
            await trio.sleep(0.1)
    refused = next(r for r in rows if r["type"] == "LoginRefused")
    assert refused["data"]["reason"] == "bad credentials" and "wrong" not in str(refused)
    created_event = await server.db.fetchone(
        "SELECT data, meta FROM events WHERE stream_id = %s ORDER BY version LIMIT 1",
        (f"user:{name}",),
    )
    assert created_event["meta"]["actor"] == "user:admin"
    assert created_event["data"]["passwordHash"].startswith("$argon2")


@pytest.mark.parametrize(
    ("content_type", "headers"),
    [
        ("text/plain", {}),
        ("application/x-www-form-urlencoded", {}),
        ("application/x-yaml", {"Origin": "https://evil.example"}),
        ("application/x-yaml", {"Sec-Fetch-Site": "cross-site"}),
        ("multipart/form-data; boundary=x", {"Origin": "null"}),
    ],
)
async def test_cross_site_simple_requests_cannot_deploy_or_run(
    client: httpx.AsyncClient, content_type: str, headers: dict[str, str]
) -> None:
    """The two requests a page on another site could make a browser send (with the user's
    cached basic-auth credentials) are refused, and nothing is stored or started."""
    ns = _ns()
    deploy = await client.post(
        "/api/v1/flows", content=_flow(ns), headers={"Content-Type": content_type, **headers}
    )
    assert deploy.status_code in (403, 415), deploy.text
    assert (await client.get(f"/api/v1/flows/{ns}/hello")).status_code == 404

    assert (await client.post("/api/v1/flows", content=_flow(ns), headers=YAML)).is_success
    run = await client.post(
        f"/api/v1/executions/{ns}/hello",
        content=b"a=b",
        headers={"Content-Type": content_type, **headers},
    )
    assert run.status_code in (403, 415), run.text
    await trio.sleep(0.3)
    found = (await client.get(f"/api/v1/executions/search?namespace={ns}")).json()
    assert found["total"] == 0


async def test_same_origin_requests_from_the_ui_pass(client: httpx.AsyncClient) -> None:
    ns = _ns()
    origin = str(client.base_url).rstrip("/")
    answer = await client.post(
        "/api/v1/flows",
        content=_flow(ns),
        headers={**YAML, "Origin": origin, "Sec-Fetch-Site": "same-origin"},
    )
    assert answer.status_code == 200, answer.text


async def test_without_auth_only_local_pages_may_change_anything(
    database_url: str, nursery: trio.Nursery, tmp_path: Any
) -> None:
    """`--no-auth` (local development): no credentials needed, but a page reaching the server
    under another host name (DNS rebinding) or from another origin is refused."""
    from engine.server import run_server

    ctx = await nursery.start(
        lambda task_status: run_server(
            database_url,
            ("webserver",),
            host="127.0.0.1",
            port=0,
            data_dir=tmp_path,
            auth_enabled=False,
            task_status=task_status,
        )
    )
    base = ctx.extra["urls"][0]
    ns = _ns()
    async with httpx.AsyncClient(base_url=base, timeout=30) as http:
        assert (await http.get("/api/v1/me")).json()["principal"] == "anonymous:local"
        rebound = await http.post(
            "/api/v1/flows",
            content=_flow(ns),
            headers={**YAML, "Host": "evil.example:8080", "Origin": "http://evil.example:8080"},
        )
        assert rebound.status_code == 403 and "local host name" in rebound.json()["message"]
        assert (await http.post("/api/v1/flows", content=_flow(ns), headers=YAML)).is_success


async def test_ui_session_cookie_needs_its_csrf_token_to_change_anything(
    client: httpx.AsyncClient,
) -> None:
    """The web UI logs in once: an HttpOnly, SameSite=Strict cookie, and a CSRF token that
    every state-changing request made with the cookie must carry."""
    from tests.conftest import ADMIN_PASSWORD

    ns = _ns()
    async with httpx.AsyncClient(base_url=client.base_url, timeout=30) as browser:
        wrong = await browser.post("/api/v1/login", json={"username": "admin", "password": "x"})
        assert wrong.status_code == 401 and "tiercel_session" not in wrong.headers.get(
            "set-cookie", ""
        )
        cross = await browser.post(
            "/api/v1/login",
            json={"username": "admin", "password": ADMIN_PASSWORD},
            headers={"Origin": "https://evil.example"},
        )
        assert cross.status_code == 403
        login = await browser.post(
            "/api/v1/login", json={"username": "admin", "password": ADMIN_PASSWORD}
        )
        assert login.status_code == 200, login.text
        cookie = login.headers["set-cookie"].lower()
        assert "httponly" in cookie and "samesite=strict" in cookie
        csrf = login.json()["csrfToken"]
        assert (await browser.get("/api/v1/me")).json()["principal"] == "user:admin"
        forged = await browser.post("/api/v1/flows", content=_flow(ns), headers=YAML)
        assert forged.status_code == 403 and "X-CSRF-Token" in forged.json()["message"]
        assert (await client.get(f"/api/v1/flows/{ns}/hello")).status_code == 404
        made = await browser.post(
            "/api/v1/flows", content=_flow(ns), headers={**YAML, "X-CSRF-Token": csrf}
        )
        assert made.status_code == 200, made.text
        payload, _, signature = browser.cookies["tiercel_session"].partition(".")
        forged_payload = payload[:-4] + ("AAAA" if payload[-4:] != "AAAA" else "BBBB")
    for cookie_value in (f"{payload}.{signature[::-1]}", f"{forged_payload}.{signature}"):
        async with httpx.AsyncClient(
            base_url=client.base_url, headers={"Cookie": f"tiercel_session={cookie_value}"}
        ) as tampered:
            assert (await tampered.get("/api/v1/me")).status_code == 401
