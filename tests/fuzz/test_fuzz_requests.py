"""Fuzzing execution inputs (JSON and multipart), kill and resume bodies and the query parameters
of searches: every answer is a 2xx or a 4xx, and a refused execution is not created."""

from __future__ import annotations

import json
import urllib.parse
import uuid
from collections.abc import Callable
from typing import Any

import trio
from hypothesis import given
from hypothesis import strategies as st

from tests.fuzz.harness import Http, Tally, fuzz_settings
from tests.fuzz.strategies import hostile_strings, json_values, mutate, operation

YAML = {"Content-Type": "application/x-yaml"}

INPUTS = {
    "s": "STRING",
    "i": "INT",
    "f": "FLOAT",
    "b": "BOOLEAN",
    "dt": "DATETIME",
    "d": "DATE",
    "tm": "TIME",
    "du": "DURATION",
    "file": "FILE",
    "j": "JSON",
    "y": "YAML",
    "u": "URI",
    "e": "EMAIL",
    "sec": "SECRET",
    "nested.x": "STRING",
}


def inputs_flow(flow_id: str, namespace: str) -> str:
    """Every kind of input, none required, then a pause: accepted executions wait, cheaply."""
    lines = [f"id: {flow_id}", f"namespace: {namespace}", "inputs:"]
    for input_id, kind in INPUTS.items():
        lines += [f"  - id: {input_id}", f"    type: {kind}", "    required: false"]
    lines += [
        "  - {id: v, type: STRING, required: false, validator: '[a-z]{0,10}'}",
        "  - {id: n, type: INT, required: false, min: 0, max: 100}",
        "  - {id: sel, type: SELECT, values: [a, b], required: false}",
        "  - {id: ms, type: MULTISELECT, values: [a, b], required: false}",
        "  - {id: arr, type: ARRAY, itemType: INT, required: false}",
        "  - id: dep",
        "    type: STRING",
        "    required: false",
        "    dependsOn: {inputs: [s], condition: \"{{ inputs.s == 'x' }}\"}",
        "tasks:",
        "  - id: wait",
        "    type: io.kestra.plugin.core.flow.Pause",
        "    onResume:",
        "      - {id: approved, type: BOOLEAN, required: false}",
        "      - {id: reason, type: STRING, required: false}",
    ]
    return "\n".join(lines) + "\n"


INPUT_IDS = [*INPUTS, "v", "n", "sel", "ms", "arr", "dep", "nested", "unknown"]

input_keys = st.one_of(st.sampled_from(INPUT_IDS), hostile_strings)
json_inputs = st.dictionaries(input_keys, json_values, max_size=6)


def json_bodies() -> st.SearchStrategy[bytes]:
    """JSON objects of inputs, JSON of other shapes, and broken JSON."""
    as_json = json_inputs.map(
        lambda v: json.dumps(v, ensure_ascii=False).encode("utf-8", "surrogatepass")
    )
    return st.one_of(
        as_json,
        json_values.map(lambda v: json.dumps(v).encode()),
        st.tuples(as_json, st.lists(operation, max_size=3)).map(lambda t: mutate(*t)),
        st.binary(max_size=200),
        st.just(b"[" * 5000),
        st.just(b'{"j": ' + b"[" * 1000 + b"]" * 1000 + b"}"),
        st.just(b'{"i": 123456789012345678901234567890, "j": 1e999}'),
    )  # fmt: skip


file_names = st.one_of(
    st.text(max_size=30),
    st.sampled_from(["x" * 300 + ".txt", "../../etc/passwd", "a\x00b", "a/b\\c", ".", "..", "", "ü" * 150]),
)  # fmt: skip


@st.composite
def multipart(draw: st.DrawFn) -> tuple[dict[str, Any], list[tuple[str, tuple[str, bytes]]]]:
    fields = draw(
        st.dictionaries(
            input_keys,
            st.one_of(hostile_strings, st.lists(hostile_strings, max_size=3)),
            max_size=5,
        )
    )
    files = draw(
        st.lists(st.tuples(input_keys, st.tuples(file_names, st.binary(max_size=100))), max_size=3)
    )
    return fields, files  # fmt: skip


