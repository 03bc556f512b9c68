"""Continued fine-tuning: `train --from`, replay of the parent's data, lineage."""

from __future__ import annotations

import json

import pytest
from train_data import make_config, run_recipe, write_chat_jsonl
from typer.testing import CliRunner

from tuneforge.cli import app
from tuneforge.training.lineage import lineage, replay_count


def test_replay_count_gives_the_requested_share():
    assert replay_count(24, 0.25, 100) == 8  # 8 / (24 + 8) = 0.25
    assert replay_count(24, 0.25, 5) == 5  # capped by what the parent has
    assert replay_count(24, 0.0, 100) == 0


@pytest.mark.slow  # several training runs; the default run covers the same path more briefly
def test_continue_from_adapter_records_lineage_and_replays(tiny_model_dir, tmp_path):
    old = write_chat_jsonl(tmp_path / "old.jsonl", 32, seed=0)
    new = write_chat_jsonl(tmp_path / "new.jsonl", 24, seed=5)
    v1 = tmp_path / "v1"
    run_recipe(make_config(tiny_model_dir, old, v1, method="lora", **{"optim.lr": 4e-3}))
    cfg = make_config(
        None,
        new,
        tmp_path / "v2",
        method="lora",
        **{
            "model.name_or_path": None,
            "parent.model": str(v1),
            "parent.replay": 0.25,
            "optim.lr": "auto",
        },
    )
    recipe = run_recipe(cfg)
    assert recipe.cfg.optim.lr == 2e-3  # the parent's LR x parent.lr_factor (0.5)
    assert len(recipe.train_set.examples) == 32  # 24 new + 8 replayed
    manifest = json.loads((tmp_path / "v2" / "tuneforge.json").read_text())
    assert manifest["parent_model"] == str(v1)
    assert manifest["base_model"] == str(tiny_model_dir)
    assert manifest["data"]["replay"]["examples"] == 8
    assert manifest["data"]["replay"]["fraction"] == 0.25
    assert manifest["data"]["train"]["examples"] == 24
    # v2 continued v1's adapter (same adapter shapes, not a fresh one).
    assert (tmp_path / "v2" / "adapter_model.safetensors").is_file()
    assert lineage(tmp_path / "v2") == [str(tiny_model_dir), str(v1), str(tmp_path / "v2")]
    out = CliRunner().invoke(app, ["models", "lineage", str(tmp_path / "v2")])
    assert out.exit_code == 0
    assert " -> ".join([str(tiny_model_dir), str(v1), str(tmp_path / "v2")]) in out.output.replace(
        "\n", ""
    )


def test_continue_from_full_weights_via_cli(tiny_model_dir, tmp_path):
    data = write_chat_jsonl(tmp_path / "d.jsonl", 16, seed=0)
    v1 = tmp_path / "v1"
    run_recipe(make_config(tiny_model_dir, data, v1, method="full", **{"optim.max_steps": 1}))
    args = ["train", "--from", str(v1), "--train", str(data), "--output", str(tmp_path / "v2")]
    args += ["--method", "full", "--max-steps", "1", "--batch-size", "8", "--replay", "0.5"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    manifest = json.loads((tmp_path / "v2" / "tuneforge.json").read_text())
    assert manifest["parent_model"] == str(v1)
    assert manifest["config"]["optim"]["lr"] == 1e-3 * 0.5
    assert manifest["data"]["replay"]["fraction"] == 0.5
    assert (tmp_path / "v2" / "model.safetensors").is_file()
