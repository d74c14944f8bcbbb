"""A worker process that dies (kill -9) or is stopped (SIGTERM) while its tasks run: every
task still ends, and what a user sees says what happened."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tests.faults.harness import (
    Cluster,
    HarnessError,
    shell_effect_flow,
    side_effects,
    wait_until,
)

ROLES = ("executor", "worker", "webserver")


def _logs(cluster: Cluster) -> str:
    return "\n".join(
        f"--- {p.name}\n{p.log_tail(15)}" for p in cluster.processes.values() if p.log_path
    )


def test_worker_killed_mid_task_has_the_attempt_retried_and_the_execution_succeeds(
    cluster_factory: Callable[..., Cluster], ns: str
) -> None:
    cluster = cluster_factory(roles=ROLES)
    effects, delay = cluster.root / "effects.txt", cluster.root / "delay"
    delay.write_text("60")
    cluster.deploy(shell_effect_flow(ns, "slow", effects, delay))
    xid = cluster.create_execution(ns, "slow")
    wait_until(lambda: side_effects(effects).get(xid), 60, "the task to run its side effect")

    delay.write_text("0.1")
    [worker] = cluster.names("worker")
    cluster.kill(worker)  # and started again at once, as a service manager would

    states = cluster.wait_ended([xid], timeout=cluster.heartbeat_timeout + 60)
    assert states[xid] == "SUCCESS", _logs(cluster)
    assert cluster.execution(xid)["state"]["current"] == "SUCCESS"
    events = cluster.attempt_events(xid)
    abandoned = [e for e in events if e.type == "AttemptAbandoned"]
    succeeded = [e for e in events if e.type == "AttemptSucceeded"]
    assert [e.attempt for e in abandoned] == [1], [(e.stream_id, e.type) for e in events]
    assert [e.attempt for e in succeeded] == [2]
    # At-least-once work: the first attempt's side effect had run, so it ran twice.
    assert side_effects(effects)[xid] == 2, cluster.attempt_history([xid])
    assert cluster.exits == []


def test_worker_stopped_with_sigterm_hands_back_its_ten_running_tasks_and_all_end_on_restart(
    cluster_factory: Callable[..., Cluster], ns: str
) -> None:
    cluster = cluster_factory(roles=ROLES, worker_slots=16)
    effects, delay = cluster.root / "effects.txt", cluster.root / "delay"
    delay.write_text("60")
    cluster.deploy(shell_effect_flow(ns, "slow", effects, delay))
    ids = [cluster.create_execution(ns, "slow") for _ in range(10)]
    wait_until(lambda: len(side_effects(effects)) == 10, 60, "the 10 tasks to run")

    [worker] = cluster.names("worker")
    work: Path = cluster.processes[worker].data_dir
    stop = cluster.terminate(worker, restart=False, timeout=30)
    assert not stop.forced, f"the worker was still running 30s after SIGTERM\n{_logs(cluster)}"
    assert stop.returncode == 0, _logs(cluster)
    try:
        wait_until(lambda: not cluster.orphans(work), 5, "the worker's scripts to end")
    except HarnessError:
        pytest.fail(f"scripts still run after the worker stopped: pids {cluster.orphans(work)}")
    for xid in ids:
        abandoned = [e for e in cluster.attempt_events(xid) if e.type == "AttemptAbandoned"]
        # Handed back by the worker as it stopped, not found later by the watchdog.
        assert [(e.attempt, e.actor.split(":")[0]) for e in abandoned] == [(1, "worker")], xid

    delay.write_text("0.1")
    cluster.start_process(worker)
    states = cluster.wait_ended(ids, timeout=60)
    assert set(states.values()) == {"SUCCESS"}, states
    assert side_effects(effects) == dict.fromkeys(ids, 2), cluster.attempt_history(ids)
    assert cluster.exits == []


def test_scripts_of_a_killed_worker_are_stopped_once_it_is_back(
    cluster_factory: Callable[..., Cluster], ns: str
) -> None:
    # A script runs in a session of its own, so kill -9 of its worker does not reach it. Once
    # the attempt is abandoned and run again, the old script must not go on beside its retry.
    cluster = cluster_factory(roles=ROLES)
    effects, delay = cluster.root / "effects.txt", cluster.root / "delay"
    delay.write_text("60")
    cluster.deploy(shell_effect_flow(ns, "slow", effects, delay))
    xid = cluster.create_execution(ns, "slow")
    wait_until(lambda: side_effects(effects).get(xid), 60, "the task to run its side effect")
    [worker] = cluster.names("worker")
    work = cluster.processes[worker].data_dir
    scripts = set(cluster.orphans(work))
    assert scripts, "the running task's script was not found in the worker's directory"

    delay.write_text("0.1")
    cluster.kill(worker, wait=True)
    patience = cluster.heartbeat_timeout + 10
    try:
        wait_until(lambda: not scripts & set(cluster.orphans(work)), patience, "the old script")
    except HarnessError:
        still = sorted(scripts & set(cluster.orphans(work)))
        pytest.fail(
            f"the killed worker's script (pids {still}) still runs {patience:.0f}s after the "
            f"worker came back, beside the retry of its attempt:\n"
            f"{cluster.attempt_history([xid])}"
        )
    assert cluster.wait_ended([xid], timeout=60) == {xid: "SUCCESS"}
