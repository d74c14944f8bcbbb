// The dashboards page: the default dashboard (executions per state over time with the "All"
// total the API counts, success ratio, durations, latest failures), a custom dashboard chart by
// chart, and the projections panel.
(function () {
  "use strict";
  const { api, el, when, toast } = window.Tiercel;
  const $ = (id) => document.getElementById(id);
  const COLOURS = { SUCCESS: "--s-success", FAILED: "--s-failed", RUNNING: "--s-running", WARNING: "--s-warning",
    KILLED: "--s-killed", PAUSED: "--s-paused", CREATED: "--s-created" };
  const colour = (state) => getComputedStyle(document.documentElement).getPropertyValue(COLOURS[state] || "--muted").trim() || "#888";
  let plot = null;

  const pct = (ratio) => (ratio === null || ratio === undefined ? "—" : `${(ratio * 100).toFixed(1)} %`);
  const secs = (s) => (s === null || s === undefined ? "—" : s < 60 ? `${Number(s).toFixed(2)} s` : `${(s / 60).toFixed(1)} min`);

  function filters() {
    const params = new URLSearchParams({ timeRange: $("dash-range").value });
    const ns = $("dash-namespace").value.trim();
    if (ns) params.set("namespace", ns);
    return params;
  }

  async function loadDefault() {
    const stats = await api("/api/v1/dashboards/default/stats?" + filters());
    const failed = stats.states.FAILED || 0;
    $("kpis").replaceChildren(
      kpi("Executions", stats.total, "kpi-total"),
      kpi("Success ratio", pct(stats.successRatio), "kpi-success"),
      kpi("Failed", failed, "kpi-failed"),
      kpi("Mean duration", secs(stats.durations.avg), "kpi-avg"),
      kpi("p50 / p90 / p99", `${secs(stats.durations.p50)} / ${secs(stats.durations.p90)} / ${secs(stats.durations.p99)}`, "kpi-percentiles", "kpi-wide"));
    const states = Object.keys(stats.states).sort();
    // The table shows the API's own "All" per bucket beside the states it adds up.
    $("state-table").replaceChildren(
      el("thead", {}, el("tr", {}, el("th", { scope: "col" }, "From"), ...states.map((s) => el("th", { scope: "col", "data-state": s }, s)), el("th", { scope: "col" }, "All"))),
      el("tbody", {}, stats.buckets.map((b) => el("tr", { class: "bucket-row", "data-date": b.date },
        el("td", {}, when(b.date)),
        ...states.map((s) => el("td", { class: "count", "data-state": s }, String(b.counts[s] || 0))),
        el("td", { class: "all" }, String(b.total))))),
      el("tfoot", {}, el("tr", {}, el("th", { scope: "row" }, "Total"),
        ...states.map((s) => el("td", { "data-state": s }, String(stats.states[s]))), el("td", { class: "all" }, String(stats.total)))));
    drawSeries(stats, states);
    $("failures").replaceChildren(...(stats.latestFailures.length ? stats.latestFailures.map((f) => el("tr", {},
      el("td", {}, el("a", { href: `/ui/executions/${encodeURIComponent(f.id)}` }, el("code", {}, f.id))),
      el("td", {}, `${f.namespace}.${f.flowId}`), el("td", {}, when(f.startDate)))) : [el("tr", {}, el("td", {}, "No failure in this range."))]));
    $("namespaces").replaceChildren(
      el("thead", {}, el("tr", {}, el("th", {}, "Namespace"), el("th", {}, "Executions"), el("th", {}, "Success ratio"))),
      el("tbody", {}, stats.namespaces.map((n) => el("tr", {}, el("td", {}, n.namespace), el("td", {}, String(n.total || 0)), el("td", {}, pct(n.successRatio))))));
  }

  function kpi(label, value, id, extra = "") {
    return el("div", { class: `kpi ${extra}`.trim() }, el("div", { class: "hint" }, label), el("div", { class: "value", id }, String(value)));
  }

  function drawSeries(stats, states) {
    const box = $("state-chart");
    if (plot) { plot.destroy(); plot = null; }
    if (!window.uPlot || !stats.buckets.length) { box.replaceChildren(el("p", { class: "hint" }, "No execution in this range.")); return; }
    box.replaceChildren();
    // The API lists the buckets that hold executions; the chart shows the empty ones between
    // as zeros. It starts two buckets before the first that holds any: on a server younger
    // than the range, the hours (or days) before it would squeeze the data into one spike at
    // the right edge.
    const step = { PT1M: 6e4, PT1H: 36e5, P1D: 864e5, P7D: 6048e5 }[stats.interval];
    const held = new Map(stats.buckets.map((b) => [Date.parse(b.date), b]));
    let times = [...held.keys()].sort((a, b) => a - b);
    if (step) {
      const first = Math.max(Math.min(Date.parse(stats.startDate), times[0]), times[0] - 2 * step);
      const kept = times;
      times = [];
      for (let t = first; t < Date.parse(stats.endDate) && times.length < 2000; t += step) times.push(t);
      for (const t of kept) if (!times.includes(t)) times.push(t);
      times.sort((a, b) => a - b);
    }
    const bucket = (t) => held.get(t) || { counts: {}, total: 0 };
    const xs = times.map((t) => t / 1000);
    const data = [xs, ...states.map((s) => times.map((t) => bucket(t).counts[s] || 0)), times.map((t) => bucket(t).total)];
    const series = [{ label: "Time" }, ...states.map((s) => ({ label: s, stroke: colour(s), width: 2, points: { show: true } })),
      { label: "All", stroke: getComputedStyle(document.documentElement).getPropertyValue("--fg").trim(), width: 2, dash: [6, 4], points: { show: true } }];
    // Not hovering, the legend gives each series' total over the range shown (uPlot's "--").
    const unit = { PT1M: "minute", PT1H: "hour", P1D: "day", P7D: "week" }[stats.interval] || "bucket";
    const totals = [`total of ${times.length} ${unit}${times.length === 1 ? "" : "s"}`,
      ...data.slice(1).map((values) => String(values.reduce((a, b) => a + b, 0)))];
    const showTotals = (u) => {
      if (u.cursor.idx !== null && u.cursor.idx !== undefined) return;
      u.root.querySelectorAll(".u-legend .u-value").forEach((cell, i) => { cell.textContent = totals[i] ?? ""; });
    };
    const axis = { stroke: getComputedStyle(document.documentElement).getPropertyValue("--muted").trim(), grid: { stroke: "rgba(128,128,128,.15)" } };
    plot = new window.uPlot({
      width: Math.max(300, box.clientWidth || 560), height: 240, series, axes: [axis, axis],
      scales: { x: { time: true } },
      hooks: { setLegend: [showTotals], ready: [showTotals] },
    }, data, box);
    showTotals(plot);
    box.dataset.buckets = String(times.length);
  }

  // --- custom dashboards -------------------------------------------------------------------

  async function loadList() {
    const answer = await api("/api/v1/dashboards?size=200");
    const select = $("dashboard-choice");
    const chosen = new URLSearchParams(location.search).get("dashboard") || "";
    select.replaceChildren(el("option", { value: "" }, "Default: executions overview"),
      ...answer.results.map((d) => el("option", { value: d.id }, d.title || d.id)));
    // A dashboard asked for by the URL but not (yet) in the list's page is still offered.
    if (chosen && !answer.results.some((d) => d.id === chosen)) select.append(el("option", { value: chosen }, chosen));
    select.value = chosen;
  }

  async function loadCustom(id) {
    const dashboard = await api(`/api/v1/dashboards/${encodeURIComponent(id)}`);
    $("custom-heading").textContent = dashboard.title || dashboard.id;
    $("custom-description").textContent = dashboard.description || "";
    const edit = $("dashboard-edit");
    if (edit) { edit.href = `/ui/dashboards/${encodeURIComponent(id)}/edit`; edit.hidden = false; }
    const box = $("custom-charts");
    const charts = dashboard.charts || [];
    box.replaceChildren(...charts.map((chart) => el("div", {
      class: `chart chart-${(chart.type || "").split(".").pop()}`, id: `chart-${chart.id}`, "data-chart-type": (chart.type || "").split(".").pop(),
    }, el("h3", {}, chart.chartOptions?.displayName || chart.id),
    chart.chartOptions?.description ? el("p", { class: "hint" }, chart.chartOptions.description) : null,
    el("div", { class: "chart-body", "aria-live": "polite" }, "Loading…"))));
    // Each chart is asked and drawn on its own: one that fails shows its error in its box.
    await Promise.all(charts.map((chart) => loadChart(id, chart, 1)));
  }

  // The request every chart of the page shares: the range picked, and the namespace typed
  // (a filter narrows a chart, never widens it).
  function chartRequest() {
    const body = { timeRange: $("dash-range").value };
    const ns = $("dash-namespace").value.trim();
    if (ns) body.filters = [{ field: "namespace", operation: "PREFIX", value: ns }];
    return body;
  }

  // The charts take the theme's colours when they are drawn: a new theme draws them again.
  document.addEventListener("tiercel:theme", () => {
    const id = $("dashboard-choice").value;
    if (id && !$("custom-dashboard").hidden) loadCustom(id).catch((error) => toast(error.message, true));
  });

  // A Table chart shows 25 rows a page, or its chartOptions.pageSize.
  async function loadChart(id, chart, page) {
    const body = $(`chart-${chart.id}`)?.querySelector(".chart-body");
    if (!body) return;
    const isTable = (chart.type || "").endsWith("Table");
    const size = Number(chart.chartOptions?.pageSize) > 0 ? Number(chart.chartOptions.pageSize) : 25;
    const request = { ...chartRequest(), ...(isTable ? { page, pageSize: size } : {}) };
    try {
      const rows = await api(`/api/v1/dashboards/${encodeURIComponent(id)}/charts/${encodeURIComponent(chart.id)}`, {
        method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(request),
      });
      body.replaceChildren(window.TiercelCharts.draw(chart, rows, { page, size, go: (p) => loadChart(id, chart, p) }));
      body.closest(".chart").dataset.state = "drawn";
    } catch (error) {
      body.replaceChildren(el("p", { class: "error chart-error", role: "alert" }, error.message));
      body.closest(".chart").dataset.state = "error";
    }
  }

  // --- projections -------------------------------------------------------------------------

  // Admins rebuild a projection from here (POST /api/v1/projections/{name}/rebuild); the
  // others see the button disabled with the role it needs. While a rebuild runs, the panel
  // refreshes every second with how far behind the head it still is.
  const canRebuild = $("projections-panel").dataset.canRebuild === "true";
  const OUTCOME_CLASS = { SUCCESS: "ok", RUNNING: "state-RUNNING", FAILED: "state-FAILED", CANCELLED: "state-KILLED", INTERRUPTED: "state-KILLED" };
  let projectionsTimer = null;

  const rebuilding = (p) => p.lastRebuild?.outcome === "RUNNING";

  function rebuildState(p) {
    const last = p.lastRebuild;
    if (rebuilding(p) || p.rebuild) {
      const text = p.rebuild ? `Rebuilding: ${p.rebuild.lag} events behind (at ${p.rebuild.position} of ${p.head})` : "Rebuild starting…";
      return el("div", { class: "hint rebuild-state", "data-outcome": "RUNNING", role: "status" },
        el("progress", { max: String(Math.max(p.head, 1)), value: String(p.rebuild ? p.rebuild.position : 0), "aria-label": `Rebuild of ${p.name}` }), " ", text);
    }
    if (!last) return null;
    const who = last.actor ? ` by ${last.actor}` : "";
    return el("div", { class: "hint rebuild-state", "data-outcome": last.outcome, title: last.message || "" },
      el("span", { class: OUTCOME_CLASS[last.outcome] || "" }, `Last rebuild ${last.outcome.toLowerCase()}`),
      ` ${when(last.endedAt || last.startedAt)}${who}`, last.outcome === "SUCCESS" ? "" : el("div", {}, last.message || ""));
  }

  async function rebuildProjection(name) {
    if (!confirm(`Rebuild the ${name} projection from position 0?\n\nIt is built into new tables while the system runs and swapped in once caught up; searches keep answering meanwhile.`)) return;
    try {
      await api(`/api/v1/projections/${encodeURIComponent(name)}/rebuild`, { method: "POST" });
      toast(`Rebuilding ${name}: its progress shows below`);
    } catch (error) {
      toast(error.message, true);
    }
    await loadProjections().catch((error) => toast(error.message, true));
  }

  async function loadProjections() {
    clearTimeout(projectionsTimer);
    let rows = [];
    try {
      rows = await api("/api/v1/projections");
    } finally {
      const busy = rows.some((p) => rebuilding(p) || p.rebuild);
      projectionsTimer = setTimeout(() => loadProjections().catch(() => {}), busy ? 1000 : 5000);
    }
    $("projections").replaceChildren(...rows.map((p) => el("tr", { "data-projection": p.name },
      el("td", {}, p.name), el("td", {}, String(p.position)), el("td", {}, String(p.head)),
      el("td", { class: "lag" }, String(p.lag)),
      el("td", {}, el("span", { class: p.status === "UP_TO_DATE" ? "ok" : "state-RUNNING" }, p.status)),
      el("td", {}, el("button", {
        type: "button", class: "button-quiet rebuild-button", "data-projection": p.name,
        disabled: !canRebuild || rebuilding(p),
        title: !canRebuild ? "Rebuilding a projection needs the admin role" : rebuilding(p) ? "A rebuild of this projection runs" : `Rebuild ${p.name} from position 0`,
        onclick: () => rebuildProjection(p.name),
      }, "Rebuild"), rebuildState(p)))));
  }

  async function load() {
    const id = $("dashboard-choice").value;
    const params = new URLSearchParams(location.search);
    if (id) params.set("dashboard", id); else params.delete("dashboard");
    history.replaceState(null, "", location.pathname + (params.toString() ? "?" + params : ""));
    $("default-dashboard").hidden = Boolean(id);
    $("custom-dashboard").hidden = !id;
    const work = [loadProjections(), id ? loadCustom(id) : loadDefault()];
    for (const result of await Promise.allSettled(work)) if (result.status === "rejected") toast(result.reason.message, true);
  }

  $("dashboard-choice").addEventListener("change", load);
  $("dash-range").addEventListener("change", load);
  $("dash-refresh").addEventListener("click", load);
  $("dash-namespace").addEventListener("change", load);
  document.addEventListener("tiercel:theme", () => { if (!$("default-dashboard").hidden) loadDefault().catch(() => {}); });
  const ns = new URLSearchParams(location.search).get("namespace");
  if (ns) $("dash-namespace").value = ns;
  loadList().catch((error) => toast(error.message, true)).finally(load);
})();
