// The dashboard's entry point: sign-in, navigation (hash routes) and the views.
import { api, ApiError, getKey, setKey, signOut } from "./api.js";
import { clear, h } from "./dom.js";
import { renderJob, renderJobs } from "./jobs.js";
import { renderModels } from "./models.js";
import { renderNewJob } from "./newjob.js";
import { renderPlayground } from "./playground.js";

const main = document.getElementById("main");
const nav = document.getElementById("nav");
let cleanup = null;

const ROUTES = [
  [/^#\/jobs\/([^/]+)$/, "jobs", (m) => renderJob(main, decodeURIComponent(m[1]))],
  [/^#\/jobs$/, "jobs", () => renderJobs(main)],
  [/^#\/new$/, "new", () => renderNewJob(main)],
  [/^#\/models$/, "models", () => renderModels(main)],
  [/^#\/playground(\?.*)?$/, "playground", (m) => renderPlayground(main, m[1] || "")],
];

function signInForm(message) {
  nav.hidden = true;
  clear(main);
  const key = h("input", {
    id: "api-key",
    type: "password",
    autocomplete: "off",
    placeholder: "sk-...",
    "aria-label": "API key",
  });
  const error = h("p", { class: "error", id: "signin-error", role: "alert" }, message || "");
  const form = h(
    "form",
    { id: "signin", class: "card narrow" },
    h("h1", {}, "Sign in"),
    h("p", { class: "muted" }, "Enter an API key of this server. It stays in this browser tab."),
    h("label", { for: "api-key" }, "API key"),
    key,
    error,
    h("button", { type: "submit" }, "Sign in"),
  );
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    setKey(key.value.trim());
    try {
      await api("/v1/models", { quiet: true });
    } catch (err) {
      signOut();
      error.textContent = err instanceof ApiError ? err.message : String(err);
      return;
    }
    if (!location.hash || location.hash === "#/signin") location.hash = "#/jobs";
    route();
  });
  main.append(form);
  key.focus();
}

function route() {
  if (cleanup) {
    cleanup();
    cleanup = null;
  }
  if (getKey() === null) {
    signInForm();
    return;
  }
  nav.hidden = false;
  const hash = location.hash || "#/jobs";
  for (const [pattern, name, view] of ROUTES) {
    const m = hash.match(pattern);
    if (!m) continue;
    for (const a of nav.querySelectorAll("a")) {
      a.classList.toggle("active", a.dataset.view === name);
    }
    clear(main);
    cleanup = view(m) || null;
    return;
  }
  location.hash = "#/jobs";
}

window.addEventListener("hashchange", route);
window.addEventListener("tuneforge:unauthorized", () => {
  signOut();
  if (cleanup) {
    cleanup();
    cleanup = null;
  }
  signInForm("The API key was refused; sign in again.");
});
document.getElementById("signout").addEventListener("click", () => {
  signOut();
  route();
});
route();
