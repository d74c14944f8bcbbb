// The logs page: a search (text, level, namespace, flow, task, execution, time), its histogram
// of lines per level over time, where dragging across a span narrows the search to that time
// range (snapped to the buckets it covers), and follow mode for one execution's lines.
(function () {
  "use strict";
  const { api, el, when, toast } = window.Tiercel;
  const $ = (id) => document.getElementById(id);
  const NS = "http://www.w3.org/2000/svg";
  const LEVELS = ["TRACE", "DEBUG", "INFO", "WARN", "ERROR"];
  const FIELDS = { q: "log-q", minLevel: "log-level", namespace: "log-namespace", flowId: "log-flow", taskId: "log-task", executionId: "log-execution", range: "log-range" };
  const model = { page: 1, size: 50, startDate: "", endDate: "" };
  let histogram = null;
  let source = null;

  function readUrl() {
    const params = new URLSearchParams(location.search);
    for (const [key, id] of Object.entries(FIELDS)) {
      if (params.has(key)) $(id).value = params.get(key);
    }
    if (!params.has("range")) $("log-range").value = "PT1H";
    model.startDate = params.get("startDate") || "";
    model.endDate = params.get("endDate") || "";
    model.page = Math.max(1, Number(params.get("page")) || 1);
  }

  function formValues() {
    const out = {};
    for (const [key, id] of Object.entries(FIELDS)) out[key] = $(id).value.trim();
    return out;
  }

  function writeUrl() {
    const params = new URLSearchParams();
    for (const [key, value] of Object.entries(formValues())) if (value || key === "range") params.set(key, value);
    if (model.startDate) params.set("startDate", model.startDate);
    if (model.endDate) params.set("endDate", model.endDate);
    if (model.page > 1) params.set("page", model.page);
    history.replaceState(null, "", location.pathname + "?" + params);
  }

  function searchParams() {
    const values = formValues();
    const params = new URLSearchParams();
    for (const key of ["q", "minLevel", "namespace", "flowId", "taskId", "executionId"]) if (values[key]) params.set(key, values[key]);
    if (model.startDate || model.endDate) {
      if (model.startDate) params.set("startDate", model.startDate);
      if (model.endDate) params.set("endDate", model.endDate);
    } else if (values.range) {
      params.set("timeRange", values.range);
    }
    return params;
  }

  async function search() {
    writeUrl();
    renderSpanChip();
    $("follow").disabled = !$("log-execution").value.trim();
    // A disabled switch says why: follow mode streams the lines of one execution.
    $("follow-hint").hidden = !$("follow").disabled;
    await Promise.all([loadLines(), loadHistogram()]).catch((error) => toast(error.message, true));
  }

  async function loadLines() {
    const params = searchParams();
    params.set("page", model.page);
    params.set("size", model.size);
    const answer = await api("/api/v1/logs/search?" + params);
    $("log-rows").replaceChildren(...answer.results.map(row));
    const first = (model.page - 1) * model.size + 1;
    $("log-count").textContent = answer.total
      ? `${answer.totalIsEstimate ? "About " : ""}${answer.total} line${answer.total === 1 ? "" : "s"}`
      : "No log line matches.";
    $("log-count").dataset.total = answer.total;
    $("log-page").textContent = answer.results.length ? `${first}–${first + answer.results.length - 1}` : "";
    $("log-prev").disabled = model.page <= 1;
    $("log-next").disabled = first + answer.results.length - 1 >= answer.total;
  }

  function row(line) {
    return el("tr", { class: "log-row", "data-level": line.level, "data-timestamp": line.timestamp },
      el("td", {}, el("time", { datetime: line.timestamp }, when(line.timestamp))),
      el("td", {}, el("span", { class: `level-${line.level}` }, line.level)),
      el("td", { class: "hide-narrow" },
        el("a", { href: `/ui/executions/${encodeURIComponent(line.executionId)}` }, `${line.namespace}.${line.flowId}`),
        line.taskId ? el("div", { class: "hint" }, line.taskId) : null),
      el("td", { class: "log-message" }, line.message));
  }

  // --- the histogram and its brush ---------------------------------------------------------

  function intervalMs(text) {
    const m = /^P(?:(\d+)D)?(?:T(?:(\d+)H)?(?:(\d+)M)?(?:(\d+)S)?)?$/.exec(text || "");
    if (!m) return 60000;
    return (((Number(m[1] || 0) * 24 + Number(m[2] || 0)) * 60 + Number(m[3] || 0)) * 60 + Number(m[4] || 0)) * 1000;
  }

  function svg(tag, attrs = {}, text) {
    const node = document.createElementNS(NS, tag);
    for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
    if (text !== undefined) node.textContent = text;
    return node;
  }

  async function loadHistogram() {
    const answer = await api("/api/v1/logs/histogram?" + searchParams());
    const step = intervalMs(answer.interval);
    const buckets = answer.buckets.map((b) => ({ ...b, at: Date.parse(b.date) }));
    histogram = { step, buckets, from: buckets.length ? buckets[0].at : Date.now(), to: buckets.length ? buckets[buckets.length - 1].at + step : Date.now() + step };
    drawHistogram();
    $("histogram-legend").replaceChildren(
      el("span", {}, `One bar per ${answer.interval.replace(/^PT?/, "").toLowerCase()}`),
      ...LEVELS.map((level) => el("span", {}, el("span", { class: "swatch", style: `background:var(${{ TRACE: "--s-created", DEBUG: "--s-created", INFO: "--s-running", WARN: "--s-warning", ERROR: "--s-failed" }[level]})` }), level)));
  }

  function drawHistogram() {
    const box = $("histogram");
    const width = Math.max(300, box.clientWidth || 800), height = 140, pad = 18;
    const { buckets, from, to } = histogram;
    const x = (t) => ((t - from) / (to - from)) * width;
    const top = Math.max(1, ...buckets.map((b) => b.total));
    const root = svg("svg", { viewBox: `0 0 ${width} ${height}`, preserveAspectRatio: "none", role: "group", "aria-label": `Log lines over time, ${buckets.length} buckets` });
    for (const b of buckets) {
      // Each bucket is also a button for the keyboard: Enter narrows the search to it.
      const g = svg("g", { class: "bucket", "data-date": b.date, "data-total": b.total, tabindex: b.total ? "0" : "-1",
        role: "button", "aria-label": `${b.total} line${b.total === 1 ? "" : "s"} from ${when(b.date)}: search only these` });
      g.addEventListener("keydown", (event) => {
        if (event.key === "Enter" || event.key === " ") { event.preventDefault(); selectSpan(b.at, b.at); }
      });
      let y = height - pad;
      const left = x(b.at), w = Math.max(1, x(b.at + histogram.step) - left - 1);
      for (const level of LEVELS) {
        const n = b.counts[level] || 0;
        if (!n) continue;
        const h = (n / top) * (height - 2 * pad);
        y -= h;
        g.append(svg("rect", { class: `bar-${level}`, x: left, y, width: w, height: h }));
      }
      // An invisible full-height box gives each bucket a place to point at and a tooltip.
      g.append(svg("rect", { class: "hit", x: left, y: 0, width: w, height: height - pad, fill: "transparent" }));
      g.append(svg("title", {}, `${when(b.date)}: ${b.total} line${b.total === 1 ? "" : "s"}`));
      root.append(g);
    }
    root.append(svg("text", { class: "axis", x: 2, y: 11 }, `${top} per bar at most`));
    root.append(svg("text", { class: "axis", x: 2, y: height - 4 }, when(new Date(from).toISOString())));
    root.append(svg("text", { class: "axis", x: width - 2, y: height - 4, "text-anchor": "end" }, when(new Date(to).toISOString())));
    const brush = svg("rect", { class: "brush", x: 0, y: 0, width: 0, height: height - pad, visibility: "hidden" });
    root.append(brush);
    box.replaceChildren(root);

    const timeAt = (clientX) => {
      const rect = root.getBoundingClientRect();
      const ratio = Math.min(1, Math.max(0, (clientX - rect.left) / rect.width));
      return from + ratio * (to - from);
    };
    const px = (clientX) => { const rect = root.getBoundingClientRect(); return ((clientX - rect.left) / rect.width) * width; };
    let start = null;
    root.addEventListener("pointerdown", (event) => {
      start = event.clientX;
      root.setPointerCapture(event.pointerId);
      brush.setAttribute("visibility", "visible");
      brush.setAttribute("x", px(start));
      brush.setAttribute("width", 0);
    });
    root.addEventListener("pointermove", (event) => {
      if (start === null) return;
      const a = px(start), b = px(event.clientX);
      brush.setAttribute("x", Math.min(a, b));
      brush.setAttribute("width", Math.abs(b - a));
    });
    root.addEventListener("pointerup", (event) => {
      if (start === null) return;
      const t0 = timeAt(Math.min(start, event.clientX)), t1 = timeAt(Math.max(start, event.clientX));
      start = null;
      brush.setAttribute("visibility", "hidden");
      selectSpan(t0, t1);
    });
  }

  // The span dragged across, widened to the whole buckets it touches.
  function selectSpan(t0, t1) {
    const { step, from } = histogram;
    const first = from + Math.floor((t0 - from) / step) * step;
    const last = from + Math.ceil((t1 - from) / step) * step;
    model.startDate = new Date(first).toISOString();
    model.endDate = new Date(Math.max(first + step, last) - 1).toISOString();
    model.page = 1;
    search();
  }

  function renderSpanChip() {
    const chip = $("span-chip");
    chip.hidden = !(model.startDate || model.endDate);
    if (chip.hidden) return;
    chip.replaceChildren(el("span", { class: "chip", id: "time-span" },
      `From ${when(model.startDate)} to ${when(model.endDate)}`,
      el("button", { type: "button", class: "chip-remove", "aria-label": "Clear the time span", onclick: () => { model.startDate = model.endDate = ""; model.page = 1; search(); } }, "×")));
  }

  // --- follow mode -------------------------------------------------------------------------

  function followChanged() {
    if (source) { source.close(); source = null; }
    if (!$("follow").checked) return;
    const executionId = $("log-execution").value.trim();
    const level = $("log-level").value;
    source = new EventSource(`/api/v1/logs/${encodeURIComponent(executionId)}/follow${level ? "?minLevel=" + level : ""}`);
    $("log-rows").replaceChildren();
    source.onmessage = (event) => {
      const line = JSON.parse(event.data);
      if (!line.timestamp) return;  // the stream's opening entry
      $("log-rows").prepend(row(line));
      $("log-count").textContent = `${$("log-rows").children.length} lines, following`;
    };
    source.addEventListener("end", () => {
      source.close();
      source = null;
      $("follow").checked = false;
      $("log-count").textContent = `${$("log-rows").children.length} lines; the execution ended`;
    });
    source.onerror = () => { if (source && source.readyState === EventSource.CLOSED) { source = null; $("follow").checked = false; } };
  }

  $("log-filters").addEventListener("submit", (event) => { event.preventDefault(); model.page = 1; search(); });
  $("log-range").addEventListener("change", () => { model.startDate = model.endDate = ""; model.page = 1; search(); });
  $("log-level").addEventListener("change", () => { model.page = 1; search(); });
  $("log-prev").addEventListener("click", () => { model.page -= 1; loadLines().catch((e) => toast(e.message, true)); writeUrl(); });
  $("log-next").addEventListener("click", () => { model.page += 1; loadLines().catch((e) => toast(e.message, true)); writeUrl(); });
  $("follow").addEventListener("change", followChanged);
  addEventListener("resize", () => { if (histogram) drawHistogram(); });

  readUrl();
  search();
})();
