// The dashboard editor: CodeMirror with YAML highlighting, validation as you type (POST
// /api/v1/dashboards/validate, each problem underlined at its line and listed below), and
// save (POST a new dashboard, PUT an existing one).
(function () {
  "use strict";
  const CM = window.TiercelCodeMirror;
  const { api, el, toast } = window.Tiercel;
  const page = document.getElementById("dashboard-editor-page");
  const problemsList = document.getElementById("problems");
  const status = document.getElementById("validation-status");
  let dashboardId = page.dataset.dashboardId;
  let saved = "";

  const TEMPLATE = `title: Executions overview
description: What ran, and how it went
charts:
  - id: per_day
    type: io.kestra.plugin.core.dashboard.chart.TimeSeries
    chartOptions: {displayName: Executions per day, column: date, colorByColumn: state}
    data:
      type: io.kestra.plugin.core.dashboard.data.Executions
      columns:
        date: {field: START_DATE}
        state: {field: STATE}
        total: {agg: COUNT, displayName: Executions}
  - id: success_ratio
    type: io.kestra.plugin.core.dashboard.chart.KPI
    chartOptions: {displayName: Success ratio, numberType: PERCENTAGE}
    data:
      type: io.kestra.plugin.core.dashboard.data.ExecutionsKPI
      columns: {field: ID, agg: COUNT}
      numerator:
        - {field: STATE, type: IN, values: [SUCCESS]}
`;

  // The problem's line, from its first non-blank character to its end.
  function position(doc, detail) {
    if (!detail.line || detail.line > doc.lines) return { from: 0, to: Math.min(doc.length, 1) };
    const line = doc.line(detail.line);
    const from = line.from + (line.text.length - line.text.trimStart().length);
    return { from: Math.min(from, line.to), to: line.to };
  }

  async function validate(view) {
    const text = view.state.doc.toString();
    if (!text.trim()) { showProblems([]); return []; }
    let answer;
    try {
      answer = await api("/api/v1/dashboards/validate", {
        method: "POST", headers: { "Content-Type": "application/x-yaml" }, body: text,
      });
    } catch (error) {
      showProblems(error.details?.length ? error.details : [{ message: error.message }]);
      return [];
    }
    if (view.state.doc.toString() !== text) return [];  // typed since: a newer check follows
    const details = answer.constraints ? (answer.details?.length ? answer.details : [{ message: answer.constraints }]) : [];
    showProblems(details);
    return details.map((detail) => ({
      ...position(view.state.doc, detail), severity: "error",
      message: detail.path ? `${detail.path}: ${detail.message}` : detail.message,
    }));
  }

  // The list under the editor; a problem with a line is a button that puts the cursor there.
  function showProblems(details) {
    const text = (d) => [d.line ? `Line ${d.line}: ` : "", d.path ? `${d.path}: ` : "", d.message].join("");
    const goTo = (d) => () => {
      if (d.line > view.state.doc.lines) return;
      view.dispatch({ selection: { anchor: position(view.state.doc, d).from }, scrollIntoView: true });
      view.focus();
    };
    problemsList.replaceChildren(...details.map((d) => el("li", { "data-line": d.line ? String(d.line) : null },
      d.line ? el("button", { type: "button", class: "problem", onclick: goTo(d) }, text(d)) : text(d))));
    status.textContent = details.length ? `${details.length} problem${details.length > 1 ? "s" : ""}` : "Valid";
    status.className = details.length ? "error" : "ok";
  }

  const theme = new CM.Compartment();
  const themeFor = (name) => (name === "dark" ? CM.oneDark : []);
  const view = new CM.EditorView({
    parent: document.getElementById("editor"),
    state: CM.EditorState.create({
      doc: "",
      extensions: [
        CM.basicSetup, CM.yaml(), CM.EditorState.tabSize.of(2),
        theme.of(themeFor(document.documentElement.dataset.theme)),
        CM.lintGutter(), CM.linter(validate, { delay: 300 }),
        CM.EditorView.contentAttributes.of({ "aria-label": "Dashboard source (YAML)" }),
      ],
    }),
  });
  document.addEventListener("tiercel:theme", (event) => {
    view.dispatch({ effects: theme.reconfigure(themeFor(event.detail)) });
  });

  const source = () => view.state.doc.toString();
  function setSource(text) {
    view.dispatch({ changes: { from: 0, to: view.state.doc.length, insert: text } });
    saved = text;
  }

  async function save() {
    const text = source();
    const headers = { "Content-Type": "application/x-yaml" };
    let answer;
    try {
      answer = dashboardId
        ? await api(`/api/v1/dashboards/${encodeURIComponent(dashboardId)}`, { method: "PUT", headers, body: text })
        : await api("/api/v1/dashboards", { method: "POST", headers, body: text });
    } catch (error) {
      if (error.details?.length) showProblems(error.details);
      throw error;
    }
    saved = text;
    page.dataset.saves = String(Number(page.dataset.saves || 0) + 1);  // how many saves this page made
    if (!dashboardId) {
      dashboardId = answer.id;
      page.dataset.dashboardId = answer.id;
      history.replaceState(null, "", `/ui/dashboards/${encodeURIComponent(answer.id)}/edit`);
    }
    document.getElementById("dashboard-view").href = `/ui/dashboards?dashboard=${encodeURIComponent(answer.id)}`;
    status.textContent = `Saved ${answer.id}`;
    status.className = "ok";
    toast(`Saved dashboard ${answer.id}`);
    return answer;
  }

  document.getElementById("save-button").addEventListener("click", () => {
    save().catch((error) => toast(error.message, true));
  });
  document.addEventListener("keydown", (event) => {
    if ((event.ctrlKey || event.metaKey) && event.key === "s") {
      event.preventDefault();
      save().catch((error) => toast(error.message, true));
    }
  });
  window.addEventListener("beforeunload", (event) => {
    if (source() !== saved) event.preventDefault();
  });

  (async () => {
    if (dashboardId) setSource((await api(`/api/v1/dashboards/${encodeURIComponent(dashboardId)}`)).sourceCode);
    else setSource(TEMPLATE);
    view.focus();
  })().catch((error) => toast(error.message, true));

  window.TiercelDashboardEditor = { view };
})();