@st.composite
def raw_multipart(draw: st.DrawFn) -> tuple[bytes, str]:
    """A multipart body written by hand, then mutated: boundaries and headers go wrong."""
    boundary = draw(st.sampled_from(["b0undary", "", "x" * 100, "a b", "--"]))
    parts = []
    for name, value in draw(st.lists(st.tuples(input_keys, hostile_strings), max_size=3)):
        parts.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'
        )
    parts.append(
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{draw(file_names)}"\r\n'
        "Content-Type: application/octet-stream\r\n\r\nhello\r\n"
    )
    body = ("".join(parts) + f"--{boundary}--\r\n").encode("utf-8", "surrogatepass")
    body = mutate(body, draw(st.lists(operation, max_size=2)))
    return body, f"multipart/form-data; boundary={boundary}"  # fmt: skip


BOUNDARIES = st.sampled_from(
    ["0", "-1", "1", "9223372036854775807", "9223372036854775808", "9" * 30, "1e3", "0x10",
     "2024-01-01T00:00:00Z", "9999-12-31T23:59:59-12:00", "true", "RUNNING", "k:v"]
)  # fmt: skip
"""Values at the edges of what query parameters hold."""


def labels() -> st.SearchStrategy[list[str]]:
    return st.lists(st.one_of(hostile_strings, st.just("k:v"), st.just("system.x:y")), max_size=3)


def _segment(value: str) -> str:
    return urllib.parse.quote(value.encode("utf-8", "surrogatepass"), safe="")


async def _deploy(http: Http, source: str) -> None:
    response = await trio.to_thread.run_sync(
        lambda: http.request("POST", "/api/v1/flows", content=source, headers=YAML)
    )
    assert response.status_code == 200, response.text


async def test_execution_inputs_are_answered_and_a_refusal_creates_nothing(
    http: Http, count_events: Callable[..., int]
) -> None:
    flow_id = "inputs" + uuid.uuid4().hex[:8]
    namespace = "fuzz.inputs"
    await _deploy(http, inputs_flow(flow_id, namespace))
    url = f"/api/v1/executions/{namespace}/{flow_id}"
    tally = Tally("POST /api/v1/executions/{ns}/{id} (JSON and multipart inputs)")
    requests = st.one_of(
        st.tuples(st.just("json"), json_bodies()),
        st.tuples(st.just("multipart"), multipart()),
        st.tuples(st.just("raw"), raw_multipart()),
    )

    @fuzz_settings()
    @given(
        requests,
        labels(),
        st.one_of(st.none(), st.sampled_from(["1", "0", "-1", "x", "99999999999999999999"])),
    )
    def case(request: tuple[str, Any], label_list: list[str], revision: str | None) -> None:
        tally.cases += 1
        kind, payload = request
        params: list[tuple[str, str]] = [("labels", label) for label in label_list]
        if revision is not None:
            params.append(("revision", revision))
        before = count_events(("ExecutionCreated",), flow_id)
        if kind == "json":
            sent = payload
            response = http.request(
                "POST",
                url,
                sent=sent,
                content=payload,
                params=params,
                headers={"Content-Type": "application/json"},
            )
        elif kind == "multipart":
            fields, files = payload
            sent = repr(payload).encode("utf-8", "surrogatepass")
            data = {k: v for k, v in fields.items()}
            upload = [
                (k, (name.encode("utf-8", "surrogatepass").decode("utf-8", "replace"), content))
                for k, (name, content) in files
            ]
            if not upload:
                upload = [("file", ("f.txt", b"hello"))]
            response = http.request("POST", url, sent=sent, data=data, files=upload, params=params)
        else:
            sent, content_type = payload
            response = http.request(
                "POST",
                url,
                sent=sent,
                content=sent,
                params=params,
                headers={"Content-Type": content_type},
            )
        tally.count(response.status_code)
        after = count_events(("ExecutionCreated",), flow_id)
        if response.status_code == 200:
            assert after == before + 1
            assert response.json()["flowId"] == flow_id
        else:
            assert after == before, f"refused ({response.status_code}) yet created: {sent[:300]!r}"  # fmt: skip

    await trio.to_thread.run_sync(case)
    tally.report()


