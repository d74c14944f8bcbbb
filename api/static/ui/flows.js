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
      rows.replaceChildren(...page.results.map((flow) => el("tr", {},
        el("td", {}, el("a", { href: `/ui/flows/${encodeURIComponent(flow.namespace)}/${encodeURIComponent(flow.id)}` }, flow.id),
          flow.description ? el("div", { class: "hint" }, flow.description) : null),
        el("td", {}, flow.namespace),
        el("td", { class: "hide-narrow" }, flow.revision),
        el("td", { class: "hide-narrow" }, when(flow.updated)))));
      if (!page.results.length) rows.replaceChildren(el("tr", {}, el("td", { colspan: 4 }, "No flow matches.")));
      count.textContent = `${page.total} flow${page.total === 1 ? "" : "s"}`;
    } catch (error) {
      toast(error.message, true);
    }
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
