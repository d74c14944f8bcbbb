"""The secrets routes over real HTTP: values go in and never come out."""

from __future__ import annotations

import base64
import uuid
from typing import Any

import httpx
import pytest

from engine import secrets

MASTER_KEY = base64.b64encode(b"m" * 32).decode()


@pytest.fixture
def ns() -> str:
    return f"test.a{uuid.uuid4().hex[:12]}"


@pytest.fixture
def master_key(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv(secrets.KEY_ENV, MASTER_KEY)
    return MASTER_KEY


async def _audit(server: Any, ns: str, key: str) -> list[dict[str, Any]]:
    rows = await server.db.fetchall(
        "SELECT type, data::text AS data, meta FROM events WHERE stream_id = %s ORDER BY version",
        (f"secret:{ns}/{key}",),
    )
    return list(rows)


async def test_a_secret_is_stored_listed_and_deleted_without_its_value_ever_coming_back(
    server: Any, client: httpx.AsyncClient, ns: str, master_key: str
) -> None:
    value = f"v-{uuid.uuid4().hex}"
    url = f"/api/v1/namespaces/{ns}/secrets"

    put = await client.put(f"{url}/API_TOKEN", json={"value": value, "description": "billing"})
    listed = await client.get(url)
    one = await client.get(f"{url}/API_TOKEN")
    # Kestra's shape: the key in the body.
    put_again = await client.put(url, json={"key": "OTHER", "value": value + "2"})

    assert put.status_code == 200, put.text
    assert put.json()["key"] == "API_TOKEN" and put.json()["updatedBy"] == "user:admin"
    assert listed.status_code == 200
    assert [s["key"] for s in listed.json()["results"]] == ["API_TOKEN"]
    assert listed.json()["results"][0]["description"] == "billing"
    assert one.status_code == 200 and one.json()["key"] == "API_TOKEN"
    assert put_again.status_code == 200, put_again.text
    for answer in (put, listed, one, put_again):
        assert value not in answer.text
    audit = await _audit(server, ns, "API_TOKEN")
    assert [a["type"] for a in audit] == ["SecretSet"]
    assert audit[0]["meta"]["actor"] == "user:admin"
    assert value not in audit[0]["data"]

    deleted = await client.delete(f"{url}/API_TOKEN")
    assert deleted.status_code == 204
    assert (await client.get(f"{url}/API_TOKEN")).status_code == 404
    assert [s["key"] for s in (await client.get(url)).json()["results"]] == ["OTHER"]
    again = await client.delete(f"{url}/API_TOKEN")
    assert again.status_code == 404
    assert "no secret API_TOKEN" in again.json()["message"]
    assert [a["type"] for a in await _audit(server, ns, "API_TOKEN")] == [
        "SecretSet",
        "SecretDeleted",
    ]


async def test_without_a_master_key_a_secret_is_refused_saying_how_to_configure_one(
    server: Any, client: httpx.AsyncClient, ns: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(secrets.KEY_ENV, raising=False)
    assert secrets.master_key() is None

    answer = await client.put(f"/api/v1/namespaces/{ns}/secrets/K", json={"value": "v"})

    assert answer.status_code == 503
    assert secrets.KEY_ENV in answer.json()["message"]
    assert (await client.get(f"/api/v1/namespaces/{ns}/secrets")).json()["total"] == 0
    assert await _audit(server, ns, "K") == []


@pytest.mark.parametrize(
    ("path", "body", "status", "says"),
    [
        ("BAD KEY", {"value": "v"}, 400, "Invalid secret key"),
        ("K", {"value": ""}, 400, "non-empty string"),
        ("K", {"value": 42}, 400, "non-empty string"),
        ("K", ["v"], 400, "JSON object"),
    ],
)
async def test_a_bad_secret_request_is_refused_with_a_message_and_stores_nothing(
    server: Any,
    client: httpx.AsyncClient,
    ns: str,
    master_key: str,
    path: str,
    body: Any,
    status: int,
    says: str,
) -> None:
    answer = await client.put(f"/api/v1/namespaces/{ns}/secrets/{path}", json=body)

    assert answer.status_code == status, answer.text
    assert says in answer.json()["message"]
    assert (await client.get(f"/api/v1/namespaces/{ns}/secrets")).json()["total"] == 0


async def test_a_viewer_lists_secret_keys_but_cannot_set_or_delete_them(
    server: Any, client: httpx.AsyncClient, ns: str, master_key: str
) -> None:
    name, password = f"viewer{uuid.uuid4().hex[:8]}", "viewer-password-123"
    created = await client.post(
        "/api/v1/users", json={"username": name, "password": password, "role": "viewer"}
    )
    assert created.status_code == 201, created.text
    await client.put(f"/api/v1/namespaces/{ns}/secrets/K", json={"value": "v-kept"})
    base = str(client.base_url)
    async with httpx.AsyncClient(base_url=base, auth=(name, password), timeout=30) as viewer:
        listed = await viewer.get(f"/api/v1/namespaces/{ns}/secrets")
        put = await viewer.put(f"/api/v1/namespaces/{ns}/secrets/K", json={"value": "other"})
        delete = await viewer.delete(f"/api/v1/namespaces/{ns}/secrets/K")
    async with httpx.AsyncClient(base_url=base, timeout=30) as nobody:
        anonymous = await nobody.get(f"/api/v1/namespaces/{ns}/secrets")

    assert listed.status_code == 200 and listed.json()["results"][0]["key"] == "K"
    assert put.status_code == 403 and delete.status_code == 403
    assert anonymous.status_code == 401
    assert len(await _audit(server, ns, "K")) == 1
