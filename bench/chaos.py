"""The chaos bench: many executions across separate processes while processes are killed,
a worker is stopped, PostgreSQL restarts and the LISTEN connections drop; then what was lost,
stuck or done twice, and how long the system took to drain.

    python -m bench.chaos [--executions N] [--kills K] [--seconds S] [--seed SEED] [--json FILE]

It starts its own embedded PostgreSQL in a temp folder (a restart is one of the faults, so it
cannot use a shared server) and runs `tiercel server executor`, two `tiercel server worker`,
`tiercel server indexer` and `tiercel server webserver` as separate processes on it. The
scenario and its checks are those of the fault tests (`tests/faults/scenario.py`), at a
larger size. Run it from the repository's root. Exits 1 when an execution was lost, stuck,
ended twice or not in SUCCESS, or a read model or `tiercel sys verify` disagrees with the log.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import textwrap
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from tests.faults.harness import Cluster, HarnessError
from tests.faults.scenario import ChaosPlan, Outcome, run_chaos

DUPLICATES_WHY = (
    "Duplicated side effects come from at-least-once work: a worker that dies after running a "
    "task's side effect but before recording its result has that attempt abandoned and run "
    "again. They are expected; lost and stuck must be 0."
)


def _seconds(value: float | None) -> str:
    return "never (deadline passed)" if value is None else f"{value:.1f} s"


def rows(outcome: Outcome, cluster: Cluster) -> list[tuple[str, str, str]]:
    """The table: (figure, value, what to read it against)."""
    kills = [a for a in outcome.actions if a.kind == "kill"]
    abandoned = sum(outcome.abandoned.values())
    since_fault = outcome.calm_at - max((a.at for a in outcome.actions), default=0.0)
    verify = outcome.verify
    return [
        (
            "executions started",
            str(len(outcome.acknowledged)),
            f"{outcome.refused_submissions} submission(s) refused and retried "
            f"(same Idempotency-Key); {len(outcome.unrequested)} extra started: must be 0",
        ),
        ("kills (-9) survived", str(len(kills)), ", ".join(a.target for a in kills)),
        (
            "SIGTERMs",
            str(outcome.count("sigterm")),
            "; ".join(f"{a.target} {a.detail}" for a in outcome.actions if a.kind == "sigterm"),
        ),
        ("PostgreSQL restarts", str(outcome.count("pg-restart")), f"down {outcome.plan.pg_down} s"),
        (
            "LISTEN drops",
            str(outcome.count("listen-drop")),
            "; ".join(a.detail for a in outcome.actions if a.kind == "listen-drop"),
        ),
        ("executions lost", str(len(outcome.lost)), "acknowledged but not in the log; must be 0"),
        ("executions stuck", str(len(outcome.stuck)), "never terminal; must be 0"),
        ("ended more than once", str(len(outcome.ended_more_than_once)), "must be 0"),
        ("ended other than SUCCESS", str(len(outcome.not_successful)), "must be 0"),
        (
            "duplicated side effects",
            str(len(outcome.duplicated_side_effects)),
            f"at most the attempts abandoned: {abandoned}",
        ),
        ("SUCCESS without side effect", str(len(outcome.missing_side_effects)), "must be 0"),
        ("read model disagreements", str(len(outcome.read_model_disagreements)), "must be 0"),
        ("projections behind the log", str(len(outcome.projection_lag)), "must be 0"),
        ("processes that exited alone", str(len(outcome.exits)), "must be 0"),
        (
            "time to drain",
            _seconds(outcome.drain_seconds),
            f"from the last submission, {since_fault:.1f} s after the last fault; "
            f"heartbeat timeout {cluster.heartbeat_timeout:g} s",
        ),
        ("time to settle", _seconds(outcome.settle_seconds), "read models and LISTEN too"),
        (
            "sys verify",
            "passed" if verify.passed else "FAILED" if verify.available else "not run",
            verify.output.splitlines()[-1] if verify.output else "",
        ),
    ]


def report(outcome: Outcome, cluster: Cluster) -> str:
    """The table, then the explanation of duplicates, then anything that went wrong."""
    table = rows(outcome, cluster)
    header = ("figure", "value", "read against")
    widths = [max(len(r[i]) for r in [header, *table]) for i in range(3)]
    lines = [
        "  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)).rstrip(),
        "  ".join("-" * w for w in widths),
        *("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip() for r in table),
        "",
        *textwrap.wrap(DUPLICATES_WHY, 100),
    ]
    if not healthy(outcome):
        lines += ["", outcome.report()]
    return "\n".join(lines)


def healthy(outcome: Outcome) -> bool:
    """True when nothing a user relies on broke (duplicates are allowed)."""
    return not (
        outcome.lost
        or outcome.unrequested
        or outcome.stuck
        or outcome.ended_more_than_once
        or outcome.not_successful
        or outcome.missing_side_effects
        or outcome.effects_beyond_claims
        or outcome.read_model_disagreements
        or outcome.projection_lag
        or outcome.exits
        or (outcome.verify.available and not outcome.verify.passed)
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.chaos", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--executions", type=int, default=300, help="executions to start")
    parser.add_argument("--kills", type=int, default=5, help="kill -9 of a random process")
    parser.add_argument("--seconds", type=float, default=60.0, help="spread over this long")
    parser.add_argument("--sigterms", type=int, default=1, help="SIGTERM of a worker")
    parser.add_argument("--pg-restarts", type=int, default=1, help="PostgreSQL restarts")
    parser.add_argument("--listen-drops", type=int, default=1, help="LISTEN connection drops")
    parser.add_argument("--task-sleep", type=float, default=0.3, help="seconds each task runs")
    parser.add_argument("--drain-timeout", type=float, default=300.0, help="seconds to settle")
    parser.add_argument("--heartbeat-timeout", type=float, default=6.0, help="worker loss (s)")
    parser.add_argument("--seed", type=int, default=None, help="replay a run's faults")
    parser.add_argument("--keep", action="store_true", help="keep the folder (logs, database)")
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    args = parser.parse_args(argv)
    plan = ChaosPlan(
        executions=args.executions,
        kills=args.kills,
        sigterms=args.sigterms,
        pg_restarts=args.pg_restarts,
        listen_drops=args.listen_drops,
        seconds=args.seconds,
        drain_timeout=args.drain_timeout,
        task_sleep=args.task_sleep,
        seed=args.seed,
    )
    cluster = Cluster.in_temp_dir(heartbeat_timeout=args.heartbeat_timeout, keep_root=args.keep)
    try:
        cluster.start()
        outcome = run_chaos(cluster, plan, progress=lambda line: print(line, file=sys.stderr))
    except HarnessError as exc:
        print(f"The bench could not run: {exc}", file=sys.stderr)
        return 2
    finally:
        cluster.close()
    print(report(outcome, cluster))
    if args.keep:
        print(f"\nkept in {cluster.root}")
    if args.json:
        Path(args.json).write_text(json.dumps(_json(outcome, cluster), indent=2) + "\n")
        print(f"\nwritten to {args.json}")
    return 0 if healthy(outcome) else 1


def _json(outcome: Outcome, cluster: Cluster) -> dict[str, Any]:
    return {
        "plan": asdict(outcome.plan),
        "seed": outcome.seed,
        "figures": {figure: value for figure, value, _ in rows(outcome, cluster)},
        "lost": outcome.lost,
        "stuck": outcome.stuck,
        "duplicated_side_effects": outcome.duplicated_side_effects,
        "faults": [asdict(a) for a in outcome.actions],
        "exits": [asdict(e) for e in outcome.exits],
        "healthy": healthy(outcome),
        "meta": {
            "python": platform.python_version(),
            "machine": platform.machine(),
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        },
    }


if __name__ == "__main__":
    sys.exit(main())
