"""Preference tuning (task 'dpo'): data, reference log-probabilities, loss and metrics.

Direct Preference Optimization (Rafailov et al., 2023) trains the policy pi to raise the
likelihood of a preferred reply y_w over a non-preferred one y_l, relative to a frozen
reference policy pi_ref:

    z = (log pi(y_w|x) - log pi_ref(y_w|x)) - (log pi(y_l|x) - log pi_ref(y_l|x))
    loss = -(1 - eps) * log sigmoid(beta * z) - eps * log sigmoid(-beta * z) + alpha * nll(y_w)

(eps: `dpo.label_smoothing`, 0 by default: plain sigmoid DPO; alpha: `dpo.sft_weight`, 0 by
default, with nll(y_w) the preferred reply's mean per-token negative log-likelihood: SFT-
regularised DPO, as RPO (Pang et al., 2024) and TRL's `rpo_alpha`. Plain DPO only widens the
gap, and can widen it by pushing both replies down; the term keeps the preferred one likely). `beta * (log pi - log pi_ref)`
is a reply's implicit reward; reward accuracy is the share of pairs whose preferred reply has
the higher reward, the reward margin the mean difference.

A preference example (`input` / `preferred_output` / `non_preferred_output`, validated by
`tuneforge.data`) is encoded as two chat examples by `tokenize.encode_preference`, with the
masks of supervised fine-tuning: log pi(y|x) sums over exactly the tokens SFT would train.

The reference is the starting model (the base, or the `--from` parent): its log-probabilities
of every pair are computed once, before the first step, with the run's own model, dtype and
forward, and kept with the examples (for a new LoRA adapter this is the base with the adapter
disabled, exactly: the adapter's B starts at zero). No second model is held in memory and no reference forward
runs during training; a resumed run recomputes them from the same starting weights. Under
data parallelism the processes split that pass and sum its results.

`PreferenceLoss` has the interface of `CausalLMLoss` (forward -> loss sum, count, hits, plus
summed statistics; `collate`; `n_targets`; `eval_sums`; `metrics`), so the loop does not know
it trains preferences. Chosen and rejected replies go through one forward pass, stacked.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from tuneforge.modeling.load import base_causal_lm, body_and_head
from tuneforge.tokenize import (
    IGNORE_INDEX,
    Encoded,
    FormatMismatch,
    collate_padded,
    encode_preference,
    fit_length,
)
from tuneforge.training.data import TokenizedSet, read_examples
from tuneforge.training.distributed import Processes


@dataclass
class PreferencePair:
    """One preference example: the prompt with its preferred (chosen) and non-preferred
    (rejected) reply, encoded, and the reference's summed log-probability of each reply."""

    chosen: Encoded
    rejected: Encoded
    ref_chosen: float = 0.0
    ref_rejected: float = 0.0

    @property
    def num_trained(self) -> int:
        return self.chosen.num_trained + self.rejected.num_trained

    def __len__(self) -> int:  # the padded width this pair needs in a batch
        return max(len(self.chosen), len(self.rejected))


def read_preferences(
    path: str | Path, tokenizer: Any, max_length: int, too_long: str
) -> TokenizedSet:
    """Encode every preference example of a file as a `PreferencePair`.

    Both conversations must fit `max_length` ("drop": the pair is dropped; "truncate": each is
    cut, and a pair left without a trained token on either side is skipped). A line that is
    not a preference example is an error naming it.
    """
    out = TokenizedSet()
    for line, row in read_examples(path):
        out.n_read += 1
        try:
            chosen, rejected = encode_preference(row, tokenizer)
        except FormatMismatch as err:
            raise err.at(f"{path}:{line}") from None
        except ValueError as err:
            raise ValueError(f"{path}:{line}: {err}") from None
        if chosen.num_trained == 0 or rejected.num_trained == 0:
            out.n_no_target += 1
            continue
        fitted = [fit_length(e, max_length, too_long) for e in (chosen, rejected)]
        if fitted[0] is None or fitted[1] is None:
            too_long_pair = max(len(chosen), len(rejected)) > max_length and too_long == "drop"
            if too_long_pair:
                out.n_too_long_dropped += 1
            else:
                out.n_no_target += 1
            continue
        out.n_truncated += fitted[0].truncated or fitted[1].truncated
        # A TokenizedSet holds any length-bearing examples (as classification's do).
        out.examples.append(cast(Encoded, PreferencePair(fitted[0], fitted[1])))
    return out


