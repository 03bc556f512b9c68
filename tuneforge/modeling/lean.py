"""Leaner training forwards: Llama-style blocks keep less for backward, LoRA layers make
fewer full-width temporaries.

What autograd keeps for backward is most of a fine-tune's memory beyond the weights (on
SmolLM2-135M, LoRA in bf16: about 0.75 MB per token over 30 blocks). Two parts of a Llama
block keep more than their backward needs:

- RMSNorm computes in fp32 and the multiplication by rsqrt keeps the fp32 copy of its input
  (4 bytes a channel, twice per block). `_RMSNormFunction` keeps the input in its own dtype
  and the (..., 1) rsqrt, and recomputes the normalised input in backward.
- The SwiGLU MLP's `silu(gate) * up` keeps gate (for silu), silu(gate) and up (for the
  product). `_SiluMulFunction` keeps gate and up only, and recomputes silu in backward.

Both compute the forward with the same operations, in the same order, as the modules they
replace (outputs are bit-identical). The norm's backward is computed in fp32 and rounded
once; the MLP's runs the ops autograd would run on the unfused forward (a dozen fp32 passes
over the (tokens, intermediate) activations cost as much as a block's attention). Only
the listed architectures' modules are changed (others' forwards differ: Gemma's norm scales
by 1 + weight).

A peft LoRA linear computes `base(x) + lora_B(lora_A(dropout(x))) * scaling`: the adapter's
(..., out) output, its scaled copy and the sum are three full-width tensors per layer and as
many passes over memory, which on a CPU cost a third as much as the layer's own matmul.
`_LoraLinearFunction` adds the adapter's product into the base output inside one matmul
(`addmm_` with alpha = scaling) and computes the backward by hand: the same sum, rounded once
instead of three times. It applies to the plain case (one active adapter, no dropout, no
DoRA-like variant, not merged, an `nn.Linear` base); any other call runs peft's forward.

`lean_saves` changes the modules it knows and leaves anything else alone.

Example:
    >>> lean_saves(model)  # SmolLM2-135M with LoRA on every projection
    {'rms_norm': 61, 'silu_mul': 30, 'lora_linear': 210}
"""

from __future__ import annotations

import types
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

# The modules whose forward is Llama's: `weight * (x.float() * rsqrt(mean(x^2) + eps)).to(x.dtype)`
# and `down_proj(act_fn(gate_proj(x)) * up_proj(x))`.
RMS_NORMS = {"LlamaRMSNorm", "MistralRMSNorm", "Qwen2RMSNorm", "Qwen3RMSNorm"}
SWIGLU_MLPS = {"LlamaMLP", "MistralMLP", "Qwen2MLP", "Qwen3MLP"}


class _RMSNormFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
        # x: (..., H); rstd: (..., 1) in fp32
        x32 = x.to(torch.float32)
        rstd = torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
        ctx.save_for_backward(x, weight, rstd)
        return weight * (x32 * rstd).to(x.dtype)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, weight, rstd = ctx.saved_tensors
        xhat = x.to(torch.float32) * rstd  # (..., H)
        grad_weight = None
        if ctx.needs_input_grad[1]:
            rows = grad.float() * xhat.to(x.dtype).float()
            grad_weight = rows.reshape(-1, rows.shape[-1]).sum(0).to(weight.dtype)
        grad_x = None
        if ctx.needs_input_grad[0]:
            g = grad.float() * weight.float()  # d loss / d xhat
            grad_x = (rstd * (g - xhat * (g * xhat).mean(-1, keepdim=True))).to(x.dtype)
        return grad_x, grad_weight, None


class _SiluMulFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(gate, up)
        return F.silu(gate) * up

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        # The ops autograd would run on the unfused forward (each computes in fp32 inside and
        # rounds its output): four passes over (..., intermediate), not a dozen in fp32.
        gate, up = ctx.saved_tensors
        grad_gate = grad_up = None
        if ctx.needs_input_grad[0]:
            grad_gate = torch.ops.aten.silu_backward(grad * up, gate)
        if ctx.needs_input_grad[1]:
            grad_up = grad * F.silu(gate)
        return grad_gate, grad_up


