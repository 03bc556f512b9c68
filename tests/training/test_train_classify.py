"""task: classify — a sequence-classification head on a GPT body."""

from __future__ import annotations

import json
import random

import pytest
import torch
from train_data import make_config, run_recipe
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from tuneforge.training.classify import macro_f1
from tuneforge.training.metrics import read_metrics

INTENTS = {
    "billing": ["balance", "dollars", "cents", "120"],
    "card": ["card", "lost", "yesterday", "new"],
    "geo": ["capital", "France", "Paris", "fox"],
}


def _write(path, n, seed):
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = list(INTENTS)[i % 3]
        words = rng.choices(INTENTS[label], k=4) + rng.choices(["the", "my", "is", "a"], k=2)
        rng.shuffle(words)
        rows.append(json.dumps({"text": " ".join(words), "label": label}))
    path.write_text("\n".join(rows) + "\n")
    return path


def test_macro_f1_of_a_confusion_matrix():
    perfect = torch.tensor([[3, 0], [0, 5]])
    assert macro_f1(perfect) == 1.0
    # class 0: P=1/2, R=1/1 -> 2/3; class 1: P=1, R=1/2 -> 2/3
    assert abs(macro_f1(torch.tensor([[1, 0], [1, 1]])) - 2 / 3) < 1e-9


@pytest.mark.slow  # several training runs; the default run covers the same path more briefly
def test_classifier_learns_a_separable_toy_set_and_loads_in_transformers(tiny_model_dir, tmp_path):
    train, valid = _write(tmp_path / "train.jsonl", 48, 0), _write(tmp_path / "valid.jsonl", 24, 1)
    cfg = make_config(
        tiny_model_dir,
        train,
        tmp_path / "out",
        method="full",
        task="classify",
        **{
            "data.valid": str(valid),
            "optim.epochs": 6,
            "optim.lr": 3e-3,
            "eval.eval_every": 6,
            "early_stop.metric": "valid_accuracy",  # the best checkpoint follows accuracy
        },
    )
    result = run_recipe(cfg).result
    m = result.metrics
    assert m["valid_accuracy"] >= 0.9 and m["valid_macro_f1"] >= 0.9
    assert sum(map(sum, m["valid_confusion"])) == 24
    records = [r for r in read_metrics(tmp_path / "out") if "valid_accuracy" in r]
    accuracy = {r["step"]: r["valid_accuracy"] for r in records}
    best = max(accuracy.values())
    assert m["best_valid_accuracy"] == best
    assert m["best_step"] == min(s for s, a in accuracy.items() if a == best)
    manifest = json.loads((tmp_path / "out" / "tuneforge.json").read_text())
    assert manifest["task"] == "classify" and manifest["labels"] == ["billing", "card", "geo"]
    # A standard folder: transformers loads it with no TuneForge code.
    model = AutoModelForSequenceClassification.from_pretrained(tmp_path / "out")
    tok = AutoTokenizer.from_pretrained(tmp_path / "out")
    logits = model(**tok(["my card is lost yesterday"], return_tensors="pt")).logits
    assert model.config.id2label[int(logits.argmax())] == "card"


def test_head_only_classifier_keeps_the_body(tiny_model_dir, tmp_path):
    train = _write(tmp_path / "train.jsonl", 24, 0)
    cfg = make_config(
        tiny_model_dir,
        train,
        tmp_path / "out",
        method="head",
        task="classify",
        **{"optim.max_steps": 2},
    )
    recipe = run_recipe(cfg)
    trainable = {n for n, p in recipe.model.named_parameters() if p.requires_grad}
    assert trainable == {"score.weight"}
