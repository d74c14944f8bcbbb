"""Kestra's own test flows, run on Tiercel: does each end the way Kestra's tests say it should?

    python -m tests.conformance.runner [--corpus DIR] [--database-url URL] [FLOW ...]

Reads `../shared/kestra-corpus` (or `--corpus`, or `TIERCEL_KESTRA_CORPUS`): deploys every valid
flow, runs each flow that has a run expectation with its inputs, compares the final state, the
number of task runs and the listed outputs, and checks that every invalid flow is rejected.
Prints one table (`flow, expected, got`) and a closing count.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

REPO = Path(__file__).resolve().parents[2]
TEST_ONLY_PREFIXES = ("io.kestra.core.tasks.test.", "io.kestra.core.runners.test.")
RUN_TIMEOUT = 120.0


def corpus_dir(given: str | None = None) -> Path | None:
    """The corpus folder, or None when it is not there."""
    candidates = [
        given,
        os.environ.get("TIERCEL_KESTRA_CORPUS"),
        REPO.parent / "shared" / "kestra-corpus",
    ]
    for candidate in candidates:
        if candidate and (Path(candidate) / "expectations.json").is_file():
            return Path(candidate)
    return None


@dataclass
class Row:
    """One line of the report."""

    flow: str
    expected: str
    got: str
    status: str  # pass | fail | skip
    reason: str = ""


@dataclass
class Report:
    rows: list[Row] = field(default_factory=list)
    valid_files: int = 0
    deployed: int = 0

    def count(self, status: str) -> int:
        return sum(1 for r in self.rows if r.status == status)

    def table(self) -> str:
        headers = ("flow", "expected", "got", "")
        cells = [
            (r.flow, r.expected, r.got, r.status.upper() + (f" ({r.reason})" if r.reason else ""))
            for r in self.rows
        ]
        widths = [min(max(len(c[i]) for c in [headers, *cells]), 60) for i in range(3)]
        lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=False)).rstrip()]
        lines.append("  ".join("-" * w for w in widths))
        for c in cells:
            lines.append(
                "  ".join([*(c[i][:60].ljust(widths[i]) for i in range(3)), c[3]]).rstrip()
            )
        lines.append("")
        lines.append(f"{self.deployed} of {self.valid_files} valid flows validated and deployed")
        lines.append(
            f"{self.count('pass')} passed, {self.count('fail')} failed, {self.count('skip')} skipped "
            f"(of {len(self.rows)}: runs of valid flows and rejections of invalid flows)"
        )
        return "\n".join(lines)


def test_only_types(source: str) -> list[str]:
    """The test-only task or trigger types a flow uses (Kestra's test code, not core)."""
    import re

    return sorted(
        {
            m
            for m in re.findall(r"type:\s*['\"]?([\w.]+)", source)
            if m.startswith(TEST_ONLY_PREFIXES)
        }
    )


def describe(run: dict[str, Any]) -> str:
    parts = []
    if "state" in run:
        parts.append(run["state"])
    if "taskRunCount" in run:
        parts.append(f"{run['taskRunCount']} task runs")
    if "outputs" in run:
        parts.append("outputs " + json.dumps(run["outputs"], sort_keys=True))
    return ", ".join(parts) or "ends"


def check_invalids(corpus: Path, report: Report, only: set[str] | None) -> None:
    from engine.errors import FlowValidationError
    from engine.flow import parse_flow

    for path in sorted((corpus / "flows" / "invalids").iterdir()):
        if only and path.name not in only:
            continue
        try:
            parse_flow(path.read_text(), origin=path.name)
        except FlowValidationError as exc:
            first = exc.details[0] if exc.details else None
            got = f"rejected: {first}" if first else f"rejected: {exc.message}"
            report.rows.append(Row(f"invalids/{path.name}", "rejected", got, "pass"))
        except Exception as exc:  # anything but a validation error is a defect
            report.rows.append(
                Row(
                    f"invalids/{path.name}",
                    "rejected",
                    f"crashed: {type(exc).__name__}: {exc}",
                    "fail",
                )
            )
        else:
            report.rows.append(Row(f"invalids/{path.name}", "rejected", "accepted", "fail"))


async def run_valids(url: str, corpus: Path, report: Report, only: set[str] | None) -> None:
    from engine.commands import create_execution, deploy_flow, wait_for_end
    from engine.errors import TiercelError
    from engine.server import run_server

    expectations: dict[str, Any] = json.loads((corpus / "expectations.json").read_text())
    sources = {p.name: p.read_text() for p in sorted((corpus / "flows" / "valids").iterdir())}
    with tempfile.TemporaryDirectory(prefix="tiercel-conformance-") as data_dir:
        async with trio.open_nursery() as nursery:
            ctx = await nursery.start(
                functools.partial(
                    run_server,
                    url,
                    ("executor", "worker"),
                    data_dir=Path(data_dir),
                    worker_slots=64,
                    heartbeat_interval=1.0,
                )  # fmt: skip
            )
            deployed: dict[str, tuple[str, str]] = {}
            for name, source in sources.items():
                try:
                    record = await deploy_flow(ctx.store, source, actor="conformance")
                    deployed[name] = (record.namespace, record.id)
                except TiercelError as exc:
                    if only and name not in only:
                        continue
                    skip = test_only_types(source)
                    if skip:
                        report.rows.append(
                            Row(
                                f"valids/{name}",
                                "valid",
                                "not deployed",
                                "skip",
                                "test-only types: " + ", ".join(skip),
                            )
                        )
                    else:
                        report.rows.append(
                            Row(
                                f"valids/{name}",
                                "valid",
                                f"rejected: {str(exc).splitlines()[-1].strip()}",
                                "fail",
                            )
                        )
            limiter = trio.CapacityLimiter(16)
            results: dict[tuple[str, int], Row] = {}

            async def one(name: str, index: int, run: dict[str, Any], skip: str | None) -> None:
                label = f"valids/{name}" + (
                    f" #{index + 1}" if len(expectations[name]["runs"]) > 1 else ""
                )
                if run.get("inputs"):
                    label += " " + json.dumps(run["inputs"], sort_keys=True)
                expected = describe(run)
                if skip:
                    results[(name, index)] = Row(label, expected, "-", "skip", skip)
                    return
                if name not in deployed:
                    results[(name, index)] = Row(label, expected, "flow not deployed", "fail")
                    return
                namespace, flow_id = deployed[name]
                async with limiter:
                    try:
                        execution_id = await create_execution(
                            ctx.store,
                            namespace,
                            flow_id,
                            run.get("inputs") or {},
                            actor="conformance",
                        )
                        state = await wait_for_end(
                            ctx.store, ctx.notifier, execution_id, timeout=RUN_TIMEOUT
                        )
                    except TiercelError as exc:
                        results[(name, index)] = Row(
                            label, expected, f"not started: {exc.message}", "fail"
                        )
                        return
                got_parts = [state.state, f"{len(state.taskruns)} task runs"]
                ok = state.terminal
                if "state" in run and run["state"] != state.state:
                    ok = False
                if "taskRunCount" in run and run["taskRunCount"] != len(state.taskruns):
                    ok = False
                if "outputs" in run:
                    got_parts.append("outputs " + json.dumps(state.outputs or {}, sort_keys=True))
                    ok = ok and all(
                        (state.outputs or {}).get(k) == v for k, v in run["outputs"].items()
                    )
                if not state.terminal:
                    got_parts[0] = f"still {state.state} after {RUN_TIMEOUT:.0f}s"
                failed = [f"{r.taskId}: {r.message}" for r in state.taskruns.values() if r.message]
                reason = "" if ok or not failed else failed[0][:80]
                results[(name, index)] = Row(
                    label, expected, ", ".join(got_parts), "pass" if ok else "fail", reason
                )

            async with trio.open_nursery() as runs:
                for name, entry in expectations.items():
                    if only and name not in only:
                        continue
                    skip = entry.get("skip")
                    for index, run in enumerate(entry["runs"]):
                        runs.start_soon(one, name, index, run, skip)
            report.rows.extend(results[k] for k in sorted(results))
            report.valid_files, report.deployed = len(sources), len(deployed)
            nursery.cancel_scope.cancel()


def run(corpus: Path, url: str, only: set[str] | None = None) -> Report:
    """Run the whole conformance check against the PostgreSQL at `url`."""
    report = Report()
    check_invalids(corpus, report, only)
    trio.run(run_valids, url, corpus, report, only)
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.conformance.runner", description=__doc__.split("\n")[0]
    )
    parser.add_argument("flows", nargs="*", help="only these files (e.g. sequential.yaml)")
    parser.add_argument("--corpus", help="the kestra-corpus folder")
    parser.add_argument(
        "--database-url", help="an existing PostgreSQL (default: a throwaway embedded one)"
    )
    args = parser.parse_args(argv)
    corpus = corpus_dir(args.corpus)
    if corpus is None:
        print(
            "The Kestra corpus was not found: pass --corpus or set TIERCEL_KESTRA_CORPUS",
            file=sys.stderr,
        )
        return 2
    from engine.migrate import migrate

    embedded = None
    url = args.database_url
    if not url:
        from engine.embedded import EmbeddedPostgres

        embedded = EmbeddedPostgres(Path(tempfile.mkdtemp(prefix="tiercel-conformance-pg-")))
        url = embedded.start()
    try:
        migrate(url)
        report = run(corpus, url, set(args.flows) or None)
    finally:
        if embedded:
            embedded.stop()
    print(report.table())
    return 1 if report.count("fail") else 0


if __name__ == "__main__":
    sys.exit(main())
