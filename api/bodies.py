"""Request bodies: bounded, decoded and parsed off the event loop, refused with a clear message.

Every body has a limit, checked from `Content-Length` before anything is read and while reading
when the length is not announced: JSON and YAML bodies `TIERCEL_MAX_BODY_BYTES` (10 MiB by
default), multipart uploads of execution inputs `TIERCEL_MAX_UPLOAD_BYTES` (100 MiB). A body
over its limit is answered 413 with the limit and the setting that raises it.

Parsing (UTF-8, JSON, YAML, flow validation) runs in a worker thread, at most `PARSERS` at once,
so that a large valid body delays only its own request, never `/health` or the others. What a
parsed JSON body may hold is bounded as YAML is: 100 levels of nesting, no NUL character (which
PostgreSQL cannot store).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from collections.abc import Callable
from pathlib import PurePosixPath
from typing import Any, TypeVar

import orjson
import trio
from quart import Response, request
from quart_trio.wrappers.request import TrioRequest
from werkzeug.exceptions import HTTPException

from engine.errors import InvalidRequest, Problem, TiercelError, UnsupportedMediaType
from engine.server import ServerContext

T = TypeVar("T")

MIB = 1024 * 1024
DEFAULT_MAX_BODY_BYTES = 10 * MIB
DEFAULT_MAX_UPLOAD_BYTES = 100 * MIB
MAX_DEPTH = 100
"""Levels of nesting a JSON body may hold, as a YAML document (engine/safe_yaml.py)."""
MAX_DOCUMENTS = 100
"""Flows one `POST /api/v1/flows/validate` body may hold."""
MAX_FILE_NAME_BYTES = 200
"""An uploaded file's name is cut to this many bytes (keeping its extension): file systems
refuse names over 255."""
PARSERS = 2
"""Bodies parsed at once (the machine's cores); others wait their turn without blocking."""

UPLOAD_ROUTES = re.compile(r"^/api/v1/executions/[^/]+/[^/]+$")
"""Where a multipart body may carry files and gets the upload limit: creating an execution
(`{namespace}/{flowId}`) and resuming one (`{executionId}/resume`)."""

_PARSERS: trio.lowlevel.RunVar[trio.CapacityLimiter] = trio.lowlevel.RunVar("parsers")
"""One limiter per trio run (a server), not one for the whole process."""


@dataclasses.dataclass(frozen=True)
class BodyLimits:
    """The limits of request bodies, in bytes."""

    body: int = DEFAULT_MAX_BODY_BYTES
    """JSON and YAML bodies, and the text fields of a multipart body."""
    upload: int = DEFAULT_MAX_UPLOAD_BYTES
    """A multipart body carrying files (execution inputs)."""


BODY_SETTING = "TIERCEL_MAX_BODY_BYTES"
UPLOAD_SETTING = "TIERCEL_MAX_UPLOAD_BYTES"


def body_limits(ctx: ServerContext) -> BodyLimits:
    """The limits for this server: the environment, else the configuration (`max-body-bytes`,
    `max-upload-bytes`, which reach `ctx.extra`), else the defaults."""

    def one(setting: str, key: str, default: int) -> int:
        raw = os.environ.get(setting) or ctx.extra.get(key)
        if raw is None or raw == "":
            return default
        try:
            return parse_size(raw)
        except ValueError:
            raise TiercelError(
                f"{setting} (or the configuration's {key.replace('_', '-')}) must be a size in "
                f"bytes such as 10485760 or 10MiB, not {raw!r}"
            ) from None

    return BodyLimits(
        body=one(BODY_SETTING, "max_body_bytes", DEFAULT_MAX_BODY_BYTES),
        upload=one(UPLOAD_SETTING, "max_upload_bytes", DEFAULT_MAX_UPLOAD_BYTES),
    )


_UNITS = {"": 1, "b": 1, "kb": 1000, "kib": 1024, "mb": 1000**2, "mib": MIB, "gb": 1000**3}
_UNITS["gib"] = 1024**3


def parse_size(raw: Any) -> int:
    """A size in bytes from `10485760`, `10MiB`, `500kb`; a `ValueError` when it is none."""
    if isinstance(raw, int) and not isinstance(raw, bool):
        value = raw
    else:
        found = re.fullmatch(r"\s*(\d+)\s*([a-zA-Z]*)\s*", str(raw))
        if not found or found.group(2).lower() not in _UNITS:
            raise ValueError(raw)
        value = int(found.group(1)) * _UNITS[found.group(2).lower()]
    if value < 1:
        raise ValueError(raw)
    return value


def human(size: int) -> str:
    """`10 MiB (10485760 bytes)`."""
    for unit, factor in (("GiB", 1024**3), ("MiB", MIB), ("KiB", 1024)):
        if size >= factor and size % factor == 0:
            return f"{size // factor} {unit} ({size} bytes)"
    return f"{size} bytes"


def request_class(limits: BodyLimits) -> type[TrioRequest]:
    """Quart's request, whose body is bounded by the limit for its kind (known from the method,
    path and Content-Type before any byte of it is read)."""

    class BoundedRequest(TrioRequest):
        body_limit_setting = BODY_SETTING

        def __init__(self, method: str, scheme: str, path: str, *args: Any, **kwargs: Any):
            headers = args[1] if len(args) > 1 else kwargs.get("headers")
            content_type = (headers.get("Content-Type", "") if headers is not None else "").lower()
            upload = (
                method == "POST"
                and content_type.startswith("multipart/form-data")
                and UPLOAD_ROUTES.match(path) is not None
            )
            limit = limits.upload if upload else limits.body
            kwargs["max_content_length"] = limit
            super().__init__(method, scheme, path, *args, **kwargs)
            self._max_content_length = limit
            self._max_form_memory_size = limits.body
            self.body_limit_setting = UPLOAD_SETTING if upload else BODY_SETTING

    return BoundedRequest


def too_large_message(limits: BodyLimits) -> str:
    """What a 413 says: the limit the body crossed and the setting that raises it."""
    setting = getattr(request, "body_limit_setting", BODY_SETTING)
    if setting == UPLOAD_SETTING:
        return (
            f"The request body is too large: a multipart upload may hold at most "
            f"{human(limits.upload)}, its text fields {human(limits.body)} in all, and 1000 "
            f"parts; send smaller files, or raise {UPLOAD_SETTING} (max-upload-bytes in the "
            "configuration) on the server"
        )
    kind = "multipart text fields" if request.mimetype == "multipart/form-data" else "body"
    return (
        f"The request {kind} is too large: JSON and YAML bodies may hold at most "
        f"{human(limits.body)}; send less, or raise {BODY_SETTING} (max-body-bytes in the "
        "configuration) on the server"
    )


async def off_loop(fn: Callable[..., T], *args: Any) -> T:
    """`fn(*args)` in a worker thread, at most PARSERS at once, so the event loop stays free."""
    try:
        limiter = _PARSERS.get()
    except LookupError:
        limiter = trio.CapacityLimiter(PARSERS)
        _PARSERS.set(limiter)
    return await trio.to_thread.run_sync(fn, *args, limiter=limiter)


def decode_utf8(data: bytes, what: str = "The request body") -> str:
    """`data` as text; an `InvalidRequest` names the first byte that is not UTF-8 and where."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        byte = data[exc.start : exc.start + 1].hex()
        raise InvalidRequest(
            f"{what} is not UTF-8 text: the byte 0x{byte} at position {exc.start} (line {line}, "
            f"byte {column} of the line) cannot be read; save or send it as UTF-8",
            [Problem(f"byte 0x{byte} is not UTF-8", "", line, column)],
        ) from None


YAML_TYPES = ("application/x-yaml", "application/yaml", "text/yaml", "text/x-yaml")


async def yaml_text() -> str:
    """The request's body as YAML text (not empty), checked as UTF-8 off the event loop."""
    if request.mimetype == "multipart/form-data":
        raise UnsupportedMediaType(
            "Send the flow's YAML source as the body (Content-Type: application/x-yaml), not "
            "as a multipart form"
        )
    data = await request.get_data()
    text = await off_loop(decode_utf8, data)
    if not text.strip():
        raise InvalidRequest(
            "The request body is empty: send the flow's YAML source "
            "(Content-Type: application/x-yaml)"
        )
    return text


def parse_json(data: bytes) -> Any:
    """A JSON body as values, within the bounds of `check_value`; `InvalidRequest` otherwise."""
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"The request body is not valid JSON: {exc}") from None
    check_value(value, "The JSON body")
    return value


