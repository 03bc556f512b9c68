"""The run's compute dtype: "auto" from the hardware's probe, bf16 holding frozen weights in
bf16 and trained ones (and the optimizer state) in fp32, and a bf16 loss curve that follows
the fp32 one."""

from __future__ import annotations

import io
import json

import pytest
import torch
from rich.console import Console
from train_data import make_config, run_recipe, write_chat_jsonl

from tuneforge.modeling import dtype as dtype_probe
from tuneforge.training.loop import FinetuneRecipe
from tuneforge.training.metrics import read_metrics

# bf16 keeps 8 bits of mantissa: a step's loss may differ from fp32's by a few parts in a
# thousand; 2% relative over a short curve leaves room for the drift of the updates.
CURVE_RTOL = 2e-2


def _prepared(cfg) -> FinetuneRecipe:
    recipe = FinetuneRecipe(cfg, Console(file=io.StringIO()))
    recipe.prepare()
    return recipe


def _dtypes(recipe: FinetuneRecipe) -> tuple[set, set, set]:
    """(trainable params' dtypes, frozen params' dtypes, optimizer state tensors' dtypes)."""
    params = list(recipe.model.parameters())
    state = {
        t.dtype
        for s in recipe.optimizer.state.values()
        for k, t in s.items()
        if torch.is_tensor(t) and k != "step"
    }
    return (
        {p.dtype for p in params if p.requires_grad},
        {p.dtype for p in params if not p.requires_grad},
        state,
    )


@pytest.mark.parametrize("method", ["lora", "full"])
def test_bf16_follows_the_fp32_loss_curve_and_is_recorded(
    method, tiny_model_dir, chat_data, tmp_path
):
    train, _ = chat_data
    curves = {}
    for name in ("fp32", "bf16"):
        extra = {"method": method, "optim.max_steps": 4, "model.dtype": name}
        run_recipe(make_config(tiny_model_dir, train, tmp_path / name, **extra))
        curves[name] = [r["train_loss"] for r in read_metrics(tmp_path / name)]
        manifest = json.loads((tmp_path / name / "tuneforge.json").read_text())
        assert manifest["dtype"] == name
        assert manifest["dtype_reason"] == "asked for"
    assert len(curves["bf16"]) == 4
    assert curves["bf16"] == pytest.approx(curves["fp32"], rel=CURVE_RTOL)
    assert curves["bf16"] != curves["fp32"]  # the bf16 run really computed in bf16


def test_bf16_lora_holds_the_base_in_bf16_and_trains_in_fp32(tiny_model_dir, chat_data, tmp_path):
    train, _ = chat_data
    cfg = make_config(
        tiny_model_dir, train, tmp_path / "out", method="lora", **{"model.dtype": "bf16"}
    )
    recipe = _prepared(cfg)
    recipe.optimizer_step(recipe.plan.epoch_batches(0)[0])
    trained, frozen, state = _dtypes(recipe)
    assert trained == {torch.float32}
    assert frozen == {torch.bfloat16}
    assert state == {torch.float32}
    # Under autocast, LoRA layers skip peft's cast of their input to fp32 and back.
    lora_layers = [m for m in recipe.model.modules() if hasattr(m, "lora_A")]
    assert lora_layers and all(not m.cast_input_dtype_enabled for m in lora_layers)


def test_bf16_full_fine_tune_holds_frozen_blocks_in_bf16(tiny_deep_dir, chat_data, tmp_path):
    train, _ = chat_data
    extra = {"method": "full", "model.dtype": "bf16", "freeze.blocks": 2}
    recipe = _prepared(make_config(tiny_deep_dir, train, tmp_path / "out", **extra))
    recipe.optimizer_step(recipe.plan.epoch_batches(0)[0])
    trained, frozen, state = _dtypes(recipe)
    assert trained == {torch.float32}
    assert frozen == {torch.bfloat16}
    assert state == {torch.float32}
    named = dict(recipe.model.named_parameters())
    assert named["model.layers.0.mlp.up_proj.weight"].dtype == torch.bfloat16
    assert named["model.layers.3.mlp.up_proj.weight"].dtype == torch.float32


