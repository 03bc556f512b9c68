"""The training loss, computed only where labels are trained.

The transformer body runs once to give hidden states (B, T, H). The hidden states of the
positions whose next-token label is trained are gathered first (N of them, N <= B*T), and
only those go through the LM head and cross-entropy, in chunks. The (B, T, V) logits tensor
never exists: for a plain linear head the gradient of each chunk is computed right away
(fused linear + cross-entropy), so at most one (chunk, V) block is alive at a time.

All losses are sums; the caller divides by the number of trained tokens of the whole
(accumulated, all-process) batch, which keeps gradient accumulation and data parallelism
exactly equivalent to one large batch.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from tuneforge.modeling.attention import drop_padding_mask
from tuneforge.modeling.load import base_causal_lm, body_and_head
from tuneforge.tokenize import IGNORE_INDEX, collate_padded

# Elements of one (chunk, V) fp32 logits block: 8M elements = 32 MiB (170 rows of a 49k
# vocabulary). The block and its gradient are alive on top of every activation kept for
# backward, so they add to the step's peak; at 170 rows the head's matmul is still large.
CHUNK_ELEMENTS = 2**23


class _LinearCrossEntropy(torch.autograd.Function):
    """sum_i CE(hidden_i @ W^T + b, target_i), with gradients computed chunk by chunk."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, chunk):
        # hidden: (N, H), weight: (V, H), bias: (V,) or None, targets: (N,)
        need_h = hidden.requires_grad
        need_w = weight.requires_grad
        need_b = bias is not None and bias.requires_grad
        loss = torch.zeros((), dtype=torch.float32, device=hidden.device)
        correct = torch.zeros((), dtype=torch.long, device=hidden.device)
        grad_h = torch.empty_like(hidden) if need_h else None
        grad_w = (
            torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_w else None
        )
        grad_b = (
            torch.zeros(bias.shape, dtype=torch.float32, device=bias.device) if need_b else None
        )
        # One (chunk, V) fp32 block (and its compute-dtype twin) for every chunk: a fresh
        # 32 MiB tensor per chunk is a fresh mapping whose pages fault in and are zeroed.
        rows_max, n_vocab = min(chunk, hidden.shape[0]), weight.shape[0]
        block = torch.empty((rows_max, n_vocab), dtype=torch.float32, device=hidden.device)
        twin = None
        if hidden.dtype != torch.float32:
            twin = torch.empty((rows_max, n_vocab), dtype=hidden.dtype, device=hidden.device)
        with torch.autocast(hidden.device.type, enabled=False):
            for start in range(0, hidden.shape[0], chunk):
                h = hidden[start : start + chunk]  # (n, H)
                t = targets[start : start + chunk]  # (n,)
                n = h.shape[0]
                if twin is None:
                    logits = torch.mm(h, weight.T, out=block[:n])  # (n, V)
                else:
                    logits = block[:n].copy_(torch.mm(h, weight.T, out=twin[:n]))
                if bias is not None:
                    logits += bias.float()
                rows = torch.arange(n, device=t.device)
                correct += (logits.argmax(dim=-1) == t).sum()
                target = logits[rows, t]
                top = logits.amax(dim=-1, keepdim=True)  # (n, 1)
                total = logits.sub_(top).exp_().sum(dim=-1, keepdim=True)  # sum exp(x - top)
                loss += (total.log() + top).sum() - target.sum()  # logsumexp - target logit
                if need_h or need_w or need_b:
                    # d(sum CE)/d(logits) = softmax - onehot, computed in place: (n, V)
                    g = logits.div_(total)
                    g[rows, t] -= 1.0
                    if need_b:
                        grad_b += g.sum(0)
                    g_low = g if twin is None else twin[:n].copy_(g)
                    if need_h:
                        torch.mm(g_low, weight, out=grad_h[start : start + n])
                    if need_w:  # accumulate (V, H) in fp32 whatever the compute dtype
                        grad_w.addmm_(g.T, h.float())
        ctx.save_for_backward(grad_h, grad_w, grad_b)
        ctx.weight_dtype = weight.dtype
        ctx.mark_non_differentiable(correct)
        return loss, correct

    @staticmethod
    def backward(ctx, grad_loss, _grad_correct):
        grad_h, grad_w, grad_b = ctx.saved_tensors
        out_h = grad_h * grad_loss.to(grad_h.dtype) if grad_h is not None else None
        out_w = (grad_w * grad_loss).to(ctx.weight_dtype) if grad_w is not None else None
        out_b = (grad_b * grad_loss).to(ctx.weight_dtype) if grad_b is not None else None
        return out_h, out_w, out_b, None, None


