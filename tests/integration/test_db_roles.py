"""Who the engine is in the database: migrations run as the owner, the engine's runtime
connections as a role that may only add to and read `events`; and how long a session may sit
in a transaction or wait for a lock.

Each test that changes roles makes a database of its own (roles belong to the whole cluster, so
the names carry the database's), and drops it with its roles at the end.
"""

from __future__ import annotations

import logging
import shutil
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
import pytest
import trio
from psycopg import sql

from engine import events as ev
from engine.db import (
    RUNTIME_URL_ENV,
    SESSION_SETTINGS,
    Database,
    connect,
    runtime_role,
    runtime_url,
)
from engine.embedded import EmbeddedPostgres
from engine.errors import DatabaseUnavailable
from engine.migrate import migrate, migrations_dir
from engine.store import _APPEND_LOCK, EventStore


def _url(base: str, **params: str) -> str:
    info = psycopg.conninfo.conninfo_to_dict(base)
    info.update(params)
    return psycopg.conninfo.make_conninfo(**info)


@contextmanager
def fresh_database(admin_url: str, *, owner: str | None = None) -> Iterator[str]:
    """A new empty database (owned by `owner` when given), dropped with its runtime role."""
    name = f"roles_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(
            sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
            + (sql.SQL(" OWNER {}").format(sql.Identifier(owner)) if owner else sql.SQL(""))
        )
    try:
        yield _url(admin_url, dbname=name)
    finally:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))
            conn.execute(
                sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(runtime_role(name)))
            )


@contextmanager
def login_role(admin_url: str, *attributes: str) -> Iterator[tuple[str, str]]:
    """A new LOGIN role (name, password) that is not a superuser, dropped at the end."""
    name, password = f"owner_{uuid.uuid4().hex[:10]}", uuid.uuid4().hex
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(
            sql.SQL("CREATE ROLE {} LOGIN PASSWORD {} " + " ".join(attributes)).format(
                sql.Identifier(name), sql.Literal(password)
            )
        )
    try:
        yield name, password
    finally:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(name)))


def _refusals(url: str) -> dict[str, str]:
    """What a session of `url` gets for each way of rewriting the log (all must be refused)."""
    attempts = {
        "update": "UPDATE events SET type = 'Rewritten'",
        "delete": "DELETE FROM events",
        "truncate": "TRUNCATE events",
        "disable trigger": "ALTER TABLE events DISABLE TRIGGER events_append_only",
        "disable all triggers": "ALTER TABLE events DISABLE TRIGGER ALL",
        "drop trigger": "DROP TRIGGER events_append_only ON events",
        "drop chain trigger": "DROP TRIGGER events_chain ON events",
        "replace function": "CREATE OR REPLACE FUNCTION events_reject_change() RETURNS trigger"
        " LANGUAGE plpgsql AS $$ BEGIN RETURN NULL; END $$",
        "drop table": "DROP TABLE events",
        "replica mode": "SET session_replication_role = replica",
    }
    refused: dict[str, str] = {}
    with connect(url) as conn:
        for what, statement in attempts.items():
            try:
                with conn.transaction():
                    conn.execute(statement)
            except psycopg.errors.InsufficientPrivilege as exc:
                refused[what] = str(exc)
    return refused


def _append_one(url: str) -> None:
    async def go() -> None:
        db = Database(url)
        try:
            await EventStore(db).append(
                f"test:{uuid.uuid4()}", [ev.WorkerHeartbeat(workerId="w", hostname="h")]
            )
        finally:
            await db.close()

    trio.run(go)


def _identity(url: str) -> tuple[str, str]:
    with connect(url) as conn:
        row = conn.execute("SELECT session_user, current_user").fetchone()
    assert row is not None
    return str(row[0]), str(row[1])


ALL_REFUSED = {
    "update",
    "delete",
    "truncate",
    "disable trigger",
    "disable all triggers",
    "drop trigger",
    "drop chain trigger",
    "replace function",
    "drop table",
    "replica mode",
}


