"""Likelihood and generation on a tiny model: training's numbers, batched = one at a time."""

from __future__ import annotations

import json

import pytest
import torch
from peft import LoraConfig, get_peft_model
from toy import write_toy
from transformers import AutoModelForCausalLM

from tuneforge.evaluation.data import read_holdout
from tuneforge.evaluation.generate import GenerationSettings, generate_replies, stop_token_ids
from tuneforge.evaluation.likelihood import example_losses
from tuneforge.evaluation.loading import EvalError, load_for_eval
from tuneforge.modeling import attention
from tuneforge.tokenize import collate_padded
from tuneforge.training.loss import causal_lm_loss


@pytest.fixture(scope="module")
def base(tiny_model_dir):
    return load_for_eval(tiny_model_dir, "fp32")


@pytest.fixture(scope="module")
def holdout(tmp_path_factory, base):
    path = write_toy(tmp_path_factory.mktemp("data") / "holdout.jsonl", 6)
    return read_holdout(path, base.tokenizer)


def test_per_example_losses_add_up_to_the_training_loss(base, holdout):
    encs = [e.encoded for e in holdout]
    rows = example_losses(base.model, encs, base.tokenizer.pad_token_id, batch_size=4)
    batch = collate_padded(encs, base.tokenizer.pad_token_id)
    with torch.no_grad():
        loss_sum, n, correct = causal_lm_loss(base.model, **batch)
    assert sum(r[0] for r in rows) == pytest.approx(loss_sum.item(), rel=1e-5)
    assert sum(r[1] for r in rows) == n.item() == sum(e.num_trained for e in encs)
    assert sum(r[2] for r in rows) == correct.item()
    # Each row is the example's own loss, whatever batch it was in.
    alone = example_losses(base.model, encs[:1], base.tokenizer.pad_token_id)
    assert alone[0][0] == pytest.approx(rows[0][0], rel=1e-5)


def test_bf16_losses_take_the_blocked_attention_and_match_sdpa(
    tiny_model_dir, holdout, monkeypatch
):
    """In bf16 the evaluation takes training's fast path: the blocked causal attention, the
    right-padding mask dropped. Its per-example losses are SDPA's with the mask, within bf16
    rounding."""
    fast = load_for_eval(tiny_model_dir, "bf16")
    assert fast.model.config._attn_implementation == attention.NAME
    plain = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.bfloat16).eval()
    calls: list[int] = []
    apply = attention._CausalAttention.apply
    monkeypatch.setattr(
        attention._CausalAttention, "apply", lambda *a: calls.append(1) or apply(*a)
    )
    encs = [e.encoded for e in holdout]
    assert len({len(e) for e in encs}) > 1  # the batches are padded
    pad = fast.tokenizer.pad_token_id
    ours = example_losses(fast.model, encs, pad, batch_size=4)
    assert calls  # the blocked attention ran
    calls.clear()
    theirs = example_losses(plain, encs, pad, batch_size=4)
    assert not calls
    for (a, n, _), (b, m, _) in zip(ours, theirs, strict=True):
        assert n == m and a == pytest.approx(b, rel=2e-2)


def test_prompt_is_the_conversation_before_the_last_reply(base, holdout):
    ex = holdout[0]
    text = base.tokenizer.decode(ex.prompt_ids)
    assert text.endswith("<|im_start|>assistant\n") and ex.prompt in text
    assert ex.reference not in text


def test_batched_generation_equals_one_at_a_time(base, holdout):
    prompts = [e.prompt_ids for e in holdout]
    assert len({len(p) for p in prompts}) > 1  # left padding is exercised
    settings = GenerationSettings(max_new_tokens=8, batch_size=6)
    batched = generate_replies(base.model, base.tokenizer, prompts, settings)
    single = [generate_replies(base.model, base.tokenizer, [p], settings)[0] for p in prompts]
    assert [(r.text, r.n_tokens) for r in batched] == [(r.text, r.n_tokens) for r in single]


def _biased_head(model, token_id: int) -> torch.nn.Module:
    """A head whose argmax is always `token_id`."""
    old = model.get_output_embeddings()
    head = torch.nn.Linear(old.in_features, old.out_features, bias=True)
    with torch.no_grad():
        head.weight.zero_()
        head.bias.zero_()
        head.bias[token_id] = 10.0
    model.set_output_embeddings(head)
    return old


def test_replies_stop_at_end_of_turn_or_run_on(base, holdout):
    tok, model = base.tokenizer, base.model
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    assert im_end in stop_token_ids(model, tok)
    prompts = [e.prompt_ids for e in holdout[:2]]
    word = tok(" Paris", add_special_tokens=False)["input_ids"][0]
    settings = GenerationSettings(max_new_tokens=5)
    old = _biased_head(model, im_end)
    try:
        stopped = generate_replies(model, tok, prompts, settings)
        _biased_head(model, word)
        endless = generate_replies(model, tok, prompts, settings)
    finally:
        model.set_output_embeddings(old)
    assert all(r.finished and r.text == "" and r.n_tokens == 0 for r in stopped)
    assert all(
        not r.finished and r.n_tokens == 5 and r.text == tok.decode([word] * 5) for r in endless
    )


def test_adapter_folder_loads_on_its_base(tiny_model_dir, tiny_tokenizer, tmp_path):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    peft = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():
        for name, p in peft.named_parameters():
            if "lora_B" in name:
                p.normal_()
    peft.save_pretrained(tmp_path / "adapter")
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(tiny_model_dir)
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        expected = peft(input_ids=ids).logits
    # Without a tokenizer of its own, the adapter uses its base's.
    loaded = load_for_eval(tmp_path / "adapter", "fp32")
    assert loaded.is_adapter and loaded.base == str(tiny_model_dir)
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(input_ids=ids).logits, expected)


def test_model_folder_without_tokenizer_is_refused(tiny_model_dir, tmp_path):
    folder = tmp_path / "weights-only"
    AutoModelForCausalLM.from_pretrained(tiny_model_dir).save_pretrained(folder)
    with pytest.raises(EvalError, match="has no tokenizer"):
        load_for_eval(folder)
    with pytest.raises(EvalError, match="no such model folder"):
        load_for_eval(tmp_path / "missing")
