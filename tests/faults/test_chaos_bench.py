"""`python -m bench.chaos` runs end to end at a small size and prints every figure."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.chaos import main


def test_small_chaos_bench_prints_its_table_and_writes_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "chaos.json"
    code = main(
        ["--executions", "6", "--kills", "1", "--seconds", "5", "--drain-timeout", "60"]
        + ["--json", str(out)]
    )
    table = capsys.readouterr().out
    for figure in (
        "executions started",
        "kills (-9) survived",
        "SIGTERMs",
        "PostgreSQL restarts",
        "LISTEN drops",
        "executions lost",
        "executions stuck",
        "duplicated side effects",
        "time to drain",
        "at-least-once work",
    ):
        assert figure in table
    results = json.loads(out.read_text())
    assert results["figures"]["executions started"] == "6"
    assert results["figures"]["kills (-9) survived"] == "1"
    # The exit code says whether the run was healthy (the checks themselves are test_chaos's).
    assert code == (0 if results["healthy"] else 1), table