def collate_pairs(pairs: Sequence[PreferencePair], pad_id: int) -> dict[str, torch.Tensor]:
    """One batch of B pairs as 2B right-padded rows, chosen replies first.

    input_ids, labels, attention_mask: (2B, T) (rows 0..B-1 chosen, B..2B-1 rejected);
    ref_chosen, ref_rejected: (B,) the reference's summed log-probabilities.
    """
    rows = [p.chosen for p in pairs] + [p.rejected for p in pairs]
    batch = collate_padded(rows, pad_id, pad_to_multiple_of=8)
    batch["ref_chosen"] = torch.tensor([p.ref_chosen for p in pairs], dtype=torch.float64)
    batch["ref_rejected"] = torch.tensor([p.ref_rejected for p in pairs], dtype=torch.float64)
    return batch


def _chunk_logps(head: nn.Module, h: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return -F.cross_entropy(head(h).float(), t, reduction="none")  # (n,)


def trained_counts(batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """(R,) the number of trained tokens of each row (as `sequence_logps` sums them)."""
    return (batch["labels"][:, 1:] != IGNORE_INDEX).sum(dim=1)


def sequence_logps(
    model: nn.Module, batch: dict[str, torch.Tensor], chunk: int = 1024
) -> torch.Tensor:
    """(R,) summed log-probability of each row's trained tokens, in fp32.

    The same shift and mask as `causal_lm_loss` (position t predicts t+1; labels
    IGNORE_INDEX are not counted); only trained positions go through the head, `chunk` rows
    of logits at a time (recomputed in backward, so one (chunk, V) block is alive at a time).
    """
    if getattr(base_causal_lm(model).config, "final_logit_softcapping", None):
        raise NotImplementedError("models with logit soft-capping are not supported yet")
    body, head = body_and_head(model)
    input_ids = batch["input_ids"]
    targets = batch["labels"][:, 1:]  # (R, T-1)
    mask = targets != IGNORE_INDEX  # (R, T-1)
    hidden = body(
        input_ids=input_ids, attention_mask=batch.get("attention_mask"), use_cache=False
    ).last_hidden_state  # (R, T, H)
    selected = hidden[:, :-1][mask]  # (N, H)
    flat_targets = targets[mask]  # (N,)
    rows = torch.arange(input_ids.shape[0], device=input_ids.device)[:, None].expand_as(mask)
    row_of = rows[mask]  # (N,) the row of each trained position
    parts = []
    for start in range(0, selected.shape[0], chunk):
        h, t = selected[start : start + chunk], flat_targets[start : start + chunk]
        if torch.is_grad_enabled():
            parts.append(checkpoint(_chunk_logps, head, h, t, use_reentrant=False))
        else:
            parts.append(_chunk_logps(head, h, t))
    token_logps = torch.cat(parts) if parts else selected.new_zeros(0, dtype=torch.float32)
    out = torch.zeros(input_ids.shape[0], dtype=torch.float32, device=input_ids.device)
    return out.index_add(0, row_of, token_logps.float())  # (R,)


def dpo_loss(
    chosen: torch.Tensor,
    rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    beta: float,
    label_smoothing: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-pair sigmoid DPO loss and implicit rewards, all (B,).

    chosen, rejected: the policy's summed log-probabilities of each reply; ref_*: the
    reference's. Returns (loss, chosen_reward, rejected_reward), reward = beta * (log pi -
    log pi_ref).
    """
    chosen_reward = beta * (chosen - ref_chosen)
    rejected_reward = beta * (rejected - ref_rejected)
    z = chosen_reward - rejected_reward
    loss = -(1 - label_smoothing) * F.logsigmoid(z) - label_smoothing * F.logsigmoid(-z)
    return loss, chosen_reward.detach(), rejected_reward.detach()


class PreferenceLoss(nn.Module):
    """Summed DPO loss over pairs; wrap this (not the model) in DDP."""

    def __init__(
        self, model: nn.Module, beta: float, label_smoothing: float = 0.0, sft_weight: float = 0.0
    ):
        super().__init__()
        self.model = model
        self.beta = beta
        self.label_smoothing = label_smoothing
        self.sft_weight = sft_weight

    def _sums(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, Any]]:
        logps = sequence_logps(self.model, batch)  # (2B,)
        b = logps.shape[0] // 2
        chosen, rejected = logps[:b], logps[b:]
        ref_c = batch["ref_chosen"].to(logps.dtype)
        ref_r = batch["ref_rejected"].to(logps.dtype)
        loss, r_c, r_r = dpo_loss(chosen, rejected, ref_c, ref_r, self.beta, self.label_smoothing)
        if self.sft_weight:
            chosen_tokens = trained_counts(batch)[:b].clamp(min=1).to(chosen.dtype)
            loss = loss - self.sft_weight * chosen / chosen_tokens
        loss_sum = loss.sum()
        sums = {
            "loss_sum": loss_sum.detach(),
            "n": torch.tensor(b, device=logps.device),
            "correct": (r_c > r_r).sum(),
            "margin_sum": (r_c - r_r).sum(),
            "chosen_reward_sum": r_c.sum(),
            "rejected_reward_sum": r_r.sum(),
            "chosen_logps_sum": chosen.detach().sum(),
            "rejected_logps_sum": rejected.detach().sum(),
        }
        return loss_sum, sums

    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[Any, ...]:
        """(loss sum, pairs, pairs ranked right, the summable statistics of `metrics`)."""
        loss_sum, sums = self._sums(batch)
        return loss_sum, sums["n"], sums["correct"], sums

    @staticmethod
    def collate(examples: list, pad_id: int) -> dict[str, torch.Tensor]:
        """A batch of pairs (`collate_pairs`)."""
        return collate_pairs(examples, pad_id)

    @staticmethod
    def n_targets(batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Pairs of a batch: the loss is a mean over pairs."""
        return torch.tensor(batch["ref_chosen"].numel())

    def eval_sums(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return self._sums(batch)[1]

    @staticmethod
    def metrics(sums: dict[str, torch.Tensor], prefix: str) -> dict[str, Any]:
        """Loss, reward accuracy and margin, mean rewards and summed reply log-probs."""
        n = max(1, int(sums["n"].item()))
        return {
            f"{prefix}_loss": sums["loss_sum"].item() / n,
            f"{prefix}_reward_accuracy": sums["correct"].item() / n,
            f"{prefix}_reward_margin": sums["margin_sum"].item() / n,
            f"{prefix}_chosen_reward": sums["chosen_reward_sum"].item() / n,
            f"{prefix}_rejected_reward": sums["rejected_reward_sum"].item() / n,
            f"{prefix}_chosen_logps": sums["chosen_logps_sum"].item() / n,
            f"{prefix}_rejected_logps": sums["rejected_logps_sum"].item() / n,
        }


@torch.no_grad()
def compute_reference(
    model: nn.Module,
    pair_sets: Sequence[Sequence[PreferencePair]],
    pad_id: int,
    proc: Processes,
    autocast: Callable[[], Any],
    batch_size: int = 8,
) -> None:
    """Set `ref_chosen` / `ref_rejected` of every pair: the starting model's log-probs.

    Runs `model` as it is now (call it before the first step: the starting weights), in eval
    mode, under the run's `autocast`. For a new LoRA adapter this is exactly the base with
    the adapter disabled (the adapter's B matrix starts at zero); continuing an adapter
    fine-tune (`--from`), it is that fine-tune, the usual DPO reference after SFT.

    Under data parallelism each process scores every world_size-th batch and the results are
    summed over processes, so every process ends with every pair's numbers, each computed
    once, by the same batches as on one process.
    """
    pairs = [p for group in pair_sets for p in group]
    batches = []  # batches of indices into `pairs`, length-sorted within each set
    offset = 0
    for group in pair_sets:
        order = sorted(range(len(group)), key=lambda i: len(group[i]))
        batches += [
            [offset + i for i in order[start : start + batch_size]]
            for start in range(0, len(order), batch_size)
        ]
        offset += len(group)
    logps = torch.zeros(len(pairs), 2, dtype=torch.float64)  # (P, chosen / rejected)
    was_training = model.training
    model.eval()
    try:
        for items in batches[proc.rank :: proc.world_size]:
            batch = collate_pairs([pairs[i] for i in items], pad_id)
            batch = {k: v.to(proc.device) for k, v in batch.items()}
            with autocast():
                out = sequence_logps(model, batch).double().cpu()  # (2B,)
            logps[items] = out.view(2, -1).T
    finally:
        model.train(was_training)
    logps = proc.all_sum(logps).cpu()
    for p, (chosen, rejected) in zip(pairs, logps.tolist(), strict=True):
        p.ref_chosen, p.ref_rejected = chosen, rejected
