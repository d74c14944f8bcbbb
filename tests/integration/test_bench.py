"""The core benchmark runs end to end and reports every figure beside its target and baseline.

One `--quick` run (a few seconds) serves every test of this module. It asks for the peers with an
interpreter that does not exist, so it also shows that a peer that cannot run is skipped with its
reason instead of failing the run (installing Prefect needs the package registry and a minute,
so the real peer is run by hand, see bench/README.md).
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path
from typing import Any

import pytest

from bench.core import main


@pytest.fixture(scope="module")
def quick_run(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("bench") / "core.json"
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        code = main(
            ["--quick", "--database-url", database_url, "--json", str(out),
             "--peers", "--peer-python", "/nonexistent/bin/python"]
        )  # fmt: skip
    return {"code": code, "stdout": stdout.getvalue(), "table": stderr.getvalue(), "file": out}


def test_quick_bench_prints_every_figure_with_its_target_and_gap(quick_run: dict[str, Any]) -> None:
    assert quick_run["code"] == 0
    table = quick_run["table"]
    for header in ("figure", "value", "target", "gap", "beside it, same run"):
        assert header in table
    for figure in (
        "W1 10 sequential Returns",
        "W1 per task",
        "W2 burst of 10: throughput",
        "W2 burst of 40: p50 / p95",
        "W2 growth: throughput at 40 / at 10",
        "W3 Parallel of 10, then one Return",
        "W1: commits / notifications per execution",
        "Idle engine: commits / notifications per second",
        "W1: events / event bytes per execution",
        "W4 ForEach",
        "Ceiling: single-row INSERT",
        "Ceiling: SELECT 1 round trip",
    ):
        assert figure in table, figure
    assert "<= 6 ms" in table and ">= 1,000/s" in table
    assert "met" in table or "over" in table or "short" in table


def test_json_goes_to_stdout_and_to_the_file_with_todays_keys_and_the_new_ones(
    quick_run: dict[str, Any],
) -> None:
    results = json.loads(quick_run["stdout"])
    assert results == json.loads(Path(quick_run["file"]).read_text())
    assert results["w1"]["median_ms"] > 0 and results["w1"]["events_per_execution"] > 10
    assert results["w2"]["executions_per_s"] > 0
    assert results["w2"]["p95_ms"] >= results["w2"]["p50_ms"] > 0
    assert results["ceiling"]["batch_rows_per_s"] > 0
    assert results["ceiling"]["single_row_per_s"] > 0 and results["ceiling"]["round_trip_ms"] > 0
    assert results["w3"]["median_ms"] > 0
    assert [g["count"] for g in results["w2_growth"]] == [10, 20, 40]
    for burst in results["w2_growth"]:
        assert burst["executions_per_s"] > 0 and burst["p95_ms"] >= burst["p50_ms"] > 0
    assert results["w2_growth_ratio"] > 0
    assert 0 < results["w4"]["bytes"] < results["w4"]["budget_bytes"]


def test_commits_and_notifications_are_counted_by_postgresql(quick_run: dict[str, Any]) -> None:
    results = json.loads(quick_run["stdout"])
    for key in ("w1", "w2", "w3"):
        assert "commits_per_execution" in results[key]
        assert "notifications_per_execution" in results[key]
    # Every task of a sequential flow is at least one commit and one notification.
    assert results["w1"]["commits_gross_per_execution"] >= 10
    assert results["w1"]["notifications_gross_per_execution"] >= 10
    assert results["w2"]["notifications_gross_per_execution"] > 0


def test_a_peer_that_cannot_run_is_skipped_with_its_reason(quick_run: dict[str, Any]) -> None:
    results = json.loads(quick_run["stdout"])
    assert "/nonexistent/bin/python" in results["peers"]["skipped"]
    assert "Prefect 3: skipped (could not start /nonexistent/bin/python" in quick_run["table"]


def test_trips_names_who_asks_for_each_round_trip_of_a_w1_execution(
    database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from bench.trips import main

    assert main(["--tasks", "3", "--runs", "1", "--database-url", database_url]) == 0
    printed = capsys.readouterr().out
    assert "W1, 3 sequential Returns, 1 runs" in printed
    # The executor appends its decisions (with the claims of its process's worker) and the
    # worker its results: both are named.
    assert "engine/executor_shell.py" in printed
    assert "engine/batcher.py" in printed


def test_quick_search_bench_times_every_query_of_the_read_models_and_a_reindex(
    database_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from bench.search import main

    out = tmp_path / "search.json"
    code = main(
        ["--quick", "--executions", "400", "--log-lines", "2000", "--repeat", "1",
         "--database-url", database_url, "--json", str(out)]
    )  # fmt: skip
    assert code == 0
    printed = capsys.readouterr().out
    for line in ("Every projection caught up", "Projection logs caught up",
                 "100-row INSERT batches", "histogram: every line", "logs: q=line (every line)",
                 "metrics: flow counter sum, 30 days", "dashboard: default stats, 30 days",
                 "namespace graph: every flow of company.graph", "sys reindex of every projection",
                 "Plan of the slowest logs read"):  # fmt: skip
        assert line in printed, line
    results = json.loads(out.read_text())
    assert results["seed"]["log_lines"] == 2000 and results["seed"]["flows"] == 30
    reads = results["reads"]
    # The lines are dated over the last 30 days: the month's histogram counts every one.
    assert reads["histogram: every line"]["lines"] == 2000
    assert reads["logs: q=line (every line)"]["lines"] == 2000
    for name in (
        "metrics: flow counter sum, 30 days",
        "namespace graph: every flow of company.graph",
    ):
        assert reads[name]["other"]["p95_ms"] >= reads[name]["other"]["p50_ms"] > 0, name
    assert reads["namespace graph: every flow of company.graph"]["size"] == "30 nodes"
    rebuilt = results["reindex"]["projections"]
    assert {"flows", "executions", "logs"} <= set(rebuilt) and results["reindex"]["seconds"] > 0
