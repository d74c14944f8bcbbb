// The executions list: filter chips in condition groups (the chips of a group all apply, the
// groups are joined by OR, the quick interval and text apply to every group), paging, and bulk
// actions on the selection or on every match, always previewed by a dry run first.
(function () {
  "use strict";
  const { api, el, when, toast } = window.Tiercel;
  const $ = (id) => document.getElementById(id);
  const FIELDS = { namespace: "namespace", flowId: "flow", state: "state", labels: "label" };

  // The page's state lives in its URL (f=group.field=value, range=, q=, page=, size=), so a
  // filtered list can be bookmarked and shared.
  const model = { groups: [[]], interval: "", q: "", page: 1, size: 25 };
  const selected = new Set();
  let rows = [];

  function readUrl() {
    const params = new URLSearchParams(location.search);
    const groups = [];
    for (const raw of params.getAll("f")) {
      const match = /^(\d+)\.(namespace|flowId|state|labels)=(.*)$/.exec(raw);
      if (!match) continue;
      (groups[Number(match[1])] ||= []).push({ field: match[2], value: match[3] });
    }
    model.groups = groups.filter((g) => g && g.length);
    if (!model.groups.length) model.groups = [[]];
    model.interval = params.get("range") || "";
    model.q = params.get("q") || "";
    model.page = Math.max(1, Number(params.get("page")) || 1);
    model.size = Number(params.get("size")) || 25;
  }

  function writeUrl() {
    const params = new URLSearchParams();
    model.groups.forEach((group, i) => group.forEach((c) => params.append("f", `${i}.${c.field}=${c.value}`)));
    if (model.interval) params.set("range", model.interval);
    if (model.q) params.set("q", model.q);
    if (model.page > 1) params.set("page", model.page);
    if (model.size !== 25) params.set("size", model.size);
    const query = params.toString();
    history.replaceState(null, "", location.pathname + (query ? "?" + query : ""));
  }

  // The search's filters as query-string pairs, in Kestra's filters[...] form.
  function filterPairs() {
    const pairs = [];
    const groups = model.groups.filter((g) => g.length);
    groups.forEach((group, i) => {
      const prefix = groups.length > 1 ? `filters[or][${i}]` : "filters";
      for (const chip of group) {
        if (chip.field === "namespace") pairs.push([`${prefix}[namespace][PREFIX]`, chip.value]);
        else if (chip.field === "flowId") pairs.push([`${prefix}[flowId][EQUALS]`, chip.value]);
        else if (chip.field === "state") pairs.push([`${prefix}[state][IN]`, chip.value]);
        else if (chip.field === "labels") {
          const at = chip.value.indexOf(":");
          pairs.push([`${prefix}[labels][EQUALS][${chip.value.slice(0, at)}]`, chip.value.slice(at + 1)]);
        }
      }
    });
    if (model.interval) pairs.push(["filters[timeRange][EQUALS]", model.interval]);
    if (model.q) pairs.push(["q", model.q]);
    return pairs;
  }

  function renderGroups() {
    const box = $("groups");
    const groups = model.groups;
    const nodes = [];
    groups.forEach((group, i) => {
      if (i > 0) nodes.push(el("span", { class: "or" }, "OR"));
      nodes.push(el("div", { class: "group", role: "group", "aria-label": `Condition group ${i + 1}` },
        group.length ? group.flatMap((chip, j) => [
          j > 0 ? el("span", { class: "and" }, "and") : null,
          el("span", { class: "chip", "data-field": chip.field },
            `${FIELDS[chip.field]}: ${chip.field === "state" ? chip.value.split(",").join(" | ") : chip.value}`,
            el("button", {
              type: "button", class: "chip-remove", "aria-label": `Remove filter ${FIELDS[chip.field]} ${chip.value}`,
              onclick: () => { group.splice(j, 1); changed(); },
            }, "×")),
        ]) : el("span", { class: "hint" }, "No filter: every execution")));
    });
    box.replaceChildren(...nodes);
  }

  function changed() {
    model.groups = model.groups.filter((g, i) => g.length || i === 0);
    if (!model.groups.length) model.groups = [[]];
    model.page = 1;
    load();
  }

  function seconds(duration) {
    const match = /PT([\d.]+)S/.exec(duration || "");
    if (!match) return "";
    const s = Number(match[1]);
    return s < 60 ? `${s.toFixed(s < 10 ? 2 : 1)} s` : `${Math.floor(s / 60)} min ${Math.round(s % 60)} s`;
  }

  async function load() {
    writeUrl();
    renderGroups();
    const params = new URLSearchParams(filterPairs());
    params.set("page", model.page);
    params.set("size", model.size);
    const body = $("execution-rows");
    try {
      const answer = await api("/api/v1/executions/search?" + params);
      rows = answer.results;
      renderRows();
      const first = (model.page - 1) * model.size + 1;
      $("page-info").textContent = rows.length
        ? `${first}–${first + rows.length - 1} of ${answer.totalIsEstimate ? "about " : ""}${answer.total}`
        : "No execution matches";
      $("page-info").dataset.total = answer.total;
      $("prev-page").disabled = model.page <= 1;
      $("next-page").disabled = first + rows.length - 1 >= answer.total;
    } catch (error) {
      body.replaceChildren(el("tr", {}, el("td", { colspan: 7, class: "error" }, error.message)));
      $("page-info").textContent = "";
    }
  }

  function renderRows() {
    const body = $("execution-rows");
    if (!rows.length) {
      body.replaceChildren(el("tr", {}, el("td", { colspan: 7 }, "No execution matches these filters.")));
    } else {
      body.replaceChildren(...rows.map((x) => el("tr", { "data-execution-id": x.id, "data-state": x.state.current },
        el("td", {}, el("input", {
          type: "checkbox", class: "row-select", "aria-label": `Select execution ${x.id}`,
          checked: selected.has(x.id), onchange: (e) => { e.target.checked ? selected.add(x.id) : selected.delete(x.id); selectionChanged(); },
        })),
        el("td", {}, el("a", { href: `/ui/executions/${encodeURIComponent(x.id)}` }, el("code", {}, x.id))),
        el("td", {}, el("a", { href: `/ui/flows/${encodeURIComponent(x.namespace)}/${encodeURIComponent(x.flowId)}` }, x.flowId),
          el("div", { class: "hint" }, x.namespace)),
        el("td", {}, el("span", { class: `state state-${x.state.current}` }, x.state.current)),
        el("td", { class: "hide-narrow" }, when(x.state.startDate)),
        el("td", { class: "hide-narrow" }, seconds(x.state.duration)),
        el("td", { class: "hide-narrow" }, (x.labels || []).filter((l) => !l.key.startsWith("system."))
          .map((l) => el("span", { class: "label" }, `${l.key}:${l.value}`))))));
    }
    selectionChanged();
  }

  function selectionChanged() {
    $("selected-count").textContent = `${selected.size} selected`;
    $("bulk-selected").disabled = selected.size === 0;
    const boxes = [...document.querySelectorAll(".row-select")];
    $("select-all").checked = boxes.length > 0 && boxes.every((b) => b.checked);
  }

  // --- adding filters ----------------------------------------------------------------------

  function fieldChanged() {
    const isState = $("filter-field").value === "state";
    $("filter-states").hidden = !isState;
    $("filter-value-box").hidden = isState;
    $("filter-value").placeholder = { namespace: "company.team", flowId: "my-flow", labels: "key:value" }[$("filter-field").value] || "";
  }

  function chipFromForm() {
    const field = $("filter-field").value;
    let value;
    if (field === "state") {
      value = [...document.querySelectorAll('#filter-states input:checked')].map((b) => b.value).join(",");
      if (!value) { toast("Pick at least one state", true); return null; }
    } else {
      value = $("filter-value").value.trim();
      if (!value) { toast("Give the filter a value", true); return null; }
      if (field === "labels" && value.indexOf(":") < 1) { toast("A label filter is written key:value", true); return null; }
    }
    $("filter-value").value = "";
    document.querySelectorAll('#filter-states input').forEach((b) => { b.checked = false; });
    return { field, value };
  }

  $("filter-field").addEventListener("change", fieldChanged);
  $("filter-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const chip = chipFromForm();
    if (!chip) return;
    model.groups[model.groups.length - 1].push(chip);
    changed();
  });
  $("add-or-group").addEventListener("click", () => {
    const chip = chipFromForm();
    if (!chip) return;
    if (model.groups[model.groups.length - 1].length) model.groups.push([chip]);
    else model.groups[model.groups.length - 1].push(chip);
    changed();
  });
  $("interval").addEventListener("change", (e) => { model.interval = e.target.value; changed(); });
  let typing;
  $("text-search").addEventListener("input", (e) => {
    clearTimeout(typing);
    typing = setTimeout(() => { model.q = e.target.value.trim(); changed(); }, 300);
  });
  $("clear-filters").addEventListener("click", () => {
    model.groups = [[]]; model.interval = ""; model.q = "";
    $("interval").value = ""; $("text-search").value = "";
    changed();
  });
  $("prev-page").addEventListener("click", () => { model.page -= 1; load(); });
  $("next-page").addEventListener("click", () => { model.page += 1; load(); });
  $("page-size").addEventListener("change", (e) => { model.size = Number(e.target.value); model.page = 1; load(); });
  $("select-all").addEventListener("change", (e) => {
    for (const x of rows) e.target.checked ? selected.add(x.id) : selected.delete(x.id);
    renderRows();
  });

  // --- bulk actions: dry run first, then the job and its progress --------------------------

  function actionChanged() {
    const action = $("bulk-action").value;
    $("bulk-labels").hidden = action !== "labels";
    $("bulk-state").hidden = action !== "state";
  }
  $("bulk-action").addEventListener("change", actionChanged);

  function bulkBody(byQuery) {
    const action = $("bulk-action").value;
    const body = {};
    if (byQuery) {
      const filters = {};
      for (const [name, value] of filterPairs()) {
        if (name in filters) filters[name] = [].concat(filters[name], value);
        else filters[name] = value;
      }
      if (!Object.keys(filters).length) filters["filters[timeRange][EQUALS]"] = "P3650D";
      body.filters = filters;
    } else {
      body.ids = [...selected];
    }
    if (action === "labels") {
      body.labels = $("bulk-labels").value.split(",").map((s) => s.trim()).filter(Boolean);
    }
    if (action === "state") body.state = $("bulk-state").value;
    return { action, body };
  }

  async function preview(byQuery) {
    const { action, body } = bulkBody(byQuery);
    const panel = $("bulk-preview");
    panel.hidden = false;
    panel.replaceChildren(el("p", {}, "Counting…"));
    let dry;
    try {
      dry = await api(`/api/v1/executions/bulk/${action}`, {
        method: "POST", headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ ...body, dryRun: true }),
      });
    } catch (error) {
      panel.replaceChildren(el("p", { class: "error" }, error.message));
      return;
    }
    const confirmButton = el("button", { type: "button", class: "button-primary", id: "bulk-confirm", disabled: dry.wouldApply === 0 },
      `${action[0].toUpperCase() + action.slice(1)} ${dry.wouldApply} execution${dry.wouldApply === 1 ? "" : "s"}`);
    confirmButton.addEventListener("click", () => run(action, body, panel));
    panel.replaceChildren(...[
      el("h2", {}, "Dry run"),
      el("p", { id: "bulk-dry-run" },
        el("strong", { id: "bulk-count", "data-count": dry.count }, String(dry.count)),
        ` execution${dry.count === 1 ? "" : "s"} ${byQuery ? "match the filters" : "selected"}: `,
        `${dry.wouldApply} would be changed, ${dry.wouldBeRefused} would be refused`,
        dry.skipped.length ? `, ${dry.skipped.length} skipped` : "", ". Nothing is changed yet."),
      dry.sample.length ? el("table", { class: "compact" }, el("tbody", {}, dry.sample.map((s) => el("tr", {},
        el("td", {}, el("code", {}, s.id)), el("td", {}, `${s.namespace}.${s.flowId}`),
        el("td", {}, el("span", { class: `state state-${s.state}` }, s.state)),
        el("td", {}, s.outcome + (s.message ? ` (${s.message})` : "")))))) : null,
      el("div", { class: "dialog-actions" },
        el("button", { type: "button", onclick: () => { panel.hidden = true; } }, "Cancel"), confirmButton)].filter(Boolean));
  }

  async function run(action, body, panel) {
    const progress = el("p", { id: "bulk-progress", role: "status" }, "Starting…");
    let jobId = null;
    const cancel = el("button", { type: "button", id: "bulk-cancel", disabled: true, onclick: async () => {
      try { await api(`/api/v1/bulk/${encodeURIComponent(jobId)}/cancel`, { method: "POST" }); } catch (error) { toast(error.message, true); }
    } }, "Cancel the job");
    panel.replaceChildren(el("h2", {}, "Bulk job"), progress, cancel);
    try {
      let job = await api(`/api/v1/executions/bulk/${action}`, {
        method: "POST", headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ ...body, requestId: crypto.randomUUID ? crypto.randomUUID() : String(Date.now()) }),
      });
      jobId = job.id;
      cancel.disabled = false;
      while (job.state === "RUNNING") {
        progress.textContent = `${job.done} of ${job.total} done…`;
        await new Promise((r) => setTimeout(r, 500));
        job = await api(`/api/v1/bulk/${encodeURIComponent(job.id)}`);
      }
      cancel.remove();
      progress.dataset.state = job.state;
      progress.textContent = `${job.state}: ${job.succeeded} succeeded, ${job.failed} failed, ${job.skipped} skipped of ${job.total}.`;
      selected.clear();
      await load();
    } catch (error) {
      progress.className = "error";
      progress.textContent = error.message;
    }
  }

  $("refresh").addEventListener("click", load);
  setInterval(() => { if ($("auto-refresh").checked && !document.hidden) load(); }, 10000);

  $("bulk-selected").addEventListener("click", () => preview(false));
  $("bulk-query").addEventListener("click", () => preview(true));

  readUrl();
  $("interval").value = model.interval;
  $("text-search").value = model.q;
  $("page-size").value = String(model.size);
  fieldChanged();
  actionChanged();
  load();
})();
