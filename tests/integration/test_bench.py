"""The core benchmark runs end to end and reports every figure beside its baseline."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.core import main


def test_quick_core_bench_prints_table_and_writes_json(
    database_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "core.json"
    assert main(["--quick", "--database-url", database_url, "--json", str(out)]) == 0
    table = capsys.readouterr().out
    for figure in (
        "W1 per task",
        "W2 burst throughput",
        "W2 latency p50 / p95",
        "single-row",
        "Event bytes per execution",
        "W4 ForEach",
    ):
        assert figure in table
    results = json.loads(out.read_text())
    assert results["w1"]["median_ms"] > 0 and results["w1"]["events_per_execution"] > 40
    assert results["w2"]["executions_per_s"] > 0
    assert results["w2"]["p95_ms"] >= results["w2"]["p50_ms"] > 0
    assert results["ceiling"]["batch_rows_per_s"] > 0
    assert 0 < results["w4"]["bytes"] < 1_000_000