def _chunk_ce(
    head: nn.Module, h: torch.Tensor, t: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    logits = head(h).float()  # (n, V)
    loss = F.cross_entropy(logits, t, reduction="sum")
    return loss, (logits.argmax(dim=-1) == t).sum()


def head_cross_entropy(
    head: nn.Module, hidden: torch.Tensor, targets: torch.Tensor, chunk: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed cross-entropy and number of argmax hits of `head(hidden)` against `targets`.

    hidden: (N, H), targets: (N,). A plain `nn.Linear` head takes the fused path; any other
    head (e.g. one wrapped by an adapter) is applied per chunk under activation checkpointing,
    so only one (chunk, V) block of logits is kept.
    """
    if chunk is None:
        chunk = max(64, CHUNK_ELEMENTS // head.weight.shape[0])
    if type(head) is nn.Linear:
        weight, bias = head.weight, head.bias
        if torch.is_autocast_enabled(hidden.device.type):
            dtype = torch.get_autocast_dtype(hidden.device.type)
            hidden, weight = hidden.to(dtype), weight.to(dtype)
            bias = bias.to(dtype) if bias is not None else None
        elif hidden.dtype != weight.dtype:
            hidden = hidden.to(weight.dtype)
        return _LinearCrossEntropy.apply(hidden, weight, bias, targets, chunk)
    loss = torch.zeros((), dtype=torch.float32, device=hidden.device)
    correct = torch.zeros((), dtype=torch.long, device=hidden.device)
    for start in range(0, hidden.shape[0], chunk):
        h, t = hidden[start : start + chunk], targets[start : start + chunk]
        if torch.is_grad_enabled():
            part, hits = checkpoint(_chunk_ce, head, h, t, use_reentrant=False)
        else:
            part, hits = _chunk_ce(head, h, t)
        loss, correct = loss + part, correct + hits
    return loss, correct


def causal_lm_loss(
    model: nn.Module,
    input_ids: torch.Tensor,
    labels: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    position_ids: torch.Tensor | None = None,
    chunk: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Next-token loss over the trained positions of a batch.

    Args:
        model: any Hugging Face causal LM, optionally wrapped by peft.
        input_ids: (B, T) token ids.
        labels: (B, T) unshifted labels, `IGNORE_INDEX` where not trained.
        attention_mask: (B, T) padding mask or (B, 1, T, T) block-causal mask for packing.
        position_ids: (B, T), restarting at 0 for each packed example.
        chunk: rows of logits per chunk (default: about 32 MiB of fp32 logits).

    Returns:
        (loss_sum, n_trained, n_correct): summed cross-entropy (fp32 scalar), number of trained
        positions and of positions where the argmax prediction is the label.
    """
    body, head = body_and_head(model)
    targets = labels[:, 1:]  # (B, T-1): position t predicts token t+1
    mask = targets != IGNORE_INDEX  # (B, T-1)
    n_trained = mask.sum()
    attention_mask = drop_padding_mask(model, attention_mask)  # right padding: causal suffices
    kwargs = {"input_ids": input_ids, "attention_mask": attention_mask, "use_cache": False}
    if position_ids is not None:
        kwargs["position_ids"] = position_ids
    hidden = body(**kwargs).last_hidden_state  # (B, T, H)
    selected = hidden[:, :-1][mask]  # (N, H), N = n_trained
    if getattr(base_causal_lm(model).config, "final_logit_softcapping", None):
        raise NotImplementedError("models with logit soft-capping are not supported yet")
    loss_sum, n_correct = head_cross_entropy(head, selected, targets[mask], chunk)
    return loss_sum, n_trained, n_correct


class CausalLMLoss(nn.Module):
    """`causal_lm_loss` as a module, so DDP's forward hooks see the whole computation.

    Wrap this (not the bare model) in `DistributedDataParallel`: DDP synchronises gradients
    of parameters used inside its `forward`.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, ...]:
        return causal_lm_loss(
            self.model,
            batch["input_ids"],
            batch["labels"],
            batch.get("attention_mask"),
            batch.get("position_ids"),
        )

    # The objective interface shared with `SequenceClassificationLoss`: the loop calls these
    # and never asks which task it trains.
    @staticmethod
    def collate(examples: list, pad_id: int) -> dict[str, torch.Tensor]:
        """A right-padded batch of encoded examples (unpacked training and evaluation)."""
        return collate_padded(examples, pad_id, pad_to_multiple_of=8)

    @staticmethod
    def n_targets(batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Trained positions of a batch: the normaliser of the step's loss."""
        return (batch["labels"][:, 1:] != IGNORE_INDEX).sum()

    def eval_sums(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Summable statistics of one evaluation batch."""
        loss_sum, n, correct = self(batch)
        return {"loss_sum": loss_sum, "n": n, "correct": correct}

    @staticmethod
    def metrics(sums: dict[str, torch.Tensor], prefix: str) -> dict[str, Any]:
        """Loss, perplexity and token accuracy from summed statistics (OpenAI's names)."""
        n = max(1, int(sums["n"].item()))
        loss = sums["loss_sum"].item() / n
        return {
            f"{prefix}_loss": loss,
            f"{prefix}_perplexity": math.exp(min(loss, 50.0)),
            f"{prefix}_mean_token_accuracy": sums["correct"].item() / n,
        }
