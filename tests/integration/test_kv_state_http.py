"""Worker tasks that need more than their inputs, run end to end on a real engine: the KV store
and `kv()`, states, OutputValues, log Fetch, HTTP Request/Download against a local server, and
`secret()`/`read()` in templates."""

from __future__ import annotations

import base64
import datetime as dt
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from string import Template
from typing import Any

import hypercorn.config
import hypercorn.trio
import pytest
import trio

from engine import events as ev
from engine.errors import Conflict, InvalidRequest
from engine.execution import Execution, TaskRun
from engine.kv import kv_entries, kv_get, kv_set
from engine.server import ServerContext
from tests.integration.conftest import run_flow

# --- helpers -------------------------------------------------------------------------------


def _flow(source: str, **names: str) -> str:
    """The flow text with `$name` placeholders filled (templates keep their own braces)."""
    return Template(source).substitute(names)


def _runs(state: Execution, task_id: str) -> list[TaskRun]:
    runs = [r for r in state.taskruns.values() if r.taskId == task_id]
    assert runs, f"no task run of {task_id}"
    return runs


def _out(state: Execution, task_id: str) -> dict[str, Any]:
    return _runs(state, task_id)[-1].outputs or {}


def _message(state: Execution, task_id: str) -> str:
    return _runs(state, task_id)[-1].message or ""


def _messages(state: Execution) -> list[str]:
    return [f"{r.taskId}: {r.message}" for r in state.taskruns.values() if r.message]


# --- a local HTTP server -------------------------------------------------------------------

Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


