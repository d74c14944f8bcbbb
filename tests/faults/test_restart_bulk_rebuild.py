"""PostgreSQL restarted while a bulk job works and while a projection is rebuilt: neither loses,
strands nor doubles work, and the rest of the system goes on.

Real processes (`tiercel server <role>`) on a PostgreSQL of their own, stopped (fast shutdown:
every connection cut) and started again on the same data dir in the middle of the work.
"""

from __future__ import annotations

import subprocess
import threading
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest
import trio

from engine import events as ev
from tests.faults.harness import TIERCEL, Cluster, HarnessError, wait_until
from tests.integration.test_verify import _verify as verify_process

ITEMS = 60
"""Failed executions a bulk job replays."""
RATE = 8.0
"""Items per second the job is worked at: 60 items take about 7.5 s, so the restart lands in
the middle of the job."""


def _failing(namespace: str) -> str:
    return (
        f"id: broken\nnamespace: {namespace}\ntasks:\n"
        "  - id: boom\n    type: io.kestra.plugin.core.execution.Fail\n    errorMessage: boom\n"
    )


def _quick(namespace: str) -> str:
    return (
        f"id: quick\nnamespace: {namespace}\ntasks:\n"
        "  - id: say\n    type: io.kestra.plugin.core.log.Log\n    message: hi\n"
    )


def _logs(cluster: Cluster) -> str:
    return "\n".join(f"--- {p.name}\n{p.log_tail(25)}" for p in cluster.processes.values())


def _total(cluster: Cluster, params: dict[str, Any]) -> int:
    r = cluster.http.get("/api/v1/executions/search", params={**params, "size": 1})
    r.raise_for_status()
    return int(r.json()["total"])


class _Starter(threading.Thread):
    """Starts an execution of `namespace.quick` over the API every `every` seconds until
    stopped, and remembers those the API accepted, with when (the outage refuses some)."""

    def __init__(self, cluster: Cluster, namespace: str, every: float = 0.4) -> None:
        super().__init__(daemon=True)
        self.url, self.auth = cluster.api, cluster.auth
        self.namespace, self.every = namespace, every
        self.accepted: list[tuple[float, str]] = []
        self.refused = 0
        self.halt = threading.Event()

    def run(self) -> None:
        with httpx.Client(base_url=self.url, auth=self.auth, timeout=10) as http:
            while not self.halt.wait(self.every):
                try:
                    r = http.post(f"/api/v1/executions/{self.namespace}/quick", json={})
                except httpx.HTTPError:
                    self.refused += 1
                    continue
                if r.status_code == 200:
                    self.accepted.append((time.monotonic(), str(r.json()["id"])))
                else:
                    self.refused += 1


def _replays_per_origin(cluster: Cluster, origins: list[str]) -> dict[str, int]:
    rows = cluster.query(
        "SELECT stream_id, count(*) FROM events WHERE type = 'ExecutionReplayed'"
        " AND stream_id = ANY(%s) GROUP BY stream_id",
        ([ev.execution_stream(o) for o in origins],),
    )
    found = {stream[len("exec:") :]: int(n) for stream, n in rows}
    return {o: found.get(o, 0) for o in origins}


