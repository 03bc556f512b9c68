"""Model surgery and the trainable-parameter plan."""

from __future__ import annotations

import pytest
import torch

from tuneforge.modeling.load import body_and_head, find_blocks, load_model_and_tokenizer
from tuneforge.modeling.tiny import build_model, save_model_folder, train_tokenizer
from tuneforge.modeling.trainable import (
    LoraSpec,
    ParamRule,
    TrainablePlan,
    apply_lora,
    block_rules,
    lora_targets,
    plan_for_method,
)


@pytest.mark.parametrize(
    ("arch", "path"),
    [("llama", "model.layers"), ("gpt2", "transformer.h"), ("qwen2", "model.layers")],
)
def test_find_blocks_plain_and_peft(tiny_tokenizer, arch, path):
    model = build_model(tiny_tokenizer, arch=arch, num_layers=3)
    assert find_blocks(model)[0] == path and len(find_blocks(model)[1]) == 3
    wrapped = apply_lora(model, LoraSpec(r=2))
    found_path, blocks = find_blocks(wrapped)
    assert found_path == path and len(blocks) == 3
    body, head = body_and_head(wrapped)
    assert head is model.get_output_embeddings() and body is model.base_model


def test_lora_defaults_per_architecture(tiny_tokenizer):
    llama = build_model(tiny_tokenizer, arch="llama")
    assert lora_targets(llama) == [
        "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"
    ]  # fmt: skip
    gpt2 = build_model(tiny_tokenizer, arch="gpt2")
    assert lora_targets(gpt2) == ["c_attn", "c_proj", "c_fc"]
    wrapped = apply_lora(gpt2, LoraSpec(r=2))
    adapted = {n.split(".")[-1] for n, m in wrapped.named_modules() if hasattr(m, "lora_A")}
    assert adapted == {"c_attn", "c_proj", "c_fc"}


def test_lora_plan_trains_only_adapters(tiny_tokenizer):
    model = apply_lora(build_model(tiny_tokenizer, arch="llama"), LoraSpec(r=4))
    plan_for_method(model, "lora", weight_decay=0.1).apply(model)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)
    groups = TrainablePlan.build(model, [ParamRule(r"\.lora_", trainable=True)], 0.1, False)
    assert groups.settings == plan_for_method(model, "lora", 0.1).settings
    n_train, n_total = plan_for_method(model, "lora").counts(model)
    assert n_train == sum(p.numel() for n, p in model.named_parameters() if n in trainable)
    assert n_train < n_total


def test_full_plan_weight_decay_excludes_norms_biases_embeddings(tiny_tokenizer):
    model = build_model(tiny_tokenizer, arch="gpt2")
    plan = plan_for_method(model, "full", weight_decay=0.1)
    groups = plan.param_groups(model, lr=1e-3)
    decayed = {id(p) for g in groups if g["weight_decay"] > 0 for p in g["params"]}
    for name, p in model.named_parameters():
        is_decayed = id(p) in decayed
        assert is_decayed == (p.ndim >= 2 and "wte" not in name and "wpe" not in name), name
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))


def test_rules_freeze_blocks_and_scale_lr(tiny_tokenizer):
    model = build_model(tiny_tokenizer, arch="llama", num_layers=4)
    rules = [
        *block_rules(model, trainable_blocks=[-1]),
        ParamRule(r"^lm_head\.", group="head", lr_scale=10.0),
    ]
    plan = TrainablePlan.build(model, rules, weight_decay=0.0).apply(model)
    for name, p in model.named_parameters():
        if name.startswith("model.layers."):
            assert p.requires_grad == name.startswith("model.layers.3."), name
    groups = {g["name"]: g for g in plan.param_groups(model, lr=1e-4)}
    head = groups["head/lr10/wd0"]
    assert head["lr"] == pytest.approx(1e-3) and head["params"] == [model.lm_head.weight]
    # A frozen block gets no gradient from a real backward pass.
    out = model(input_ids=torch.tensor([[5, 6, 7, 8]]), labels=torch.tensor([[5, 6, 7, 8]]))
    out.loss.backward()
    assert model.model.layers[0].self_attn.q_proj.weight.grad is None
    assert model.model.layers[3].self_attn.q_proj.weight.grad is not None


def test_load_model_and_tokenizer_sets_pad_and_template(tmp_path):
    tok = train_tokenizer(["hello world"] * 20, vocab_size=300)
    model = build_model(tok, arch="llama")
    tok.pad_token = None
    folder = save_model_folder(model, tok, tmp_path / "m")
    loaded, loaded_tok = load_model_and_tokenizer(str(folder), "fp32")
    assert loaded_tok.pad_token == loaded_tok.eos_token
    assert loaded_tok.chat_template
    assert next(loaded.parameters()).dtype == torch.float32
    bf16, _ = load_model_and_tokenizer(str(folder), "bf16")
    assert next(bf16.parameters()).dtype == torch.bfloat16
