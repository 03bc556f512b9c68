"""Leaner saves for backward: the same forward, gradients within rounding, less kept."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from tuneforge.modeling.lean import lean_saves
from tuneforge.modeling.trainable import LoraSpec, apply_lora


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
        model = apply_lora(model, LoraSpec(r=4))
        if lean:
            # every RMSNorm (2 per block and the final one) and every MLP of the 2 blocks
            assert lean_saves(model) == {"rms_norm": 5, "silu_mul": 2}
        loss, kept = _saved_bytes(model, ids)
        loss.backward()
        grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
        runs[lean] = (loss.detach(), kept, grads)
    config = model.get_base_model().config
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
    assert lean_saves(model) == {"rms_norm": 0, "silu_mul": 0}
