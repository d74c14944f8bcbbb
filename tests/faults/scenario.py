"""The chaos scenario: executions run across separate processes while they are killed, stopped,
cut off from PostgreSQL and from their LISTEN connections; then what a user must find.

`run_chaos(cluster, plan)` deploys a flow whose shell task appends its execution id to a file,
starts `plan.executions` executions through the REST API at an even pace over `plan.seconds`,
and meanwhile, at evenly spaced moments in a random (seeded) order:

- kills a process with SIGKILL `plan.kills` times and starts it again right away (the targets
  go round every process in a random order before any is hit twice);
- sends SIGTERM to a worker `plan.sigterms` times, waits for it to exit, starts it again;
- restarts PostgreSQL `plan.pg_restarts` times (same data dir, same URL; Tiercel's processes
  are left alone and must ride it out);
- terminates every LISTEN connection `plan.listen_drops` times.

It then waits, up to `plan.drain_timeout` seconds, for the system to settle (every execution
terminal, every projection at the head of its events, the read model agreeing with the log,
every process listening again), stops every process with SIGTERM, and returns an `Outcome`:
a snapshot of the event log, the read models, the checkpoints and the side-effect file, with
each property a user relies on as a list of the executions (or components) that break it.
`tiercel sys verify` is run on the database as well when this version has it.
"""

from __future__ import annotations

import contextlib
import random
import subprocess
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

from tests.faults.harness import (
    TERMINAL_STATES,
    TIERCEL,
    Cluster,
    Exit,
    HarnessError,
    Stop,
    shell_effect_flow,
    side_effects,
)

FLOW_ID = "effect"


@dataclass
class ChaosPlan:
    """What to run and which faults to inflict, over how long."""

    executions: int = 40
    kills: int = 4
    sigterms: int = 1
    pg_restarts: int = 1
    listen_drops: int = 1
    seconds: float = 20.0
    """Submissions and faults are spread over this many seconds."""
    drain_timeout: float = 90.0
    """How long the system may take to settle once the last fault is over."""
    task_sleep: float = 0.3
    pg_down: float = 2.0
    """How long PostgreSQL stays down at each restart."""
    seed: int | None = None


@dataclass
class Action:
    """One fault, as it happened."""

    at: float
    """Seconds since the scenario started."""
    kind: str
    target: str
    detail: str = ""

    def __str__(self) -> str:
        detail = f" ({self.detail})" if self.detail else ""
        return f"{self.at:6.1f}s  {self.kind:<12} {self.target}{detail}"


@dataclass
class Verify:
    """The result of `tiercel sys verify`, or why it was not run."""

    available: bool
    returncode: int | None = None
    output: str = ""

    @property
    def passed(self) -> bool:
        """True when it ran and exited 0."""
        return self.available and self.returncode == 0


