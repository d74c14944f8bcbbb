"""Numbered SQL migrations, applied in order, each in its own transaction.

An advisory lock makes two processes that start at once apply each migration exactly once.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import psycopg

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
            conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
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
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (_LOCK_KEY,))
    return applied


def applied_versions(conn: psycopg.Connection[Any]) -> list[int]:
    """The migration numbers recorded in the database."""
    return [r[0] for r in conn.execute("SELECT version FROM schema_migrations ORDER BY version")]
