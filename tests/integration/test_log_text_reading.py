"""How a full-text log search is read, decided from what PostgreSQL knows of the words:
a prefix that begins a word of most lines is read in date order, never through the bitmap of
every line it matches; a rare one through the lines the index names."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator

import psycopg
import pytest

from engine.db import runtime_url
from engine.migrate import migrate
from projections import logs as logs_model
from tests.conftest import own_database

LINES = 6_000


@pytest.fixture(scope="module")
def logs_url(database_url: str) -> Iterator[str]:
    """A database of its own whose log lines are written by hand and analyzed."""
    with own_database(database_url, "logtext") as url:
        migrate(url)
        base = dt.datetime(2026, 3, 1, tzinfo=dt.UTC)
        with psycopg.connect(url, autocommit=True) as conn:
            with conn.cursor().copy(
                "COPY logs (seq, line, execution_id, namespace, flow_id, task_id, timestamp,"
                " level, message) FROM STDIN"
            ) as copy:
                for i in range(LINES):
                    message = f"line {i} of batch" + (" zephyrine" if i % 1000 == 7 else "")
                    copy.write_row(
                        (i, 0, f"x{i:05d}", "company.text", "load", "t1",
                         base + dt.timedelta(seconds=i), "INFO", message)
                    )  # fmt: skip
            conn.execute("ANALYZE logs")
        # Read as the server reads: its runtime role owns neither the table nor its indexes.
        yield runtime_url(url)


def test_a_prefix_of_a_word_most_lines_hold_is_read_as_a_common_word(
    logs_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with psycopg.connect(logs_url, autocommit=True) as conn:
        # The server's role: pg_stats hides the text index's statistics from it.
        assert conn.execute(
            "SELECT rolsuper FROM pg_roles WHERE rolname = current_user"
        ).fetchone() == (False,)
        assert conn.execute(
            "SELECT count(*) FROM pg_stats WHERE tablename = 'logs_text'"
        ).fetchone() == (0,)
        # No line holds the word "lin"; every line holds "line", which it begins.
        assert logs_model.prefix_share(conn, "lin") > 0.9
        assert logs_model.text_matches(conn, "lin") == logs_model.COMMON
        assert logs_model.text_matches(conn, "LINE bat") == logs_model.COMMON
        # Its estimated total is of the lines "line" is in, not of the lines "lin" is.
        monkeypatch.setattr(logs_model, "COUNT_TEXT_UP_TO", 0)  # as at ten million lines
        search = logs_model.LogSearch(q="lin")
        estimate = logs_model.text_estimate(conn, search, "true", [], logs_model.COMMON)
        assert estimate is not None and estimate > 0.9 * LINES


def test_a_prefix_of_a_rare_word_is_resolved_to_the_lines_it_matches(logs_url: str) -> None:
    with psycopg.connect(logs_url, autocommit=True) as conn:
        assert logs_model.prefix_share(conn, "zephyr") < logs_model.COMMON_SHARE
        found = logs_model.text_matches(conn, "zephyr")
        assert isinstance(found, list)
        assert sorted(seq for seq, _line in found) == [7, 1007, 2007, 3007, 4007, 5007]
        # A common word beside a rare one: the rare one decides.
        found = logs_model.text_matches(conn, "lin zephyr")
        assert isinstance(found, list) and len(found) == 6
        assert logs_model.prefix_share(conn, "") == 0.0
