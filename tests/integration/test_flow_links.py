"""The topology read model: what each flow names of other flows (`flow_calls`,
`flow_listeners`), kept by the flows projection as it applies each revision, and the dependency
routes answering from it over any number of flows, as the graph computed from every flow's
source would."""

from __future__ import annotations

import contextlib
import random
import shutil
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from engine import events as ev
from engine import graph
from engine.db import Database
from engine.graph import FlowKey
from engine.migrate import migrate, migrations_dir
from engine.server import ServerContext
from engine.store import NO_STREAM, Append, EventStore
from projections import reindex as rebuild
from projections.flows import FlowsProjection
from tests.conftest import admin_client, deploy, own_database, start_server

YAML = {"Content-Type": "application/x-yaml"}
LOG = "  - id: work\n    type: io.kestra.plugin.core.log.Log\n    message: hi\n"
FLOW_EVENTS = ("FlowCreated", "FlowUpdated", "FlowDeleted")


@pytest.fixture(scope="module")
def links_url(database_url: str) -> Iterator[str]:
    """A database of this file's own: the graphs compared here are those of every flow in it,
    and a Flow trigger naming no flow listens to all of them."""
    with own_database(database_url, "flow_links", prepare=True) as url:
        yield url


async def _serve(
    url: str, nursery: trio.Nursery, data_dir: Path
) -> tuple[ServerContext, httpx.AsyncClient]:
    ctx: ServerContext = await start_server(url, nursery, data_dir)
    return ctx, admin_client(ctx, timeout=120)


@contextlib.asynccontextmanager
async def _server(url: str, data_dir: Path) -> AsyncIterator[httpx.AsyncClient]:
    """A server on `url` for the block, stopped at its end (before its database goes)."""
    async with trio.open_nursery() as servers:
        _, http = await _serve(url, servers, data_dir)
        async with http:
            yield http
        servers.cancel_scope.cancel()


@pytest.fixture
async def cluster(
    links_url: str, nursery: trio.Nursery, tmp_path: Path
) -> AsyncIterator[tuple[ServerContext, httpx.AsyncClient]]:
    """A server running everything (the projections too) on this file's database."""
    ctx, http = await _serve(links_url, nursery, tmp_path)
    async with http:
        yield ctx, http


@pytest.fixture
async def owner(links_url: str) -> AsyncIterator[Database]:
    """This file's database as its owner (who may rebuild the read models)."""
    db = Database(links_url, max_size=2)
    yield db
    await db.close()


def _flow(namespace: str, flow_id: str, tasks: str = LOG, extra: str = "") -> str:
    return f"id: {flow_id}\nnamespace: {namespace}\ntasks:\n{tasks}{extra}"


def _subflow(task_id: str, namespace: str, flow_id: str) -> str:
    return (
        f"  - id: {task_id}\n    type: io.kestra.plugin.core.flow.Subflow\n"
        f"    namespace: {namespace}\n    flowId: {flow_id}\n"
    )


def _trigger(*conditions: str) -> str:
    body = "".join(f"      - {c}\n" for c in conditions)
    return "triggers:\n  - id: after\n    type: io.kestra.plugin.core.trigger.Flow\n" + (
        "    conditions:\n" + body if conditions else ""
    )


def _after_flow(namespace: str, flow_id: str) -> str:
    return (
        "type: io.kestra.plugin.core.condition.ExecutionFlow\n"
        f"        namespace: {namespace}\n        flowId: {flow_id}"
    )


def _in_namespace(namespace: str, comparison: str) -> str:
    return (
        "type: io.kestra.plugin.core.condition.ExecutionNamespace\n"
        f"        namespace: {namespace}\n        comparison: {comparison}"
    )


SUCCEEDED = "type: io.kestra.plugin.core.condition.ExecutionStatus\n        in: [SUCCESS]"


async def _update(http: httpx.AsyncClient, namespace: str, flow_id: str, source: str) -> None:
    answer = await http.put(f"/api/v1/flows/{namespace}/{flow_id}", content=source, headers=YAML)
    assert answer.status_code == 200, answer.text


async def _caught_up(db: Database, store: EventStore | None = None) -> None:
    """Once the flows projection has applied every flow event recorded."""
    with trio.fail_after(120):
        while True:
            row = await db.fetchone(
                "SELECT (SELECT coalesce(max(seq), 0) FROM events WHERE type = ANY(%s)) AS head,"
                " (SELECT position FROM checkpoints WHERE name = 'projection:flows') AS done",
                (list(FLOW_EVENTS),),
            )
            if row is not None and row["done"] is not None and row["done"] >= row["head"]:
                return
            await trio.sleep(0.05)


