"""`tuneforge eval` as functions: evaluate one model, compare it with a baseline, report.

    >>> result = run_eval("runs/bank-lora", "data/valid.jsonl", out_dir="runs/bank-lora/eval")
    >>> [row for row in result["metrics"] if row["name"] == "loss"]

`evaluate_model` scores one model on a hold-out file and returns its per-example records;
`compare` turns one or two such runs into the metric table (deltas, bootstrap intervals) and the
most improved / worsened examples; `write_report` (in report.py) writes the files.
"""

from __future__ import annotations

import gc
import time
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from tuneforge import __version__
from tuneforge.data.blocklist import Blocklist
from tuneforge.evaluation.compare import build_stats, example_changes, primary_metric, summarize
from tuneforge.evaluation.data import read_general, read_holdout, training_format
from tuneforge.evaluation.generate import GenerationSettings, generate_replies, stop_token_ids
from tuneforge.evaluation.likelihood import example_losses
from tuneforge.evaluation.loading import EvalError, LoadedModel, base_model_of, load_for_eval
from tuneforge.evaluation.metrics import (
    JSON_METRICS,
    LABEL_METRIC,
    TEXT_METRICS,
    Metric,
    is_json_reference,
    load_metric,
    references_are_labels,
    score,
)

AUTO = "auto"


@dataclass
class EvalSettings:
    """Everything that decides an evaluation's numbers; recorded in metrics.json."""

    max_new_tokens: int | None = None
    """Longest generated reply; None: twice the longest reference (in tokens) plus 16, at most
    1024, so a model that does not stop is caught without wasting time."""
    generation: GenerationSettings = field(default_factory=GenerationSettings)
    """Decoding settings (greedy by default); max_new_tokens above overrides its own."""
    train_on: str | None = None
    """Which tokens the likelihood scores; None: the model's training setting, else assistant."""
    max_length: int | None = None
    """Tokens per example for the likelihood (longer ones truncated); None: the training
    setting, else 2048."""
    limit: int | None = None
    """Evaluate only the first N hold-out examples."""
    batch_size: int = 16
    """Examples per likelihood batch."""
    blocklist: str | Path | None = None
    """File of phrases (as for `data clean`) whose presence in a reply is counted."""
    metrics: list[str] = field(default_factory=list)
    """Custom metrics, as `module:function` or `file.py:function`."""
    generate: bool = True
    """False skips generation (likelihood and forgetting only)."""
    n_boot: int = 1000
    """Bootstrap resamples for the confidence intervals."""
    seed: int = 0
    """Seed of the bootstrap (and of sampling, when enabled)."""
    dtype: str = "auto"
    """auto, fp32, bf16 or fp16 weights (auto: bf16 where the device multiplies it fast)."""
    device: str | None = None
    """cuda, cpu, ...; None: cuda when available."""

    def __post_init__(self) -> None:
        problems = []
        if self.max_new_tokens is not None and self.max_new_tokens < 1:
            problems.append("max_new_tokens must be at least 1")
        if self.limit is not None and self.limit < 1:
            problems.append("limit must be at least 1")
        if self.batch_size < 1 or self.generation.batch_size < 1:
            problems.append("batch sizes must be at least 1")
        if self.n_boot < 100:
            problems.append("n_boot must be at least 100")
        if self.train_on not in (None, "assistant", "last_assistant", "all"):
            problems.append(f"train_on {self.train_on!r}: choose assistant, last_assistant, all")
        if self.dtype not in ("auto", "fp32", "bf16", "fp16"):
            problems.append(f"dtype {self.dtype!r}: choose auto, fp32, bf16 or fp16")
        if self.blocklist is not None and not Path(self.blocklist).is_file():
            problems.append(f"blocklist {self.blocklist}: no such file")
        if problems:
            raise EvalError("; ".join(problems))

    def to_dict(self) -> dict[str, Any]:
        return {
            "max_new_tokens": self.max_new_tokens,
            "generation": self.generation.to_dict(),
            "train_on": self.train_on,
            "max_length": self.max_length,
            "limit": self.limit,
            "blocklist": str(self.blocklist) if self.blocklist else None,
            "metrics": list(self.metrics),
            "n_boot": self.n_boot,
            "seed": self.seed,
            "dtype": self.dtype,
        }


def _training_setting(loaded: LoadedModel, key: str) -> Any:
    return ((loaded.manifest.get("config") or {}).get("data") or {}).get(key)


