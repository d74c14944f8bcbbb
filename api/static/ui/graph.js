// Draws a flow's task graph (the FlowGraph of GET /api/v1/flows/{ns}/{id}/graph) as SVG:
// columns by longest path from the start, clusters (Parallel, If, Switch, ForEach, ...) as
// boxes around their tasks, the `errors` branch in a box of its own.
(function () {
  "use strict";
  const NS = "http://www.w3.org/2000/svg";
  const TASK_W = 180, TASK_H = 46, GAP = 50, ROW = 70, MARGIN = 40;

  function svg(tag, attrs = {}, text) {
    const node = document.createElementNS(NS, tag);
    for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, value);
    if (text !== undefined) node.textContent = text;
    return node;
  }

  const shortType = (type) => (type || "").split(".").pop();
  const isMarker = (node) => !node.task;

  // The `errors` branch: the tasks an ERROR edge leads to, and the clusters they open.
  function errorMembers(graph) {
    const members = new Set(graph.edges.filter((e) => e.relation?.relationType === "ERROR").map((e) => e.target));
    for (const c of graph.clusters || []) {
      if (c.nodes.some((uid) => members.has(uid))) c.nodes.forEach((uid) => members.add(uid));
    }
    return members;
  }

  function layout(graph) {
    const nodes = new Map(graph.nodes.map((n, i) => [n.uid, { ...n, index: i, preds: [], succs: [] }]));
    const edges = graph.edges.filter((e) => nodes.has(e.source) && nodes.has(e.target));
    for (const e of edges) {
      nodes.get(e.source).succs.push(e.target);
      nodes.get(e.target).preds.push(e.source);
    }
    // Longest path from the sources (Kahn's order), so every edge points right.
    const indegree = new Map([...nodes.keys()].map((k) => [k, nodes.get(k).preds.length]));
    const queue = [...nodes.values()].filter((n) => n.preds.length === 0).map((n) => n.uid);
    for (const uid of queue) nodes.get(uid).rank = 0;
    while (queue.length) {
      const uid = queue.shift();
      const node = nodes.get(uid);
      for (const next of node.succs) {
        const target = nodes.get(next);
        target.rank = Math.max(target.rank || 0, node.rank + 1);
        indegree.set(next, indegree.get(next) - 1);
        if (indegree.get(next) === 0) queue.push(next);
      }
    }
    for (const node of nodes.values()) if (node.rank === undefined) node.rank = 0;  // a cycle
    // Rows: in each column, order by the mean row of the predecessors (fewer crossings). The
    // `errors` branch gets a band of its own under the main graph.
    const errors = errorMembers(graph);
    const bands = [[], []];
    for (const node of [...nodes.values()].sort((a, b) => a.index - b.index)) {
      const band = bands[errors.has(node.uid) ? 1 : 0];
      (band[node.rank] ||= []).push(node);
    }
    // A column is as wide as its widest node: columns of start/end markers stay narrow.
    const ranks = Math.max(0, ...[...nodes.values()].map((n) => n.rank)) + 1;
    const columnWidth = Array.from({ length: ranks }, () => 12 + GAP);
    for (const node of nodes.values()) if (!isMarker(node)) columnWidth[node.rank] = TASK_W + GAP;
    const left = [MARGIN];
    for (let r = 1; r <= ranks; r++) left.push(left[r - 1] + columnWidth[r - 1]);
    let top = MARGIN;
    for (const columns of bands) {
      for (const column of columns) {
        if (!column) continue;
        column.forEach((node) => {
          const rows = node.preds.map((p) => nodes.get(p).row).filter((r) => r !== undefined);
          node.key = rows.length ? rows.reduce((a, b) => a + b, 0) / rows.length : node.index;
        });
        column.sort((a, b) => a.key - b.key || a.index - b.index);
        column.forEach((node, row) => { node.row = row; });
      }
      const tallest = Math.max(0, ...columns.filter(Boolean).map((c) => c.length));
      for (const column of columns) {
        if (!column) continue;
        const offset = ((tallest - column.length) * ROW) / 2;
        for (const node of column) {
          node.x = left[node.rank];
          node.y = top + offset + node.row * ROW;
          node.w = isMarker(node) ? 12 : TASK_W;
          node.h = isMarker(node) ? 12 : TASK_H;
          if (isMarker(node)) {
            node.x += (columnWidth[node.rank] - GAP - 12) / 2;
            node.y += (TASK_H - 12) / 2;
          }
        }
      }
      if (tallest) top += tallest * ROW + 40;
    }
    return { nodes, edges, errors, width: left[ranks] + MARGIN, height: top + MARGIN };
  }

  function clusters(graph, nodes, errors) {
    const boxes = (graph.clusters || []).map((c) => ({
      label: `${c.cluster.taskNode?.task?.id || ""} · ${shortType(c.cluster.taskNode?.task?.type)}`,
      members: c.nodes.filter((uid) => nodes.has(uid)),
      depth: (c.parents || []).length,
      kind: "cluster",
    }));
    if (errors.size) boxes.push({ label: "errors", members: [...errors], depth: -1, kind: "cluster errors" });
    const deepest = Math.max(0, ...boxes.map((b) => b.depth));
    return boxes.filter((b) => b.members.length).map((box) => {
      const pad = 12 + 10 * (deepest - box.depth);
      const xs = box.members.map((uid) => nodes.get(uid));
      return {
        ...box,
        x: Math.min(...xs.map((n) => n.x)) - pad,
        y: Math.min(...xs.map((n) => n.y)) - pad - 10,
        w: Math.max(...xs.map((n) => n.x + n.w)) - Math.min(...xs.map((n) => n.x)) + 2 * pad,
        h: Math.max(...xs.map((n) => n.y + n.h)) - Math.min(...xs.map((n) => n.y)) + 2 * pad + 10,
      };
    }).sort((a, b) => a.depth - b.depth);
  }

  // Renders `graph` into `container`; `states` (task id -> state) colours the tasks.
  function render(container, graph, states = {}) {
    const { nodes, edges, errors, width, height } = layout(graph);
    const boxes = clusters(graph, nodes, errors);
    const minX = Math.min(0, ...boxes.map((b) => b.x - 10));
    const minY = Math.min(0, ...boxes.map((b) => b.y - 10));
    const root = svg("svg", {
      width: width - minX, height: height - minY,
      viewBox: `${minX} ${minY} ${width - minX} ${height - minY}`,
      role: "img", "aria-label": `Task graph: ${[...nodes.values()].filter((n) => n.task).length} tasks`,
    });
    for (const box of boxes) {
      const g = svg("g", { class: box.kind });
      g.append(svg("rect", { x: box.x, y: box.y, width: box.w, height: box.h, rx: 10 }));
      g.append(svg("text", { x: box.x + 8, y: box.y + 14 }, box.label));
      root.append(g);
    }
    for (const e of edges) {
      const a = nodes.get(e.source), b = nodes.get(e.target);
      const x1 = a.x + a.w, y1 = a.y + a.h / 2, x2 = b.x, y2 = b.y + b.h / 2;
      const mid = (x1 + x2) / 2;
      root.append(svg("path", {
        class: "edge" + (e.relation?.relationType === "ERROR" ? " error" : ""),
        d: `M${x1},${y1} C${mid},${y1} ${mid},${y2} ${x2},${y2}`,
      }));
    }
    for (const node of nodes.values()) {
      if (isMarker(node)) {
        const g = svg("g", { class: "marker" });
        g.append(svg("circle", { cx: node.x + 6, cy: node.y + 6, r: 5 }));
        root.append(g);
        continue;
      }
      const state = states[node.task.id];
      const g = svg("g", { class: "node" + (state ? ` state-${state}` : ""), "data-task-id": node.task.id });
      g.append(svg("title", {}, `${node.task.id} (${node.task.type})${state ? ": " + state : ""}`));
      g.append(svg("rect", { x: node.x, y: node.y, width: node.w, height: node.h, rx: 6 }));
      g.append(svg("text", { x: node.x + 10, y: node.y + 19 }, node.task.id));
      g.append(svg("text", { x: node.x + 10, y: node.y + 35, class: "type" }, shortType(node.task.type)));
      root.append(g);
    }
    container.replaceChildren(root);
  }

  window.TiercelGraph = { render };
})();
