// A new job: upload a dataset, read its check report (and what cleaning would do), then start.
import { api } from "./api.js";
import { append, clear, fmt, h, table } from "./dom.js";

const METHODS = [
  ["lora", "LoRA (an adapter; the base stays frozen)"],
  ["full", "Full (every weight trains)"],
  ["frozen", "Frozen blocks (the first N blocks never train)"],
  ["gradual", "Gradual unfreezing (top block first, one more every N steps)"],
];

function field(label, input, param, hint) {
  const error = h("span", { class: "field-error", "data-error-for": param, role: "alert" });
  const wrap = h("div", { class: "field", "data-param": param }, h("label", { for: input.id }, label), input, hint ? h("small", { class: "muted" }, hint) : null, error);
  return wrap;
}

function numberOrText(value) {
  const v = value.trim();
  if (v === "" || v === "auto") return v === "" ? undefined : "auto";
  const n = Number(v);
  return Number.isFinite(n) ? n : v; // not a number: sent as typed, the API says what is wrong
}

/** The data check report of an uploaded file: a summary and the problems by line. */
export function reportView(file) {
  const r = file.report;
  const box = h("div", { id: "report", class: "card" });
  box.append(
    h("h2", {}, "Data check: ", h("span", { id: "report-file" }, file.filename), " ", h("span", { class: "status status-" + (file.status === "processed" ? "succeeded" : "failed") }, file.status)),
  );
  if (!r) {
    box.append(h("p", { class: "error" }, file.status_details || "No report."));
    return box;
  }
  box.append(
    h("p", { id: "report-summary" },
      `${fmt(r.examples_read)} examples read, ${fmt(r.examples_valid)} valid (${r.format || "unknown format"}); `,
      `${fmt(r.counts_by_severity.error)} errors, ${fmt(r.counts_by_severity.warning)} warnings.`),
  );
  if (r.problems.length) {
    box.append(
      table(
        ["Line", "Severity", "Problem", "Message", "Fix"],
        r.problems.map((p) => [p.line === null ? "file" : String(p.line), h("span", { class: "sev-" + p.severity }, p.severity), h("code", {}, p.code), p.message, p.fix || ""]),
        { id: "problems-table" },
      ),
    );
    if (r.problems_total > r.problems.length) {
      box.append(h("p", { class: "muted" }, `Showing ${r.problems.length} of ${r.problems_total} problems.`));
    }
  } else {
    box.append(h("p", {}, "No problems found."));
  }
  return box;
}

/** What `data clean` would do with the file. */
export function cleanView(c) {
  const fixes = Object.entries(c.fixes || {});
  const box = h("div", { id: "clean", class: "card" }, h("h2", {}, "Cleaning preview"));
  box.append(
    h("p", { id: "clean-counts" }, `Read ${fmt(c.read)}: keep ${fmt(c.kept)}, reject ${fmt(c.rejected)}; fixes applied to `, `${fmt(fixes.reduce((n, [, k]) => n + k, 0))} examples.`),
  );
  if (fixes.length) {
    box.append(h("h3", {}, "Fixes"), table(["Fix", "Examples", "Lines"], fixes.map(([code, n]) => [h("code", {}, code), fmt(n), (c.fix_lines[code] || []).join(", ")]), { id: "clean-fixes" }));
  }
  if (c.rejected_lines.length) {
    box.append(
      h("h3", {}, "Rejected lines"),
      table(["Line", "Reason", "Text"], c.rejected_lines.map((r) => [String(r.line), r.reason, h("code", { class: "raw" }, r.raw)]), { id: "clean-rejects" }),
    );
  }
  box.append(h("p", { class: "muted" }, "Nothing was changed; run `tuneforge data clean` on the file to write the cleaned copy."));
  return box;
}