def check_value(value: Any, what: str) -> None:
    """Refuse (`InvalidRequest`) a value nested more than MAX_DEPTH levels or holding a NUL
    character in a string or key, naming where. Iterative: depth costs no recursion here."""
    stack: list[tuple[Any, int, str]] = [(value, 1, "")]
    while stack:
        item, depth, path = stack.pop()
        if isinstance(item, str):
            if "\x00" in item:
                _refuse(what, path, "holds a NUL character (\\u0000), which cannot be stored")
            continue
        if not isinstance(item, dict | list):
            continue
        if depth > MAX_DEPTH:
            _refuse(what, path, f"is nested more than {MAX_DEPTH} levels deep")
        if isinstance(item, dict):
            for key, child in item.items():
                name = key if isinstance(key, str) else str(key)  # a form field may have none
                if "\x00" in name:
                    _refuse(what, path, "has a key holding a NUL character (\\u0000)")
                stack.append((child, depth + 1, f"{path}.{name}" if path else name))
        else:
            stack.extend((child, depth + 1, f"{path}[{i}]") for i, child in enumerate(item))


def _refuse(what: str, path: str, problem: str) -> None:
    where = f" at {path}" if path else ""
    raise InvalidRequest(f"{what}{where} {problem}", [Problem(problem, path)])