async def _links(db: Database, namespace: str) -> tuple[set[tuple[str, ...]], dict[str, Any]]:
    """The calls (caller id, callee namespace, callee id) and listeners (id: requirements)
    of the flows of `namespace`."""
    calls = await db.fetchall(
        "SELECT flow_id, target_namespace, target_flow_id FROM flow_calls WHERE namespace = %s",
        (namespace,),
    )
    listeners = await db.fetchall(
        "SELECT flow_id, requirements FROM flow_listeners WHERE namespace = %s", (namespace,)
    )
    return (
        {(r["flow_id"], r["target_namespace"], r["target_flow_id"]) for r in calls},
        {r["flow_id"]: r["requirements"] for r in listeners},
    )


async def test_links_are_kept_at_deploy_replaced_on_update_and_removed_on_delete(
    cluster: tuple[ServerContext, httpx.AsyncClient], owner: Database
) -> None:
    _, http = cluster
    ns = f"links.keep.n{uuid.uuid4().hex[:8]}"
    expression = (
        "  - id: dynamic\n    type: io.kestra.plugin.core.flow.Subflow\n"
        f'    namespace: {ns}\n    flowId: "{{{{ inputs.f }}}}"\n'
    )
    await deploy(http, _flow(ns, "child"))
    calls = _subflow("one", ns, "child") + _subflow("two", "elsewhere", "missing") + expression
    await deploy(http, _flow(ns, "parent", calls))
    await deploy(http, _flow(ns, "listener", LOG, _trigger(SUCCEEDED, _after_flow(ns, "child"))))
    await _caught_up(owner)
    # What the flows name as written, whether the named flows exist or not; a flow named
    # through an expression is not known before it runs.
    assert await _links(owner, ns) == (
        {("parent", ns, "child"), ("parent", "elsewhere", "missing")},
        {"listener": [[[{"namespace": ns, "comparison": "EQUALS", "flowId": "child"}]]]},
    )

    await _update(http, ns, "parent", _flow(ns, "parent", _subflow("only", ns, "listener")))
    prefix = _trigger(_in_namespace(ns[:-3], "PREFIX"))
    await _update(http, ns, "listener", _flow(ns, "listener", LOG, prefix))
    await _caught_up(owner)
    assert await _links(owner, ns) == (
        {("parent", ns, "listener")},
        {"listener": [[[{"namespace": ns[:-3], "comparison": "PREFIX", "flowId": None}]]]},
    )

    # A flow no longer naming any, and a deleted flow, have no links; one deployed again has.
    await _update(http, ns, "listener", _flow(ns, "listener"))
    assert (await http.delete(f"/api/v1/flows/{ns}/parent")).status_code == 204
    await _caught_up(owner)
    assert await _links(owner, ns) == (set(), {})
    await deploy(http, _flow(ns, "parent", _subflow("again", ns, "child")))
    await _caught_up(owner)
    assert await _links(owner, ns) == ({("parent", ns, "child")}, {})


def _flow_condition(namespace: str, flow_id: str, indent: int) -> str:
    pad = " " * indent
    return (
        f"{pad}type: io.kestra.plugin.core.condition.ExecutionFlow\n"
        f"{pad}namespace: {namespace}\n{pad}flowId: {flow_id}\n"
    )


