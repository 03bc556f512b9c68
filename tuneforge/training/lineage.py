"""Continued fine-tuning ("regular updates"): parents, replay of old data, lineage.

A TuneForge model folder records its base model and, when it continued an earlier
fine-tune, its parent (`tuneforge.json`: `base_model`, `parent_model`, `data.train.path`).
`read_parent` reads what a new run needs from a parent folder; `replay_indices` picks the
parent's examples mixed into the new data; `lineage` walks parents back to the base.

Example:
    >>> " -> ".join(lineage("runs/v2"))
    'Qwen/Qwen2.5-0.5B -> runs/v1 -> runs/v2'
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuneforge.modeling.folder import read_folder, read_manifest


@dataclass(frozen=True)
class Parent:
    """What continued fine-tuning takes from a parent model folder.

    `weights` is the folder whose full weights load as the starting model: the parent itself
    (full weights), or its base (when the parent is an adapter, loaded on top afterwards).
    """

    path: Path
    is_adapter: bool
    weights: str
    base_model: str
    lr: float | None
    train_data: Path | None
    manifest: dict[str, Any] | None


def read_parent(folder: str | Path) -> Parent:
    """Inspect a fine-tuned model folder (a TuneForge output, or any HF / PEFT folder)."""
    found = read_folder(folder)
    manifest = found.manifest
    base = found.base_model
    if found.is_adapter:
        base = base or found.adapter_base
        if not base:
            raise ValueError(f"{found.path}: an adapter without a recorded base model")
        weights = base
    else:
        weights = str(found.path)
        base = base or str(found.path)
    return Parent(
        path=found.path,
        is_adapter=found.is_adapter,
        weights=weights,
        base_model=base,
        lr=manifest.lr if manifest is not None else None,
        train_data=manifest.train_data if manifest is not None else None,
        manifest=manifest.to_json() if manifest is not None else None,
    )


def replay_count(n_new: int, fraction: float, n_available: int) -> int:
    """Examples to replay so that they are `fraction` of the mix: r / (n + r) = fraction.

    Capped at the parent's examples (the caller reports a cap).
    """
    if fraction <= 0:
        return 0
    return min(n_available, round(fraction * n_new / (1 - fraction)))


def replay_indices(n_new: int, fraction: float, n_available: int, seed: int) -> list[int]:
    """A seeded sample (without replacement) of the parent's examples to mix in."""
    k = replay_count(n_new, fraction, n_available)
    return sorted(random.Random(seed).sample(range(n_available), k))


def lineage(folder: str | Path) -> list[str]:
    """Model names from the base to `folder`, following `parent_model` links.

    Stops at a folder without `tuneforge.json`, and at a cycle.
    """
    chain: list[str] = []
    seen: set[Path] = set()
    current: Path | None = Path(folder)
    base: str | None = None
    while current is not None and current.resolve() not in seen:
        seen.add(current.resolve())
        chain.append(str(current))
        manifest = read_manifest(current)
        if manifest is None:
            base = None
            break
        base = manifest.base_model
        parent = manifest.parent_model
        current = Path(parent) if parent else None
    if base and base not in chain:
        chain.append(base)
    return list(reversed(chain))
