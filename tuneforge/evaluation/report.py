"""The evaluation report: metrics.json, report.md, report.html (self-contained) and a Rich table.

Everything is rendered from the result dict that `run_eval` returns and metrics.json stores, so
`tuneforge report` can regenerate the files without a model. The training curves come from the
model folder's `metrics.jsonl`; the HTML embeds them as base64 PNGs and has no external link,
script or style sheet, so it opens offline. report.md points at the same PNGs written next to it.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from tuneforge.evaluation.loading import EvalError, read_manifest
from tuneforge.training.metrics import read_metrics

GROUP_ORDER = ("likelihood", "preference", "generation", "custom", "behaviour", "forgetting")


# --- numbers --------------------------------------------------------------------------------


def fmt(value: float | None, row: dict[str, Any] | None = None) -> str:
    """A metric value as the report shows it."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    name = (row or {}).get("name", "")
    if (row or {}).get("scale", 1.0) != 1.0 or "reply_" in name:
        return f"{value:.1f}"
    if name in ("loss", "perplexity", "general_perplexity"):
        return f"{value:.4g}" if abs(value) < 1000 else f"{value:.4e}"
    return f"{value:.3f}"


def _signed(value: float | None, row: dict[str, Any]) -> str:
    if value is None:
        return "–"
    text = fmt(value, row)
    return text if text.startswith("-") else f"+{text}"


def _ci(row: dict[str, Any]) -> str:
    ci = row.get("ci")
    return f"[{_signed(ci[0], row)}, {_signed(ci[1], row)}]" if ci else "–"


def _verdict(row: dict[str, Any]) -> str:
    return {True: "better", False: "worse"}.get(row.get("better"), "")  # type: ignore[arg-type]


def _sorted_rows(result: dict[str, Any]) -> list[dict[str, Any]]:
    rows = result.get("metrics") or []
    return sorted(
        rows, key=lambda r: GROUP_ORDER.index(r["group"]) if r["group"] in GROUP_ORDER else 9
    )


# --- plots ----------------------------------------------------------------------------------


def training_plots(model_dir: str | Path | None) -> dict[str, bytes]:
    """PNG bytes of the run's curves: loss (train, valid), learning rate and grad norm.

    Empty when the folder has no `metrics.jsonl` (a model not trained by TuneForge).
    """
    if model_dir is None or not (Path(model_dir) / "metrics.jsonl").is_file():
        return {}
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    records = read_metrics(model_dir)
    panels = {
        "loss": (("train_loss", "train"), ("valid_loss", "valid")),
        "learning_rate": (("lr", "learning rate"),),
        "grad_norm": (("grad_norm", "grad norm"),),
    }
    out = {}
    for name, series in panels.items():
        fig, ax = plt.subplots(figsize=(5.5, 3.2), dpi=100)
        drawn = False
        for key, label in series:
            points = [(r["step"], r[key]) for r in records if r.get(key) is not None]
            if points:
                xs, ys = zip(*points, strict=True)
                ax.plot(xs, ys, marker="o" if len(xs) < 30 else None, markersize=3, label=label)
                drawn = True
        if drawn:
            ax.set_xlabel("step")
            ax.set_title(name.replace("_", " "))
            ax.grid(alpha=0.3)
            if len(series) > 1:
                ax.legend()
            fig.tight_layout()
            buf = io.BytesIO()
            fig.savefig(buf, format="png", metadata={"Software": None})
            out[name] = buf.getvalue()
        plt.close(fig)
    return out


# --- writers --------------------------------------------------------------------------------


