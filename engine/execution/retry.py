"""Retry policy: when the next attempt of a failed task run (or execution) is due."""

from __future__ import annotations

import datetime as dt
from typing import Any

from engine.duration import parse_duration
from engine.execution.ids import short_id
from engine.flow import Flow


def retry_policy(flow: Flow, task_id: str) -> dict[str, Any]:
    """The retry policy of a task: its own, else the flow's, else none (`{}`)."""
    task = flow.find_task(task_id)
    policy = (task.retry if task is not None else None) or flow.retry or {}
    return policy if isinstance(policy, dict) else {}


def creates_new_execution(policy: dict[str, Any]) -> bool:
    """True when the policy retries by starting a new execution once this one failed."""
    return str(policy.get("behavior", "RETRY_FAILED_TASK")).upper() == "CREATE_NEW_EXECUTION"


def _duration(policy: dict[str, Any], key: str, default: str) -> dt.timedelta:
    text = str(policy.get(key, default))
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise ValueError(f"retry.{key}: {exc}; fix the flow's retry policy") from None


def retry_after(
    policy: dict[str, Any],
    attempts: int,
    started: dt.datetime,
    at: dt.datetime,
    seed: tuple[str, ...],
) -> dt.datetime | None:
    """When attempt `attempts + 1` is due under a retry `policy`, or None when none is left.

    Raises `ValueError` (with what to fix) when the policy itself is malformed.
    """
    try:
        return _retry_after(policy, attempts, started, at, seed)
    except OverflowError:
        raise ValueError(
            "the retry policy gives an interval too long to schedule: shorten it"
        ) from None


def _retry_after(
    policy: dict[str, Any],
    attempts: int,
    started: dt.datetime,
    at: dt.datetime,
    seed: tuple[str, ...],
) -> dt.datetime | None:
    kind = str(policy.get("type", "")).lower()
    if kind not in ("constant", "exponential", "random"):
        return None
    max_attempt = policy.get("maxAttempt", policy.get("maxAttempts"))
    if max_attempt is not None:
        try:
            limit = int(max_attempt)
        except (TypeError, ValueError):
            raise ValueError(
                f"retry.maxAttempt '{max_attempt}' is not a whole number: fix the flow's "
                "retry policy"
            ) from None
        if limit < 1:
            raise ValueError(f"retry.maxAttempt is {limit}: it must be at least 1")
        if attempts >= limit:
            return None
    if max_attempt is None and policy.get("maxDuration") is None:
        return None
    if kind == "constant":
        delay = _duration(policy, "interval", "PT1S")
    elif kind == "exponential":
        base = _duration(policy, "interval", "PT1S")
        try:
            factor = float(policy.get("delayFactor", 2))
        except (TypeError, ValueError):
            raise ValueError(
                f"retry.delayFactor '{policy.get('delayFactor')}' is not a number"
            ) from None
        try:
            delay = base * min(factor ** (attempts - 1), 1e6)
        except OverflowError:
            delay = dt.timedelta(days=3650)
        if policy.get("maxInterval"):
            delay = min(delay, _duration(policy, "maxInterval", "PT1S"))
    else:
        low = _duration(policy, "minInterval", "PT1S")
        high = _duration(policy, "maxInterval", str(policy.get("minInterval", "PT1S")))
        # Pseudo-random but reproducible: derived from what is being retried.
        fraction = int(short_id(*seed, str(attempts))[:4], 36) % 1000 / 1000
        delay = low + (high - low) * fraction
    due = at + delay
    if policy.get("maxDuration") and due > started + _duration(policy, "maxDuration", "PT0S"):
        return None
    return due