async def json_object(what: str) -> dict[str, Any]:
    """The request's JSON body as an object (`{}` when empty), parsed off the event loop."""
    data = await request.get_data()
    if not data.strip():
        return {}
    body = await off_loop(parse_json, data)
    if not isinstance(body, dict):
        raise InvalidRequest(f"The body must be a JSON object: {what}")
    return body


def check_text_fields(fields: dict[str, Any]) -> None:
    """Form fields hold no NUL character (PostgreSQL cannot store one)."""
    check_value(fields, "The form")


def file_name(name: str | None, fallback: str) -> str:
    """A name to store an uploaded file under: its base name without folders or control
    characters, cut to MAX_FILE_NAME_BYTES (keeping the extension), else `fallback`."""
    base = PurePosixPath((name or "").replace("\\", "/")).name
    base = "".join(ch for ch in base if ch.isprintable())
    if base in ("", ".", ".."):
        return fallback
    encoded = base.encode("utf-8")
    if len(encoded) <= MAX_FILE_NAME_BYTES:
        return base
    suffix = PurePosixPath(base).suffix
    suffix = suffix if len(suffix.encode("utf-8")) <= 20 else ""
    room = MAX_FILE_NAME_BYTES - len(suffix.encode("utf-8"))
    stem = encoded[:room].decode("utf-8", errors="ignore")
    return stem + suffix


async def drain(response: Response) -> Response:
    """Read what is left of the request's body before answering. A request answered before
    its body was read (refused by a check, or a multipart body too broken to parse) otherwise
    leaves the connection it came on to hang, now and then, on the next request it carries.
    Bounded: the body is at most its limit, and Quart stops waiting after BODY_TIMEOUT."""
    try:
        await request.get_data(cache=False)
    except HTTPException:
        # Over its limit (the rest is never read) or too slow: this connection is done, and
        # the client must be told, or it sends its next request down a dead one.
        response.headers["Connection"] = "close"
    return response


def refuse_nul_in_url() -> None:
    """Refuse a URL holding a NUL character (`%00`): no id or filter can hold one, and the
    database cannot be asked about it."""
    if "\x00" in request.path or any(
        "\x00" in k or "\x00" in v for k, v in request.args.items(multi=True)
    ):
        raise InvalidRequest(
            "The URL holds a NUL character (%00): remove it",
            [Problem("NUL character", "url")],
        )


def json_bytes(body: Any, default: Callable[[Any], Any] | None = None) -> bytes:
    """`body` as JSON: by orjson, or by the standard library for what orjson cannot write (an
    integer beyond 64 bits, which JSON allows and a flow's values may hold), so that one such
    value cannot make every answer that shows it fail. `default` writes what JSON has no type
    for (datetimes included)."""
    option = orjson.OPT_PASSTHROUGH_DATETIME if default is not None else 0
    try:
        return orjson.dumps(body, default=default, option=option)
    except TypeError:
        return json.dumps(
            body, default=default, ensure_ascii=False, separators=(",", ":"), allow_nan=False
        ).encode()
