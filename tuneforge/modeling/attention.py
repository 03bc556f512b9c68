"""Causal attention for training on a CPU in bf16: blocked matmuls instead of SDPA's kernel.

PyTorch's CPU flash-attention kernel does not use the bf16 matrix units: on SmolLM2-135M
(9 query heads, 3 key/value heads, head size 64) at batches of 8 x 352 tokens its forward
and backward took 57 ms a layer, more than all the block's linear layers together.
`_CausalAttention` computes the same attention with batched bf16 matmuls (which run on
them), query block by query block so that the blocks above the diagonal are never
computed, and recomputes the probabilities in backward instead of keeping them (it keeps
what the flash kernel keeps: q, k, v and the output). Measured at that shape: 31 ms
forward and backward, 13 ms forward alone (flash: 21); error against an fp64 reference of
the output and of q/k/v's gradients the same as the flash kernel's (0.2-0.6%).

The scores are rounded to bf16 before the softmax (the flash kernel keeps them in fp32),
as they are in transformers' eager attention under autocast.

`use_block_attention` installs it on a model of the architectures listed below; it applies
to a call only where it computes the same function as SDPA (bf16 on a CPU, causal, no mask,
no dropout, no soft-capping or sliding window, a query as long as the keys), and any other
call (generation with a cache, fp32, a GPU, a packed batch's mask) goes to SDPA. Right
padding needs no mask in a causal model, since no real token attends to a later position:
`drop_padding_mask` takes such a mask away, so that padded batches take this path.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from tuneforge.modeling.load import base_causal_lm

NAME = "tuneforge_blocks"
BLOCK = 128  # query rows per block: 96-128 measured fastest at 350-token rows
# Decoder-only text models whose attention is causal self-attention and nothing else, and
# whose positions do not depend on the padding mask: their right padding needs no mask.
CAUSAL_MODELS = {"llama", "mistral", "qwen2", "qwen3"}


def _rows(x: torch.Tensor, start: int, stop: int, n_kv: int) -> torch.Tensor:
    """(B, Hq, T, D)[:, :, start:stop] as (B * n_kv, group * (stop - start), D): the query
    heads that share a key/value head, stacked along the rows of one matrix."""
    b, h, _, d = x.shape
    return x[:, :, start:stop].reshape(b * n_kv, (h // n_kv) * (stop - start), d)


def _probs(q: torch.Tensor, k: torch.Tensor, start: int, stop: int, group: int) -> torch.Tensor:
    """Softmax of the causal scores of query block [start, stop) against keys [0, stop).

    q: (B * n_kv, group * n, D), already scaled; k: (B * n_kv, T, D)
    -> (B * n_kv, group * n, stop)"""
    n = stop - start
    scores = torch.bmm(q, k[:, :stop].transpose(1, 2))
    above = torch.ones(n, n, dtype=torch.bool, device=q.device).triu_(1)
    scores.view(-1, group, n, stop)[..., start:stop].masked_fill_(above, float("-inf"))
    return torch.softmax(scores, dim=-1)


class _CausalAttention(torch.autograd.Function):
    """softmax(q k^T * scale + causal) v, q: (B, Hq, T, D), k, v: (B, Hkv, T, D)."""

    @staticmethod
    def forward(
        ctx: Any, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, block: int
    ) -> torch.Tensor:
        b, h, t, d = q.shape
        n_kv = k.shape[1]
        group = h // n_kv
        qs = q * scale
        k2, v2 = k.reshape(b * n_kv, t, d), v.reshape(b * n_kv, t, d)
        out = torch.empty(b, n_kv, group, t, d, dtype=q.dtype, device=q.device)
        for start in range(0, t, block):
            stop = min(t, start + block)
            p = _probs(_rows(qs, start, stop, n_kv), k2, start, stop, group)
            out[:, :, :, start:stop] = torch.bmm(p, v2[:, :stop]).view(
                b, n_kv, group, stop - start, d
            )
        out = out.view(b, h, t, d)
        ctx.save_for_backward(qs, k, v, out)
        ctx.scale, ctx.block = scale, block
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        qs, k, v, out = ctx.saved_tensors
        b, h, t, d = qs.shape
        n_kv = k.shape[1]
        group = h // n_kv
        k2, v2 = k.reshape(b * n_kv, t, d), v.reshape(b * n_kv, t, d)
        grad = grad.contiguous()
        # rowsum(dO * O) = rowsum(P * dP): the softmax backward's row term, from the output
        delta = (grad.float() * out.float()).sum(-1, keepdim=True).to(qs.dtype)  # (B, Hq, T, 1)
        grad_q = torch.empty(b, n_kv, group, t, d, dtype=qs.dtype, device=qs.device)
        grad_k = torch.zeros(b * n_kv, t, d, dtype=torch.float32, device=qs.device)
        grad_v = torch.zeros(b * n_kv, t, d, dtype=torch.float32, device=qs.device)
        for start in range(0, t, ctx.block):
            stop = min(t, start + ctx.block)
            qb, gb = _rows(qs, start, stop, n_kv), _rows(grad, start, stop, n_kv)
            p = _probs(qb, k2, start, stop, group)  # (B * n_kv, group * n, stop)
            grad_v[:, :stop] += torch.bmm(p.transpose(1, 2), gb)
            dp = torch.bmm(gb, v2[:, :stop].transpose(1, 2))
            ds = dp.sub_(_rows(delta, start, stop, n_kv)).mul_(p)
            grad_q[:, :, :, start:stop] = torch.bmm(ds, k2[:, :stop]).view(
                b, n_kv, group, stop - start, d
            )
            grad_k[:, :stop] += torch.bmm(ds.transpose(1, 2), qb)
        return (
            grad_q.view(b, h, t, d).mul_(ctx.scale),
            grad_k.view(b, n_kv, t, d).to(k.dtype),
            grad_v.view(b, n_kv, t, d).to(v.dtype),
            None,
            None,
        )


def _applies(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float,
    is_causal: bool | None,
    kwargs: dict[str, Any],
) -> bool:
    causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
    t = query.shape[2]
    window = kwargs.get("sliding_window")
    return (
        query.device.type == "cpu"
        and query.dtype == torch.bfloat16
        and attention_mask is None
        and not dropout
        and bool(causal)
        and t > 1
        and key.shape[2] == t
        and query.shape[1] % key.shape[1] == 0
        and kwargs.get("softcap") is None
        and kwargs.get("position_bias") is None
        and kwargs.get("s_aux") is None
        and (window is None or window >= t)
    )


def block_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    is_causal: bool | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """transformers' attention interface: (B, T, Hq, D) outputs, no weights."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if not _applies(module, query, key, attention_mask, dropout, is_causal, kwargs):
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout, scaling, is_causal, **kwargs
        )
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    out = _CausalAttention.apply(query, key, value, scale, BLOCK)
    return out.transpose(1, 2).contiguous(), None


