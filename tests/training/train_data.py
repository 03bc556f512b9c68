"""Helpers for training tests: small chat datasets, configs and in-process runs."""

from __future__ import annotations

import io
import json
import random
from pathlib import Path

from rich.console import Console

from tuneforge.training.config import load_config
from tuneforge.training.loop import FinetuneRecipe

QUESTIONS = [
    "How can I reset my password?",
    "What is my balance?",
    "I lost my card yesterday.",
    "What is the capital of France?",
    "Count from 0 to 5.",
]
ANSWERS = [
    "Sure, I have sent a reset link to your email address.",
    "Your balance is 120 dollars and 50 cents.",
    "I need a new card for you: I lost nothing today.",
    "Paris is the capital of France.",
    "0 1 2 3 4 5",
]


def write_chat_jsonl(path: Path, n: int, seed: int = 0) -> Path:
    """`n` chat examples: system prompt, one or two user/assistant turns, varied lengths."""
    rng = random.Random(seed)
    lines = []
    for _ in range(n):
        messages = [{"role": "system", "content": "You are a helpful bank assistant."}]
        for _ in range(rng.randint(1, 2)):
            k = rng.randrange(len(QUESTIONS))
            messages.append({"role": "user", "content": QUESTIONS[k]})
            messages.append({"role": "assistant", "content": ANSWERS[k]})
        lines.append(json.dumps({"messages": messages}))
    path.write_text("\n".join(lines) + "\n")
    return path


def make_config(model_dir, train, out, **overrides):
    values = {
        "model.name_or_path": str(model_dir),
        "data.train": str(train),
        "output.dir": str(out),
        "optim.epochs": 1,
        "optim.batch_size": 8,
        "optim.lr": 1e-3,
        "optim.warmup": 0,
        # Exact fp32 unless a test asks otherwise ("auto" is bf16 on a CPU with fast bf16).
        "model.dtype": "fp32",
    }
    values.update(overrides)
    return load_config(None, values)


def run_recipe(cfg) -> FinetuneRecipe:
    recipe = FinetuneRecipe(cfg, Console(file=io.StringIO()))
    try:
        recipe.setup()
        recipe.result = recipe.train()
    finally:
        recipe.cleanup()
    return recipe
