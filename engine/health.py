"""What each component of a server process says about itself, for `/health` and readiness.

Consumers (subscriptions, timers, the worker, the LISTEN connection) mark themselves DOWN while
they back off from an error and UP once a call succeeds again, so readiness tells the truth
during a database outage instead of answering UP while nothing moves. The registry is plain
in-memory state shared through `ServerContext.health`; it never touches the database.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime


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
