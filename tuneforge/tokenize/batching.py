"""Batches: packing several examples into one row, length-grouped padded batches, collation.

Packed rows carry a 4D attention mask that is causal and block-diagonal, so no token attends
across examples, and position ids that restart at 0 for every example: a packed batch gives
the same logits as running its examples one by one. In transformers 5.x a 4D mask is passed to
the attention kernels as given (`masking_utils._preprocess_mask_arguments`); eager attention
adds it to the scores, sdpa uses it as `attn_mask`, so it is an additive float mask (0 where
attending, the dtype's minimum elsewhere), which both accept.
"""

from __future__ import annotations

import bisect
import random
from collections.abc import Sequence

import torch

from tuneforge.tokenize.encode import IGNORE_INDEX, Encoded


def pack(lengths: Sequence[int], seq_len: int) -> list[list[int]]:
    """Group example indices into bins of total length <= `seq_len`, best-fit decreasing.

    Examples are placed longest first, each into the open bin with the least room that still
    fits it (a new bin when none does). Deterministic: ties keep index order. Each bin lists
    its indices in placement order. Raises ValueError for an example longer than `seq_len`
    (fit it first with `fit_length`).

    Example:
        >>> pack([5, 3, 2, 4], seq_len=7)
        [[0, 2], [3, 1]]
    """
    if seq_len < 1:
        raise ValueError("seq_len must be at least 1")
    bins: list[list[int]] = []
    # (room left, bin number), sorted: bisect finds the tightest bin with room >= length.
    rooms: list[tuple[int, int]] = []
    for i in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        n = lengths[i]
        if n > seq_len:
            raise ValueError(f"example {i} has {n} tokens, more than seq_len={seq_len}")
        if n < 1:
            raise ValueError(f"example {i} is empty")
        pos = bisect.bisect_left(rooms, (n, -1))
        if pos == len(rooms):
            bins.append([i])
            b, room = len(bins) - 1, seq_len - n
        else:
            room, b = rooms.pop(pos)
            bins[b].append(i)
            room -= n
        if room > 0:
            bisect.insort(rooms, (room, b))
    return bins


