"""Topology: the task graph of a flow revision, and the dependencies between flows.

Both are pure functions of parsed flows, in Kestra's JSON shapes so that Kestra's UI and
clients read them unchanged:

- `flow_graph(flow)` is Kestra's FlowGraph: `nodes` (`uid`, `type`, `task`...), `edges`
  (`source`, `target`, `relation: {relationType, value}`) and `clusters` (`cluster`, `nodes`,
  `parents`, `start`, `end`), one cluster per flowable task that holds tasks, and one for the
  triggers. Every node is reached from the graph's one start node and reaches its one end node.
  Uids are derived from task ids, so the same revision always gives the same graph.
- `flow_links(flow, document)` says which flows one flow names: the flows its Subflow and
  ForEachItem tasks run, and the flows its Flow triggers listen to (`source_links` reads them
  from a recorded YAML source; the flows read model keeps them, as `listens_json` encodes a
  flow's Flow triggers). `dependency_edges` resolves those against the flows that exist, and
  `flow_dependencies` / `namespace_dependencies` shape them as Kestra's FlowTopologyGraph
  (`nodes` of flows, `edges` with a FLOW_TASK or FLOW_TRIGGER `relation`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple, TypeGuard

import msgspec

from engine import safe_yaml
from engine.flow import Flow, flow_from_dict, walk
from engine.plugin import FlowableTask, Task, canonical_name

HIERARCHIES = "io.kestra.core.models.hierarchies."
"""Kestra's package of graph classes: a node's `type` names its class there."""

SEQUENTIAL, PARALLEL, CHOICE, DYNAMIC = "SEQUENTIAL", "PARALLEL", "CHOICE", "DYNAMIC"
ERROR, FINALLY, AFTER_EXECUTION = "ERROR", "FINALLY", "AFTER_EXECUTION"

_FLOW = "io.kestra.plugin.core.flow."
SUBFLOW_TYPES = frozenset({_FLOW + "Subflow", _FLOW + "ForEachItem"})
"""Task types that run another flow (Kestra's ExecutableTask)."""
FLOW_TRIGGER_TYPES = frozenset(
    {"io.kestra.plugin.core.trigger.Flow", "io.kestra.core.models.triggers.types.Flow"}
)

_RELATIONS = {
    _FLOW + "Parallel": PARALLEL,
    _FLOW + "EachParallel": DYNAMIC,
    _FLOW + "EachSequential": DYNAMIC,
    _FLOW + "ForEach": DYNAMIC,
    _FLOW + "If": CHOICE,
    _FLOW + "Switch": CHOICE,
}
"""The relation of a flowable task's cluster (SEQUENTIAL when not listed)."""


# --- the task graph ------------------------------------------------------------------------


class _Cluster:
    """A flowable task's cluster (or the flow's own, `root`) while it is built."""

    def __init__(self, uid: str, parents: list[str]) -> None:
        self.uid = uid
        self.parents = parents
        self.members: list[str] = []
        self.start = ""
        self.end = ""


def _task_json(task: Task) -> dict[str, Any]:
    """The task as JSON, without its child tasks: they are nodes of their own, and repeating
    them in every enclosing task's node would make the graph grow with the square of the
    flow's depth."""
    out: dict[str, Any] = msgspec.to_builtins(task)
    if isinstance(task, FlowableTask):
        names = {f.name: f.encode_name for f in msgspec.structs.fields(task)}
        for field in (
            *getattr(task, "__child_fields__", ()),
            *getattr(task, "__nested_fields__", ()),
        ):
            out.pop(names.get(field, field), None)
    return out


class _Builder:
    def __init__(self, reserved: set[str]) -> None:
        self.reserved = reserved
        """Task and trigger ids: a marker node's name must differ from all of them."""
        self.nodes: list[dict[str, Any]] = []
        self.edges: list[dict[str, Any]] = []
        self.clusters: list[dict[str, Any]] = []

    def marker(self, cluster: _Cluster, kind: str, branch: str | None) -> str:
        # Kestra names them `root-<random id>`; a digest of the cluster keeps the graph of a
        # revision the same from one request to the next.
        digest = hashlib.sha1(f"{cluster.uid}/{kind}".encode()).hexdigest()
        size = 8
        while f"{kind}-{digest[:size]}" in self.reserved and size < len(digest):
            size += 4
        uid = f"{cluster.uid}.{kind}-{digest[:size]}"
        kinds = {
            "root": "GraphClusterRoot",
            "end": "GraphClusterEnd",
            "finally": "GraphClusterFinally",
            "afterExecution": "GraphClusterAfterExecution",
        }
        self.nodes.append({"uid": uid, "type": HIERARCHIES + kinds[kind], "branchType": branch})
        cluster.members.append(uid)
        return uid

    def edge(self, source: str, target: str, relation: str | None, value: str | None) -> None:
        self.edges.append(
            {
                "source": source,
                "target": target,
                "relation": {"relationType": relation, "value": value},
            }
        )

    def task_node(
        self, cluster: _Cluster, task: Task, relation: str | None, branch: str | None, uid: str
    ) -> dict[str, Any]:
        subflow = canonical_name(type(task)) == _FLOW + "Subflow"
        node: dict[str, Any] = {
            "uid": uid,
            "type": HIERARCHIES + ("SubflowGraphTask" if subflow else "GraphTask"),
            "task": _task_json(task),
            "taskRun": None,
            "values": None,
            "relationType": relation,
            "branchType": branch,
        }
        self.nodes.append(node)
        cluster.members.append(uid)
        return node

    def element(
        self, cluster: _Cluster, task: Task, relation: str | None, branch: str | None
    ) -> tuple[str, str]:
        """Add `task` to `cluster`: a node, or a cluster of its own when it holds tasks.
        Returns the uids an edge enters and leaves it by."""
        branches = task.branches() if isinstance(task, FlowableTask) else {}
        if not any(branches.values()):
            uid = f"{cluster.uid}.{task.id}"
            self.task_node(cluster, task, relation, branch, uid)
            return uid, uid
        inner = _Cluster(f"{cluster.uid}.{task.id}", [*cluster.parents, "cluster_" + cluster.uid])
        if cluster.uid == "root":
            inner.parents = []  # the flow's own cluster is not listed, as in Kestra
        cluster.members.append("cluster_" + inner.uid)
        kind = canonical_name(type(task))
        own = _RELATIONS.get(kind, SEQUENTIAL)
        entry: dict[str, Any] = {
            "cluster": {
                "uid": "cluster_" + inner.uid,
                "type": HIERARCHIES + "GraphCluster",
                "relationType": own,
                "branchType": branch,
                "taskNode": None,
            },
            "nodes": inner.members,
            "parents": inner.parents,
        }
        self.clusters.append(entry)
        inner.start = self.marker(inner, "root", branch)
        inner.end = self.marker(inner, "end", branch)
        # The flowable task's own node is named as the cluster is (Kestra's `taskNode`).
        head = self.task_node(inner, task, relation, branch, inner.uid)
        entry["cluster"]["taskNode"] = head
        entry["start"], entry["end"] = inner.start, inner.end
        self.edge(inner.start, head["uid"], None, None)
        laid = self.lay_out(inner, task, kind, own, head["uid"], branches, branch)
        errors = branches.get("errors") or []
        self.branch(inner, errors, inner.start, inner.end, ERROR, ERROR, None, ERROR)
        if not laid:
            self.edge(head["uid"], inner.end, None, None)
        return inner.start, inner.end

    def lay_out(
        self,
        cluster: _Cluster,
        task: Task,
        kind: str,
        own: str,
        head: str,
        branches: dict[str, list[Task]],
        branch: str | None,
    ) -> bool:
        """Lay out a flowable task's children between its node and its cluster's end; whether
        any child was laid out."""
        end = cluster.end
        if kind == _FLOW + "Dag":
            return self.dag(cluster, task, head, branch)
        if kind == _FLOW + "ForEachItem":
            steps = [t for name, ts in branches.items() if name.startswith("_") for t in ts]
            return self.branch(cluster, steps, head, end, SEQUENTIAL, SEQUENTIAL, None, branch)
        laid = False
        side_by_side = kind in (_FLOW + "Parallel", _FLOW + "EachParallel") or (
            kind == _FLOW + "ForEach" and getattr(task, "concurrencyLimit", 1) != 1
        )
        for name, children in branches.items():
            if name == "errors":
                continue
            if own == CHOICE:
                value = name.removeprefix("cases.")
                laid |= self.branch(cluster, children, head, end, CHOICE, SEQUENTIAL, value, branch)
            elif side_by_side:
                laid |= self.branch(cluster, children, head, end, own, own, None, branch, True)
            else:
                rest = DYNAMIC if own == DYNAMIC else SEQUENTIAL
                laid |= self.branch(cluster, children, head, end, own, rest, None, branch)
        return laid

    def branch(
        self,
        cluster: _Cluster,
        tasks: list[Task],
        entry: str,
        leave: str,
        first: str | None,
        rest: str | None,
        value: str | None,
        branch: str | None,
        side_by_side: bool = False,
    ) -> bool:
        """Tasks one after the other (or side by side) from `entry` to `leave`; whether there
        were any."""
        previous, relation = entry, first
        for task in tasks:
            into, out = self.element(cluster, task, relation, branch)
            self.edge(previous, into, relation, value)
            if side_by_side:
                self.edge(out, leave, None, None)
            else:
                previous, relation = out, rest
        if tasks and not side_by_side:
            self.edge(previous, leave, None, None)
        return bool(tasks)

    def dag(self, cluster: _Cluster, task: Task, head: str, branch: str | None) -> bool:
        items = [
            (item["task"], [str(d) for d in item.get("dependsOn") or []])
            for item in getattr(task, "tasks", [])
            if isinstance(item, dict) and isinstance(item.get("task"), Task)
        ]
        needed = {dep for _, deps in items for dep in deps}
        known = {t.id for t, _ in items}
        exits: dict[str, str] = {}
        placed: set[str] = set()
        # Dependencies first, so that every edge starts from a node already laid out; a cycle
        # (refused when the flow is saved) would leave tasks out, never loop.
        while len(placed) < len(items):
            ready = [
                (t, deps)
                for t, deps in items
                if t.id not in placed and all(d in placed or d not in known for d in deps)
            ]
            if not ready:
                break
            for t, deps in ready:
                into, out = self.element(cluster, t, PARALLEL, branch)
                sources = [exits[d] for d in deps if d in exits] or [head]
                for source in sources:
                    self.edge(source, into, PARALLEL, None)
                if t.id not in needed:
                    self.edge(out, cluster.end, None, None)
                exits[t.id] = out
                placed.add(t.id)
        return bool(placed)


def _declared(trigger: Any) -> Any:
    # A Kestra trigger type Tiercel keeps without running it shows its properties as written.
    written = getattr(trigger, "written", None)
    return written if isinstance(written, dict) else msgspec.to_builtins(trigger)


def flow_graph(flow: Flow) -> dict[str, Any]:
    """The task graph of `flow` as Kestra's FlowGraph (see the module's description): tasks,
    then `finally` and `afterExecution`, with `errors` from the start; a cluster per flowable
    task holding tasks, and one for the triggers, which lead to the start."""
    reserved = {t.id for t in flow.all_tasks()} | {t.id for t in flow.triggers}
    b = _Builder(reserved)
    root = _Cluster("root", [])
    root.start = b.marker(root, "root", None)
    stages: list[tuple[str, list[Task], str]] = []
    if flow.finally_:
        stages.append(("finally", flow.finally_, FINALLY))
    if flow.afterExecution:
        stages.append(("afterExecution", flow.afterExecution, AFTER_EXECUTION))
    markers = [b.marker(root, kind, None) for kind, _, _ in stages]
    root.end = b.marker(root, "end", None)
    after_tasks = markers[0] if markers else root.end
    if not b.branch(root, flow.tasks, root.start, after_tasks, None, SEQUENTIAL, None, None):
        b.edge(root.start, after_tasks, None, None)
    b.branch(root, flow.errors, root.start, after_tasks, ERROR, ERROR, None, ERROR)
    for i, (_, tasks, relation) in enumerate(stages):
        leave = markers[i + 1] if i + 1 < len(markers) else root.end
        b.branch(root, tasks, markers[i], leave, relation, relation, None, relation)
    if flow.triggers:
        name = "Triggers"
        while name in reserved:
            name += "_"
        triggers = _Cluster(f"root.{name}", [])
        root.members.append("cluster_" + triggers.uid)
        triggers.start = b.marker(triggers, "root", None)
        triggers.end = b.marker(triggers, "end", None)
        for trigger in flow.triggers:
            uid = f"{triggers.uid}.{trigger.id}"
            declaration = _declared(trigger)
            b.nodes.append(
                {
                    "uid": uid,
                    "type": HIERARCHIES + "GraphTrigger",
                    "triggerDeclaration": declaration,
                    "trigger": None,
                    "branchType": None,
                }
            )
            triggers.members.append(uid)
            b.edge(triggers.start, uid, None, None)
            b.edge(uid, triggers.end, None, None)
        b.edge(triggers.end, root.start, None, None)
        b.clusters.insert(
            0,
            {
                "cluster": {
                    "uid": "cluster_" + triggers.uid,
                    "type": HIERARCHIES + "GraphCluster",
                    "relationType": None,
                    "branchType": None,
                    "taskNode": None,
                },
                "nodes": triggers.members,
                "parents": [],
                "start": triggers.start,
                "end": triggers.end,
            },
        )
    return {"nodes": b.nodes, "edges": b.edges, "clusters": b.clusters}


# --- dependencies between flows ---------------------------------------------------------------


class FlowKey(NamedTuple):
    """A flow, by namespace and id."""

    namespace: str
    id: str


class FlowMatch(NamedTuple):
    """Flows a Flow trigger's condition names: a namespace compared EQUALS, PREFIX or SUFFIX,
    and a flow id (None: any flow there)."""

    namespace: str
    comparison: str = "EQUALS"
    flow_id: str | None = None

    def matches(self, flow: FlowKey) -> bool:
        """Whether `flow` is one of the flows named."""
        if self.flow_id is not None and flow.id != self.flow_id:
            return False
        if self.comparison == "PREFIX":
            return flow.namespace.startswith(self.namespace)
        if self.comparison == "SUFFIX":
            return flow.namespace.endswith(self.namespace)
        return flow.namespace == self.namespace


class FlowLinks(NamedTuple):
    """What one flow says of other flows."""

    calls: frozenset[FlowKey]
    """The flows its Subflow and ForEachItem tasks run (those written without an expression)."""
    listens: tuple[tuple[tuple[FlowMatch, ...], ...], ...]
    """One entry per Flow trigger: the conditions that must all hold, each a choice of flows
    (any of them). A trigger without any condition naming flows listens to every flow."""


NO_LINKS = FlowLinks(frozenset(), ())


def _plain(value: Any) -> TypeGuard[str]:
    return isinstance(value, str) and bool(value) and "{{" not in value


def _as_data(value: Any) -> Any:
    return msgspec.to_builtins(value) if isinstance(value, msgspec.Struct) else value


def _condition_matches(raw: Any) -> tuple[FlowMatch, ...] | None:
    """The flows a condition names (any of them), or None when it names none (a filter on
    states, dates or an expression, which does not say which flows it listens to)."""
    condition = _as_data(raw)
    if not isinstance(condition, dict) or not isinstance(condition.get("type"), str):
        return None
    kind = condition["type"].rsplit(".", 1)[-1].removesuffix("Condition")
    namespace = condition.get("namespace")
    if kind == "ExecutionFlow":
        flow_id = condition.get("flowId")
        if _plain(namespace) and _plain(flow_id):
            return (FlowMatch(namespace, "EQUALS", flow_id),)
    elif kind == "ExecutionNamespace" and _plain(namespace):
        comparison = str(condition.get("comparison") or "").upper()
        if condition.get("prefix") is True:
            comparison = "PREFIX"
        if comparison not in ("PREFIX", "SUFFIX"):
            comparison = "EQUALS"
        return (FlowMatch(namespace, comparison),)
    elif kind == "Multiple":
        nested = condition.get("conditions")
        found = [
            m
            for c in (nested.values() if isinstance(nested, dict) else [])
            for m in (_condition_matches(c) or ())
        ]
        return tuple(found) or None
    return None


def _trigger_requirements(
    trigger: Any, declared: Mapping[str, Any] | None
) -> tuple[tuple[FlowMatch, ...], ...]:
    requirements = []
    for condition in getattr(trigger, "conditions", None) or []:
        found = _condition_matches(condition)
        if found is not None:
            requirements.append(found)
    # `preconditions` (Kestra 0.19+) is kept as written in the flow's document: Tiercel does
    # not run Flow triggers, so the parsed trigger does not hold it.
    preconditions = _as_data(getattr(trigger, "preconditions", None))
    if preconditions is None and declared is not None:
        preconditions = declared.get("preconditions")
    flows = preconditions.get("flows") if isinstance(preconditions, dict) else None
    named = tuple(
        FlowMatch(f["namespace"], "EQUALS", f["flowId"] if _plain(f.get("flowId")) else None)
        for f in (flows if isinstance(flows, list) else [])
        if isinstance(f, dict) and _plain(f.get("namespace"))
    )
    if named:
        requirements.append(named)
    return tuple(requirements)


def flow_links(flow: Flow, document: Mapping[str, Any] | None = None) -> FlowLinks:
    """The flows `flow` names (see `FlowLinks`). `document` is the flow's YAML as loaded, for
    what the parsed flow does not keep (a Flow trigger's `preconditions`)."""
    calls = set()
    for task in walk([*flow.tasks, *flow.errors, *flow.finally_, *flow.afterExecution]):
        if canonical_name(type(task)) not in SUBFLOW_TYPES:
            continue
        namespace, flow_id = getattr(task, "namespace", None), getattr(task, "flowId", None)
        if _plain(namespace) and _plain(flow_id):
            calls.add(FlowKey(namespace, flow_id))
    declared_triggers = document.get("triggers") if document is not None else None
    by_id = {
        t.get("id"): t
        for t in (declared_triggers if isinstance(declared_triggers, list) else [])
        if isinstance(t, dict)
    }
    listens = tuple(
        _trigger_requirements(trigger, by_id.get(trigger.id) or _declared(trigger))
        for trigger in flow.triggers
        if trigger.type in FLOW_TRIGGER_TYPES
    )
    return FlowLinks(frozenset(calls), listens)


LINK_HINTS = ("flowId", ".Flow")
"""What the source of a flow naming other flows holds: a Subflow or ForEachItem task needs a
`flowId`, a Flow trigger's type ends in `.Flow`. Other sources are not parsed."""


def source_links(source: str) -> FlowLinks:
    """What the recorded YAML `source` of a flow revision names (see `FlowLinks`); NO_LINKS
    when it names no other flow, or can no longer be read as a flow (a revision recorded
    under older rules, or naming a plugin since removed)."""
    if not any(hint in source for hint in LINK_HINTS):
        return NO_LINKS
    try:
        document = safe_yaml.load(source)
        if not isinstance(document, dict):
            return NO_LINKS
        return flow_links(flow_from_dict(document), document)
    except Exception:
        # Any failure at all: the flows read model calls this for every deploy, and one
        # unreadable revision must not stop it.
        return NO_LINKS


Listens = tuple[tuple[tuple[FlowMatch, ...], ...], ...]
"""`FlowLinks.listens`: per Flow trigger, its requirements, each a choice of flows."""


def listens_json(listens: Listens) -> list[list[list[dict[str, str | None]]]]:
    """`listens` as JSON (what the flows read model stores): a list per trigger of its
    requirements, each a list of `{namespace, comparison, flowId}`."""
    return [
        [
            [{"namespace": m.namespace, "comparison": m.comparison, "flowId": m.flow_id} for m in r]
            for r in requirements
        ]
        for requirements in listens
    ]


def listens_from_json(data: Any) -> Listens:
    """What `listens_json` wrote, read back."""
    return tuple(
        tuple(
            tuple(FlowMatch(m["namespace"], m["comparison"], m.get("flowId")) for m in r)
            for r in requirements
        )
        for requirements in data
    )


def listens_to(listens: Listens, flow: FlowKey) -> bool:
    """Whether a flow with Flow triggers `listens` listens to `flow`: one of its triggers has
    every requirement met by it (a trigger naming no flow listens to every flow)."""
    return any(
        all(any(m.matches(flow) for m in choice) for choice in requirements)
        for requirements in listens
    )


class Dependency(NamedTuple):
    """`source` leads to executions of `destination`: it runs it as a subflow (FLOW_TASK), or
    `destination` has a Flow trigger listening to it (FLOW_TRIGGER)."""

    source: FlowKey
    destination: FlowKey
    relation: str


def dependency_edges(links: Mapping[FlowKey, FlowLinks]) -> list[Dependency]:
    """Every dependency between the flows of `links` (flows outside it are not linked to, as
    Kestra links only flows that exist); one per pair, FLOW_TASK before FLOW_TRIGGER, sorted."""
    found: dict[tuple[FlowKey, FlowKey], str] = {}
    for source, own in links.items():
        for target in own.calls:
            if target != source and target in links:
                found[(source, target)] = "FLOW_TASK"
    for destination, own in links.items():
        if not own.listens:
            continue
        for source in links:
            if source == destination or (source, destination) in found:
                continue
            if listens_to(own.listens, source):
                found[(source, destination)] = "FLOW_TRIGGER"
    return sorted(Dependency(s, d, r) for (s, d), r in found.items())


def _node(flow: FlowKey, tenant: str) -> dict[str, Any]:
    return {
        "uid": f"{tenant}_{flow.namespace}_{flow.id}",
        "tenantId": tenant,
        "namespace": flow.namespace,
        "id": flow.id,
    }


def topology_json(
    edges: Iterable[Dependency], flows: Iterable[FlowKey] = (), tenant: str = "main"
) -> dict[str, Any]:
    """Kestra's FlowTopologyGraph of `edges`: their flows (and `flows`) as nodes."""
    edges = list(edges)
    nodes = {f for e in edges for f in (e.source, e.destination)} | set(flows)
    return {
        "nodes": [_node(f, tenant) for f in sorted(nodes)],
        "edges": [
            {
                "source": _node(e.source, tenant)["uid"],
                "target": _node(e.destination, tenant)["uid"],
                "relation": e.relation,
            }
            for e in edges
        ],
    }


def flow_dependencies(
    edges: Iterable[Dependency],
    flow: FlowKey,
    *,
    destination_only: bool = False,
    expand_all: bool = False,
    tenant: str = "main",
) -> dict[str, Any]:
    """The dependencies of `flow`, as Kestra's `GET /flows/{namespace}/{id}/dependencies`:
    the flows leading to it (and, unless `destination_only`, the flows it leads to); with
    `expand_all`, theirs too, recursively."""
    touching: dict[FlowKey, list[Dependency]] = {}
    for e in edges:
        touching.setdefault(e.destination, []).append(e)
        if not destination_only:
            touching.setdefault(e.source, []).append(e)
    chosen: set[Dependency] = set()
    seen, todo = {flow}, [flow]
    while todo:
        current = todo.pop()
        for e in touching.get(current, ()):
            chosen.add(e)
            other = e.source if e.destination == current else e.destination
            if expand_all and other not in seen:
                seen.add(other)
                todo.append(other)
    return topology_json(sorted(chosen), tenant=tenant)


def namespace_dependencies(
    edges: Iterable[Dependency], flows: Iterable[FlowKey], namespace: str, tenant: str = "main"
) -> dict[str, Any]:
    """The dependency graph of a namespace, as Kestra's `GET /namespaces/{namespace}/
    dependencies`: every flow of the namespace, and the dependencies between them."""
    inside = [
        e for e in edges if e.source.namespace == namespace and e.destination.namespace == namespace
    ]
    own = [f for f in flows if f.namespace == namespace]
    return topology_json(inside, own, tenant)
