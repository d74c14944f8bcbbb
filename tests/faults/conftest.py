"""Fault tests: Tiercel's roles as separate processes on a PostgreSQL of their own.

Each cluster lives in a temp folder of its own (never the session's shared database) and is
torn down at the end of its test, failed or not: every process it started is killed, its
PostgreSQL stopped, and anything still running in its folder killed. Set
`TIERCEL_FAULTS_KEEP=1` to keep the folders (logs, database) for a post-mortem.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.faults.harness import Cluster, keep_requested


@pytest.fixture
def ns() -> str:
    """A namespace of this test's own."""
    return f"faults.n{uuid.uuid4().hex[:12]}"


@pytest.fixture
def cluster_factory() -> Iterator[Callable[..., Cluster]]:
    """`make(**options)` starts a `Cluster` (options as `Cluster`'s) that is closed, with
    everything it started, when the test ends."""
    made: list[Cluster] = []

    def make(**options: Any) -> Cluster:
        cluster = Cluster.in_temp_dir(keep_root=keep_requested(), **options)
        made.append(cluster)
        cluster.start()
        return cluster

    yield make
    for cluster in made:
        cluster.close()
        if cluster.keep_root:
            print(f"cluster kept in {cluster.root}")
