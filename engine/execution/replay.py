"""Replay of recorded histories: the state an executor held at any point, and the check that
the current code decides again exactly what was recorded."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

import msgspec

from engine import events as ev
from engine.execution.planner import decide
from engine.execution.state import Execution, evolve


class Recorded(msgspec.Struct, frozen=True):
    """A recorded event as the replay needs it."""

    seq: int
    event: ev.Event
    at: dt.datetime
    decided_by: int | None
    """The position of the event this one was decided for, when the executor wrote it."""


class Mismatch(msgspec.Struct, frozen=True):
    """Where a replay departs from the record: decisions not made again, or a final state that
    depends on the order the facts were applied in."""

    cause: int
    """The position of the first event at which the replay diverges."""
    recorded: list[str]
    replayed: list[str]
    kind: str = "decisions"
    """`decisions` or `state`."""


def replay(history: Sequence[Recorded], *, before: int | None = None) -> Execution | None:
    """The state an executor held just before handling position `before` (default: the end).

    Decided events are applied right after their cause, as the executor did when it decided
    them, wherever they landed in the log.
    """
    state, _ = _replay(history, before=before, check=False)
    return state


def as_of(history: Sequence[Recorded], seq: int) -> Execution | None:
    """The state as the log stood at position `seq`: every event up to it, in log order.

    Unlike `replay(before=...)`, decisions recorded after `seq` are left out even when their
    cause came before it. Decided events carry their cause's time, as in `replay`.
    """
    times = {r.seq: r.at for r in history}
    state: Execution | None = None
    for r in history:
        if r.seq > seq:
            break
        at = times.get(r.decided_by, r.at) if r.decided_by is not None else r.at
        state = evolve(state, r.event, at)
    return state


def verify(history: Sequence[Recorded]) -> tuple[Execution | None, list[Mismatch]]:
    """Refold `history` and decide again at every input event: the decisions must be the
    same, and the state folded with decisions in place must equal the state folded in log
    order (histories, attempts, outputs, labels, timers: everything)."""
    state, mismatches = _replay(history, before=None, check=True)
    if history:
        in_log_order = as_of(history, history[-1].seq)
        if comparable(state) != comparable(in_log_order):
            recorded, replayed = _differences(comparable(in_log_order), comparable(state))
            mismatches.append(Mismatch(history[-1].seq, recorded, replayed, kind="state"))
    return state, mismatches


def comparable(state: Execution | None) -> dict[str, Any] | None:
    """The state as plain data, for comparison (the parsed flow is the recorded one)."""
    if state is None:
        return None
    data: dict[str, Any] = msgspec.to_builtins(
        msgspec.structs.replace(state, definition=None), order="sorted"
    )
    return data


def _differences(
    recorded: dict[str, Any] | None, replayed: dict[str, Any] | None
) -> tuple[list[str], list[str]]:
    if recorded is None or replayed is None:
        return [repr(recorded)], [repr(replayed)]
    keys = sorted(set(recorded) | set(replayed))
    changed = [k for k in keys if recorded.get(k) != replayed.get(k)]
    enc = msgspec.json.encode
    return (
        [f"{k}: {enc(recorded.get(k)).decode()[:2000]}" for k in changed],
        [f"{k}: {enc(replayed.get(k)).decode()[:2000]}" for k in changed],
    )


def _replay(
    history: Sequence[Recorded], *, before: int | None, check: bool
) -> tuple[Execution | None, list[Mismatch]]:
    decided: dict[int, list[ev.Event]] = {}
    for r in history:
        if r.decided_by is not None:
            decided.setdefault(r.decided_by, []).append(r.event)
    state: Execution | None = None
    mismatches: list[Mismatch] = []
    for r in history:
        if r.decided_by is not None:
            continue
        if before is not None and r.seq >= before:
            break
        state = evolve(state, r.event, r.at)
        recorded = decided.get(r.seq, [])
        if check:
            again = decide(state, r.event, r.at)
            if again != recorded:
                mismatches.append(
                    Mismatch(
                        r.seq,
                        [ev.encode(e).decode() for e in recorded],
                        [ev.encode(e).decode() for e in again],
                    )
                )
        for new in recorded:
            state = evolve(state, new, r.at)
    return state, mismatches
