"""The chaos scenario (see tests/faults/scenario.py): 40 executions across an executor, two
workers, an indexer and a web server in separate processes, while processes are killed (-9)
and restarted, a worker is stopped with SIGTERM, PostgreSQL restarts and the LISTEN connections
are dropped. The scenario runs once; each test checks one thing a user relies on afterwards.

`TIERCEL_CHAOS_SEED` replays a given run's order of faults and targets.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.faults.harness import Cluster, keep_requested
from tests.faults.scenario import ChaosPlan, Outcome, run_chaos

pytestmark = pytest.mark.last

PLAN = ChaosPlan(
    executions=40,
    kills=4,
    sigterms=1,
    pg_restarts=1,
    listen_drops=1,
    seconds=20.0,
    drain_timeout=60.0,
    # Long enough that a kill of a worker usually finds it running a task.
    task_sleep=1.0,
    seed=int(os.environ["TIERCEL_CHAOS_SEED"]) if os.environ.get("TIERCEL_CHAOS_SEED") else None,
)


@pytest.fixture(scope="module")
def chaos() -> Iterator[Outcome]:
    cluster = Cluster.in_temp_dir(keep_root=keep_requested())
    try:
        cluster.start()
        yield run_chaos(cluster, PLAN)
    finally:
        cluster.close()


def test_every_acknowledged_execution_is_in_the_log(chaos: Outcome) -> None:
    assert len(chaos.acknowledged) == PLAN.executions
    assert not chaos.lost, chaos.report()


def test_a_retried_submission_starts_no_second_execution(chaos: Outcome) -> None:
    # The API was down or the database away for some submissions; each was retried with the
    # same Idempotency-Key until acknowledged.
    if not chaos.refused_submissions:
        pytest.skip("no submission needed a retry in this run")
    assert not chaos.unrequested, chaos.report()


def test_no_execution_is_left_unfinished(chaos: Outcome) -> None:
    assert chaos.created and not chaos.stuck, chaos.report()


def test_every_execution_ends_exactly_once(chaos: Outcome) -> None:
    assert not chaos.ended_more_than_once, chaos.report()


def test_every_execution_succeeds_despite_the_faults(chaos: Outcome) -> None:
    assert not chaos.not_successful, chaos.report()


def test_every_success_ran_its_side_effect(chaos: Outcome) -> None:
    assert not chaos.missing_side_effects, chaos.report()


def test_a_side_effect_runs_again_only_in_a_new_attempt(chaos: Outcome) -> None:
    # Duplicates are expected from at-least-once work (a worker died after running the side
    # effect, before recording it); more effects than claimed attempts would mean one attempt
    # ran on two workers.
    print(f"side effects that ran more than once: {len(chaos.duplicated_side_effects)}")
    assert not chaos.effects_beyond_claims, chaos.report()


def test_every_projection_reaches_the_head_of_the_log(chaos: Outcome) -> None:
    assert chaos.checkpoints and not chaos.projection_lag, chaos.report()


def test_executions_read_model_agrees_with_the_log(chaos: Outcome) -> None:
    assert not chaos.read_model_disagreements, chaos.report()


def test_no_process_exits_by_itself_not_even_across_a_postgresql_restart(chaos: Outcome) -> None:
    assert chaos.count("pg-restart") == PLAN.pg_restarts
    assert not chaos.exits, chaos.report()


def test_every_process_listens_again_after_the_faults(chaos: Outcome) -> None:
    assert chaos.count("listen-drop") == PLAN.listen_drops
    assert not chaos.not_listening, chaos.report()


def test_every_process_stops_cleanly_on_sigterm(chaos: Outcome) -> None:
    assert len(chaos.sigterm_stops) == PLAN.sigterms
    unclean = [s for s in chaos.sigterm_stops if s.forced or s.returncode != 0]
    assert not unclean and not chaos.unclean_stops, chaos.report()


def test_sys_verify_refolds_every_recorded_stream(chaos: Outcome) -> None:
    if not chaos.verify.available:
        pytest.skip(chaos.verify.output)
    assert chaos.verify.passed, chaos.report()