@dataclass
class Outcome:
    """What the scenario did and what it left in the database, the read models and the file."""

    plan: ChaosPlan
    seed: int
    namespace: str
    acknowledged: list[str]
    """Execution ids the API answered 200 for."""
    refused_submissions: int
    """Submissions answered with an error (or no answer) and retried."""
    created: list[str] = field(default_factory=list)
    """Execution ids with an `ExecutionCreated` in the namespace (acknowledged or not)."""
    terminal_events: dict[str, int] = field(default_factory=dict)
    final_states: dict[str, str] = field(default_factory=dict)
    """Each execution's latest state in the event log."""
    read_model: dict[str, str] = field(default_factory=dict)
    """Each execution's state in the `executions` read model."""
    checkpoints: dict[str, tuple[int | None, int]] = field(default_factory=dict)
    """Projection checkpoint name -> (its position or None, the head of the events it reads)."""
    effects: dict[str, int] = field(default_factory=dict)
    """How many times each execution's side effect ran (lines in the file)."""
    claims: dict[str, int] = field(default_factory=dict)
    """How many attempts of each execution a worker claimed."""
    abandoned: dict[str, int] = field(default_factory=dict)
    """How many attempts of each execution were abandoned (by a stopping worker or the
    watchdog) and so ran again."""
    actions: list[Action] = field(default_factory=list)
    exits: list[Exit] = field(default_factory=list)
    sigterm_stops: list[Stop] = field(default_factory=list)
    final_stops: list[Stop] = field(default_factory=list)
    not_listening: list[str] = field(default_factory=list)
    """Processes with no LISTEN connection once the system had settled."""
    calm_at: float = 0.0
    """When the last submission was acknowledged and the last fault over, in seconds since
    the scenario started; the drain is measured from there."""
    drain_seconds: float | None = None
    """From `calm_at` to every execution terminal (None: never)."""
    settle_seconds: float | None = None
    """From the same moment to every check of `settled` passing (None: never)."""
    verify: Verify = field(default_factory=lambda: Verify(False, None, "not run"))

    # --- the properties, each as what breaks it ---------------------------------------------

    @property
    def lost(self) -> list[str]:
        """Acknowledged by the API, yet absent from the event log."""
        created = set(self.created)
        return [x for x in self.acknowledged if x not in created]

    @property
    def unrequested(self) -> list[str]:
        """Recorded, yet never acknowledged: a retried submission started a second one."""
        acknowledged = set(self.acknowledged)
        return [x for x in self.created if x not in acknowledged]

    @property
    def stuck(self) -> list[str]:
        """Recorded, but with no terminal state."""
        return [x for x in self.created if self.terminal_events.get(x, 0) == 0]

    @property
    def ended_more_than_once(self) -> dict[str, int]:
        """Executions with more than one terminal `ExecutionStateChanged`."""
        return {x: n for x, n in self.terminal_events.items() if n > 1}

    @property
    def not_successful(self) -> dict[str, str]:
        """Terminal executions that did not end in SUCCESS (the flow cannot fail by itself)."""
        return {
            x: s
            for x in self.created
            if (s := self.final_states.get(x, "")) in TERMINAL_STATES and s != "SUCCESS"
        }

    @property
    def read_model_disagreements(self) -> dict[str, tuple[str | None, str | None]]:
        """Execution -> (state in the log, state in the read model) where they differ."""
        return {
            x: (self.final_states.get(x), self.read_model.get(x))
            for x in self.created
            if self.final_states.get(x) != self.read_model.get(x)
        }

    @property
    def projection_lag(self) -> dict[str, tuple[int | None, int]]:
        """Projections whose checkpoint is behind the last event of the types they read."""
        return {n: (cp, head) for n, (cp, head) in self.checkpoints.items() if (cp or 0) < head}

    @property
    def duplicated_side_effects(self) -> dict[str, int]:
        """Executions whose side effect ran more than once (at-least-once work)."""
        return {x: n for x, n in self.effects.items() if n > 1}

    @property
    def missing_side_effects(self) -> list[str]:
        """Executions that ended in SUCCESS although their side effect never ran."""
        return [
            x
            for x in self.created
            if self.final_states.get(x) == "SUCCESS" and x not in self.effects
        ]

    @property
    def effects_beyond_claims(self) -> dict[str, tuple[int, int]]:
        """Execution -> (side effects, claimed attempts) where the effect ran more often than
        attempts were claimed: some attempt ran twice, or ran unclaimed."""
        return {
            x: (n, self.claims.get(x, 0))
            for x, n in self.effects.items()
            if n > self.claims.get(x, 0)
        }

    @property
    def unclean_stops(self) -> list[Stop]:
        """Processes that did not exit 0 on their own after the final SIGTERM."""
        return [s for s in self.final_stops if s.forced or s.returncode != 0]

    def count(self, kind: str) -> int:
        """How many faults of `kind` were inflicted."""
        return sum(1 for a in self.actions if a.kind == kind)

    def report(self) -> str:
        """Everything a person needs to route a failure: seed, faults, findings, exits."""
        lines = [
            f"seed {self.seed}, namespace {self.namespace}: {len(self.acknowledged)} acknowledged, "
            f"{len(self.created)} recorded, {self.refused_submissions} submission(s) refused",
            "faults:",
            *(f"  {a}" for a in self.actions),
        ]
        findings = {
            "lost (acknowledged, not in the log)": self.lost,
            "recorded, never acknowledged (a retry started another)": self.unrequested,
            "stuck (no terminal state)": self.stuck,
            "ended more than once": self.ended_more_than_once,
            "ended other than SUCCESS": self.not_successful,
            "read model disagrees with the log (log, read model)": self.read_model_disagreements,
            "projections behind (checkpoint, head)": self.projection_lag,
            "SUCCESS without its side effect": self.missing_side_effects,
            "side effect ran more than once": self.duplicated_side_effects,
            "side effect ran more often than claimed (effects, claims)": self.effects_beyond_claims,
            "processes not listening at the end": self.not_listening,
            "processes that did not stop cleanly on SIGTERM": self.unclean_stops,
        }
        for label, value in findings.items():
            if value:
                lines.append(f"{label}: {len(value)}: {_short(value)}")
        lines.append(f"SIGTERM during the run: {self.sigterm_stops}")
        if not self.verify.available:
            lines.append(f"sys verify: not run ({self.verify.output})")
        elif not self.verify.passed:
            lines.append(f"sys verify exited {self.verify.returncode}:\n{self.verify.output}")
        for e in self.exits:
            lines.append(str(e))
        return "\n".join(lines)


