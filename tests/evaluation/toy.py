"""A toy task for evaluation tests: five fixed questions, each with one fixed answer."""

from __future__ import annotations

import io
import json
from pathlib import Path

from rich.console import Console

from tuneforge.training.config import load_config
from tuneforge.training.loop import run_training

PAIRS = [
    ("What is the capital of France?", "Paris."),
    ("What is my balance?", "120 dollars."),
    ("Reset my password.", "Sure, I sent a reset link."),
    ("Count to five.", "0 1 2 3 4 5"),
    ("Give me the filter.", '{"color": "red"}'),
]


def write_toy(path: Path, n: int, offset: int = 0) -> Path:
    """`n` chat examples cycling through PAIRS (starting at `offset`)."""
    lines = []
    for i in range(n):
        question, answer = PAIRS[(i + offset) % len(PAIRS)]
        messages = [
            {"role": "user", "content": question},
            {"role": "assistant", "content": answer},
        ]
        lines.append(json.dumps({"messages": messages}))
    path.write_text("\n".join(lines) + "\n")
    return path


def train_toy(base: Path, train: Path, out: Path, **overrides) -> Path:
    """Fine-tune `base` on `train` into `out` (quietly); returns the model folder."""
    values = {
        "model.name_or_path": str(base),
        "data.train": str(train),
        "output.dir": str(out),
        "method": "lora",
        "optim.epochs": 1,
        "optim.batch_size": 4,
        "optim.lr": 1e-2,
        "optim.warmup": 0,
        "model.dtype": "fp32",  # exact, whatever the machine's fast path
        **overrides,
    }
    run_training(load_config(None, values), Console(file=io.StringIO()))
    return out
