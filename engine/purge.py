"""Maintenance purges (Kestra's PurgeExecutions, PurgeLogs and PurgeKV tasks).

A purge removes what the read models, internal storage and the KV store show, never an event:
the log stays the audit trail. Each removal is itself recorded, so a read model rebuilt from
position 0 removes the same rows again:

- an execution goes through `ExecutionPurged`, as `DELETE /api/v1/executions/{id}` does;
- log lines go through `LogsPurged`, which names its filters (the logs projection deletes the
  lines recorded before it that match them);
- a KV key goes through `KVDeleted`, as a delete of the key does.

The candidates are read from the read models (executions, logs) as they are when the purge
runs; an execution that has not ended is never purged.
"""

from __future__ import annotations

import datetime as dt
import fnmatch
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import trio

from engine import events as ev
from engine.errors import Conflict, NotFound, WrongExpectedVersion
from engine.plugin import TERMINAL_STATES
from engine.storage import Storage, execution_prefix
from engine.store import NO_STREAM, EventStore

_AFTER_EVERY_STREAM = "\x7f"
"""Sorts after every character of a stream id (stream ids compare bytewise)."""


def logs_condition(event: ev.LogsPurged) -> tuple[str, list[Any]]:
    """The SQL condition on `logs` rows that a `LogsPurged` matches, with its parameters."""
    where = ["TRUE"]
    params: list[Any] = []
    if event.namespace and event.flowId:
        where.append("namespace = %s AND flow_id = %s")
        params += [event.namespace, event.flowId]
    elif event.namespace:
        where.append("(namespace = %s OR starts_with(namespace, %s))")
        params += [event.namespace, event.namespace + "."]
    elif event.flowId:
        where.append("flow_id = %s")
        params.append(event.flowId)
    if event.executionIds:
        where.append("execution_id = ANY(%s::text[])")
        params.append(list(event.executionIds))
    if event.levels:
        where.append("level = ANY(%s::text[])")
        params.append(list(event.levels))
    if event.startDate:
        where.append("timestamp >= %s::timestamptz")
        params.append(event.startDate)
    if event.endDate:
        where.append("timestamp < %s::timestamptz")
        params.append(event.endDate)
    return " AND ".join(where), params


async def _record_once(store: EventStore, stream: str, event: ev.Event, actor: str) -> None:
    """Append `event` as the only event of `stream`; a second run of the same attempt (after
    a lost worker) finds it there and records nothing more."""
    try:
        await store.append(stream, [event], expected_version=NO_STREAM, meta={"actor": actor})
    except WrongExpectedVersion:
        pass


async def purge_logs(
    store: EventStore,
    stream: str,
    *,
    namespace: str | None = None,
    flow_id: str | None = None,
    execution_ids: Sequence[str] = (),
    levels: Sequence[str] = (),
    start_date: dt.datetime | None = None,
    end_date: dt.datetime | None = None,
    actor: str = "api",
) -> int:
    """Delete the matching log lines from the logs read model (recorded as `LogsPurged` on
    `stream`); return how many lines it held."""
    event = ev.LogsPurged(
        namespace=namespace or None,
        flowId=flow_id or None,
        executionIds=list(execution_ids),
        levels=[level.upper() for level in levels],
        startDate=start_date.isoformat() if start_date else None,
        endDate=end_date.isoformat() if end_date else None,
    )
    where, params = logs_condition(event)
    row = await store.db.fetchone(f"SELECT count(*) AS n FROM logs WHERE {where}", params)
    await _record_once(store, stream, event, actor)
    return int(row["n"]) if row else 0


@dataclass
class ExecutionsPurged:
    """What a purge of executions removed (Kestra's output names)."""

    executionsCount: int = 0
    logsCount: int = 0
    storagesCount: int = 0
    metricsCount: int = 0
    """Task metrics have no read model of their own here: they stay in their events."""


