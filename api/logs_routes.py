"""Routes of the logs read model, as Kestra's `/api/v1/logs`.

- `GET /api/v1/logs/search`: a page of log lines, newest first, of every execution the
  principal reaches: `q` (full text: every word, as a prefix, of the message or the ids),
  `namespace` (and those under it), `flowId`, `executionId`, `taskId`, `triggerId`, `minLevel`,
  `startDate`, `endDate`, `timeRange` (PT1H: the last hour), `page`, `size`, `sort`
  (`timestamp:desc` or `timestamp:asc`), or Kestra's `filters[field][OPERATION]=value` form.
  `{"results": [LogEntry...], "total": n, "totalIsEstimate": bool}`.
- `GET /api/v1/logs/histogram`: the same filters, counted per level in time buckets whose size
  is chosen from the range (at most `MAX_BUCKETS` of them): `{"interval", "startDate",
  "endDate", "total", "buckets": [{"date", "total", "counts": {level: n}}]}`; the buckets'
  totals add up to the search's total.
- `GET /api/v1/logs/{executionId}`: the lines of one execution in the order they were logged
  (`minLevel`, `taskRunId`, `taskId`, `attempt`).
- `GET /api/v1/logs/{executionId}/follow`: server-sent events: `id: start` (an empty entry,
  as Kestra sends), then each line logged so far and each line logged after it as
  `id: progress`, and once the execution ended and its last line was sent, `event: end`, and
  the stream closes.
- `GET /api/v1/logs/{executionId}/download`: the same lines as plain text, one per line:
  `timestamp level [taskId] message`.

Any parameter the routes cannot answer is a 400 naming it.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import AsyncIterator, Iterable
from functools import partial
from typing import Any

import trio
from quart import Blueprint, Response, request

from api import bodies
from api.auth import access, namespace_filter
from api.execution_filters import KESTRA_OPERATIONS, _date, _duration
from engine import commands
from engine import events as ev
from engine.errors import InvalidRequest, NotFound, Problem
from engine.execution import iso
from engine.server import ServerContext
from engine.store import load_checkpoint
from projections import logs as logs_model
from projections.logs import LEVELS, LogSearch

MAX_PAGE_SIZE = 1000
MAX_OFFSET = 100_000
"""The deepest row a page may start at: narrow the search (a time range) to go further."""
MAX_QUERY = 500
"""The longest `q` a search takes, in characters."""
MAX_BUCKETS = 120
BUCKETS = [
    dt.timedelta(seconds=s)
    for s in (
        1,
        5,
        10,
        30,
        60,
        300,
        600,
        1800,
        3600,
        3 * 3600,
        6 * 3600,
        12 * 3600,
        86_400,
        7 * 86_400,
        30 * 86_400,
        365 * 86_400,
    )
]
"""The bucket sizes a histogram picks from: the smallest that keeps it within `MAX_BUCKETS`."""
ORIGIN = dt.datetime(2001, 1, 1, tzinfo=dt.UTC)
"""Buckets are counted from a Monday at midnight UTC: hours start on the hour, weeks on
Monday."""
FOLLOW_POLL = 0.25
"""Seconds a follower waits for a notification before looking for new lines anyway (lines
reach the read model after their event's notification)."""
FOLLOW_BATCH = 500
FOLLOW_HEARTBEAT = 15.0
CATCH_UP_SECONDS = 5.0
"""How long a read of one execution's lines waits for the logs projection to hold them."""

SEARCH_PARAMETERS = (
    "page",
    "size",
    "sort",
    "q",
    "namespace",
    "flowId",
    "executionId",
    "taskId",
    "triggerId",
    "minLevel",
    "startDate",
    "endDate",
    "timeRange",
)
EXECUTION_PARAMETERS = ("minLevel", "taskRunId", "taskId", "attempt")

OPERATIONS: dict[str, tuple[str, ...]] = {
    "q": ("EQUALS",),
    "query": ("EQUALS",),
    "namespace": ("EQUALS", "PREFIX", "STARTS_WITH"),
    "flowId": ("EQUALS",),
    "executionId": ("EQUALS",),
    "taskId": ("EQUALS",),
    "triggerId": ("EQUALS",),
    "level": ("EQUALS", "GREATER_THAN_OR_EQUAL_TO"),
    "minLevel": ("EQUALS",),
    "startDate": ("GREATER_THAN_OR_EQUAL_TO", "GREATER_THAN"),
    "endDate": ("LESS_THAN_OR_EQUAL_TO", "LESS_THAN"),
    "timeRange": ("EQUALS",),
}
"""Each field of `filters[field][OPERATION]` the logs search answers, and its operations."""

_FILTER = re.compile(r"filters\[([^\[\]]*)\]\[([^\[\]]*)\]")
_MS = dt.timedelta(milliseconds=1)
_LAST_OF_MS = dt.timedelta(microseconds=999)


def _bad(message: str, name: str) -> InvalidRequest:
    return InvalidRequest(message, [Problem(message, name)])


def min_level(value: str, name: str = "minLevel") -> str:
    """A level as Kestra names it (WARNING is WARN), or a 400 naming `name`."""
    level = value.strip().upper()
    if level == "WARNING":
        level = "WARN"
    if level not in LEVELS:
        raise _bad(f"{name} must be one of {', '.join(LEVELS)}, got {value!r}", name)
    return level


def _text(value: str, name: str, longest: int = 1000) -> str:
    if len(value) > longest:
        raise _bad(f"{name} holds at most {longest} characters", name)
    return value


def _int(value: str, name: str, minimum: int, maximum: int) -> int:
    try:
        number = int(value)
    except ValueError:
        raise _bad(f"{name} must be an integer, got {value!r}", name) from None
    if not minimum <= number <= maximum:
        raise _bad(f"{name} must be between {minimum} and {maximum}, got {value!r}", name)
    return number


class _Reader:
    """Narrows one `LogSearch` from the query string's filters, whichever form they take."""

    def __init__(self, now: dt.datetime) -> None:
        self.search = LogSearch()
        self.now = now
        self.nothing = False
        """Two filters exclude each other (two flows): no line can match."""

    def equal(self, attribute: str, value: str, name: str) -> None:
        value = _text(value, name)
        given = getattr(self.search, attribute)
        if given is not None and given != value:
            self.nothing = True
        setattr(self.search, attribute, value)

    def namespace(self, value: str, exact: bool, name: str) -> None:
        s = self.search
        value = _text(value, name)
        if s.namespace is not None and (s.namespace, s.namespace_exact) != (value, exact):
            raise _bad(f"{name} is a second namespace filter: give one", name)
        s.namespace, s.namespace_exact = value, exact

    def level(self, value: str, name: str) -> None:
        level = min_level(value, name)
        given = self.search.min_level
        if given is None or LEVELS.index(level) > LEVELS.index(given):
            self.search.min_level = level

    def query(self, value: str, name: str) -> None:
        value = _text(value, name, MAX_QUERY)
        if not re.search(r"\w", value):
            raise _bad(f"{name} must hold a word (letters or digits) to search for", name)
        if self.search.q is not None and self.search.q != value:
            raise _bad(f"{name} is a second text search: give one q", name)
        self.search.q = value

    def after(self, at: dt.datetime) -> None:
        s = self.search
        s.start = at if s.start is None else max(s.start, at)

    def before(self, at: dt.datetime) -> None:
        s = self.search
        s.end = at if s.end is None else min(s.end, at)

    def plain(self, name: str, value: str) -> None:
        if value == "" or name in ("page", "size", "sort"):
            return  # an empty parameter is no filter; paging is read by the route
        if name == "q":
            self.query(value, name)
        elif name == "namespace":
            self.namespace(value, False, name)
        elif name == "flowId":
            self.equal("flow_id", value, name)
        elif name == "executionId":
            self.equal("execution_id", value, name)
        elif name == "taskId":
            self.equal("task_id", value, name)
        elif name == "triggerId":
            self.equal("trigger_id", value, name)
        elif name == "minLevel":
            self.level(value, name)
        elif name == "startDate":
            self.after(_date(value, name))
        elif name == "endDate":
            self.before(_date(value, name) + _LAST_OF_MS)
        elif name == "timeRange":
            self.after(self.now - _duration(value, name))

    def kestra(self, name: str, value: str) -> None:
        match = _FILTER.fullmatch(name)
        if match is None:
            raise _bad(
                f"Query parameter {name!r} is not a filter: write filters[field][OPERATION]=value",
                name,
            )
        field, operation = match.group(1), match.group(2).upper()
        if field not in OPERATIONS:
            raise _bad(
                f"Unknown or unsupported filter field {field!r} in {name}; the logs search "
                f"filters on {', '.join(OPERATIONS)}",
                name,
            )
        if operation not in OPERATIONS[field]:
            what = "Unknown" if operation not in KESTRA_OPERATIONS else "Unsupported"
            raise _bad(
                f"{what} operation {match.group(2)!r} on {field} in {name}; the logs search "
                f"answers {', '.join(OPERATIONS[field])} on {field}",
                name,
            )
        if value == "":
            raise _bad(f"{name} has no value", name)
        if field in ("q", "query"):
            self.query(value, name)
        elif field == "namespace":
            self.namespace(value, operation == "EQUALS", name)
        elif field in ("level", "minLevel"):
            # Kestra's level filter is a minimum: EQUALS INFO keeps INFO and above.
            self.level(value, name)
        elif field == "startDate":
            at = _date(value, name)
            self.after(at + _MS if operation == "GREATER_THAN" else at)
        elif field == "endDate":
            at = _date(value, name)
            self.before(at - _MS + _LAST_OF_MS if operation == "LESS_THAN" else at + _LAST_OF_MS)
        elif field == "timeRange":
            self.after(self.now - _duration(value, name))
        else:
            attribute = {
                "flowId": "flow_id",
                "executionId": "execution_id",
                "taskId": "task_id",
                "triggerId": "trigger_id",
            }[field]
            self.equal(attribute, value, name)


def read_search(args: Iterable[tuple[str, str]], now: dt.datetime) -> tuple[LogSearch, bool]:
    """The search the query string `args` asks for, and whether its filters exclude each
    other (then no line matches)."""
    reader = _Reader(now)
    for name, value in args:
        if name.startswith("filters["):
            reader.kestra(name, value)
        elif name in SEARCH_PARAMETERS:
            reader.plain(name, value)
        else:
            raise _bad(
                f"Unknown query parameter {name!r} for the logs search; it takes "
                f"{', '.join(SEARCH_PARAMETERS)} and filters[field][OPERATION]=value",
                name,
            )
    s = reader.search
    if s.start is not None and s.end is not None and s.start > s.end:
        reader.nothing = True
    return s, reader.nothing


def bucket_for(span: dt.timedelta) -> dt.timedelta:
    """The smallest bucket of `BUCKETS` that cuts `span` into at most `MAX_BUCKETS`."""
    for size in BUCKETS:
        if span / size <= MAX_BUCKETS:
            return size
    return BUCKETS[-1]


def duration_text(delta: dt.timedelta) -> str:
    """An ISO-8601 duration (PT5M, PT1H, P1D) for a bucket size."""
    seconds = int(delta.total_seconds())
    days, rest = divmod(seconds, 86_400)
    if days and not rest:
        return f"P{days}D"
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    text = "P" + (f"{days}D" if days else "") + "T"
    text += (f"{hours}H" if hours else "") + (f"{minutes}M" if minutes else "")
    return text + (f"{secs}S" if secs else "")


def log_json(row: dict[str, Any]) -> dict[str, Any]:
    """A log line in the shape of Kestra's `LogEntry`. Tiercel logs executions only (no trigger
    logs), and records no thread; both are null, as Kestra's are where it has none."""
    return {
        "tenantId": commands.TENANT,
        "namespace": row["namespace"],
        "flowId": row["flow_id"],
        "executionId": row["execution_id"],
        "taskId": row["task_id"],
        "taskRunId": row["task_run_id"],
        "attemptNumber": row["attempt"],
        "triggerId": None,
        "timestamp": row["timestamp"],
        "level": row["level"],
        "thread": None,
        "message": row["message"],
        "executionKind": None,
    }


def text_line(row: dict[str, Any]) -> str:
    """A log line as the download writes it: `timestamp level [taskId] message`."""
    task = f" [{row['task_id']}]" if row["task_id"] else ""
    return f"{iso(row['timestamp'])} {row['level']}{task} {row['message']}\n"


def _answer(body: Any, status: int = 200) -> Response:
    return Response(
        bodies.json_bytes(body, _default), status=status, content_type="application/json"
    )


def _default(value: Any) -> Any:
    if isinstance(value, dt.datetime):
        return iso(value)
    raise TypeError(f"Cannot encode {type(value).__name__}")


def blueprint(ctx: ServerContext) -> Blueprint:
    """The logs routes, on `ctx`'s database and notifier."""
    routes = Blueprint("logs", __name__)
    db, store = ctx.db, ctx.store

    @routes.get("/api/v1/logs/search")
    @access("viewer")
    async def search_logs() -> Response:
        """Search log lines (full text, level, namespace, flow, execution, task, time)."""
        search, nothing = read_search(request.args.items(multi=True), dt.datetime.now(dt.UTC))
        page = _int(request.args.get("page") or "1", "page", 1, MAX_OFFSET + 1)
        size = _int(request.args.get("size") or "10", "size", 1, MAX_PAGE_SIZE)
        sort = (request.args.get("sort") or "timestamp:desc").strip()
        if sort not in ("timestamp:desc", "timestamp:asc", "timestamp"):
            raise _bad(f"sort must be timestamp:desc or timestamp:asc, got {sort!r}", "sort")
        offset = (page - 1) * size
        if offset > MAX_OFFSET:
            raise _bad(
                f"page {page} of {size} starts past row {MAX_OFFSET}: narrow the search "
                "(startDate, endDate)",
                "page",
            )
        if nothing:
            return _answer({"results": [], "total": 0, "totalIsEstimate": False})
        scope = namespace_filter()

        def read(conn: Any) -> tuple[list[dict[str, Any]], int, bool]:
            where, params, reading = search.condition(conn, *scope)
            rows = logs_model.search(
                conn,
                where,
                params,
                offset=offset,
                limit=size,
                ascending=sort != "timestamp:desc",
                reading=reading,
            )
            if len(rows) < size and (rows or offset == 0):
                return rows, offset + len(rows), False
            seen = offset + len(rows)
            if reading != logs_model.PLANNED:
                estimate = logs_model.text_estimate(conn, search, *scope, reading)
                if estimate is not None:
                    return rows, max(estimate, seen), True
            total, estimated = logs_model.count(conn, where, params, reading=reading, at_least=seen)
            return rows, total, estimated

        rows, total, estimated = await db.run(read)
        return _answer(
            {"results": [log_json(r) for r in rows], "total": total, "totalIsEstimate": estimated}
        )

    @routes.get("/api/v1/logs/histogram")
    @access("viewer")
    async def logs_histogram() -> Response:
        """Count log lines per level in time buckets sized from the range."""
        args = [(k, v) for k, v in request.args.items(multi=True) if k not in ("page", "size")]
        now = dt.datetime.now(dt.UTC)
        search, nothing = read_search(args, now)
        scope = namespace_filter()

        def count(
            conn: Any,
        ) -> tuple[dt.datetime, dt.datetime, dt.timedelta, list[tuple[dt.datetime, str, int]]]:
            start, end = search.start, search.end
            where, params, _ = search.condition(conn, *scope) if not nothing else ("false", [], "")
            if start is None or end is None:
                # An open side of the range ends at the first (or last) matching line.
                span = logs_model.time_span(conn, where, params) if not nothing else None
                if start is None:
                    start = span[0] if span else (end or now) - dt.timedelta(days=1)
                if end is None:
                    end = max(now, span[1]) if span else now
            end = max(start, end)
            size = bucket_for(end - start)
            if nothing:
                return start, end, size, []
            # The counts kept per minute and hour when the filters allow, the lines otherwise.
            rows = logs_model.counted_histogram(
                conn, search, *scope, start=start, end=end, bucket=size, origin=ORIGIN
            )
            if rows is None:
                rows = logs_model.histogram(conn, where, params, bucket=size, origin=ORIGIN)
            return start, end, size, rows

        start, end, size, rows = await db.run(count)
        first = ORIGIN + (start - ORIGIN) // size * size
        buckets: dict[dt.datetime, dict[str, int]] = {}
        at = first
        while at <= end:
            buckets[at] = {}
            at += size
        for bucket, level, n in rows:
            buckets.setdefault(bucket, {})[level] = n
        total = sum(n for _, _, n in rows)
        return _answer(
            {
                "interval": duration_text(size),
                "startDate": start,
                "endDate": end,
                "total": total,
                "buckets": [
                    {"date": b, "total": sum(c.values()), "counts": c}
                    for b, c in sorted(buckets.items())
                ],
            }
        )

    def execution_args() -> tuple[list[str], str | None, str | None, int | None]:
        for name in request.args:
            if name not in EXECUTION_PARAMETERS:
                raise _bad(
                    f"Unknown query parameter {name!r}; the logs of an execution take "
                    f"{', '.join(EXECUTION_PARAMETERS)}",
                    name,
                )
        level = min_level(request.args.get("minLevel") or "TRACE")
        attempt = request.args.get("attempt") or None
        return (
            logs_model.levels_from(level),
            _text(request.args.get("taskRunId") or "", "taskRunId") or None,
            _text(request.args.get("taskId") or "", "taskId") or None,
            _int(attempt, "attempt", 0, 1_000_000) if attempt is not None else None,
        )

    async def last_logged(execution_id: str) -> int:
        """The position of the execution's last log event; NotFound for no execution."""
        base = ev.execution_stream(execution_id)
        if not await db.fetchone("SELECT 1 FROM events WHERE stream_id = %s LIMIT 1", (base,)):
            raise NotFound(f"Execution {execution_id} does not exist")
        last = await db.fetchone(
            "SELECT max(seq) AS last FROM events WHERE stream_id > %s AND stream_id < %s"
            " AND type = 'AttemptLogged'",
            (base + "/", base + "0"),
        )
        return int(last["last"]) if last and last["last"] is not None else 0

    async def caught_up(execution_id: str) -> None:
        """Wait (briefly) until the logs read model holds every log event of the execution."""
        wanted = await last_logged(execution_id)
        with trio.move_on_after(CATCH_UP_SECONDS):
            while True:
                seen = ctx.notifier.generation
                if await load_checkpoint(db, "projection:logs") >= wanted:
                    return
                await ctx.notifier.wait(seen, 0.2)

    async def execution_rows(execution_id: str) -> list[dict[str, Any]]:
        levels, task_run_id, task_id, attempt = execution_args()
        await caught_up(execution_id)
        return await db.run(
            lambda conn: logs_model.execution_lines(
                conn,
                execution_id,
                levels,
                task_run_id=task_run_id,
                task_id=task_id,
                attempt=attempt,
            )
        )

    @routes.get("/api/v1/logs/<execution_id>")
    @access("viewer")
    async def execution_logs(execution_id: str) -> Response:
        """The log lines of an execution (minLevel, taskRunId, taskId, attempt)."""
        return _answer([log_json(r) for r in await execution_rows(execution_id)])

    @routes.get("/api/v1/logs/<execution_id>/download")
    @access("viewer")
    async def download_logs(execution_id: str) -> Response:
        """The log lines of an execution as plain text, one per line."""
        rows = await execution_rows(execution_id)
        response = Response(
            "".join(text_line(r) for r in rows), content_type="text/plain; charset=utf-8"
        )
        response.headers["Content-Disposition"] = f'attachment; filename="{execution_id}.log"'
        return response

    @routes.get("/api/v1/logs/<execution_id>/follow")
    @access("viewer")
    async def follow_logs(execution_id: str) -> Response:
        """Server-sent events: the lines logged so far, then each new one until the end."""
        for name in request.args:
            if name != "minLevel":
                raise _bad(f"Unknown query parameter {name!r}; follow takes minLevel", name)
        levels = logs_model.levels_from(min_level(request.args.get("minLevel") or "TRACE"))
        await last_logged(execution_id)  # NotFound here, before the stream begins
        lines = _follow(execution_id, levels)

        async def stream() -> AsyncIterator[bytes]:
            yield b"id: start\ndata: {}\n\n"
            try:
                async for batch in lines:
                    if batch is None:
                        yield b": keep-alive\n\n"
                        continue
                    for row in batch:
                        data = bodies.json_bytes(log_json(row), _default)
                        yield b"id: progress\ndata: " + data + b"\n\n"
                yield b"event: end\nid: end\ndata: {}\n\n"
            finally:
                await lines.aclose()

        response = Response(stream(), content_type="text/event-stream")
        response.timeout = None  # it lasts as long as the execution runs
        response.headers["Cache-Control"] = "no-cache"
        response.headers["X-Accel-Buffering"] = "no"
        return response

    async def _follow(
        execution_id: str, levels: list[str]
    ) -> AsyncIterator[list[dict[str, Any]] | None]:
        """Batches of the execution's lines in order, from the first, as the read model gets
        them; `None` after a quiet `FOLLOW_HEARTBEAT`; done once the execution ended and its
        last line was read."""
        after = (0, -1)
        position = -1
        ended = False
        quiet = 0.0
        while True:
            seen = ctx.notifier.generation
            if not ended:
                now = await _execution_position(execution_id)
                if now != position:
                    position = now
                    ended = (await commands.load_execution(store, execution_id)).terminal
            if ended:
                # Its last line may still be on its way to the read model.
                await caught_up(execution_id)
            while True:
                batch = await db.run(
                    partial(
                        logs_model.lines_after,
                        execution_id=execution_id,
                        levels=levels,
                        after=after,
                        limit=FOLLOW_BATCH,
                    )
                )
                if batch:
                    quiet = 0.0
                    after = (int(batch[-1]["seq"]), int(batch[-1]["line"]))
                    yield batch
                if len(batch) < FOLLOW_BATCH:
                    break
            if ended:
                return
            began = trio.current_time()
            await ctx.notifier.wait(seen, FOLLOW_POLL)
            quiet += trio.current_time() - began
            if quiet >= FOLLOW_HEARTBEAT:
                quiet = 0.0
                yield None

    async def _execution_position(execution_id: str) -> int:
        row = await db.fetchone(
            "SELECT coalesce(max(seq), 0) AS last FROM events WHERE stream_id = %s",
            (ev.execution_stream(execution_id),),
        )
        return int(row["last"]) if row is not None else 0

    return routes
