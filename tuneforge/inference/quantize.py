"""Weight-only quantized decoding on a CPU: a decode step reads 4 or 8 bits per weight.

A decode step multiplies one row per sequence by every weight of the model, so on a CPU its
time is the time it takes to read the weights. On SmolLM2-135M (211 linear layers, 2 threads),
all the layers at one row take 17.7 ms in bf16, 7.8 ms with int8 weights and 5.1 ms with int4
weights (torch's weight-only kernels). `quantize_for_decoding` gives each linear layer a
quantized copy of its weight:

- int8: one scale per output row (symmetric), `aten._weight_int8pack_mm`;
- int4: groups of 32 inputs, each with a scale and a zero point,
  `aten._weight_int4pack_mm_for_cpu`. GGUF's Q4_1 uses the same groups, so a model imported
  from a Q4_1 file gets its own weights back, up to the rounding of the scales to bf16. The
  output head (the layer that makes the logits) gets int8 instead, as in llama.cpp's 4-bit
  files: on SmolLM2 int4 would be 9% off its weights (its GGUF holds them in Q8_0).

Calls of at most `DECODE_ROWS` rows (decode steps) use the quantized copy. Longer calls
(prompts) keep the full weight, because there the kernels are slower than a bf16 matmul (int4
at 32 rows: 0.67x). So the full weight stays in memory and the quantized copy comes on top:
int4 adds a quarter of the bf16 weights. The layers stay `nn.Linear` (only the instance's
forward is replaced), so peft's LoRA layers wrap them as they wrap any linear layer.
"""

from __future__ import annotations

import types
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch is imported where it is used: the server's settings read KINDS
    import torch
    from torch import nn

KINDS = ("none", "int8", "int4")
DECODE_ROWS = 8  # rows per call up to which the quantized kernel is the faster (measured)
GROUP = 32  # int4: inputs per scale and zero point (GGUF Q4_1's block)

Kernel = Callable[["torch.Tensor"], "torch.Tensor"]


def _int8(weight: torch.Tensor) -> Kernel:
    """x (M, K) -> x @ W^T with W as int8 and one scale per output row."""
    import torch

    w = weight.detach().float()
    scale = w.abs().amax(dim=1).clamp(min=1e-12) / 127
    q = torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8).contiguous()
    scale = scale.to(weight.dtype)
    return lambda x: torch.ops.aten._weight_int8pack_mm(x, q, scale)


def _int4(weight: torch.Tensor) -> Kernel:
    """x (M, K) -> x @ W^T with W as 4-bit codes, a scale and a minimum per group of inputs."""
    import torch

    n, k = weight.shape
    w = weight.detach().float().reshape(n, k // GROUP, GROUP)
    low, high = w.amin(dim=-1), w.amax(dim=-1)
    scale = ((high - low) / 15).clamp(min=1e-12)
    q = torch.round((w - low[..., None]) / scale[..., None]).clamp(0, 15).to(torch.int32)
    packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q.reshape(n, k), 1)
    # The kernel computes (q - 8) * scale + zero: zero is the group's value at code 8.
    zero = low + 8 * scale
    scales_zeros = torch.stack([scale, zero], dim=-1).transpose(0, 1).contiguous()
    scales_zeros = scales_zeros.to(weight.dtype)  # (K / GROUP, N, 2)
    return lambda x: torch.ops.aten._weight_int4pack_mm_for_cpu(x, packed, GROUP, scales_zeros)


def _forward(self: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """`nn.Linear.forward`, through the quantized copy for a call of few rows."""
    import torch
    import torch.nn.functional as F

    rows = x.numel() // x.shape[-1]
    if rows > DECODE_ROWS or x.dtype != self.weight.dtype or torch.is_grad_enabled():
        return F.linear(x, self.weight, self.bias)
    kernel: Kernel = self.__dict__["quantized"]
    out = kernel(x.reshape(rows, x.shape[-1])).reshape(*x.shape[:-1], -1)
    return out if self.bias is None else out + self.bias


def quantize_for_decoding(model: nn.Module, kind: str) -> tuple[int, int]:
    """Give every linear layer of `model` (on a CPU) a quantized copy of its weight for decode
    steps (see the module doc; with int4, a layer whose inputs are not a multiple of 32 gets
    int8). Returns (layers quantized, layers left as they are: shapes the kernels do not
    take). `kind` "none" does nothing.

    Raises:
        ValueError: an unknown kind, or a model that is not on a CPU.
    """
    if kind not in KINDS:
        raise ValueError(f"quantize must be one of {', '.join(KINDS)}, not {kind!r}")
    if kind == "none":
        return 0, 0
    import torch
    from torch import nn

    outputs = getattr(model, "get_output_embeddings", None)  # transformers' models have it
    head = outputs() if callable(outputs) else None
    done = skipped = 0
    for module in model.modules():
        if type(module) is not nn.Linear or "quantized" in module.__dict__:
            continue
        weight = module.weight
        if weight.device.type != "cpu":
            raise ValueError(f"quantize {kind} runs on a CPU; the model is on {weight.device}")
        int4 = kind == "int4" and module is not head and weight.shape[1] % GROUP == 0
        make = _int4 if int4 else _int8
        try:
            kernel = make(weight)
            kernel(torch.zeros(1, weight.shape[1], dtype=weight.dtype))  # the kernel takes it
        except RuntimeError:
            skipped += 1
            continue
        module.__dict__["quantized"] = kernel
        module.forward = types.MethodType(_forward, module)  # type: ignore[method-assign]
        done += 1
    return done, skipped