def _short(value: Any, limit: int = 8) -> str:
    if isinstance(value, dict):
        parts = [f"{k}: {v}" for k, v in value.items()]
    else:
        parts = [str(v) for v in value]
    more = f", ... ({len(parts) - limit} more)" if len(parts) > limit else ""
    return ", ".join(parts[:limit]) + more


# --- running -------------------------------------------------------------------------------------


class _Submitter(threading.Thread):
    """Starts the executions through the API at an even pace, retrying each until the API
    acknowledges it (the web server may be dead, or the database down, at that moment)."""

    def __init__(self, cluster: Cluster, namespace: str, count: int, seconds: float) -> None:
        super().__init__(daemon=True)
        self.cluster = cluster
        self.namespace = namespace
        self.count = count
        self.interval = seconds / max(count, 1)
        self.acknowledged: list[str] = []
        self.refused = 0
        self.error: BaseException | None = None
        self.give_up_at = time.monotonic() + seconds + 120
        [web, *_] = cluster.names("webserver")
        self.web = cluster.processes[web]

    def run(self) -> None:
        try:
            self._submit_all()
        except BaseException as exc:  # reported by the scenario, which joins this thread
            self.error = exc

    def _submit_all(self) -> None:
        started = time.monotonic()
        path = f"/api/v1/executions/{self.namespace}/{FLOW_ID}"
        with httpx.Client(base_url=self.cluster.api, timeout=10, auth=self.cluster.auth) as http:
            for i in range(self.count):
                time.sleep(max(0.0, started + i * self.interval - time.monotonic()))
                while True:
                    try:
                        # The same key on every try: a retry after a lost answer must not
                        # start a second execution.
                        r = http.post(path, json={}, headers={"Idempotency-Key": f"chaos-{i}"})
                        if r.status_code == 200:
                            self.acknowledged.append(str(r.json()["id"]))
                            break
                    except httpx.HTTPError:
                        pass
                    self.refused += 1
                    if time.monotonic() > self.give_up_at:
                        raise HarnessError(
                            f"The API refused execution {i + 1} for two minutes; "
                            f"web server log:\n{self.web.log_tail()}"
                        )
                    time.sleep(0.2)


