// The dashboard editor: CodeMirror with YAML highlighting, validation as you type (POST
// /api/v1/dashboards/validate, each problem underlined at its line and listed below), and
// save (POST a new dashboard, PUT an existing one).
(function () {
  "use strict";
  const { api, toast, yamlEditor } = window.Tiercel;
  const page = document.getElementById("dashboard-editor-page");
  const status = document.getElementById("validation-status");
  let dashboardId = page.dataset.dashboardId;

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

  const editor = yamlEditor({
    parent: document.getElementById("editor"),
    label: "Dashboard source (YAML)",
    list: document.getElementById("problems"),
    status,
    validate: "/api/v1/dashboards/validate",
    // `dashboards/validate` answers one entry, with the problems of the dashboard.
    problemsOf: (answer) => (!answer.constraints ? []
      : answer.details?.length ? answer.details : [{ message: answer.constraints }]),
    save,
    saveButton: document.getElementById("save-button"),
  });
  const { view } = editor;

  async function save() {
    const text = editor.source();
    const headers = { "Content-Type": "application/x-yaml" };
    let answer;
    try {
      answer = dashboardId
        ? await api(`/api/v1/dashboards/${encodeURIComponent(dashboardId)}`, { method: "PUT", headers, body: text })
        : await api("/api/v1/dashboards", { method: "POST", headers, body: text });
    } catch (error) {
      if (error.details?.length) editor.showProblems(error.details);
      throw error;
    }
    editor.markSaved(text);
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

  (async () => {
    if (dashboardId) editor.setSource((await api(`/api/v1/dashboards/${encodeURIComponent(dashboardId)}`)).sourceCode);
    else editor.setSource(TEMPLATE);
    view.focus();
  })().catch((error) => toast(error.message, true));

  window.TiercelDashboardEditor = { view };
})();