export function renderNewJob(main) {
  const fileInput = h("input", { type: "file", id: "upload-file", accept: ".jsonl,.json,.csv,.tsv,.parquet,.txt" });
  const uploadError = h("p", { class: "error", id: "upload-error", role: "alert" });
  const reportBox = h("div", { id: "report-box" });
  const trainSelect = h("select", { id: "training-file" });
  const validSelect = h("select", { id: "validation-file" });
  const modelSelect = h("select", { id: "base-model" });
  const methodSelect = h("select", { id: "method" }, METHODS.map(([v, label]) => h("option", { value: v }, label)));
  const blocks = h("input", { id: "freeze-blocks", value: "1", inputmode: "numeric" });
  const every = h("input", { id: "unfreeze-every", value: "2", inputmode: "numeric" });
  const epochs = h("input", { id: "n-epochs", value: "auto" });
  const lr = h("input", { id: "lr-multiplier", value: "auto" });
  const batch = h("input", { id: "batch-size", value: "auto" });
  const maxSteps = h("input", { id: "max-steps", value: "", placeholder: "no limit", inputmode: "numeric" });
  const suffix = h("input", { id: "suffix", value: "", placeholder: "optional" });
  const formError = h("p", { class: "error", id: "form-error", role: "alert" });
  const blocksField = field("Frozen blocks", blocks, "method.supervised.tuneforge.freeze.blocks");
  const everyField = field("Unfreeze one more block every (steps)", every, "method.supervised.tuneforge.unfreeze.every");

  function showMethodFields() {
    blocksField.hidden = methodSelect.value !== "frozen";
    everyField.hidden = methodSelect.value !== "gradual";
  }
  methodSelect.addEventListener("change", showMethodFields);

  const form = h(
    "form",
    { id: "new-job", class: "card" },
    h("h2", {}, "2. Start a job"),
    field("Base model", modelSelect, "model"),
    field("Training file", trainSelect, "training_file"),
    field("Validation file", validSelect, "validation_file", "Optional: validation loss is measured on it."),
    field("Method", methodSelect, "method.supervised.tuneforge.method"),
    blocksField,
    everyField,
    field("Epochs", epochs, "method.supervised.hyperparameters.n_epochs", "A number, or auto."),
    field("Learning rate multiplier", lr, "method.supervised.hyperparameters.learning_rate_multiplier", "× the method's automatic learning rate, or auto."),
    field("Batch size", batch, "method.supervised.hyperparameters.batch_size", "A number, or auto."),
    field("Max steps", maxSteps, "method.supervised.tuneforge.optim.max_steps", "Optional cap on optimizer steps."),
    field("Suffix", suffix, "suffix", "Part of the fine-tuned model's name."),
    formError,
    h("button", { type: "submit", id: "start-job" }, "Start"),
  );
  showMethodFields();

  main.append(
    h("h1", {}, "New fine-tuning job"),
    h(
      "div",
      { class: "card" },
      h("h2", {}, "1. Upload a dataset"),
      h("p", { class: "muted" }, "JSON Lines chat or prompt/completion examples (or CSV, Parquet, text). It is checked on upload."),
      fileInput,
      h("button", { type: "button", id: "upload-button", on: { click: upload } }, "Upload and check"),
      uploadError,
    ),
    reportBox,
    form,
  );

  async function loadChoices(selected) {
    const [models, files] = await Promise.all([api("/v1/models"), api("/v1/files?purpose=fine-tune&limit=100")]);
    append(clear(modelSelect), models.data.map((m) => h("option", { value: m.id }, m.id)));
    const usable = files.data.filter((f) => f.status === "processed");
    const option = (f) => h("option", { value: f.id }, `${f.filename} (${f.id})`);
    append(clear(trainSelect), usable.map(option));
    append(clear(validSelect), [h("option", { value: "" }, "none"), usable.map(option)]);
    if (selected && usable.some((f) => f.id === selected)) trainSelect.value = selected;
  }

  async function upload() {
    uploadError.textContent = "";
    const file = fileInput.files[0];
    if (!file) {
      uploadError.textContent = "Choose a file first.";
      return;
    }
    const data = new FormData();
    data.append("purpose", "fine-tune");
    data.append("file", file, file.name);
    clear(reportBox).append(h("p", { class: "muted" }, "Uploading and checking…"));
    try {
      let row = await api("/v1/files", { method: "POST", form: data });
      while (row.status === "uploaded") {
        await new Promise((r) => setTimeout(r, 300));
        row = await api("/v1/files/" + encodeURIComponent(row.id));
      }
      const cleanButton = h("button", { type: "button", id: "clean-button" }, "Clean it: preview");
      const cleanBox = h("div", { id: "clean-box" });
      cleanButton.addEventListener("click", async () => {
        clear(cleanBox).append(h("p", { class: "muted" }, "Cleaning…"));
        try {
          const c = await api("/v1/dashboard/files/" + encodeURIComponent(row.id) + "/clean", { method: "POST" });
          clear(cleanBox).append(cleanView(c));
        } catch (err) {
          clear(cleanBox).append(h("p", { class: "error" }, err.message));
        }
      });
      clear(reportBox).append(reportView(row), cleanButton, cleanBox);
      await loadChoices(row.id);
    } catch (err) {
      clear(reportBox);
      uploadError.textContent = err.message;
    }
  }

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    for (const el of form.querySelectorAll(".field-error")) el.textContent = "";
    formError.textContent = "";
    const hyper = {};
    for (const [key, input] of [["n_epochs", epochs], ["learning_rate_multiplier", lr], ["batch_size", batch]]) {
      const v = numberOrText(input.value);
      if (v !== undefined) hyper[key] = v;
    }
    const method = methodSelect.value;
    const ext = { method: method === "lora" ? "lora" : "full" };
    if (method === "frozen") ext.freeze = { blocks: numberOrText(blocks.value) };
    if (method === "gradual") ext.unfreeze = { every: numberOrText(every.value) };
    const steps = numberOrText(maxSteps.value);
    if (steps !== undefined) ext.optim = { max_steps: steps };
    const body = {
      model: modelSelect.value,
      training_file: trainSelect.value,
      method: { type: "supervised", supervised: { hyperparameters: hyper, tuneforge: ext } },
    };
    if (validSelect.value) body.validation_file = validSelect.value;
    if (suffix.value.trim()) body.suffix = suffix.value.trim();
    try {
      const job = await api("/v1/fine_tuning/jobs", { method: "POST", body });
      location.hash = "#/jobs/" + encodeURIComponent(job.id);
    } catch (err) {
      showError(form, formError, err);
    }
  });

  loadChoices(null).catch((err) => (formError.textContent = err.message));
}

/** Put the API's message next to the field its `param` names (else above the button). */
export function showError(form, fallback, err) {
  let best = null;
  if (err.param) {
    for (const el of form.querySelectorAll(".field")) {
      const p = el.dataset.param;
      if (el.hidden) continue;
      if (err.param === p || err.param.startsWith(p + ".") || err.param.startsWith(p + "[") || p.startsWith(err.param + ".")) {
        if (!best || p.length > best.dataset.param.length) best = el;
      }
    }
  }
  if (best) best.querySelector(".field-error").textContent = err.message;
  else fallback.textContent = err.message;
}
