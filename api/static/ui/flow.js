// A flow's page: tabs for its topology, source, executions and revisions (diff between any
// two, restore an old one as a new revision), and the Run button.
(function () {
  "use strict";
  const { api, el, when, toast } = window.Tiercel;
  const page = document.getElementById("flow-page");
  const ns = page.dataset.namespace, id = page.dataset.flowId;
  const base = `/api/v1/flows/${encodeURIComponent(ns)}/${encodeURIComponent(id)}`;
  let flow = null;

  // Tabs as the WAI-ARIA pattern: arrows move between them, the URL's hash remembers one.
  const tabs = [...document.querySelectorAll('[role="tab"]')];
  const loaders = {
    topology: loadGraph, source: () => {}, executions: loadExecutions, triggers: loadTriggers,
    revisions: loadRevisions, dependencies: loadDependencies, audit: loadAudit,
  };
  function select(tab, focus) {
    for (const other of tabs) {
      const on = other === tab;
      other.setAttribute("aria-selected", String(on));
      other.tabIndex = on ? 0 : -1;
      document.getElementById(other.getAttribute("aria-controls")).hidden = !on;
    }
    const name = tab.id.replace("tab-", "");
    history.replaceState(null, "", "#" + name);
    if (focus) tab.focus();
    Promise.resolve(loaders[name]()).catch((error) => toast(error.message, true));
  }
  tabs.forEach((tab, i) => {
    tab.addEventListener("click", () => select(tab));
    tab.addEventListener("keydown", (event) => {
      const step = { ArrowRight: 1, ArrowLeft: -1 }[event.key];
      if (step) select(tabs[(i + step + tabs.length) % tabs.length], true);
      if (event.key === "Home") select(tabs[0], true);
      if (event.key === "End") select(tabs[tabs.length - 1], true);
    });
  });

  // A graph fits the page when its labels stay legible, else it scrolls; the switch forces the fit.
  document.getElementById("fit-graph").addEventListener("click", (event) => {
    const on = event.currentTarget.getAttribute("aria-pressed") !== "true";
    event.currentTarget.setAttribute("aria-pressed", String(on));
    document.getElementById("graph").classList.toggle("fit", on);
    window.TiercelGraph.size(document.getElementById("graph"));
  });

  async function loadGraph() {
    window.TiercelGraph.render(document.getElementById("graph"), await api(base + "/graph"));
  }

  // The list reads the executions read model, which follows the events a moment behind: an
  // execution started here is shown from the answer that started it until the model has it,
  // and the list refreshes while one of its executions has not ended.
  const ENDED = new Set(["SUCCESS", "WARNING", "FAILED", "KILLED", "CANCELLED", "SKIPPED"]);
  let started = [], refresh = null;
  async function loadExecutions() {
    clearTimeout(refresh);
    const params = new URLSearchParams({ namespace: ns, flowId: id, size: "50", sort: "state.startDate:desc" });
    const answer = await api("/api/v1/executions/search?" + params);
    const known = new Set(answer.results.map((e) => e.id));
    started = started.filter((e) => !known.has(e.id));
    const shown = [...started, ...answer.results];
    const body = document.getElementById("execution-rows");
    body.replaceChildren(...shown.map((execution) => el("tr", { "data-execution-id": execution.id },
      el("td", {}, el("code", {}, execution.id)),
      el("td", {}, el("span", { class: `state state-${execution.state.current}` }, execution.state.current)),
      el("td", {}, when(execution.state.startDate || execution.state.histories?.[0]?.date)),
      el("td", { class: "hide-narrow" }, execution.flowRevision))));
    if (!shown.length) body.replaceChildren(el("tr", {}, el("td", { colspan: 4 }, "No execution yet.")));
    const panel = document.getElementById("panel-executions");
    if (shown.some((e) => !ENDED.has(e.state.current))) {
      refresh = setTimeout(() => { if (!panel.hidden) loadExecutions().catch(() => {}); }, 1500);
    }
  }

  // Triggers: each one's next and last tick, a switch to disable or enable it, and for the
  // Schedule triggers a backfill form whose progress shows until the backfill ends.
  const triggersBase = `/api/v1/triggers/${encodeURIComponent(ns)}/${encodeURIComponent(id)}`;
  let watching = null;
  async function loadTriggers() {
    const answer = await api(triggersBase);
    const body = document.getElementById("trigger-rows");
    body.replaceChildren(...answer.results.map(({ abstractTrigger: trigger, triggerContext: state }) => {
      const toggle = el("input", {
        type: "checkbox", id: `trigger-${trigger.id}-enabled`, checked: !state.disabled,
        disabled: page.dataset.canEdit !== "true",
        "aria-label": `Trigger ${trigger.id} enabled`,
        onchange: async (event) => {
          const box = event.currentTarget;
          try {
            await api(`${triggersBase}/${encodeURIComponent(trigger.id)}`, {
              method: "PUT", headers: { "Content-Type": "application/json" },
              body: JSON.stringify({ disabled: !box.checked }),
            });
            toast(`Trigger ${trigger.id} ${box.checked ? "enabled" : "disabled"}`);
          } catch (error) {
            box.checked = !box.checked;
            toast(error.message, true);
          }
        },
      });
      return el("tr", { "data-trigger-id": trigger.id },
        el("td", {}, trigger.id),
        el("td", { class: "hide-narrow" }, (trigger.type || "").split(".").pop()),
        el("td", {}, when(state.nextExecutionDate) || "—"),
        el("td", { class: "hide-narrow" }, when(state.date) || "—"),
        el("td", {}, toggle));
    }));
    if (!answer.results.length) body.replaceChildren(el("tr", {}, el("td", { colspan: 5 }, "This flow has no trigger.")));
    const schedules = answer.results.filter((r) => /Schedule$/.test(r.abstractTrigger.type || ""));
    const form = document.getElementById("backfill-form");
    form.hidden = !schedules.length;
    document.getElementById("backfill-trigger").replaceChildren(
      ...schedules.map((r) => el("option", { value: r.abstractTrigger.id }, r.abstractTrigger.id)));
    const running = schedules.find((r) => r.triggerContext.backfill && !r.triggerContext.backfill.ended);
    if (running) watchBackfill(running.abstractTrigger.id);
  }

  function showBackfill(triggerId, backfill) {
    const box = document.getElementById("backfill-progress");
    if (!backfill) { box.replaceChildren(); return; }
    const total = backfill.total || 0, fired = backfill.fired || 0;
    const words = backfill.ended ? "ended" : backfill.paused ? "paused" : "running";
    box.replaceChildren(
      el("label", { for: "backfill-bar" }, `Backfill of ${triggerId}: ${fired} of ${total} executions, ${words}`),
      el("progress", { id: "backfill-bar", max: String(Math.max(total, 1)), value: String(fired) }));
  }

  async function watchBackfill(triggerId) {
    clearTimeout(watching);
    const panel = document.getElementById("panel-triggers");
    const state = await api(`${triggersBase}/${encodeURIComponent(triggerId)}`);
    const context = state.triggerContext || state;
    showBackfill(triggerId, context.backfill);
    if (context.backfill && !context.backfill.ended && !panel.hidden) {
      watching = setTimeout(() => watchBackfill(triggerId).catch(() => {}), 1000);
    }
  }

  document.getElementById("backfill-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const triggerId = document.getElementById("backfill-trigger").value;
    const start = document.getElementById("backfill-start").value;
    const end = document.getElementById("backfill-end").value;
    const backfill = { start: new Date(start).toISOString() };
    if (end) backfill.end = new Date(end).toISOString();
    try {
      await api("/api/v1/triggers/backfill", {
        method: "POST", headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ namespace: ns, flowId: id, triggerId, backfill }),
      });
      toast(`Backfill of ${triggerId} started`);
      await watchBackfill(triggerId);
    } catch (error) {
      toast(error.message, true);
    }
  });

  // Dependencies: the flows whose Subflow tasks or Flow triggers lead here, and those this
  // one leads to (GET .../dependencies), each a link to its page.
  async function loadDependencies() {
    const graph = await api(base + "/dependencies");
    const byUid = new Map(graph.nodes.map((n) => [n.uid, n]));
    const self = graph.nodes.find((n) => n.namespace === ns && n.id === id);
    const item = (node, relation) => el("li", {},
      el("a", { href: `/ui/flows/${encodeURIComponent(node.namespace)}/${encodeURIComponent(node.id)}` },
        `${node.namespace}.${node.id}`),
      el("span", { class: "hint" }, ` (${relation === "FLOW_TRIGGER" ? "Flow trigger" : "Subflow task"})`));
    const up = [], down = [];
    for (const edge of graph.edges) {
      if (self && edge.target === self.uid && byUid.has(edge.source)) up.push(item(byUid.get(edge.source), edge.relation));
      if (self && edge.source === self.uid && byUid.has(edge.target)) down.push(item(byUid.get(edge.target), edge.relation));
    }
    const none = () => el("li", { class: "hint" }, "None");
    document.getElementById("upstream").replaceChildren(...(up.length ? up : [none()]));
    document.getElementById("downstream").replaceChildren(...(down.length ? down : [none()]));
  }

  // Audit: who changed the flow and when (GET /api/v1/audit for this flow).
  async function loadAudit() {
    const params = new URLSearchParams({ kind: "flow", namespace: ns, resourceId: id, size: "100" });
    const answer = await api("/api/v1/audit?" + params);
    const body = document.getElementById("audit-rows");
    body.replaceChildren(...answer.results.map((entry) => el("tr", {},
      el("td", {}, when(entry.date)),
      el("td", {}, entry.actor || ""),
      el("td", {}, entry.action || entry.type),
      el("td", { class: "hide-narrow" },
        entry.details && entry.details.revision ? `revision ${entry.details.revision}` : "",
        entry.reason ? ` — ${entry.reason}` : ""))));
    if (!answer.results.length) body.replaceChildren(el("tr", {}, el("td", { colspan: 4 }, "Nothing recorded yet.")));
  }

  let revisions = [];
  async function loadRevisions() {
    revisions = await api(base + "/revisions");
    const a = document.getElementById("rev-a"), b = document.getElementById("rev-b");
    const options = () => revisions.map((r) => el("option", { value: r.revision }, `Revision ${r.revision}`));
    a.replaceChildren(...options());
    b.replaceChildren(...options());
    const last = revisions.length ? revisions[revisions.length - 1].revision : 1;
    a.value = String(Math.max(1, last - 1));
    b.value = String(last);
    await showDiff();
  }
  async function showDiff() {
    const a = document.getElementById("rev-a").value, b = document.getElementById("rev-b").value;
    const out = document.getElementById("diff");
    if (!a || !b) return;
    const answer = await api(`${base}/revisions/${a}/diff/${b}`);
    const lines = (answer.diff || "").split("\n").map((line) => el("span", {
      class: /^(@@|\+\+\+|---)/.test(line) ? "hunk" : line.startsWith("+") ? "add" : line.startsWith("-") ? "del" : "",
    }, line + "\n"));
    out.replaceChildren(...(lines.length > 1 ? lines : ["The two revisions have the same source."]));
  }
  document.getElementById("rev-a").addEventListener("change", () => showDiff().catch((e) => toast(e.message, true)));
  document.getElementById("rev-b").addEventListener("change", () => showDiff().catch((e) => toast(e.message, true)));
  document.getElementById("restore-button").addEventListener("click", async () => {
    const revision = document.getElementById("rev-a").value;
    const old = revisions.find((r) => String(r.revision) === revision);
    if (!old || !confirm(`Restore revision ${revision}? It is saved as a new revision.`)) return;
    try {
      const saved = await api(base, { method: "PUT", headers: { "Content-Type": "application/x-yaml" }, body: old.source });
      toast(`Revision ${revision} restored as revision ${saved.revision}`);
      flow = saved;
      document.getElementById("source").textContent = saved.source;
      await loadRevisions();
    } catch (error) {
      toast(error.message, true);
    }
  });

  document.getElementById("run-button").addEventListener("click", () => {
    window.TiercelRun.open(ns, id, flow?.inputs || [], (execution) => {
      toast(`Execution ${execution.id} started`);
      started.unshift(execution);
      select(document.getElementById("tab-executions"));
    });
  });

  (async () => {
    flow = await api(base);
    document.getElementById("source").textContent = flow.source;
    const wanted = document.getElementById("tab-" + location.hash.slice(1));
    select(wanted || tabs[0]);
  })().catch((error) => toast(error.message, true));
})();
