"""`io.kestra.plugin.core.http.*`: HTTP requests and downloads."""

from __future__ import annotations

import json
import re
from typing import Any
from urllib.parse import unquote, urlparse

import httpx

from engine.plugin import RunContext, RunnableTask, TaskFailure, parse_duration, register

METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS", "TRACE")
_FILENAME = re.compile(r"""filename\*\s*=\s*[^']*'[^']*'([^;]+)|filename\s*=\s*"?([^";]+)"?""")


class _Http(RunnableTask, kw_only=True):
    uri: str
    """The URL to call (templates rendered)."""
    method: str = "GET"
    """The HTTP method: GET, POST, PUT, PATCH, DELETE, HEAD, OPTIONS or TRACE."""
    body: Any = None
    """The request body: text, or a map or list sent as JSON (templates rendered)."""
    formData: dict[str, Any] | None = None
    """Form fields, sent url-encoded (multipart with `contentType: multipart/form-data`)."""
    contentType: str | None = None
    """The body's content type."""
    headers: dict[str, Any] = {}
    """Request headers (templates rendered)."""
    options: dict[str, Any] = {}
    """`connectTimeout` and `readTimeout` (ISO-8601 durations; 30 s and 60 s by default),
    `followRedirects` (true by default), `basicAuthUser` and `basicAuthPassword`, or `auth`:
    `{type: BASIC, username, password}` or `{type: BEARER, token}`."""
    allowFailed: bool = False
    """Succeed even when the server answers with a 4xx or 5xx status."""
    sslOptions: dict[str, Any] | None = None
    """`insecureTrustAllCertificates: true` skips the server certificate's checks."""

    def problems(self) -> list[tuple[str, str]]:
        found = []
        if "{{" not in self.uri and urlparse(self.uri).scheme not in ("http", "https"):
            found.append(("uri", f"'{self.uri}' is not an http(s) URL"))
        if "{{" not in self.method and self.method.upper() not in METHODS:
            found.append(("method", f"Unknown method '{self.method}'; use one of {METHODS}"))
        return found

    def _client(self, options: dict[str, Any]) -> httpx.AsyncClient:
        try:
            timeout = httpx.Timeout(
                _seconds(options.get("readTimeout"), 60.0),
                connect=_seconds(options.get("connectTimeout"), 30.0),
            )
        except ValueError as exc:
            raise TaskFailure(f"options: {exc}") from None
        auth: httpx.Auth | None = None
        scheme = options.get("auth") or {}
        if options.get("basicAuthUser"):
            auth = httpx.BasicAuth(
                str(options["basicAuthUser"]), str(options.get("basicAuthPassword", ""))
            )
        elif str(scheme.get("type", "")).upper() == "BASIC":
            auth = httpx.BasicAuth(str(scheme.get("username", "")), str(scheme.get("password", "")))
        verify = not (self.sslOptions or {}).get("insecureTrustAllCertificates", False)
        return httpx.AsyncClient(
            timeout=timeout,
            auth=auth,
            verify=verify,
            follow_redirects=bool(options.get("followRedirects", True)),
        )

    async def _request(self, ctx: RunContext, options: dict[str, Any]) -> dict[str, Any]:
        headers = {str(k): str(v) for k, v in (await ctx.render_async(self.headers) or {}).items()}
        scheme = options.get("auth") or {}
        if str(scheme.get("type", "")).upper() == "BEARER":
            headers.setdefault("Authorization", f"Bearer {scheme.get('token', '')}")
        if self.contentType:
            headers.setdefault("Content-Type", str(await ctx.render_async(self.contentType)))
        request: dict[str, Any] = {
            "method": str(await ctx.render_async(self.method)).upper(),
            "url": str(await ctx.render_async(self.uri)),
            "headers": headers,
        }
        if self.formData is not None:
            form = {str(k): str(v) for k, v in (await ctx.render_async(self.formData)).items()}
            if (self.contentType or "").startswith("multipart/"):
                # httpx writes the multipart content type itself, with its boundary.
                headers.pop("Content-Type", None)
                request["files"] = {k: (None, v) for k, v in form.items()}
            else:
                request["data"] = form
        elif self.body is not None:
            body = await ctx.render_async(self.body)
            if isinstance(body, dict | list):
                request["content"] = json.dumps(body).encode()
                headers.setdefault("Content-Type", "application/json")
            else:
                request["content"] = str(body).encode()
        return request

    def _check(self, response: httpx.Response) -> None:
        """Fail on a 4xx/5xx status unless `allowFailed`; the body must have been read."""
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


def _filename(response: httpx.Response, url: str) -> str:
    """The name the server gives the file (Content-Disposition), else the URL path's last part."""
    found = _FILENAME.search(response.headers.get("content-disposition", ""))
    if found:
        name = unquote(found.group(1) or found.group(2) or "").strip()
        if name:
            return name
    return urlparse(url).path.rsplit("/", 1)[-1] or "download"


@register("io.kestra.plugin.core.http.Request", "io.kestra.plugin.fs.http.Request")
class Request(_Http, kw_only=True):
    """Call an HTTP endpoint; outputs `uri`, `code`, `headers` and `body` (the response as
    text: a JSON answer stays a string, read it with `fromJson`)."""

    encryptBody: bool = False
    """Accepted for compatibility: the body is kept as is."""

    async def run(self, ctx: RunContext) -> dict[str, Any]:
        options = await ctx.render_async(self.options) or {}
        request = await self._request(ctx, options)
        async with self._client(options) as client:
            try:
                response = await client.request(**request)
            except httpx.HTTPError as exc:
                raise TaskFailure(
                    f"{request['method']} {request['url']} failed: {type(exc).__name__}: {exc}"
                ) from None
        self._check(response)
        return {
            "uri": str(response.request.url),
            "code": response.status_code,
            "headers": _headers(response),
            "body": response.text,
        }


@register("io.kestra.plugin.core.http.Download", "io.kestra.plugin.fs.http.Download")
class Download(_Http, kw_only=True):
    """Download a URL into internal storage; outputs `uri` (of the stored file), `code`,
    `length` (in bytes) and `headers`."""

    failOnEmptyResponse: bool = True
    """Fail when the response has no body."""

    async def run(self, ctx: RunContext) -> dict[str, Any]:
        options = await ctx.render_async(self.options) or {}
        request = await self._request(ctx, options)
        target = ctx.working_dir / "download"
        async with self._client(options) as client:
            try:
                async with client.stream(**request) as response:
                    if response.status_code >= 400:
                        await response.aread()  # for the error message
                    self._check(response)
                    with target.open("wb") as out:
                        async for chunk in response.aiter_bytes():
                            out.write(chunk)
            except httpx.HTTPError as exc:
                raise TaskFailure(
                    f"Download of {request['url']} failed: {type(exc).__name__}: {exc}"
                ) from None
        length = target.stat().st_size
        if length == 0 and self.failOnEmptyResponse:
            raise TaskFailure(
                f"{request['url']} answered {response.status_code} with an empty body; "
                "set failOnEmptyResponse: false to accept it"
            )
        uri = await ctx.put_file(target, _filename(response, request["url"]))
        return {
            "uri": uri,
            "code": response.status_code,
            "length": length,
            "headers": _headers(response),
        }
