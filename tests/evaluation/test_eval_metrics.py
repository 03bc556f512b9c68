"""Each metric against values computed by hand on tiny fixed inputs."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tuneforge.evaluation.compare import build_stats, example_changes, summarize
from tuneforge.evaluation.metrics import (
    LABEL_METRIC,
    bleu,
    chrf,
    exact_match,
    json_field_accuracy,
    json_valid,
    label_accuracy,
    load_metric,
    references_are_labels,
    rouge_l,
    token_f1,
)


def test_exact_match_ignores_only_surrounding_whitespace():
    assert exact_match("  Paris.\n", "Paris.") == 1.0
    assert exact_match("paris.", "Paris.") == 0.0


def test_token_f1_by_hand():
    # [the, red, cat] vs [a, red, cat, sat]: 2 common, P = 2/3, R = 2/4, F1 = 4/7
    assert token_f1("The red cat!", "a red cat sat") == pytest.approx(4 / 7)
    assert token_f1("", "") == 1.0 and token_f1("x", "") == 0.0
    assert token_f1("dog", "cat") == 0.0


def test_rouge_l_by_hand():
    # LCS of [the cat sat on mat] and [the cat on the mat] is [the cat on mat]: P = R = 4/5
    assert rouge_l("the cat sat on mat", "the cat on the mat") == pytest.approx(0.8)


def test_chrf_by_hand():
    # char 1-grams: P = 1, R = 2/3; 2-grams: P = 1, R = 1/2; no longer n-grams in "ab".
    # mean P = 1, mean R = 7/12; F(beta=2) = 5 P R / (4 P + R) = 35/55
    assert chrf("ab", "abc") == pytest.approx(100 * 35 / 55)
    assert chrf("same text", "same text") == pytest.approx(100.0)


def test_bleu_by_hand():
    # 1-gram precision 2/2, 2-gram 1/1 (effective order 2), brevity penalty exp(1 - 3/2)
    assert bleu("the cat", "the cat sat") == pytest.approx(100 * math.exp(-0.5))
    assert bleu("the cat sat on the mat", "the cat sat on the mat") == pytest.approx(100.0)


def test_json_metrics_by_hand():
    ref = '{"color": "red", "size": 9, "brand": {"name": "x"}}'
    reply = '{"color": "red", "size": 10, "brand": {"name": "x"}, "extra": 1}'
    assert json_valid(reply, ref) == 1.0
    assert json_field_accuracy(reply, ref) == pytest.approx(2 / 3)  # color, brand.name
    assert json_valid("not json {", ref) == 0.0
    assert json_field_accuracy("not json {", ref) == 0.0
    # A reference that is not JSON: the JSON metrics do not apply.
    assert json_valid("{}", "plain words") is None
    assert json_field_accuracy("{}", "42") is None


def test_labels_are_detected_and_scored():
    assert label_accuracy(" Positive.", "positive") == 1.0
    assert label_accuracy("negative", "positive") == 0.0
    labels = ["positive", "negative", "positive", "neutral", "negative", "neutral"]
    assert references_are_labels(labels)
    assert not references_are_labels(labels[:5])  # 3 labels for 5 examples: too few repeats
    assert not references_are_labels(["Paris is the capital of France, of course."] * 5)
    assert not references_are_labels(["a", "b", "c", "d", "e", "f"])  # nothing repeats
    assert LABEL_METRIC.name == "label_accuracy"


def _run(losses, tokens, correct, replies=None):
    examples = [
        {"line": i + 1, "loss_sum": s, "n_tokens": n, "n_correct": c}
        for i, (s, n, c) in enumerate(zip(losses, tokens, correct, strict=True))
    ]
    for ex, reply in zip(examples, replies or [], strict=False):
        ex.update(reply)
    return {"examples": examples, "general": []}


def test_loss_is_token_weighted_and_bootstrap_is_paired_and_seeded():
    model = _run([2.0, 6.0], [1, 3], [1, 0])
    base = _run([4.0, 6.0], [1, 3], [0, 0])
    stats = build_stats([], has_general=False)
    rows = {r["name"]: r for r in summarize(stats, model, base, n_boot=200, seed=3)}
    assert rows["loss"]["model"] == pytest.approx(8 / 4)
    assert rows["loss"]["baseline"] == pytest.approx(10 / 4)
    assert rows["loss"]["delta"] == pytest.approx(-0.5)
    assert rows["perplexity"]["model"] == pytest.approx(math.exp(2.0))
    assert rows["token_accuracy"]["model"] == pytest.approx(1 / 4)
    # Resamples are {0,0} (delta -2), {1,1} (0) or mixed (-0.5): the interval lies in [-2, 0].
    low, high = rows["loss"]["ci"]
    assert -2.0 <= low <= high <= 0.0
    again = {r["name"]: r for r in summarize(stats, model, base, n_boot=200, seed=3)}
    assert again["loss"]["ci"] == rows["loss"]["ci"]


def test_behaviour_rates_and_p90():
    replies = [
        {"reply": "x" * k, "reply_tokens": k, "reply_words": 1, "empty": 0.0, "never_ending": 0.0}
        for k in range(1, 11)
    ]
    replies[0].update(empty=1.0, never_ending=1.0)
    run = _run([1.0] * 10, [1] * 10, [0] * 10, replies)
    rows = {r["name"]: r for r in summarize(build_stats([], False), run)}
    assert rows["reply_tokens_mean"]["model"] == pytest.approx(5.5)
    assert rows["reply_tokens_p90"]["model"] == pytest.approx(np.percentile(range(1, 11), 90))
    assert rows["empty_rate"]["model"] == pytest.approx(0.1)
    assert rows["never_ending_rate"]["model"] == pytest.approx(0.1)
    assert "blocklist_rate" not in rows  # no blocklist given: not applicable, not 0


def test_example_changes_rank_by_score_with_both_replies():
    def with_scores(values):
        return [{"reply": f"r{v}", "scores": {"chrf": v}} for v in values]

    model = _run([1.0] * 3, [1] * 3, [0] * 3, with_scores([90, 10, 50]))
    base = _run([1.0] * 3, [1] * 3, [0] * 3, with_scores([20, 40, 50]))
    changes = example_changes(model, base, "chrf", k=2)
    assert [c["line"] for c in changes["improved"]] == [1]
    assert [c["line"] for c in changes["worsened"]] == [2]
    assert changes["improved"][0]["baseline_reply"] == "r20"
    assert changes["improved"][0]["change"] == 70


def test_custom_metric_from_file_and_module(tmp_path, monkeypatch):
    (tmp_path / "mymetrics.py").write_text(
        "def shouts(prediction, reference):\n"
        "    '''Share of replies in capitals.'''\n"
        "    return prediction.isupper()\n"
    )
    metric = load_metric(f"{tmp_path / 'mymetrics.py'}:shouts")
    assert metric.name == "shouts" and metric.fn("HI", "x") is True
    assert metric.description == "Share of replies in capitals."
    monkeypatch.syspath_prepend(str(tmp_path))
    assert load_metric("mymetrics:shouts").name == "shouts"
    with pytest.raises(ValueError, match="MODULE:FUNCTION"):
        load_metric("no_colon")
    with pytest.raises(ValueError, match="no callable 'nope'"):
        load_metric("mymetrics:nope")
    with pytest.raises(ValueError, match="cannot import"):
        load_metric("surely_not_a_module_xyz:f")
