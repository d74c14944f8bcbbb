"""The `kestra` module that script tasks can import, as with Kestra's Python library.

Each call prints one protocol line that the task reads from stdout:
`::{"outputs": {...}}::`, `::{"metrics": [...]}::` or `::{"logs": [...]}::`.
"""

from __future__ import annotations

import json
import time
from typing import Any


class Kestra:
    """Send outputs, metrics and logs to the task running this script."""

    @staticmethod
    def _send(message: dict[str, Any]) -> None:
        print("::" + json.dumps(message, default=str) + "::", flush=True)

    @staticmethod
    def outputs(values: dict[str, Any]) -> None:
        """Set output variables, read later as `{{ outputs.<task>.vars.<key> }}`."""
        Kestra._send({"outputs": values})

    @staticmethod
    def counter(name: str, value: float, tags: dict[str, str] | None = None) -> None:
        """Report a counter metric."""
        Kestra._send(
            {"metrics": [{"name": name, "type": "counter", "value": value, "tags": tags or {}}]}
        )

    @staticmethod
    def timer(name: str, duration: Any, tags: dict[str, str] | None = None) -> None:
        """Report a timer metric: seconds, or a function to time."""
        if callable(duration):
            started = time.perf_counter()
            duration()
            duration = time.perf_counter() - started
        Kestra._send(
            {"metrics": [{"name": name, "type": "timer", "value": duration, "tags": tags or {}}]}
        )

    @staticmethod
    def log(level: str, message: str) -> None:
        """Log a line at a level (DEBUG, INFO, WARN, ERROR)."""
        Kestra._send({"logs": [{"level": level, "message": message}]})
