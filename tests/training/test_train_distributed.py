"""Data parallelism: 2 CPU processes (gloo) follow the single-process curve (supervised and
preference tuning)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from pref_data import write_preference_jsonl
from safetensors.torch import load_file
from train_data import make_config, run_recipe

from tuneforge.training.metrics import read_metrics


def test_two_processes_match_one_with_the_same_global_batch(tiny_model_dir, chat_data, tmp_path):
    train, _ = chat_data
    common = {"method": "full", "optim.batch_size": 4, "optim.epochs": 1, "optim.lr": 1e-3}
    single = tmp_path / "single"
    run_recipe(make_config(tiny_model_dir, train, single, **common))

    ddp = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    cmd += ["-m", "tuneforge", "train", "--model", str(tiny_model_dir), "--train", str(train)]
    cmd += ["--output", str(ddp), "--method", "full", "--batch-size", "4", "--epochs", "1"]
    cmd += ["--lr", "1e-3", "--set", "optim.warmup=0", "--dtype", "fp32"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]

    want, got = read_metrics(single), read_metrics(ddp)
    assert len(got) == len(want) == 8
    for g, w in zip(got, want, strict=True):
        assert g["tokens"] == w["tokens"]
        assert g["train_loss"] == pytest.approx(w["train_loss"], rel=1e-4)
        assert g["grad_norm"] == pytest.approx(w["grad_norm"], rel=1e-3)
    # Only rank 0 wrote: one line per step, one final model.
    assert (ddp / "model.safetensors").is_file()


def test_two_processes_train_dpo_as_one_with_the_same_global_batch(tiny_model_dir, tmp_path):
    train = write_preference_jsonl(tmp_path / "train.jsonl", 8)
    valid = write_preference_jsonl(tmp_path / "valid.jsonl", 6, seed=1)
    common = {
        "task": "dpo",
        "data.valid": str(valid),
        "eval.eval_every": 2,
        "optim.batch_size": 4,
        "optim.epochs": 2,
        "optim.lr": 3e-3,
        "lora.dropout": 0.0,  # each process draws its own dropout masks
    }
    single = tmp_path / "single"
    run_recipe(make_config(tiny_model_dir, train, single, **common))

    ddp = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    cmd += ["-m", "tuneforge", "train", "--model", str(tiny_model_dir), "--train", str(train)]
    cmd += ["--output", str(ddp), "--dtype", "fp32", "--set", "optim.warmup=0"]
    for key, value in common.items():
        cmd += ["--set", f"{key}={value}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]

    want, got = read_metrics(single), read_metrics(ddp)
    assert [r["step"] for r in got] == [r["step"] for r in want] == [1, 2, 3, 4]
    for g, w in zip(got, want, strict=True):
        assert g["tokens"] == w["tokens"] == 4 * g["step"]  # pairs
        for key in ("train_loss", "train_reward_accuracy", "train_reward_margin", "grad_norm"):
            assert g[key] == pytest.approx(w[key], rel=1e-4, abs=1e-6), (g["step"], key)
        for key in ("valid_loss", "valid_reward_accuracy", "valid_chosen_logps"):
            assert g.get(key) == pytest.approx(w.get(key), rel=1e-4), (g["step"], key)
    a = load_file(single / "adapter_model.safetensors")
    b = load_file(ddp / "adapter_model.safetensors")
    for name in a:
        # Per tensor, not per element: Adam divides by sqrt(v), so a weight whose gradient is
        # near zero moves by a step set by reduction-order noise (the processes sum in another
        # order than one process does).
        assert (b[name] - a[name]).norm() <= 1e-3 * a[name].norm(), name
