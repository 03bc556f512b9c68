"""Checkpoint files: atomic, complete, prunable, free of wrapper prefixes."""

from __future__ import annotations

import random

import pytest
import torch
from safetensors.torch import load_file

from tuneforge.modeling.folder import MANIFEST_FILE, staged_export
from tuneforge.modeling.tiny import build_model
from tuneforge.training import checkpoint as ckpt


def _optim(model):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 / (s + 1))
    return opt, sched


def test_roundtrip_restores_weights_optimizer_scheduler_and_rng(tiny_tokenizer, tmp_path):
    model = build_model(tiny_tokenizer, arch="gpt2")  # tied embeddings: saved once
    opt, sched = _optim(model)
    model(input_ids=torch.tensor([[5, 6, 7]]), labels=torch.tensor([[5, 6, 7]])).loss.backward()
    opt.step()
    sched.step()
    torch.manual_seed(3)
    random.seed(3)
    path = ckpt.save_checkpoint(tmp_path, model, opt, sched, ckpt.TrainState(step=1, epoch=0))
    expected = (torch.rand(3), random.random())

    other = build_model(tiny_tokenizer, arch="gpt2", seed=1)
    opt2, sched2 = _optim(other)
    state = ckpt.load_checkpoint(path, other, opt2, sched2)
    assert state.step == 1
    for (name, p), q in zip(model.state_dict().items(), other.state_dict().values(), strict=True):
        assert torch.equal(p, q), name
    assert sched2.last_epoch == 1 and opt2.state_dict()["state"][0]["step"] == 1
    assert torch.equal(torch.rand(3), expected[0]) and random.random() == expected[1]


def test_incomplete_saves_are_ignored_and_cleaned(tiny_tokenizer, tmp_path):
    model = build_model(tiny_tokenizer, arch="llama")
    opt, sched = _optim(model)
    for step in (2, 4, 6, 8):
        valid = {4: 1.0, 6: 2.0}.get(step)  # the selection metric: a loss here
        ckpt.save_checkpoint(
            tmp_path, model, opt, sched, ckpt.TrainState(step=step, valid_metric=valid)
        )
    # A save killed half-way: temp folder, and a renamed-looking folder without its state file.
    (tmp_path / ".tmp-step-000010-123").mkdir()
    (tmp_path / "step-000012").mkdir()
    assert ckpt.latest_checkpoint(tmp_path).name == "step-000008"
    ckpt.prune_checkpoints(tmp_path, keep_last=1, keep_best=True)
    kept = [p.name for p in ckpt.list_checkpoints(tmp_path)]
    assert kept == ["step-000004", "step-000008"]  # newest + best validation loss
    assert not list(tmp_path.glob(".tmp-*"))


def test_saved_weights_carry_no_wrapper_prefix(tiny_tokenizer, tmp_path):
    model = build_model(tiny_tokenizer, arch="llama")
    compiled = torch.compile(model)  # lazy: nothing is compiled until called
    assert any(k.startswith("_orig_mod.") for k in compiled.state_dict())
    ckpt.save_model(compiled, tmp_path)
    keys = set(load_file(tmp_path / "model.safetensors"))
    assert keys == set(model.state_dict())


def test_resume_refuses_a_changed_data_order(tiny_model_dir, tmp_path):
    from train_data import make_config, run_recipe, write_chat_jsonl

    train = write_chat_jsonl(tmp_path / "train.jsonl", 8)
    out = tmp_path / "out"
    run_recipe(make_config(tiny_model_dir, train, out, **{"optim.batch_size": 4}))
    with pytest.raises(ValueError, match="batch_size 4 -> 2"):
        run_recipe(
            make_config(
                tiny_model_dir, train, out, **{"optim.batch_size": 2, "checkpoint.resume": "auto"}
            )
        )


def test_staged_export_moves_a_whole_model_in_with_the_manifest_last(
    tiny_tokenizer, tmp_path, monkeypatch
):
    out = tmp_path / "run"
    (out / "checkpoints").mkdir(parents=True)
    (out / "tuneforge.json").write_text('{"old": true}')
    model = build_model(tiny_tokenizer, arch="llama")
    moved: list[str] = []
    real_replace = ckpt.os.replace

    def recording_replace(src, dst):
        moved.append(ckpt.Path(dst).name)
        real_replace(src, dst)

    monkeypatch.setattr(ckpt.os, "replace", recording_replace)
    with staged_export(out) as stage:
        ckpt.save_model(model, stage)
        (stage / "merged").mkdir()
        (stage / "merged" / "config.json").write_text("{}")
        (stage / MANIFEST_FILE).write_text('{"new": true}')
    monkeypatch.undo()
    assert moved[-1] == MANIFEST_FILE and "model.safetensors" in moved
    assert (out / MANIFEST_FILE).read_text() == '{"new": true}'
    assert (out / "merged" / "config.json").is_file() and (out / "checkpoints").is_dir()
    assert not [p for p in out.iterdir() if p.name.startswith(".tmp-")]


def test_a_failed_export_leaves_no_manifest_and_no_stage(tiny_tokenizer, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "tuneforge.json").write_text('{"old": true}')
    with pytest.raises(RuntimeError), staged_export(out) as stage:
        (stage / "model.safetensors").write_bytes(b"half")
        raise RuntimeError("killed mid-export")
    # A manifest next to weights from another export would describe a model that is not there.
    assert sorted(p.name for p in out.iterdir()) == []
