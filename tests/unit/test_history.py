"""The pure parts of time travel and of the audit trail: what `asOf` accepts, a flow folded up
to a moment, revision diffs, and which recorded events are commands worth an audit entry."""

from __future__ import annotations

import datetime as dt

import pytest

from engine import audit, history
from engine import events as ev
from engine.errors import InvalidRequest, NotFound
from engine.store import StoredEvent

T0 = dt.datetime(2024, 5, 1, 12, 0, 0, 123456, tzinfo=dt.UTC)


def _stored(seq: int, event: ev.AnyEvent, actor: str = "user:alice", **meta: str) -> StoredEvent:
    stream = ev.flow_stream("company.team", "hello")
    return StoredEvent(
        seq,
        stream,
        seq,
        type(event).__name__,
        event,
        {"actor": actor, **meta},
        T0 + dt.timedelta(seconds=seq),
    )


def _flow_history() -> list[StoredEvent]:
    one = "id: hello\nnamespace: company.team\ntasks: []\n"
    two = "id: hello\nnamespace: company.team\ndescription: two\ntasks: []"
    return [
        _stored(
            10, ev.FlowCreated(namespace="company.team", flowId="hello", revision=1, source=one)
        ),
        _stored(
            20,
            ev.FlowUpdated(namespace="company.team", flowId="hello", revision=2, source=two),
            "token:ci (abc)",
            reason="OPS-1",
        ),
        _stored(30, ev.FlowDeleted(namespace="company.team", flowId="hello", revision=3)),
    ]


def test_as_of_takes_a_position_or_an_iso_time_and_refuses_anything_else() -> None:
    assert history.parse_as_of("42") == history.AsOf(position=42)
    assert history.parse_as_of("2024-05-01T12:00:00Z").time == dt.datetime(
        2024, 5, 1, 12, tzinfo=dt.UTC
    )
    assert history.parse_as_of("2024-05-01T14:00:00+02:00").time == dt.datetime(
        2024, 5, 1, 12, tzinfo=dt.UTC
    )
    assert history.parse_as_of("2024-05-01T12:00:00").time == dt.datetime(
        2024, 5, 1, 12, tzinfo=dt.UTC
    )
    for bad in ("0", "-1", "soon", "2024-02-30", str(2**63)):
        with pytest.raises(InvalidRequest, match="asOf"):
            history.parse_as_of(bad)


def test_a_flow_folded_to_a_moment_has_the_revision_of_then() -> None:
    events = _flow_history()
    at = history.AsOf
    assert history.flow_as_of(events, "company.team", "hello", at(position=19)).revision == 1
    second = history.flow_as_of(events, "company.team", "hello", at(position=20))
    assert (second.revision, second.deleted, second.actor) == (2, False, "token:ci (abc)")
    gone = history.flow_as_of(events, "company.team", "hello", at(position=99))
    assert gone.deleted and "description: two" in gone.source
    # A time written at the millisecond (as answers write it) includes its event.
    written = history.parse_as_of(history.iso(events[1].recorded_at))
    assert history.flow_as_of(events, "company.team", "hello", written).revision == 2
    with pytest.raises(NotFound, match="did not exist yet at position 9: its first revision"):
        history.flow_as_of(events, "company.team", "hello", at(position=9))
    with pytest.raises(NotFound, match="does not exist"):
        history.flow_as_of([], "company.team", "nope", at(position=9))


def test_revision_diff_is_a_unified_line_diff_with_who_made_each() -> None:
    old, new, diff = history.revision_diff(_flow_history(), "company.team", "hello", 1, 2)
    assert (old.actor, new.actor, new.reason) == ("user:alice", "token:ci (abc)", "OPS-1")
    assert "+description: two\n" in diff and diff.endswith("tasks: []\n")
    with pytest.raises(NotFound, match="no revision 3; its revisions are 1, 2"):
        history.revision_diff(_flow_history(), "company.team", "hello", 1, 3)


def test_only_commands_are_audit_entries_whoever_the_engine_component() -> None:
    stream = ev.execution_stream("x1")
    kill = ev.ExecutionKillRequested(executionId="x1")
    meta = {"actor": "user:bob", "clientAddress": "10.0.0.1", "reason": "stuck"}
    entry = audit.entry(stream, "ExecutionKillRequested", kill, meta, "company.team")
    assert entry is not None
    assert (entry.kind, entry.resource_id, entry.namespace, entry.action) == (
        "execution",
        "x1",
        "company.team",
        "kill",
    )
    assert (entry.client_address, entry.reason) == ("10.0.0.1", "stuck")
    # The engine's own reactions are no command.
    labels = ev.ExecutionLabelsChanged(executionId="x1", labels=[])
    assert audit.entry(stream, "ExecutionLabelsChanged", labels, {"actor": "executor"}) is None
    assert audit.entry(stream, "ExecutionLabelsChanged", labels, {"actor": "user:bob"}) is not None
    moved = ev.ExecutionStateChanged(executionId="x1", state="FAILED")
    assert audit.entry(stream, "ExecutionStateChanged", moved, {"actor": "user:bob"}) is None
    for engine_actor in ("executor:subflow", "worker:abc", "timers", "watchdog"):
        assert audit.is_engine_actor(engine_actor)
    assert not audit.is_engine_actor("executorial") and not audit.is_engine_actor("scheduler")
    # An execution is audited whoever created it; an event without an actor never is.
    created = ev.ExecutionCreated(
        executionId="x2", namespace="a.b", flowId="f", flowRevision=1, flow={}
    )
    child = audit.entry(
        ev.execution_stream("x2"), "ExecutionCreated", created, {"actor": "executor:subflow"}
    )
    assert child is not None and child.namespace == "a.b" and "flow" not in child.details
    assert audit.entry(stream, "ExecutionKillRequested", kill, {}) is None
    # Logins are the user's (or token's), KV keys are named within their namespace.
    login = ev.LoginRefused(principal="token:ab12", method="bearer", reason="expired")
    refused = audit.entry("login:token:ab12", "LoginRefused", login, {"actor": "token:ab12"})
    assert refused is not None
    assert (refused.kind, refused.resource_id, refused.action) == ("token", "ab12", "login_refused")
    kv = ev.KVSet(namespace="a.b", key="colour", value="blue")
    row = audit.entry(ev.kv_stream("a.b", "colour"), "KVSet", kv, {"actor": "anonymous"})
    assert row is not None and (row.kind, row.resource_id) == ("kv", "colour")
    assert "value" not in row.details
    # The engine's bookkeeping is not even read.
    assert "WorkerHeartbeat" not in audit.audited_types(["WorkerHeartbeat", "FlowCreated"])


def test_a_request_adds_its_address_and_reason_to_the_meta_of_its_commands() -> None:
    assert audit.merged({"actor": "user:bob"}) == {"actor": "user:bob"}  # outside a request
    token = audit.request_meta.set({"clientAddress": "10.0.0.1", "reason": "OPS-1"})
    try:
        assert audit.merged({"actor": "user:bob", "reason": None}) == {
            "actor": "user:bob",
            "clientAddress": "10.0.0.1",
            "reason": "OPS-1",
        }
        assert audit.merged({"actor": "user:bob", "reason": "own"})["reason"] == "own"
    finally:
        audit.request_meta.reset(token)
