"""What the fuzzers share: the case count, the tally printed at the end, and a blocking HTTP
client that checks every answer."""

from __future__ import annotations

import collections
import os
import time
from pathlib import Path
from typing import Any

import httpx
import hypothesis
import pytest

from tests.conftest import ADMIN_PASSWORD

FUZZ_CASES = int(os.environ.get("TIERCEL_FUZZ_CASES", "200"))
REQUEST_TIMEOUT = 30.0
"""Seconds any one answer may take: longer is a hang."""
ROOT = Path(__file__).resolve().parents[2]

_REPORT: list[str] = []


def fuzz_settings() -> hypothesis.settings:
    """FUZZ_CASES examples, no per-example deadline (a hang is caught by REQUEST_TIMEOUT), no
    example database (nothing written into the tree)."""
    return hypothesis.settings(
        max_examples=FUZZ_CASES,
        deadline=None,
        database=None,
        suppress_health_check=list(hypothesis.HealthCheck),
        print_blob=True,
    )


class Tally:
    """Counts the cases a fuzzer ran and the answers it got; reports them at the end."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.cases = 0
        self.answers: collections.Counter[str] = collections.Counter()
        self.started = time.perf_counter()

    def count(self, answer: int | str) -> None:
        self.answers[str(answer)] += 1

    def report(self) -> str:
        elapsed = time.perf_counter() - self.started
        answers = ", ".join(f"{k}: {v}" for k, v in sorted(self.answers.items()))
        line = f"{self.name}: {self.cases} cases in {elapsed:.1f} s ({answers})"
        _REPORT.append(line)
        print(line)
        return line


def reported() -> list[str]:
    """The lines of every fuzzer that ran."""
    return list(_REPORT)


class Http:
    """A blocking client for the fuzzers' thread, checking every answer it gets: never a 5xx,
    never a hang, never a stack trace or one of the server's own paths in the body."""

    def __init__(self, base_url: str, server_paths: list[str]) -> None:
        self.http = httpx.Client(
            base_url=base_url, auth=("admin", ADMIN_PASSWORD), timeout=REQUEST_TIMEOUT
        )
        self.server_paths = [p for p in server_paths if p and len(p) > 4]

    def close(self) -> None:
        self.http.close()

    def request(self, method: str, url: str, sent: bytes = b"", **kwargs: Any) -> httpx.Response:
        try:
            response = self.http.request(method, url, **kwargs)
        except httpx.TimeoutException:
            pytest.fail(
                f"{method} {url} got no answer within {REQUEST_TIMEOUT} s (sent {sent[:300]!r})"
            )
        self.check(response, sent)
        return response

    def check(self, response: httpx.Response, sent: bytes) -> None:
        where = f"{response.request.method} {response.request.url}"
        assert response.status_code < 500, (
            f"{where} answered {response.status_code}: {response.text[:500]}\nsent: {sent[:500]!r}"
        )
        text = response.text
        assert "Traceback (most recent call last)" not in text, f"{where}: {text[:1000]}"
        sent_text = sent.decode("utf-8", errors="replace")
        for path in self.server_paths:
            assert path not in text or path in sent_text, f"{where} shows {path}: {text[:500]}"
        if response.status_code >= 400:
            body = response.json()
            assert isinstance(body, dict) and isinstance(body.get("message"), str), text[:500]
