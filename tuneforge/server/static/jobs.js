// The jobs list and a job's page: live curves, events, checkpoints, settings, controls.
import { api, ApiError } from "./api.js";
import { lineChart } from "./chart.js";
import { age, clear, fmt, h, table } from "./dom.js";

const TERMINAL = new Set(["succeeded", "failed", "cancelled"]);
const POLL_MS = 1000;

export function methodOf(job) {
  const ext = (job.method && job.method.supervised && job.method.supervised.tuneforge) || {};
  const flat = flatten(ext);
  const method = flat["method"] || "lora";
  if (flat["unfreeze.every"] !== undefined && flat["unfreeze.every"] !== null) {
    return method + " + gradual unfreezing";
  }
  if (flat["freeze.blocks"]) return method + " + frozen blocks";
  return method;
}

function flatten(tree, prefix = "", out = {}) {
  for (const [key, value] of Object.entries(tree || {})) {
    if (value && typeof value === "object" && !Array.isArray(value)) {
      flatten(value, prefix + key + ".", out);
    } else {
      out[prefix + key] = value;
    }
  }
  return out;
}

function progress(job) {
  const t = job.tuneforge || {};
  const total = t.total_steps || 0;
  const step = t.step || 0;
  const bar = h("progress", { max: String(total || 1), value: String(total ? step : 0) });
  return h("span", { class: "progress" }, bar, " ", total ? `${step}/${total}` : "");
}

function status(s) {
  return h("span", { class: "status status-" + s.replace(/[^a-z_]/g, "") }, s);
}

export function renderJobs(main) {
  const body = h("div", { id: "jobs" }, h("p", { class: "muted" }, "Loading…"));
  main.append(
    h(
      "section",
      {},
      h("div", { class: "row" }, h("h1", {}, "Fine-tuning jobs"), h("a", { class: "button", href: "#/new" }, "New job")),
      body,
    ),
  );
  let timer = null;
  let stopped = false;
  async function load() {
    try {
      const page = await api("/v1/fine_tuning/jobs?limit=100");
      clear(body);
      if (!page.data.length) {
        body.append(h("p", { class: "muted" }, "No jobs yet. ", h("a", { href: "#/new" }, "Start one"), "."));
      } else {
        body.append(
          table(
            ["Job", "Status", "Model", "Method", "Created", "Progress", "Fine-tuned model"],
            page.data.map((job) => [
              h("a", { href: "#/jobs/" + encodeURIComponent(job.id) }, job.id),
              status(job.status),
              job.model,
              methodOf(job),
              age(job.created_at),
              progress(job),
              job.fine_tuned_model || "",
            ]),
            { id: "jobs-table" },
          ),
        );
      }
      if (!stopped && page.data.some((j) => !TERMINAL.has(j.status))) {
        timer = setTimeout(load, 2 * POLL_MS);
      }
    } catch (err) {
      clear(body).append(h("p", { class: "error" }, err.message));
    }
  }
  load();
  return () => {
    stopped = true;
    clearTimeout(timer);
  };
}

