"""Fuzzing the flow parser, POST /api/v1/flows/validate and POST /api/v1/flows: mutated Kestra
flows and flows built as data get a validation answer, never a crash, and a refused flow is not
stored."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import msgspec
import orjson
import trio
from hypothesis import given
from hypothesis import strategies as st

from api.bodies import decode_utf8
from engine.errors import FlowValidationError, InvalidRequest
from engine.flow import flow_to_dict, parse_flow
from tests.fuzz.harness import Http, Tally, fuzz_settings
from tests.fuzz.strategies import flow_source

YAML = {"Content-Type": "application/x-yaml"}
FLOW_EVENTS = ("FlowCreated", "FlowUpdated")


def test_flow_parser_gives_a_flow_or_validation_problems(kestra_flows: Path) -> None:
    tally = Tally("parse_flow (in process)")

    @fuzz_settings()
    @given(flow_source(kestra_flows))
    def case(source: bytes) -> None:
        tally.cases += 1
        try:
            text = decode_utf8(source)
        except InvalidRequest:
            tally.count("not UTF-8")
            return
        try:
            flow = parse_flow(text)
        except FlowValidationError as exc:
            tally.count("invalid")
            assert exc.details, "a refusal names its problems"
            return
        tally.count("valid")
        # What is accepted can be recorded (msgspec) and shown (orjson).
        data = flow_to_dict(flow)
        msgspec.json.encode(data)
        orjson.dumps(data, default=str)

    case()
    tally.report()


async def test_validate_answers_every_body_without_a_server_error(
    http: Http, kestra_flows: Path
) -> None:
    tally = Tally("POST /api/v1/flows/validate")
    bodies = st.one_of(
        flow_source(kestra_flows),
        st.lists(flow_source(kestra_flows), min_size=2, max_size=3).map(b"\n---\n".join),
        st.binary(max_size=300),
    )

    @fuzz_settings()
    @given(bodies)
    def case(body: bytes) -> None:
        tally.cases += 1
        response = http.request(
            "POST", "/api/v1/flows/validate", sent=body, content=body, headers=YAML
        )
        tally.count(response.status_code)
        if response.status_code == 200:
            for entry in response.json():
                assert "flow" in entry or entry.get("constraints"), entry

    await trio.to_thread.run_sync(case)
    tally.report()


async def test_create_flow_stores_only_what_it_accepts(
    http: Http, kestra_flows: Path, count_events: Callable[..., int]
) -> None:
    tally = Tally("POST /api/v1/flows")

    @fuzz_settings()
    @given(flow_source(kestra_flows))
    def case(body: bytes) -> None:
        tally.cases += 1
        before = count_events(FLOW_EVENTS)
        response = http.request("POST", "/api/v1/flows", sent=body, content=body, headers=YAML)
        tally.count(response.status_code)
        after = count_events(FLOW_EVENTS)
        if response.status_code != 200:
            assert after == before, f"refused ({response.status_code}) yet stored: {body[:300]!r}"
            return
        assert after == before + 1
        flow = response.json()
        deleted = http.request("DELETE", f"/api/v1/flows/{flow['namespace']}/{flow['id']}")
        assert deleted.status_code == 204
        if tally.cases % 50 == 0:
            listed = http.request("GET", "/api/v1/flows/search", params={"size": 1000})
            assert listed.status_code == 200

    await trio.to_thread.run_sync(case)
    listed = await trio.to_thread.run_sync(
        lambda: http.request("GET", "/api/v1/flows/search", params={"size": 1000})
    )
    assert listed.status_code == 200
    tally.report()