def test_bulk_replay_rides_out_a_postgresql_restart_and_replays_each_execution_once(
    cluster_factory: Callable[..., Cluster], ns: str
) -> None:
    cluster = cluster_factory(roles=("executor", "worker", "indexer", "webserver"))
    cluster.deploy(_failing(ns))
    cluster.deploy(_quick(ns))
    origins = [cluster.create_execution(ns, "broken") for _ in range(ITEMS)]
    assert set(cluster.wait_ended(origins, timeout=90).values()) == {"FAILED"}
    wait_until(
        lambda: _total(cluster, {"namespace": ns, "state": "FAILED"}) == ITEMS, 30, "the search"
    )

    submitted = cluster.http.post(
        "/api/v1/executions/bulk/replay",
        json={"query": f"state:FAILED namespace:{ns}", "ratePerSecond": RATE,
              "requestId": f"replay-{ns}"},
    )  # fmt: skip
    assert submitted.status_code == 202, submitted.text
    job_id = submitted.json()["id"]
    assert submitted.json()["total"] == ITEMS

    def job() -> dict[str, Any]:
        r = cluster.http.get(f"/api/v1/bulk/{job_id}")
        r.raise_for_status()
        return dict(r.json())

    def replayed() -> int:
        return sum(_replays_per_origin(cluster, origins).values())

    starter = _Starter(cluster, ns)
    starter.start()
    try:
        # Some items done, most not: PostgreSQL goes away in the middle of the job.
        wait_until(lambda: replayed() >= ITEMS // 4, 60, f"{ITEMS // 4} items replayed")
        before = replayed()
        assert before < ITEMS, "the job ended before PostgreSQL could be restarted"
        stopped_at = time.monotonic()
        cluster.restart_postgres(down_for=2.0)
        back_at = time.monotonic()
        try:
            ended = wait_until(lambda: (j := job())["state"] != "RUNNING" and j, 90, "the job")
        except HarnessError:
            pytest.fail(f"the job is still {job()} 90 s after PostgreSQL came back\n"
                        f"{_logs(cluster)}")  # fmt: skip
        # A few more executions once the job is over, then no more.
        time.sleep(1.0)
    finally:
        starter.halt.set()
        starter.join(timeout=15)

    # The job ended by itself, every item worked once, its report complete.
    assert ended["state"] == "SUCCESS", ended
    assert ended["done"] == ITEMS and ended["failed"] == 0 and ended["succeeded"] == ITEMS, ended
    per_origin = _replays_per_origin(cluster, origins)
    doubled = {o: n for o, n in per_origin.items() if n != 1}
    assert not doubled, f"replayed other than once: {doubled} ({before} before the restart)"
    # The job's report: each item replayed, into an execution that replays it.
    items = {i["id"]: i for i in ended["items"]}
    assert set(items) == set(origins)
    assert {i["outcome"] for i in items.values()} == {"SUCCESS"}
    new_ids = [items[o]["result"] for o in origins]
    created = dict(
        cluster.query(
            "SELECT data->>'executionId', data->>'replayOf' FROM events"
            " WHERE type = 'ExecutionCreated' AND stream_id = ANY(%s)",
            ([ev.execution_stream(x) for x in new_ids],),
        )
    )
    assert created == {items[o]["result"]: o for o in origins}
    # The replays themselves run to their end (their Fail task fails them again).
    assert set(cluster.wait_ended(new_ids, timeout=90).values()) == {"FAILED"}

    # Executions started around the restart, during the job, ran to their end too.
    accepted = [x for _, x in starter.accepted]
    after = [x for at, x in starter.accepted if at > back_at]
    assert after, f"no execution was accepted after the restart ({starter.refused} refused)"
    assert any(at < stopped_at for at, _ in starter.accepted)
    states = cluster.wait_ended(accepted, timeout=90)
    assert set(states.values()) == {"SUCCESS"}, states
    wait_until(
        lambda: _total(cluster, {"namespace": ns, "state": "FAILED"}) == 2 * ITEMS,
        30,
        "the replays in the search",
    )
    assert cluster.exits == [], "\n".join(map(str, cluster.exits))

    # Every history, the job's included, refolds.
    result = verify_process(cluster.url)
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-2000:]
    assert "every history refolds" in result.stdout


# --- a projection rebuild --------------------------------------------------------------------

SEEDED = 12000
"""Executions seeded through the batched append path: enough events that a rebuild of the
executions read model takes seconds."""
EXECUTION_TABLES = ("executions", "execution_stats", "execution_durations")


def _digest(cluster: Cluster, table: str) -> tuple[int, str]:
    """Rows and a digest of every column of every row of `table`."""
    [(n, digest)] = cluster.query(
        f"SELECT count(*), md5(coalesce(string_agg(t::text, '|' ORDER BY t::text), ''))"
        f" FROM {table} t"
    )
    return int(n), str(digest)


def _entry(http: httpx.Client, name: str) -> dict[str, Any]:
    r = http.get("/api/v1/projections")
    r.raise_for_status()
    found: dict[str, Any] = next(e for e in r.json() if e["name"] == name)
    return found


def _leftovers(cluster: Cluster) -> list[Any]:
    return [
        *cluster.query("SELECT name FROM checkpoints WHERE name LIKE 'rebuild:%%'"),
        *cluster.query("SELECT nspname FROM pg_namespace WHERE nspname = 'tiercel_rebuild'"),
    ]


class _Searcher(threading.Thread):
    """Searches `namespace` over the API until stopped, remembering each answer's time, status
    and total."""

    def __init__(self, cluster: Cluster, namespace: str) -> None:
        super().__init__(daemon=True)
        self.url, self.auth, self.namespace = cluster.api, cluster.auth, namespace
        self.answers: list[tuple[float, int, int]] = []
        self.halt = threading.Event()

    def run(self) -> None:
        with httpx.Client(base_url=self.url, auth=self.auth, timeout=10) as http:
            while not self.halt.wait(0.05):
                try:
                    r = http.get("/api/v1/executions/search", params={"namespace": self.namespace})
                    total = int(r.json()["total"]) if r.status_code == 200 else -1
                    self.answers.append((time.monotonic(), r.status_code, total))
                except (httpx.HTTPError, ValueError, KeyError):
                    self.answers.append((time.monotonic(), 0, -1))