def test_runtime_connections_switch_to_a_role_that_cannot_rewrite_events(
    database_url: str,
) -> None:
    with fresh_database(database_url) as url:
        migrate(url)
        runtime = runtime_url(url)
        session, current = _identity(runtime)
        assert current == runtime_role(psycopg.conninfo.conninfo_to_dict(url)["dbname"])
        assert session != current  # logged in as the owner, acting as the runtime role
        _append_one(runtime)
        assert set(_refusals(runtime)) == ALL_REFUSED
        # The owner still may (it is who runs migrations).
        with connect(url) as conn:
            conn.execute("ALTER TABLE events DISABLE TRIGGER events_append_only")
            conn.execute("ALTER TABLE events ENABLE TRIGGER events_append_only")


def test_a_runtime_role_that_logs_in_cannot_rewrite_events_nor_switch_back(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with fresh_database(database_url) as url:
        migrate(url)
        role = runtime_role(psycopg.conninfo.conninfo_to_dict(url)["dbname"])
        password = uuid.uuid4().hex
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(
                sql.SQL("ALTER ROLE {} LOGIN PASSWORD {}").format(
                    sql.Identifier(role), sql.Literal(password)
                )
            )
        own = _url(url, user=role, password=password)
        monkeypatch.setenv(RUNTIME_URL_ENV, own)
        assert runtime_url(url) == own
        assert _identity(own) == (role, role)
        _append_one(own)
        assert set(_refusals(own)) == ALL_REFUSED
        owner = _identity(url)[0]
        with connect(own) as conn:
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(owner)))
            conn.execute("SET ROLE NONE")
            assert conn.execute("SELECT current_user").fetchone() == (role,)
        # A server given only the runtime login (migrations applied beforehand by the owner)
        # starts: nothing is pending, and it stays who it is.
        monkeypatch.delenv(RUNTIME_URL_ENV)
        assert migrate(own) == []
        assert runtime_url(own) == own


def test_embedded_postgres_makes_a_runtime_role_the_engine_logs_in_as(tmp_path: Path) -> None:
    embedded = EmbeddedPostgres(tmp_path / "data")
    url = embedded.start()
    try:
        migrate(url)
        runtime = runtime_url(url)
        assert _identity(runtime) == (runtime_role("postgres"), runtime_role("postgres"))
        _append_one(runtime)
        assert set(_refusals(runtime)) == ALL_REFUSED
    finally:
        embedded.stop()


def test_tables_of_later_migrations_are_granted_to_the_runtime_role(
    database_url: str, tmp_path: Path
) -> None:
    folder = tmp_path / "migrations"
    shutil.copytree(migrations_dir(), folder)
    (folder / "0999_later.sql").write_text(
        "CREATE TABLE later_things (id bigserial PRIMARY KEY, name text NOT NULL);"
    )
    with fresh_database(database_url) as url:
        migrate(url, folder)
        # A migration that means the runtime role to only add to a table of its own.
        (folder / "1000_keep_notes.sql").write_text(
            "CREATE TABLE notes (id bigserial PRIMARY KEY, body text NOT NULL);"
            " DO $$ BEGIN EXECUTE format('REVOKE UPDATE, DELETE ON notes FROM %I',"
            " 'tiercel_runtime_' || current_database()); END $$;"
        )
        migrate(url, folder)
        runtime = runtime_url(url)
        with connect(runtime) as conn:
            conn.execute("INSERT INTO later_things (name) VALUES ('a')")
            conn.execute("UPDATE later_things SET name = 'b'")
            conn.execute("DELETE FROM later_things")
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute("DROP TABLE later_things")
            conn.execute("INSERT INTO notes (body) VALUES ('kept')")
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute("DELETE FROM notes")
        migrate(url, folder)  # a later run leaves what the migration set
        with connect(runtime) as conn, pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("DELETE FROM notes")
        assert set(_refusals(runtime)) == ALL_REFUSED


