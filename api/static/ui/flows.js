// The flows list: a search box, a namespace tree (from the flows the user may see) and the
// table of flows, all read from GET /api/v1/flows/search.
(function () {
  "use strict";
  const { api, el, when, toast } = window.Tiercel;
  const search = document.getElementById("flow-search");
  const rows = document.getElementById("flow-rows");
  const tree = document.getElementById("namespace-tree");
  const count = document.getElementById("flow-count");
  let namespace = new URLSearchParams(location.search).get("namespace") || "";
  search.value = new URLSearchParams(location.search).get("q") || "";

  async function load() {
    const params = new URLSearchParams({ size: "1000" });
    if (search.value.trim()) params.set("q", search.value.trim());
    if (namespace) params.set("namespace", namespace);
    const url = new URL(location.href);
    url.search = new URLSearchParams(
      Object.entries({ q: search.value.trim(), namespace }).filter(([, v]) => v)).toString();
    history.replaceState(null, "", url);
    try {
      const page = await api("/api/v1/flows/search?" + params);
      const recent = await lastExecutions();
      rows.replaceChildren(...page.results.map((flow) => el("tr", {},
        el("td", {}, el("a", { href: `/ui/flows/${encodeURIComponent(flow.namespace)}/${encodeURIComponent(flow.id)}` }, flow.id),
          flow.description ? el("div", { class: "hint" }, flow.description) : null),
        el("td", {}, flow.namespace),
        el("td", { class: "hide-narrow" }, sparkline(recent.get(`${flow.namespace}\u0000${flow.id}`) || [])),
        el("td", { class: "hide-narrow" }, flow.revision),
        el("td", { class: "hide-narrow nowrap" }, when(flow.updated)))));
      if (!page.results.length) rows.replaceChildren(el("tr", {}, el("td", { colspan: 5 }, "No flow matches.")));
      count.textContent = `${page.total} flow${page.total === 1 ? "" : "s"}`;
    } catch (error) {
      toast(error.message, true);
    }
  }

  // The latest executions (at most 500, of the namespace shown), by flow, newest last.
  async function lastExecutions() {
    const params = new URLSearchParams({ size: "500", sort: "state.startDate:desc" });
    if (namespace) params.set("namespace", namespace);
    const byFlow = new Map();
    try {
      const answer = await api("/api/v1/executions/search?" + params);
      for (const execution of answer.results.reverse()) {
        const key = `${execution.namespace}\u0000${execution.flowId}`;
        if (!byFlow.has(key)) byFlow.set(key, []);
        byFlow.get(key).push(execution);
      }
    } catch (error) { /* the list stands without its sparklines */ }
    return byFlow;
  }

  const seconds = (iso) => {
    const m = /^PT(?:(\d+)H)?(?:(\d+)M)?(?:([\d.]+)S)?$/.exec(iso || "");
    return m ? (+m[1] || 0) * 3600 + (+m[2] || 0) * 60 + (+m[3] || 0) : 0;
  };

  // The last ten executions as bars: height for the duration, colour for the state.
  function sparkline(executions) {
    const last = executions.slice(-10);
    if (!last.length) return el("span", { class: "hint" }, "none yet");
    const longest = Math.max(...last.map((e) => seconds(e.state.duration)), 0.001);
    const NS = "http://www.w3.org/2000/svg";
    const chart = document.createElementNS(NS, "svg");
    chart.setAttribute("width", "80");
    chart.setAttribute("height", "20");
    chart.setAttribute("class", "sparkline");
    chart.setAttribute("role", "img");
    const states = last.map((e) => e.state.current);
    chart.setAttribute("aria-label", `Last ${last.length} executions: ${states.join(", ")}`);
    last.forEach((execution, i) => {
      const bar = document.createElementNS(NS, "rect");
      const h = Math.max(3, (seconds(execution.state.duration) / longest) * 18);
      bar.setAttribute("x", String(i * 8));
      bar.setAttribute("y", String(20 - h));
      bar.setAttribute("width", "6");
      bar.setAttribute("height", String(h));
      bar.setAttribute("class", `bar state-${execution.state.current}`);
      const title = document.createElementNS(NS, "title");
      title.textContent = `${execution.state.current} ${execution.state.duration || ""}`;
      bar.append(title);
      chart.append(bar);
    });
    return chart;
  }

  // The tree lists every namespace and its parents (a.b.c shows a, a.b, a.b.c).
  async function loadTree() {
    const page = await api("/api/v1/flows/search?size=1000");
    const names = new Set();
    for (const flow of page.results) {
      const parts = flow.namespace.split(".");
      for (let i = 1; i <= parts.length; i++) names.add(parts.slice(0, i).join("."));
    }
    const nodes = { children: new Map() };
    for (const name of [...names].sort()) {
      let node = nodes;
      for (const part of name.split(".")) {
        if (!node.children.has(part)) node.children.set(part, { name: "", children: new Map() });
        node = node.children.get(part);
      }
      node.name = name;
    }
    const item = (label, value) => el("li", {}, el("button", {
      type: "button", "aria-pressed": String(namespace === value),
      onclick: () => { namespace = value; renderTree(); load(); },
    }, label));
    function render(node) {
      return [...node.children.entries()].map(([part, child]) => {
        const li = item(part, child.name);
        if (child.children.size) li.append(el("ul", {}, render(child)));
        return li;
      });
    }
    function renderTree() { tree.replaceChildren(item("All namespaces", ""), ...render(nodes)); }
    renderTree();
  }

  let timer;
  search.addEventListener("input", () => { clearTimeout(timer); timer = setTimeout(load, 200); });
  load();
  loadTree().catch((error) => toast(error.message, true));
})();