def _register() -> None:
    from transformers import AttentionInterface, AttentionMaskInterface
    from transformers.masking_utils import sdpa_mask

    AttentionInterface.register(NAME, block_attention_forward)
    AttentionMaskInterface.register(NAME, sdpa_mask)  # the masks SDPA would get


def use_block_attention(model: nn.Module) -> bool:
    """Install the blocked attention on `model` (a transformers model, bare or under peft) if
    it is of the architectures listed above and uses SDPA; return whether it did."""
    base = base_causal_lm(model)
    if base.config.model_type not in CAUSAL_MODELS or base.config._attn_implementation != "sdpa":
        return False
    _register()
    base.set_attn_implementation(NAME)
    return True


def drop_padding_mask(model: nn.Module, mask: torch.Tensor | None) -> torch.Tensor | None:
    """None for a (B, T) right-padding mask of a model listed above (the causal mask alone
    gives every real position the same attention); `mask` unchanged otherwise."""
    if mask is None or mask.dim() != 2:
        return mask
    if base_causal_lm(model).config.model_type not in CAUSAL_MODELS:
        return mask
    # Right padding: each row's mask never goes from 0 back to 1.
    if bool((mask[:, 1:] <= mask[:, :-1]).all()) and bool(mask[:, 0].all()):
        return None
    return mask