class _LoraLinearFunction(torch.autograd.Function):
    """x W^T + b + scaling (x A^T) B^T, all operands in one dtype (the compute dtype)."""

    @staticmethod
    def forward(
        ctx: Any,
        x: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        lora_a: torch.Tensor,
        lora_b: torch.Tensor,
        scaling: float,
    ) -> torch.Tensor:
        # x: (..., K), weight: (N, K), lora_a: (r, K), lora_b: (N, r)
        x2 = x.reshape(-1, x.shape[-1])  # (M, K)
        xa = x2 @ lora_a.T  # (M, r)
        out = F.linear(x2, weight, bias)  # (M, N)
        out.addmm_(xa, lora_b.T, alpha=scaling)
        ctx.save_for_backward(x2, xa, weight, lora_a, lora_b)
        ctx.scaling, ctx.has_bias = scaling, bias is not None
        return out.view(*x.shape[:-1], weight.shape[0])

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x2, xa, weight, lora_a, lora_b = ctx.saved_tensors
        s = ctx.scaling
        g = grad.reshape(-1, grad.shape[-1])  # (M, N)
        need_x, need_w, need_bias, need_a, need_b = ctx.needs_input_grad[:5]
        gb = g @ lora_b if (need_x or need_a) else None  # (M, r)
        grad_x = grad_w = grad_bias = grad_a = grad_b = None
        if need_x:
            grad_x = (g @ weight).addmm_(gb, lora_a, alpha=s).view(*grad.shape[:-1], -1)
        if need_w:
            grad_w = g.T @ x2
        if need_bias and ctx.has_bias:
            grad_bias = g.sum(0)
        if need_a:
            assert gb is not None
            grad_a = (gb.T @ x2).mul_(s)
        if need_b:
            grad_b = (g.T @ xa).mul_(s)
        return grad_x, grad_w, grad_bias, grad_a, grad_b, None


def _lora_linear_forward(self: Any, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
    """peft's LoRA `Linear.forward`, fused where it is the plain case (see the module doc)."""
    adapters = self.active_adapters
    plain = (
        not args
        and not kwargs
        and not self.disable_adapters
        and not self.merged
        and len(adapters) == 1
        and adapters[0] in self.lora_A
        and adapters[0] not in self.lora_variant
        and isinstance(self.lora_dropout[adapters[0]], nn.Identity)
    )
    if not plain:
        return type(self).forward(self, x, *args, **kwargs)
    name = adapters[0]
    base = self.base_layer
    weight, bias = base.weight, base.bias
    a, b = self.lora_A[name].weight, self.lora_B[name].weight
    if torch.is_autocast_enabled(x.device.type):
        dtype = torch.get_autocast_dtype(x.device.type)
    else:
        dtype = weight.dtype
    # The casts stay outside the function, so autograd returns fp32 adapters their fp32 grads.
    x, weight, a, b = (t.to(dtype) for t in (x, weight, a, b))
    bias = bias.to(dtype) if bias is not None else None
    with torch.autocast(x.device.type, enabled=False):
        return _LoraLinearFunction.apply(x, weight, bias, a, b, self.scaling[name])


def _is_plain_lora_linear(module: nn.Module) -> bool:
    from peft.tuners.lora.layer import Linear

    return type(module) is Linear and type(module.base_layer) is nn.Linear


def _rms_norm_forward(self: nn.Module, hidden_states: torch.Tensor) -> torch.Tensor:
    return _RMSNormFunction.apply(hidden_states, self.weight, self.variance_epsilon)


def _swiglu_forward(self: Any, x: torch.Tensor) -> torch.Tensor:
    return self.down_proj(_SiluMulFunction.apply(self.gate_proj(x), self.up_proj(x)))


def _is_silu(act: Any) -> bool:
    # transformers' ACT2FN["silu"] is its own SiLUActivation (F.silu), not nn.SiLU.
    return isinstance(act, nn.SiLU) or type(act).__name__ == "SiLUActivation"


def lean_saves(model: nn.Module) -> dict[str, int]:
    """Give `model`'s RMSNorms and SwiGLU MLPs (of the architectures listed above) and its
    peft LoRA linears the leaner forwards, in place; return how many modules of each kind
    changed."""
    changed = {"rms_norm": 0, "silu_mul": 0, "lora_linear": 0}
    for module in model.modules():
        name = type(module).__name__
        if hasattr(module, "lora_A") and _is_plain_lora_linear(module):
            module.forward = types.MethodType(_lora_linear_forward, module)
            changed["lora_linear"] += 1
        elif name in RMS_NORMS and hasattr(module, "variance_epsilon"):
            module.forward = types.MethodType(_rms_norm_forward, module)
            changed["rms_norm"] += 1
        elif name in SWIGLU_MLPS and _is_silu(getattr(module, "act_fn", None)):
            module.forward = types.MethodType(_swiglu_forward, module)
            changed["silu_mul"] += 1
    return changed
