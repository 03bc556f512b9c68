"""End-to-end runs of the recipe on tiny models: what trains, what is written, what reloads."""

from __future__ import annotations

import csv
import hashlib
import itertools
import json

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file
from train_data import make_config, run_recipe, write_chat_jsonl
from transformers import AutoModelForCausalLM

from tuneforge.training.metrics import read_metrics
from tuneforge.training.optim import lr_lambda


@torch.no_grad()
def logits_of(model, ids: torch.Tensor) -> torch.Tensor:
    return model.eval()(input_ids=ids).logits


def test_lora_run_trains_adapter_only_and_reloads(tiny_model_dir, chat_data, tmp_path):
    train, valid = chat_data
    out = tmp_path / "out"
    cfg = make_config(
        tiny_model_dir,
        train,
        out,
        **{"data.valid": str(valid), "method": "lora", "eval.eval_every": 2, "output.merge": True},
    )
    recipe = run_recipe(cfg)
    assert recipe.result.status == "completed" and recipe.result.step == 4

    # Base weights bit-identical to the saved base model; every LoRA B moved off zero.
    base = load_file(tiny_model_dir / "model.safetensors")
    adapter = load_file(out / "adapter_model.safetensors")
    assert adapter and all(k.startswith("base_model.model.") for k in adapter)
    assert all(t.abs().sum() > 0 for k, t in adapter.items() if "lora_B" in k)
    merged_free = {
        k.removeprefix("base_model.model.").replace(".base_layer", ""): p
        for k, p in recipe.model.named_parameters()
        if "lora_" not in k
    }
    assert set(merged_free) == set(base)
    # merge_and_unload ran at the end, so compare base weights via a fresh peft reload below.

    ids = torch.randint(4, 300, (2, 16), generator=torch.Generator().manual_seed(0))
    trained = logits_of(recipe.model, ids)
    reloaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), out)
    for name, p in reloaded.named_parameters():
        if "lora_" not in name:
            key = name.removeprefix("base_model.model.").replace(".base_layer", "")
            assert torch.equal(p, base[key]), f"{name} changed"
    torch.testing.assert_close(logits_of(reloaded, ids), trained, rtol=1e-5, atol=1e-5)
    merged = AutoModelForCausalLM.from_pretrained(out / "merged")
    torch.testing.assert_close(logits_of(merged, ids), trained, rtol=1e-5, atol=1e-5)

    manifest = json.loads((out / "tuneforge.json").read_text())
    assert manifest["base_model"] == str(tiny_model_dir)
    assert manifest["parent_model"] is None
    assert manifest["data"]["train"]["sha256"] == hashlib.sha256(train.read_bytes()).hexdigest()
    assert manifest["config"]["optim"]["lr"] == 1e-3
    assert manifest["metrics"]["full_valid_loss"] > 0
    # The process's peak memory, and each phase's resident memory and peak so far, in order.
    phases = manifest["memory"]["phases"]
    assert list(phases) == ["loaded", "ready", "trained", "evaluated", "saved"]
    peaks = [p["peak_rss_gb"] for p in phases.values()]
    assert peaks == sorted(peaks) and peaks[-1] == manifest["memory"]["peak_rss_gb"] > 0
    assert all(p["peak_rss_gb"] >= p["rss_gb"] > 0 for p in phases.values())
    records = read_metrics(out)
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    assert "valid_loss" in records[1] and "valid_loss" not in records[0]
    rows = list(csv.reader((out / "results.csv").open()))
    assert rows[0] == [
        "step",
        "train_loss",
        "train_accuracy",
        "valid_loss",
        "valid_mean_token_accuracy",
    ]
    assert len(rows) == 5 and rows[2][3] != "" and rows[1][3] == ""
    assert (out / "config.yaml").is_file() and (out / "tokenizer.json").is_file()


