"""Domain errors. Every error says what is wrong, where, and what to do."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Problem:
    """One problem found in user input: where it is, what is wrong and what to do."""

    message: str
    path: str = ""
    line: int | None = None
    column: int | None = None

    def location(self) -> str:
        """The place as `line:column` and/or a field path, or an empty string."""
        parts = []
        if self.line is not None:
            parts.append(f"{self.line}:{self.column or 1}")
        if self.path:
            parts.append(self.path)
        return " ".join(parts)

    def __str__(self) -> str:
        where = self.location()
        return f"{where}: {self.message}" if where else self.message

    def to_json(self) -> dict[str, Any]:
        """The problem as the API's `details` entry."""
        out: dict[str, Any] = {"message": self.message}
        if self.path:
            out["path"] = self.path
        if self.line is not None:
            out["line"] = self.line
            out["column"] = self.column or 1
        return out


class TiercelError(Exception):
    """Base of every domain error; `status` is the HTTP status the API answers with."""

    status = 500

    def __init__(self, message: str, details: list[Problem] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details: list[Problem] = list(details or [])

    def to_json(self) -> dict[str, Any]:
        """The error as the API's JSON body."""
        return {"message": self.message, "details": [d.to_json() for d in self.details]}

    def __str__(self) -> str:
        if not self.details:
            return self.message
        return self.message + "\n" + "\n".join(f"  - {d}" for d in self.details)


class InvalidRequest(TiercelError):
    """The request itself is malformed (bad JSON, bad parameter)."""

    status = 400


class Unauthorized(TiercelError):
    """The request carries no credentials, or credentials that are not valid."""

    status = 401
    headers: dict[str, str] = {}
    """Response headers that go with the answer (the authentication challenge)."""


class Forbidden(TiercelError):
    """The caller is known but may not do this (role or namespace), or the request was refused
    as cross-site."""

    status = 403


class UnsupportedMediaType(TiercelError):
    """A state-changing request's body is not of a type the route accepts."""

    status = 415


class NotFound(TiercelError):
    """A flow, execution or other object does not exist."""

    status = 404


class Conflict(TiercelError):
    """The object exists already, or changed under the caller."""

    status = 409


class FlowValidationError(TiercelError):
    """A flow does not validate; `details` lists every problem found, not just the first."""

    status = 422

    def __init__(self, problems: list[Problem], source: str | None = None) -> None:
        what = f" in {source}" if source else ""
        n = len(problems)
        super().__init__(f"Invalid flow{what}: {n} problem{'s' if n != 1 else ''} found", problems)


class InputValidationError(TiercelError):
    """An execution input is missing or has a bad value; nothing was started."""

    status = 422


class TemplateError(TiercelError):
    """A template expression could not be rendered; the message names the expression."""

    status = 422


class WrongExpectedVersion(Conflict):
    """An append found the stream at another version than the caller expected."""


class DatabaseUnavailable(TiercelError):
    """The PostgreSQL server cannot be reached or started."""

    status = 503