async def test_kill_resume_and_search_answer_every_request(http: Http) -> None:
    flow_id = "pause" + uuid.uuid4().hex[:8]
    namespace = "fuzz.requests"
    await _deploy(http, inputs_flow(flow_id, namespace))

    def start() -> str:
        response = http.request("POST", f"/api/v1/executions/{namespace}/{flow_id}", json={})
        assert response.status_code == 200, response.text
        return str(response.json()["id"])

    paused = [await trio.to_thread.run_sync(start) for _ in range(3)]
    tally = Tally("kill, resume and search requests")
    ids = st.one_of(st.sampled_from(paused), hostile_strings)
    params = st.lists(
        st.tuples(
            st.sampled_from(
                ["page", "size", "namespace", "q", "labels", "state", "flowId", "startDate",
                 "endDate", "minLevel", "taskId", "taskRunId", "at", "revision", "path",
                 "deleteLogs", "deleteStorage", "timeout"]
            ),
            st.one_of(hostile_strings, st.integers(-(2**70), 2**70).map(str), BOUNDARIES),
        ),
        max_size=4,
    )  # fmt: skip
    header_values = st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=300).map(
        str.strip
    )  # h11 refuses to send a value with spaces around it
    requests = st.one_of(
        st.tuples(st.just("resume"), ids, json_bodies()),
        st.tuples(st.just("kill"), ids, header_values),
        st.tuples(st.just("search"), st.sampled_from(["/api/v1/flows/search", "/api/v1/executions/search"]), params),
        st.tuples(st.just("get"), ids, params),
        st.tuples(st.just("flow"), st.tuples(hostile_strings, hostile_strings), params),
        st.tuples(st.just("file"), st.sampled_from(paused), st.one_of(hostile_strings, file_names)),
    )  # fmt: skip

    @fuzz_settings()
    @given(requests)
    def case(request: tuple[Any, ...]) -> None:
        tally.cases += 1
        kind = request[0]
        if kind == "resume":
            body = request[2]
            response = http.request(
                "POST",
                f"/api/v1/executions/{_segment(request[1])}/resume",
                sent=body,
                content=body,
                headers={"Content-Type": "application/json"},
            )
        elif kind == "kill":
            headers = {"Idempotency-Key": request[2]} if request[2] else {}
            response = http.request(
                "DELETE", f"/api/v1/executions/{_segment(request[1])}/kill", headers=headers
            )
        elif kind == "search":
            response = http.request("GET", request[1], params=request[2])
        elif kind == "get":
            execution = _segment(request[1])
            path = ["", "/events", "/file", "/file/metas"][len(request[2]) % 4]
            if len(request[2]) == 3:
                response = http.request("GET", f"/api/v1/logs/{execution}", params=request[2])
            else:
                response = http.request(
                    "GET", f"/api/v1/executions/{execution}{path}", params=request[2]
                )
        elif kind == "file":
            # A path inside the execution's own files, so the storage itself is reached.
            prefix = f"kestra:///{namespace.replace('.', '/')}/{flow_id}/executions/{request[1]}"
            suffix = ["", "/metas"][len(request[2]) % 2]
            response = http.request(
                "GET",
                f"/api/v1/executions/{request[1]}/file{suffix}",
                params={"path": f"{prefix}/{request[2]}"},
            )
        else:
            ns, fid = (_segment(p) for p in request[1])
            suffix = "/revisions" if len(request[2]) % 2 else ""
            response = http.request("GET", f"/api/v1/flows/{ns}/{fid}{suffix}", params=request[2])
        tally.count(f"{kind} {response.status_code}")

    await trio.to_thread.run_sync(case)
    tally.report()
