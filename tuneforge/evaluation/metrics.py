"""Scoring one generated reply against its reference: the built-in metrics and custom ones.

Every metric is a function `(prediction, reference) -> float | None`; None means "does not
apply to this example" (JSON metrics on a plain-text reference), and such examples are left out
of that metric's mean. Built-ins and `--metric module:function` plug-ins are the same kind of
thing and go through the same code from here on.

Scales: exact match, token F1, ROUGE-L, JSON and label metrics are fractions in [0, 1];
chrF and BLEU keep sacrebleu's 0-100 scale, as papers report them.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import re
import string
import sys
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

MetricFn = Callable[[str, str], "float | bool | None"]

# --- text normalisation ------------------------------------------------------------------------

_PUNCT = re.compile(f"[{re.escape(string.punctuation)}]")


def normalize_answer(text: str) -> str:
    """Lower case, punctuation removed, whitespace collapsed (SQuAD-style, articles kept)."""
    return " ".join(_PUNCT.sub(" ", text.lower()).split())


# --- reference-based metrics ------------------------------------------------------------------


def exact_match(prediction: str, reference: str) -> float:
    """1.0 when the reply equals the reference, ignoring surrounding whitespace, else 0.0."""
    return float(prediction.strip() == reference.strip())


def token_f1(prediction: str, reference: str) -> float:
    """F1 of the bags of words of reply and reference, after `normalize_answer`.

    Example: "the red cat" vs "a red cat sat": 2 common words, P=2/3, R=2/4, F1=4/7.
    Two empty texts score 1.0; one empty text scores 0.0.
    """
    pred, ref = normalize_answer(prediction).split(), normalize_answer(reference).split()
    if not pred or not ref:
        return float(pred == ref)
    common = sum((Counter(pred) & Counter(ref)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


@cache
def _rouge_scorer() -> Any:
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F-measure (longest common subsequence of words), by `rouge-score`."""
    return _rouge_scorer().score(reference, prediction)["rougeL"].fmeasure


@cache
def _sacrebleu(kind: str) -> Any:
    from sacrebleu.metrics import BLEU, CHRF

    # effective_order: a short reply with no 4-gram match is not scored 0 outright.
    return CHRF() if kind == "chrf" else BLEU(effective_order=True)


def chrf(prediction: str, reference: str) -> float:
    """Sentence chrF (character n-gram F-score, 0-100), by sacrebleu."""
    return _sacrebleu("chrf").sentence_score(prediction, [reference]).score


def bleu(prediction: str, reference: str) -> float:
    """Sentence BLEU (0-100, effective n-gram order), by sacrebleu."""
    return _sacrebleu("bleu").sentence_score(prediction, [reference]).score


# --- structured references: JSON and labels ---------------------------------------------------


def parse_json(text: str) -> Any:
    """The JSON value of `text`, or raise ValueError. Only objects and arrays count."""
    value = json.loads(text)
    if not isinstance(value, (dict, list)):
        raise ValueError("not a JSON object or array")
    return value


def is_json_reference(reference: str) -> bool:
    """True when the reference is a JSON object or array (the structured-output case)."""
    try:
        parse_json(reference)
    except ValueError:
        return False
    return True