def test_a_runtime_role_has_no_rights_in_another_database_of_the_cluster(
    database_url: str,
) -> None:
    with fresh_database(database_url) as first, fresh_database(database_url) as second:
        migrate(first)
        migrate(second)
        names = {psycopg.conninfo.conninfo_to_dict(u)["dbname"] for u in (first, second)}
        assert len({runtime_role(n) for n in names}) == 2
        # The first database's runtime role, in the second database:
        first_role = runtime_role(psycopg.conninfo.conninfo_to_dict(first)["dbname"])
        stray = _url(second, options=f"-c role={first_role}")
        with connect(stray) as conn:
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute("SELECT count(*) FROM events")


def test_an_owner_that_may_create_roles_but_is_no_superuser_gets_a_runtime_role(
    database_url: str,
) -> None:
    with (
        login_role(database_url, "CREATEROLE") as (owner, password),
        fresh_database(database_url, owner=owner) as admin_url,
    ):
        url = _url(admin_url, user=owner, password=password)
        migrate(url)
        runtime = runtime_url(url)
        assert _identity(runtime)[1] == runtime_role(
            psycopg.conninfo.conninfo_to_dict(url)["dbname"]
        )
        _append_one(runtime)
        assert set(_refusals(runtime)) == ALL_REFUSED


def test_an_owner_that_may_not_create_roles_migrates_and_says_why_there_is_no_runtime_role(
    database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    with (
        login_role(database_url) as (owner, password),
        fresh_database(database_url, owner=owner) as admin_url,
    ):
        url = _url(admin_url, user=owner, password=password)
        role = runtime_role(psycopg.conninfo.conninfo_to_dict(url)["dbname"])
        with caplog.at_level(logging.WARNING):
            assert "0006_event_chain" in migrate(url)
            runtime = runtime_url(url)
        assert runtime == url
        messages = " ".join(r.getMessage() for r in caplog.records)
        assert f"CREATE ROLE {role} NOLOGIN" in messages
        assert f"does not exist, so the engine connects as {owner}" in messages
        _append_one(runtime)


# --- how long a session may hold a transaction or wait ---------------------------------------------


async def test_engine_connections_bound_idle_transactions_and_lock_waits(
    database_url: str,
) -> None:
    db = Database(database_url)
    seen: dict[str, Any] = {}

    def inside_append(conn: psycopg.Connection[Any]) -> None:
        seen["statement_timeout"] = conn.execute("SHOW statement_timeout").fetchone()

    try:
        row = await db.fetchone(
            "SELECT current_setting('idle_in_transaction_session_timeout') AS idle,"
            " current_setting('lock_timeout') AS lock,"
            " current_setting('statement_timeout') AS statement"
        )
        await EventStore(db).append_many([], extra=inside_append)
    finally:
        await db.close()
    assert row == {"idle": "20s", "lock": "1min", "statement": "0"}
    assert seen["statement_timeout"] == ("1min",)


async def test_a_transaction_left_idle_is_ended_by_the_server_and_appends_go_on(
    database_url: str, store: EventStore
) -> None:
    stalled = Database(
        database_url,
        settings={**SESSION_SETTINGS, "idle_in_transaction_session_timeout": "300ms"},
    )
    outcome: list[BaseException] = []

    def hold_the_append_lock_and_go_quiet(conn: psycopg.Connection[Any]) -> None:
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_APPEND_LOCK,))
            trio.from_thread.run_sync(locked.set)
            time.sleep(1.5)  # a stuck thread: no statement for longer than the timeout
            conn.execute("SELECT 1")

    async def stall() -> None:
        try:
            await stalled.run(hold_the_append_lock_and_go_quiet)
        except BaseException as exc:
            outcome.append(exc)

    locked = trio.Event()
    stream = f"test:{uuid.uuid4()}"
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(stall)
            await locked.wait()
            with trio.fail_after(30):
                # Waits for the lock, which the server frees when it ends the quiet session.
                await store.append(stream, [ev.WorkerHeartbeat(workerId="w", hostname="h")])
        [error] = outcome
        assert isinstance(error, DatabaseUnavailable)
        assert "idle_in_transaction_session_timeout" in str(error)
        assert len(await store.read_stream(stream)) == 1
        # The pool connects afresh after the server ended its connection.
        assert await stalled.ping()
    finally:
        await stalled.close()
