// What every page shares: the theme toggle, calls to the API with the session's CSRF token,
// sign-out, and a place to tell the user what happened.
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

  window.Tiercel = { api, toast, el, when, csrf };
})();
