// What every page shares: the theme toggle, calls to the API with the session's CSRF token,
// sign-out, a place to tell the user what happened, and the YAML editor of flows and dashboards.
(function () {
  "use strict";
  const root = document.documentElement;
  const csrf = () => document.querySelector('meta[name="csrf-token"]')?.content || "";

  function applyTheme(theme) {
    root.dataset.theme = theme;
    const button = document.getElementById("theme-toggle");
    if (button) {
      button.setAttribute("aria-label", theme === "dark" ? "Switch to light theme" : "Switch to dark theme");
    }
    document.dispatchEvent(new CustomEvent("tiercel:theme", { detail: theme }));
  }

  // An API call as the signed-in user. Answers the decoded JSON (or text); throws an Error
  // whose message is the API's own message, with `status` and `details` attached.
  async function api(path, options = {}) {
    const headers = new Headers(options.headers || {});
    const method = (options.method || "GET").toUpperCase();
    if (!["GET", "HEAD"].includes(method) && csrf()) headers.set("X-CSRF-Token", csrf());
    if (!headers.has("Accept")) headers.set("Accept", "application/json");
    const response = await fetch(path, { ...options, method, headers, credentials: "same-origin" });
    if (response.status === 401) {
      location.href = "/ui/login?next=" + encodeURIComponent(location.pathname + location.search);
      throw new Error("Signed out: sign in again");
    }
    const type = response.headers.get("Content-Type") || "";
    const body = type.includes("json") ? await response.json() : await response.text();
    if (!response.ok) {
      const error = new Error((body && body.message) || `${method} ${path}: ${response.status}`);
      error.status = response.status;
      error.details = (body && body.details) || [];
      throw error;
    }
    return body;
  }

  function toast(message, isError) {
    const box = document.getElementById("toast");
    if (!box) return;
    box.textContent = message;
    box.className = isError ? "error" : "";
    clearTimeout(toast.timer);
    toast.timer = setTimeout(() => { box.textContent = ""; }, 6000);
  }

  // Builds an element: el("a", {href: "/x", class: "y"}, "text", child, ...).
  function el(tag, attrs = {}, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs)) {
      if (value === null || value === undefined || value === false) continue;
      if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
      else node.setAttribute(key, value === true ? "" : value);
    }
    for (const child of children.flat()) {
      if (child === null || child === undefined) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  function when(iso) {
    if (!iso) return "";
    const date = new Date(iso);
    return isNaN(date) ? iso : date.toLocaleString();
  }

  // --- the YAML editors (flows, dashboards) ---------------------------------------------

  // The problem's line, from its first non-blank character to its end: the API names the
  // line and the column of the value, and a misspelt key is the more likely culprit.
  function problemRange(doc, detail) {
    if (!detail.line || detail.line > doc.lines) return { from: 0, to: Math.min(doc.length, 1) };
    const line = doc.line(detail.line);
    const from = line.from + (line.text.length - line.text.trimStart().length);
    return { from: Math.min(from, line.to), to: line.to };
  }

  // A CodeMirror YAML editor in `options.parent` (named `options.label`) that follows the
  // page's theme and validates as you type: the text is POSTed to `options.validate`,
  // `options.problemsOf(answer)` reads the problems ({line, path, message}) from the answer,
  // and each is underlined at its line, listed in `options.list` (a problem with a line is a
  // button that puts the cursor there) and counted in `options.status`. `options.onValid(text)`
  // follows a check that found nothing; `options.extensions` adds to the editor.
  // `options.save()` runs on a click of `options.saveButton` and on Ctrl+S (its error is
  // shown); leaving the page with a text other than the one loaded or saved asks first.
  // CodeMirror is loaded by the editor's page, after this file: it is looked up here.
  function yamlEditor(options) {
    const CM = window.TiercelCodeMirror;
    const { list, status } = options;
    let view = null;

    function showProblems(details) {
      const text = (d) => [d.line ? `Line ${d.line}: ` : "", d.path ? `${d.path}: ` : "", d.message].join("");
      const goTo = (d) => () => {
        if (d.line > view.state.doc.lines) return;
        view.dispatch({ selection: { anchor: problemRange(view.state.doc, d).from }, scrollIntoView: true });
        view.focus();
      };
      list.replaceChildren(...details.map((d) => el("li", { "data-line": d.line ? String(d.line) : null },
        d.line ? el("button", { type: "button", class: "problem", onclick: goTo(d) }, text(d)) : text(d))));
      status.textContent = details.length ? `${details.length} problem${details.length > 1 ? "s" : ""}` : "Valid";
      status.className = details.length ? "error" : "ok";
    }

    async function validate(editor) {
      const text = editor.state.doc.toString();
      if (!text.trim()) { showProblems([]); return []; }
      let answer;
      try {
        answer = await api(options.validate, {
          method: "POST", headers: { "Content-Type": "application/x-yaml" }, body: text,
        });
      } catch (error) {
        showProblems(error.details?.length ? error.details : [{ message: error.message }]);
        return [];
      }
      if (editor.state.doc.toString() !== text) return [];  // typed since: a newer check follows
      const details = options.problemsOf(answer);
      showProblems(details);
      if (!details.length && options.onValid) options.onValid(text);
      return details.map((detail) => ({
        ...problemRange(editor.state.doc, detail),
        severity: "error",
        message: detail.path ? `${detail.path}: ${detail.message}` : detail.message,
      }));
    }

    const theme = new CM.Compartment();
    const themeFor = (name) => (name === "dark" ? CM.oneDark : []);
    view = new CM.EditorView({
      parent: options.parent,
      state: CM.EditorState.create({
        doc: "",
        extensions: [
          CM.basicSetup,
          CM.yaml(),
          CM.EditorState.tabSize.of(2),
          theme.of(themeFor(root.dataset.theme)),
          CM.lintGutter(),
          CM.linter(validate, { delay: 300 }),
          ...(options.extensions || []),
          CM.EditorView.contentAttributes.of({ "aria-label": options.label }),
        ],
      }),
    });
    document.addEventListener("tiercel:theme", (event) => {
      view.dispatch({ effects: theme.reconfigure(themeFor(event.detail)) });
    });

    let saved = "";
    const source = () => view.state.doc.toString();
    const unsaved = () => source() !== saved;
    // The text as loaded: not a change of the user's, leaving asks nothing.
    function setSource(text) {
      view.dispatch({ changes: { from: 0, to: view.state.doc.length, insert: text } });
      saved = text;
    }
    const markSaved = (text) => { saved = text; };

    const save = () => options.save().catch((error) => toast(error.message, true));
    options.saveButton.addEventListener("click", save);
    document.addEventListener("keydown", (event) => {
      if ((event.ctrlKey || event.metaKey) && event.key === "s") {
        event.preventDefault();
        save();
      }
    });
    window.addEventListener("beforeunload", (event) => {
      if (unsaved()) event.preventDefault();
    });
    return { view, showProblems, source, setSource, markSaved, unsaved };
  }

  document.addEventListener("DOMContentLoaded", () => {
    applyTheme(root.dataset.theme || "light");
    document.getElementById("theme-toggle")?.addEventListener("click", () => {
      const next = root.dataset.theme === "dark" ? "light" : "dark";
      localStorage.setItem("tiercel-theme", next);
      applyTheme(next);
    });
    document.getElementById("logout")?.addEventListener("click", async () => {
      await fetch("/api/v1/logout", { method: "POST", credentials: "same-origin" });
      location.href = "/ui/login";
    });
  });

  window.Tiercel = { api, toast, el, when, csrf, yamlEditor };
})();
