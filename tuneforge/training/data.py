"""Training data: from dataset files to tokenized examples to per-step batch plans.

The batch plan of an epoch is a pure function of (seed, epoch, lengths, sizes), so a resumed
run rebuilds exactly the same order and skips the steps already done.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from tuneforge.data.io import DatasetError, read_dataset
from tuneforge.tokenize import (
    Encoded,
    FormatMismatch,
    collate_packed,
    collate_padded,
    encode,
    fit_length,
    length_grouped_batches,
    pack,
)


def read_examples(path: str | Path) -> list[tuple[int, dict[str, Any]]]:
    """(line, example) for every example of a dataset file (JSONL, CSV, Parquet, text).

    Training refuses a file with unreadable lines rather than silently skipping them: the
    error names the first few, and `tuneforge data check` / `data clean` fix them.
    """
    try:
        loaded = read_dataset(path)
    except DatasetError as err:
        raise ValueError(str(err)) from None
    problems = [p for p in loaded.file_problems if p.severity == "error"]
    problems += [r.problem for r in loaded.records if r.problem and r.problem.severity == "error"]
    if problems:
        first = "; ".join(f"line {p.line}: {p.message}" for p in problems[:3])
        raise ValueError(
            f"{path}: {len(problems)} unreadable examples ({first}); "
            "run `tuneforge data check` to see all of them"
        )
    return list(loaded.examples())


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes (recorded in the model folder's lineage)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@dataclass
class TokenizedSet:
    """Examples ready for training, and what happened to the others."""

    examples: list[Encoded] = field(default_factory=list)
    n_read: int = 0
    n_too_long_dropped: int = 0
    n_truncated: int = 0
    n_no_target: int = 0

    @property
    def lengths(self) -> list[int]:
        return [len(e) for e in self.examples]

    @property
    def n_trained_tokens(self) -> int:
        return sum(e.num_trained for e in self.examples)


def tokenize_file(
    path: str | Path, tokenizer: Any, train_on: str, max_length: int, too_long: str
) -> TokenizedSet:
    """Encode every example of a dataset file, fitting each into `max_length` tokens.

    Over-long examples are dropped or truncated (`too_long`); examples left with no trained
    token are skipped. All are counted in the result.
    """
    out = TokenizedSet()
    for i, row in read_examples(path):
        out.n_read += 1
        try:
            enc = encode(row, tokenizer, train_on=train_on)
        except FormatMismatch as err:
            raise err.at(f"{path}:{i}") from None
        except ValueError as err:
            raise ValueError(f"{path}:{i}: {err}") from None
        if enc.num_trained == 0:
            out.n_no_target += 1
            continue
        fitted = fit_length(enc, max_length, too_long)
        if fitted is None:
            if len(enc) > max_length and too_long == "drop":
                out.n_too_long_dropped += 1
            else:  # truncation cut away every trained token
                out.n_no_target += 1
            continue
        out.n_truncated += fitted.truncated
        out.examples.append(fitted)
    return out


@dataclass(frozen=True)
class BatchPlan:
    """How examples are grouped into optimizer steps.

    `batch_size` counts examples (or packed rows with `packing`) per optimizer step across all
    processes; each step is split into `world_size * grad_accum` micro-batches.
    """

    lengths: tuple[int, ...]
    batch_size: int
    grad_accum: int
    world_size: int
    seed: int
    packing: bool
    seq_len: int
    bins: tuple[tuple[int, ...], ...] = ()

    @classmethod
    def create(
        cls,
        lengths: list[int],
        batch_size: int,
        grad_accum: int,
        world_size: int,
        seed: int,
        packing: bool,
        seq_len: int,
    ) -> BatchPlan:
        bins = tuple(tuple(b) for b in pack(lengths, seq_len)) if packing else ()
        return cls(tuple(lengths), batch_size, grad_accum, world_size, seed, packing, seq_len, bins)

    @property
    def n_items(self) -> int:
        """Units a batch is made of: packed rows, or examples."""
        return len(self.bins) if self.packing else len(self.lengths)

    @property
    def n_parts(self) -> int:
        return self.world_size * self.grad_accum

    @property
    def steps_per_epoch(self) -> int:
        full, rest = divmod(self.n_items, self.batch_size)
        return full + (rest >= self.n_parts)

    def epoch_batches(self, epoch: int) -> list[list[int]]:
        """Global batches of item indices for `epoch` (a trailing batch too small to give every
        micro-batch an item is dropped)."""
        if self.packing:
            order = list(range(len(self.bins)))
            random.Random(self.seed + epoch).shuffle(order)
            batches = [
                order[i : i + self.batch_size] for i in range(0, len(order), self.batch_size)
            ]
        else:
            batches = length_grouped_batches(self.lengths, self.batch_size, self.seed, epoch)
        return [b for b in batches if len(b) >= self.n_parts][: self.steps_per_epoch]

    def micro_batches(self, batch: list[int], rank: int) -> list[list[int]]:
        """This rank's `grad_accum` micro-batches of a global batch (contiguous, near-equal)."""
        k, extra = divmod(len(batch), self.n_parts)
        parts, start = [], 0
        for p in range(self.n_parts):
            end = start + k + (p < extra)
            parts.append(batch[start:end])
            start = end
        return parts[rank * self.grad_accum : (rank + 1) * self.grad_accum]

    def collate(
        self,
        examples: list[Encoded],
        items: list[int],
        pad_id: int,
        mask_dtype: torch.dtype = torch.float32,
    ) -> dict:
        """Tensors for one micro-batch of items.

        `mask_dtype` is the attention compute dtype (bf16 under bf16 autocast): the additive
        (B, 1, T, T) mask of packed rows must match the query dtype in sdpa.
        """
        if self.packing:
            bins = [list(self.bins[i]) for i in items]
            return collate_packed(examples, bins, self.seq_len, pad_id, mask_dtype=mask_dtype)
        return collate_padded([examples[i] for i in items], pad_id, pad_to_multiple_of=8)

    def padding_tokens(self, items: list[int]) -> tuple[int, int]:
        """(real tokens, padded slots) of one micro-batch, for the padding report."""
        if self.packing:
            real = sum(self.lengths[j] for i in items for j in self.bins[i])
            return real, self.seq_len * len(items)
        lens = [self.lengths[i] for i in items]
        t = -(-max(lens) // 8) * 8
        return sum(lens), t * len(lens)
