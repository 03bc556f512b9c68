"""Freezing, head-only, gradual unfreezing and layer-wise LRs as one `TrainablePlan`."""

from __future__ import annotations

import pytest

from tuneforge.modeling.tiny import build_model
from tuneforge.modeling.trainable import (
    Layout,
    LoraSpec,
    TrainableSpec,
    apply_lora,
    build_plan,
)
from tuneforge.training.config import higher_is_better, load_config
from tuneforge.training.transfer import UnfreezeSchedule, improved, trainable_spec


@pytest.fixture(scope="module")
def llama4(tiny_tokenizer):
    return build_model(tiny_tokenizer, arch="llama", num_layers=4, hidden_size=32, num_heads=2)


def test_layout_places_embeddings_blocks_and_top(llama4, tiny_tokenizer):
    layout = Layout.of(llama4)
    assert layout.n_blocks == 4 and layout.head == {"lm_head.weight"}
    assert layout.position["model.embed_tokens.weight"] == 0
    assert layout.position["model.layers.2.mlp.up_proj.weight"] == 3
    assert layout.position["model.norm.weight"] == layout.position["lm_head.weight"] == 5
    gpt2 = Layout.of(build_model(tiny_tokenizer, arch="gpt2", num_layers=2))
    # Tied embeddings: the head is the input embedding matrix (named once).
    assert gpt2.head == {"transformer.wte.weight"} and gpt2.position["transformer.wpe.weight"] == 0


def test_freeze_first_blocks_and_embeddings(llama4):
    plan = build_plan(llama4, TrainableSpec("full", freeze_blocks=3, freeze_embeddings=True))
    for name, s in plan.settings.items():
        frozen = name.startswith(("model.embed_tokens", *(f"model.layers.{i}." for i in range(3))))
        assert s.trainable != frozen, name


def test_freeze_by_pattern_and_head_only(llama4):
    plan = build_plan(llama4, TrainableSpec("full", freeze_patterns=(r"\.mlp\.",)))
    assert not any(s.trainable for n, s in plan.settings.items() if ".mlp." in n)
    head = build_plan(llama4, TrainableSpec("head"))
    assert head.trainable_names() == {"lm_head.weight"}


def test_layer_decay_per_group(llama4):
    plan = build_plan(llama4, TrainableSpec("full", layer_decay=0.5, head_lr_scale=10.0))
    groups = {g["name"].split("/")[0]: g for g in plan.param_groups(llama4, lr=1.0)}
    assert {k: g["lr"] for k, g in groups.items()} == pytest.approx(
        {"embeddings": 0.5**4, "block.0": 0.5**3, "block.1": 0.25, "block.2": 0.5,
         "block.3": 1.0, "top": 1.0, "head": 10.0}
    )  # fmt: skip


def test_layer_decay_with_lora_groups_adapters_per_block(tiny_tokenizer):
    model = apply_lora(build_model(tiny_tokenizer, arch="llama", num_layers=3), LoraSpec(r=2))
    plan = build_plan(model, TrainableSpec("lora", layer_decay=0.5))
    groups = plan.param_groups(model, lr=1.0)
    assert {g["name"].split("/")[0] for g in groups} == {"block.0", "block.1", "block.2"}
    for g in groups:
        block = int(g["name"].split("/")[0].split(".")[1])
        assert g["lr"] == pytest.approx(0.5 ** (2 - block))
        assert all(p.requires_grad is not None for p in g["params"])
    lora_names = {n for n in plan.trainable_names()}
    assert lora_names and all(".lora_" in n for n in lora_names)


def test_unfrozen_blocks_open_top_down(llama4):
    def open_blocks(k):
        plan = build_plan(llama4, TrainableSpec("full", unfrozen_blocks=k))
        names = plan.trainable_names()
        blocks = {int(n.split(".")[2]) for n in names if n.startswith("model.layers.")}
        return blocks, "model.embed_tokens.weight" in names, "lm_head.weight" in names

    assert open_blocks(0) == (set(), False, True)
    assert open_blocks(1) == ({3}, False, True)
    assert open_blocks(4) == ({0, 1, 2, 3}, False, True)
    assert open_blocks(5) == ({0, 1, 2, 3}, True, True)


