// Models: the base, adapters, fine-tunes and their checkpoints as a lineage tree, each with its
// evaluation report when it has one.
import { api, apiText, ApiError } from "./api.js";
import { clear, h } from "./dom.js";

// Elements and attributes a report keeps; everything else is dropped (text kept as text).
const REPORT_TAGS = new Set(["h1", "h2", "h3", "h4", "p", "table", "thead", "tbody", "tr", "th", "td", "ul", "ol", "li", "code", "em", "strong", "b", "i", "figure", "figcaption", "img", "br", "span", "div", "section", "caption"]);

/**
 * A report page rebuilt node by node from the parsed document (DOMParser runs no script):
 * allowed elements are re-created, text goes in as text nodes, and the only attribute kept is
 * an image's `src` when it is an inline PNG/SVG data URL.
 */
export function safeReport(html) {
  // Styles would be dropped below anyway; removed first so the parse itself does not trip the
  // page's style-src policy (the parsed document is inert either way: no script runs in it).
  const stripped = html
    .replace(/<style\b[\s\S]*?<\/style\s*>/gi, "")
    .replace(/\sstyle\s*=\s*("[^"]*"|'[^']*'|[^\s>]+)/gi, "");
  const doc = new DOMParser().parseFromString(stripped, "text/html");
  function copy(node) {
    if (node.nodeType === Node.TEXT_NODE) return document.createTextNode(node.textContent);
    if (node.nodeType !== Node.ELEMENT_NODE) return null;
    const tag = node.tagName.toLowerCase();
    if (tag === "script" || tag === "style" || tag === "template") return null;
    const children = [...node.childNodes].map(copy).filter(Boolean);
    if (!REPORT_TAGS.has(tag)) {
      const frag = document.createDocumentFragment();
      frag.append(...children);
      return frag;
    }
    const el = document.createElement(tag);
    if (tag === "img") {
      const src = node.getAttribute("src") || "";
      if (/^data:image\/(png|jpeg|gif|webp);base64,[A-Za-z0-9+/=]+$/.test(src)) el.setAttribute("src", src);
      el.setAttribute("alt", node.getAttribute("alt") || "");
    }
    el.append(...children);
    return el;
  }
  const box = h("div", { class: "report" });
  for (const child of doc.body.childNodes) {
    const c = copy(child);
    if (c) box.append(c);
  }
  return box;
}

function lineage(models, jobs) {
  const ids = new Set(models.map((m) => m.id));
  const parent = new Map(); // child id -> parent id
  const jobOf = new Map();
  for (const job of jobs) {
    if (job.fine_tuned_model && ids.has(job.fine_tuned_model)) {
      parent.set(job.fine_tuned_model, job.model);
      jobOf.set(job.fine_tuned_model, job);
    }
  }
  const fineTunes = [...parent.keys()];
  for (const m of models) {
    const owner = fineTunes.find((ft) => m.id.startsWith(ft + ":ckpt-"));
    if (owner) parent.set(m.id, owner);
  }
  const children = new Map();
  for (const [child, p] of parent) {
    if (!children.has(p)) children.set(p, []);
    children.get(p).push(child);
  }
  const roots = models.filter((m) => !parent.has(m.id) || !ids.has(parent.get(m.id))).map((m) => m.id);
  return { roots, children, parent, jobOf };
}

function kindOf(id, index, tree) {
  if (index === 0) return "base";
  if (/:ckpt-step-\d+$/.test(id) && tree.parent.has(id)) return "checkpoint";
  if (tree.jobOf.has(id)) return "fine-tune";
  return "model";
}

export function renderModels(main) {
  const treeBox = h("div", { id: "model-tree" }, h("p", { class: "muted" }, "Loading…"));
  const reportBox = h("div", { id: "model-report" });
  main.append(h("h1", {}, "Models"), h("div", { class: "columns" }, treeBox, reportBox));

  async function showReport(id) {
    clear(reportBox).append(h("p", { class: "muted" }, "Loading the report of ", h("code", {}, id), "…"));
    try {
      const html = await apiText("/v1/dashboard/models/" + encodeURIComponent(id) + "/report");
      clear(reportBox).append(h("h2", {}, "Evaluation report: ", h("code", {}, id)), safeReport(html));
    } catch (err) {
      clear(reportBox).append(h("h2", {}, h("code", {}, id)), h("p", { class: err instanceof ApiError && err.status === 404 ? "muted" : "error" }, err.message));
    }
  }

  function showExport(id) {
    clear(reportBox).append(
      h("h2", {}, "Export ", h("code", {}, id)),
      h("p", {}, "On the server, copy it out of the store as a standard Hugging Face folder (add --merge to fold a LoRA adapter into its base):"),
      h("pre", { id: "export-command" }, `tuneforge models export '${id}' --out exported-model`),
    );
  }

  async function load() {
    try {
      const [models, jobs] = await Promise.all([api("/v1/models"), api("/v1/fine_tuning/jobs?limit=100")]);
      const tree = lineage(models.data, jobs.data);
      const order = new Map(models.data.map((m, i) => [m.id, i]));
      const node = (id) => {
        const kind = kindOf(id, order.get(id), tree);
        const job = tree.jobOf.get(id);
        const kids = (tree.children.get(id) || []).sort();
        return h(
          "li",
          { "data-model": id, class: "kind-" + kind },
          h("span", { class: "tag" }, kind),
          " ",
          h("code", {}, id),
          " ",
          h("button", { type: "button", class: "link report-button", on: { click: () => showReport(id) } }, "report"),
          " ",
          h("a", { href: "#/playground?models=" + encodeURIComponent(id) }, "playground"),
          job ? [" ", h("a", { href: "#/jobs/" + encodeURIComponent(job.id) }, "job")] : null,
          kind === "fine-tune" || kind === "checkpoint"
            ? [" ", h("button", { type: "button", class: "link export-button", on: { click: () => showExport(id) } }, "export")]
            : null,
          kids.length ? h("ul", {}, kids.map(node)) : null,
        );
      };
      clear(treeBox).append(h("ul", { class: "tree" }, tree.roots.map(node)));
    } catch (err) {
      clear(treeBox).append(h("p", { class: "error" }, err.message));
    }
  }
  load();
}