def json_valid(prediction: str, reference: str) -> float | None:
    """1.0 when the reply parses as a JSON object/array; None when the reference is not JSON."""
    if not is_json_reference(reference):
        return None
    try:
        parse_json(prediction)
    except ValueError:
        return 0.0
    return 1.0


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}, "c": [2]} -> {"a.b": 1, "c": [2]}: nested objects become dotted paths."""
    if isinstance(value, dict) and value:
        out: dict[str, Any] = {}
        for key, item in value.items():
            out.update(_flatten(item, f"{prefix}{key}."))
        return out
    return {prefix[:-1] if prefix else "": value}


def json_field_accuracy(prediction: str, reference: str) -> float | None:
    """Fraction of the reference's fields (nested objects as dotted paths) the reply got equal.

    Example: reference {"color": "red", "size": 9}, reply {"color": "red", "size": 10} -> 0.5.
    An invalid reply scores 0.0; extra fields in the reply are not penalised (see json_valid
    and exact match for that). None when the reference is not JSON.
    """
    if not is_json_reference(reference):
        return None
    expected = _flatten(parse_json(reference))
    try:
        got = _flatten(parse_json(prediction))
    except ValueError:
        return 0.0
    return sum(got.get(k, _MISSING) == v for k, v in expected.items()) / len(expected)


_MISSING = object()


def normalize_label(text: str) -> str:
    """Label comparison ignores case, surrounding whitespace and trailing punctuation."""
    return text.strip().rstrip(string.punctuation + " ").strip().casefold()


def label_accuracy(prediction: str, reference: str) -> float:
    """1.0 when the reply is the reference label (see `normalize_label`), else 0.0."""
    return float(normalize_label(prediction) == normalize_label(reference))


def references_are_labels(references: list[str], max_words: int = 4, max_labels: int = 50) -> bool:
    """Whether the hold-out set is a classification task: short, repeating, non-JSON answers.

    True when every reference has at most `max_words` words and is not JSON, there are at most
    `max_labels` distinct ones, and labels repeat (fewer distinct labels than half the examples).
    """
    if len(references) < 4:
        return False
    distinct = {normalize_label(r) for r in references}
    return (
        all(0 < len(r.split()) <= max_words and not is_json_reference(r) for r in references)
        and len(distinct) <= max_labels
        and len(distinct) <= len(references) / 2
    )


# --- the registry ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Metric:
    """A per-example metric and how the report shows it."""

    name: str
    fn: MetricFn
    higher_is_better: bool = True
    scale: float = 1.0  # 1.0 for fractions, 100.0 for sacrebleu's scores
    description: str = ""


TEXT_METRICS: tuple[Metric, ...] = (
    Metric("exact_match", exact_match, description="reply == reference (whitespace-trimmed)"),
    Metric("token_f1", token_f1, description="bag-of-words F1, SQuAD-normalised"),
    Metric("rouge_l", rouge_l, description="ROUGE-L F-measure (rouge-score)"),
    Metric("chrf", chrf, scale=100.0, description="sentence chrF, 0-100 (sacrebleu)"),
    Metric("bleu", bleu, scale=100.0, description="sentence BLEU, 0-100 (sacrebleu)"),
)
JSON_METRICS: tuple[Metric, ...] = (
    Metric("json_valid", json_valid, description="reply parses as JSON (reference is JSON)"),
    Metric(
        "json_field_accuracy",
        json_field_accuracy,
        description="share of the reference's JSON fields reproduced exactly",
    ),
)
LABEL_METRIC = Metric(
    "label_accuracy", label_accuracy, description="classification accuracy (reference is a label)"
)


def load_metric(spec: str) -> Metric:
    """A custom metric from `module:function` or `path/to/file.py:function`.

    The function takes `(prediction, reference)` strings and returns a float (or bool), or None
    when it does not apply to the example. Higher is better unless the function has an attribute
    `higher_is_better = False`. The metric is named after the function.

    Raises:
        ValueError: with a message naming the spec when it cannot be imported or is not callable.
    """
    module_name, sep, attr = spec.rpartition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"--metric {spec!r}: expected MODULE:FUNCTION or FILE.py:FUNCTION")
    try:
        if module_name.endswith(".py"):
            path = Path(module_name)
            if not path.is_file():
                raise ValueError(f"--metric {spec!r}: no such file {path}")
            module_spec = importlib.util.spec_from_file_location(f"_tf_metric_{path.stem}", path)
            assert module_spec is not None and module_spec.loader is not None
            module = importlib.util.module_from_spec(module_spec)
            module_spec.loader.exec_module(module)
        else:
            if "" not in sys.path and str(Path.cwd()) not in sys.path:
                # The `tuneforge` console script does not put the working directory on the path;
                # a user's metric module next to their data should still be found.
                sys.path.insert(0, str(Path.cwd()))
            module = importlib.import_module(module_name)
    except ValueError:
        raise
    except Exception as e:  # an import error of any kind in user code
        raise ValueError(f"--metric {spec!r}: cannot import {module_name}: {e}") from e
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise ValueError(f"--metric {spec!r}: {module_name} has no callable {attr!r}")
    return Metric(
        name=attr,
        fn=fn,
        higher_is_better=bool(getattr(fn, "higher_is_better", True)),
        scale=float(getattr(fn, "scale", 1.0)),
        description=(fn.__doc__ or spec).strip().splitlines()[0],
    )


def score(metric: Metric, prediction: str, reference: str) -> float | None:
    """`metric` on one example, as a float or None (not applicable)."""
    value = metric.fn(prediction, reference)
    if value is None:
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ValueError(
            f"metric {metric.name!r} returned {value!r}; expected a number, a bool or None"
        ) from None
