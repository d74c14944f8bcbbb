"""Time travel: executions and flows as they stood at any past moment, and an execution's
timeline, folded from their streams.

A moment is a position of the log (`seq`) or a time; a time stands for the last position
recorded at or before it (times compared at the millisecond, as the API writes them, so a time
copied from an answer includes the event it was copied from). Everything here is a pure
function of a stream already read: the API reads the stream, these fold it.
"""

from __future__ import annotations

import datetime as dt
import difflib
from collections.abc import Sequence
from typing import Any

import msgspec

from engine import events as ev
from engine.errors import InvalidRequest, NotFound, Problem
from engine.execution import Execution, evolve, iso
from engine.executor_shell import INPUT_TYPES, recorded
from engine.store import StoredEvent

MAX_POSITION = 2**63 - 1


class AsOf(msgspec.Struct, frozen=True):
    """A past moment: a position of the log, or a time (aware, UTC)."""

    position: int | None = None
    time: dt.datetime | None = None

    def describe(self) -> str:
        """The moment as a person reads it in a message."""
        if self.position is not None:
            return f"position {self.position}"
        assert self.time is not None
        return iso(self.time)


def parse_as_of(text: str, name: str = "asOf") -> AsOf:
    """`asOf` as given: a position (a positive integer) or an ISO-8601 time (`Z` or an offset;
    without one, UTC)."""
    raw = text.strip()
    if raw.isdigit():
        position = int(raw)
        if not 1 <= position <= MAX_POSITION:
            raise InvalidRequest(
                f"Query parameter '{name}' must be a position from 1 to {MAX_POSITION}, "
                f"got {text[:40]!r}",
                [Problem("position out of range", name)],
            )
        return AsOf(position=position)
    try:
        at = dt.datetime.fromisoformat(raw.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise InvalidRequest(
            f"Query parameter '{name}' must be a position (an event's position, as the "
            f"timeline lists them) or an ISO-8601 time such as 2024-05-01T12:00:00Z, got "
            f"{text[:60]!r}",
            [Problem("neither a position nor an ISO-8601 time", name)],
        ) from None
    if at.tzinfo is None:
        at = at.replace(tzinfo=dt.UTC)
    return AsOf(time=at.astimezone(dt.UTC))


def _millis(at: dt.datetime) -> dt.datetime:
    return at.replace(microsecond=at.microsecond // 1000 * 1000)


def up_to(history: Sequence[StoredEvent], point: AsOf) -> list[StoredEvent]:
    """The events of `history` recorded at or before `point`, in order."""
    if point.position is not None:
        return [e for e in history if e.seq <= point.position]
    assert point.time is not None
    return [e for e in history if _millis(e.recorded_at) <= point.time]


def position_at(history: Sequence[StoredEvent], point: AsOf) -> int | None:
    """The position of the last event of `history` at or before `point` (None: none was)."""
    kept = up_to(history, point)
    return max((e.seq for e in kept), default=None)


def execution_position(history: Sequence[StoredEvent], execution_id: str, point: AsOf) -> int:
    """The position to fold an execution's `history` up to for `point`; NotFound (saying when
    it was created) when it did not exist yet then."""
    position = position_at(history, point)
    if position is None:
        first = history[0] if history else None
        raise NotFound(
            f"Execution {execution_id} did not exist yet at {point.describe()}"
            + (
                f": it was created at position {first.seq} ({iso(first.recorded_at)})"
                if first
                else ""
            )
        )
    return position


# --- flows ---------------------------------------------------------------------------------------


class FlowAsOf(msgspec.Struct, frozen=True):
    """A flow as it stood at a moment: its revision then, whether it was deleted, and the
    event (position, time, actor) that made it so."""

    namespace: str
    id: str
    revision: int
    source: str
    deleted: bool
    updated: dt.datetime
    position: int
    actor: str | None


def fold_flow(history: Sequence[StoredEvent]) -> FlowAsOf | None:
    """A flow's stream folded: its latest revision (None when it had none yet)."""
    state: FlowAsOf | None = None
    for e in history:
        event = e.event
        actor = e.meta.get("actor")
        if isinstance(event, (ev.FlowCreated, ev.FlowUpdated)):
            state = FlowAsOf(
                event.namespace,
                event.flowId,
                event.revision,
                event.source,
                False,
                e.recorded_at,
                e.seq,
                actor,
            )
        elif isinstance(event, ev.FlowDeleted) and state is not None:
            state = msgspec.structs.replace(
                state,
                revision=event.revision,
                deleted=True,
                updated=e.recorded_at,
                position=e.seq,
                actor=actor,
            )
    return state


def flow_as_of(
    history: Sequence[StoredEvent], namespace: str, flow_id: str, point: AsOf
) -> FlowAsOf:
    """The flow as it stood at `point`; NotFound (saying when it was first deployed) when it
    did not exist yet then."""
    found = fold_flow(up_to(history, point))
    if found is not None:
        return found
    first = fold_flow(history[:1])
    if first is None:
        raise NotFound(f"Flow {namespace}.{flow_id} does not exist")
    raise NotFound(
        f"Flow {namespace}.{flow_id} did not exist yet at {point.describe()}: its first "
        f"revision was deployed at position {first.position} ({iso(first.updated)})"
    )


class Revision(msgspec.Struct, frozen=True):
    """One deployed revision of a flow, and who deployed it."""

    revision: int
    source: str
    position: int
    time: dt.datetime
    actor: str | None
    client_address: str | None
    reason: str | None


def revisions(history: Sequence[StoredEvent]) -> list[Revision]:
    """Every deployed revision of a flow's stream (deletions are no revision), oldest first."""
    out = []
    for e in history:
        event = e.event
        if isinstance(event, (ev.FlowCreated, ev.FlowUpdated)):
            out.append(
                Revision(
                    event.revision,
                    event.source,
                    e.seq,
                    e.recorded_at,
                    e.meta.get("actor"),
                    e.meta.get("clientAddress"),
                    e.meta.get("reason"),
                )
            )
    return out


def revision_diff(
    history: Sequence[StoredEvent], namespace: str, flow_id: str, a: int, b: int
) -> tuple[Revision, Revision, str]:
    """Revisions `a` and `b` of a flow and the unified line diff of their sources (from `a`
    to `b`); NotFound naming the revisions there are when one is unknown."""
    known = {r.revision: r for r in revisions(history)}
    if not known:
        raise NotFound(f"Flow {namespace}.{flow_id} does not exist")
    missing = [n for n in (a, b) if n not in known]
    if missing:
        raise NotFound(
            f"Flow {namespace}.{flow_id} has no revision {missing[0]}; its revisions are "
            + ", ".join(str(n) for n in sorted(known))
        )
    old, new = known[a], known[b]
    diff = difflib.unified_diff(
        old.source.splitlines(keepends=True),
        new.source.splitlines(keepends=True),
        fromfile=f"{namespace}.{flow_id} revision {a}",
        tofile=f"{namespace}.{flow_id} revision {b}",
    )
    # A last line without a newline still ends its line of the diff.
    text = "".join(line if line.endswith("\n") else line + "\n" for line in diff)
    return old, new, text


# --- an execution's timeline --------------------------------------------------------------------


class TimelineEntry(msgspec.Struct, frozen=True, omit_defaults=True):
    """One event of an execution (or of one of its attempts) and what it changed."""

    position: int
    time: str
    type: str
    stream: str
    actor: str | None
    summary: str
    """What changed, in a few words."""
    executionState: dict[str, str] | None = None
    """`{from, to}` when the execution's state moved."""
    taskRunId: str | None = None
    taskId: str | None = None
    attempt: int | None = None
    taskRunState: dict[str, str] | None = None
    """`{from, to}` when the task run's state moved."""
    reason: str | None = None
    clientAddress: str | None = None


_ATTEMPT_ENDS = {
    "AttemptSucceeded": "ended",
    "AttemptFailed": "failed",
    "AttemptKilled": "was killed",
    "AttemptAbandoned": "was abandoned",
}


def timeline(history: Sequence[StoredEvent]) -> list[TimelineEntry]:
    """One entry per event of an execution's history (as `read_execution` gives it), in log
    order: its position, time, actor, type and what it changed. State moves are those of the
    execution folded event by event, as `?asOf=` shows it at each position."""
    times = {e.seq: e.recorded_at for e in history}
    state: Execution | None = None
    out = []
    for e in history:
        before = state
        if e.type in INPUT_TYPES:
            r = recorded(e)
            at = times.get(r.decided_by, r.at) if r.decided_by is not None else r.at
            state = evolve(state, r.event, at)
        event = e.event
        run_id: str | None = getattr(event, "taskRunId", None)
        moved = None
        if state is not None and (before is None or before.state != state.state):
            moved = {"from": before.state if before else "", "to": state.state}
        run_moved = _run_move(before, state, run_id)
        run = state.taskruns.get(run_id) if state is not None and run_id else None
        task_id = run.taskId if run is not None else getattr(event, "taskId", None) or None
        attempt = getattr(event, "attempt", None) if e.type.startswith("Attempt") else None
        label = f"task run {task_id or run_id}" + (
            f" [{run.value}]" if run is not None and run.value else ""
        )
        summary = _summary(e.type, event, label, attempt, moved, run_moved)
        reason = e.meta.get("reason")
        address = e.meta.get("clientAddress")
        out.append(
            TimelineEntry(
                position=e.seq,
                time=iso(e.recorded_at),
                type=e.type,
                stream=e.stream_id,
                actor=e.meta.get("actor"),
                summary=summary,
                executionState=moved,
                taskRunId=run_id,
                taskId=task_id,
                attempt=attempt if isinstance(attempt, int) else None,
                taskRunState=run_moved,
                reason=reason if isinstance(reason, str) else None,
                clientAddress=address if isinstance(address, str) else None,
            )
        )
    return out


def _run_move(
    before: Execution | None, after: Execution | None, run_id: str | None
) -> dict[str, str] | None:
    if after is None or run_id is None or run_id not in after.taskruns:
        return None
    old = before.taskruns.get(run_id) if before is not None else None
    new = after.taskruns[run_id]
    if old is not None and old.state == new.state:
        return None
    return {"from": old.state if old is not None else "", "to": new.state}


def _summary(
    name: str,
    event: ev.Event,
    label: str,
    attempt: int | None,
    moved: dict[str, str] | None,
    run_moved: dict[str, str] | None,
) -> str:
    """What an event changed, in a few words."""
    text: str
    if isinstance(event, ev.ExecutionCreated):
        text = (
            f"execution created from flow {event.namespace}.{event.flowId} revision "
            f"{event.flowRevision}"
            + (f" by trigger {event.trigger.get('id')}" if event.trigger else "")
            + (f", replaying {event.originalId}" if event.originalId else "")
        )
    elif isinstance(event, ev.ExecutionStateChanged):
        text = f"execution {moved['from']} → {moved['to']}" if moved else "execution state kept"
        if event.message:
            text += f": {_short(event.message)}"
    elif isinstance(event, ev.TaskRunCreated):
        text = f"{label} created"
    elif isinstance(event, ev.TaskRunStateChanged):
        text = f"{label} " + (
            f"{run_moved['from']} → {run_moved['to']}" if run_moved else f"stays {event.state}"
        )
    elif isinstance(event, ev.AttemptScheduled):
        text = f"attempt {event.attempt} of {label} scheduled"
    elif isinstance(event, ev.AttemptClaimed):
        text = f"attempt {event.attempt} of {label} claimed by worker {event.workerId}"
    elif name in _ATTEMPT_ENDS:
        text = f"attempt {attempt} of {label} {_ATTEMPT_ENDS[name]}"
        if isinstance(event, ev.AttemptSucceeded):
            text += f" in {event.state}"
        message = getattr(event, "message", None) or getattr(event, "reason", None)
        if message:
            text += f": {_short(message)}"
    elif isinstance(event, ev.AttemptLogged):
        text = f"{len(event.lines)} log line(s) from attempt {event.attempt} of {label}"
    elif isinstance(event, ev.ExecutionKillRequested):
        text = "kill requested"
    elif isinstance(event, ev.ExecutionResumeRequested):
        keys = ", ".join(sorted(event.inputs)) if event.inputs else ""
        text = "resume requested" + (f" with inputs {keys}" if keys else "")
    elif isinstance(event, ev.ExecutionLabelsChanged):
        text = "labels set: " + ", ".join(f"{x.get('key')}={x.get('value')}" for x in event.labels)
    elif isinstance(event, ev.TaskRunRestarted):
        text = f"{label} restarted"
    elif isinstance(event, ev.ExecutionRetried):
        text = f"retried as execution {event.newExecutionId} (attempt {event.attempt})"
    elif isinstance(event, ev.ExecutionPurged):
        text = "execution purged"
    elif isinstance(event, ev.TimerScheduled):
        text = f"timer {event.timerId} set for {event.fireAt}"
    elif isinstance(event, ev.TimerFired):
        text = f"timer {event.timerId} fired"
    elif isinstance(event, ev.SubflowExecutionRequested):
        text = f"{label} starts subflow {event.namespace}.{event.flowId} ({event.childId})"
    elif isinstance(event, ev.SubflowExecutionEnded):
        text = f"subflow execution {event.childId} of {label} ended in {event.state}"
    elif name in _COMMANDS:
        text = _COMMANDS[name] + _fields(event, ("newExecutionId", "taskRunId", "state"))
        reason = getattr(event, "reason", None)
        if reason:
            text += f": {_short(str(reason))}"
    else:
        text = _generic(name, event)
        if moved:
            text += f"; execution {moved['from']} → {moved['to']}"
        if run_moved:
            text += f"; {label} {run_moved['from']} → {run_moved['to']}"
        return text
    if run_moved and not isinstance(event, (ev.TaskRunCreated, ev.TaskRunStateChanged)):
        text += f" ({label} {run_moved['from'] or 'new'} → {run_moved['to']})"
    if moved and not isinstance(event, (ev.ExecutionCreated, ev.ExecutionStateChanged)):
        text += f" (execution {moved['from']} → {moved['to']})"
    return text


_COMMANDS = {
    "ExecutionReplayed": "replayed",
    "ExecutionRestarted": "restarted",
    "ExecutionPauseRequested": "pause requested",
    "TaskRunStateForced": "task run state changed by hand",
}
"""Commands on an execution recorded by event types newer than this module's other words."""


def _fields(event: ev.Event, names: tuple[str, ...]) -> str:
    found = [f"{n}={getattr(event, n)}" for n in names if getattr(event, n, None)]
    return f" ({', '.join(found)})" if found else ""


def _short(text: str, limit: int = 200) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _generic(name: str, event: ev.Event) -> str:
    """An event this module has no words for (a newer type): its name and small fields."""
    data: Any = msgspec.to_builtins(event)
    parts = []
    if isinstance(data, dict):
        for key, value in data.items():
            if key in ("type", "executionId") or not isinstance(value, (str, int, bool)):
                continue
            parts.append(f"{key}={_short(str(value), 60)}")
    return name + (f" ({', '.join(parts[:4])})" if parts else "")
