// An execution's page: a Gantt of its task runs and its topology coloured by state, kept live
// by the follow stream (server-sent events, no reload); the details of a task run (attempts,
// outputs, files, metrics); the actions; and the history scrubber, which shows the execution
// as it was at any event of its timeline (GET ...?asOf=position) beside the list of events.
(function () {
  "use strict";
  const { api, el, when, toast } = window.Tiercel;
  const $ = (id) => document.getElementById(id);
  const id = $("execution-page").dataset.executionId;
  const base = `/api/v1/executions/${encodeURIComponent(id)}`;
  const TERMINAL = new Set(["SUCCESS", "WARNING", "FAILED", "KILLED", "CANCELLED", "SKIPPED"]);
  let execution = null;
  let graph = null;
  let chosenRun = null;
  let source = null;

  const ms = (iso) => (iso ? Date.parse(iso) : NaN);
  function span(seconds) {
    if (!isFinite(seconds)) return "";
    return seconds < 60 ? `${seconds.toFixed(seconds < 10 ? 2 : 1)} s` : `${Math.floor(seconds / 60)} min ${Math.round(seconds % 60)} s`;
  }
  const MIN_BAR = 4;  // px
  // A duration to the millisecond: "7 ms", "2.041 s", "3 min 12.480 s".
  function exact(millis) {
    const whole = Math.max(0, Math.round(millis));
    if (whole < 1000) return `${whole} ms`;
    if (whole < 60000) return `${(whole / 1000).toFixed(3)} s`;
    return `${Math.floor(whole / 60000)} min ${((whole % 60000) / 1000).toFixed(3)} s`;
  }
  const runLabel = (run) => run.taskId + (run.value !== null && run.value !== undefined && run.value !== "" ? ` [${run.value}]` : "");

  // --- the execution and its live updates ----------------------------------------------------

  function render(x) {
    execution = x;
    const state = x.state.current;
    const badge = $("execution-state");
    badge.textContent = state;
    badge.className = `state state-${state}`;
    badge.dataset.state = state;
    $("flow-link").replaceChildren(el("a", { href: `/ui/flows/${encodeURIComponent(x.namespace)}/${encodeURIComponent(x.flowId)}` }, `${x.namespace}.${x.flowId}`));
    const end = x.state.endDate ? ms(x.state.endDate) : Date.now();
    const facts = [
      ["Revision", x.flowRevision],
      ["Started", when(x.state.startDate)],
      ["Ended", x.state.endDate ? when(x.state.endDate) : "—"],
      ["Duration", span((end - ms(x.state.startDate)) / 1000)],
      ["Attempt", x.metadata?.attemptNumber],
    ];
    if (x.replayOf) facts.push(["Replay of", el("a", { href: `/ui/executions/${encodeURIComponent(x.replayOf)}` }, x.replayOf)]);
    if (x.originalId && x.originalId !== x.id && x.originalId !== x.replayOf) facts.push(["Original", el("a", { href: `/ui/executions/${encodeURIComponent(x.originalId)}` }, x.originalId)]);
    if ((x.replays || []).length) facts.push(["Replays", x.replays.map((r) => el("a", { href: `/ui/executions/${encodeURIComponent(r)}`, class: "replay-link" }, r, " "))]);
    if (x.parentId) facts.push(["Parent", el("a", { href: `/ui/executions/${encodeURIComponent(x.parentId)}` }, x.parentId)]);
    if (Object.keys(x.inputs || {}).length) facts.push(["Inputs", el("code", {}, JSON.stringify(x.inputs))]);
    if (Object.keys(x.outputs || {}).length) facts.push(["Outputs", el("code", {}, JSON.stringify(x.outputs))]);
    if (x.message) facts.push(["Message", x.message]);
    $("facts").replaceChildren(...facts.flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, v)]));
    if (document.activeElement !== $("labels-input")) {
      $("labels-input").value = (x.labels || []).filter((l) => !l.key.startsWith("system.")).map((l) => `${l.key}:${l.value}`).join(", ");
    }
    const ended = TERMINAL.has(state);
    $("action-replay").disabled = !ended;
    $("action-restart").disabled = !["FAILED", "KILLED"].includes(state);
    $("action-kill").disabled = ended || state === "KILLING";
    $("action-pause").disabled = state !== "RUNNING";
    $("action-resume").disabled = state !== "PAUSED";
    renderGantt($("gantt"), x, true);
    if (graph && !$("panel-topology").hidden) renderGraph();
    if (chosenRun) {
      const run = x.taskRunList.find((r) => r.id === chosenRun);
      if (run) details(run, false);
    }
  }

  function follow() {
    if (source) source.close();
    if (TERMINAL.has(execution.state.current)) { $("live").textContent = ""; return; }
    source = new EventSource(`${base}/follow`);
    $("live").textContent = "Live";
    source.onmessage = (event) => {
      const x = JSON.parse(event.data);
      render(x);
      if (TERMINAL.has(x.state.current)) {
        source.close();
        source = null;
        $("live").textContent = "";
        if (!$("panel-history").hidden) loadHistory();
      }
    };
    source.onerror = () => {
      // The stream ended or broke: a final read says where the execution stands.
      if (source && source.readyState === EventSource.CLOSED) {
        source = null;
        api(base).then((x) => { render(x); if (!TERMINAL.has(x.state.current)) setTimeout(follow, 1000); });
      }
    };
  }

  // --- the Gantt ---------------------------------------------------------------------------

  function ordered(x) {
    // Children under their parent, each level by start date.
    const byParent = new Map();
    for (const run of x.taskRunList) {
      const key = run.parentTaskRunId || "";
      (byParent.get(key) || byParent.set(key, []).get(key)).push(run);
    }
    const out = [];
    const walk = (parent, depth) => {
      const runs = (byParent.get(parent) || []).slice().sort((a, b) => ms(a.state.startDate) - ms(b.state.startDate));
      for (const run of runs) { out.push([run, depth]); walk(run.id, depth + 1); }
    };
    walk("", 0);
    const known = new Set(out.map(([r]) => r.id));
    for (const run of x.taskRunList) if (!known.has(run.id)) out.push([run, 0]);
    return out;
  }

  function renderGantt(box, x, interactive) {
    const start = ms(x.state.startDate);
    const end = Math.max(x.state.endDate ? ms(x.state.endDate) : Date.now(), start + 1);
    const total = end - start;
    const rows = ordered(x).map(([run, depth]) => {
      const from = ms(run.state.startDate) || start;
      const to = run.state.endDate ? ms(run.state.endDate) : end;
      const left = Math.max(0, Math.min(100, ((from - start) / total) * 100));
      const width = Math.max(0, Math.min(100 - left, ((to - from) / total) * 100));
      const state = run.state.current;
      const label = el(interactive ? "button" : "span", {
        type: interactive ? "button" : null, class: "gantt-label", style: `padding-left:${0.3 + depth}rem`,
        onclick: interactive ? () => details(run, true) : null,
        "aria-pressed": interactive ? String(run.id === chosenRun) : null,
      }, runLabel(run));
      return el("div", { class: "gantt-row", "data-task-id": run.taskId, "data-task-run-id": run.id, "data-state": state },
        label,
        el("div", { class: "gantt-track" },
          // A run of a few milliseconds keeps a bar wide enough to see and to point at; its
          // title gives the exact duration.
          el("div", {
            class: `gantt-bar bar-${state}`, "data-duration-ms": String(Math.max(0, to - from)),
            style: `left:min(${left}%, calc(100% - ${MIN_BAR}px));width:max(${MIN_BAR}px, ${width}%)`,
            title: `${runLabel(run)}: ${state}, ${exact(to - from)}`,
          })),
        el("span", { class: `state state-${state}` }, state));
    });
    if (!rows.length) rows.push(el("p", { class: "hint" }, "No task run yet."));
    box.replaceChildren(
      el("div", { class: "gantt-scale" }, el("span", {}, "0 s"), el("span", {}, span(total / 1000))),
      ...rows);
  }

  // --- topology ----------------------------------------------------------------------------

  async function renderGraph() {
    if (!graph) {
      graph = await api(`/api/v1/flows/${encodeURIComponent(execution.namespace)}/${encodeURIComponent(execution.flowId)}/graph`);
    }
    const states = {};
    for (const run of execution.taskRunList) states[run.taskId] = run.state.current;
    window.TiercelGraph.render($("graph"), graph, states);
  }

  // --- a task run's details ----------------------------------------------------------------

  function valueNode(value, key) {
    if (key === "executionId" && typeof value === "string") {  // a subflow's execution
      return el("a", { href: `/ui/executions/${encodeURIComponent(value)}` }, el("code", {}, value));
    }
    if (typeof value === "string" && value.startsWith("kestra://")) {
      const href = `${base}/file?path=${encodeURIComponent(value)}`;
      return el("a", { href, download: "", class: "file-link" }, "Download ", el("code", {}, value.split("/").pop()));
    }
    if (value !== null && typeof value === "object") return el("pre", {}, JSON.stringify(value, null, 2));
    return el("code", {}, String(value));
  }

  async function details(run, fresh) {
    chosenRun = run.id;
    const box = $("taskrun");
    if (fresh) document.querySelectorAll("#gantt .gantt-label").forEach((b) => b.setAttribute("aria-pressed", String(b.closest(".gantt-row").dataset.taskRunId === run.id)));
    const ended = TERMINAL.has(execution.state.current);
    const outputs = Object.entries(run.outputs || {});
    const metrics = el("div", { id: "taskrun-metrics" }, fresh ? "Loading metrics…" : (box.querySelector("#taskrun-metrics")?.textContent || ""));
    box.replaceChildren(...[
      el("h2", {}, runLabel(run), " ", el("span", { class: `state state-${run.state.current}` }, run.state.current)),
      el("p", { class: "hint" }, el("code", {}, run.id)),
      run.message ? el("p", { class: "error" }, run.message) : null,
      el("div", { class: "toolbar" },
        el("button", { type: "button", id: "replay-from-task", disabled: !ended, onclick: () => replay(run.id) }, "Replay from this task"),
        el("button", { type: "button", id: "change-state", disabled: !(ended && TERMINAL.has(run.state.current)), onclick: () => changeState(run) }, "Change state…")),
      el("h3", {}, "Attempts"),
      run.attempts.length ? el("table", { class: "compact" },
        el("thead", {}, el("tr", {}, el("th", {}, "#"), el("th", {}, "State"), el("th", {}, "Started"), el("th", {}, "Duration"), el("th", {}, "Worker"))),
        el("tbody", {}, run.attempts.map((a, i) => el("tr", {},
          el("td", {}, i + 1), el("td", {}, el("span", { class: `state state-${a.state.current}` }, a.state.current)),
          el("td", {}, when(a.state.startDate)),
          el("td", {}, a.state.endDate ? span((ms(a.state.endDate) - ms(a.state.startDate)) / 1000) : "…"),
          el("td", {}, a.workerId || ""))))) : el("p", { class: "hint" }, "No attempt (a flowable task runs its children)."),
      el("h3", {}, "Outputs"),
      outputs.length ? el("dl", { class: "facts" }, outputs.flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, valueNode(v, k))])) : el("p", { class: "hint" }, "No output."),
      el("h3", {}, "Metrics"), metrics].filter(Boolean));
    if (fresh) {
      try {
        const answer = await api(`/api/v1/metrics/${encodeURIComponent(id)}?taskRunId=${encodeURIComponent(run.id)}&size=100`);
        metrics.replaceChildren(answer.results.length ? el("table", { class: "compact" }, el("tbody", {}, answer.results.map((m) =>
          el("tr", {}, el("td", {}, m.name), el("td", {}, m.type || ""), el("td", {}, String(m.value)),
            el("td", {}, Object.entries(m.tags || {}).map(([k, v]) => `${k}=${v}`).join(" ")))))) : el("p", { class: "hint" }, "No metric."));
      } catch (error) {
        metrics.replaceChildren(el("p", { class: "error" }, error.message));
      }
    }
  }

  // --- actions -----------------------------------------------------------------------------

  async function act(what, path, options, after) {
    try {
      const answer = await api(path, options);
      toast(what);
      if (after) await after(answer);
    } catch (error) {
      toast(error.message, true);
    }
  }

  function replay(taskRunId) {
    const query = taskRunId ? `?taskRunId=${encodeURIComponent(taskRunId)}` : "";
    act("Replay started", `${base}/replay${query}`, { method: "POST" }, (x) => { location.href = `/ui/executions/${encodeURIComponent(x.id)}`; });
  }

  // After a command the executor has yet to act on, the execution may still read as it was
  // (FAILED, say, before a restart): wait for its state history to move on, then follow it.
  async function refreshAndFollow() {
    const before = execution ? execution.state.histories.length : 0;
    const deadline = Date.now() + 15000;
    let x = await api(base);
    while (TERMINAL.has(x.state.current) && x.state.histories.length <= before && Date.now() < deadline) {
      await new Promise((r) => setTimeout(r, 250));
      x = await api(base);
    }
    render(x);
    follow();
  }

  function changeState(run) {
    const dialog = $("state-dialog");
    $("state-target").textContent = `${runLabel(run)} is ${run.state.current}.`;
    dialog.onclose = () => {
      if (dialog.returnValue !== "ok") return;
      const body = { taskRunId: run.id, state: $("state-choice").value };
      if ($("state-reason").value.trim()) body.reason = $("state-reason").value.trim();
      act(`${runLabel(run)} set to ${body.state}`, `${base}/state`, {
        method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
      }, refreshAndFollow);
    };
    dialog.showModal();
  }

  $("action-replay").addEventListener("click", () => replay(null));
  $("action-restart").addEventListener("click", () => act("Restarted", `${base}/restart`, { method: "POST" }, refreshAndFollow));
  $("action-kill").addEventListener("click", () => {
    if (confirm("Kill this execution?")) act("Kill requested", `${base}/kill`, { method: "DELETE" }, refreshAndFollow);
  });
  $("action-pause").addEventListener("click", () => act("Paused", `${base}/pause`, { method: "POST" }, refreshAndFollow));
  $("action-resume").addEventListener("click", () => act("Resumed", `${base}/resume`, { method: "POST" }, refreshAndFollow));
  $("labels-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const labels = $("labels-input").value.split(",").map((s) => s.trim()).filter(Boolean).map((pair) => {
      const at = pair.indexOf(":");
      return at < 1 ? null : { key: pair.slice(0, at).trim(), value: pair.slice(at + 1).trim() };
    });
    if (labels.includes(null)) { toast("Write labels as key:value, separated by commas", true); return; }
    act("Labels saved", `${base}/labels`, {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(labels),
    }, (x) => render(x));
  });

  // --- logs --------------------------------------------------------------------------------

  async function loadLogs() {
    $("logs-link").href = `/ui/logs?executionId=${encodeURIComponent(id)}&range=`;
    const lines = await api(`/api/v1/logs/${encodeURIComponent(id)}`);
    $("execution-logs").replaceChildren(...(lines.length ? lines.map((l) => el("span", { class: `log-line level-${l.level}` },
      `${when(l.timestamp)} ${l.level.padEnd(5)} [${l.taskId || ""}] ${l.message}\n`)) : ["No log line."]));
  }

  // --- the history scrubber ----------------------------------------------------------------

  let timeline = [];
  let scrubTimer;
  async function loadHistory() {
    // Every entry, a page of 1000 at a time (a long history is read in several calls).
    timeline = [];
    let after = null;
    do {
      const answer = await api(`${base}/timeline?size=1000${after === null ? "" : "&after=" + after}`);
      timeline.push(...answer.results);
      after = answer.next;
    } while (after !== null && timeline.length < 20000);
    const slider = $("history-slider");
    slider.max = String(Math.max(0, timeline.length - 1));
    $("history-events").replaceChildren(...timeline.map((entry, i) => el("li", {
      "data-position": entry.position, "data-index": i, tabindex: "-1",
      class: entry.executionState ? `moved state-${entry.executionState.to}` : "",
    },
    el("button", { type: "button", class: "event", onclick: () => { slider.value = String(i); scrub(true); } },
      el("span", { class: "pos" }, `#${entry.position}`), " ", el("span", {}, entry.summary || entry.type)),
    el("div", { class: "hint" }, `${when(entry.time)} · ${entry.type}${entry.actor ? " · " + entry.actor : ""}${entry.reason ? " · " + entry.reason : ""}`))));
    slider.value = slider.max;
    await scrub(true);
  }

  async function scrub(now) {
    clearTimeout(scrubTimer);
    if (!now) { scrubTimer = setTimeout(() => scrub(true), 120); return; }
    const i = Number($("history-slider").value);
    const entry = timeline[i];
    if (!entry) return;
    $("history-position").textContent = `${i + 1} of ${timeline.length} (position ${entry.position})`;
    document.querySelectorAll("#history-events li").forEach((li) => li.removeAttribute("aria-current"));
    const item = document.querySelector(`#history-events li[data-index="${i}"]`);
    if (item) { item.setAttribute("aria-current", "step"); item.scrollIntoView({ block: "nearest" }); }
    try {
      const then = await api(`${base}?asOf=${entry.position}`);
      if (Number($("history-slider").value) !== i) return;  // moved on meanwhile
      const badge = $("asof-state");
      badge.textContent = then.state.current;
      badge.className = `state state-${then.state.current}`;
      badge.dataset.state = then.state.current;
      badge.dataset.position = entry.position;
      $("asof-when").textContent = `At ${when(entry.time)}: ${entry.summary || entry.type}`;
      renderGantt($("asof-gantt"), then, false);
    } catch (error) {
      toast(error.message, true);
    }
  }
  $("history-slider").addEventListener("input", () => scrub(false));
  $("history-live").addEventListener("click", () => { $("history-slider").value = $("history-slider").max; scrub(true); });

  // --- tabs (WAI-ARIA pattern) -------------------------------------------------------------

  const tabs = [...document.querySelectorAll('[role="tab"]')];
  const loaders = { gantt: () => {}, topology: renderGraph, logs: loadLogs, history: loadHistory };
  function select(tab, focus) {
    for (const other of tabs) {
      const on = other === tab;
      other.setAttribute("aria-selected", String(on));
      other.tabIndex = on ? 0 : -1;
      $(other.getAttribute("aria-controls")).hidden = !on;
    }
    const name = tab.id.replace("tab-", "");
    history.replaceState(null, "", "#" + name);
    if (focus) tab.focus();
    if (execution) Promise.resolve(loaders[name]()).catch((error) => toast(error.message, true));
  }
  tabs.forEach((tab, i) => {
    tab.addEventListener("click", () => select(tab));
    tab.addEventListener("keydown", (event) => {
      const step = { ArrowRight: 1, ArrowLeft: -1 }[event.key];
      if (step) select(tabs[(i + step + tabs.length) % tabs.length], true);
    });
  });

  (async () => {
    render(await api(base));
    follow();
    const wanted = document.getElementById("tab-" + location.hash.slice(1));
    if (wanted) select(wanted);
  })().catch((error) => {
    $("execution-state").textContent = "";
    $("facts").replaceChildren(el("p", { class: "error", role: "alert" }, error.message));
    document.querySelectorAll('[role="toolbar"] button, #labels-form button').forEach((b) => { b.disabled = true; });
  });
  // The Gantt's "now" moves while the execution runs, even between two events.
  setInterval(() => { if (execution && !TERMINAL.has(execution.state.current)) renderGantt($("gantt"), execution, true); }, 1000);
})();
