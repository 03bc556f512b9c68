"""Splitting a dataset into training and validation sets, reproducibly and without leaks.

`split(path, train_out, valid_out, valid=0.1, seed=0)` holds out a fraction (or a count) of the
examples. Exact and near duplicates are grouped first (union of pairs found as in `clean`) and
whole groups are assigned, so no example in the validation set has a copy or near copy in the
training set: a validation loss measured on memorised examples would flatter the model. With
`stratify`, each value of a field (e.g. "label" or "metadata.intent") gets its share of the
validation set. The same file, `valid` and `seed` always give the same split; both files keep
the input's order and lines exactly as written, and are written atomically.

Example:
    >>> report = split("train.clean.jsonl", "train.jsonl", "valid.jsonl", valid=0.1, seed=0)
    >>> report.train + report.valid == report.examples
    True
"""

from __future__ import annotations

import math
import random
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tuneforge.data.content import text_slots
from tuneforge.data.dedupe import NearDuplicateIndex, content_key, shingle_text
from tuneforge.data.io import Format, parse_format, paused_gc, read_dataset
from tuneforge.fsutil import atomic_write

MISSING = "(missing)"


@dataclass
class SplitReport:
    """What `split` wrote: sizes, duplicate groups kept together, and sizes per stratum."""

    input: str
    train_path: str
    valid_path: str
    seed: int
    examples: int
    train: int
    valid: int
    skipped: int
    """Lines that are not a JSON object (invalid JSON, blank lines...): written nowhere."""
    duplicate_groups: int
    """Groups of two or more exact or near duplicates, each kept on one side of the split."""
    strata: dict[str, dict[str, int]] = field(default_factory=dict)
    """Per value of the stratify field: {"train": n, "valid": n}."""

    def to_dict(self) -> dict[str, Any]:
        """The report as a JSON-ready dict."""
        return asdict(self)


def field_value(example: dict, name: str) -> str:
    """The value of a top-level or dotted field ("metadata.intent") as text; MISSING if absent."""
    value: Any = example
    for part in name.split("."):
        if not isinstance(value, dict) or part not in value:
            return MISSING
        value = value[part]
    return value if isinstance(value, str) else str(value)


def valid_count(n: int, valid: float) -> int:
    """How many of `n` examples to hold out: a fraction in (0, 1) or a count >= 1.

    A fraction rounds to the nearest count, at least 1. Raises ValueError when nothing would be
    left to train on.
    """
    if valid <= 0:
        raise ValueError(f"--valid must be a fraction in (0, 1) or a count >= 1, got {valid}")
    if valid < 1:
        count = max(1, round(n * valid))
    else:
        if valid != int(valid):
            raise ValueError(f"--valid {valid}: a count must be a whole number")
        count = int(valid)
    if count >= n:
        raise ValueError(
            f"cannot hold out {count} of {n} examples: nothing would be left for training"
        )
    return count


class _Groups:
    """Union-find over example indices."""

    def __init__(self, n: int):
        self.parent = list(range(n))

    def find(self, i: int) -> int:
        root = i
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[i] != root:  # path compression
            self.parent[i], i = root, self.parent[i]
        return root

    def union(self, i: int, j: int) -> None:
        a, b = self.find(i), self.find(j)
        if a != b:
            self.parent[max(a, b)] = min(a, b)  # the earliest example names the group


def duplicate_groups(
    examples: list[dict], near_dup_threshold: float | None = 0.9, chunk: int = 2048
) -> list[list[int]]:
    """Indices of `examples` grouped so that exact and near duplicates share a group.

    Near duplicates are linked through their most similar earlier example (so chains of near
    copies form one group); `near_dup_threshold=None` groups exact duplicates only. Groups are
    listed in order of their first example.
    """
    groups = _Groups(len(examples))
    first: dict[bytes, int] = {}
    index = NearDuplicateIndex(near_dup_threshold) if near_dup_threshold is not None else None
    for start in range(0, len(examples), chunk):
        batch = examples[start : start + chunk]
        slots = [text_slots(e) for e in batch]
        signatures = (
            index.signatures([shingle_text(s) for s in slots]) if index is not None else None
        )
        for offset, example in enumerate(batch):
            i = start + offset
            key = content_key(example, slots[offset])
            if key in first:
                groups.union(first[key], i)
                continue  # an exact copy is already indexed through its first occurrence
            first[key] = i
            if index is not None and signatures is not None and signatures[offset] is not None:
                found = index.query(signatures[offset])
                if found is not None:
                    groups.union(found[0], i)
                index.add(i, signatures[offset])
    members: dict[int, list[int]] = defaultdict(list)
    for i in range(len(examples)):
        members[groups.find(i)].append(i)
    return list(members.values())