def choose_metrics(references: list[str]) -> list[Metric]:
    """Built-in metrics that apply to these references: text always, JSON and label when fit."""
    metrics = list(TEXT_METRICS)
    if any(is_json_reference(r) for r in references):
        metrics += JSON_METRICS
    if references_are_labels(references):
        metrics.append(LABEL_METRIC)
    return metrics


def _metric_meta(metric: Metric, group: str) -> dict[str, Any]:
    return {
        "name": metric.name,
        "group": group,
        "higher_is_better": metric.higher_is_better,
        "scale": metric.scale,
        "description": metric.description,
    }


def evaluate_model(
    model: str | Path | LoadedModel,
    data: str | Path,
    *,
    general: str | Path | None = None,
    settings: EvalSettings | None = None,
    metrics: list[Metric] | None = None,
    console: Console | None = None,
) -> dict[str, Any]:
    """Score one model on a hold-out file: likelihood, generation, behaviour and forgetting.

    Args:
        model: a model folder (full or PEFT adapter), a Hub id, or an already loaded model.
        data: the hold-out file (chat, prompt-completion or text examples).
        general: optional general text whose perplexity measures forgetting.
        settings: see `EvalSettings`; `max_new_tokens` None is resolved from the references.
        metrics: built-in metrics to compute (default: `choose_metrics` on the references).
        console: where progress goes (default: stderr).

    Returns:
        A run: {"name", "base", "settings", "metrics", "examples": [per-example records],
        "general": [per-window records], "timing"}. Each example record has line, prompt,
        reference, loss_sum, n_tokens, n_correct and, when generated, reply, reply_tokens,
        reply_words, empty, never_ending, blocklisted and scores {metric: value or None}.

    Raises:
        EvalError: bad input (see `read_holdout`, `load_for_eval`, `load_metric`).
    """
    settings = settings or EvalSettings()
    console = console or Console(stderr=True)
    custom = [load_metric(spec) for spec in settings.metrics]
    blocklist = Blocklist.load(settings.blocklist) if settings.blocklist else None
    loaded = (
        model
        if isinstance(model, LoadedModel)
        else load_for_eval(model, settings.dtype, settings.device)
    )
    tokenizer, lm = loaded.tokenizer, loaded.model
    if loaded.dtype_reason:
        console.print(f"{Path(loaded.name).name}: {loaded.dtype} ({loaded.dtype_reason})")
    train_on = settings.train_on or _training_setting(loaded, "train_on") or "assistant"
    positions = getattr(lm.config, "max_position_embeddings", None) or 2048
    max_length = settings.max_length or _training_setting(loaded, "max_length") or 2048
    max_length = min(max_length, positions)
    timing: dict[str, float] = {}

    start = time.perf_counter()
    examples = read_holdout(
        data, tokenizer, train_on, max_length, settings.limit, training_format(loaded.manifest)
    )
    scored = [e for e in examples if e.encoded is not None]
    losses = iter(
        example_losses(lm, [e.encoded for e in scored], tokenizer.pad_token_id, settings.batch_size)
    )
    # Preference pairs: the non-preferred reply's log-probability too.
    paired = [e.rejected for e in scored if e.rejected is not None]
    rejected = iter(example_losses(lm, paired, tokenizer.pad_token_id, settings.batch_size))
    records: list[dict[str, Any]] = []
    for e in examples:
        loss_sum, n, correct = next(losses) if e.encoded is not None else (None, 0, 0)
        records.append(
            {
                "line": e.line,
                "prompt": e.prompt,
                "reference": e.reference,
                "loss_sum": loss_sum,
                "n_tokens": n,
                "n_correct": correct,
            }
        )
        if e.encoded is not None and e.rejected is not None:
            chosen_logp, rejected_logp = -float(loss_sum or 0.0), -next(rejected)[0]
            records[-1].update(
                chosen_logp=chosen_logp,
                rejected_logp=rejected_logp,
                prefers_chosen=float(chosen_logp > rejected_logp),
            )
    timing["likelihood_s"] = time.perf_counter() - start

    to_generate = [i for i, e in enumerate(examples) if e.prompt_ids is not None]
    references = [examples[i].reference or "" for i in to_generate]
    metrics = metrics if metrics is not None else choose_metrics(references)
    generation = settings.generation
    if settings.generate and to_generate:
        max_new = settings.max_new_tokens
        if max_new is None:
            longest = max(
                len(tokenizer(r, add_special_tokens=False)["input_ids"]) for r in references
            )
            max_new = min(1024, 2 * longest + 16)
        generation = replace(generation, max_new_tokens=max_new)
        start = time.perf_counter()
        prompts = [examples[i].prompt_ids for i in to_generate]
        with _progress(console, f"generate {Path(loaded.name).name}", len(prompts)) as advance:
            replies = generate_replies(
                lm, tokenizer, prompts, generation, stop_token_ids(lm, tokenizer), advance
            )
        timing["generation_s"] = time.perf_counter() - start
        for i, reply in zip(to_generate, replies, strict=True):
            ref = examples[i].reference or ""
            rec = records[i]
            rec.update(
                {
                    "reply": reply.text,
                    "reply_tokens": reply.n_tokens,
                    "reply_words": len(reply.text.split()),
                    "empty": float(not reply.text.strip()),
                    "never_ending": float(not reply.finished),
                    "blocklisted": (
                        float(blocklist.find(reply.text) is not None) if blocklist else None
                    ),
                    "scores": {m.name: score(m, reply.text, ref) for m in [*metrics, *custom]},
                }
            )

    general_records: list[dict[str, Any]] = []
    if general is not None:
        start = time.perf_counter()
        windows = read_general(general, tokenizer, window=min(max_length, 1024))
        for loss_sum, n, correct in example_losses(
            lm, windows, tokenizer.pad_token_id, settings.batch_size
        ):
            general_records.append({"loss_sum": loss_sum, "n_tokens": n, "n_correct": correct})
        timing["general_s"] = time.perf_counter() - start

    return {
        "name": loaded.name,
        "base": loaded.base,
        "is_adapter": loaded.is_adapter,
        "dtype": loaded.dtype,
        "dtype_reason": loaded.dtype_reason,
        "train_on": train_on,
        "max_length": max_length,
        # DPO's beta, for the implicit rewards against a reference (`add_rewards`).
        "beta": ((loaded.manifest.get("config") or {}).get("dpo") or {}).get("beta"),
        "generation": generation.to_dict() if settings.generate else None,
        "metrics": [_metric_meta(m, "generation") for m in metrics]
        + [_metric_meta(m, "custom") for m in custom],
        "examples": records,
        "general": general_records,
        "timing": timing,
    }


