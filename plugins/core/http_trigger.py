"""`io.kestra.plugin.core.http.Trigger`: poll an HTTP endpoint and start the flow when its
response matches a condition (the first polling trigger).

Every `interval` the scheduler calls `uri`; `responseCondition` is rendered with `response`
(`statusCode`, `body` as text, `headers`), and when it holds the flow starts with the response
as `{{ trigger.* }}`: `uri`, `code`, `headers`, `body`. The request runs in a worker thread
(never on the scheduler's event loop), bounded in time and in the size of the body it reads.
"""

from __future__ import annotations

import json
import os
from typing import Any
from urllib.parse import urlencode, urlparse

import httpx

from engine.duration import parse_duration
from engine.plugin import register_trigger
from engine.triggers import PollContext, PollingTrigger
from plugins.core.schedule import SCHEDULE_CONDITIONS

METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS")
DEFAULT_CONDITION = "{{ response.statusCode < 400 }}"
MAX_BODY_BYTES = int(os.environ.get("TIERCEL_MAX_POLL_BODY_BYTES", str(1024 * 1024)))
"""The most of a response body a poll reads: the body is recorded in the execution it starts."""
MAX_TIMEOUT = 60.0
"""Seconds a poll may take at most, whatever `options` say (it holds the scheduler's pass)."""


class PollFailed(Exception):
    """The endpoint could not be polled (refused, timed out, answered too much)."""


@register_trigger("io.kestra.plugin.core.http.Trigger", "io.kestra.plugin.fs.http.Trigger")
class HttpTrigger(PollingTrigger, kw_only=True):
    """Call an HTTP endpoint every `interval`; start the flow when `responseCondition` holds."""

    uri: str
    """The URL to call (templates rendered with `flow` and `trigger.date`)."""
    method: str = "GET"
    """The HTTP method."""
    body: Any = None
    """The request body: text, or a mapping or list sent as JSON."""
    contentType: str | None = None
    """The request body's content type."""
    formData: dict[str, Any] | None = None
    """Form fields, sent url-encoded instead of `body`."""
    headers: dict[str, Any] = {}
    """Request headers (templates rendered)."""
    params: dict[str, Any] = {}
    """Query parameters added to the URL (a value may be a list)."""
    responseCondition: str = DEFAULT_CONDITION
    """When to start the flow: a template rendered with `response.statusCode`, `response.body`
    (text: `json(response.body).price` reads JSON) and `response.headers`; any value but false,
    0, null or empty starts it."""
    options: dict[str, Any] = {}
    """`connectTimeout` and `readTimeout` (ISO-8601 durations, 10 s and 30 s by default, at most
    one minute), `followRedirects` (true), `basicAuthUser`/`basicAuthPassword`, or `auth`:
    `{type: BASIC, username, password}` or `{type: BEARER, token}`."""
    sslOptions: dict[str, Any] | None = None
    """`insecureTrustAllCertificates: true` skips the server certificate's checks."""
    encryptBody: bool = False
    """Accepted for compatibility: the body is recorded as the execution's trigger."""

    def condition_types(self) -> frozenset[str] | None:
        # Those judged on the poll's date or variables (an ended execution is for Flow triggers).
        return SCHEDULE_CONDITIONS

    def problems(self) -> list[tuple[str, str]]:
        found = super().problems()
        if "{{" not in self.uri and urlparse(self.uri).scheme not in ("http", "https"):
            found.append(("uri", f"'{self.uri}' is not an http(s) URL"))
        if "{{" not in self.method and self.method.upper() not in METHODS:
            found.append(("method", f"Unknown method '{self.method}'; use one of {METHODS}"))
        for name in ("connectTimeout", "readTimeout"):
            value = self.options.get(name)
            if value is not None:
                try:
                    parse_duration(str(value))
                except ValueError as exc:
                    found.append((f"options.{name}", str(exc)))
        return found

    def _timeouts(self) -> tuple[float, float]:
        def seconds(name: str, default: float) -> float:
            value = self.options.get(name)
            if value is None:
                return default
            return min(parse_duration(str(value)).total_seconds(), MAX_TIMEOUT)

        return seconds("connectTimeout", 10.0), seconds("readTimeout", 30.0)

    def poll_timeout(self) -> float:
        connect, read = self._timeouts()
        return min(connect + read, MAX_TIMEOUT) + 5.0

    def poll(self, ctx: PollContext) -> dict[str, Any] | None:
        variables = ctx.variables
        uri = str(ctx.render(self.uri, variables))
        method = str(ctx.render(self.method, variables)).upper()
        headers = {str(k): str(v) for k, v in (ctx.render(self.headers, variables) or {}).items()}
        scheme = self.options.get("auth") or {}
        auth: httpx.Auth | None = None
        if self.options.get("basicAuthUser"):
            auth = httpx.BasicAuth(
                str(self.options["basicAuthUser"]), str(self.options.get("basicAuthPassword", ""))
            )
        elif str(scheme.get("type", "")).upper() == "BASIC":
            auth = httpx.BasicAuth(str(scheme.get("username", "")), str(scheme.get("password", "")))
        elif str(scheme.get("type", "")).upper() == "BEARER":
            headers.setdefault("Authorization", f"Bearer {scheme.get('token', '')}")
        if self.contentType:
            headers.setdefault("Content-Type", str(ctx.render(self.contentType, variables)))
        content: bytes | None = None
        if self.formData is not None:
            form = {str(k): str(v) for k, v in (ctx.render(self.formData, variables) or {}).items()}
            content = urlencode(form).encode()
            headers.setdefault("Content-Type", "application/x-www-form-urlencoded")
        elif self.body is not None:
            body = ctx.render(self.body, variables)
            if isinstance(body, dict | list):
                content = json.dumps(body).encode()
                headers.setdefault("Content-Type", "application/json")
            else:
                content = str(body).encode()
        params = ctx.render(self.params, variables) or {}
        connect, read = self._timeouts()
        verify = not (self.sslOptions or {}).get("insecureTrustAllCertificates", False)
        try:
            with (
                httpx.Client(
                    timeout=httpx.Timeout(read, connect=connect),
                    auth=auth,
                    verify=verify,
                    follow_redirects=bool(self.options.get("followRedirects", True)),
                ) as client,
                client.stream(
                    method, uri, headers=headers, content=content, params=params
                ) as response,
            ):
                data = bytearray()
                for chunk in response.iter_bytes():
                    data += chunk
                    if len(data) > MAX_BODY_BYTES:
                        raise PollFailed(
                            f"{method} {uri} answered more than {MAX_BODY_BYTES} bytes: poll an "
                            "endpoint answering less (TIERCEL_MAX_POLL_BODY_BYTES)"
                        )
                code = response.status_code
                answered: dict[str, list[str]] = {}
                for key, value in response.headers.multi_items():
                    answered.setdefault(key, []).append(value)
                text = bytes(data).decode(response.encoding or "utf-8", errors="replace")
        except httpx.HTTPError as exc:
            raise PollFailed(f"{method} {uri}: {exc or type(exc).__name__}") from None
        seen = {"statusCode": code, "body": text, "headers": answered}
        verdict = ctx.render(self.responseCondition, {**variables, "response": seen})
        if not _truthy(verdict):
            return None
        return {"uri": uri, "code": code, "headers": answered, "body": text}


def _truthy(value: Any) -> bool:
    """Kestra's coercion of a rendered condition: false, 0, -0, null and '' are false (as
    their text is), everything else true."""
    if isinstance(value, str):
        return value.strip().lower() not in ("", "false", "0", "-0", "0.0", "null")
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float):
        return value != 0
    return value is not None
