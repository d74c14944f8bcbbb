"""A flow's concurrency limit holds when executors race on its ledger and are killed (kill -9)
mid-burst: never more than `limit` executions run at once, every one ends, and no slot stays
taken by an execution that ended."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable

from tests.faults.harness import TERMINAL_STATES, Cluster

ROLES = ("executor", "executor", "worker", "webserver")
LIMIT = 2
BURST = 120


def _flow(ns: str) -> str:
    return f"""\
id: limited
namespace: {ns}
concurrency:
  limit: {LIMIT}
tasks:
  - id: one
    type: io.kestra.plugin.core.log.Log
    message: one
  - id: two
    type: io.kestra.plugin.core.log.Log
    message: two
  - id: three
    type: io.kestra.plugin.core.log.Log
    message: three
"""


def test_limit_holds_and_no_slot_leaks_when_racing_executors_are_killed_mid_burst(
    cluster_factory: Callable[..., Cluster], ns: str
) -> None:
    cluster = cluster_factory(roles=ROLES)
    cluster.deploy(_flow(ns))
    executors = cluster.names("executor")
    stop = threading.Event()

    def kill_executors() -> None:
        # One executor then the other, killed and started again while the burst runs.
        turn = 0
        while not stop.wait(0.8):
            cluster.kill(executors[turn % len(executors)])
            turn += 1

    killer = threading.Thread(target=kill_executors)
    killer.start()
    try:
        ids = [cluster.create_execution(ns, "limited") for _ in range(BURST)]
        states = cluster.wait_ended(ids, timeout=180)
    finally:
        stop.set()
        killer.join()
    kills = sum(cluster.processes[e].incarnation - 1 for e in executors)
    assert kills >= 3  # the burst ran through several kills
    assert set(states.values()) == {"SUCCESS"}, states

    rows = cluster.query(
        "SELECT type, data FROM events WHERE stream_id = ANY(%s)"
        " AND type IN ('ExecutionCreated', 'ExecutionStateChanged') ORDER BY seq",
        ([f"exec:{x}" for x in ids],),
    )
    running: set[str] = set()
    most = 0
    created: list[str] = []
    started: list[str] = []
    for kind, data in rows:
        data = data if isinstance(data, dict) else json.loads(data)
        xid, state = data["executionId"], data.get("state")
        if kind == "ExecutionCreated":
            created.append(xid)
        elif state in TERMINAL_STATES:
            running.discard(xid)
        elif state == "RUNNING":
            running.add(xid)
            started.append(xid)
        most = max(most, len(running))
    assert most <= LIMIT
    assert started == created  # started in the order they arrived

    ledger = cluster.query(
        "SELECT type, count(*) FROM events WHERE stream_id = %s GROUP BY type",
        (f"concurrency:{ns}/limited",),
    )
    counts = dict(ledger)
    assert counts.get("ConcurrencySlotTaken") == BURST
    assert counts.get("ConcurrencySlotReleased") == BURST
