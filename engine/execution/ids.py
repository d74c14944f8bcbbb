"""Ids and timestamps of the pure core: derived from what they identify, never random."""

from __future__ import annotations

import datetime as dt
import hashlib

_ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


def iso(at: dt.datetime) -> str:
    """A timestamp as Kestra writes them: UTC, milliseconds, `Z`."""
    at = at.astimezone(dt.UTC)
    return at.strftime("%Y-%m-%dT%H:%M:%S.") + f"{at.microsecond // 1000:03d}Z"


def parse_iso(text: str) -> dt.datetime:
    """A timestamp written by `iso` (or any ISO-8601 text) as an aware datetime."""
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00"))


def short_id(*parts: str) -> str:
    """A 22-character base62 id derived from `parts` (Kestra's id shape, but reproducible)."""
    n = int.from_bytes(hashlib.sha256("\x1f".join(parts).encode()).digest()[:16], "big")
    out = []
    for _ in range(22):
        n, r = divmod(n, 62)
        out.append(_ALPHABET[r])
    return "".join(out)


def task_run_id(
    execution_id: str,
    parent_id: str | None,
    task_id: str,
    value: str | None,
    iteration: int | None = None,
) -> str:
    """The id of the task run of `task_id` under `parent_id` for loop value `value`."""
    parts = [execution_id, parent_id or "", task_id, "" if value is None else value]
    if iteration is not None:
        parts.append(f"#{iteration}")
    return short_id(*parts)
