"""Sequence classification on a GPT body: data, batches, loss and metrics (task 'classify').

The model is the base causal LM loaded as a Hugging Face `*ForSequenceClassification`
(`load_classifier`): same body, a new linear `score` head over the hidden state of the last
non-pad token, so the saved folder loads with `AutoModelForSequenceClassification`.
Examples are `{"text": ..., "label": ...}`; labels are class names (ints become strings).

`SequenceClassificationLoss` has the interface of `CausalLMLoss` (forward -> loss sum,
count, hits; `collate`; `n_targets`; `eval_sums`; `metrics`), so the training loop does not
know which task it trains.

Example:
    >>> train = read_classification(Path("intents.jsonl"), tokenizer, max_length=256)
    >>> train.labels
    ['billing', 'card_lost', 'greeting']
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from tuneforge.training.data import TokenizedSet, read_examples


@dataclass
class ClassExample:
    """One tokenized text and its class id."""

    input_ids: list[int]
    label: int
    num_trained: int = 1  # one target per example (TokenizedSet counts "trained tokens")

    def __len__(self) -> int:
        return len(self.input_ids)


def read_labels(path: str | Path) -> list[str]:
    """The sorted distinct labels of a classification file."""
    return sorted({str(row["label"]) for _, row in _rows(path)})


def _rows(path: str | Path) -> list[tuple[int, dict[str, Any]]]:
    rows = read_examples(path)
    for line, row in rows:
        if not isinstance(row.get("text"), str) or row.get("label") is None:
            raise ValueError(f"{path}:{line}: classification needs {{'text': str, 'label': ...}}")
    return rows


def read_classification(
    path: str | Path, tokenizer: Any, labels: list[str], max_length: int, too_long: str
) -> TokenizedSet:
    """Tokenize a classification file; an unknown label is an error naming its line."""
    index = {name: i for i, name in enumerate(labels)}
    out = TokenizedSet()
    for line, row in _rows(path):
        out.n_read += 1
        label = str(row["label"])
        if label not in index:
            raise ValueError(f"{path}:{line}: label {label!r} is not one of {labels}")
        ids = tokenizer(row["text"], add_special_tokens=True)["input_ids"]
        if not ids:
            out.n_no_target += 1
            continue
        if len(ids) > max_length:
            if too_long == "drop":
                out.n_too_long_dropped += 1
                continue
            ids, out.n_truncated = ids[:max_length], out.n_truncated + 1
        out.examples.append(ClassExample(ids, index[label]))
    return out


def collate_classify(examples: list[ClassExample], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded (B, T) input_ids and attention_mask, and (B,) labels.

    The model pools the last token that is not `pad_id`, so the pad id must not end a text.
    """
    width = -(-max(len(e) for e in examples) // 8) * 8
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for row, e in enumerate(examples):
        ids[row, : len(e)] = torch.tensor(e.input_ids)
        mask[row, : len(e)] = 1
    labels = torch.tensor([e.label for e in examples], dtype=torch.long)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


class SequenceClassificationLoss(nn.Module):
    """Summed cross-entropy of a sequence classifier; wrap this (not the model) in DDP."""

    def __init__(self, model: nn.Module, num_labels: int):
        super().__init__()
        self.model = model
        self.num_labels = num_labels

    def _logits(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        out = self.model(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False
        )
        return out.logits.float()  # (B, K), pooled at the last non-pad token

    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, ...]:
        logits = self._logits(batch)
        labels = batch["labels"]
        loss = F.cross_entropy(logits, labels, reduction="sum")
        return loss, labels.new_tensor(labels.numel()), (logits.argmax(-1) == labels).sum()

    @staticmethod
    def collate(examples: list[ClassExample], pad_id: int) -> dict[str, torch.Tensor]:
        return collate_classify(examples, pad_id)

    @staticmethod
    def n_targets(batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return torch.tensor(batch["labels"].numel())

    def eval_sums(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Summable statistics of one batch: loss, count, hits and the confusion matrix."""
        logits = self._logits(batch)
        labels, preds = batch["labels"], logits.argmax(-1)
        k = self.num_labels
        # confusion[true, predicted], (K, K)
        confusion = torch.bincount(labels * k + preds, minlength=k * k).reshape(k, k)
        return {
            "loss_sum": F.cross_entropy(logits, labels, reduction="sum"),
            "n": labels.new_tensor(labels.numel()),
            "correct": (preds == labels).sum(),
            "confusion": confusion,
        }

    @staticmethod
    def metrics(sums: dict[str, torch.Tensor], prefix: str) -> dict[str, Any]:
        n = max(1, int(sums["n"].item()))
        confusion = sums["confusion"]
        return {
            f"{prefix}_loss": sums["loss_sum"].item() / n,
            f"{prefix}_accuracy": sums["correct"].item() / n,
            f"{prefix}_macro_f1": macro_f1(confusion),
            f"{prefix}_confusion": confusion.tolist(),
        }


def macro_f1(confusion: torch.Tensor) -> float:
    """Unweighted mean F1 over classes of a (true, predicted) confusion matrix.

    Classes absent from both the labels and the predictions are left out.
    """
    c = confusion.double()
    tp = c.diag()
    predicted, actual = c.sum(0), c.sum(1)
    present = (predicted + actual) > 0
    f1 = 2 * tp / (predicted + actual).clamp(min=1)
    return float(f1[present].mean()) if present.any() else 0.0