def block_causal_mask(seq_ids: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Additive 4D mask (B, 1, T, T) from per-token example numbers `seq_ids` (B, T).

    Token i may attend to token j when j <= i and both belong to the same example (same
    positive number). Padding (number 0) attends only to itself: every row keeps one finite
    entry, so softmax never sees a row of -inf (NaN); padding outputs are never trained.
    With `dtype=torch.bool` the mask is boolean (True = attend): a quarter of float32's memory,
    accepted by sdpa but not by eager attention, which adds the mask to the scores.
    """
    T = seq_ids.shape[1]
    causal = torch.ones(T, T, dtype=torch.bool, device=seq_ids.device).tril()  # (T, T)
    same = seq_ids[:, :, None] == seq_ids[:, None, :]  # (B, T, T)
    allowed = same & causal & (seq_ids[:, :, None] > 0)
    allowed |= torch.eye(T, dtype=torch.bool, device=seq_ids.device)
    if dtype == torch.bool:
        return allowed[:, None]  # (B, 1, T, T)
    mask = torch.zeros(allowed.shape, dtype=dtype, device=seq_ids.device)
    mask.masked_fill_(~allowed, torch.finfo(dtype).min)
    return mask[:, None]  # (B, 1, T, T)


def collate_packed(
    examples: Sequence[Encoded],
    bins: list[list[int]],
    seq_len: int,
    pad_id: int,
    mask_dtype: torch.dtype = torch.float32,
) -> dict[str, torch.Tensor]:
    """Build one batch of packed rows: row b holds `examples[i]` for i in `bins[b]`, in order.

    Returns `input_ids`, `labels`, `position_ids` (B, T) long, T = `seq_len`, and an additive
    `attention_mask` (B, 1, T, T) of `mask_dtype` (pass the model's dtype when its weights are
    bf16/fp16: sdpa on GPU wants the mask in the query's dtype; `torch.bool` saves memory with
    sdpa, see `block_causal_mask`; the mask takes B*T*T elements). Positions restart at 0 for
    every example; the first label of every example is IGNORE_INDEX, so after the loss's shift
    nothing is predicted across a boundary; padding (`pad_id`) has IGNORE_INDEX labels.
    The dict can be passed straight to a Hugging Face causal LM: `model(**batch)`.
    """
    B = len(bins)
    input_ids = torch.full((B, seq_len), pad_id, dtype=torch.long)
    labels = torch.full((B, seq_len), IGNORE_INDEX, dtype=torch.long)
    position_ids = torch.zeros((B, seq_len), dtype=torch.long)
    seq_ids = torch.zeros((B, seq_len), dtype=torch.long)  # 0 = padding, k = k-th example
    for b, row in enumerate(bins):
        pos = 0
        for k, i in enumerate(row, start=1):
            enc = examples[i]
            n = len(enc)
            if pos + n > seq_len:
                raise ValueError(f"bin {b} holds more than seq_len={seq_len} tokens")
            input_ids[b, pos : pos + n] = torch.tensor(enc.input_ids)
            labels[b, pos : pos + n] = torch.tensor(enc.labels)
            labels[b, pos] = IGNORE_INDEX
            position_ids[b, pos : pos + n] = torch.arange(n)
            seq_ids[b, pos : pos + n] = k
            pos += n
    return {
        "input_ids": input_ids,
        "labels": labels,
        "position_ids": position_ids,
        "attention_mask": block_causal_mask(seq_ids, mask_dtype),
    }


def collate_padded(
    examples: Sequence[Encoded], pad_id: int, pad_to_multiple_of: int | None = None
) -> dict[str, torch.Tensor]:
    """Right-pad examples to the longest (rounded up to `pad_to_multiple_of`).

    Returns `input_ids`, `labels` (IGNORE_INDEX on padding) and `attention_mask` (1 = token,
    0 = padding), all (B, T) long.
    """
    T = max((len(e) for e in examples), default=0)
    if pad_to_multiple_of:
        T = -(-T // pad_to_multiple_of) * pad_to_multiple_of
    B = len(examples)
    input_ids = torch.full((B, T), pad_id, dtype=torch.long)
    labels = torch.full((B, T), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((B, T), dtype=torch.long)
    for b, enc in enumerate(examples):
        n = len(enc)
        input_ids[b, :n] = torch.tensor(enc.input_ids)
        labels[b, :n] = torch.tensor(enc.labels)
        attention_mask[b, :n] = 1
    return {"input_ids": input_ids, "labels": labels, "attention_mask": attention_mask}


def length_grouped_batches(
    lengths: Sequence[int], batch_size: int, seed: int, epoch: int = 0, mega_batch: int = 64
) -> list[list[int]]:
    """Batches of example indices with similar lengths, in a random but reproducible order.

    The indices are shuffled (seeded by `seed + epoch`), cut into mega-batches of
    `mega_batch * batch_size`, sorted by length (longest first) within each, split into batches
    of `batch_size` (the last may be smaller), and the batch order is shuffled. Similar lengths
    share a batch, so little padding is needed, while every epoch sees a different order.
    """
    if batch_size < 1 or mega_batch < 1:
        raise ValueError("batch_size and mega_batch must be at least 1")
    rng = random.Random(seed + epoch)
    order = list(range(len(lengths)))
    rng.shuffle(order)
    chunk = mega_batch * batch_size
    batches = []
    for c in range(0, len(order), chunk):
        group = sorted(order[c : c + chunk], key=lambda i: -lengths[i])
        batches += [group[j : j + batch_size] for j in range(0, len(group), batch_size)]
    rng.shuffle(batches)
    return batches


def padding_fraction(
    batches: Sequence[Sequence[int]],
    seq_len: int | None = None,
    pad_to_multiple_of: int | None = None,
) -> float:
    """Fraction of the tokens in the batches that are padding.

    `batches` holds example lengths. Without `seq_len`, each entry is a padded batch: every
    example is padded to the batch's longest (rounded up to `pad_to_multiple_of`). With
    `seq_len`, each entry is a packed row (a bin from `pack`) of exactly `seq_len` tokens.

    Example:
        >>> padding_fraction([[4, 2], [3]])  # 2 of 11 slots are padding
        0.18181818181818177
    """
    real = sum(sum(b) for b in batches)
    if seq_len is not None:
        total = seq_len * len(batches)
    else:
        total = 0
        for b in batches:
            T = max(b, default=0)
            if pad_to_multiple_of:
                T = -(-T // pad_to_multiple_of) * pad_to_multiple_of
            total += T * len(b)
    return 1.0 - real / total if total else 0.0