async def _answer(send: Send, status: int, body: bytes, headers: dict[str, str]) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(k.encode(), v.encode()) for k, v in headers.items()],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def _app(scope: dict[str, Any], receive: Receive, send: Send) -> None:
    """A tiny ASGI app standing for the outside world the HTTP tasks talk to."""
    if scope["type"] == "lifespan":
        while (message := await receive())["type"] != "lifespan.shutdown":
            await send({"type": message["type"] + ".complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
    path = scope["path"]
    as_json = {"content-type": "application/json"}
    if path == "/json":
        payload = {"name": "tiercel", "items": [1, 2]}
        await _answer(send, 200, json.dumps(payload).encode(), {**as_json, "x-served-by": "test"})
    elif path == "/echo":
        echo = {
            "method": scope["method"],
            "query": scope["query_string"].decode(),
            "contentType": headers.get("content-type", ""),
            "authorization": headers.get("authorization", ""),
            "xTest": headers.get("x-test", ""),
            "body": body.decode(),
        }
        await _answer(send, 200, json.dumps(echo).encode(), as_json)
    elif path == "/file":
        disposition = {"content-disposition": 'attachment; filename="report.csv"'}
        await _answer(send, 200, b"a,b\n1,2\n", {"content-type": "text/csv", **disposition})
    elif path == "/empty":
        await _answer(send, 200, b"", {})
    else:
        await _answer(send, 404, b"no such thing here", {"content-type": "text/plain"})


@pytest.fixture
async def web(nursery: trio.Nursery) -> AsyncIterator[str]:
    """The base URL of the local HTTP server, stopped with the test."""
    config = hypercorn.config.Config()
    config.bind = ["127.0.0.1:0"]
    binds = await nursery.start(hypercorn.trio.serve, _app, config)
    yield binds[0]


# --- KV store ------------------------------------------------------------------------------


async def test_kv_tasks_set_read_list_and_delete_keys_as_events(
    engine: ServerContext, ns: str
) -> None:
    state = await run_flow(
        engine,
        _flow(
            """
id: kv_roundtrip
namespace: $ns
tasks:
  - id: set_text
    type: io.kestra.plugin.core.kv.Set
    key: greeting
    value: "hello {{ flow.id }}"
  - id: set_number
    type: io.kestra.plugin.core.kv.Set
    key: greeting.count
    value: "42"
    kvType: NUMBER
  - id: set_json
    type: io.kestra.plugin.core.kv.Set
    key: settings
    value: '{"region": "eu", "sizes": [1, 2]}'
    kvType: JSON
  - id: set_elsewhere
    type: io.kestra.plugin.core.kv.Set
    namespace: $ns.other
    key: remote
    value: far
  - id: get
    type: io.kestra.plugin.core.kv.Get
    key: greeting
  - id: get_missing
    type: io.kestra.plugin.core.kv.Get
    key: nothing
  - id: prefixed
    type: io.kestra.plugin.core.kv.GetKeys
    prefix: greeting
  - id: all_keys
    type: io.kestra.plugin.core.kv.GetKeys
  - id: inline
    type: io.kestra.plugin.core.debug.Return
    format: >-
      {{ kv('greeting') }}|{{ kv('greeting.count') + 1 }}|{{ kv('settings').region }}|{{
      kv('remote', '$ns.other') }}|{{ kv(key='remote', namespace='$ns.other') }}|{{
      kv('nothing', errorOnMissing=false) ?? 'none' }}
  - id: delete
    type: io.kestra.plugin.core.kv.Delete
    key: greeting
  - id: delete_again
    type: io.kestra.plugin.core.kv.Delete
    key: greeting
  - id: remaining
    type: io.kestra.plugin.core.kv.GetKeys
""",
            ns=ns,
        ),
    )
    assert state.state == "SUCCESS", _messages(state)
    assert _out(state, "get") == {"value": "hello kv_roundtrip"}
    assert _out(state, "get_missing") == {"value": None}
    assert _out(state, "prefixed") == {"keys": ["greeting", "greeting.count"]}
    assert _out(state, "all_keys") == {"keys": ["greeting", "greeting.count", "settings"]}
    assert _out(state, "inline") == {"value": "hello kv_roundtrip|43|eu|far|far|none"}
    assert _out(state, "delete") == {"deleted": True}
    assert _out(state, "delete_again") == {"deleted": False}
    assert _out(state, "remaining") == {"keys": ["greeting.count", "settings"]}
    assert await kv_entries(engine.store, ns) == {
        "greeting.count": 42,
        "settings": {"region": "eu", "sizes": [1, 2]},
    }
    history = await engine.store.read_stream(ev.kv_stream(ns, "greeting"))
    assert [e.type for e in history] == ["KVSet", "KVDeleted"]
    assert history[0].meta["actor"].endswith("/set_text")


async def test_kv_mistakes_fail_the_task_with_a_message_naming_the_key(
    engine: ServerContext, ns: str
) -> None:
    state = await run_flow(
        engine,
        _flow(
            """
id: kv_mistakes
namespace: $ns
tasks:
  - id: first
    type: io.kestra.plugin.core.kv.Set
    key: taken
    value: original
  - id: no_overwrite
    type: io.kestra.plugin.core.kv.Set
    key: taken
    value: replaced
    overwrite: false
    allowFailure: true
  - id: must_exist
    type: io.kestra.plugin.core.kv.Get
    key: absent
    errorOnMissing: true
    allowFailure: true
  - id: must_delete
    type: io.kestra.plugin.core.kv.Delete
    key: absent
    errorOnMissing: true
    allowFailure: true
  - id: not_a_number
    type: io.kestra.plugin.core.kv.Set
    key: count
    value: lots
    kvType: NUMBER
    allowFailure: true
  - id: bad_key
    type: io.kestra.plugin.core.kv.Set
    key: "has spaces"
    value: x
    allowFailure: true
  - id: in_template
    type: io.kestra.plugin.core.debug.Return
    format: "{{ kv('absent') }}"
    allowFailure: true
  - id: computed_namespace
    type: io.kestra.plugin.core.debug.Return
    format: "{{ kv('taken', flow.namespace ~ '.sub') }}"
    allowFailure: true
  - id: still_there
    type: io.kestra.plugin.core.kv.Get
    key: taken
""",
            ns=ns,
        ),
    )
    assert state.state == "WARNING", _messages(state)
    assert "'taken' already exists" in _message(state, "no_overwrite")
    assert "No key 'absent'" in _message(state, "must_exist")
    assert "No key 'absent' to delete" in _message(state, "must_delete")
    assert "'lots' is not a valid NUMBER" in _message(state, "not_a_number")
    assert "Invalid KV key 'has spaces'" in _message(state, "bad_key")
    assert "kv('absent'" in _message(state, "in_template")
    assert "errorOnMissing=false" in _message(state, "in_template")
    assert "literal string" in _message(state, "computed_namespace")
    assert _out(state, "still_there") == {"value": "original"}


async def test_kv_value_expires_after_its_ttl(engine: ServerContext, ns: str) -> None:
    state = await run_flow(
        engine,
        _flow(
            """
id: kv_ttl
namespace: $ns
tasks:
  - id: short
    type: io.kestra.plugin.core.kv.Set
    key: token
    value: temporary
    ttl: PT1S
  - id: lasting
    type: io.kestra.plugin.core.kv.Set
    key: keeper
    value: stays
  - id: fresh
    type: io.kestra.plugin.core.kv.Get
    key: token
  - id: wait
    type: io.kestra.plugin.core.flow.Sleep
    duration: PT1.5S
  - id: stale
    type: io.kestra.plugin.core.kv.Get
    key: token
  - id: keys
    type: io.kestra.plugin.core.kv.GetKeys
  - id: inline
    type: io.kestra.plugin.core.debug.Return
    format: "{{ kv('token', errorOnMissing=false) ?? 'expired' }}"
""",
            ns=ns,
        ),
    )
    assert state.state == "SUCCESS", _messages(state)
    assert _out(state, "fresh") == {"value": "temporary"}
    assert _out(state, "stale") == {"value": None}
    assert _out(state, "keys") == {"keys": ["keeper"]}
    assert _out(state, "inline") == {"value": "expired"}


async def test_kv_store_refuses_a_ttl_that_is_not_positive(engine: ServerContext, ns: str) -> None:
    with pytest.raises(InvalidRequest, match="must be positive"):
        await kv_set(engine.store, ns, "never", 1, ttl=dt.timedelta(seconds=-1))
    assert await kv_get(engine.store, ns, "never") == (False, None)


async def test_only_one_of_two_concurrent_creates_of_a_key_wins(
    engine: ServerContext, ns: str
) -> None:
    outcomes: list[str] = []

    async def create(value: str) -> None:
        try:
            await kv_set(engine.store, ns, "lock", value, overwrite=False)
            outcomes.append("created")
        except Conflict as exc:
            outcomes.append(exc.message)

    async with trio.open_nursery() as nursery:
        for value in ("first", "second", "third"):
            nursery.start_soon(create, value)
    assert outcomes.count("created") == 1, outcomes
    assert all("already exists" in o for o in outcomes if o != "created")
    history = await engine.store.read_stream(ev.kv_stream(ns, "lock"))
    assert len(history) == 1


# --- states --------------------------------------------------------------------------------

STATES = """
id: $flow
namespace: $ns
tasks:
  - id: first
    type: io.kestra.plugin.core.state.Set
    name: progress
    data:
      done: 1
      meta:
        by: "{{ flow.id }}"
        tags: {a: 1}
  - id: second
    type: io.kestra.plugin.core.state.Set
    name: progress
    data:
      total: 10
      meta:
        tags: {b: 2}
  - id: read
    type: io.kestra.plugin.core.state.Get
    name: progress
  - id: share
    type: io.kestra.plugin.core.state.Set
    name: progress
    namespace: true
    data:
      shared: "from {{ flow.id }}"
  - id: unknown
    type: io.kestra.plugin.core.state.Get
    name: unknown
  - id: keys
    type: io.kestra.plugin.core.kv.GetKeys
  - id: drop
    type: io.kestra.plugin.core.state.Delete
    name: progress
  - id: drop_again
    type: io.kestra.plugin.core.state.Delete
    name: progress
  - id: reread
    type: io.kestra.plugin.core.state.Get
    name: progress
"""

STATE_READER = """
id: reader
namespace: $ns
tasks:
  - id: own
    type: io.kestra.plugin.core.state.Get
    name: progress
  - id: shared
    type: io.kestra.plugin.core.state.Get
    name: progress
    namespace: true
  - id: required
    type: io.kestra.plugin.core.state.Get
    name: progress
    errorOnMissing: true
"""


async def test_state_set_merges_get_reads_and_delete_removes(
    engine: ServerContext, ns: str
) -> None:
    state = await run_flow(engine, _flow(STATES, ns=ns, flow="writer"))
    assert state.state == "SUCCESS", _messages(state)
    assert _out(state, "first") == {"count": 2}
    assert _out(state, "second") == {"count": 3}
    assert _out(state, "read") == {
        "data": {"done": 1, "meta": {"by": "writer", "tags": {"a": 1, "b": 2}}, "total": 10},
        "count": 3,
    }
    assert _out(state, "unknown") == {"data": {}, "count": 0}
    assert _out(state, "keys") == {"keys": []}, "states are not listed among the KV keys"
    assert _out(state, "drop") == {"deleted": True}
    assert _out(state, "drop_again") == {"deleted": False}
    assert _out(state, "reread") == {"data": {}, "count": 0}

    other = await run_flow(engine, _flow(STATE_READER, ns=ns))
    assert _out(other, "own") == {"data": {}, "count": 0}, "a flow's state is its own"
    assert _out(other, "shared") == {"data": {"shared": "from writer"}, "count": 1}
    assert other.state == "FAILED"
    assert "No state 'progress' of flow" in _message(other, "required")


async def test_state_flow_of_the_kestra_corpus_creates_updates_and_deletes(
    engine: ServerContext, ns: str, kestra_flows: Path
) -> None:
    # The fixture skips, saying why, where the corpus is absent (a skip raised inside a trio
    # test loses its reason).
    source = (
        (kestra_flows / "valids" / "state.yaml")
        .read_text()
        .replace("namespace: io.kestra.tests", f"namespace: {ns}")
    )

    created = await run_flow(engine, source, {"state": "counter"})
    assert created.state == "SUCCESS", _messages(created)
    assert _out(created, "createGet")["data"] == {"value": 1}
    updated = await run_flow(engine, source, {"state": "counter"})
    assert _out(updated, "updateGet")["data"] == {"value": "2"}
    deleted = await run_flow(engine, source, {"state": "counter"})
    assert _out(deleted, "delete") == {"deleted": True}
    assert _out(deleted, "deleteGet") == {"data": {}, "count": 0}

    each = await run_flow(engine, source, {"state": "each"})
    assert each.state == "SUCCESS", _messages(each)
    by_value = {(r.taskId, r.value): r.outputs for r in each.taskruns.values()}
    assert by_value[("regetEach1", "b")]["data"]["value"] == "null-b"
    assert by_value[("regetEach2", "b")]["data"]["value"] == "null-a-b"


# --- outputs and logs ----------------------------------------------------------------------


async def test_output_values_keep_their_types_and_are_read_by_later_tasks(
    engine: ServerContext, ns: str
) -> None:
    state = await run_flow(
        engine,
        _flow(
            """
id: outputs
namespace: $ns
tasks:
  - id: out
    type: io.kestra.plugin.core.output.OutputValues
    values:
      count: 3
      text: "{{ 1 + 1 }}"
      list: ["{{ flow.id }}", 2]
      nested:
        flag: true
  - id: use
    type: io.kestra.plugin.core.debug.Return
    format: "{{ outputs.out.values.list[0] }}:{{ outputs.out.values.count * 2 }}"
""",
            ns=ns,
        ),
    )
    assert state.state == "SUCCESS", _messages(state)
    assert _out(state, "out") == {
        "values": {"count": 3, "text": "2", "list": ["outputs", 2], "nested": {"flag": True}}
    }
    assert _out(state, "use") == {"value": "outputs:6"}


async def test_fetch_writes_chosen_log_lines_of_an_execution_to_a_file(
    engine: ServerContext, ns: str
) -> None:
    noisy = await run_flow(
        engine,
        _flow(
            """
id: noisy
namespace: $ns
tasks:
  - id: a
    type: io.kestra.plugin.core.log.Log
    message: from a
  - id: b
    type: io.kestra.plugin.core.log.Log
    level: DEBUG
    message: ["b one", "b two"]
""",
            ns=ns,
        ),
    )
    assert noisy.state == "SUCCESS", _messages(noisy)
    state = await run_flow(
        engine,
        _flow(
            """
id: fetcher
namespace: $ns
inputs:
  - id: target
    type: STRING
tasks:
  - id: warn
    type: io.kestra.plugin.core.log.Log
    level: WARN
    message: careful
  - id: info
    type: io.kestra.plugin.core.log.Log
    message: fine
  - id: mine
    type: io.kestra.plugin.core.log.Fetch
    level: WARN
  - id: theirs
    type: io.kestra.plugin.core.log.Fetch
    executionId: "{{ inputs.target }}"
    namespace: $ns
    flowId: noisy
    tasksId: [b]
    level: DEBUG
  - id: not_this_flow
    type: io.kestra.plugin.core.log.Fetch
    executionId: "{{ inputs.target }}"
    allowFailure: true
  - id: unknown
    type: io.kestra.plugin.core.log.Fetch
    executionId: no-such-execution
    allowFailure: true
""",
            ns=ns,
        ),
        {"target": noisy.id},
    )
    assert engine.storage is not None

    def lines(task_id: str) -> list[dict[str, Any]]:
        data = engine.storage.read_bytes(_out(state, task_id)["uri"])  # type: ignore[union-attr]
        return [json.loads(line) for line in data.splitlines()]

    assert _out(state, "mine")["size"] == 1
    [mine] = lines("mine")
    assert (mine["taskId"], mine["level"], mine["message"]) == ("warn", "WARN", "careful")
    assert (mine["executionId"], mine["flowId"], mine["namespace"]) == (state.id, "fetcher", ns)
    assert _out(state, "theirs")["size"] == 2
    assert [(x["taskId"], x["message"]) for x in lines("theirs")] == [
        ("b", "b one"),
        ("b", "b two"),
    ]
    assert f"belongs to flow {ns}.noisy" in _message(state, "not_this_flow")
    assert "No execution 'no-such-execution'" in _message(state, "unknown")


# --- HTTP ----------------------------------------------------------------------------------


async def test_request_gets_and_posts_json_and_forms(
    engine: ServerContext, ns: str, web: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SECRET_WEB_TOKEN", base64.b64encode(b"t0ken").decode())
    state = await run_flow(
        engine,
        _flow(
            """
id: calls
namespace: $ns
tasks:
  - id: get
    type: io.kestra.plugin.core.http.Request
    uri: $web/json
  - id: name
    type: io.kestra.plugin.core.debug.Return
    format: "{{ fromJson(outputs.get.body).name }}"
  - id: post
    type: io.kestra.plugin.core.http.Request
    uri: "$web/echo?run={{ execution.id }}"
    method: POST
    headers:
      X-Test: "{{ flow.id }}"
      Authorization: "Bearer {{ secret('WEB_TOKEN') }}"
    body:
      name: "{{ flow.id }}"
      size: 3
  - id: form
    type: io.kestra.plugin.fs.http.Request
    uri: $web/echo
    method: POST
    formData:
      user: Jane Doe
  - id: bearer
    type: io.kestra.plugin.core.http.Request
    uri: $web/echo
    options:
      auth: {type: BEARER, token: abc}
      readTimeout: PT10S
""",
            ns=ns,
            web=web,
        ),
    )
    assert state.state == "SUCCESS", _messages(state)
    got = _out(state, "get")
    assert got["code"] == 200
    assert got["uri"] == f"{web}/json"
    assert isinstance(got["body"], str), "a JSON body stays text, as in Kestra"
    assert json.loads(got["body"]) == {"name": "tiercel", "items": [1, 2]}
    assert got["headers"]["x-served-by"] == ["test"]
    assert _out(state, "name") == {"value": "tiercel"}

    posted = json.loads(_out(state, "post")["body"])
    assert posted["method"] == "POST"
    assert posted["query"] == f"run={state.id}"
    assert posted["contentType"] == "application/json"
    assert json.loads(posted["body"]) == {"name": "calls", "size": 3}
    assert posted["xTest"] == "calls"
    assert posted["authorization"] == "Bearer ******"  # sent, and masked in the outputs

    form = json.loads(_out(state, "form")["body"])
    assert form["contentType"] == "application/x-www-form-urlencoded"
    assert form["body"] == "user=Jane+Doe"
    assert json.loads(_out(state, "bearer")["body"])["authorization"] == "Bearer abc"


async def test_request_fails_on_an_error_status_unless_allowed(
    engine: ServerContext, ns: str, web: str
) -> None:
    state = await run_flow(
        engine,
        _flow(
            """
id: failing_calls
namespace: $ns
tasks:
  - id: tolerated
    type: io.kestra.plugin.core.http.Request
    uri: $web/nowhere
    allowFailed: true
  - id: refused
    type: io.kestra.plugin.core.http.Request
    uri: $web/nowhere
""",
            ns=ns,
            web=web,
        ),
    )
    assert _runs(state, "tolerated")[0].state == "SUCCESS"
    assert _out(state, "tolerated")["code"] == 404
    assert _out(state, "tolerated")["body"] == "no such thing here"
    assert state.state == "FAILED"
    message = _message(state, "refused")
    assert "404" in message and "no such thing here" in message


async def test_download_stores_the_response_body_in_internal_storage(
    engine: ServerContext, ns: str, web: str
) -> None:
    state = await run_flow(
        engine,
        _flow(
            """
id: downloads
namespace: $ns
tasks:
  - id: csv
    type: io.kestra.plugin.core.http.Download
    uri: $web/file
  - id: show
    type: io.kestra.plugin.core.debug.Return
    format: "{{ read(outputs.csv.uri) | trim }}"
  - id: empty_ok
    type: io.kestra.plugin.core.http.Download
    uri: $web/empty
    failOnEmptyResponse: false
  - id: empty
    type: io.kestra.plugin.core.http.Download
    uri: $web/empty
    allowFailure: true
  - id: missing
    type: io.kestra.plugin.core.http.Download
    uri: $web/missing.csv
    allowFailure: true
""",
            ns=ns,
            web=web,
        ),
    )
    assert state.state == "WARNING", _messages(state)
    csv = _out(state, "csv")
    assert (csv["code"], csv["length"]) == (200, 8)
    assert csv["uri"].startswith("kestra:///") and csv["uri"].endswith("/report.csv")
    assert csv["headers"]["content-type"] == ["text/csv"]
    assert engine.storage is not None
    assert engine.storage.read_bytes(csv["uri"]) == b"a,b\n1,2\n"
    assert _out(state, "show") == {"value": "a,b\n1,2"}
    assert _out(state, "empty_ok")["length"] == 0
    assert "empty body" in _message(state, "empty")
    assert "404" in _message(state, "missing")
    assert "no such thing here" in _message(state, "missing")


# --- template functions --------------------------------------------------------------------


async def test_secret_reads_base64_environment_variables_and_names_a_missing_one(
    engine: ServerContext, ns: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SECRET_DB_PASSWORD", base64.b64encode("pa55-wörd".encode()).decode())
    state = await run_flow(
        engine,
        _flow(
            """
id: secrets
namespace: $ns
tasks:
  - id: known
    type: io.kestra.plugin.core.debug.Return
    format: "{{ secret('DB_PASSWORD') }}"
  - id: unknown
    type: io.kestra.plugin.core.debug.Return
    format: "{{ secret('NOT_CONFIGURED') }}"
""",
            ns=ns,
        ),
    )
    assert _out(state, "known") == {"value": "******"}  # read, and masked in its output
    assert state.state == "FAILED"
    assert "SECRET_NOT_CONFIGURED" in _message(state, "unknown")
