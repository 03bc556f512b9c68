"""The learning-rate range test: suggestion in a sane range, weights untouched, files."""

from __future__ import annotations

import csv
import io

import pytest
import torch
from rich.console import Console
from train_data import make_config

from tuneforge.training.loop import FinetuneRecipe
from tuneforge.training.lr_find import lr_find, smooth, suggest


def test_suggestion_rules_on_a_synthetic_curve():
    # Loss falls fastest around 1e-3, bottoms out at 1e-1, then explodes.
    lrs = [10 ** (-6 + 6 * i / 99) for i in range(100)]
    loss = [2.0 - 1.5 / (1 + (1e-3 / lr) ** 2) + (lr > 0.1) * 50 * (lr - 0.1) for lr in lrs]
    steepest, min_over_ten = suggest(lrs, loss)
    assert 3e-4 < steepest < 3e-3
    assert 5e-3 < min_over_ten < 2e-2
    assert smooth([1.0, 1.0, 1.0]) == pytest.approx([1.0, 1.0, 1.0])  # bias-corrected


def test_lr_find_leaves_weights_untouched_and_suggests_a_sane_lr(
    tiny_model_dir, chat_data, tmp_path
):
    train, _ = chat_data
    cfg = make_config(tiny_model_dir, train, tmp_path / "out", method="full")
    recipe = FinetuneRecipe(cfg, Console(file=io.StringIO()))
    recipe.prepare()
    before = {k: v.clone() for k, v in recipe.model.state_dict().items()}
    rng = torch.get_rng_state()
    result = lr_find(cfg, start_lr=1e-4, end_lr=10.0, num_steps=20, recipe=recipe)
    after = recipe.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert torch.equal(torch.get_rng_state(), rng)
    assert not recipe.optimizer.state  # the run's optimizer never stepped
    assert 1e-4 < result.suggested < 1.0 and 1e-4 < result.steepest < 1.0
    assert result.lrs[0] == 1e-4 and all(
        b > a for a, b in zip(result.lrs, result.lrs[1:], strict=False)
    )
    with open(result.files["csv"]) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(result.lrs) and set(rows[0]) == {"step", "lr", "loss", "smoothed_loss"}
    assert result.files["png"].stat().st_size > 1000
    assert result.files["csv"].parent == tmp_path / "out" / "lr_find"