def test_projection_rebuild_cut_by_a_postgresql_restart_ends_recorded_and_runs_again_to_equal_rows(
    cluster_factory: Callable[..., Cluster], ns: str
) -> None:
    from bench.search import seed

    # No executor: the seeded executions left RUNNING stay as they are, and executions created
    # over the API stay CREATED; the log changes only where the test says.
    cluster = cluster_factory(roles=("indexer", "webserver"))
    http = cluster.http
    cluster.deploy(_quick(ns))
    mine = [cluster.create_execution(ns, "quick") for _ in range(3)]
    seeded = trio.run(seed, cluster.url, SEEDED, 1)
    assert seeded["events"] > 8 * SEEDED

    def caught_up() -> bool:
        entry = _entry(http, "executions")
        return bool(entry["lag"] == 0 and _total(cluster, {"namespace": ns}) == len(mine))

    wait_until(caught_up, 120, "the executions read model to catch up on the seeded log")

    searcher = _Searcher(cluster, ns)
    searcher.start()
    try:
        started = http.post("/api/v1/projections/executions/rebuild")
        assert started.status_code == 202, started.text

        def midway() -> bool:
            entry = _entry(http, "executions")
            last = entry.get("lastRebuild") or {}
            if last.get("outcome") not in (None, "RUNNING"):
                raise HarnessError(f"the rebuild ended before the restart: {last}")
            return bool(entry.get("rebuild", {}).get("position", 0) > 0)

        wait_until(midway, 60, "the rebuild to be under way", interval=0.05)
        stopped_at = time.monotonic()
        cluster.restart_postgres(down_for=2.0)
        back_at = time.monotonic()
        # One more execution once PostgreSQL is back: the live read model shows it.
        mine.append(
            wait_until(lambda: cluster.create_execution(ns, "quick"), 30, "a new execution")
        )

        def ended() -> dict[str, Any]:
            entry = _entry(http, "executions")
            last = entry.get("lastRebuild") or {}
            return entry if last.get("outcome") not in (None, "RUNNING") else {}

        try:
            first = wait_until(ended, 60, "the interrupted rebuild's outcome")
        except HarnessError:
            pytest.fail(f"the rebuild still says {_entry(http, 'executions')} a minute after "
                        f"PostgreSQL came back\n{_logs(cluster)}")  # fmt: skip
        outcome = first["lastRebuild"]
        assert outcome["outcome"] in ("FAILED", "SUCCESS"), outcome
        if outcome["outcome"] == "FAILED":
            assert "live tables still serve" in outcome["message"], outcome
        assert "rebuild" not in first, first  # nothing left saying one is under way
        assert not _leftovers(cluster), _leftovers(cluster)

        # Started again, it completes.
        again = http.post("/api/v1/projections/executions/rebuild")
        assert again.status_code == 202, again.text
        second = wait_until(ended, 90, "the second rebuild")
        assert second["lastRebuild"]["outcome"] == "SUCCESS", second
        wait_until(caught_up, 30, "the live read model after the rebuild")
        # Searches go on answering after it all.
        time.sleep(max(0.0, back_at + 6.0 - time.monotonic()))
    finally:
        searcher.halt.set()
        searcher.join(timeout=15)

    # Searches answered throughout, but for the restart itself (and the moment the server's
    # connections take to come back), and never lost an execution.
    failed = [(at, code) for at, code, _ in searcher.answers if code != 200]
    outside = [(round(at - stopped_at, 2), code) for at, code in failed
               if not stopped_at - 0.5 <= at <= back_at + 5.0]  # fmt: skip
    assert not outside, f"searches failed outside the restart: {outside}"
    assert any(at > back_at + 5.0 for at, _, _ in searcher.answers)
    totals = [t for at, code, t in searcher.answers if code == 200]
    assert totals and totals == sorted(totals) and totals[0] >= 3, totals[:10]

    # `tiercel sys reindex` cut by a restart as well: it says so in one line, not a traceback,
    # and leaves nothing behind.
    rebuilt = {t: _digest(cluster, t) for t in EXECUTION_TABLES}
    assert rebuilt["executions"][0] == SEEDED + len(mine)
    cli = _sys_reindex(cluster)
    try:

        def cli_midway() -> bool:
            if cli.poll() is not None:
                raise HarnessError(f"sys reindex ended before the restart: {cli.communicate()}")
            return bool(_entry(http, "executions").get("rebuild", {}).get("position", 0) > 0)

        wait_until(cli_midway, 60, "sys reindex to be under way", interval=0.05)
        cluster.restart_postgres(down_for=2.0)
        out, err = cli.communicate(timeout=60)
    finally:
        if cli.poll() is None:
            cli.kill()
            cli.communicate()
    assert cli.returncode == 1, (out, err)
    assert "The database went away during the rebuild" in err and "Traceback" not in err, err
    assert not _leftovers(cluster), _leftovers(cluster)
    wait_until(lambda: "rebuild" not in _entry(http, "executions"), 30, "no rebuild under way")

    # What the API's rebuild swapped in is what a fresh rebuild makes, and nothing is left.
    fresh = _sys_reindex(cluster)
    out, err = fresh.communicate(timeout=300)
    assert fresh.returncode == 0, out[-3000:] + err[-3000:]
    assert {t: _digest(cluster, t) for t in EXECUTION_TABLES} == rebuilt
    assert not _leftovers(cluster), _leftovers(cluster)
    assert cluster.exits == [], "\n".join(map(str, cluster.exits))


def _sys_reindex(cluster: Cluster) -> subprocess.Popen[str]:
    """`tiercel sys reindex --projection executions` on the cluster's database, as its owner,
    started."""
    return subprocess.Popen(
        [*TIERCEL, "sys", "reindex", "--projection", "executions", "--database-url", cluster.url],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
