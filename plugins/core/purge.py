"""Kestra's maintenance tasks: `PurgeExecutions`, `PurgeLogs` and `PurgeKV`.

A purge removes what the read models, internal storage and the KV store show; the events stay,
as the audit trail (see engine/purge.py).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from engine.plugin import RunContext, RunnableTask, TaskFailure, register
from plugins.core.state import STATE_PREFIX

EXECUTION_STATES = (
    "CREATED", "SUBMITTED", "RUNNING", "PAUSED", "RESTARTED", "KILLING", "SUCCESS", "WARNING",
    "FAILED", "KILLED", "CANCELLED", "QUEUED", "RETRYING", "RETRIED", "SKIPPED", "BREAKPOINT",
    "RESUBMITTED",
)  # fmt: skip
"""The states Kestra accepts in `states` (only ended executions are ever purged)."""
LOG_LEVELS = ("ERROR", "WARN", "INFO", "DEBUG", "TRACE")


def _templated(value: Any) -> bool:
    return isinstance(value, str) and "{{" in value


async def _text(ctx: RunContext, value: Any) -> str | None:
    if value is None:
        return None
    rendered = await ctx.render_async(value)
    return str(rendered) if rendered not in (None, "") else None


async def _date(ctx: RunContext, value: Any, name: str) -> dt.datetime | None:
    """A date bound, rendered: an ISO-8601 date-time (UTC when it names no offset) or a date."""
    text = await _text(ctx, value)
    if text is None:
        return None
    try:
        moment = dt.datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise TaskFailure(
            f"`{name}` must be an ISO-8601 date-time such as 2024-01-31T00:00:00Z, not {text!r}"
        ) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)


async def _flag(ctx: RunContext, value: Any, name: str) -> bool:
    rendered = await ctx.render_async(value)
    if isinstance(rendered, bool):
        return rendered
    text = str(rendered).strip().lower()
    if text not in ("true", "false"):
        raise TaskFailure(f"`{name}` must be true or false, not {rendered!r}")
    return text == "true"


async def _list(ctx: RunContext, value: Any) -> list[str]:
    rendered = await ctx.render_async(value)
    if rendered is None:
        return []
    items = rendered if isinstance(rendered, list) else [rendered]
    return [str(item) for item in items]


def _check_choices(field: str, values: Any, allowed: tuple[str, ...]) -> list[tuple[str, str]]:
    if not isinstance(values, list):
        return []
    wrong = [v for v in values if not _templated(v) and str(v).upper() not in allowed]
    if not wrong:
        return []
    return [(field, f"Unknown value(s) {', '.join(map(str, wrong))}; use {', '.join(allowed)}")]


def _check_flag(field: str, value: Any) -> list[tuple[str, str]]:
    if isinstance(value, bool) or _templated(value):
        return []
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return []
    return [(field, f"`{field}` must be true or false, not {value!r}")]


@register("io.kestra.plugin.core.execution.PurgeExecutions")
class PurgeExecutions(RunnableTask, kw_only=True):
    """Purge ended executions: their rows in the executions list, their logs and their files.

    Outputs `executionsCount`, `logsCount`, `storagesCount` and `metricsCount` (always 0:
    task metrics have no table of their own and stay in the event log). The events stay as the
    audit trail; an execution that has not ended is never purged."""

    endDate: str
    """Purge the executions that ended before this date-time (templates rendered, e.g.
    `{{ now() | dateAdd(-1, 'MONTHS') }}`)."""
    startDate: str | None = None
    """Only the executions that started at or after this date-time."""
    namespace: str | None = None
    """The namespace and those under it; with `flowId`, that flow's namespace."""
    flowId: str | None = None
    """Only this flow's executions (needs `namespace`)."""
    states: list[str] | None = None
    """Only executions in these states (default: every ended state)."""
    purgeExecution: Any = True
    """Remove the executions from the executions list (false: only their logs and files)."""
    purgeLog: Any = True
    """Remove their log lines."""
    purgeMetric: Any = True
    """Accepted as in Kestra: metrics are kept in the event log only, nothing to remove."""
    purgeStorage: Any = True
    """Remove their files from internal storage."""
    batchSize: Any = 100
    """Accepted as in Kestra (executions are purged one by one)."""

    def problems(self) -> list[tuple[str, str]]:
        found = _check_choices("states", self.states, EXECUTION_STATES)
        for field in ("purgeExecution", "purgeLog", "purgeMetric", "purgeStorage"):
            found += _check_flag(field, getattr(self, field))
        if self.flowId and not self.namespace:
            found.append(("flowId", "`flowId` needs the flow's `namespace`"))
        return found

    async def run(self, ctx: RunContext) -> dict[str, Any]:
        end = await _date(ctx, self.endDate, "endDate")
        if end is None:
            raise TaskFailure("`endDate` is required: the date-time before which to purge")
        states = [s.upper() for s in await _list(ctx, self.states)]
        unknown = [s for s in states if s not in EXECUTION_STATES]
        if unknown:
            raise TaskFailure(f"Unknown state(s) {', '.join(unknown)} in `states`")
        counts = await ctx.purge_executions(
            namespace=await _text(ctx, self.namespace),
            flow_id=await _text(ctx, self.flowId),
            states=states,
            start_date=await _date(ctx, self.startDate, "startDate"),
            end_date=end,
            purge_execution=await _flag(ctx, self.purgeExecution, "purgeExecution"),
            purge_log=await _flag(ctx, self.purgeLog, "purgeLog"),
            purge_storage=await _flag(ctx, self.purgeStorage, "purgeStorage"),
        )
        ctx.log(
            "INFO",
            f"Purged {counts['executionsCount']} execution(s), {counts['logsCount']} log "
            f"line(s), {counts['storagesCount']} file(s)",
        )
        return counts