def _random_flows(base: str, rng: random.Random) -> list[str]:
    """Flows in a few namespaces calling each other and listening to each other in every way
    a Flow trigger can name flows (with LIKE's wildcards in what they name)."""
    namespaces = [f"{base}.a", f"{base}.a.sub", f"{base}.a_b", f"{base}.axb", f"{base}.b"]
    keys = [(namespaces[i % len(namespaces)], f"f{i}") for i in range(30)]
    sources = []
    for i, (namespace, flow_id) in enumerate(keys):
        tasks = LOG
        others = [k for k in keys if k != (namespace, flow_id)]  # refused: calling itself
        for j in range(rng.randint(0, 3)):
            target_ns, target_id = rng.choice([*others, (base, "absent")])
            tasks += _subflow(f"call{j}", target_ns, target_id)
        extra = ""
        kind = i % 10
        other_ns, other_id = rng.choice(keys)
        if kind == 1:
            extra = _trigger(SUCCEEDED, _after_flow(other_ns, other_id))
        elif kind == 2:
            extra = _trigger(_in_namespace(rng.choice(namespaces), "EQUALS"))
        elif kind == 3:
            extra = _trigger(_in_namespace(f"{base}.a_", "PREFIX"))  # a_b, not axb
        elif kind == 4:
            extra = _trigger(_in_namespace(rng.choice(["_b", "%b", ".b"]), "SUFFIX"), SUCCEEDED)
        elif kind == 5:
            extra = (
                "triggers:\n  - id: both\n    type: io.kestra.plugin.core.trigger.Flow\n"
                "    conditions:\n      - type: io.kestra.plugin.core.condition.MultipleCondition\n"
                "        id: both\n        window: P1D\n        conditions:\n"
                f"          one:\n{_flow_condition(other_ns, other_id, 12)}"
                f"          two:\n{_flow_condition(*rng.choice(keys), 12)}"
            )
        elif kind == 6:
            extra = (
                "triggers:\n  - id: batches\n    type: io.kestra.plugin.core.trigger.Flow\n"
                "    preconditions:\n      id: batches\n      flows:\n"
                f"        - namespace: {other_ns}\n          flowId: {other_id}\n"
                f"        - namespace: {rng.choice(namespaces)}\n"
            )
        elif kind == 7 and i == 7:
            extra = _trigger(SUCCEEDED)  # names no flow: listens to every flow
        elif kind == 8:
            extra = _trigger(_in_namespace(f"{base}.a", "PREFIX"), _after_flow(other_ns, other_id))
        sources.append(_flow(namespace, flow_id, tasks, extra))
    return sources


async def _expected(
    owner: Database, visible: Any = lambda namespace: True
) -> tuple[list[FlowKey], list[graph.Dependency]]:
    """Every flow of the database the caller sees and the dependencies between them, computed
    from their sources as a whole (what the routes answered before the read model kept
    links)."""
    rows = await owner.fetchall("SELECT namespace, flow_id, source FROM flows WHERE NOT deleted")
    links = {
        FlowKey(r["namespace"], r["flow_id"]): graph.source_links(r["source"])
        for r in rows
        if visible(r["namespace"])
    }
    return sorted(links), graph.dependency_edges(links)


async def test_dependencies_are_those_computed_from_every_flow_source(
    cluster: tuple[ServerContext, httpx.AsyncClient], owner: Database
) -> None:
    _, http = cluster
    base = f"links.same.n{uuid.uuid4().hex[:8]}"
    sources = _random_flows(base, random.Random(12))
    for source in sources:
        await deploy(http, source)
    for gone in ("f5", "f11"):  # deleted flows link nothing, and nothing links to them
        namespace = next(s for s in sources if s.startswith(f"id: {gone}\n")).split("\n")[1][11:]
        assert (await http.delete(f"/api/v1/flows/{namespace}/{gone}")).status_code == 204
    await _caught_up(owner)
    flows, edges = await _expected(owner)
    mine = [f for f in flows if f.namespace.startswith(base)]
    assert len(mine) == 28
    assert {e.relation for e in edges} == {"FLOW_TASK", "FLOW_TRIGGER"}

    for focus in mine:
        for destination_only in (False, True):
            for expand_all in (False, True):
                answer = await http.get(
                    f"/api/v1/flows/{focus.namespace}/{focus.id}/dependencies",
                    params={
                        "destinationOnly": str(destination_only).lower(),
                        "expandAll": str(expand_all).lower(),
                    },
                )
                assert answer.status_code == 200, answer.text
                assert answer.json() == graph.flow_dependencies(
                    edges, focus, destination_only=destination_only, expand_all=expand_all
                ), (focus, destination_only, expand_all)
    for namespace in sorted({f.namespace for f in mine}):
        answer = await http.get(f"/api/v1/namespaces/{namespace}/dependencies")
        assert answer.status_code == 200, answer.text
        assert answer.json() == graph.namespace_dependencies(edges, flows, namespace)

    # A viewer of one namespace (and those under it) sees the graph of the flows there only.
    scope = f"{base}.a"
    made = await http.post(
        "/api/v1/tokens", json={"name": "links", "role": "viewer", "namespaces": [scope]}
    )
    assert made.status_code == 201, made.text
    seen_flows, seen_edges = await _expected(
        owner, lambda namespace: namespace == scope or namespace.startswith(scope + ".")
    )
    headers = {"Authorization": f"Bearer {made.json()['token']}"}
    async with httpx.AsyncClient(base_url=http.base_url, timeout=60, headers=headers) as viewer:
        for focus in [f for f in seen_flows if f.namespace.startswith(base)]:
            for expand_all in (False, True):
                answer = await viewer.get(
                    f"/api/v1/flows/{focus.namespace}/{focus.id}/dependencies",
                    params={"expandAll": str(expand_all).lower()},
                )
                assert answer.json() == graph.flow_dependencies(
                    seen_edges, focus, expand_all=expand_all
                ), focus
        answer = await viewer.get(f"/api/v1/namespaces/{scope}/dependencies")
        assert answer.json() == graph.namespace_dependencies(seen_edges, seen_flows, scope)