def _cfg(tmp_path, **overrides):
    data = tmp_path / "d.jsonl"
    data.write_text('{"text": "hi"}\n')
    values = {"model.name_or_path": "m", "data.train": str(data), "output.dir": "o"}
    return load_config(None, {**values, **overrides})


def test_unfreeze_schedule_from_config(tmp_path):
    cfg = _cfg(tmp_path, **{"method": "full", "unfreeze.every": 10, "freeze.blocks": 1})
    sched = UnfreezeSchedule.from_config(cfg, n_blocks=4)
    # One block is frozen for good (and with it the embeddings): 3 blocks can open.
    assert sched.max_blocks == 3
    assert [sched.unfrozen_blocks(s, 0) for s in (0, 9, 10, 25, 99)] == [0, 0, 1, 2, 3]
    epochs = UnfreezeSchedule.from_config(
        _cfg(tmp_path, **{"unfreeze.every": "epoch", "unfreeze.start_blocks": 1,
                          "unfreeze.depth": 2}), 4
    )  # fmt: skip
    assert [epochs.unfrozen_blocks(100, e) for e in range(4)] == [1, 2, 2, 2]
    spec = trainable_spec(cfg, 4, unfrozen_blocks=2)
    assert spec.freeze_blocks == 1 and spec.freeze_embeddings and spec.unfrozen_blocks == 2
    assert trainable_spec(_cfg(tmp_path, **{"freeze.blocks": 0.5}), 4).freeze_blocks == 2


def test_early_stopping_rule():
    assert improved(1.0, None, 0.1)
    assert improved(0.85, 1.0, 0.1) and not improved(0.95, 1.0, 0.1)
    # An accuracy improves upwards; a tie never counts.
    up = higher_is_better("valid_reward_accuracy")
    assert improved(0.8, 0.6, 0.1, up) and not improved(0.65, 0.6, 0.1, up)
    assert not improved(0.6, 0.6, 0.0, up) and not improved(0.4, 0.6, 0.0, up)
    assert not higher_is_better("valid_loss") and higher_is_better("valid_accuracy")


def test_best_checkpoint_follows_the_metric_direction(tmp_path):
    import json

    from tuneforge.modeling.folder import STATE_FILE
    from tuneforge.training.checkpoint import best_checkpoint, read_state

    for step, value in ((1, 0.5), (2, 0.75), (3, 0.75), (4, 0.25)):
        folder = tmp_path / f"step-{step:06d}"
        folder.mkdir()
        state = {"step": step, "valid_metric": value, "valid_loss": 1.0 - value}
        (folder / STATE_FILE).write_text(json.dumps(state))
    assert best_checkpoint(tmp_path, higher=True).name == "step-000002"  # the earliest tie
    assert best_checkpoint(tmp_path).name == "step-000004"
    # A checkpoint written before the metric was a setting was picked by its valid_loss.
    old = tmp_path / "step-000005"
    old.mkdir()
    (old / STATE_FILE).write_text(
        json.dumps({"step": 5, "valid_loss": 0.1, "best_valid_loss": 0.1})
    )
    assert read_state(old).valid_metric == read_state(old).best_valid_metric == 0.1
    assert best_checkpoint(tmp_path).name == "step-000005"


def test_config_rejects_inconsistent_transfer_settings(tmp_path):
    from tuneforge.training.config import ConfigError

    with pytest.raises(ConfigError) as err:
        _cfg(tmp_path, **{"early_stop.patience": 2, "freeze.blocks": 1.5, "parent.replay": 0.2})
    problems = "\n".join(err.value.problems)
    assert "early stopping needs eval.eval_every" in problems
    assert "freeze.blocks" in problems and "replay needs parent.model" in problems
