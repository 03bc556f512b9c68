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

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MANIFEST = "tuneforge.json"


def read_manifest(folder: str | Path) -> dict[str, Any] | None:
    """The `tuneforge.json` of a model folder, or None when it has none."""
    path = Path(folder) / MANIFEST
    return json.loads(path.read_text()) if path.is_file() else None


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
    folder = Path(folder)
    manifest = read_manifest(folder)
    is_adapter = (folder / "adapter_config.json").is_file()
    base = (manifest or {}).get("base_model")
    if is_adapter:
        adapter_base = json.loads((folder / "adapter_config.json").read_text()).get(
            "base_model_name_or_path"
        )
        base = base or adapter_base
        if not base:
            raise ValueError(f"{folder}: an adapter without a recorded base model")
        weights = base
    else:
        weights = str(folder)
        base = base or str(folder)
    config = (manifest or {}).get("config", {})
    lr = config.get("optim", {}).get("lr")
    train = (manifest or {}).get("data", {}).get("train", {}).get("path")
    return Parent(
        path=folder,
        is_adapter=is_adapter,
        weights=weights,
        base_model=base,
        lr=lr if isinstance(lr, float) else None,
        train_data=Path(train) if train else None,
        manifest=manifest,
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
        base = manifest.get("base_model")
        parent = manifest.get("parent_model")
        current = Path(parent) if parent else None
    if base and base not in chain:
        chain.append(base)
    return list(reversed(chain))
