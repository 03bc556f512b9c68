"""Weight-only quantized decoding: decode steps read the quantized copy, prompts the full
weights; int4 gives back weights on GGUF Q4_1's grid; peft's adapters wrap quantized layers.
A server started with `quantize`: tests/server/test_quantized_serving.py."""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM

from tuneforge.inference import quantize
from tuneforge.inference.quantize import DECODE_ROWS, GROUP, quantize_for_decoding


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


# Relative error of a decode step's logits on the tiny model's random weights: 4 bits per
# weight of a Gaussian lose about 8% (weights that came from a 4-bit file lose nothing, below).
@pytest.mark.parametrize(("kind", "tolerance"), [("int8", 0.03), ("int4", 0.2)])
def test_decode_rows_read_the_quantized_copy_and_prompts_the_full_weights(
    tiny_model_dir, kind, tolerance
):
    plain = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.bfloat16).eval()
    quant = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.bfloat16).eval()
    n_linear = sum(type(m) is torch.nn.Linear for m in quant.modules())
    assert quantize_for_decoding(quant, kind) == (n_linear, 0)
    prompt = torch.randint(4, 300, (1, DECODE_ROWS + 5), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        # A prompt (more rows than DECODE_ROWS) multiplies by the full weights: the same logits.
        assert torch.equal(quant(prompt).logits, plain(prompt).logits)
        # One row at a time (a decode step) reads the quantized copy: close, not equal.
        step = prompt[:, :1]
        ours, theirs = quant(step).logits, plain(step).logits
    assert not torch.equal(ours, theirs)
    assert _rel(ours, theirs) < tolerance
    # Training (gradients on) never takes the quantized path.
    assert torch.equal(quant(step).logits, plain(step).logits)


def test_int4_gives_back_weights_on_q4_1s_grid():
    """Weights on GGUF Q4_1's grid (per 32 inputs, code * scale + minimum) come back exactly:
    the int4 matmul is the fp32 matmul, where int8's per-row scale rounds them."""
    g = torch.Generator().manual_seed(1)
    n, k = 48, 4 * GROUP
    codes = torch.randint(0, 16, (n, k // GROUP, GROUP), generator=g).float()
    codes[..., 0], codes[..., 1] = 0, 15  # every group spans its whole range
    scale = torch.rand(n, k // GROUP, 1, generator=g) * 0.01 + 0.001
    low = torch.randn(n, k // GROUP, 1, generator=g) * 0.05
    layer = torch.nn.Linear(k, n, bias=False)
    with torch.no_grad():
        layer.weight.copy_((codes * scale + low).reshape(n, k))
    x = torch.randn(3, k, generator=g)
    expected = x @ layer.weight.detach().T
    assert _rel(quantize._int4(layer.weight)(x), expected) < 1e-5
    assert _rel(quantize._int8(layer.weight)(x), expected) > 1e-3


def test_the_output_head_is_int8_under_int4(tiny_model_dir, monkeypatch):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.bfloat16)
    made: list[str] = []
    for name in ("_int4", "_int8"):
        make = getattr(quantize, name)
        monkeypatch.setattr(
            quantize, name, lambda w, make=make, name=name: made.append(name) or make(w)
        )
    quantize_for_decoding(model, "int4")
    linears = [m for m in model.modules() if type(m) is torch.nn.Linear]
    head_at = linears.index(model.get_output_embeddings())
    assert made[head_at] == "_int8" and made.count("_int8") == 1


def test_peft_adapter_wraps_a_quantized_layer(tiny_model_dir):
    """A LoRA adapter put on a quantized base applies as on the full weights, and the base
    layers under it still read their quantized copies."""
    outputs = []
    for kind in ("none", "int8"):
        base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.bfloat16).eval()
        quantize_for_decoding(base, kind)
        torch.manual_seed(0)
        model = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "lora_B" in name:
                    p.normal_(std=0.5)
        step = torch.tensor([[7]])
        with torch.inference_mode():
            with_adapter = model(step).logits
            with model.disable_adapter():
                without = model(step).logits
        outputs.append((with_adapter, without))
    (full, _), (quant, quant_base) = outputs
    assert _rel(quant, quant_base) > 0.01  # the adapter changes the quantized model's output
    assert not torch.equal(quant, full)  # peft's layers call the quantized base layers
    assert _rel(quant, full) < 0.05
