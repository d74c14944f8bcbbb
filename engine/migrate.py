"""Numbered SQL migrations, applied in order, each in its own transaction.

An advisory lock makes two processes that start at once apply each migration exactly once.
Migrations run as the role of the URL they are given, which owns what they create. After them,
the database's runtime role (`engine.db.runtime_role`) is created when that role may create
roles, and granted what the engine needs at run time: INSERT and SELECT on `events`, and
reading and writing every other table, including tables later migrations add (default
privileges). See docs/audit-log.md.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from engine.db import runtime_role

log = logging.getLogger(__name__)

_LOCK_KEY = 0x7469657263656C  # "tiercel"
_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


def migrations_dir() -> Path:
    """The folder holding `NNNN_name.sql` files (`TIERCEL_MIGRATIONS_DIR` overrides)."""
    override = os.environ.get("TIERCEL_MIGRATIONS_DIR")
    if override:
        return Path(override)
    return Path(__file__).resolve().parent.parent / "migrations"


def pending(folder: Path) -> list[tuple[int, str, Path]]:
    """Every migration file in `folder` as (number, name, path), in order."""
    found = []
    for path in sorted(folder.glob("*.sql")):
        m = _NAME.match(path.name)
        if not m:
            raise ValueError(f"Migration file {path.name} must be named NNNN_name.sql")
        found.append((int(m.group(1)), m.group(2), path))
    return found


def migrate(url: str, folder: Path | None = None) -> list[str]:
    """Apply every migration not yet recorded in `schema_migrations`; return the names applied."""
    folder = folder or migrations_dir()
    applied: list[str] = []
    with psycopg.Connection.connect(url, autocommit=True) as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (_LOCK_KEY,))
        try:
            # Checked first: a role without CREATE on the schema (the runtime role) may run
            # this when nothing is pending.
            if conn.execute("SELECT to_regclass('schema_migrations')").fetchone() == (None,):
                conn.execute(
                    "CREATE TABLE schema_migrations ("
                    " version integer PRIMARY KEY, name text NOT NULL,"
                    " applied_at timestamptz NOT NULL DEFAULT now())"
                )
            done = {r[0] for r in conn.execute("SELECT version FROM schema_migrations")}
            for number, name, path in pending(folder):
                if number in done:
                    continue
                with conn.transaction():
                    conn.execute(path.read_text().encode())
                    conn.execute(
                        "INSERT INTO schema_migrations (version, name) VALUES (%s, %s)",
                        (number, name),
                    )
                applied.append(f"{number:04d}_{name}")
            grant_runtime(conn)
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (_LOCK_KEY,))
    return applied


_TABLE_RIGHTS = sql.SQL("SELECT, INSERT, UPDATE, DELETE")
_SEQUENCE_RIGHTS = sql.SQL("USAGE, SELECT")


def grant_runtime(conn: psycopg.Connection[Any]) -> str | None:
    """Create the runtime role of the connected database if it is missing and may be created,
    let the connected role act as it, and grant it exactly what the engine needs; return its
    name, or None (saying why in the log) when the connected role cannot arrange it.

    Safe to run again: every run gives the standard rights on any table where the runtime role
    has none, leaves the rights a migration set on purpose, and takes back any right on
    `events` beyond INSERT and SELECT.
    """
    role = runtime_role(conn.info.dbname)
    me = conn.execute(
        "SELECT current_user, r.rolsuper, t.tableowner"
        " FROM pg_roles r LEFT JOIN pg_tables t"
        "   ON t.tablename = 'events' AND t.schemaname = current_schema()"
        " WHERE r.rolname = current_user"
    ).fetchone()
    assert me is not None
    user, superuser, owner = me
    if user == role:
        return role
    if owner is None:
        return None  # no event store in this schema: nothing to grant on
    if owner != user and not superuser:
        log.info(
            "Connected as %s, which does not own events: runtime grants left as they are", user
        )
        return None
    if conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone() is None:
        try:
            conn.execute(sql.SQL("CREATE ROLE {} NOLOGIN").format(sql.Identifier(role)))
        except psycopg.errors.InsufficientPrivilege:
            log.warning(
                "%s may not create roles, so there is no runtime role %s and the engine will "
                "connect as %s, which may change or drop the append-only trigger of events. As "
                "a superuser: CREATE ROLE %s NOLOGIN; GRANT %s TO %s; then migrate again.",
                user,
                role,
                user,
                role,
                role,
                user,
            )
            return None
        except psycopg.errors.DuplicateObject:
            pass  # created meanwhile by a migration of another process
    rt = sql.Identifier(role)
    member = "SET" if conn.info.server_version >= 160000 else "MEMBER"
    may_set = conn.execute("SELECT pg_has_role(%s, %s)", (role, member)).fetchone()
    if may_set != (True,):
        try:
            conn.execute(sql.SQL("GRANT {} TO {}").format(rt, sql.Identifier(user)))
        except psycopg.errors.InsufficientPrivilege as exc:
            log.warning("%s may not act as the runtime role %s: %s", user, role, exc)
    schema = sql.Identifier(_current_schema(conn))
    with conn.transaction():
        # One transaction: no other session ever sees the runtime role with more on events.
        conn.execute(sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(schema, rt))
        # Tables and sequences on which it has no right at all: the first setup, or made by
        # a role whose default privileges do not cover it. One a migration granted something
        # on (or took something back from) is left as that migration set it.
        for kind, name, rights in conn.execute(
            "SELECT c.relkind, c.relname,"
            " CASE WHEN c.relkind = 'S' THEN has_sequence_privilege(%(role)s, c.oid,"
            "   'USAGE, SELECT, UPDATE')"
            " ELSE has_table_privilege(%(role)s, c.oid,"
            "   'SELECT, INSERT, UPDATE, DELETE, TRUNCATE, REFERENCES, TRIGGER') END"
            " FROM pg_class c WHERE c.relnamespace = current_schema()::regnamespace"
            " AND c.relkind IN ('r', 'p', 'S')"
            " AND c.relname NOT IN ('events', 'schema_migrations')",
            {"role": role},
        ).fetchall():
            if rights:
                continue
            template = (
                "GRANT {rights} ON SEQUENCE {name} TO {rt}"
                if kind == "S"
                else ("GRANT {rights} ON TABLE {name} TO {rt}")
            )
            conn.execute(
                sql.SQL(template).format(
                    rights=_SEQUENCE_RIGHTS if kind == "S" else _TABLE_RIGHTS,
                    name=sql.Identifier(name),
                    rt=rt,
                )
            )
        for statement in (
            "REVOKE ALL ON events, schema_migrations FROM {rt}",
            "GRANT SELECT, INSERT ON events TO {rt}",
            "GRANT SELECT ON schema_migrations TO {rt}",
            # Tables and sequences the connected role creates later (the next migrations).
            "ALTER DEFAULT PRIVILEGES IN SCHEMA {schema} GRANT {tables} ON TABLES TO {rt}",
            "ALTER DEFAULT PRIVILEGES IN SCHEMA {schema} GRANT {sequences} ON SEQUENCES TO {rt}",
        ):
            conn.execute(
                sql.SQL(statement).format(
                    schema=schema, rt=rt, tables=_TABLE_RIGHTS, sequences=_SEQUENCE_RIGHTS
                )
            )
    return role


def _current_schema(conn: psycopg.Connection[Any]) -> str:
    row = conn.execute("SELECT current_schema()").fetchone()
    assert row is not None and row[0] is not None
    return str(row[0])


def applied_versions(conn: psycopg.Connection[Any]) -> list[int]:
    """The migration numbers recorded in the database."""
    return [r[0] for r in conn.execute("SELECT version FROM schema_migrations ORDER BY version")]
