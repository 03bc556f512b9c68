// The playground: one prompt to two or three models side by side, streamed.
import { api, streamChat } from "./api.js";
import { append, clear, h } from "./dom.js";

const SLOTS = 3;

export function renderPlayground(main, query) {
  const wanted = new URLSearchParams(query.replace(/^\?/, "")).getAll("models").flatMap((m) => m.split(","));
  const selects = [];
  for (let i = 0; i < SLOTS; i++) selects.push(h("select", { id: "model-" + i, "aria-label": "Model " + (i + 1) }));
  const system = h("textarea", { id: "system-prompt", rows: "2", placeholder: "Optional system prompt" });
  const prompt = h("textarea", { id: "prompt", rows: "3", placeholder: "Your message" });
  const temperature = h("input", { id: "temperature", type: "number", min: "0", max: "2", step: "0.1", value: "0.7" });
  const maxTokens = h("input", { id: "max-tokens", type: "number", min: "1", step: "1", value: "64" });
  const error = h("p", { class: "error", id: "playground-error", role: "alert" });
  const send = h("button", { type: "submit", id: "send" }, "Send");
  const outputs = h("div", { class: "replies", id: "replies" });
  const form = h(
    "form",
    { id: "playground", class: "card" },
    h("div", { class: "row" }, selects.map((s, i) => h("label", {}, "Model " + (i + 1) + " ", s))),
    h("label", { for: "system-prompt" }, "System prompt"),
    system,
    h("label", { for: "prompt" }, "Prompt"),
    prompt,
    h("div", { class: "row" }, h("label", {}, "Temperature ", temperature), h("label", {}, "Max tokens ", maxTokens), send),
    error,
  );
  main.append(h("h1", {}, "Playground"), form, outputs);
  let controllers = [];

  api("/v1/models")
    .then((models) => {
      const ids = models.data.map((m) => m.id);
      // Preselect: the models asked for in the link, compared with the base (listed first).
      const picks = wanted.filter((id) => ids.includes(id));
      if (picks.length === 1 && picks[0] !== ids[0]) picks.push(ids[0]);
      if (!picks.length) picks.push(...ids.slice(0, 2));
      selects.forEach((s, i) => {
        append(s, [h("option", { value: "" }, "—"), ids.map((id) => h("option", { value: id }, id))]);
        s.value = picks[i] || "";
      });
    })
    .catch((err) => (error.textContent = err.message));

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    error.textContent = "";
    for (const c of controllers) c.abort();
    controllers = [];
    const models = selects.map((s) => s.value).filter(Boolean);
    if (!models.length || !prompt.value.trim()) {
      error.textContent = "Pick a model and write a prompt.";
      return;
    }
    const messages = [];
    if (system.value.trim()) messages.push({ role: "system", content: system.value });
    messages.push({ role: "user", content: prompt.value });
    clear(outputs);
    send.disabled = true;
    await Promise.all(models.map((model, i) => run(model, i, messages)));
    send.disabled = false;
  });

  async function run(model, i, messages) {
    const text = h("pre", { class: "reply-text" });
    const stats = h("p", { class: "muted reply-stats" }, "waiting…");
    const column = h("div", { class: "reply card", "data-model": model, id: "reply-" + i }, h("h3", {}, model), text, stats);
    outputs.append(column);
    const controller = new AbortController();
    controllers.push(controller);
    const started = performance.now();
    let first = null;
    let chunks = 0;
    try {
      const body = { model, messages, temperature: Number(temperature.value), max_tokens: Number(maxTokens.value) };
      const { usage, finish } = await streamChat(
        body,
        (delta) => {
          if (first === null) first = performance.now();
          chunks += 1;
          text.textContent += delta;
          stats.textContent = `${text.textContent.length} characters…`;
        },
        controller.signal,
      );
      const seconds = (performance.now() - started) / 1000;
      const tokens = usage ? usage.completion_tokens : chunks;
      column.dataset.done = "true";
      stats.textContent = `${tokens} tokens in ${seconds.toFixed(2)} s (${(tokens / seconds).toFixed(1)} tokens/s); ${text.textContent.length} characters; finish: ${finish || "?"}`;
    } catch (err) {
      if (err.name === "AbortError") return;
      column.dataset.done = "error";
      stats.textContent = "";
      stats.append(h("span", { class: "error" }, err.message));
    }
  }

  return () => {
    for (const c of controllers) c.abort();
  };
}
