"""Checkpoints: a run killed (or stopped) mid-way and resumed continues the same curve."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file
from train_data import make_config, run_recipe

from tuneforge.training import checkpoint as ckpt
from tuneforge.training.metrics import read_metrics

OVERRIDES = {
    "method": "lora",
    "lora.dropout": 0.1,  # dropout draws random numbers: resume must restore the RNG
    "optim.epochs": 2,
    "optim.batch_size": 2,
    "optim.lr": 1e-3,
    "checkpoint.save_every": 3,
    "seed": 7,
}


def _cli_args(cfg_dir: Path, train: Path, out: Path) -> list[str]:
    args = [sys.executable, "-m", "tuneforge", "train", "--model", str(cfg_dir)]
    args += ["--train", str(train), "--output", str(out), "--method", "lora"]
    args += ["--epochs", "2", "--batch-size", "2", "--lr", "1e-3", "--save-every", "3"]
    args += ["--seed", "7", "--set", "lora.dropout=0.1", "--set", "optim.warmup=0"]
    args += ["--dtype", "fp32"]  # as the in-process reference (make_config)
    return args


def _env() -> dict[str, str]:
    # Same thread count as this process, so float reductions happen in the same order.
    return {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}


def _wait_for(predicate, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert proc.poll() is None, "training finished before it could be interrupted"
        assert time.monotonic() < deadline, "timed out waiting for the training subprocess"
        time.sleep(0.005)


def _assert_same_curve(run: Path, ref: Path) -> None:
    got, want = read_metrics(run), read_metrics(ref)
    assert [r["step"] for r in got] == [r["step"] for r in want]
    for g, w in zip(got, want, strict=True):
        assert abs(g["train_loss"] - w["train_loss"]) <= 1e-6, g["step"]
        assert abs(g["grad_norm"] - w["grad_norm"]) <= 1e-5 * max(1.0, w["grad_norm"])
        assert g["lr"] == w["lr"] and g["tokens"] == w["tokens"]
    a, b = (
        load_file(run / "adapter_model.safetensors"),
        load_file(ref / "adapter_model.safetensors"),
    )
    for k in b:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6)


def test_sigkill_then_resume_matches_uninterrupted_run(tiny_model_dir, chat_data, tmp_path):
    train, _ = chat_data
    ref = tmp_path / "ref"
    run_recipe(make_config(tiny_model_dir, train, ref, **OVERRIDES))

    out = tmp_path / "killed"
    log = (tmp_path / "killed.log").open("w")
    proc = subprocess.Popen(
        _cli_args(tiny_model_dir, train, out), env=_env(), stdout=log, stderr=subprocess.STDOUT
    )
    try:
        _wait_for(lambda: ckpt.latest_checkpoint(out / "checkpoints") is not None, proc)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        proc.kill()
    assert not (out / "tuneforge.json").exists()
    resumed_from = ckpt.latest_checkpoint(out / "checkpoints")
    assert ckpt.read_state(resumed_from).step < len(read_metrics(ref))

    recipe = run_recipe(
        make_config(tiny_model_dir, train, out, **OVERRIDES, **{"checkpoint.resume": "auto"})
    )
    assert recipe.resume_from == resumed_from
    _assert_same_curve(out, ref)


def test_sigterm_stops_gracefully_with_a_checkpoint(tiny_model_dir, chat_data, tmp_path):
    train, _ = chat_data
    out = tmp_path / "stopped"
    log = (tmp_path / "stopped.log").open("w")
    proc = subprocess.Popen(
        _cli_args(tiny_model_dir, train, out), env=_env(), stdout=log, stderr=subprocess.STDOUT
    )
    try:
        metrics = out / "metrics.jsonl"
        _wait_for(lambda: metrics.is_file() and len(metrics.read_text().splitlines()) >= 4, proc)
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=60)
    finally:
        proc.kill()
    assert rc == 130, (tmp_path / "stopped.log").read_text()
    last_logged = read_metrics(out)[-1]["step"]
    latest = ckpt.latest_checkpoint(out / "checkpoints")
    # The step in flight finished, was checkpointed and logged; nothing after it ran.
    assert ckpt.read_state(latest).step == last_logged < 32
    assert not (out / "tuneforge.json").exists()
    assert not list((out / "checkpoints").glob(".tmp-*"))
