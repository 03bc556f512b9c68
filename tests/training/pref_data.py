"""A separable toy preference set: a polite, short reply preferred to a rude, verbose one."""

from __future__ import annotations

import json
import random
from pathlib import Path

from train_data import ANSWERS, QUESTIONS

REJECTED = [
    "Whatever, stupid question, figure it out yourself, I will not repeat this again and again.",
    "Ugh, shut up, I refuse to answer that kind of dumb question today or any other day.",
]


def write_preference_jsonl(path: Path, n: int, seed: int = 0) -> Path:
    """`n` preference examples over the training questions (some with a system prompt)."""
    rng = random.Random(seed)
    lines = []
    for i in range(n):
        k = rng.randrange(len(QUESTIONS))
        messages = [{"role": "user", "content": QUESTIONS[k]}]
        if i % 2:
            messages.insert(0, {"role": "system", "content": "You are a helpful bank assistant."})
        example = {
            "input": {"messages": messages},
            "preferred_output": [{"role": "assistant", "content": ANSWERS[k]}],
            "non_preferred_output": [{"role": "assistant", "content": rng.choice(REJECTED)}],
        }
        lines.append(json.dumps(example))
    path.write_text("\n".join(lines) + "\n")
    return path
