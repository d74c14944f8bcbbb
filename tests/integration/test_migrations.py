"""Migrations: applied once, in order, even when two processes start together."""

from __future__ import annotations

import threading
import uuid

import psycopg

from engine.migrate import migrate, migrations_dir, pending


def _fresh_database(url: str) -> str:
    name = f"mig_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    info = psycopg.conninfo.conninfo_to_dict(url)
    info["dbname"] = name
    return psycopg.conninfo.make_conninfo(**info)


def test_concurrent_migrations_apply_each_file_exactly_once(database_url: str):
    url = _fresh_database(database_url)
    results: list[list[str]] = []
    threads = [threading.Thread(target=lambda: results.append(migrate(url))) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    files = pending(migrations_dir())
    assert sorted(len(r) for r in results) == [0, 0, len(files)]
    with psycopg.connect(url) as conn:
        versions = [r[0] for r in conn.execute("SELECT version FROM schema_migrations")]
    assert sorted(versions) == [n for n, _, _ in files]
    assert migrate(url) == []