async def test_reindex_of_the_flows_projection_rebuilds_the_same_links(
    cluster: tuple[ServerContext, httpx.AsyncClient], owner: Database
) -> None:
    _, http = cluster
    ns = f"links.rebuild.n{uuid.uuid4().hex[:8]}"
    await deploy(http, _flow(ns, "child"))
    await deploy(http, _flow(ns, "parent", _subflow("call", ns, "child")))
    await _update(http, ns, "parent", _flow(ns, "parent", _subflow("call", ns, "other")))
    await deploy(http, _flow(ns, "listener", LOG, _trigger(_after_flow(ns, "parent"))))
    await deploy(http, _flow(ns, "gone", _subflow("call", ns, "child")))
    assert (await http.delete(f"/api/v1/flows/{ns}/gone")).status_code == 204
    await _caught_up(owner)

    async def tables() -> list[Any]:
        return [
            await owner.fetchall(f"SELECT * FROM {table} ORDER BY 1, 2, 3")
            for table in ("flows", "flow_calls", "flow_listeners")
        ]

    before = await tables()
    assert ("parent", ns, "other") in (await _links(owner, ns))[0]
    oids = await owner.fetchall(
        "SELECT oid::bigint AS id FROM pg_class WHERE relname IN ('flow_calls', 'flow_listeners')"
        " AND relnamespace = current_schema()::regnamespace"
    )

    await rebuild.reindex(owner, [FlowsProjection()])

    assert await tables() == before
    rebuilt = await owner.fetchall(
        "SELECT oid::bigint AS id FROM pg_class WHERE relname IN ('flow_calls', 'flow_listeners')"
        " AND relnamespace = current_schema()::regnamespace"
    )
    assert {r["id"] for r in rebuilt}.isdisjoint({r["id"] for r in oids})  # new tables
    # The live projection keeps them on the swapped-in tables.
    await _update(http, ns, "parent", _flow(ns, "parent", _subflow("call", ns, "child")))
    await _caught_up(owner)
    assert ("parent", ns, "child") in (await _links(owner, ns))[0]


async def test_a_graph_over_more_than_20000_flows_still_holds_the_asked_flow(
    database_url: str, tmp_path: Path
) -> None:
    # Flows one graph used to read at most, ordered by namespace and id: `zz.target` came
    # after all of them and was left out.
    bulk = 20_100
    with own_database(database_url, "flow_links_bulk") as url:
        migrate(url)
        db = Database(url, max_size=2)
        try:
            store = EventStore(db)
            sources = [(("bulk", f"f{i:05d}"), _flow("bulk", f"f{i:05d}")) for i in range(bulk)]
            sources += [
                (("bulk", "zcaller"), _flow("bulk", "zcaller", _subflow("call", "zz", "target"))),
                (("zz", "target"), _flow("zz", "target")),
                (
                    ("zz", "watch"),
                    _flow("zz", "watch", LOG, _trigger(_in_namespace("bulk", "EQUALS"))),
                ),
            ]
            started = time.monotonic()
            for at in range(0, len(sources), 2000):
                await store.append_many(
                    [
                        Append(
                            ev.flow_stream(namespace, flow_id),
                            [
                                ev.FlowCreated(
                                    namespace=namespace, flowId=flow_id, revision=1, source=s
                                )
                            ],
                            expected_version=NO_STREAM,
                        )
                        for (namespace, flow_id), s in sources[at : at + 2000]
                    ]
                )
            appended = time.monotonic()
            async with _server(url, tmp_path) as http:
                await _caught_up(db)
                applied = time.monotonic()
                await http.get("/api/v1/flows")  # the first request checks the password
                asked = time.monotonic()
                target = await http.get("/api/v1/flows/zz/target/dependencies")
                answered = time.monotonic()
                assert target.status_code == 200, target.text
                assert "X-Tiercel-Partial" not in target.headers
                assert target.json()["edges"] == [
                    {
                        "source": "main_bulk_zcaller",
                        "target": "main_zz_target",
                        "relation": "FLOW_TASK",
                    }
                ]
                # Every one of the flows leads to the listener, and the namespace holds them all.
                watch = await http.get(
                    "/api/v1/flows/zz/watch/dependencies", params={"destinationOnly": "true"}
                )
                assert len(watch.json()["edges"]) == bulk + 1
                assert len(watch.json()["nodes"]) == bulk + 2
                whole = await http.get("/api/v1/namespaces/bulk/dependencies")
                assert len(whole.json()["nodes"]) == bulk + 1
                print(
                    f"\n{len(sources)} flows: appended in {appended - started:.1f}s, projected in"
                    f" {applied - appended:.1f}s, one flow's graph in {answered - asked:.3f}s"
                )
        finally:
            await db.close()


