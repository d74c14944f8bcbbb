"""The `kestra` module that script tasks can import, as with Kestra's Python library.

Each call prints one protocol line on stdout, which the task running the script reads:
`::{"outputs": {...}}::`, `::{"metrics": [...]}::` or `::{"logs": [...]}::`.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Callable
from typing import Any

_LEVELS = {"WARNING": "WARN", "CRITICAL": "ERROR", "NOTSET": "TRACE"}


class Kestra:
    """Send outputs, metrics and logs to the task running this script."""

    _logger: logging.Logger | None = None

    @staticmethod
    def _send(message: dict[str, Any]) -> None:
        # one write per line, flushed, so lines of concurrent threads never interleave
        sys.stdout.write("::" + json.dumps(message, default=str) + "::\n")
        sys.stdout.flush()

    @staticmethod
    def _metric(name: str, kind: str, value: float, tags: dict[str, Any] | None) -> None:
        entry = {"name": name, "type": kind, "value": value, "tags": tags or {}}
        Kestra._send({"metrics": [entry]})

    @staticmethod
    def outputs(values: dict[str, Any]) -> None:
        """Set output variables, read later as `{{ outputs.<task id>.vars.<key> }}`."""
        Kestra._send({"outputs": values})

    @staticmethod
    def counter(name: str, value: float, tags: dict[str, Any] | None = None) -> None:
        """Report a counter metric."""
        Kestra._metric(name, "counter", value, tags)

    @staticmethod
    def timer(
        name: str, duration: float | Callable[[], Any], tags: dict[str, Any] | None = None
    ) -> None:
        """Report a timer metric: a duration in seconds, or a function to run and time."""
        if callable(duration):
            started = time.perf_counter()
            duration()
            duration = time.perf_counter() - started
        Kestra._metric(name, "timer", duration, tags)

    @staticmethod
    def logger() -> logging.Logger:
        """A logger whose records become log lines of the task, at their level."""
        if Kestra._logger is None:
            handler = _ProtocolHandler()
            handler.setFormatter(logging.Formatter("%(message)s"))
            log = logging.getLogger("kestra")
            log.setLevel(logging.DEBUG)
            log.addHandler(handler)
            log.propagate = False
            Kestra._logger = log
        return Kestra._logger


class _ProtocolHandler(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        try:
            level = _LEVELS.get(record.levelname, record.levelname)
            Kestra._send({"logs": [{"level": level, "message": self.format(record)}]})
        except Exception:
            self.handleError(record)
