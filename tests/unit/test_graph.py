"""The task graph of a flow (Kestra's FlowGraph) and the dependencies between flows."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from engine.errors import TiercelError
from engine.flow import parse_flow
from engine.graph import (
    FlowKey,
    dependency_edges,
    flow_dependencies,
    flow_graph,
    flow_links,
    namespace_dependencies,
)

LOG = "io.kestra.plugin.core.log.Log"
FLOW = "io.kestra.plugin.core.flow."


def _log(task_id: str, indent: int) -> str:
    pad = " " * indent
    return f"{pad}- id: {task_id}\n{pad}  type: {LOG}\n{pad}  message: hi\n"


def _graph(body: str) -> dict[str, Any]:
    graph = flow_graph(parse_flow(f"id: g\nnamespace: test.graph\n{body}"))
    _check_shape(graph)
    return graph


def _check_shape(graph: dict[str, Any]) -> None:
    """What every graph holds: unique uids, edges between its nodes, one start that reaches
    every node and one end that every node reaches."""
    uids = [n["uid"] for n in graph["nodes"]]
    assert len(uids) == len(set(uids)), "uids are unique"
    known = set(uids)
    clusters = {c["cluster"]["uid"] for c in graph["clusters"]}
    for edge in graph["edges"]:
        assert edge["source"] in known and edge["target"] in known, edge
    out: dict[str, set[str]] = {u: set() for u in uids}
    into: dict[str, set[str]] = {u: set() for u in uids}
    for edge in graph["edges"]:
        out[edge["source"]].add(edge["target"])
        into[edge["target"]].add(edge["source"])
    starts = [u for u in uids if not into[u]]
    ends = [u for u in uids if not out[u]]
    assert len(starts) == 1 and len(ends) == 1, (starts, ends)

    def reach(origin: str, step: dict[str, set[str]]) -> set[str]:
        seen, todo = {origin}, [origin]
        while todo:
            for nxt in step[todo.pop()] - seen:
                seen.add(nxt)
                todo.append(nxt)
        return seen

    assert reach(starts[0], out) == known, "every node is reached from the start"
    assert reach(ends[0], into) == known, "every node reaches the end"
    for cluster in graph["clusters"]:
        assert set(cluster["nodes"]) <= known | clusters
        assert cluster["start"] in cluster["nodes"] and cluster["end"] in cluster["nodes"]
        assert set(cluster["parents"]) <= clusters


def _edge(graph: dict[str, Any], source: str, target: str) -> dict[str, Any]:
    found = [e for e in graph["edges"] if e["source"] == source and e["target"] == target]
    assert len(found) == 1, (source, target, graph["edges"])
    return dict(found[0]["relation"])


def _cluster(graph: dict[str, Any], uid: str) -> dict[str, Any]:
    return next(c for c in graph["clusters"] if c["cluster"]["uid"] == uid)


def test_sequential_flow_is_a_chain_from_start_to_end() -> None:
    graph = _graph("tasks:\n" + _log("a", 2) + _log("b", 2) + _log("c", 2))
    assert graph["clusters"] == []
    tasks = [n for n in graph["nodes"] if n["type"].endswith(".GraphTask")]
    assert [n["uid"] for n in tasks] == ["root.a", "root.b", "root.c"]
    assert tasks[0]["task"]["type"] == LOG and tasks[0]["task"]["id"] == "a"
    assert _edge(graph, "root.a", "root.b") == {"relationType": "SEQUENTIAL", "value": None}
    assert _edge(graph, "root.b", "root.c")["relationType"] == "SEQUENTIAL"
    start = next(n for n in graph["nodes"] if n["type"].endswith("GraphClusterRoot"))
    assert _edge(graph, start["uid"], "root.a")["relationType"] is None


def test_same_revision_gives_the_same_graph() -> None:
    body = "tasks:\n" + _log("a", 2) + "errors:\n" + _log("e", 2)
    assert _graph(body) == _graph(body)


def test_parallel_is_a_cluster_whose_tasks_run_side_by_side() -> None:
    graph = _graph(
        f"tasks:\n  - id: par\n    type: {FLOW}Parallel\n    tasks:\n"
        + _log("t1", 6)
        + _log("t2", 6)
        + _log("after", 2)
    )
    cluster = _cluster(graph, "cluster_root.par")
    assert cluster["cluster"]["relationType"] == "PARALLEL"
    assert cluster["cluster"]["taskNode"]["uid"] == "root.par"
    assert cluster["parents"] == []
    assert {"root.par", "root.par.t1", "root.par.t2"} <= set(cluster["nodes"])
    assert _edge(graph, "root.par", "root.par.t1")["relationType"] == "PARALLEL"
    assert _edge(graph, "root.par", "root.par.t2")["relationType"] == "PARALLEL"
    _edge(graph, "root.par.t1", cluster["end"])
    _edge(graph, "root.par.t2", cluster["end"])
    assert _edge(graph, cluster["end"], "root.after")["relationType"] == "SEQUENTIAL"


def test_if_has_a_then_and_an_else_choice() -> None:
    graph = _graph(
        f"tasks:\n  - id: check\n    type: {FLOW}If\n    condition: '{{{{ true }}}}'\n"
        "    then:\n" + _log("yes1", 6) + _log("yes2", 6) + "    else:\n" + _log("nope", 6)
    )
    assert _cluster(graph, "cluster_root.check")["cluster"]["relationType"] == "CHOICE"
    assert _edge(graph, "root.check", "root.check.yes1") == {
        "relationType": "CHOICE",
        "value": "then",
    }
    assert _edge(graph, "root.check", "root.check.nope") == {
        "relationType": "CHOICE",
        "value": "else",
    }
    assert _edge(graph, "root.check.yes1", "root.check.yes2")["relationType"] == "SEQUENTIAL"
    # The If's own node shows its properties; its tasks are nodes of their own.
    check = next(n for n in graph["nodes"] if n["uid"] == "root.check")
    assert check["task"]["condition"] == "{{ true }}"
    assert not {"then", "else", "errors"} & set(check["task"])


def test_switch_has_one_choice_per_case_and_defaults() -> None:
    graph = _graph(
        f"tasks:\n  - id: sw\n    type: {FLOW}Switch\n    value: '{{{{ inputs.x }}}}'\n"
        "    cases:\n      FIRST:\n"
        + _log("one", 8)
        + "      SECOND:\n"
        + _log("two", 8)
        + "    defaults:\n"
        + _log("other", 6)
    )
    assert _edge(graph, "root.sw", "root.sw.one") == {"relationType": "CHOICE", "value": "FIRST"}
    assert _edge(graph, "root.sw", "root.sw.two")["value"] == "SECOND"
    assert _edge(graph, "root.sw", "root.sw.other")["value"] == "defaults"


def test_for_each_is_a_dynamic_cluster() -> None:
    graph = _graph(
        f"tasks:\n  - id: each\n    type: {FLOW}ForEach\n    values: [1, 2]\n    tasks:\n"
        + _log("first", 6)
        + _log("second", 6)
    )
    assert _cluster(graph, "cluster_root.each")["cluster"]["relationType"] == "DYNAMIC"
    assert _edge(graph, "root.each", "root.each.first")["relationType"] == "DYNAMIC"
    assert _edge(graph, "root.each.first", "root.each.second")["relationType"] == "DYNAMIC"


def test_errors_start_from_the_start_and_finally_runs_after_the_tasks() -> None:
    graph = _graph(
        "tasks:\n"
        + _log("work", 2)
        + "errors:\n"
        + _log("alert", 2)
        + _log("page", 2)
        + "finally:\n"
        + _log("cleanup", 2)
        + "afterExecution:\n"
        + _log("report", 2)
    )
    types = {n["uid"]: n["type"].rsplit(".", 1)[-1] for n in graph["nodes"]}
    start = next(u for u, t in types.items() if t == "GraphClusterRoot")
    fin = next(u for u, t in types.items() if t == "GraphClusterFinally")
    after = next(u for u, t in types.items() if t == "GraphClusterAfterExecution")
    assert _edge(graph, start, "root.alert")["relationType"] == "ERROR"
    assert _edge(graph, "root.alert", "root.page")["relationType"] == "ERROR"
    _edge(graph, "root.page", fin)
    _edge(graph, "root.work", fin)
    assert _edge(graph, fin, "root.cleanup")["relationType"] == "FINALLY"
    _edge(graph, "root.cleanup", after)
    assert _edge(graph, after, "root.report")["relationType"] == "AFTER_EXECUTION"
    branch = {n["uid"]: n.get("branchType") for n in graph["nodes"]}
    assert branch["root.alert"] == "ERROR" and branch["root.cleanup"] == "FINALLY"
    assert branch["root.work"] is None


def test_nested_flowables_keep_their_parents_and_their_own_errors() -> None:
    graph = _graph(
        f"tasks:\n  - id: outer\n    type: {FLOW}Sequential\n    tasks:\n"
        f"      - id: par\n        type: {FLOW}Parallel\n        tasks:\n"
        f"          - id: loop\n            type: {FLOW}EachSequential\n"
        "            value: [a, b]\n            tasks:\n"
        + _log("inner", 14)
        + _log("side", 10)
        + f"      - id: dag\n        type: {FLOW}Dag\n        tasks:\n"
        + f"          - task:\n              id: d1\n              type: {LOG}\n"
        + "              message: hi\n"
        + f"          - task:\n              id: d2\n              type: {LOG}\n"
        + "              message: hi\n            dependsOn: [d1]\n"
        + "    errors:\n"
        + _log("oops", 6)
        + f"  - id: tolerant\n    type: {FLOW}AllowFailure\n    tasks:\n"
        + f"      - id: wd\n        type: {FLOW}WorkingDirectory\n        tasks:\n"
        + _log("in_dir", 10)
    )
    loop = _cluster(graph, "cluster_root.outer.par.loop")
    assert loop["parents"] == ["cluster_root.outer", "cluster_root.outer.par"]
    assert "root.outer.par.loop.inner" in loop["nodes"]
    outer = _cluster(graph, "cluster_root.outer")
    assert _edge(graph, outer["start"], "root.outer.oops")["relationType"] == "ERROR"
    assert _edge(graph, "root.outer.dag.d1", "root.outer.dag.d2")["relationType"] == "PARALLEL"
    assert _edge(graph, "root.outer.dag", "root.outer.dag.d1")["relationType"] == "PARALLEL"
    assert _cluster(graph, "cluster_root.tolerant.wd")["parents"] == ["cluster_root.tolerant"]


def test_triggers_are_a_cluster_leading_to_the_start() -> None:
    graph = _graph(
        "tasks:\n"
        + _log("a", 2)
        + "triggers:\n  - id: hourly\n    type: io.kestra.plugin.core.trigger.Schedule\n"
        + "    cron: '0 * * * *'\n"
    )
    triggers = _cluster(graph, "cluster_root.Triggers")
    node = next(n for n in graph["nodes"] if n["uid"] == "root.Triggers.hourly")
    assert node["type"].endswith(".GraphTrigger")
    assert node["triggerDeclaration"]["cron"] == "0 * * * *"
    start = next(
        n["uid"]
        for n in graph["nodes"]
        if n["uid"].startswith("root.root-") and n["type"].endswith("GraphClusterRoot")
    )
    _edge(graph, triggers["end"], start)


def test_subflow_and_for_each_item_show_the_flow_they_run() -> None:
    graph = _graph(
        f"tasks:\n  - id: call\n    type: {FLOW}Subflow\n    namespace: other\n"
        "    flowId: child\n"
        f"  - id: items\n    type: {FLOW}ForEachItem\n    items: '{{{{ inputs.file }}}}'\n"
        "    namespace: other\n    flowId: child\n"
    )
    types = {n["uid"]: n["type"].rsplit(".", 1)[-1] for n in graph["nodes"]}
    assert types["root.call"] == "SubflowGraphTask"
    assert types["root.items.items_items"] == "SubflowGraphTask"
    _edge(graph, "root.items.items_split", "root.items.items_items")
    _edge(graph, "root.items.items_items", "root.items.items_merge")


def test_a_task_named_like_a_marker_keeps_uids_unique() -> None:
    plain = _graph("tasks:\n" + _log("a", 2))
    marker = next(n["uid"] for n in plain["nodes"] if n["uid"].startswith("root.root-"))
    _graph("tasks:\n" + _log(marker.removeprefix("root."), 2))


# --- dependencies ---------------------------------------------------------------------------


def _links(source: str) -> tuple[FlowKey, Any]:
    flow = parse_flow(source)
    return FlowKey(flow.namespace, flow.id), flow_links(flow, yaml.safe_load(source))


PARENT = f"""\
id: parent
namespace: team.a
tasks:
  - id: call
    type: {FLOW}Subflow
    namespace: team.a
    flowId: child
  - id: dynamic
    type: {FLOW}Subflow
    namespace: team.a
    flowId: "{{{{ inputs.which }}}}"