async def test_flows_recorded_before_the_links_migration_get_their_links_on_upgrade(
    database_url: str, tmp_path: Path
) -> None:
    with own_database(database_url, "flow_links_upgrade") as url:
        # The schema as it was before the links: every migration up to 0017.
        older = tmp_path / "older"
        older.mkdir()
        for path in migrations_dir().glob("*.sql"):
            if int(path.name[:4]) < 17:
                shutil.copy(path, older / path.name)
        migrate(url, older)
        db = Database(url, max_size=2)
        try:
            store = EventStore(db)
            ns = "before.links"
            history = [
                ev.FlowCreated(namespace=ns, flowId="child", revision=1, source=_flow(ns, "child")),
                ev.FlowCreated(
                    namespace=ns, flowId="parent", revision=1, source=_flow(ns, "parent")
                ),
                ev.FlowUpdated(
                    namespace=ns,
                    flowId="parent",
                    revision=2,
                    source=_flow(ns, "parent", _subflow("call", ns, "child")),
                ),
                ev.FlowCreated(
                    namespace=ns,
                    flowId="listener",
                    revision=1,
                    source=_flow(ns, "listener", LOG, _trigger(_after_flow(ns, "child"))),
                ),
                ev.FlowCreated(
                    namespace=ns,
                    flowId="gone",
                    revision=1,
                    source=_flow(ns, "gone", _subflow("call", ns, "child")),
                ),
                ev.FlowDeleted(namespace=ns, flowId="gone", revision=2),
            ]
            for event in history:
                await store.append(ev.flow_stream(ns, event.flowId), [event])
            # The flows read model as the projection before the migration left it.
            recorded, _ = await store.read_after(0, 100, FLOW_EVENTS)

            def old_projection(conn: Any) -> None:
                with conn.transaction():
                    for e in recorded:
                        x = e.event
                        if isinstance(x, ev.FlowDeleted):
                            conn.execute(
                                "UPDATE flows SET deleted = true, revision = %s, updated = %s"
                                " WHERE namespace = %s AND flow_id = %s",
                                (x.revision, e.recorded_at, x.namespace, x.flowId),
                            )
                            continue
                        conn.execute(
                            "INSERT INTO flows (namespace, flow_id, revision, source, updated)"
                            " VALUES (%s, %s, %s, %s, %s) ON CONFLICT (namespace, flow_id) DO"
                            " UPDATE SET revision = EXCLUDED.revision, source = EXCLUDED.source,"
                            " deleted = false, updated = EXCLUDED.updated",
                            (x.namespace, x.flowId, x.revision, x.source, e.recorded_at),
                        )
                    conn.execute(
                        "INSERT INTO checkpoints (name, position) VALUES ('projection:flows', %s)",
                        (recorded[-1].seq,),
                    )

            await db.run(old_projection)
            listing = "SELECT namespace, flow_id, revision, source, deleted FROM flows ORDER BY 2"
            before = await db.fetchall(listing)

            # Upgrading: the server migrates, and its flows projection gives them their links.
            async with _server(url, tmp_path / "data") as http:
                await _caught_up(db)
                assert await _links(db, ns) == (
                    {("parent", ns, "child")},
                    {
                        "listener": [
                            [[{"namespace": ns, "comparison": "EQUALS", "flowId": "child"}]]
                        ]
                    },
                )
                assert await db.fetchall(listing) == before  # applied again, the same rows
                answer = await http.get(f"/api/v1/flows/{ns}/child/dependencies")
                assert {(e["source"], e["target"]) for e in answer.json()["edges"]} == {
                    (f"main_{ns}_parent", f"main_{ns}_child"),
                    (f"main_{ns}_child", f"main_{ns}_listener"),
                }

            # An older revision applied again over a newer row changes nothing (the rows never
            # step back while the projection replays).
            def replay_first(conn: Any) -> None:
                with conn.transaction():
                    FlowsProjection().apply(recorded[1:2], conn)

            await db.run(replay_first)
            assert await db.fetchall(listing) == before
            assert await _links(db, ns) == (
                {("parent", ns, "child")},
                {"listener": [[[{"namespace": ns, "comparison": "EQUALS", "flowId": "child"}]]]},
            )
        finally:
            await db.close()
