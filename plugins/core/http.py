"""`io.kestra.plugin.core.http.*`: HTTP requests and downloads."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlparse

import httpx

from engine.plugin import RunContext, RunnableTask, TaskFailure, parse_duration, register


class _Http(RunnableTask, kw_only=True):
    uri: str
    """The URL to call (templates rendered)."""
    method: str = "GET"
    """The HTTP method."""
    body: Any = None
    """The request body: text, or a map/list sent as JSON."""
    formData: dict[str, Any] | None = None
    """Form fields, sent url-encoded (or multipart with `contentType: multipart/form-data`)."""
    contentType: str | None = None
    """The body's content type."""
    headers: dict[str, Any] = {}
    """Request headers."""
    options: dict[str, Any] = {}
    """`connectTimeout`, `readTimeout` (durations), `followRedirects`, `basicAuthUser`,
    `basicAuthPassword`."""
    allowFailed: bool = False
    """Do not fail on a 4xx/5xx status."""
    sslOptions: dict[str, Any] | None = None
    """`insecureTrustAllCertificates: true` skips certificate checks."""

    def problems(self) -> list[tuple[str, str]]:
        if "{{" not in self.uri and urlparse(self.uri).scheme not in ("http", "https"):
            return [("uri", f"'{self.uri}' is not an http(s) URL")]
        return []

    def _client(self, ctx: RunContext) -> httpx.AsyncClient:
        options = ctx.render(self.options) or {}
        timeout = httpx.Timeout(
            _seconds(options.get("readTimeout"), 60.0),
            connect=_seconds(options.get("connectTimeout"), 30.0),
        )
        auth = None
        if options.get("basicAuthUser"):
            auth = httpx.BasicAuth(
                str(options["basicAuthUser"]), str(options.get("basicAuthPassword", ""))
            )
        verify = not (self.sslOptions or {}).get("insecureTrustAllCertificates", False)
        return httpx.AsyncClient(
            timeout=timeout,
            auth=auth,
            verify=verify,
            follow_redirects=bool(options.get("followRedirects", True)),
        )

    def _request(self, ctx: RunContext) -> dict[str, Any]:
        headers = {str(k): str(v) for k, v in (ctx.render(self.headers) or {}).items()}
        if self.contentType:
            headers.setdefault("Content-Type", str(ctx.render(self.contentType)))
        request: dict[str, Any] = {
            "method": str(ctx.render(self.method)).upper(),
            "url": str(ctx.render(self.uri)),
            "headers": headers,
        }
        if self.formData is not None:
            form = {str(k): str(v) for k, v in ctx.render(self.formData).items()}
            if (self.contentType or "").startswith("multipart/"):
                headers.pop("Content-Type", None)
                request["files"] = {k: (None, v) for k, v in form.items()}
            else:
                request["data"] = form
        elif self.body is not None:
            body = ctx.render(self.body)
            if isinstance(body, dict | list):
                request["content"] = json.dumps(body).encode()
                headers.setdefault("Content-Type", "application/json")
            else:
                request["content"] = str(body).encode()
        return request

    def _check(self, response: httpx.Response) -> None:
        if response.status_code >= 400 and not self.allowFailed:
            raise TaskFailure(
                f"{response.request.method} {response.request.url} answered "
                f"{response.status_code}: {response.text[:300]}",
                {"code": response.status_code},
            )


def _seconds(value: Any, default: float) -> float:
    return parse_duration(str(value)).total_seconds() if value else default


def _headers(response: httpx.Response) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for key, value in response.headers.multi_items():
        out.setdefault(key, []).append(value)
    return out


@register("io.kestra.plugin.core.http.Request", "io.kestra.plugin.fs.http.Request")
class Request(_Http, kw_only=True):
    """Call an HTTP endpoint; outputs `code`, `headers` and `body` (the response text)."""

    encryptBody: bool = False
    """Accepted for compatibility: the body is kept as is."""

    async def run(self, ctx: RunContext) -> dict[str, Any]:
        async with self._client(ctx) as client:
            try:
                response = await client.request(**self._request(ctx))
            except httpx.HTTPError as exc:
                raise TaskFailure(f"Request to {ctx.render(self.uri)} failed: {exc}") from None
        self._check(response)
        return {"code": response.status_code, "headers": _headers(response), "body": response.text}


@register("io.kestra.plugin.core.http.Download", "io.kestra.plugin.fs.http.Download")
class Download(_Http, kw_only=True):
    """Download a URL into internal storage; outputs `uri`, `code`, `length` and `headers`."""

    failOnEmptyResponse: bool = True
    """Fail when the response has no body."""

    async def run(self, ctx: RunContext) -> dict[str, Any]:
        target = ctx.working_dir / "download"
        url = str(ctx.render(self.uri))
        async with self._client(ctx) as client:
            try:
                async with client.stream(**self._request(ctx)) as response:
                    self._check(response)
                    with target.open("wb") as out:
                        async for chunk in response.aiter_bytes():
                            out.write(chunk)
            except httpx.HTTPError as exc:
                raise TaskFailure(f"Download of {url} failed: {exc}") from None
        length = target.stat().st_size
        if length == 0 and self.failOnEmptyResponse:
            raise TaskFailure(f"{url} answered with an empty body")
        name = urlparse(url).path.rsplit("/", 1)[-1] or "download"
        uri = await ctx.put_file(target, name)
        return {
            "uri": uri,
            "code": response.status_code,
            "length": length,
            "headers": _headers(response),
        }