def test_gradual_unfreezing_keeps_later_blocks_fp32(tiny_deep_dir, chat_data, tmp_path):
    train, _ = chat_data
    extra = {"method": "full", "model.dtype": "bf16", "unfreeze.every": 1}
    recipe = _prepared(make_config(tiny_deep_dir, train, tmp_path / "out", **extra))
    named = dict(recipe.model.named_parameters())
    # Block 0 is closed now but opens later in the run: it is already fp32.
    assert not named["model.layers.0.mlp.up_proj.weight"].requires_grad
    assert named["model.layers.0.mlp.up_proj.weight"].dtype == torch.float32


@pytest.mark.parametrize(("speedup", "expected"), [(0.7, "fp32"), (4.0, "bf16")])
def test_auto_follows_the_probe(
    speedup, expected, monkeypatch, tmp_path, tiny_model_dir, chat_data
):
    monkeypatch.setenv("TUNEFORGE_CACHE", str(tmp_path / "cache"))  # no cached verdict
    monkeypatch.setattr(dtype_probe, "measure_bf16_speedup", lambda: speedup)
    train, _ = chat_data
    cfg = make_config(
        tiny_model_dir, train, tmp_path / "out", method="lora", **{"model.dtype": "auto"}
    )
    assert cfg.model.dtype == "auto"
    recipe = _prepared(cfg)
    assert recipe.dtype.name == expected
    assert f"{speedup:.1f}x" in recipe.dtype.reason
    frozen = {p.dtype for p in recipe.model.parameters() if not p.requires_grad}
    assert frozen == {torch.float32 if expected == "fp32" else torch.bfloat16}


def test_auto_is_the_default(tiny_model_dir, chat_data, tmp_path):
    from tuneforge.training.config import load_config

    train, _ = chat_data
    cfg = load_config(
        None,
        {"model.name_or_path": str(tiny_model_dir), "data.train": str(train), "output.dir": "x"},
    )
    assert cfg.model.dtype == "auto"


@pytest.mark.real_model
def test_real_model_lora_bf16_follows_fp32(smollm2, tmp_path):
    train = write_chat_jsonl(tmp_path / "train.jsonl", 8, seed=0)
    curves = {}
    for name in ("fp32", "bf16"):
        extra = {
            "method": "lora",
            "model.dtype": name,
            "optim.batch_size": 4,
            "optim.max_steps": 2,
            "optim.lr": 2e-4,
        }
        recipe = run_recipe(make_config(smollm2, train, tmp_path / name, **extra))
        curves[name] = [r["train_loss"] for r in read_metrics(tmp_path / name)]
        if name == "bf16":
            frozen = {p.dtype for p in recipe.model.parameters() if not p.requires_grad}
            assert frozen == {torch.bfloat16}
    # Step 1 runs the same weights: bf16 forward precision alone (measured 0.4%). Step 2
    # follows one AdamW step, whose first update is about lr x sign(gradient): elements whose
    # gradient is rounding noise move by the full LR either way (measured 6.4%).
    assert curves["bf16"][0] == pytest.approx(curves["fp32"][0], rel=1e-2)
    assert curves["bf16"][1] == pytest.approx(curves["fp32"][1], rel=0.1)
    assert curves["bf16"][1] < curves["bf16"][0] - 0.5  # and it learns as much, roughly


def test_eval_loads_in_the_resolved_dtype(monkeypatch, tmp_path, tiny_model_dir):
    from tuneforge.evaluation import load_for_eval

    monkeypatch.setenv("TUNEFORGE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(dtype_probe, "measure_bf16_speedup", lambda: 3.0)
    loaded = load_for_eval(tiny_model_dir)  # "auto"
    assert (loaded.dtype, loaded.dtype_reason) == (
        "bf16",
        "bf16 matmul 3.0x fp32 on this CPU (probe)",
    )
    assert {p.dtype for p in loaded.model.parameters()} == {torch.bfloat16}


def test_bf16_lora_classifier_trains_its_new_head_in_fp32(tiny_model_dir, tmp_path):
    from test_train_classify import _write

    train = _write(tmp_path / "train.jsonl", 16, 0)
    extra = {"method": "lora", "task": "classify", "model.dtype": "bf16"}
    recipe = _prepared(make_config(tiny_model_dir, train, tmp_path / "out", **extra))
    stats = recipe.optimizer_step(recipe.plan.epoch_batches(0)[0])
    assert stats["train_loss"] > 0
    trained, frozen, state = _dtypes(recipe)
    assert trained == state == {torch.float32} and frozen == {torch.bfloat16}
    assert any(
        "modules_to_save" in n for n, p in recipe.model.named_parameters() if p.requires_grad
    )
