"""Data parallelism: 2 CPU processes (gloo) follow the single-process curve."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
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
