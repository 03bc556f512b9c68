"""The blocked causal attention: SDPA's results within rounding, SDPA wherever it does not
apply, and right padding trained without a mask."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM

from tuneforge.modeling.attention import (
    NAME,
    _CausalAttention,
    drop_padding_mask,
    use_block_attention,
)
from tuneforge.modeling.trainable import LoraSpec, apply_lora
from tuneforge.training.loss import causal_lm_loss


def _qkv(dtype, b=2, hq=6, hkv=2, t=23, d=16):
    g = torch.Generator().manual_seed(0)
    shapes = [(b, hq, t, d), (b, hkv, t, d), (b, hkv, t, d)]
    return [torch.randn(s, generator=g).to(dtype).requires_grad_() for s in shapes]


def _attend(fn, q, k, v, grad):
    for x in (q, k, v):
        x.grad = None
    out = fn(q, k, v)
    out.backward(grad)
    return [out.detach(), q.grad.clone(), k.grad.clone(), v.grad.clone()]


@pytest.mark.parametrize("block", [5, 8, 23, 64])  # several blocks, the last one short; one
def test_matches_sdpa_in_fp32(block):
    q, k, v = _qkv(torch.float32)
    grad = torch.randn(q.shape, generator=torch.Generator().manual_seed(1))
    ours = _attend(lambda q, k, v: _CausalAttention.apply(q, k, v, 0.3, block), q, k, v, grad)
    sdpa = _attend(
        lambda q, k, v: F.scaled_dot_product_attention(
            q, k, v, is_causal=True, scale=0.3, enable_gqa=True
        ),
        q,
        k,
        v,
        grad,
    )
    for a, b in zip(ours, sdpa, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_bf16_error_is_sdpas():
    """Against an fp64 reference, the bf16 output and gradients are as close as SDPA's bf16."""
    q, k, v = _qkv(torch.bfloat16, b=2, hq=9, hkv=3, t=200, d=64)
    grad = torch.randn(q.shape, generator=torch.Generator().manual_seed(1)).to(torch.bfloat16)
    exact = _attend(
        lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True),
        *[x.detach().double().requires_grad_() for x in (q, k, v)],
        grad.double(),
    )
    ours = _attend(lambda q, k, v: _CausalAttention.apply(q, k, v, 0.125, 64), q, k, v, grad)
    sdpa = _attend(
        lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True),
        q,
        k,
        v,
        grad,
    )
    for a, b, ref in zip(ours, sdpa, exact, strict=True):
        err_a, err_b = (((x.double() - ref).norm() / ref.norm()).item() for x in (a, b))
        assert err_a < max(2 * err_b, 5e-3), (err_a, err_b)


def test_padding_mask_dropped_only_where_it_changes_nothing(tiny_model_dir, tiny_gpt2_dir):
    llama = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    right = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
    assert drop_padding_mask(llama, right) is None
    assert drop_padding_mask(apply_lora(llama, LoraSpec(r=2)), right) is None
    left = torch.tensor([[1, 1, 1, 1], [0, 0, 1, 1]])
    assert drop_padding_mask(llama, left) is left
    packed = torch.ones(2, 1, 4, 4, dtype=torch.bool)
    assert drop_padding_mask(llama, packed) is packed
    gpt2 = AutoModelForCausalLM.from_pretrained(tiny_gpt2_dir)
    assert drop_padding_mask(gpt2, right) is right


def test_padded_batch_loss_and_grads_match_sdpa_with_mask(tiny_model_dir):
    """A right-padded bf16 batch: the blocked attention without the mask gives SDPA-with-mask's
    loss and gradients, within bf16 rounding."""
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(4, 300, (3, 40), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 25:], mask[2, 9:] = 0, 0
    labels = ids.masked_fill(mask == 0, -100)
    runs = []
    for blocks in (False, True):
        model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.bfloat16)
        if blocks:
            assert use_block_attention(model)
            assert model.config._attn_implementation == NAME
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss, _, _ = causal_lm_loss(model, ids, labels, mask)
        loss.backward()
        runs.append((loss.detach(), {n: p.grad.float() for n, p in model.named_parameters()}))
    (loss0, grads0), (loss1, grads1) = runs
    torch.testing.assert_close(loss1, loss0, rtol=2e-2, atol=0)
    for name, g0 in grads0.items():
        rel = ((grads1[name] - g0).norm() / g0.norm()).item()
        assert rel < 3e-2, (name, rel)


def test_other_calls_go_to_sdpa(tiny_model_dir, tiny_gpt2_dir, monkeypatch):
    """fp32, the decoding steps of generation with a cache, and models outside the list go
    to SDPA; in bf16 only the prompt's forward (a query as long as the keys) is blocked."""
    gpt2 = AutoModelForCausalLM.from_pretrained(tiny_gpt2_dir)
    assert not use_block_attention(gpt2)
    calls: list[int] = []
    apply = _CausalAttention.apply
    monkeypatch.setattr(_CausalAttention, "apply", lambda *a: calls.append(1) or apply(*a))
    ids = torch.randint(4, 300, (1, 12), generator=torch.Generator().manual_seed(4))
    for dtype in (torch.float32, torch.bfloat16):
        plain = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=dtype)
        ours = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=dtype)
        use_block_attention(ours)
        kw = {"max_new_tokens": 6, "do_sample": False}
        calls.clear()
        assert torch.equal(ours.generate(ids, **kw), plain.generate(ids, **kw))
        # bf16: the prompt once in each of the 2 layers, never a decoding step; fp32: never
        assert len(calls) == (2 if dtype == torch.bfloat16 else 0)
        with torch.no_grad():
            if dtype == torch.float32:  # fp32 never takes the blocked path
                assert torch.equal(ours(ids).logits, plain(ids).logits)