def write_report(
    result: dict[str, Any], out_dir: str | Path, console: Console | None = None
) -> dict[str, Path]:
    """Write metrics.json, report.md, report.html and the plot PNGs into `out_dir`.

    Prints the metric table to `console` when one is given. Returns the paths written.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    plots = training_plots(result.get("training_curves"))
    paths = {
        "metrics": out / "metrics.json",
        "markdown": out / "report.md",
        "html": out / "report.html",
    }
    paths["metrics"].write_text(json.dumps(result, indent=1, default=float) + "\n")
    for name, png in plots.items():
        (out / f"{name}.png").write_bytes(png)
        paths[f"plot_{name}"] = out / f"{name}.png"
    paths["markdown"].write_text(render_markdown(result, list(plots)))
    paths["html"].write_text(render_html(result, plots))
    if console is not None:
        print_table(result, console)
        console.print(f"report: {paths['html']}  ({paths['markdown'].name}, metrics.json)")
    return paths


def regenerate_report(path: str | Path, console: Console | None = None) -> dict[str, Path]:
    """Rewrite the report of an eval folder, or of a model folder (its `eval/`, or its curves).

    Raises EvalError when `path` is neither.
    """
    path = Path(path)
    if (path / "metrics.json").is_file():
        folder = path
    elif (path / "eval" / "metrics.json").is_file():
        folder = path / "eval"
    elif (path / "metrics.jsonl").is_file() or (path / "tuneforge.json").is_file():
        manifest = read_manifest(path)
        result = {
            "model": {"name": str(path), "base": manifest.get("base_model")},
            "training": manifest.get("metrics") or {},
            "metrics": [],
            "training_curves": str(path.resolve()),
        }
        return write_report(result, path / "eval", console)
    else:
        raise EvalError(
            f"{path}: no evaluation here (no metrics.json) and not a TuneForge model folder "
            "(no tuneforge.json / metrics.jsonl); run `tuneforge eval` first"
        )
    try:
        result = json.loads((folder / "metrics.json").read_text())
    except json.JSONDecodeError as e:
        raise EvalError(f"{folder / 'metrics.json'}: not valid JSON ({e})") from None
    if "metrics" not in result:
        raise EvalError(f"{folder / 'metrics.json'}: not a TuneForge evaluation result")
    return write_report(result, folder, console)


def print_table(result: dict[str, Any], console: Console) -> None:
    """The metric table in the terminal, one section per group, deltas coloured by verdict."""
    has_base = result.get("baseline") is not None
    model = Path(str((result.get("model") or {}).get("name", "model"))).name
    table = Table(title=f"evaluation of {model}", title_justify="left")
    table.add_column("metric", no_wrap=True)
    table.add_column("model", justify="right")
    if has_base:
        table.add_column("baseline", justify="right")
        table.add_column("delta", justify="right")
        table.add_column("95% CI", justify="right", no_wrap=True)
    group = None
    for row in _sorted_rows(result):
        if group is not None and row["group"] != group:
            table.add_section()
        group = row["group"]
        cells = [row["name"], fmt(row["model"], row)]
        if has_base:
            colour = {True: "green", False: "red"}.get(row.get("better"), "")  # type: ignore[arg-type]
            delta = _signed(row.get("delta"), row)
            cells += [
                fmt(row.get("baseline"), row),
                f"[{colour}]{delta}[/]" if colour else delta,
                _ci(row),
            ]
        table.add_row(*cells)
    console.print(table)


def _header_lines(result: dict[str, Any]) -> list[tuple[str, str]]:
    model = result.get("model") or {}
    lines = [("model", str(model.get("name", "")))]
    if result.get("baseline"):
        lines.append(("baseline", str(result["baseline"].get("name", ""))))
    if result.get("data"):
        lines.append(("hold-out data", f"{result['data']} ({model.get('examples', '?')} examples)"))
    if result.get("general"):
        lines.append(("general text", str(result["general"])))
    settings = result.get("settings") or {}
    gen = settings.get("generation")
    if gen:
        decoding = (
            "greedy"
            if not gen.get("do_sample")
            else (
                f"sampling (temperature {gen['temperature']}, top_p {gen['top_p']}, seed {gen['seed']})"
            )
        )
        lines.append(
            (
                "generation",
                f"{decoding}, max_new_tokens {gen['max_new_tokens']}, batch {gen['batch_size']}",
            )
        )
    if settings:
        lines.append(
            (
                "intervals",
                f"paired bootstrap, {settings.get('n_boot')} resamples, seed {settings.get('seed')}",
            )
        )
    if result.get("created"):
        lines.append(
            ("created", f"{result['created']} by TuneForge {result.get('tuneforge_version', '')}")
        )
    for key, value in (result.get("training") or {}).items():
        if isinstance(value, (int, float)):
            lines.append((key, f"{value:.4g}"))
    return lines


def render_markdown(result: dict[str, Any], plots: list[str]) -> str:
    """report.md: the header, the metric table, the example changes, the curves as images."""
    out = ["# TuneForge evaluation", ""]
    out += [f"- **{k}**: {v}" for k, v in _header_lines(result)]
    out.append("")
    rows = _sorted_rows(result)
    has_base = result.get("baseline") is not None
    if rows:
        out += ["## Metrics", ""]
        head = ["group", "metric", "model"] + (
            ["baseline", "delta", "95% CI", ""] if has_base else []
        )
        out += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for row in rows:
            cells = [row["group"], row["name"], fmt(row["model"], row)]
            if has_base:
                cells += [
                    fmt(row.get("baseline"), row),
                    _signed(row.get("delta"), row),
                    _ci(row),
                    _verdict(row),
                ]
            out.append("| " + " | ".join(cells) + " |")
        out.append("")
    out += [f"> **note**: {note}\n" for note in result.get("notes") or []]
    changes = result.get("examples") or {}
    for key, title in (("improved", "Most improved"), ("worsened", "Most worsened")):
        items = changes.get(key) or []
        if not items:
            continue
        out += [f"## {title} examples (by {changes.get('metric')})", ""]
        for ex in items:
            out += [
                f"### line {ex['line']}: {fmt(ex['baseline_score'])} -> {fmt(ex['score'])}",
                "",
                f"- **prompt**: {_md(ex['prompt'])}",
                f"- **reference**: {_md(ex['reference'])}",
                f"- **model**: {_md(ex['reply'])}",
                f"- **baseline**: {_md(ex['baseline_reply'])}",
                "",
            ]
    if plots:
        out += ["## Training curves", ""]
        out += [f"![{name}]({name}.png)" for name in plots]
        out.append("")
    return "\n".join(out)


def _md(text: Any) -> str:
    if text is None:
        return "–"
    text = str(text).replace("\n", " ⏎ ").replace("|", "\\|")
    return f"`{text}`" if text.strip() else "*(empty)*"


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;max-width:72rem;
color:#1d2330;padding:0 1rem}
h1{font-size:1.6rem}h2{font-size:1.2rem;margin-top:2rem;border-bottom:1px solid #dde}
table{border-collapse:collapse;margin:.5rem 0}td,th{padding:.25rem .6rem;border-bottom:1px solid #eee;
text-align:right}td:first-child,td:nth-child(2),th:first-child,th:nth-child(2){text-align:left}
th{background:#f4f5f9}.better{color:#137333;font-weight:600}.worse{color:#b3261e;font-weight:600}
.group{color:#778}.meta td{text-align:left}.ex{border:1px solid #e3e4ea;border-radius:6px;
padding:.5rem .8rem;margin:.6rem 0}.ex pre{white-space:pre-wrap;margin:.1rem 0 .4rem;background:#f8f8fb;
padding:.3rem .5rem;border-radius:4px}.plots img{max-width:32%;min-width:18rem;margin:.3rem}
.label{font-size:.8rem;color:#556;text-transform:uppercase;letter-spacing:.03em}
"""