"""
CHILD = f"id: child\nnamespace: team.a\ntasks:\n{_log('x', 2)}"
BATCH = f"""\
id: batch
namespace: team.b
tasks:
  - id: each
    type: {FLOW}ForEachItem
    items: "{{{{ inputs.file }}}}"
    namespace: team.a
    flowId: child
"""
LISTENER = f"""\
id: listener
namespace: team.b
tasks:
{_log("x", 2)}triggers:
  - id: after_child
    type: io.kestra.plugin.core.trigger.Flow
    conditions:
      - type: io.kestra.plugin.core.condition.ExecutionStatus
        in: [SUCCESS]
      - type: io.kestra.plugin.core.condition.ExecutionFlow
        namespace: team.a
        flowId: child
"""
WATCHER = f"""\
id: watcher
namespace: team.c
tasks:
{_log("x", 2)}triggers:
  - id: after_batches
    type: io.kestra.plugin.core.trigger.Flow
    preconditions:
      id: batches
      flows:
        - namespace: team.b
          flowId: batch
          states: [SUCCESS]
"""
LONELY = f"id: lonely\nnamespace: team.a\ntasks:\n{_log('x', 2)}"


def _all_edges() -> list[Any]:
    return dependency_edges(
        dict(_links(s) for s in (PARENT, CHILD, BATCH, LISTENER, WATCHER, LONELY))
    )


def test_subflows_for_each_item_and_flow_triggers_link_flows() -> None:
    found = {(e.source.id, e.destination.id, e.relation) for e in _all_edges()}
    assert found == {
        ("parent", "child", "FLOW_TASK"),
        ("batch", "child", "FLOW_TASK"),
        ("child", "listener", "FLOW_TRIGGER"),
        ("batch", "watcher", "FLOW_TRIGGER"),
    }


def test_flow_dependencies_lists_both_directions_unless_destination_only() -> None:
    child = FlowKey("team.a", "child")
    both = flow_dependencies(_all_edges(), child)
    assert {n["id"] for n in both["nodes"]} == {"parent", "batch", "child", "listener"}
    assert {
        "source": "main_team.a_parent",
        "target": "main_team.a_child",
        "relation": "FLOW_TASK",
    } in both["edges"]
    node = next(n for n in both["nodes"] if n["id"] == "child")
    assert node == {
        "uid": "main_team.a_child",
        "tenantId": "main",
        "namespace": "team.a",
        "id": "child",
    }
    upstream = flow_dependencies(_all_edges(), child, destination_only=True)
    assert {n["id"] for n in upstream["nodes"]} == {"parent", "batch", "child"}


def test_expand_all_follows_dependencies_recursively() -> None:
    parent = FlowKey("team.a", "parent")
    near = flow_dependencies(_all_edges(), parent)
    assert {n["id"] for n in near["nodes"]} == {"parent", "child"}
    far = flow_dependencies(_all_edges(), parent, expand_all=True)
    assert {n["id"] for n in far["nodes"]} == {"parent", "child", "batch", "listener", "watcher"}
    assert len(far["edges"]) == 4


def test_namespace_graph_holds_every_flow_of_the_namespace() -> None:
    flows = [k for k, _ in (_links(s) for s in (PARENT, CHILD, BATCH, LISTENER, LONELY))]
    graph = namespace_dependencies(_all_edges(), flows, "team.a")
    assert {n["id"] for n in graph["nodes"]} == {"parent", "child", "lonely"}
    assert [(e["source"], e["target"]) for e in graph["edges"]] == [
        ("main_team.a_parent", "main_team.a_child")
    ]


def test_flow_trigger_without_flow_conditions_listens_to_every_flow() -> None:
    every = LISTENER.split("      - type: io.kestra.plugin.core.condition.ExecutionFlow")[0]
    edges = dependency_edges(dict(_links(s) for s in (every, CHILD, LONELY)))
    assert {(e.source.id, e.destination.id) for e in edges} == {
        ("child", "listener"),
        ("lonely", "listener"),
    }


# --- Kestra's own flows ------------------------------------------------------------------------

# Node, edge and cluster counts Kestra's FlowGraphTest expects of its test flows.
KESTRA_COUNTS = {
    "return.yaml": (5, 4, 0),
    "sequential.yaml": (19, 18, 3),
    "errors.yaml": (17, 17, 4),
    "parallel.yaml": (12, 16, 1),
    "parallel-nested.yaml": (19, 23, 3),
    "switch.yaml": (17, 20, 3),
    "each-parallel-nested.yaml": (11, 10, 2),
    "all-flowable.yaml": (38, 42, 7),
    "dag.yaml": (11, 13, 1),
    "trigger-flow-listener.yaml": (6, 5, 1),
    "trigger-flow-listener-no-inputs.yaml": (7, 7, 1),
    "task-flow.yaml": (6, 5, 1),
}


def _corpus_graph(flows: Path, name: str) -> dict[str, Any]:
    graph = flow_graph(parse_flow((flows / "valids" / name).read_text()))
    _check_shape(graph)
    return graph


@pytest.mark.parametrize("name", sorted(KESTRA_COUNTS))
def test_kestra_test_flows_have_the_graph_kestra_draws(kestra_flows: Path, name: str) -> None:
    graph = _corpus_graph(kestra_flows, name)
    counts = (len(graph["nodes"]), len(graph["edges"]), len(graph["clusters"]))
    assert counts == KESTRA_COUNTS[name]


def test_kestra_errors_and_switch_relations(kestra_flows: Path) -> None:
    errors = _corpus_graph(kestra_flows, "errors.yaml")
    start = next(n["uid"] for n in errors["nodes"] if n["uid"].startswith("root.root-"))
    assert _edge(errors, start, "root.t2")["relationType"] == "ERROR"
    assert _edge(errors, start, "root.failed")["relationType"] is None
    switch = _corpus_graph(kestra_flows, "switch.yaml")
    seq = "root.parent-seq"
    assert _edge(switch, seq, f"{seq}.t1") == {"relationType": "CHOICE", "value": "FIRST"}
    assert _edge(switch, seq, f"{seq}.default") == {"relationType": "CHOICE", "value": "defaults"}


def test_every_valid_kestra_flow_has_a_well_formed_graph(kestra_flows: Path) -> None:
    checked = 0
    for path in sorted((kestra_flows / "valids").rglob("*.y*ml")):
        try:
            flow = parse_flow(path.read_text())
        except TiercelError:
            continue  # a flow Tiercel refuses (tests/conformance says which and why)
        _check_shape(flow_graph(flow))
        checked += 1
    assert checked > 100


def test_flow_trigger_preconditions_are_read_from_the_parsed_flow_alone() -> None:
    assert flow_links(parse_flow(WATCHER)) == _links(WATCHER)[1]
    graph = _graph("tasks:\n" + WATCHER.split("tasks:\n", 1)[1])
    trigger = next(n for n in graph["nodes"] if n["type"].endswith(".GraphTrigger"))
    assert trigger["triggerDeclaration"]["preconditions"]["flows"][0]["flowId"] == "batch"
