// The flow editor: CodeMirror with YAML highlighting, validation as you type (POST
// /api/v1/flows/validate, each problem underlined at its line), completion of task types, their
// properties (from the plugin schemas) and `{{ }}` expressions, a live topology preview, save
// (a new revision) and Run.
(function () {
  "use strict";
  const CM = window.TiercelCodeMirror;
  const { api, el, toast, yamlEditor } = window.Tiercel;
  const page = document.getElementById("editor-page");
  let namespace = page.dataset.namespace, flowId = page.dataset.flowId;

  const TEMPLATE = `id: hello
namespace: company.team

inputs:
  - id: name
    type: STRING
    defaults: world

tasks:
  - id: say_hello
    type: io.kestra.plugin.core.log.Log
    message: "Hello {{ inputs.name }}"
`;

  // --- validation ---------------------------------------------------------------------------

  // `flows/validate` answers an entry per document, each with its problems.
  function problemsOf(answer) {
    return answer.flatMap((entry) => (!entry.constraints ? []
      : entry.details?.length ? entry.details : [{ message: entry.constraints }]));
  }

  // A valid text is drawn, once for each new one.
  let lastValid = null;
  function onValid(text) {
    if (text !== lastValid) { lastValid = text; preview(text); }
  }

  async function preview(text) {
    try {
      const graph = await api("/api/v1/flows/graph", {
        method: "POST", headers: { "Content-Type": "application/x-yaml" }, body: text,
      });
      // The preview is a narrow, tall column: the graph reads top to bottom there.
      window.TiercelGraph.render(document.getElementById("graph"), graph, {}, { direction: "down" });
    } catch (error) { /* the problems list already says why */ }
  }

  // --- completion ---------------------------------------------------------------------------

  let pluginList = null;
  const schemas = new Map();
  async function plugins() {
    pluginList ||= await api("/api/v1/plugins");
    return pluginList;
  }
  async function properties(type) {
    if (!schemas.has(type)) {
      schemas.set(type, api("/api/v1/plugins/" + type).then((answer) => {
        const schema = answer.schema || {};
        const ref = (schema.$ref || "").split("/").pop();
        const target = (schema.$defs || {})[ref] || schema;
        return { props: target.properties || {}, required: new Set(target.required || []) };
      }).catch(() => ({ props: {}, required: new Set() })));
    }
    return schemas.get(type);
  }

  const indentOf = (text) => text.length - text.trimStart().length;

  // What the document declares, read line by line (it may not parse while being typed):
  // input ids, variables, and the ids of tasks written before `pos`.
  function declared(doc, pos) {
    const found = { inputs: [], vars: [], tasks: [] };
    let section = "";
    for (let n = 1; n <= doc.lines; n++) {
      const line = doc.line(n);
      const text = line.text;
      if (!text.trim() || text.trimStart().startsWith("#")) continue;
      if (indentOf(text) === 0) { section = (text.match(/^([\w-]+):/) || [])[1] || ""; continue; }
      const id = text.match(/^\s*(?:-\s+)?id:\s*["']?([\w-]+)/);
      if (section === "inputs" && id) found.inputs.push(id[1]);
      if (section === "variables" && indentOf(text) === 2) {
        const key = text.match(/^\s+([\w-]+):/);
        if (key) found.vars.push(key[1]);
      }
      if (["tasks", "errors", "finally", "afterExecution"].includes(section) && id && line.to < pos) {
        found.tasks.push(id[1]);
      }
    }
    return found;
  }

  const EXPRESSION_ROOTS = {
    inputs: "The execution's inputs", outputs: "Outputs of earlier tasks", vars: "The flow's variables",
    trigger: "What started the execution", execution: "This execution", flow: "This flow",
    taskrun: "The current task run", labels: "The execution's labels", parent: "The parent task run",
  };
  const FIELDS = {
    trigger: ["date", "next", "previous", "body", "headers", "parameters", "executionId"],
    execution: ["id", "startDate", "state", "originalId"],
    flow: ["id", "namespace", "revision", "tenantId"],
    taskrun: ["id", "startDate", "attemptsCount", "value", "parentId"],
  };

  function expressionCompletion(context) {
    const line = context.state.doc.lineAt(context.pos);
    const before = line.text.slice(0, context.pos - line.from);
    const open = before.lastIndexOf("{{");
    if (open < 0 || before.indexOf("}}", open) >= 0) return null;
    const word = before.slice(open + 2).match(/[\w.]*$/)[0];
    const dot = word.lastIndexOf(".");
    const head = dot < 0 ? "" : word.slice(0, dot);
    const from = context.pos - (word.length - dot - 1);
    const names = declared(context.state.doc, context.pos);
    let options = [];
    if (!head) {
      options = Object.entries(EXPRESSION_ROOTS).map(([label, detail]) => ({ label, detail, type: "variable" }));
    } else if (head === "inputs") {
      options = names.inputs.map((label) => ({ label, detail: "input", type: "property" }));
    } else if (head === "vars") {
      options = names.vars.map((label) => ({ label, detail: "variable", type: "property" }));
    } else if (head === "outputs") {
      // The tasks above, less the one being written (its outputs do not exist yet).
      const item = line.text.match(/^\s*(?:-\s+)?/)[0].length;
      const own = enclosingType(context.state.doc, line.number, item).id;
      options = names.tasks.filter((task) => task !== own)
        .map((label) => ({ label, detail: "task", type: "property" }));
    } else if (/^outputs\.[\w-]+$/.test(head)) {
      options = ["value", "uri", "vars", "outputFiles", "exitCode"].map((label) => ({ label, type: "property" }));
    } else if (FIELDS[head]) {
      options = FIELDS[head].map((label) => ({ label, type: "property" }));
    }
    if (!options.length && !context.explicit) return null;
    return { from, options, validFor: /^[\w-]*$/ };
  }

  // Which plugin kinds a `type:` may name, by the key of the list it is in.
  const KINDS = {
    tasks: ["runnable", "flowable"], errors: ["runnable", "flowable"],
    finally: ["runnable", "flowable"], afterExecution: ["runnable", "flowable"],
    triggers: ["trigger"], conditions: ["condition"], preconditions: ["condition"],
  };

  // The key of the list holding the item on `lineNumber` (`tasks`, `triggers`, ...).
  function listKey(doc, lineNumber) {
    const text = doc.line(lineNumber).text;
    let indent = indentOf(text);
    for (let n = lineNumber - 1; n >= 1; n--) {
      const above = doc.line(n).text;
      if (!above.trim()) continue;
      const at = indentOf(above);
      if (at >= indent) continue;
      const key = above.match(/^\s*(?:-\s+)?([\w-]+):\s*$/);
      if (key && !/^\s*-/.test(above)) return key[1];
      indent = at;
    }
    return "";
  }

  async function typeCompletion(context) {
    const line = context.state.doc.lineAt(context.pos);
    const before = line.text.slice(0, context.pos - line.from);
    const match = before.match(/^\s*(?:-\s+)?type:\s*["']?([\w.]*)$/);
    if (!match) return null;
    const list = await plugins();
    const wanted = KINDS[listKey(context.state.doc, line.number)] || KINDS.tasks;
    const fitting = list.filter((p) => wanted.includes(p.kind));
    return {
      from: context.pos - match[1].length,
      options: (fitting.length ? fitting : list)
        .map((p) => ({ label: p.type, detail: p.kind, info: p.description, type: "class" })),
      validFor: /^[\w.]*$/,
    };
  }

  // The `type:` of the mapping the cursor's line belongs to (its keys sit at `indent`, the
  // width of "  - " when a list item starts on the line), and the keys it already has.
  function enclosingType(doc, lineNumber, indent) {
    const keys = new Set();
    let type = null, id = null;
    // Returns "stop" past the mapping, "start" on the line that opens its list item.
    const look = (n) => {
      const text = doc.line(n).text;
      if (!text.trim() || text.trimStart().startsWith("#")) return "";
      const item = text.match(/^\s*-\s+/);
      const at = item ? item[0].length : indentOf(text);
      if (at < indent) return "stop";
      if (at === indent) {
        const key = text.slice(at).match(/^([\w-]+):\s*["']?([^"'#\s]*)/);
        if (key) {
          keys.add(key[1]);
          if (key[1] === "type") type = key[2];
          if (key[1] === "id") id = key[2];
        }
      }
      return item && item[0].length === indent ? "start" : "";
    };
    const own = doc.line(lineNumber).text.match(/^\s*-\s+/);
    if (!(own && own[0].length === indent)) {
      for (let n = lineNumber - 1; n >= 1; n--) {
        const seen = look(n);
        if (seen) break;
      }
    }
    for (let n = lineNumber + 1; n <= doc.lines; n++) {
      const text = doc.line(n).text;
      const item = text.match(/^\s*-\s+/);
      if (item && item[0].length === indent) break;  // the next item of the same list
      if (look(n) === "stop") break;
    }
    return { type, keys, id };
  }

  async function propertyCompletion(context) {
    const line = context.state.doc.lineAt(context.pos);
    const before = line.text.slice(0, context.pos - line.from);
    const match = before.match(/^(\s*(?:-\s+)?)([\w-]*)$/);
    if (!match || (!match[2] && !context.explicit)) return null;
    const { type, keys } = enclosingType(context.state.doc, line.number, match[1].length);
    if (!type) return null;
    const { props, required } = await properties(type);
    const options = Object.entries(props).filter(([name]) => !keys.has(name) || name === match[2])
      .map(([name, prop]) => ({
        label: name,
        apply: name + ": ",
        detail: required.has(name) ? "required" : "",
        info: prop.description || "",
        type: "property",
        boost: required.has(name) ? 1 : 0,
      }));
    return { from: context.pos - match[2].length, options, validFor: /^[\w-]*$/ };
  }

  async function complete(context) {
    return expressionCompletion(context) || (await typeCompletion(context)) || (await propertyCompletion(context));
  }

  // --- the editor ---------------------------------------------------------------------------

  const editor = yamlEditor({
    parent: document.getElementById("editor"),
    label: "Flow source (YAML)",
    list: document.getElementById("problems"),
    status: document.getElementById("validation-status"),
    validate: "/api/v1/flows/validate",
    problemsOf,
    onValid,
    extensions: [CM.autocompletion({ override: [complete], activateOnTyping: true })],
    save,
    saveButton: document.getElementById("save-button"),
  });
  const { view } = editor;

  async function save() {
    const text = editor.source();
    const headers = { "Content-Type": "application/x-yaml" };
    const answer = flowId
      ? await api(`/api/v1/flows/${encodeURIComponent(namespace)}/${encodeURIComponent(flowId)}`, { method: "PUT", headers, body: text })
      : await api("/api/v1/flows", { method: "POST", headers, body: text });
    editor.markSaved(text);
    const first = !flowId;
    namespace = answer.namespace;
    flowId = answer.id;
    document.getElementById("run-button").disabled = page.dataset.canRun !== "true";
    if (first) history.replaceState(null, "", `/ui/flows/${encodeURIComponent(namespace)}/${encodeURIComponent(flowId)}/edit`);
    toast(`Saved ${answer.namespace}.${answer.id} as revision ${answer.revision}`);
    return answer;
  }

  document.getElementById("run-button").addEventListener("click", async () => {
    try {
      const flow = editor.unsaved() || !flowId ? await save()
        : await api(`/api/v1/flows/${encodeURIComponent(namespace)}/${encodeURIComponent(flowId)}`);
      window.TiercelRun.open(namespace, flowId, flow.inputs || [], (execution) => {
        const link = `/ui/flows/${encodeURIComponent(namespace)}/${encodeURIComponent(flowId)}#executions`;
        toast(`Execution ${execution.id} started`);
        const box = document.getElementById("toast");
        box.append(" ", el("a", { href: link, id: "execution-link", "data-execution-id": execution.id }, "See the executions"));
      });
    } catch (error) {
      toast(error.message, true);
    }
  });

  (async () => {
    if (flowId) {
      const flow = await api(`/api/v1/flows/${encodeURIComponent(namespace)}/${encodeURIComponent(flowId)}`);
      editor.setSource(flow.source);
    } else {
      editor.setSource(TEMPLATE);
    }
    view.focus();
  })().catch((error) => toast(error.message, true));

  window.TiercelEditor = { view };
})();
