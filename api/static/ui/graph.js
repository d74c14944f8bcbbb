// Draws a flow's task graph (the FlowGraph of GET /api/v1/flows/{ns}/{id}/graph) as SVG:
// ranks by longest path from the start (columns, or rows in the editor's preview), clusters
// (Parallel, If, Switch, ForEach, ...) as boxes around their tasks, the `errors` branch in a box
// of its own.
(function () {
  "use strict";
  const NS = "http://www.w3.org/2000/svg";
  const MARGIN = 40;
  // Left to right (a flow's page), or top to bottom (the editor's narrow, tall preview): a
  // node's size, the gap between ranks and the step between nodes of one rank.
  const DIRECTIONS = {
    right: { w: 180, h: 46, gap: 50, step: 70 },
    down: { w: 150, h: 46, gap: 34, step: 165 },
  };

  function svg(tag, attrs = {}, text) {
    const node = document.createElementNS(NS, tag);
    for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, value);
    if (text !== undefined) node.textContent = text;
    return node;
  }

  // Below this scale a fitted graph's 12 px labels shrink under ~10 px: it scrolls instead.
  const MIN_SCALE = 0.8;

  const shortType = (type) => (type || "").split(".").pop();
  // A node is a task, a trigger (its declaration, in the triggers cluster) or a start/end marker.
  const item = (node) => node.task || node.triggerDeclaration;
  const isMarker = (node) => !item(node);

  // The `errors` branch: the tasks an ERROR edge leads to, and the clusters they open.
  function errorMembers(graph) {
    const members = new Set(graph.edges.filter((e) => e.relation?.relationType === "ERROR").map((e) => e.target));
    for (const c of graph.clusters || []) {
      if (c.nodes.some((uid) => members.has(uid))) c.nodes.forEach((uid) => members.add(uid));
    }
    return members;
  }

  function layout(graph, direction) {
    const d = DIRECTIONS[direction], down = direction === "down";
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
    const columnWidth = Array.from({ length: ranks }, () => 12 + d.gap);
    for (const node of nodes.values()) if (!isMarker(node)) columnWidth[node.rank] = (down ? d.h : d.w) + d.gap;
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
        const offset = ((tallest - column.length) * d.step) / 2;
        for (const node of column) {
          // `along` the ranks, `across` the nodes of one rank.
          let along = left[node.rank], across = top + offset + node.row * d.step;
          node.w = isMarker(node) ? 12 : d.w;
          node.h = isMarker(node) ? 12 : d.h;
          if (isMarker(node)) {
            along += (columnWidth[node.rank] - d.gap - 12) / 2;
            across += ((down ? d.w : d.h) - 12) / 2;
          }
          [node.x, node.y] = down ? [across, along] : [along, across];
        }
      }
      if (tallest) top += tallest * d.step + 40;
    }
    return { nodes, edges, errors, width: left[ranks] + MARGIN, height: top + MARGIN };
  }

  function clusters(graph, nodes, errors) {
    const triggers = new Set(graph.nodes.filter((n) => n.triggerDeclaration).map((n) => n.uid));
    // The triggers cluster has no task of its own to name it.
    const label = (c) => c.cluster.taskNode?.task
      ? `${c.cluster.taskNode.task.id} · ${shortType(c.cluster.taskNode.task.type)}`
      : c.nodes.some((uid) => triggers.has(uid)) ? "Triggers" : "";
    const boxes = (graph.clusters || []).map((c) => ({
      label: label(c),
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

  // Sizes a drawn graph to its container: fitted (never enlarged) when its labels stay legible
  // at the container's width, else at its own size in a container that scrolls sideways, with
  // a hint under it (headless and overlay scrollbars can be invisible).
  function size(container) {
    const root = container.querySelector(":scope > svg");
    if (!root) return;
    const width = Number(root.dataset.width), height = Number(root.dataset.height);
    const room = container.clientWidth;
    const scale = room ? Math.min(1, room / width) : 1;
    const scrolls = room > 0 && scale < MIN_SCALE;
    const shown = scrolls ? 1 : scale;
    root.setAttribute("width", Math.round(width * shown));
    root.setAttribute("height", Math.round(height * shown));
    container.classList.toggle("scrolls", scrolls);
    container.dataset.scale = shown.toFixed(2);
    let hint = container.nextElementSibling;
    if (!hint?.classList.contains("graph-scroll-hint")) {
      hint = Object.assign(document.createElement("p"), { className: "hint graph-scroll-hint" });
      hint.textContent = "The graph is wider than the page: scroll sideways to see all of it.";
      container.after(hint);
    }
    hint.hidden = !scrolls || container.classList.contains("fit");
  }

  const observer = "ResizeObserver" in window
    ? new ResizeObserver((entries) => entries.forEach((e) => size(e.target))) : null;

  // Renders `graph` into `container`; `states` (task id -> state) colours the tasks.
  // `options.direction` "down" draws the ranks top to bottom (default: left to right).
  function render(container, graph, states = {}, options = {}) {
    const down = options.direction === "down";
    const { nodes, edges, errors } = layout(graph, down ? "down" : "right");
    const boxes = clusters(graph, nodes, errors);
    // The picture's bounds are those of what is drawn, plus a margin: no empty band.
    const all = [...nodes.values(), ...boxes.map((b) => ({ x: b.x, y: b.y, w: b.w, h: b.h }))];
    const pad = 16;
    const minX = Math.min(...all.map((n) => n.x)) - pad, minY = Math.min(...all.map((n) => n.y)) - pad;
    const width = Math.max(...all.map((n) => n.x + n.w)) + pad - minX;
    const height = Math.max(...all.map((n) => n.y + n.h)) + pad - minY;
    const root = svg("svg", {
      width, height,
      viewBox: `${minX} ${minY} ${width} ${height}`,
      "data-width": width, "data-height": height,
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
      let d;
      if (down) {
        const x1 = a.x + a.w / 2, y1 = a.y + a.h, x2 = b.x + b.w / 2, y2 = b.y, mid = (y1 + y2) / 2;
        d = `M${x1},${y1} C${x1},${mid} ${x2},${mid} ${x2},${y2}`;
      } else {
        const x1 = a.x + a.w, y1 = a.y + a.h / 2, x2 = b.x, y2 = b.y + b.h / 2, mid = (x1 + x2) / 2;
        d = `M${x1},${y1} C${mid},${y1} ${mid},${y2} ${x2},${y2}`;
      }
      root.append(svg("path", { class: "edge" + (e.relation?.relationType === "ERROR" ? " error" : ""), d }));
    }
    for (const node of nodes.values()) {
      if (isMarker(node)) {
        const g = svg("g", { class: "marker" });
        g.append(svg("circle", { cx: node.x + 6, cy: node.y + 6, r: 5 }));
        root.append(g);
        continue;
      }
      const { id, type } = item(node);
      const state = node.task ? states[id] : undefined;
      const g = node.task
        ? svg("g", { class: "node" + (state ? ` state-${state}` : ""), "data-task-id": id })
        : svg("g", { class: "node trigger", "data-trigger-id": id });
      g.append(svg("title", {}, `${node.task ? "" : "Trigger "}${id} (${type})${state ? ": " + state : ""}`));
      g.append(svg("rect", { x: node.x, y: node.y, width: node.w, height: node.h, rx: 6 }));
      g.append(svg("text", { x: node.x + 10, y: node.y + 19 }, id));
      g.append(svg("text", { x: node.x + 10, y: node.y + 35, class: "type" }, shortType(type)));
      root.append(g);
    }
    container.replaceChildren(root);
    size(container);
    observer?.observe(container);
  }

  window.TiercelGraph = { render, size };
})();
