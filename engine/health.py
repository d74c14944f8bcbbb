"""What each component of a server process says about itself, for `/health` and readiness.

Consumers (subscriptions, timers, the worker, the LISTEN connection) mark themselves DOWN while
they back off from an error and UP once a call succeeds again, so readiness tells the truth
during a database outage instead of answering UP while nothing moves. The registry is plain
in-memory state shared through `ServerContext.health`; it never touches the database.

Subscriptions also note the position they have read up to (`Health.progress`), so a projection's
lag (events between its position and the head of the log) is known exactly in the process that
runs it. `readiness` turns the registry, the database's answer and those lags into the body of
`/health/readiness`: one entry per component, and a message naming each one that is DOWN.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any


class Status(enum.StrEnum):
    """A component's state as `/health` shows it."""

    UP = "UP"
    DOWN = "DOWN"


@dataclass(frozen=True)
class ComponentHealth:
    """One component's state, why it is in it, and since when."""

    status: Status
    reason: str = ""
    since: datetime = field(default_factory=lambda: datetime.now(UTC))

    def to_json(self) -> dict[str, str]:
        """The component as a `/health` entry: status, since, and the reason when DOWN."""
        out = {"status": self.status.value, "since": self.since.isoformat()}
        if self.reason:
            out["reason"] = self.reason
        return out


class Health:
    """A registry of components by name, each UP or DOWN with a reason and a time."""

    def __init__(self) -> None:
        self._components: dict[str, ComponentHealth] = {}
        self._positions: dict[str, int] = {}

    def up(self, name: str) -> None:
        """Mark `name` UP; a component already UP keeps its `since`."""
        current = self._components.get(name)
        if current is None or current.status is not Status.UP:
            self._components[name] = ComponentHealth(Status.UP)

    def down(self, name: str, reason: str) -> None:
        """Mark `name` DOWN because of `reason`; `since` is kept while it stays DOWN."""
        current = self._components.get(name)
        if current is not None and current.status is Status.DOWN:
            if current.reason != reason:
                self._components[name] = ComponentHealth(Status.DOWN, reason, current.since)
            return
        self._components[name] = ComponentHealth(Status.DOWN, reason)

    def forget(self, name: str) -> None:
        """Drop `name` (a component that stopped on purpose no longer counts)."""
        self._components.pop(name, None)
        self._positions.pop(name, None)

    def progress(self, name: str, position: int) -> None:
        """Note that consumer `name` has read every event up to `position`."""
        self._positions[name] = position

    def positions(self) -> dict[str, int]:
        """The position each consumer of this process has read up to, by name."""
        return dict(sorted(self._positions.items()))

    def get(self, name: str) -> ComponentHealth | None:
        """The state of `name`, or None when it never reported."""
        return self._components.get(name)

    def components(self) -> dict[str, ComponentHealth]:
        """A copy of every component's state, by name, sorted by name."""
        return dict(sorted(self._components.items()))

    def down_components(self) -> dict[str, ComponentHealth]:
        """The components that are DOWN, by name."""
        return {n: c for n, c in self.components().items() if c.status is Status.DOWN}

    @property
    def is_up(self) -> bool:
        """True when no component is DOWN."""
        return not any(c.status is Status.DOWN for c in self._components.values())

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._components))


PROJECTION_PREFIX = "projection:"
"""Health components (and checkpoints) of projections are named `projection:<name>`."""


def readiness(
    health: Health,
    *,
    database_up: bool,
    head: int | None,
    started: bool,
    checkpoints: dict[str, int] | None = None,
) -> tuple[bool, dict[str, Any]]:
    """Whether this process is ready, and the `/health/readiness` body that says why (not).

    `database_up` is whether the database answered just now, `head` the last position of the
    log (None when unknown), `started` whether every component of the process has started, and
    `checkpoints` the recorded position of each projection (used for the projections that run
    in another process). Each projection's entry carries its `lag`: the events between the
    position it has read up to and the head. The body has one entry per component and, when
    anything is DOWN, a `message` that names each such component and why.
    """
    components: dict[str, dict[str, Any]] = {
        "database": {"status": Status.UP.value}
        if database_up
        else {"status": Status.DOWN.value, "reason": "The database does not answer"}
    }
    components.update({n: c.to_json() for n, c in health.components().items()})
    if head is not None:
        positions = health.positions()
        for name, position in positions.items():
            if name.startswith(PROJECTION_PREFIX) and name in components:
                components[name]["lag"] = max(0, head - position)
        for name, position in (checkpoints or {}).items():
            if name.startswith(PROJECTION_PREFIX) and name not in positions:
                # Run by another process: its checkpoint moves only when it writes, so this
                # lag is an upper bound.
                components.setdefault(name, {"status": Status.UP.value, "elsewhere": True})
                components[name]["lag"] = max(0, head - position)
    down = [
        f"{name} ({entry.get('reason', 'DOWN')})"
        for name, entry in components.items()
        if entry["status"] == Status.DOWN.value
    ]
    if not started:
        down.append("server (still starting)")
    body: dict[str, Any] = {
        "status": Status.DOWN.value if down else Status.UP.value,
        "components": components,
    }
    if down:
        body["message"] = "Not ready: " + "; ".join(down)
    return not down, body
