"""Transfer-learning controls on tiny models: freezing, head-only, gradual unfreezing (and its
resume), layer-wise LRs, early stopping with best export."""

from __future__ import annotations

import io
import json

import pytest
import torch
from rich.console import Console
from safetensors.torch import load_file
from train_data import make_config, run_recipe

from tuneforge.training import checkpoint as ckpt
from tuneforge.training.loop import FinetuneRecipe
from tuneforge.training.metrics import read_metrics


def _weights(folder):
    return load_file(folder / "model.safetensors")


def test_frozen_blocks_stay_bit_identical(tiny_deep_dir, chat_data, tmp_path):
    train, _ = chat_data
    cfg = make_config(
        tiny_deep_dir,
        train,
        tmp_path / "out",
        method="full",
        **{"freeze.blocks": 0.5, "optim.max_steps": 2},
    )
    run_recipe(cfg)
    before, after = _weights(tiny_deep_dir), _weights(tmp_path / "out")
    for name, w in before.items():
        frozen = name.startswith(("model.layers.0.", "model.layers.1.", "model.embed_tokens."))
        same = torch.equal(w, after[name])
        assert same == frozen, name


def test_head_only_trains_only_the_lm_head(tiny_deep_dir, chat_data, tmp_path):
    train, _ = chat_data
    cfg = make_config(
        tiny_deep_dir, train, tmp_path / "out", method="head", **{"optim.max_steps": 2}
    )
    recipe = run_recipe(cfg)
    assert recipe.n_trainable == recipe.model.lm_head.weight.numel()
    before, after = _weights(tiny_deep_dir), _weights(tmp_path / "out")
    changed = {n for n, w in before.items() if not torch.equal(w, after[n])}
    assert changed == {"lm_head.weight"}


def test_layer_decay_sets_each_group_lr(tiny_deep_dir, chat_data, tmp_path):
    train, _ = chat_data
    cfg = make_config(
        tiny_deep_dir,
        train,
        tmp_path / "out",
        method="full",
        **{"optim.layer_decay": 0.5, "optim.head_lr_scale": 3.0, "optim.max_steps": 1},
    )
    recipe = run_recipe(cfg)
    lrs = {g["name"].split("/")[0]: g["initial_lr"] for g in recipe.optimizer.param_groups}
    assert lrs["head"] == pytest.approx(3e-3) and lrs["top"] == pytest.approx(1e-3)
    for i in range(4):
        assert lrs[f"block.{i}"] == pytest.approx(1e-3 * 0.5 ** (3 - i))
    assert lrs["embeddings"] == pytest.approx(1e-3 * 0.5**4)


UNFREEZE = {
    "method": "full",
    "unfreeze.every": 2,
    "optim.epochs": 3,
    "optim.batch_size": 8,  # 32 examples: 4 steps per epoch, 12 in all
    "optim.lr": 1e-3,
    "optim.layer_decay": 0.8,
    "checkpoint.save_every": 3,
}


def test_gradual_unfreezing_opens_blocks_top_down_on_schedule(tiny_deep_dir, chat_data, tmp_path):
    train, _ = chat_data
    recipe = run_recipe(make_config(tiny_deep_dir, train, tmp_path / "out", **UNFREEZE))
    records = read_metrics(tmp_path / "out")
    events = read_metrics(tmp_path / "out", "events.jsonl")
    # Stage k opens at step 2k: blocks 3, 2, 1, 0, then the embeddings.
    assert [e["step"] for e in events] == [2, 4, 6, 8, 10]
    assert [e["unfrozen_blocks"] for e in events] == [1, 2, 3, 4, 5]
    counts = [r["trainable_params"] for r in records]
    assert counts[0] == counts[1] < counts[2] == counts[3] < counts[4] and counts[-1] == sum(
        p.numel() for p in recipe.model.parameters()
    )
    # Each stage joined the optimizer as new groups: the head/top first, then block by block.
    names = [g["name"].split("/")[0] for g in recipe.optimizer.param_groups]
    assert names[:2] == ["top", "head"] or names[:2] == ["head", "top"]
    order = [n for n in names if n.startswith("block.") or n == "embeddings"]
    assert order == ["block.3", "block.2", "block.1", "block.0", "embeddings"]


@pytest.mark.slow  # several training runs; the default run covers the same path more briefly
def test_gradual_unfreezing_survives_resume(tiny_deep_dir, chat_data, tmp_path):
    train, _ = chat_data
    ref = run_recipe(make_config(tiny_deep_dir, train, tmp_path / "ref", **UNFREEZE))

    # Interrupt after step 5 (a checkpoint is written), in the middle of stage 2.
    cfg = make_config(tiny_deep_dir, train, tmp_path / "run", **UNFREEZE)
    first = FinetuneRecipe(cfg, Console(file=io.StringIO()))
    try:
        first.setup()
        step = first.optimizer_step

        def stop_after_five(micro):
            out = step(micro)
            first._stop_requested = first.state.step + 1 >= 5
            return out

        first.optimizer_step = stop_after_five
        assert first.train().status == "stopped"
    finally:
        first.cleanup()
    assert ckpt.read_state(ckpt.latest_checkpoint(tmp_path / "run" / "checkpoints")).step == 5
    resumed_cfg = make_config(
        tiny_deep_dir, train, tmp_path / "run", **UNFREEZE, **{"checkpoint.resume": "auto"}
    )
    resumed = run_recipe(resumed_cfg)
    assert resumed.state.unfrozen_blocks == ref.state.unfrozen_blocks == 5
    got, want = read_metrics(tmp_path / "run"), read_metrics(tmp_path / "ref")
    assert [r["trainable_params"] for r in got] == [r["trainable_params"] for r in want]
    for g, w in zip(got, want, strict=True):
        assert g["train_loss"] == pytest.approx(w["train_loss"], abs=1e-5), g["step"]
        assert g["lr"] == w["lr"]
    assert [e["step"] for e in read_metrics(tmp_path / "run", "events.jsonl")] == [2, 4, 6, 8, 10]
    a, b = _weights(tmp_path / "run"), _weights(tmp_path / "ref")
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-4, atol=1e-5)


def test_early_stopping_stops_on_plateau_and_exports_best(tiny_model_dir, chat_data, tmp_path):
    train, valid = chat_data
    cfg = make_config(
        tiny_model_dir,
        train,
        tmp_path / "out",
        method="full",
        **{
            "data.valid": str(valid),
            "optim.epochs": 10,
            "optim.batch_size": 4,
            "optim.lr": 0.5,  # far too high: the validation loss gets worse after a step or two
            "optim.max_grad_norm": None,
            "eval.eval_every": 1,
            "early_stop.patience": 2,
            "early_stop.min_delta": 0.0,
        },
    )
    recipe = run_recipe(cfg)
    result = recipe.result
    records = read_metrics(tmp_path / "out")
    losses = {r["step"]: r["valid_loss"] for r in records}
    best_step = min(losses, key=losses.get)
    assert result.stop_reason == "early_stopping"
    assert result.step == best_step + 2 < 80  # two evaluations without improvement
    manifest = json.loads((tmp_path / "out" / "tuneforge.json").read_text())
    assert manifest["metrics"]["stop_reason"] == "early_stopping"
    assert manifest["metrics"]["exported_step"] == best_step
    best = ckpt.best_checkpoint(tmp_path / "out" / "checkpoints")
    exported, kept = _weights(tmp_path / "out"), _weights(best)
    assert all(torch.equal(exported[n], kept[n]) for n in kept)
    kinds = [e["kind"] for e in read_metrics(tmp_path / "out", "events.jsonl")]
    assert kinds == ["early_stopping"]
