"""The hash chain of `events`: every row chains to the one before it, and `tiercel sys verify
--chain` names the first place where a row was changed, removed or reordered, even by a
superuser who lifted the append-only trigger.

Tests that tamper with the log do it in a database of their own, so the session's log stays
whole for the last test, which checks the chain of everything the suite recorded.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest
import trio

from engine import events as ev
from engine.db import Database
from engine.migrate import migrate, migrations_dir
from engine.store import Append, EventStore
from engine.verify import GENESIS, chain_content, chain_hash, verify_chain
from tests.integration.test_db_roles import fresh_database

ROOT = Path(__file__).resolve().parents[2]


def _verify(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    """`tiercel sys verify --chain` in a process of its own."""
    return subprocess.run(
        [sys.executable, "-m", "engine.cli", "sys", "verify", "--chain", "--database-url", url]
        + list(args),
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )


def _record(url: str, streams: int = 4, per_stream: int = 3) -> None:
    """Some events, appended the way the engine appends (batches over several streams)."""

    async def go() -> None:
        db = Database(url)
        store = EventStore(db)
        try:
            for round_ in range(per_stream):
                await store.append_many(
                    [
                        Append(
                            f"test:{s}",
                            [ev.WorkerHeartbeat(workerId=f"w{s}", hostname=f"r{round_}")],
                            meta={"actor": "test", "note": "ünïcode\nand a newline"},
                        )
                        for s in range(streams)
                    ]
                )
        finally:
            await db.close()

    trio.run(go)


def _tamper(url: str, *statements: str) -> None:
    """Run `statements` as a superuser with the append-only trigger lifted."""
    with psycopg.connect(url, autocommit=True) as conn, conn.transaction():
        conn.execute("ALTER TABLE events DISABLE TRIGGER USER")
        for statement in statements:
            conn.execute(statement)
        conn.execute("ALTER TABLE events ENABLE TRIGGER USER")


def test_every_appended_row_chains_to_the_one_before(database_url: str) -> None:
    with fresh_database(database_url) as url:
        migrate(url)
        _record(url)
        with psycopg.connect(url, autocommit=True) as conn:
            report = verify_chain(conn)
            first = conn.execute(
                "SELECT seq, stream_id, version, type, data::text, meta::text, command_id,"
                " recorded_at, hash FROM events ORDER BY seq LIMIT 1"
            ).fetchone()
            last = conn.execute("SELECT seq, hash FROM events ORDER BY seq DESC LIMIT 1").fetchone()
        assert report.ok, report.breaks
        assert report.rows == 12
        assert first is not None and last is not None
        assert chain_hash(GENESIS, chain_content(*first[:8])) == bytes(first[8])
        assert (report.head, report.headHash) == (last[0], bytes(last[1]).hex())
        result = _verify(url)
        assert result.returncode == 0, result.stdout + result.stderr
        assert f"Chain: 12 row(s) intact, head {last[0]}:{bytes(last[1]).hex()}" in result.stdout


def test_sys_verify_chain_names_a_row_a_superuser_changed_with_the_triggers_disabled(
    database_url: str,
) -> None:
    with fresh_database(database_url) as url:
        migrate(url)
        _record(url)
        _tamper(url, 'UPDATE events SET data = data || \'{"hostname": "forged"}\' WHERE seq = 7')
        result = _verify(url)
        assert result.returncode == 1, result.stdout + result.stderr
        assert "✗ chain broken at position 7:" in result.stdout
        assert "Chain: 12 row(s), broken at position 7" in result.stdout

        as_json = json.loads(_verify(url, "--json").stdout)
        assert as_json["ok"] is False
        assert as_json["chain"]["ok"] is False
        assert [b["position"] for b in as_json["chain"]["breaks"]] == [7]


def test_sys_verify_chain_names_where_a_row_was_removed(database_url: str) -> None:
    with fresh_database(database_url) as url:
        migrate(url)
        _record(url)
        _tamper(url, "DELETE FROM events WHERE seq = 5")
        result = _verify(url)
        assert result.returncode == 1, result.stdout + result.stderr
        assert "✗ chain broken at position 6:" in result.stdout
        assert "position 5 (missing here) was removed" in result.stdout


def test_sys_verify_chain_names_rows_put_in_another_order(database_url: str) -> None:
    with fresh_database(database_url) as url:
        migrate(url)
        _record(url)
        _tamper(
            url,
            "UPDATE events SET seq = -3 WHERE seq = 3",
            "UPDATE events SET seq = 3 WHERE seq = 4",
            "UPDATE events SET seq = 4 WHERE seq = -3",
        )
        result = _verify(url, "--json")
        assert result.returncode == 1, result.stdout + result.stderr
        breaks = json.loads(result.stdout)["chain"]["breaks"]
        assert breaks[0]["position"] == 3


def test_a_removed_tail_is_named_from_the_consumers_checkpoints(database_url: str) -> None:
    with fresh_database(database_url) as url:
        migrate(url)
        _record(url)
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("INSERT INTO checkpoints (name, position) VALUES ('executor', 12)")
        _tamper(url, "DELETE FROM events WHERE seq > 10")
        result = _verify(url)
        assert result.returncode == 1, result.stdout + result.stderr
        assert "✗ chain broken at position 11: the log ends at position 10" in result.stdout
        assert "'executor' has read up to position 12" in result.stdout


def test_a_log_rewritten_with_a_fresh_chain_is_caught_only_by_a_noted_anchor(
    database_url: str,
) -> None:
    with fresh_database(database_url) as url:
        migrate(url)
        _record(url)
        before = _verify(url, "--json")
        head = json.loads(before.stdout)["chain"]
        anchor = f"{head['head']}:{head['headHash']}"
        # Whoever controls the whole database can change a row and recompute every hash
        # after it: the chain then holds, and only a head noted outside the database tells.
        _tamper(
            url,
            'UPDATE events SET data = data || \'{"hostname": "forged"}\' WHERE seq = 2',
            """DO $$
            DECLARE r record; prev bytea := '\\x' || repeat('00', 32);
            BEGIN
                FOR r IN SELECT * FROM events ORDER BY seq LOOP
                    prev := sha256(prev || events_chain_content(r.seq, r.stream_id, r.version,
                        r.type, r.data, r.meta, r.command_id, r.recorded_at));
                    UPDATE events SET hash = prev WHERE seq = r.seq;
                END LOOP;
            END $$""",
        )
        assert _verify(url).returncode == 0
        result = _verify(url, "--anchor", anchor)
        assert result.returncode == 1, result.stdout + result.stderr
        assert f"✗ chain broken at position {head['head']}:" in result.stdout
        assert "rewritten since" in result.stdout


def test_a_row_whose_position_was_drawn_before_a_later_one_was_written_is_refused(
    database_url: str,
) -> None:
    # What an INSERT that bypasses the append lock can do: draw position n, then find n + 1
    # written first. Chained behind the wrong row it would break the chain; it is refused
    # (as a serialization failure, which writers retry) and the chain holds.
    with fresh_database(database_url) as url:
        migrate(url)
        _record(url)
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(
                "INSERT INTO events (seq, stream_id, version, type, data)"
                " VALUES (100, 'test:late', 0, 'WorkerHeartbeat', '{}')"
            )
            with pytest.raises(psycopg.errors.SerializationFailure, match="position 100"):
                conn.execute(
                    "INSERT INTO events (seq, stream_id, version, type, data)"
                    " VALUES (50, 'test:late', 1, 'WorkerHeartbeat', '{}')"
                )
            assert verify_chain(conn).ok


def test_an_anchor_that_is_not_a_position_and_hash_is_refused(database_url: str) -> None:
    result = _verify(database_url, "--anchor", "12:nothex")
    assert result.returncode == 2
    assert "is not POSITION:HASH" in result.stderr


def test_events_recorded_before_the_chain_existed_get_one_from_the_migration(
    database_url: str, tmp_path: Path
) -> None:
    before = tmp_path / "before"
    before.mkdir()
    for path in sorted(migrations_dir().glob("*.sql")):
        if int(path.name[:4]) < 6:
            shutil.copy(path, before / path.name)
    with fresh_database(database_url) as url:
        migrate(url, before)
        _record(url)
        assert "0006_event_chain" in migrate(url)
        _record(url, streams=2, per_stream=1)
        with psycopg.connect(url, autocommit=True) as conn:
            report = verify_chain(conn)
        assert report.ok, report.breaks
        assert report.rows == 14


@pytest.mark.last
def test_sys_verify_chain_passes_over_everything_the_suite_recorded(database_url: str) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:
        row = conn.execute("SELECT coalesce(max(seq), 0) FROM events").fetchone()
    assert row is not None
    # --since the head: no execution to refold, only the chain of the whole log to check.
    result = _verify(database_url, "--since", str(row[0]))
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-2000:]
    assert "row(s) intact" in result.stdout


def test_quick_chain_bench_prints_the_append_rates_with_and_without_the_chain(
    database_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from bench.chain import main

    out = tmp_path / "chain.json"
    assert main(["--quick", "--database-url", database_url, "--json", str(out)]) == 0
    table = capsys.readouterr().out
    assert "with chain  without chain (same run)" in table
    for figure in ("appends/s, 1 event, 1 commit each", "events/s, appends of 100", "ceiling"):
        assert figure in table
    results = json.loads(out.read_text())
    for mode in ("chain", "plain"):
        assert results["appends"][mode]["single"] > 0
        assert results["appends"][mode]["batched"] > 0
    assert results["verify"]["rows"] > 0