def render_html(result: dict[str, Any], plots: dict[str, bytes]) -> str:
    """report.html: one file with inline CSS and base64 PNGs; no script, no external link."""
    e = html.escape
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        "<title>TuneForge evaluation</title>",
        f"<style>{_CSS}</style></head><body>",
        "<h1>TuneForge evaluation</h1>",
        "<table class='meta'>",
    ]
    parts += [f"<tr><td><b>{e(k)}</b></td><td>{e(v)}</td></tr>" for k, v in _header_lines(result)]
    parts.append("</table>")
    rows = _sorted_rows(result)
    has_base = result.get("baseline") is not None
    if rows:
        parts.append("<h2>Metrics</h2><table><tr><th>group</th><th>metric</th><th>model</th>")
        if has_base:
            parts.append("<th>baseline</th><th>delta</th><th>95% CI</th><th></th>")
        parts.append("</tr>")
        for row in rows:
            title = e(row.get("description") or "")
            cells = [
                f"<td class='group'>{e(row['group'])}</td>",
                f"<td title='{title}'>{e(row['name'])}</td>",
                f"<td>{e(fmt(row['model'], row))}</td>",
            ]
            if has_base:
                verdict = _verdict(row)
                cells += [
                    f"<td>{e(fmt(row.get('baseline'), row))}</td>",
                    f"<td class='{verdict}'>{e(_signed(row.get('delta'), row))}</td>",
                    f"<td>{e(_ci(row))}</td>",
                    f"<td class='{verdict}'>{verdict}</td>",
                ]
            parts.append("<tr>" + "".join(cells) + "</tr>")
        parts.append("</table>")
        parts.append(
            "<p class='label'>delta = model − baseline; green/red: the 95% interval excludes 0 "
            "in the good/bad direction</p>"
        )
    parts += [f"<p><b>note:</b> {e(note)}</p>" for note in result.get("notes") or []]
    changes = result.get("examples") or {}
    for key, title in (("improved", "Most improved"), ("worsened", "Most worsened")):
        items = changes.get(key) or []
        if not items:
            continue
        parts.append(
            f"<h2>{title} examples <span class='group'>by {e(str(changes.get('metric')))}</span></h2>"
        )
        for ex in items:
            parts.append(
                f"<div class='ex'><div class='label'>line {ex['line']} · "
                f"{e(fmt(ex['baseline_score']))} → {e(fmt(ex['score']))}</div>"
            )
            for label, key2 in (
                ("prompt", "prompt"),
                ("reference", "reference"),
                ("fine-tuned", "reply"),
                ("baseline", "baseline_reply"),
            ):
                parts.append(
                    f"<div class='label'>{label}</div><pre>{e(str(ex.get(key2) or ''))}</pre>"
                )
            parts.append("</div>")
    if plots:
        parts.append("<h2>Training curves</h2><div class='plots'>")
        for name, png in plots.items():
            data = base64.b64encode(png).decode("ascii")
            parts.append(f"<img alt='{e(name)}' src='data:image/png;base64,{data}'>")
        parts.append("</div>")
    parts.append("</body></html>\n")
    return "\n".join(parts)