def _largest_remainder(sizes: dict[str, int], total: int) -> dict[str, int]:
    """Share `total` among strata in proportion to `sizes`, summing exactly to `total`."""
    n = sum(sizes.values())
    exact = {k: total * v / n for k, v in sizes.items()}
    shares = {k: math.floor(x) for k, x in exact.items()}
    left = total - sum(shares.values())
    for k in sorted(exact, key=lambda k: (shares[k] - exact[k], k))[:left]:
        shares[k] += 1
    return shares


def split(
    path: str | Path,
    train_out: str | Path,
    valid_out: str | Path,
    valid: float = 0.1,
    *,
    seed: int = 0,
    stratify: str | None = None,
    near_dup_threshold: float | None = 0.9,
    format: Format | str | None = None,
) -> SplitReport:
    """Write a seeded train / validation split of `path` to `train_out` and `valid_out`.

    Args:
        valid: the fraction (0 < valid < 1) or number (>= 1) of examples to hold out. With
            duplicate groups the count is met as closely as whole groups allow.
        seed: the same seed gives the same split.
        stratify: a top-level or dotted field; each of its values gets its proportional share
            of the validation set (groups count under the value of their first example).
        near_dup_threshold: Jaccard similarity from which examples are kept on the same side;
            None keeps only exact duplicates together.

    Raises:
        DatasetError: the file cannot be read. ValueError: `valid` leaves nothing to train on.
    """
    with paused_gc():
        fmt = parse_format(format) if format is not None else None
        loaded = read_dataset(path, fmt)
        lines = [(r.line, r.raw, r.data) for r in loaded.records if r.ok and type(r.data) is dict]
        examples = [data for _, _, data in lines]
        n = len(examples)
        target = valid_count(n, valid)
        groups = duplicate_groups(examples, near_dup_threshold)

    rng = random.Random(seed)
    order = list(range(len(groups)))
    rng.shuffle(order)
    by_stratum: dict[str, list[int]] = defaultdict(list)  # stratum -> shuffled group numbers
    sizes: dict[str, int] = defaultdict(int)
    for g in order:
        stratum = field_value(examples[groups[g][0]], stratify) if stratify else ""
        by_stratum[stratum].append(g)
        sizes[stratum] += len(groups[g])
    wanted = _largest_remainder(dict(sizes), target)

    in_valid = [False] * n
    for stratum in sorted(by_stratum):
        room = wanted[stratum]
        for g in by_stratum[stratum]:
            if room <= 0:
                break
            if len(groups[g]) <= room:  # a group too big for the room left goes to training
                for i in groups[g]:
                    in_valid[i] = True
                room -= len(groups[g])

    strata: dict[str, dict[str, int]] = {}
    if stratify:
        for i, example in enumerate(examples):
            counts = strata.setdefault(field_value(example, stratify), {"train": 0, "valid": 0})
            counts["valid" if in_valid[i] else "train"] += 1
    train_out, valid_out = Path(train_out), Path(valid_out)
    with atomic_write(valid_out) as vf, atomic_write(train_out) as tf:
        for (_, raw, _), held_out in zip(lines, in_valid, strict=True):
            (vf if held_out else tf).write(raw.strip() + "\n")
    n_valid = sum(in_valid)
    return SplitReport(
        input=str(path),
        train_path=str(train_out),
        valid_path=str(valid_out),
        seed=seed,
        examples=n,
        train=n - n_valid,
        valid=n_valid,
        skipped=len(loaded.records) - n,
        duplicate_groups=sum(1 for g in groups if len(g) > 1),
        strata=dict(sorted(strata.items())),
    )
