// Every data call of the dashboard: the API itself, with the signed-in key as the bearer token.
// The key is kept in this tab's sessionStorage (gone when the tab closes); no cookie is set.

const KEY = "tuneforge.api_key";

export function getKey() {
  return sessionStorage.getItem(KEY);
}

export function setKey(key) {
  sessionStorage.setItem(KEY, key);
}

export function signOut() {
  sessionStorage.removeItem(KEY);
}

export class ApiError extends Error {
  constructor(status, error) {
    super((error && error.message) || "HTTP " + status);
    this.status = status;
    this.param = (error && error.param) || null;
    this.code = (error && error.code) || null;
  }
}

export function headers(extra) {
  const key = getKey();
  const out = { ...(extra || {}) };
  if (key) out.Authorization = "Bearer " + key;
  return out;
}

async function fail(response, quiet) {
  let error = null;
  try {
    error = (await response.json()).error;
  } catch (_) {
    /* not JSON */
  }
  const err = new ApiError(response.status, error);
  if (response.status === 401 && !quiet) window.dispatchEvent(new CustomEvent("tuneforge:unauthorized"));
  throw err;
}

/** GET/POST `path` (JSON in and out); throws ApiError with the API's message and param. */
export async function api(path, { method = "GET", body, form, quiet = false } = {}) {
  const init = { method, headers: headers(), cache: "no-store" };
  if (form) {
    init.body = form;
  } else if (body !== undefined) {
    init.body = JSON.stringify(body);
    init.headers["Content-Type"] = "application/json";
  }
  const response = await fetch(path, init);
  if (!response.ok) await fail(response, quiet); // quiet: a 401 is the caller's to show
  return response.json();
}

/** The response's text (e.g. a report page). */
export async function apiText(path) {
  const response = await fetch(path, { headers: headers(), cache: "no-store" });
  if (!response.ok) await fail(response);
  return response.text();
}

/** POST a streamed chat completion; calls onDelta(text) per chunk, returns {usage, finish}. */
export async function streamChat(body, onDelta, signal) {
  const response = await fetch("/v1/chat/completions", {
    method: "POST",
    headers: headers({ "Content-Type": "application/json" }),
    body: JSON.stringify({ ...body, stream: true, stream_options: { include_usage: true } }),
    signal,
  });
  if (!response.ok) await fail(response);
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  let usage = null;
  let finish = null;
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += value;
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      for (const line of block.split("\n")) {
        if (!line.startsWith("data:")) continue;
        const data = line.slice(5).trim();
        if (data === "[DONE]") return { usage, finish };
        const chunk = JSON.parse(data);
        if (chunk.error) throw new ApiError(500, chunk.error);
        if (chunk.usage) usage = chunk.usage;
        for (const choice of chunk.choices || []) {
          if (choice.delta && choice.delta.content) onDelta(choice.delta.content);
          if (choice.finish_reason) finish = choice.finish_reason;
        }
      }
    }
  }
  return { usage, finish };
}
