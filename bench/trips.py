"""Where a W1 execution's database work comes from: round trips per execution by component.

    python -m bench.trips [--tasks 40] [--runs 3] [--database-url URL]

The engine runs in this process with the roles of `tiercel server local` except the web server,
as in `bench.core`. After two warm-up runs, every `Database.run` (one pooled connection taken,
one thread hand-off, at least one round trip) is counted under the engine function that asked
for it, while W1 (one flow of sequential Returns) runs `--runs` times. `bench.core` counts what
PostgreSQL saw; this says who asked for it, which is where a change to the engine starts.
"""

from __future__ import annotations

import argparse
import collections
import statistics
import tempfile
import time
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import trio

from bench.core import RETURN, ROLES
from engine import db as db_module
from engine.commands import create_execution, deploy_flow, wait_for_end
from engine.embedded import EmbeddedPostgres
from engine.server import run_server

_ROOT = str(Path(__file__).resolve().parents[1]) + "/"
_PLUMBING = ("engine/db.py", "engine/store.py")


def _asker() -> str:
    """The innermost engine function on the stack outside the database plumbing."""
    for frame in reversed(traceback.extract_stack()[:-3]):
        if frame.filename.startswith(_ROOT) and "/.venv/" not in frame.filename:
            where = frame.filename[len(_ROOT) :]
            if where not in _PLUMBING and not where.startswith("bench/"):
                return f"{where}:{frame.name}"
    return "(elsewhere)"


class _Counter:
    """Counts `Database.run` calls by asker while `on`."""

    def __init__(self) -> None:
        self.on = False
        self.counts: collections.Counter[str] = collections.Counter()
        self._original = db_module.Database.run

    def install(self) -> None:
        counter, original = self, self._original

        async def run(database: Any, fn: Any) -> Any:
            if counter.on:
                counter.counts[_asker()] += 1
            return await original(database, fn)

        db_module.Database.run = run  # type: ignore[method-assign]

    def remove(self) -> None:
        db_module.Database.run = self._original  # type: ignore[method-assign]


async def _measure(url: str, data_dir: Path, tasks: int, runs: int) -> dict[str, Any]:
    flow = "id: trips\nnamespace: bench.trips\ntasks:\n" + "".join(
        RETURN.format(indent="  ", id=f"t{i}") for i in range(tasks)
    )
    counter = _Counter()
    counter.install()
    try:
        async with trio.open_nursery() as nursery:
            ctx = await nursery.start(
                lambda task_status: run_server(
                    url, ROLES, task_status=task_status, data_dir=data_dir
                )
            )
            await deploy_flow(ctx.store, flow)
            for _ in range(2):
                xid = await create_execution(ctx.store, "bench.trips", "trips")
                await wait_for_end(ctx.store, ctx.notifier, xid, timeout=120)
            await trio.sleep(1.0)
            counter.on = True
            took: list[float] = []
            for _ in range(runs):
                started = time.perf_counter()
                xid = await create_execution(ctx.store, "bench.trips", "trips")
                state = await wait_for_end(ctx.store, ctx.notifier, xid, timeout=120)
                took.append(time.perf_counter() - started)
                if state.state != "SUCCESS":
                    raise SystemExit(f"execution {xid} ended {state.state}")
            await trio.sleep(1.0)  # the projections catch up: their trips count too
            counter.on = False
            nursery.cancel_scope.cancel()
    finally:
        counter.remove()
    return {
        "tasks": tasks,
        "runs": runs,
        "median_ms_per_task": statistics.median(took) * 1000 / tasks,
        "trips_per_execution": {k: v / runs for k, v in counter.counts.most_common()},
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.trips", description=__doc__)
    parser.add_argument("--tasks", type=int, default=40)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--database-url")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="tiercel-bench-trips-") as tmp:
        embedded = None
        url = args.database_url
        if not url:
            embedded = EmbeddedPostgres(Path(tmp) / "db")
            url = embedded.start()
        try:
            found = trio.run(_measure, url, Path(tmp) / "data", args.tasks, args.runs)
        finally:
            if embedded is not None:
                embedded.stop()
    trips = found["trips_per_execution"]
    print(
        f"W1, {found['tasks']} sequential Returns, {found['runs']} runs: "
        f"{found['median_ms_per_task']:.1f} ms per task (median; machine-dependent)"
    )
    print(f"Database round trips per execution: {sum(trips.values()):.1f}, by who asked:")
    for asker, n in trips.items():
        print(f"  {n:8.1f}  {asker}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
