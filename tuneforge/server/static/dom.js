// Building DOM nodes without HTML strings: every text goes in as a text node, so whatever a
// dataset, a model or a job name contains is shown literally and never parsed as markup.

/**
 * h("a", {href: "#/jobs", class: "x", on: {click: fn}}, "text", childNode, [more])
 * Attributes are set with setAttribute (no event-handler attributes: use `on`).
 */
export function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "on") {
      for (const [event, fn] of Object.entries(value)) el.addEventListener(event, fn);
    } else if (key.startsWith("on")) {
      throw new Error("event handler attributes are not allowed: " + key);
    } else if (key === "value") {
      el.value = value;
    } else {
      el.setAttribute(key, value === true ? "" : String(value));
    }
  }
  append(el, children);
  return el;
}

export function append(el, children) {
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

export function clear(el) {
  while (el.firstChild) el.removeChild(el.firstChild);
  return el;
}

export function table(headers, rows, attrs) {
  return h(
    "table",
    attrs || {},
    h("thead", {}, h("tr", {}, headers.map((x) => h("th", {}, x)))),
    h("tbody", {}, rows.map((r) => h("tr", {}, r.map((c) => h("td", {}, c))))),
  );
}

export function age(seconds) {
  if (!seconds) return "";
  const s = Math.max(0, Math.round(Date.now() / 1000 - seconds));
  if (s < 60) return s + " s ago";
  if (s < 3600) return Math.round(s / 60) + " min ago";
  if (s < 86400) return Math.round(s / 3600) + " h ago";
  return Math.round(s / 86400) + " d ago";
}

export function fmt(x, digits = 4) {
  if (x === null || x === undefined || x === "") return "";
  if (typeof x === "number") {
    if (Number.isInteger(x)) return x.toLocaleString("en");
    return Math.abs(x) < 1e-3 ? x.toExponential(2) : x.toFixed(digits);
  }
  return String(x);
}