def test_full_run_with_packing_changes_every_weight_and_reloads(tiny_gpt2_dir, chat_data, tmp_path):
    train, _ = chat_data
    out = tmp_path / "out"
    cfg = make_config(
        tiny_gpt2_dir,
        train,
        out,
        **{"method": "full", "data.packing": True, "data.max_length": 128, "optim.batch_size": 2},
    )
    recipe = run_recipe(cfg)
    base = load_file(tiny_gpt2_dir / "model.safetensors")
    for name, p in recipe.model.named_parameters():
        assert not torch.equal(p.detach(), base[name]), f"{name} did not train"
    ids = torch.randint(4, 300, (2, 16), generator=torch.Generator().manual_seed(0))
    reloaded = AutoModelForCausalLM.from_pretrained(out)
    torch.testing.assert_close(
        logits_of(reloaded, ids), logits_of(recipe.model, ids), rtol=1e-5, atol=1e-5
    )
    records = read_metrics(out)
    assert records[-1]["train_loss"] < records[0]["train_loss"]


def test_gradient_accumulation_equals_one_big_batch(tiny_model_dir, tmp_path):
    train = write_chat_jsonl(tmp_path / "train.jsonl", 16)
    runs = []
    for accum in (1, 4):
        out = tmp_path / f"accum{accum}"
        cfg = make_config(
            tiny_model_dir,
            train,
            out,
            **{
                "method": "full",
                "optim.batch_size": 16,
                "optim.grad_accum": accum,
                "optim.epochs": 3,
                "optim.lr": 1e-4,
            },
        )
        runs.append((run_recipe(cfg), read_metrics(out)))
    (big, big_m), (acc, acc_m) = runs
    assert len(big_m) == len(acc_m) == 3
    for a, b in zip(big_m, acc_m, strict=True):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5)
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-4)
        assert a["tokens"] == b["tokens"]
    for (name, p), q in zip(big.model.named_parameters(), acc.model.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-6, msg=name)


def test_over_long_examples_are_dropped_and_counted(tiny_model_dir, chat_data, tmp_path):
    train, _ = chat_data
    cfg = make_config(tiny_model_dir, train, tmp_path / "out", **{"data.max_length": 60})
    recipe = run_recipe(cfg)
    ts = recipe.train_set
    assert ts.n_too_long_dropped > 0
    assert ts.n_too_long_dropped + len(ts.examples) == ts.n_read == 32
    assert max(len(e) for e in ts.examples) <= 60


def test_schedule_shapes():
    total, warmup = 10, 2
    linear = [lr_lambda(s, warmup, total, "linear") for s in range(total)]
    cosine = [lr_lambda(s, warmup, total, "cosine") for s in range(total)]
    assert linear[0] < linear[1] < linear[2] == 1.0
    assert all(a > b for a, b in itertools.pairwise(linear[2:]))
    assert cosine[2] == 1.0 and cosine[-1] < 0.1
    assert all(lr_lambda(s, 0, total, "constant") == 1.0 for s in range(total))


def test_gradient_checkpointing_and_bf16_follow_the_fp32_curve(tiny_model_dir, chat_data, tmp_path):
    train, _ = chat_data
    common = {"method": "full", "optim.max_steps": 3, "data.packing": True, "data.max_length": 128}
    curves = {}
    for name, extra in {
        "plain": {},
        "ckpt": {"model.gradient_checkpointing": True},
        "bf16": {"model.dtype": "bf16"},
    }.items():
        run_recipe(make_config(tiny_model_dir, train, tmp_path / name, **common, **extra))
        curves[name] = [r["train_loss"] for r in read_metrics(tmp_path / name)]
    assert curves["ckpt"] == pytest.approx(curves["plain"], rel=1e-6)
    assert curves["bf16"] == pytest.approx(curves["plain"], rel=2e-2)
    assert curves["bf16"] != curves["plain"]  # autocast really ran in bf16


def test_bf16_lora_stores_frozen_base_in_bf16_and_trains_fp32_adapters(
    tiny_model_dir, chat_data, tmp_path
):
    train, _ = chat_data
    cfg = make_config(
        tiny_model_dir,
        train,
        tmp_path / "out",
        **{"method": "lora", "model.dtype": "bf16", "optim.max_steps": 2},
    )
    recipe = run_recipe(cfg)
    params = dict(recipe.model.named_parameters())
    assert {p.dtype for n, p in params.items() if p.requires_grad} == {torch.float32}
    assert {p.dtype for n, p in params.items() if not p.requires_grad} == {torch.bfloat16}
    adapter = load_file(tmp_path / "out" / "adapter_model.safetensors")
    assert all(t.dtype == torch.float32 for t in adapter.values())
    assert all(t.abs().sum() > 0 for k, t in adapter.items() if "lora_B" in k)
