"""Two `tiercel server scheduler` processes on one database, one of them killed (kill -9) and
started again mid-run: each tick of a per-second schedule fires exactly once, with no gap."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable

from tests.faults.harness import Cluster, wait_until

ROLES = ("executor", "worker", "scheduler", "scheduler", "webserver")


def _flow(ns: str) -> str:
    return f"""id: every_second
namespace: {ns}
tasks:
  - id: log
    type: io.kestra.plugin.core.log.Log
    message: "{{{{ trigger.date }}}}"
triggers:
  - id: tick
    type: io.kestra.plugin.core.trigger.Schedule
    withSeconds: true
    cron: "* * * * * *"
"""


def _ticks(cluster: Cluster, ns: str) -> list[dt.datetime]:
    rows = cluster.query(
        "SELECT data->>'date' FROM events WHERE stream_id = %s AND type = 'TriggerFired'"
        " ORDER BY version",
        (f"trigger:{ns}/every_second/tick",),
    )
    return [dt.datetime.fromisoformat(r[0]) for r in rows]


def test_two_scheduler_processes_fire_each_tick_once_even_when_one_is_killed(
    cluster_factory: Callable[..., Cluster], ns: str
) -> None:
    cluster = cluster_factory(roles=ROLES)
    cluster.deploy(_flow(ns))
    wait_until(lambda: len(_ticks(cluster, ns)) >= 3, 60, "the schedule to fire")
    time.sleep(4)
    cluster.kill("scheduler-1", wait=True)  # and started again at once
    time.sleep(6)
    cluster.http.delete(f"/api/v1/flows/{ns}/every_second")
    time.sleep(2)
    ticks = _ticks(cluster, ns)
    assert len(ticks) >= 10
    assert len(set(ticks)) == len(ticks)
    gaps = [
        (a, b) for a, b in zip(ticks, ticks[1:], strict=False) if b - a != dt.timedelta(seconds=1)
    ]
    assert not gaps, gaps
    [(executions,)] = cluster.query(
        "SELECT count(*) FROM events WHERE type = 'ExecutionCreated' AND data->>'namespace' = %s",
        (ns,),
    )
    assert executions == len(ticks)
    assert cluster.exits == []