async def purge_executions(
    store: EventStore,
    storage: Storage | None,
    stream: str,
    *,
    namespace: str | None = None,
    flow_id: str | None = None,
    states: Sequence[str] = (),
    start_date: dt.datetime | None = None,
    end_date: dt.datetime,
    purge_execution: bool = True,
    purge_log: bool = True,
    purge_storage: bool = True,
    actor: str = "api",
) -> ExecutionsPurged:
    """Purge the ended executions that started at or after `start_date` and ended before
    `end_date`, of `namespace` (and the namespaces under it, unless `flow_id` names one flow)
    and in one of `states` when given."""
    where = ["coalesce(end_date, start_date) < %s", "state = ANY(%s::text[])"]
    ended = sorted(TERMINAL_STATES)
    wanted = [s.upper() for s in states if s.upper() in TERMINAL_STATES] if states else ended
    params: list[Any] = [end_date, wanted]
    if start_date is not None:
        where.append("start_date >= %s")
        params.append(start_date)
    if namespace and flow_id:
        where.append("namespace = %s AND flow_id = %s")
        params += [namespace, flow_id]
    elif namespace:
        where.append("(namespace = %s OR starts_with(namespace, %s))")
        params += [namespace, namespace + "."]
    elif flow_id:
        where.append("flow_id = %s")
        params.append(flow_id)
    rows = await store.db.fetchall(
        f"SELECT id, namespace, flow_id FROM executions WHERE {' AND '.join(where)} ORDER BY id",
        params,
    )
    ids = [str(r["id"]) for r in rows]
    out = ExecutionsPurged()
    if not ids:
        return out
    if purge_log:
        count = await store.db.fetchone(
            "SELECT count(*) AS n FROM logs WHERE execution_id = ANY(%s::text[])", (ids,)
        )
        out.logsCount = int(count["n"]) if count else 0
    if not purge_execution:
        # The executions stay listed; only their logs and files go.
        if purge_log:
            await _record_once(store, stream, ev.LogsPurged(executionIds=ids), actor)
        if purge_storage and storage is not None:
            for r in rows:
                prefix = execution_prefix(str(r["namespace"]), str(r["flow_id"]), str(r["id"]))
                out.storagesCount += await trio.to_thread.run_sync(storage.delete_prefix, prefix)
        return out
    from engine.commands import purge_execution as purge_one

    for execution_id in ids:
        try:
            out.storagesCount += await purge_one(
                store, storage, execution_id, logs=purge_log, files=purge_storage, actor=actor
            )
        except (NotFound, Conflict):
            continue  # purged meanwhile (the read model lags), or running again: left alone
        out.executionsCount += 1
    return out


async def purge_kv(
    store: EventStore,
    *,
    namespaces: Sequence[str] = (),
    namespace_pattern: str | None = None,
    include_children: bool = True,
    key_pattern: str | None = None,
    expired_only: bool = True,
    skip_prefix: str | None = None,
    now: dt.datetime | None = None,
    actor: str = "api",
) -> int:
    """Delete the KV keys of the matching namespaces (every namespace when none is named)
    whose key matches `key_pattern` (a glob); only the expired ones when `expired_only`.
    Return how many keys were deleted."""
    moment = now or dt.datetime.now(dt.UTC)
    every = ev.kv_stream("", "").split("/")[0]  # KV streams are `kv:<namespace>/<key>`
    # Named namespaces: only their range of streams (and those sharing their prefix, which
    # are told apart below); otherwise every key's stream.
    starts = [every + n for n in namespaces] if namespaces and not namespace_pattern else [every]
    rows = []
    for low in starts:
        rows += await store.db.fetchall(
            "SELECT DISTINCT ON (stream_id) stream_id, version, data::text AS data FROM events"
            " WHERE stream_id >= %s AND stream_id < %s ORDER BY stream_id DESC, version DESC",
            (low, low + _AFTER_EVERY_STREAM),
        )

    def namespace_matches(namespace: str) -> bool:
        if namespace_pattern:
            return fnmatch.fnmatchcase(namespace, namespace_pattern)
        if not namespaces:
            return True
        return any(
            namespace == n or (include_children and namespace.startswith(n + "."))
            for n in namespaces
        )

    deleted = 0
    for row in rows:
        last = ev.decode(row["data"])
        if not isinstance(last, ev.KVSet):
            continue  # deleted already
        if skip_prefix and last.key.startswith(skip_prefix):
            continue
        if not namespace_matches(last.namespace):
            continue
        if key_pattern and not fnmatch.fnmatchcase(last.key, key_pattern):
            continue
        expired = bool(last.expiresAt) and dt.datetime.fromisoformat(str(last.expiresAt)) <= moment
        if expired_only and not expired:
            continue
        try:
            # At the version read: a key written meanwhile keeps its new value.
            await store.append(
                str(row["stream_id"]),
                [ev.KVDeleted(namespace=last.namespace, key=last.key)],
                expected_version=int(row["version"]),
                meta={"actor": actor},
            )
        except WrongExpectedVersion:
            continue
        deleted += 1
    return deleted
