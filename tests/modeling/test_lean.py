"""Leaner training forwards: norms and MLPs give the same forward, gradients within rounding
and keep less; a fused LoRA linear gives peft's sums within one rounding."""

from __future__ import annotations

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM

from tuneforge.modeling.lean import lean_saves
from tuneforge.modeling.trainable import LoraSpec, apply_lora, hold_dtypes


def _saved_bytes(model, ids: torch.Tensor) -> tuple[torch.Tensor, int]:
    """The loss of a forward, and the bytes autograd kept for its backward (parameters,
    which it keeps without copying, not counted)."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    kept: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        ptr = t.untyped_storage().data_ptr()
        if ptr not in params:
            kept[ptr] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = model(input_ids=ids, labels=ids).loss
    return loss, sum(kept.values())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_same_forward_close_gradients_less_kept(tiny_model_dir, dtype):
    ids = torch.randint(4, 300, (4, 24), generator=torch.Generator().manual_seed(0))
    runs = {}
    for lean in (False, True):
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=dtype)
        if lean:
            # every RMSNorm (2 per block and the final one) and every MLP of the 2 blocks
            assert lean_saves(model) == {"rms_norm": 5, "silu_mul": 2, "lora_linear": 0}
        loss, kept = _saved_bytes(model, ids)
        loss.backward()
        grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
        runs[lean] = (loss.detach(), kept, grads)
    config = model.config
    (loss0, kept0, grads0), (loss1, kept1, grads1) = runs[False], runs[True]
    assert torch.equal(loss1, loss0)  # the forward is bit-identical
    tol = 1e-5 if dtype == torch.float32 else 2e-2  # backward rounded once, in fp32
    for name, g in grads0.items():
        torch.testing.assert_close(grads1[name], g, rtol=tol, atol=tol * g.abs().max().item())
    # silu(gate) is no longer kept: one (B, T, intermediate) tensor per MLP; in bf16 the
    # blocks' norms keep their bf16 input instead of its fp32 copy, 2 bytes less each.
    itemsize = torch.tensor([], dtype=dtype).element_size()
    mlp = config.num_hidden_layers * ids.numel() * config.intermediate_size * itemsize
    norms = 2 * config.num_hidden_layers * ids.numel() * config.hidden_size * 2
    assert kept0 - kept1 >= mlp + (norms if dtype == torch.bfloat16 else 0)


def test_other_architectures_are_left_alone(tiny_gpt2_dir):
    model = AutoModelForCausalLM.from_pretrained(tiny_gpt2_dir)
    assert lean_saves(model) == {"rms_norm": 0, "silu_mul": 0, "lora_linear": 0}


def _lora_run(model_dir, fused: bool, bf16: bool, dropout: float = 0.0):
    """Loss, logits and gradients (adapters and input embeddings) of a LoRA forward/backward
    as training runs it: in bf16, the frozen base held in bf16 under autocast."""
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model = apply_lora(model, LoraSpec(r=4, alpha=8, dropout=dropout))
    for name, p in model.named_parameters():  # B = 0 at init: give the adapters a product
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.02)
    if bf16:
        hold_dtypes(
            model, {n for n, p in model.named_parameters() if p.requires_grad}, torch.bfloat16
        )
    if fused:
        assert lean_saves(model)["lora_linear"] == 14  # 7 projections x 2 blocks
    model.train()
    ids = torch.randint(4, 300, (3, 17), generator=torch.Generator().manual_seed(1))
    embeds = model.get_input_embeddings()(ids).detach().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        out = model(inputs_embeds=embeds, labels=ids)
    out.loss.backward()
    grads = {n: p.grad.float() for n, p in model.named_parameters() if p.requires_grad}
    grads["inputs_embeds"] = embeds.grad.float()
    return out.loss.detach(), out.logits.detach().float(), grads, model


@pytest.mark.parametrize("bf16", [False, True])
def test_fused_lora_linear_matches_peft(tiny_model_dir, bf16):
    loss0, logits0, grads0, _ = _lora_run(tiny_model_dir, fused=False, bf16=bf16)
    loss1, logits1, grads1, model = _lora_run(tiny_model_dir, fused=True, bf16=bf16)
    # the same sum, rounded once instead of three times (bf16) or in another order (fp32)
    tol = 1e-5 if not bf16 else 2e-2
    torch.testing.assert_close(loss1, loss0, rtol=tol, atol=tol)
    torch.testing.assert_close(logits1, logits0, rtol=tol, atol=tol * logits0.abs().max().item())
    assert set(grads1) == set(grads0)
    for name, g in grads0.items():
        assert grads1[name].dtype == g.dtype
        torch.testing.assert_close(grads1[name], g, rtol=tol, atol=tol * g.abs().max().item())
    # the adapters keep fp32 gradients (the optimizer's dtype) whatever the compute dtype
    a = next(p for n, p in model.named_parameters() if "lora_A" in n)
    assert a.grad.dtype == torch.float32


def test_lora_cases_fusion_does_not_cover_run_peft(tiny_model_dir):
    """Dropout, a disabled adapter and a merged adapter take peft's own forward."""
    # dropout: the same random stream, so peft's forward gives exactly the unfused logits
    # (the norms' and MLPs' leaner backwards still round the gradients their own way)
    _, logits0, grads0, _ = _lora_run(tiny_model_dir, fused=False, bf16=False, dropout=0.1)
    _, logits1, grads1, model = _lora_run(tiny_model_dir, fused=True, bf16=False, dropout=0.1)
    assert torch.equal(logits1, logits0)
    for name, g in grads0.items():
        torch.testing.assert_close(grads1[name], g, rtol=1e-5, atol=1e-5 * g.abs().max().item())
    assert isinstance(model, PeftModel)
    ids = torch.randint(4, 300, (2, 9), generator=torch.Generator().manual_seed(2))
    model.eval()
    with torch.no_grad():
        adapted = model(input_ids=ids).logits
        with model.disable_adapter():
            base = model(input_ids=ids).logits
        model.merge_adapter()
        merged = model(input_ids=ids).logits
    assert not torch.allclose(adapted, base)
    torch.testing.assert_close(merged, adapted, rtol=1e-4, atol=1e-4)