def _faults(plan: ChaosPlan, rng: random.Random, cluster: Cluster) -> list[tuple[str, str]]:
    """The faults in the order they will happen: (kind, target)."""
    kinds = (
        ["kill"] * plan.kills
        + ["sigterm"] * plan.sigterms
        + ["pg-restart"] * plan.pg_restarts
        + ["listen-drop"] * plan.listen_drops
    )
    rng.shuffle(kinds)
    names = cluster.names()
    targets: list[str] = []
    while len(targets) < plan.kills:
        batch = names[:]
        rng.shuffle(batch)
        targets += batch
    kill_targets = iter(targets)
    workers = cluster.names("worker")
    planned = []
    for kind in kinds:
        if kind == "kill":
            target = next(kill_targets)
        elif kind == "sigterm":
            target = rng.choice(workers)
        elif kind == "pg-restart":
            target = "postgresql"
        else:
            target = "every LISTEN connection"
        planned.append((kind, target))
    return planned


def run_chaos(
    cluster: Cluster, plan: ChaosPlan, progress: Callable[[str], None] = lambda _: None
) -> Outcome:
    """Run the scenario on a started cluster and return what it left (see the module doc)."""
    seed = plan.seed if plan.seed is not None else random.randrange(2**32)
    rng = random.Random(seed)
    namespace = f"chaos.n{uuid.uuid4().hex[:12]}"
    effects = cluster.root / "effects.txt"
    cluster.deploy(shell_effect_flow(namespace, FLOW_ID, effects, plan.task_sleep))
    faults = _faults(plan, rng, cluster)
    progress(f"seed {seed}: {len(faults)} faults over {plan.seconds:.0f}s")

    started = time.monotonic()
    submitter = _Submitter(cluster, namespace, plan.executions, plan.seconds)
    submitter.start()
    actions: list[Action] = []
    sigterm_stops: list[Stop] = []
    for index, (kind, target) in enumerate(faults):
        at = started + plan.seconds * (index + 1) / (len(faults) + 1)
        time.sleep(max(0.0, at - time.monotonic()))
        if kind in ("pg-restart", "listen-drop"):
            # Every process should be running to live through it, not starting up meanwhile.
            # (One that died starting is the supervisor's to record and restart.)
            for name in cluster.names():
                with contextlib.suppress(HarnessError):
                    cluster.wait_started(name)
        detail = ""
        when = time.monotonic() - started
        if kind == "kill":
            cluster.kill(target)
        elif kind == "sigterm":
            stop = cluster.terminate(target)
            sigterm_stops.append(stop)
            detail = f"exited {stop.returncode} after {stop.seconds:.1f}s" + (
                ", killed: it did not stop" if stop.forced else ""
            )
        elif kind == "pg-restart":
            cluster.restart_postgres(plan.pg_down)
            detail = f"down {plan.pg_down:.1f}s"
        else:
            detail = f"{cluster.drop_listen_connections()} terminated"
        actions.append(Action(when, kind, target, detail))
        progress(str(actions[-1]))
    submitter.join()
    if submitter.error is not None:
        raise submitter.error
    calm = time.monotonic()
    progress(f"{len(submitter.acknowledged)} executions acknowledged; waiting to settle")

    outcome = Outcome(plan, seed, namespace, submitter.acknowledged, submitter.refused)
    outcome.actions = actions
    outcome.calm_at = calm - started
    outcome.sigterm_stops = sigterm_stops
    deadline = calm + plan.drain_timeout
    while True:
        observe(cluster, outcome)
        now = time.monotonic()
        if outcome.drain_seconds is None and not outcome.stuck:
            outcome.drain_seconds = now - calm
        if settled(outcome):
            outcome.settle_seconds = now - calm
            break
        if now >= deadline:
            break
        time.sleep(0.5)
    progress("stopping every process")
    outcome.final_stops = cluster.stop_all()
    outcome.exits = list(cluster.exits)
    observe(cluster, outcome, listening=False)
    outcome.effects = side_effects(effects)
    outcome.verify = sys_verify(cluster.url)
    return outcome


