"""ISO-8601 durations (PT30S, PT1H30M, P1DT2H) as Kestra writes them."""

from __future__ import annotations

import datetime as dt
import re

_DURATION = re.compile(
    r"^P(?:(?P<w>\d+)W)?(?:(?P<d>\d+(?:\.\d+)?)D)?"
    r"(?:T(?:(?P<h>\d+(?:\.\d+)?)H)?(?:(?P<m>\d+(?:\.\d+)?)M)?(?:(?P<s>\d+(?:\.\d+)?)S)?)?$"
)


def parse_duration(text: str) -> dt.timedelta:
    """Parse an ISO-8601 duration; raise ValueError naming the text when it is not one."""
    cleaned = str(text).strip().upper()
    m = _DURATION.match(cleaned)
    if not m or cleaned in ("P", "PT") or cleaned.endswith("T"):
        raise ValueError(f"'{text}' is not an ISO-8601 duration such as PT30S, PT5M or P1D")
    parts = {k: float(v) for k, v in m.groupdict().items() if v}
    try:
        return _delta(parts)
    except OverflowError:
        raise ValueError(f"'{text}' is too long a duration: use at most {MAX_DAYS} days") from None


MAX_DAYS = 999_999_999
"""The longest duration that can be represented (Python's `timedelta` limit)."""


def _delta(parts: dict[str, float]) -> dt.timedelta:
    return dt.timedelta(
        weeks=parts.get("w", 0),
        days=parts.get("d", 0),
        hours=parts.get("h", 0),
        minutes=parts.get("m", 0),
        seconds=parts.get("s", 0),
    )
