"""Timers across a restart of every process (kill -9): a Sleep, a Pause with `delay` or with
`timeout`, a retry back-off and a task's `timeout` each end when they were due, counted from when they began as
recorded, not from the restart, and never early. A task whose worker dies has its attempt run
again within the time left of its timeout, not a fresh one."""

from __future__ import annotations

import datetime as dt
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.faults.harness import TIERCEL, Cluster, wait_until

ROLES = ("executor", "worker", "webserver")
WAIT = 8.0
"""How long each timer waits. The processes are killed 2 s into it and started again at 4 s:
a timer that started over after the restart would end at about 12 s, one that fired at once
at about 4 s."""
SLACK = 3.0
"""How late a timer may end: the restarted processes catch up with the log meanwhile."""
EARLY = 0.002
"""Dates are shown to the millisecond: two of them truncated may be this much closer."""


def _at(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00"))


def _dates(state: dict[str, Any]) -> dict[str, dt.datetime]:
    """The first time each state was entered."""
    out: dict[str, dt.datetime] = {}
    for h in state["histories"]:
        out.setdefault(h["state"], _at(h["date"]))
    return out


def _run(execution: dict[str, Any], task_id: str) -> dict[str, Any]:
    [run] = [r for r in execution["taskRunList"] if r["taskId"] == task_id]
    return run


def _verify(cluster: Cluster) -> None:
    """`tiercel sys verify` over everything the cluster recorded: the timers, the timeouts and
    the attempts run again replay to the same decisions."""
    result = subprocess.run(
        [*TIERCEL, "sys", "verify", "--database-url", cluster.url],
        capture_output=True,
        text=True,
        timeout=120,
        env={"TIERCEL_STORAGE_DIR": str(cluster.root / "storage"), "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]


def _logs(cluster: Cluster) -> str:
    return "\n".join(
        f"--- {p.name}\n{p.log_tail(20)}" for p in cluster.processes.values() if p.log_path
    )


def _restart_everything(cluster: Cluster, down_at: float, up_at: float, since: float) -> None:
    """kill -9 every process `down_at` seconds after `since` (monotonic), start them all again
    at `up_at`, and wait until they are up."""
    time.sleep(max(since + down_at - time.monotonic(), 0))
    for name in cluster.names():
        cluster.kill(name, restart=False)
    time.sleep(max(since + up_at - time.monotonic(), 0))
    for name in cluster.names():
        cluster.start_process(name, wait=False)
    for name in cluster.names():
        cluster.wait_started(name)


def _flows(ns: str, marker: Path) -> list[str]:
    seconds = f"PT{WAIT:g}S"
    sleep = f"""\
id: sleeper
namespace: {ns}
tasks:
  - id: nap
    type: io.kestra.plugin.core.flow.Sleep
    duration: {seconds}
"""
    pause = f"""\
id: pauser
namespace: {ns}
tasks:
  - id: hold
    type: io.kestra.plugin.core.flow.Pause
    delay: {seconds}
  - id: after
    type: io.kestra.plugin.core.log.Log
    message: resumed
"""
    waiter = f"""\
id: waiter
namespace: {ns}
tasks:
  - id: wait
    type: io.kestra.plugin.core.flow.Pause
    timeout: {seconds}
"""
    # The first attempt fails (and leaves the marker), the second succeeds.
    retry = f"""\
id: retrier
namespace: {ns}
tasks:
  - id: flaky
    type: io.kestra.plugin.scripts.shell.Commands
    commands:
      - if [ -f {marker} ]; then exit 0; fi; touch {marker}; exit 1
    retry:
      type: constant
      interval: {seconds}
      maxAttempt: 2
"""
    return [sleep, pause, waiter, retry, _hanging(ns, "hanger")]


def _hanging(ns: str, flow_id: str) -> str:
    """A task that would run for a minute, with a timeout of `WAIT`."""
    return f"""\
id: {flow_id}
namespace: {ns}
tasks:
  - id: hang
    type: io.kestra.plugin.scripts.shell.Commands
    timeout: PT{WAIT:g}S
    commands:
      - sleep 60
"""


def _failed_by(cluster: Cluster, execution_id: str) -> list[tuple[int, str]]:
    """(attempt, who) of each attempt's failure."""
    return [
        (e.attempt, e.actor.split(":")[0])
        for e in cluster.attempt_events(execution_id)
        if e.type == "AttemptFailed"
    ]


def _timed_out_after(execution: dict[str, Any]) -> float:
    """Seconds from the claim of the hanging task's first attempt to the end of its run, once
    checked that the run failed on its timeout."""
    hang = _run(execution, "hang")
    assert hang["state"]["current"] == "FAILED", hang
    assert "Timeout" in hang.get("message", ""), hang
    claimed = _dates(hang["attempts"][0]["state"])["RUNNING"]
    return (_dates(hang["state"])["FAILED"] - claimed).total_seconds()


def test_sleep_pause_delay_retry_back_off_and_timeout_end_on_time_across_a_restart_of_everything(
    cluster_factory: Callable[..., Cluster], ns: str
) -> None:
    cluster = cluster_factory(roles=ROLES)
    marker = cluster.root / "failed-once"
    for source in _flows(ns, marker):
        cluster.deploy(source)
    since = time.monotonic()
    sleeper = cluster.create_execution(ns, "sleeper")
    pauser = cluster.create_execution(ns, "pauser")
    retrier = cluster.create_execution(ns, "retrier")
    hanger = cluster.create_execution(ns, "hanger")
    waiter = cluster.create_execution(ns, "waiter")
    wait_until(marker.exists, 10, "the first attempt of the flaky task to fail")

    _restart_everything(cluster, down_at=2.0, up_at=4.0, since=since)

    everything = [sleeper, pauser, waiter, retrier, hanger]
    states = cluster.wait_ended(everything, timeout=WAIT + 30)
    assert states == {
        **dict.fromkeys([sleeper, pauser, retrier], "SUCCESS"),
        **dict.fromkeys([waiter, hanger], "FAILED"),
    }, _logs(cluster)

    nap = _dates(_run(cluster.execution(sleeper), "nap")["state"])
    slept = (nap["SUCCESS"] - nap["CREATED"]).total_seconds()
    assert WAIT - EARLY <= slept < WAIT + SLACK, f"the Sleep took {slept:.1f}s\n{_logs(cluster)}"

    hold = _dates(_run(cluster.execution(pauser), "hold")["state"])
    held = (hold["SUCCESS"] - hold["CREATED"]).total_seconds()
    assert WAIT - EARLY <= held < WAIT + SLACK, f"the Pause held {held:.1f}s\n{_logs(cluster)}"

    wait = _dates(_run(cluster.execution(waiter), "wait")["state"])
    waited = (wait["FAILED"] - wait["CREATED"]).total_seconds()
    assert WAIT - EARLY <= waited < WAIT + SLACK, f"the Pause timed out after {waited:.1f}s"

    flaky = _run(cluster.execution(retrier), "flaky")
    first, second = (_dates(a["state"]) for a in flaky["attempts"])
    assert [a["state"]["current"] for a in flaky["attempts"]] == ["FAILED", "SUCCESS"]
    backoff = (second["CREATED"] - first["FAILED"]).total_seconds()
    assert WAIT - EARLY <= backoff < WAIT + SLACK, (
        f"the retry waited {backoff:.1f}s\n{_logs(cluster)}"
    )

    # Its worker was killed too: the timeout is enforced all the same, from the recorded claim.
    ran = _timed_out_after(cluster.execution(hanger))
    assert WAIT - EARLY <= ran < WAIT + SLACK, (
        f"the task timed out after {ran:.1f}s\n{_logs(cluster)}"
    )
    # By the timers when its worker was still dead at the deadline, else by the worker running
    # it again (on the first claim's clock): either way recorded once.
    assert len(_failed_by(cluster, hanger)) == 1, cluster.attempt_history([hanger])
    assert cluster.exits == []
    _verify(cluster)


def test_a_task_whose_worker_is_killed_times_out_on_its_first_attempts_clock(
    cluster_factory: Callable[..., Cluster], ns: str
) -> None:
    cluster = cluster_factory(roles=ROLES)
    cluster.deploy(_hanging(ns, "hanger"))
    xid = cluster.create_execution(ns, "hanger")
    [worker] = cluster.names("worker")
    work = cluster.processes[worker].data_dir
    wait_until(lambda: cluster.orphans(work), 30, "the task's script to run")
    time.sleep(1.0)
    cluster.kill(worker)  # and started again at once: the attempt is run again

    assert cluster.wait_ended([xid], timeout=WAIT + 30) == {xid: "FAILED"}, _logs(cluster)
    execution = cluster.execution(xid)
    attempts = [a["state"]["current"] for a in _run(execution, "hang")["attempts"]]
    assert attempts == ["KILLED", "FAILED"], cluster.attempt_history([xid])
    # A fresh timeout for the second attempt would have ended it WAIT seconds after its start.
    ran = _timed_out_after(execution)
    assert WAIT - EARLY <= ran < WAIT + SLACK, (
        f"the task timed out after {ran:.1f}s\n{_logs(cluster)}"
    )
    # Stopped by the worker running it again (which counts from the first claim too), or
    # else by the timer a moment later: either way recorded once.
    assert [n for n, _ in _failed_by(cluster, xid)] == [2], cluster.attempt_history([xid])
    wait_until(lambda: not cluster.orphans(work), 5, "the timed-out script to be stopped")
    assert cluster.exits == []
    _verify(cluster)


def test_a_retry_after_a_timeout_gets_a_timeout_of_its_own(
    cluster_factory: Callable[..., Cluster], ns: str
) -> None:
    cluster = cluster_factory(roles=ROLES)
    cluster.deploy(
        f"""\
id: hanger
namespace: {ns}
tasks:
  - id: hang
    type: io.kestra.plugin.scripts.shell.Commands
    timeout: PT2S
    commands:
      - echo begun
      - sleep 60
    retry:
      type: constant
      interval: PT0.5S
      maxAttempt: 2
"""
    )
    xid = cluster.create_execution(ns, "hanger")
    assert cluster.wait_ended([xid], timeout=30) == {xid: "FAILED"}, _logs(cluster)
    hang = _run(cluster.execution(xid), "hang")
    assert [a["state"]["current"] for a in hang["attempts"]] == ["FAILED", "FAILED"]
    for attempt in hang["attempts"]:
        dates = _dates(attempt["state"])
        ran = (dates["FAILED"] - dates["RUNNING"]).total_seconds()
        assert 2.0 - EARLY <= ran < 2.0 + SLACK, f"an attempt ran {ran:.1f}s\n{_logs(cluster)}"
    # The worker stopped each itself, with its logs kept.
    assert _failed_by(cluster, xid) == [(1, "worker"), (2, "worker")]
    messages = [
        line["message"]
        for e in cluster.attempt_events(xid)
        if e.type == "AttemptLogged"
        for line in e.data["lines"]
    ]
    assert messages.count("begun") == 2, messages
    assert sum("Timeout" in m for m in messages) == 2, messages
    # Each attempt ended before its timer: the timers are over without firing, not left
    # pending until their time.
    over = cluster.query(
        "SELECT count(*) FROM events WHERE stream_id = %s AND type = 'TimerFired'"
        " AND (data->>'attemptEnded')::boolean",
        (f"exec:{xid}",),
    )
    assert over == [(2,)]
    wait_until(
        lambda: not cluster.query("SELECT 1 FROM engine_timers WHERE execution_id = %s", (xid,)),
        10,
        "the timers of the ended attempts to be dropped",
    )
    _verify(cluster)
