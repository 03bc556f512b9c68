"""Logits -> next tokens for a batch of sequences with different sampling parameters.

The batch-wide part is vectorised: penalties, temperature and nucleus (top-p) filtering turn
logits (B, V) into probabilities (B, V). Drawing a token is per row, because each row may
have its own seeded generator (OpenAI's `seed`) or a JSON constraint.

Penalties follow OpenAI's definition over the tokens generated so far:
    logit[t] -= frequency_penalty * count[t] + presence_penalty * (count[t] > 0)
Reported logprobs are the model's own (log-softmax of the raw logits), as in vLLM.
"""

from __future__ import annotations

from collections.abc import Callable

import torch


def adjusted_logits(
    logits: torch.Tensor,  # (B, V) float32
    counts: torch.Tensor,  # (B, V) float32: times each token was generated
    presence: torch.Tensor,  # (B,)
    frequency: torch.Tensor,  # (B,)
) -> torch.Tensor:
    """Logits with presence / frequency penalties applied (B, V)."""
    if bool((presence != 0).any()) or bool((frequency != 0).any()):
        logits = logits - frequency[:, None] * counts - presence[:, None] * (counts > 0).float()
    return logits


def probabilities(
    logits: torch.Tensor,  # (B, V) penalised logits
    temperature: torch.Tensor,  # (B,), 0 = greedy (those rows are returned unscaled)
    top_p: torch.Tensor,  # (B,)
) -> torch.Tensor:
    """Softmax at each row's temperature, restricted to its top-p nucleus (B, V)."""
    temp = torch.where(temperature > 0, temperature, torch.ones_like(temperature))
    probs = torch.softmax(logits / temp[:, None], dim=-1)
    if bool((top_p < 1).any()):
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        # Drop a token when the mass before it already reaches top_p (the first always stays).
        drop = (sorted_probs.cumsum(dim=-1) - sorted_probs) >= top_p[:, None]
        sorted_probs = sorted_probs.masked_fill(drop, 0.0)
        probs = torch.zeros_like(probs).scatter_(-1, order, sorted_probs)
        probs = probs / probs.sum(dim=-1, keepdim=True)
    return probs


def draw(
    probs: torch.Tensor,  # (V,) one row
    logits: torch.Tensor,  # (V,) the row's penalised logits (for greedy)
    greedy: bool,
    generator: torch.Generator | None,
    allowed: Callable[[int], bool] | None = None,
    max_rejections: int = 64,
) -> int | None:
    """One token for one row; with `allowed`, only tokens it accepts (None if none is).

    Sampling with a constraint redraws after masking each rejected token, which is exactly
    sampling from the distribution restricted to allowed tokens; after `max_rejections`
    the allowed set is computed over the whole vocabulary.
    """
    if allowed is None:
        if greedy:
            return int(logits.argmax())
        return int(torch.multinomial(probs, 1, generator=generator))
    if greedy:
        order = logits.argsort(descending=True).tolist()
        return next((t for t in order if allowed(t)), None)
    probs = probs.clone()
    for _ in range(max_rejections):
        if float(probs.sum()) <= 0:
            break
        token = int(torch.multinomial(probs, 1, generator=generator))
        if allowed(token):
            return token
        probs[token] = 0.0
    mask = torch.tensor([allowed(t) for t in range(probs.numel())], device=probs.device)
    probs = probs * mask
    if float(probs.sum()) <= 0:
        # Nucleus filtering can leave no allowed token: fall back to the best allowed logit.
        candidates = logits.masked_fill(~mask, float("-inf"))
        return int(candidates.argmax()) if bool(mask.any()) else None
    return int(torch.multinomial(probs, 1, generator=generator))