def settled(outcome: Outcome) -> bool:
    """True once there is nothing left for the system to do: every recorded execution is
    terminal, the projections are at the head, the read model agrees and everyone listens."""
    return not (
        outcome.lost
        or outcome.stuck
        or outcome.projection_lag
        or outcome.read_model_disagreements
        or outcome.not_listening
    )


def observe(cluster: Cluster, outcome: Outcome, *, listening: bool = True) -> None:
    """Fill `outcome` with what the database holds now (and, with `listening`, which running
    processes have a LISTEN connection)."""
    from projections.runner import all_projections

    with cluster.connect() as conn:
        outcome.created = [
            x
            for (x,) in conn.execute(
                "SELECT data->>'executionId' FROM events WHERE type = 'ExecutionCreated'"
                " AND data->>'namespace' = %s ORDER BY seq",
                (outcome.namespace,),
            )
        ]
        streams = [f"exec:{x}" for x in outcome.created]
        outcome.terminal_events = {
            x: n
            for x, n in conn.execute(
                "SELECT data->>'executionId', count(*) FROM events"
                " WHERE type = 'ExecutionStateChanged' AND stream_id = ANY(%s)"
                " AND data->>'state' = ANY(%s) GROUP BY 1",
                (streams, list(TERMINAL_STATES)),
            )
        }
        outcome.final_states = {
            x: s
            for x, s in conn.execute(
                "SELECT DISTINCT ON (stream_id) data->>'executionId', data->>'state' FROM events"
                " WHERE type = 'ExecutionStateChanged' AND stream_id = ANY(%s)"
                " ORDER BY stream_id, version DESC",
                (streams,),
            )
        }
        outcome.read_model = {
            x: s
            for x, s in conn.execute(
                "SELECT id, state FROM executions WHERE id = ANY(%s)", (outcome.created,)
            )
        }
        attempts: dict[str, dict[str, int]] = {"AttemptClaimed": {}, "AttemptAbandoned": {}}
        for type_, x, n in conn.execute(
            "SELECT type, data->>'executionId', count(*) FROM events"
            " WHERE type = ANY(%s) AND data->>'executionId' = ANY(%s) GROUP BY 1, 2",
            (list(attempts), outcome.created),
        ):
            attempts[type_][x] = n
        outcome.claims = attempts["AttemptClaimed"]
        outcome.abandoned = attempts["AttemptAbandoned"]
        positions = {
            name: position
            for name, position in conn.execute(
                "SELECT name, position FROM checkpoints WHERE name LIKE 'projection:%%'"
            )
        }
        checkpoints: dict[str, tuple[int | None, int]] = {}
        for projection in all_projections():
            name = f"projection:{projection.name}"
            row = conn.execute(
                "SELECT coalesce(max(seq), 0) FROM events WHERE type = ANY(%s)",
                (list(projection.types),),
            ).fetchone()
            checkpoints[name] = (positions.get(name), int(row[0]) if row else 0)
        outcome.checkpoints = checkpoints
    if listening:
        open_ = cluster.listen_connections()
        outcome.not_listening = [
            p.name for p in cluster.processes.values() if p.alive and p.app_name not in open_
        ]


def sys_verify(url: str, timeout: float = 600.0) -> Verify:
    """Run `tiercel sys verify --database-url URL`; `available` is False (and `output` says
    why) when this version of the command line has no such command."""
    probe = subprocess.run(
        [*TIERCEL, "sys", "verify", "--help"], capture_output=True, text=True, timeout=60
    )
    if probe.returncode != 0:
        said = (probe.stderr or probe.stdout).strip().splitlines()
        why = said[-1] if said else f"exit code {probe.returncode}"
        return Verify(False, None, f"`tiercel sys verify` does not exist yet ({why})")
    result = subprocess.run(
        [*TIERCEL, "sys", "verify", "--database-url", url],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return Verify(True, result.returncode, (result.stdout + result.stderr).strip())
