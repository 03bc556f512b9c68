"""From per-example results to the metric table: aggregates, deltas and paired bootstrap CIs.

Every metric is a statistic of per-example arrays, so one paired bootstrap serves them all:
the same resampled example indices are applied to the model and the baseline, and the 95%
interval of the delta is read off the percentiles. Two statistics cover everything:

- "ratio": sum(num) / sum(den) over the examples. A mean of a per-example score is the ratio
  with den = 1 (den = 0 leaves an example out: a JSON metric on a non-JSON reference); the loss
  is summed loss / trained tokens, exactly as training aggregates it (token-weighted), and
  perplexity is exp of it.
- "p90": the 90th percentile of a per-example value (reply lengths).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Stat:
    """One row of the metric table: how to compute it from a run's per-example records."""

    name: str
    group: str  # likelihood, generation, behaviour, forgetting, custom
    kind: str  # "ratio" or "p90"
    extract: Callable[[dict[str, Any]], tuple[np.ndarray, np.ndarray]]
    higher_is_better: bool | None  # None: neither (reply length)
    exp: bool = False  # report exp(value): perplexity
    scale: float = 1.0
    description: str = ""
    source: str = "examples"  # "examples" or "general" (the forgetting text)


def _col(records: list[dict], key: str, when: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(values, weights) of `key` per record; weight 0 where the record lacks it (or `when`)."""
    num = np.zeros(len(records))
    den = np.zeros(len(records))
    for i, r in enumerate(records):
        value = r.get(key)
        if value is not None and (when is None or r.get(when) is not None):
            num[i], den[i] = float(value), 1.0
    return num, den


def _loss(records: list[dict], key: str = "loss_sum") -> tuple[np.ndarray, np.ndarray]:
    num = np.array([r.get(key) or 0.0 for r in records], dtype=float)
    den = np.array([r.get("n_tokens") or 0 for r in records], dtype=float)
    return num, den


def _score(name: str) -> Callable[[dict], tuple[np.ndarray, np.ndarray]]:
    def extract(run: dict) -> tuple[np.ndarray, np.ndarray]:
        records = run["examples"]
        num = np.zeros(len(records))
        den = np.zeros(len(records))
        for i, r in enumerate(records):
            value = (r.get("scores") or {}).get(name)
            if value is not None:
                num[i], den[i] = value, 1.0
        return num, den

    return extract


def build_stats(metrics: list[dict[str, Any]], has_general: bool) -> list[Stat]:
    """The table's rows, in display order.

    `metrics` describes the per-example reply metrics as a run records them: dicts with name,
    group ("generation" or "custom"), higher_is_better, scale and description.
    """

    def ex(fn: Callable[[list[dict]], tuple[np.ndarray, np.ndarray]]):
        return lambda run: fn(run["examples"])

    def flag(key: str) -> Callable[[dict], tuple[np.ndarray, np.ndarray]]:
        return ex(lambda rs: _col(rs, key, when="reply"))

    stats = [
        Stat(
            "loss", "likelihood", "ratio", ex(_loss), False, description="mean CE per trained token"
        ),
        Stat(
            "perplexity",
            "likelihood",
            "ratio",
            ex(_loss),
            False,
            exp=True,
            description="exp(loss)",
        ),
        Stat(
            "token_accuracy",
            "likelihood",
            "ratio",
            ex(lambda rs: _loss(rs, "n_correct")),
            True,
            description="argmax == label on trained tokens",
        ),
    ]
    for group in ("generation", "custom"):
        for m in metrics:
            if m["group"] == group:
                stats.append(
                    Stat(
                        m["name"],
                        group,
                        "ratio",
                        _score(m["name"]),
                        m["higher_is_better"],
                        scale=m["scale"],
                        description=m["description"],
                    )
                )
    stats += [
        Stat("reply_tokens_mean", "behaviour", "ratio", flag("reply_tokens"), None),
        Stat("reply_tokens_p90", "behaviour", "p90", flag("reply_tokens"), None),
        Stat("reply_words_mean", "behaviour", "ratio", flag("reply_words"), None),
        Stat("reply_words_p90", "behaviour", "p90", flag("reply_words"), None),
        Stat(
            "blocklist_rate",
            "behaviour",
            "ratio",
            flag("blocklisted"),
            False,
            description="replies with a blocklisted phrase",
        ),
        Stat("empty_rate", "behaviour", "ratio", flag("empty"), False, description="empty replies"),
        # Preference pairs only (rows without values are left out of the table).
        Stat(
            "preference_accuracy",
            "preference",
            "ratio",
            ex(lambda rs: _col(rs, "prefers_chosen")),
            True,
            description="pairs whose preferred reply has the higher log-probability",
        ),
        Stat(
            "reward_accuracy",
            "preference",
            "ratio",
            ex(lambda rs: _col(rs, "reward_win")),
            True,
            description="pairs whose preferred reply has the higher DPO reward vs the baseline",
        ),
        Stat(
            "reward_margin",
            "preference",
            "ratio",
            ex(lambda rs: _col(rs, "reward_margin")),
            True,
            description="mean DPO reward of the preferred minus the non-preferred reply",
        ),
        Stat(
            "never_ending_rate",
            "behaviour",
            "ratio",
            flag("never_ending"),
            False,
            description="replies that hit max_new_tokens without end-of-turn",
        ),
    ]
    if has_general:
        stats.append(
            Stat(
                "general_perplexity",
                "forgetting",
                "ratio",
                lambda run: _loss(run["general"]),
                False,
                exp=True,
                description="perplexity on the general text (forgetting)",
                source="general",
            )
        )
    return stats


def _records(run: dict, stat: Stat) -> list[dict]:
    return run["general"] if stat.source == "general" else run["examples"]


def _point(stat: Stat, num: np.ndarray, den: np.ndarray) -> float | None:
    if stat.kind == "p90":
        values = num[den > 0]
        return float(np.percentile(values, 90)) if values.size else None
    total = den.sum()
    if total == 0:
        return None
    value = num.sum() / total
    return float(math.exp(min(value, 50.0))) if stat.exp else float(value)


def _boot(stat: Stat, num: np.ndarray, den: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """The statistic on each bootstrap resample; idx: (B, n) example indices."""
    if stat.kind == "p90":
        values = np.where(den > 0, num, np.nan)[idx]  # (B, n)
        with np.errstate(all="ignore"):
            import warnings

            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                return np.nanpercentile(values, 90, axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        value = num[idx].sum(axis=1) / den[idx].sum(axis=1)  # (B,)
    return np.exp(np.minimum(value, 50.0)) if stat.exp else value


def summarize(
    stats: list[Stat],
    run: dict,
    baseline: dict | None = None,
    n_boot: int = 1000,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """The metric table: one row per statistic that applies to at least one example.

    Each row holds `model`, and with a baseline `baseline`, `delta` (model - baseline) and the
    paired bootstrap 95% interval of the delta `ci` ([low, high]); `better` is True / False when
    the interval excludes 0 in the good / bad direction, None otherwise.
    """
    rows = []
    rng = np.random.default_rng(seed)
    idx_cache: dict[int, np.ndarray] = {}
    for stat in stats:
        records = _records(run, stat)
        if not records:
            continue
        num, den = stat.extract(run)
        value = _point(stat, num, den)
        if value is None:
            continue
        row: dict[str, Any] = {
            "name": stat.name,
            "group": stat.group,
            "model": value,
            "n": int((den > 0).sum()),
            "higher_is_better": stat.higher_is_better,
            "scale": stat.scale,
            "description": stat.description,
        }
        if baseline is not None and _records(baseline, stat):
            b_num, b_den = stat.extract(baseline)
            b_value = _point(stat, b_num, b_den)
            row["baseline"] = b_value
            if b_value is not None and len(b_num) == len(num):
                row["delta"] = value - b_value
                n = len(num)
                if n not in idx_cache:
                    idx_cache[n] = rng.integers(0, n, size=(n_boot, n))
                deltas = _boot(stat, num, den, idx_cache[n]) - _boot(
                    stat, b_num, b_den, idx_cache[n]
                )
                deltas = deltas[np.isfinite(deltas)]
                if deltas.size:
                    low, high = np.percentile(deltas, [2.5, 97.5])
                    row["ci"] = [float(low), float(high)]
                    row["better"] = _verdict(stat.higher_is_better, float(low), float(high))
        rows.append(row)
    return rows


def _verdict(higher_is_better: bool | None, low: float, high: float) -> bool | None:
    if higher_is_better is None or low <= 0 <= high:
        return None
    improved = low > 0
    return improved if higher_is_better else not improved


def primary_metric(rows: list[dict[str, Any]]) -> str:
    """The per-example score used to rank examples: the most task-specific one that covers most
    examples (JSON field accuracy when most references are JSON, label accuracy for a
    classification set), else chrF, else the loss."""
    by_name = {r["name"]: r for r in rows}
    generated = by_name["chrf"]["n"] if "chrf" in by_name else 0
    json_row = by_name.get("json_field_accuracy")
    if json_row is not None and json_row["n"] * 2 >= generated:
        return "json_field_accuracy"
    for name in ("label_accuracy", "chrf"):
        if name in by_name:
            return name
    return "loss"


def example_changes(
    run: dict, baseline: dict, metric: str, k: int = 5
) -> dict[str, list[dict[str, Any]]]:
    """The `k` examples that got most better and most worse on `metric`, with both replies.

    Among equal changes (a binary metric), the larger change in per-token loss ranks first.
    Examples whose score did not change are not listed.
    """
    pairs = []
    for mine, base in zip(run["examples"], baseline["examples"], strict=True):
        if metric == "loss":
            a, b = _per_token(mine), _per_token(base)
            if a is None or b is None:
                continue
            change = b - a  # positive: loss went down
        else:
            a, b = (mine.get("scores") or {}).get(metric), (base.get("scores") or {}).get(metric)
            if a is None or b is None:
                continue
            change = a - b
        la, lb = _per_token(mine), _per_token(base)
        tie = (lb - la) if la is not None and lb is not None else 0.0
        pairs.append((change, tie, mine, base, a, b))
    ranked = sorted(pairs, key=lambda p: (p[0], p[1]), reverse=True)

    def view(p) -> dict[str, Any]:
        change, _, mine, base, a, b = p
        return {
            "line": mine["line"],
            "prompt": mine.get("prompt", ""),
            "reference": mine.get("reference"),
            "reply": mine.get("reply"),
            "baseline_reply": base.get("reply"),
            "score": a,
            "baseline_score": b,
            "change": change,
        }

    better = [view(p) for p in ranked[:k] if p[0] > 0]
    worse = [view(p) for p in reversed(ranked[-k:]) if p[0] < 0]
    return {"metric": metric, "improved": better, "worsened": worse}


def _per_token(record: dict) -> float | None:
    n = record.get("n_tokens") or 0
    return record["loss_sum"] / n if n else None
