"""PostgreSQL restarting, or cutting the LISTEN connections, under running processes: they stay
up, say so while the database is away, and carry on once it is back."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from tests.faults.harness import (
    Cluster,
    HarnessError,
    shell_effect_flow,
    side_effects,
    wait_until,
)

ROLES = ("executor", "worker", "indexer", "webserver")


def _searched_states(cluster: Cluster, ns: str) -> dict[str, str]:
    """Execution id -> state, as the executions search (the read model) shows them."""
    r = cluster.http.get("/api/v1/executions/search", params={"namespace": ns, "size": 100})
    r.raise_for_status()
    return {e["id"]: e["state"]["current"] for e in r.json()["results"]}


def _readiness(cluster: Cluster) -> httpx.Response:
    return httpx.get(f"{cluster.api}/health/readiness", timeout=10)


def _logs(cluster: Cluster) -> str:
    return "\n".join(f"--- {p.name}\n{p.log_tail(15)}" for p in cluster.processes.values())


def test_processes_ride_out_a_postgresql_restart_and_readiness_says_down_meanwhile(
    cluster_factory: Callable[..., Cluster], ns: str
) -> None:
    cluster = cluster_factory(roles=ROLES)
    effects = cluster.root / "effects.txt"
    cluster.deploy(shell_effect_flow(ns, "quick", effects, 0.1))
    before = cluster.create_execution(ns, "quick")
    cluster.wait_ended([before], timeout=60)

    cluster.stop_postgres()
    try:
        try:
            down = wait_until(
                lambda: (r := _readiness(cluster)).status_code == 503 and r, 30, "readiness DOWN"
            )
        except HarnessError:
            pytest.fail(f"readiness kept answering {_readiness(cluster).status_code} while "
                        f"PostgreSQL was stopped")  # fmt: skip
        assert down.json()["status"] == "DOWN"
        time.sleep(3)  # long enough for every consumer to hit the outage and back off
        dead = [p.name for p in cluster.processes.values() if not p.alive]
        assert not dead, f"exited while PostgreSQL was down: {dead}\n{_logs(cluster)}"
    finally:
        cluster.start_postgres()

    try:
        wait_until(lambda: _readiness(cluster).status_code == 200, 60, "readiness UP")
    except HarnessError:
        pytest.fail(f"readiness still {_readiness(cluster).text} a minute after PostgreSQL "
                    f"came back\n{_logs(cluster)}")  # fmt: skip
    after = cluster.create_execution(ns, "quick")
    assert cluster.wait_ended([after], timeout=60) == {after: "SUCCESS"}
    wanted = {before: "SUCCESS", after: "SUCCESS"}
    try:
        wait_until(lambda: _searched_states(cluster, ns) == wanted, 30, "the read model")
    except HarnessError:
        pytest.fail(f"the search shows {_searched_states(cluster, ns)}, not {wanted}")
    ran = side_effects(effects)
    assert ran == {before: 1, after: 1}, cluster.attempt_history([before, after])
    assert cluster.exits == [], "\n".join(map(str, cluster.exits))


def test_dropped_listen_connections_are_opened_again_and_executions_still_run(
    cluster_factory: Callable[..., Cluster], ns: str
) -> None:
    cluster = cluster_factory(roles=ROLES)
    cluster.deploy(shell_effect_flow(ns, "quick", cluster.root / "effects.txt", 0.1))
    old = _listen_pids(cluster)

    assert cluster.drop_listen_connections() >= len(ROLES)

    def everyone_listens_again() -> bool:
        now = _listen_pids(cluster)
        return all(now.get(p.app_name, set()) - old.get(p.app_name, set()) for p in _procs(cluster))

    try:
        wait_until(everyone_listens_again, 30, "every process to LISTEN again")
    except HarnessError:
        missing = [p.name for p in _procs(cluster) if p.app_name not in _listen_pids(cluster)]
        pytest.fail(f"not listening 30s after the drop: {missing}\n{_logs(cluster)}")
    xid = cluster.create_execution(ns, "quick")
    assert cluster.wait_ended([xid], timeout=60) == {xid: "SUCCESS"}
    wait_until(lambda: _searched_states(cluster, ns) == {xid: "SUCCESS"}, 30, "the read model")
    assert cluster.exits == [], "\n".join(map(str, cluster.exits))


def _procs(cluster: Cluster) -> list[Any]:
    return list(cluster.processes.values())


def _listen_pids(cluster: Cluster) -> dict[str, set[int]]:
    pids: dict[str, set[int]] = {}
    for name, pid in cluster.query(
        "SELECT application_name, pid FROM pg_stat_activity WHERE query ILIKE 'LISTEN%%'"
    ):
        pids.setdefault(name, set()).add(pid)
    return pids