@register("io.kestra.plugin.core.log.PurgeLogs")
class PurgeLogs(RunnableTask, kw_only=True):
    """Purge log lines in bulk; output `count`, the lines removed. The events that logged
    them stay as the audit trail."""

    endDate: str
    """Purge the lines logged before this date-time (templates rendered)."""
    startDate: str | None = None
    """Only the lines logged at or after this date-time."""
    namespace: str | None = None
    """The namespace and those under it; with `flowId`, that flow's namespace."""
    flowId: str | None = None
    """Only this flow's lines (needs `namespace`)."""
    executionId: str | None = None
    """Only this execution's lines."""
    logLevels: list[str] | None = None
    """Only lines at these levels (default: every level), e.g. all but ERROR."""

    def problems(self) -> list[tuple[str, str]]:
        found = _check_choices("logLevels", self.logLevels, LOG_LEVELS)
        if self.flowId and not self.namespace:
            found.append(("flowId", "`flowId` needs the flow's `namespace`"))
        return found

    async def run(self, ctx: RunContext) -> dict[str, Any]:
        end = await _date(ctx, self.endDate, "endDate")
        if end is None:
            raise TaskFailure("`endDate` is required: the date-time before which to purge")
        levels = [level.upper() for level in await _list(ctx, self.logLevels)]
        execution = await _text(ctx, self.executionId)
        count = await ctx.purge_logs(
            namespace=await _text(ctx, self.namespace),
            flow_id=await _text(ctx, self.flowId),
            execution_ids=[execution] if execution else [],
            levels=levels,
            start_date=await _date(ctx, self.startDate, "startDate"),
            end_date=end,
        )
        ctx.log("INFO", f"Purged {count} log line(s)")
        return {"count": count}


@register("io.kestra.plugin.core.kv.PurgeKV")
class PurgeKV(RunnableTask, kw_only=True):
    """Delete KV keys across namespaces: by default only the expired ones; output `size`,
    the keys deleted. Each deletion is recorded as a delete of the key would be."""

    namespaces: list[str] | None = None
    """The namespaces whose keys to delete (default: every namespace)."""
    namespacePattern: str | None = None
    """A glob over namespace names (`company.*`), instead of `namespaces`."""
    includeChildNamespaces: Any = True
    """Also the namespaces under each of `namespaces` (`company` includes `company.team`)."""
    keyPattern: str | None = None
    """Only keys matching this glob (`AI_*`)."""
    behavior: dict[str, Any] | None = None
    """How keys are chosen: `{type: key, expiredOnly: true}` (the default) deletes the expired
    keys only; `expiredOnly: false` deletes every matching key."""
    expiredOnly: Any = None
    """Deprecated in Kestra: when set, it overrides `behavior.expiredOnly`."""

    def problems(self) -> list[tuple[str, str]]:
        found: list[tuple[str, str]] = []
        if self.namespaces and self.namespacePattern:
            found.append(("namespacePattern", "Give `namespaces` or `namespacePattern`, not both"))
        kind = (self.behavior or {}).get("type", "key")
        if not _templated(kind) and str(kind).lower() != "key":
            found.append(("behavior.type", f"Only the `key` behavior is supported, not {kind!r}"))
        if self.expiredOnly is not None:
            found += _check_flag("expiredOnly", self.expiredOnly)
        return found

    async def run(self, ctx: RunContext) -> dict[str, Any]:
        behavior = self.behavior or {}
        expired_only: Any = behavior.get("expiredOnly", True)
        if self.expiredOnly is not None:
            expired_only = self.expiredOnly
        size = await ctx.purge_kv(
            namespaces=await _list(ctx, self.namespaces),
            namespace_pattern=await _text(ctx, self.namespacePattern),
            include_children=await _flag(
                ctx, self.includeChildNamespaces, "includeChildNamespaces"
            ),
            key_pattern=await _text(ctx, self.keyPattern),
            expired_only=await _flag(ctx, expired_only, "expiredOnly"),
            skip_prefix=STATE_PREFIX,  # the state.* tasks' keys are theirs to delete
        )
        ctx.log("INFO", f"Purged {size} KV key(s)")
        return {"size": size}