class _progress:
    """A Rich progress bar whose `advance(n)` callback is handed to the generator."""

    def __init__(self, console: Console, label: str, total: int):
        self.bar = Progress(
            TextColumn(f"[bold]{label}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
            transient=True,
        )
        self.task = self.bar.add_task(label, total=total)

    def __enter__(self):
        self.bar.__enter__()
        return lambda n: self.bar.advance(self.task, n)

    def __exit__(self, *exc):
        return self.bar.__exit__(*exc)


def _free() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def add_rewards(run: dict[str, Any], reference: dict[str, Any]) -> float | None:
    """DPO's implicit rewards of `run` against `reference` (its starting model, normally the
    baseline) on preference pairs: per pair `reward_margin` = beta x ((chosen gain) - (rejected
    gain)), gains in log-probability over the reference, and `reward_win` (margin > 0, as
    training counts it). The reference scores 0 and no win against itself. Returns the beta
    used (the run's dpo.beta, else 0.1), or None without preference pairs."""
    from tuneforge.training.config import AUTO_BETA

    beta = run.get("beta")
    beta = float(beta) if isinstance(beta, (int, float)) else AUTO_BETA
    found = False
    for mine, ref in zip(run["examples"], reference["examples"], strict=True):
        if mine.get("rejected_logp") is None or ref.get("rejected_logp") is None:
            continue
        gain_c = mine["chosen_logp"] - ref["chosen_logp"]
        gain_r = mine["rejected_logp"] - ref["rejected_logp"]
        margin = beta * (gain_c - gain_r)
        mine.update(reward_margin=margin, reward_win=float(margin > 0))
        ref.update(reward_margin=0.0, reward_win=0.0)
        found = True
    return beta if found else None


def compare(
    run: dict[str, Any],
    baseline: dict[str, Any] | None = None,
    *,
    n_boot: int = 1000,
    seed: int = 0,
    top_k: int = 5,
) -> dict[str, Any]:
    """The metric table of `run` (side by side with `baseline`, when given) and example changes.

    Returns {"metrics": rows (see `compare.summarize`), "primary_metric": name,
    "examples": {"metric", "improved", "worsened"} (empty lists without a baseline)}.
    """
    stats = build_stats(run["metrics"], has_general=bool(run.get("general")))
    if baseline is not None and len(baseline["examples"]) != len(run["examples"]):
        raise EvalError("model and baseline were evaluated on different examples")
    rows = summarize(stats, run, baseline, n_boot=n_boot, seed=seed)
    primary = primary_metric(rows)
    notes = []
    if baseline is not None:
        tokens = [sum(r["n_tokens"] for r in x["examples"]) for x in (run, baseline)]
        if tokens[0] != tokens[1]:
            notes.append(
                f"model and baseline tokenize the hold-out differently ({tokens[0]} vs "
                f"{tokens[1]} scored tokens): loss, perplexity and token accuracy are per token of "
                "each model's own tokenizer, so their deltas are not like for like"
            )
    changes = (
        example_changes(run, baseline, primary, top_k)
        if baseline is not None
        else {"metric": primary, "improved": [], "worsened": []}
    )
    return {"metrics": rows, "primary_metric": primary, "examples": changes, "notes": notes}


def run_eval(
    model: str | Path,
    data: str | Path,
    *,
    baseline: str | Path | None = AUTO,
    general: str | Path | None = None,
    out_dir: str | Path | None = None,
    settings: EvalSettings | None = None,
    console: Console | None = None,
) -> dict[str, Any]:
    """Evaluate `model` (and `baseline`), write report.md / report.html / metrics.json.

    Args:
        model: the fine-tuned model folder (full or adapter) or a Hub id.
        data: the hold-out file.
        baseline: the model to compare with; "auto" (default): the model's base when its folder
            names one (adapter_config.json or tuneforge.json), else none; None: no baseline.
        general: general text for the forgetting check.
        out_dir: where the report goes; None: `<model>/eval` for a local folder, else `./eval`.
        settings: see `EvalSettings`.

    Returns:
        The result written to metrics.json (see `compare`, plus "model", "baseline", "settings",
        "runs", "training_curves").
    """
    from tuneforge.evaluation.report import write_report

    settings = settings or EvalSettings()
    console = console or Console(stderr=True)
    for spec in settings.metrics:  # fail on a bad plug-in before loading any model
        load_metric(spec)
    if baseline == AUTO:
        baseline = base_model_of(model) if Path(model).is_dir() else None
    out = (
        Path(out_dir)
        if out_dir
        else (Path(model) / "eval" if Path(model).is_dir() else Path("eval"))
    )

    started = time.perf_counter()
    run = evaluate_model(model, data, general=general, settings=settings, console=console)
    _free()  # the model is dropped before the baseline is loaded: one in memory at a time
    # The baseline gets the same decoding budget and the same metrics as the model.
    same = replace(settings, max_new_tokens=(run["generation"] or {}).get("max_new_tokens"))
    base_run = None
    if baseline is not None:
        metas = [m for m in run["metrics"] if m["group"] != "custom"]
        builtin = [
            m
            for m in [*TEXT_METRICS, *JSON_METRICS, LABEL_METRIC]
            if m.name in {x["name"] for x in metas}
        ]
        base_run = evaluate_model(
            baseline, data, general=general, settings=same, metrics=builtin, console=console
        )
    beta = add_rewards(run, base_run) if base_run is not None else None
    result = compare(run, base_run, n_boot=settings.n_boot, seed=settings.seed)
    if beta is not None:
        result["notes"].append(
            f"reward_accuracy and reward_margin are DPO's implicit rewards (beta {beta:g}) "
            "of the model against the baseline as its reference"
        )
    model_dir = Path(model) if Path(model).is_dir() else None
    result.update(
        {
            "tuneforge_eval": 1,
            "tuneforge_version": __version__,
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "data": str(data),
            "general": str(general) if general else None,
            "model": _info(run),
            "baseline": _info(base_run) if base_run else None,
            "settings": {**settings.to_dict(), "generation": run["generation"]},
            "training_curves": str(model_dir.resolve()) if model_dir else None,
            "seconds": time.perf_counter() - started,
            "runs": {"model": run, "baseline": base_run},
        }
    )
    write_report(result, out, console=console)
    return result


def _info(run: dict[str, Any]) -> dict[str, Any]:
    refs = [r for r in run["examples"] if r.get("reply") is not None]
    return {
        "name": run["name"],
        "base": run["base"],
        "is_adapter": run["is_adapter"],
        "dtype": run.get("dtype"),
        "train_on": run["train_on"],
        "examples": len(run["examples"]),
        "generated": len(refs),
        "general_windows": len(run["general"]),
        "timing": run["timing"],
    }
