"""Waiting out database outages: which errors pass, how long to wait, and a retry helper.

A PostgreSQL restart, a terminated backend or a serialization conflict is not a reason for a
process to exit: every consumer resumes from its checkpoint, so retrying the failed call after
a pause is safe. A programming error is different: retrying it at full speed only fills the
log, so callers decide what to do with it (`is_transient` tells them apart).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

import psycopg
import trio

from engine.errors import DatabaseUnavailable
from engine.health import Health

log = logging.getLogger(__name__)

T = TypeVar("T")


def is_transient(exc: BaseException) -> bool:
    """True when `exc` comes from the database being away or busy, so a retry may succeed.

    Transient: `psycopg.OperationalError` and its subclasses (connection failures,
    `AdminShutdown`, `CannotConnectNow` while the server starts, serialization failures and
    deadlocks), `psycopg.InterfaceError` (a connection that is already closed or broken),
    `DatabaseUnavailable`, and a lost socket (`ConnectionError`). An exception group (what a
    trio nursery raises) is transient when every exception in it is. Anything else, a
    programming error or a bad query, is not.
    """
    if isinstance(exc, BaseExceptionGroup):
        return all(is_transient(e) for e in exc.exceptions)
    return isinstance(
        exc,
        psycopg.OperationalError | psycopg.InterfaceError | DatabaseUnavailable | ConnectionError,
    )


def describe(exc: BaseException) -> str:
    """A one-line reason for `exc`, as logs and `/health` show it."""
    if isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        return describe(exc.exceptions[0])
    text = " ".join(str(exc).split())
    name = type(exc).__name__
    return f"{name}: {text}" if text else name


class Backoff:
    """Delays that double from `initial` up to `maximum` and start over after a success."""

    def __init__(self, initial: float = 0.1, maximum: float = 5.0, factor: float = 2.0) -> None:
        self.initial = initial
        self.maximum = maximum
        self.factor = factor
        self.failures = 0
        self._next = initial

    @property
    def delay(self) -> float:
        """The pause the next `sleep()` will take."""
        return self._next

    def failed(self) -> float:
        """Count a failure and return the pause to take before the next try."""
        self.failures += 1
        delay = self._next
        self._next = min(self._next * self.factor, self.maximum)
        return delay

    async def sleep(self) -> None:
        """Count a failure and sleep the pause it calls for."""
        await trio.sleep(self.failed())

    def reset(self) -> None:
        """Start over from `initial` (call it after a success)."""
        self.failures = 0
        self._next = self.initial


async def retry(
    factory: Callable[[], Awaitable[T]],
    *,
    what: str,
    health: Health | None = None,
    component: str | None = None,
    backoff: Backoff | None = None,
) -> T:
    """Await `factory()` until it succeeds, pausing with `backoff` after each transient error.

    `what` names the call in the log ("loading checkpoint timers"). When `health` and
    `component` are given, the component is marked DOWN with the error while the call fails
    and UP once it succeeds. A non-transient error is raised at once, and cancellation ends
    the wait as usual.
    """
    backoff = backoff if backoff is not None else Backoff()
    while True:
        try:
            result = await factory()
        except Exception as exc:
            if not is_transient(exc):
                raise
            reason = describe(exc)
            delay = backoff.failed()
            if health is not None and component is not None:
                health.down(component, reason)
            log.warning("%s failed (%s); retrying in %.1fs", what, reason, delay)
            await trio.sleep(delay)
            continue
        if backoff.failures:
            log.info("%s succeeded after %d failed tries", what, backoff.failures)
        backoff.reset()
        if health is not None and component is not None:
            health.up(component)
        return result
