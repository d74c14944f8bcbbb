// The "Run" dialog: a form generated from the flow's inputs (a widget per input type), sent as
// multipart to POST /api/v1/executions/{ns}/{id}; the API's validation messages are shown at
// their fields. `TiercelRun.open(namespace, flowId, inputs, onStarted)` opens it.
(function () {
  "use strict";
  const { api, el } = window.Tiercel;
  const dialog = document.getElementById("run-dialog");
  if (!dialog) return;
  const form = document.getElementById("run-form");
  const fields = document.getElementById("run-fields");
  const formError = document.getElementById("run-error");
  let current = null;

  function widget(input) {
    const id = `input-${input.id}`;
    const value = input.defaults ?? input.defaultValue;
    const common = { id, name: input.id, "aria-describedby": `${id}-error` };
    const required = input.required !== false && value === undefined;
    if (required) common.required = true;
    const type = (input.type || "STRING").toUpperCase();
    const text = (kind, extra = {}) => el("input", { ...common, type: kind, value: value ?? "", ...extra });
    switch (type) {
      case "INT": return text("number", { step: "1", inputmode: "numeric" });
      case "FLOAT": return text("number", { step: "any", inputmode: "decimal" });
      case "BOOLEAN": case "BOOL": {
        const box = el("input", { ...common, type: "checkbox", value: "true", checked: value === true || value === "true" });
        delete box.required;
        box.removeAttribute("required");
        return box;
      }
      case "DATETIME": return text("datetime-local", { step: "1", value: value ? String(value).replace(/Z$/, "").slice(0, 19) : "" });
      case "DATE": return text("date");
      case "TIME": return text("time", { step: "1" });
      case "SECRET": return text("password", { autocomplete: "off" });
      case "EMAIL": return text("email");
      case "URI": return text("url");
      case "DURATION": return text("text", { placeholder: "ISO-8601, e.g. PT5M" });
      case "FILE": return el("input", { ...common, type: "file" });
      case "SELECT": case "ENUM": case "MULTISELECT": {
        const multiple = type === "MULTISELECT";
        const chosen = new Set([].concat(value ?? []).map(String));
        return el("select", { ...common, multiple },
          multiple || !required ? null : el("option", { value: "" }, "Choose…"),
          (input.values || []).map((v) => el("option", { value: v, selected: chosen.has(String(v)) }, v)));
      }
      case "JSON": case "ARRAY": case "YAML": return el("textarea", { ...common, rows: 4 },
        value === undefined ? "" : typeof value === "string" ? value : JSON.stringify(value, null, 2));
      default: return text("text");
    }
  }

  function open(namespace, flowId, inputs, onStarted) {
    current = { namespace, flowId, inputs, onStarted };
    formError.hidden = true;
    const visible = (inputs || []).filter((i) => i.displayName !== false);
    fields.replaceChildren(...visible.map((input) => {
      const control = widget(input);
      const label = input.displayName || input.id;
      const isBox = control.type === "checkbox";
      return el("div", { class: "field" },
        isBox ? el("label", { class: "checkbox", for: control.id }, control, label)
          : [el("label", { for: control.id }, label, control.required ? " *" : "",
            el("span", { class: "hint" }, ` (${(input.type || "STRING").toLowerCase()})`)), control],
        input.description ? el("p", { class: "hint" }, input.description) : null,
        el("p", { class: "field-error", id: `${control.id}-error`, hidden: true }));
    }));
    if (!visible.length) fields.append(el("p", { class: "hint" }, "This flow takes no inputs."));
    dialog.showModal();
    (fields.querySelector("input, select, textarea") || document.getElementById("run-submit")).focus();
  }

  function fieldError(name, message) {
    const box = document.getElementById(`input-${name}-error`);
    const control = document.getElementById(`input-${name}`);
    if (!box) return false;
    box.textContent = message;
    box.hidden = false;
    control?.setAttribute("aria-invalid", "true");
    return true;
  }

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    formError.hidden = true;
    fields.querySelectorAll(".field-error").forEach((p) => { p.hidden = true; });
    fields.querySelectorAll("[aria-invalid]").forEach((c) => c.removeAttribute("aria-invalid"));
    let ok = true;
    for (const control of fields.querySelectorAll("[required]")) {
      if (!control.value) ok = fieldError(control.name, "A value is required") && false;
    }
    if (!ok) return;
    const data = new FormData();
    for (const control of fields.querySelectorAll("input, select, textarea")) {
      if (control.type === "checkbox") data.append(control.name, control.checked ? "true" : "false");
      else if (control.type === "file") { if (control.files[0]) data.append(control.name, control.files[0]); }
      else if (control.multiple) [...control.selectedOptions].forEach((o) => data.append(control.name, o.value));
      else if (control.value !== "") data.append(control.name, control.value);
    }
    const button = document.getElementById("run-submit");
    button.disabled = true;
    try {
      const execution = await api(`/api/v1/executions/${encodeURIComponent(current.namespace)}/${encodeURIComponent(current.flowId)}`,
        { method: "POST", body: data });
      dialog.close();
      current.onStarted?.(execution);
    } catch (error) {
      let placed = false;
      for (const detail of error.details || []) {
        const name = (detail.path || "").replace(/^inputs\./, "");
        if (fieldError(name, detail.message)) placed = true;
      }
      if (!placed || !(error.details || []).length) {
        formError.textContent = error.message;
        formError.hidden = false;
      }
    } finally {
      button.disabled = false;
    }
  });
  document.getElementById("run-cancel").addEventListener("click", () => dialog.close());

  window.TiercelRun = { open };
})();
