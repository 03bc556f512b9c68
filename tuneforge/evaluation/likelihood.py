"""Likelihood metrics per example: summed loss, trained tokens and argmax hits.

The numbers are training's: the same encoding (`tokenize.encode`), the same shift and mask
(labels[:, 1:] != IGNORE_INDEX, as `training.loss.causal_lm_loss`), and the same chunked head
cross-entropy (`training.loss.head_cross_entropy`), applied row by row so each example keeps its
own sums (the paired bootstrap resamples examples). A test checks that the rows add up to
`causal_lm_loss` on the same batch.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from tuneforge.modeling.attention import drop_padding_mask
from tuneforge.modeling.load import base_causal_lm, body_and_head
from tuneforge.tokenize import IGNORE_INDEX, Encoded, collate_padded
from tuneforge.training.loss import head_cross_entropy


@torch.no_grad()
def example_losses(
    model: torch.nn.Module,
    examples: Sequence[Encoded],
    pad_id: int,
    batch_size: int = 16,
    max_batch_tokens: int = 16384,
) -> list[tuple[float, int, int]]:
    """(summed loss, trained tokens, correct argmax predictions) for each example, in order.

    Examples are batched by length (longest first) under `max_batch_tokens` padded tokens.
    """
    if getattr(base_causal_lm(model).config, "final_logit_softcapping", None):
        raise NotImplementedError("models with logit soft-capping are not supported yet")
    body, head = body_and_head(model)
    device = next(model.parameters()).device
    order = sorted(range(len(examples)), key=lambda i: -len(examples[i]))
    out: list[tuple[float, int, int]] = [(0.0, 0, 0)] * len(examples)
    start = 0
    while start < len(order):
        longest = len(examples[order[start]])
        size = max(1, min(batch_size, max_batch_tokens // max(1, longest)))
        items = order[start : start + size]
        start += size
        batch = collate_padded([examples[i] for i in items], pad_id, pad_to_multiple_of=8)
        input_ids = batch["input_ids"].to(device)
        # Right padding: the causal mask suffices (as in training's loss).
        attention_mask = drop_padding_mask(model, batch["attention_mask"].to(device))
        hidden = body(
            input_ids=input_ids, attention_mask=attention_mask, use_cache=False
        ).last_hidden_state  # (B, T, H)
        targets = batch["labels"][:, 1:].to(device)  # (B, T-1): position t predicts t+1
        mask = targets != IGNORE_INDEX  # (B, T-1)
        for row, i in enumerate(items):
            m = mask[row]
            loss, correct = head_cross_entropy(head, hidden[row, :-1][m], targets[row][m])
            out[i] = (loss.item(), int(m.sum().item()), int(correct.item()))
    return out