export function renderJob(main, jobId) {
  const head = h("div", { id: "job-head" });
  const controls = h("div", { class: "controls" });
  const controlError = h("p", { class: "error", id: "control-error", role: "alert" });
  const charts = {
    loss: lineChart("Loss", [{ label: "train loss", key: "train_loss" }, { label: "valid loss", key: "valid_loss" }], "chart-loss"),
    lr: lineChart("Learning rate", [{ label: "lr", key: "lr" }], "chart-lr"),
    speed: lineChart("Tokens / s", [{ label: "tokens/s", key: "tokens_per_s" }], "chart-speed"),
    params: lineChart("Trainable parameters", [{ label: "trainable", key: "trainable_params" }], "chart-params"),
  };
  const events = h("div", { id: "events" });
  const checkpoints = h("div", { id: "checkpoints" });
  const settings = h("div", { id: "settings" });
  main.append(
    h(
      "section",
      {},
      h("p", {}, h("a", { href: "#/jobs" }, "← Jobs")),
      head,
      controls,
      controlError,
      h("div", { class: "charts" }, Object.values(charts).map((c) => c.el)),
      h("div", { class: "columns" },
        h("div", {}, h("h2", {}, "Checkpoints"), checkpoints, h("h2", {}, "Settings"), settings),
        h("div", {}, h("h2", {}, "Events"), events)),
    ),
  );

  const seen = new Map(); // event id -> event
  let timer = null;
  let stopped = false;
  let lastStatus = null;

  async function newEvents() {
    // Newest first: page back until an event already seen.
    let after = null;
    for (;;) {
      const q = "/v1/fine_tuning/jobs/" + encodeURIComponent(jobId) + "/events?limit=200" + (after ? "&after=" + encodeURIComponent(after) : "");
      const page = await api(q);
      let known = false;
      for (const e of page.data) {
        if (seen.has(e.id)) known = true;
        else seen.set(e.id, e);
      }
      if (known || !page.has_more) return;
      after = page.last_id;
    }
  }

  function drawEvents() {
    const all = [...seen.values()].sort((a, b) => b.created_at - a.created_at || (a.id < b.id ? 1 : -1));
    const points = all.filter((e) => e.type === "metrics" && e.data).map((e) => e.data).sort((a, b) => a.step - b.step);
    for (const c of Object.values(charts)) c.update(points);
    clear(events).append(
      h("ol", { class: "events" }, all.filter((e) => e.type !== "metrics").concat(all.filter((e) => e.type === "metrics").slice(0, 5)).sort((a, b) => b.created_at - a.created_at).map((e) =>
        h("li", { class: "level-" + e.level }, h("time", {}, new Date(e.created_at * 1000).toLocaleTimeString()), " ", e.message))),
    );
  }

  async function drawCheckpoints() {
    const page = await api("/v1/fine_tuning/jobs/" + encodeURIComponent(jobId) + "/checkpoints?limit=100");
    clear(checkpoints);
    if (!page.data.length) {
      checkpoints.append(h("p", { class: "muted" }, "None yet."));
      return;
    }
    checkpoints.append(
      table(
        ["Step", "Model", "Train loss", "Valid loss", ""],
        page.data.map((c) => [
          fmt(c.step_number),
          h("code", {}, c.fine_tuned_model_checkpoint),
          fmt(c.metrics.train_loss),
          fmt(c.metrics.valid_loss ?? c.metrics.full_valid_loss),
          h("a", { href: "#/playground?models=" + encodeURIComponent(c.fine_tuned_model_checkpoint) }, "Try it"),
        ]),
        { id: "checkpoints-table" },
      ),
    );
  }

  function drawHead(job) {
    const t = job.tuneforge || {};
    clear(head).append(
      h("h1", {}, "Job ", h("code", {}, job.id)),
      h(
        "dl",
        { class: "facts" },
        h("dt", {}, "Status"), h("dd", { id: "job-status" }, status(job.status)),
        h("dt", {}, "Model"), h("dd", {}, job.model),
        h("dt", {}, "Method"), h("dd", {}, methodOf(job)),
        h("dt", {}, "Progress"), h("dd", {}, progress(job)),
        h("dt", {}, "Created"), h("dd", {}, age(job.created_at)),
        h("dt", {}, "Fine-tuned model"), h("dd", { id: "job-model" }, job.fine_tuned_model
          ? h("a", { href: "#/playground?models=" + encodeURIComponent(job.fine_tuned_model) }, job.fine_tuned_model) : "—"),
        job.error ? [h("dt", {}, "Error"), h("dd", { class: "error" }, job.error.message)] : null,
        t.control ? [h("dt", {}, "Requested"), h("dd", {}, t.control)] : null,
      ),
    );
    const hyper = { ...job.hyperparameters };
    const ext = flatten((job.method && job.method.supervised && job.method.supervised.tuneforge) || {});
    const rows = Object.entries(hyper).map(([k, v]) => [k, JSON.stringify(v)]);
    for (const [k, v] of Object.entries(ext)) rows.push(["tuneforge." + k, JSON.stringify(v)]);
    rows.push(["seed", String(job.seed)]);
    if (job.validation_file) rows.push(["validation_file", job.validation_file]);
    rows.push(["training_file", job.training_file]);
    clear(settings).append(table(["Setting", "Value"], rows, { id: "settings-table" }));
    clear(controls);
    const active = !TERMINAL.has(job.status);
    const button = (action, label, enabled) =>
      h("button", { type: "button", id: action + "-job", disabled: !enabled, on: { click: () => control(action) } }, label);
    controls.append(
      button("cancel", "Cancel", active),
      button("pause", "Pause", active && job.status !== "paused"),
      button("resume", "Resume", job.status === "paused"),
    );
  }

  async function control(action) {
    controlError.textContent = "";
    try {
      const job = await api("/v1/fine_tuning/jobs/" + encodeURIComponent(jobId) + "/" + action, { method: "POST" });
      drawHead(job);
    } catch (err) {
      controlError.textContent = err.message;
    }
  }

  async function poll() {
    try {
      const job = await api("/v1/fine_tuning/jobs/" + encodeURIComponent(jobId));
      await newEvents();
      drawHead(job);
      drawEvents();
      if (job.status !== lastStatus || !TERMINAL.has(job.status)) await drawCheckpoints();
      lastStatus = job.status;
      if (!stopped && !TERMINAL.has(job.status)) timer = setTimeout(poll, POLL_MS);
    } catch (err) {
      if (err instanceof ApiError && err.status === 404) {
        clear(head).append(h("p", { class: "error" }, err.message));
        return;
      }
      controlError.textContent = err.message;
      if (!stopped) timer = setTimeout(poll, 3 * POLL_MS);
    }
  }
  poll();
  return () => {
    stopped = true;
    clearTimeout(timer);
    for (const c of Object.values(charts)) c.destroy();
  };
}
