"""Small chat datasets for the job-store tests (a module name of its own: test folders
share one import namespace)."""

from __future__ import annotations

import json
import random
from pathlib import Path

QUESTIONS = ["How can I reset my password?", "What is my balance?", "I lost my card."]
ANSWERS = [
    "Sure, I have sent a reset link to your email address.",
    "Your balance is 120 dollars and 50 cents.",
    "I have blocked it and a new card is on its way.",
]


def write_chat(path: Path, n: int = 16, seed: int = 0) -> Path:
    """`n` one-turn chat examples (OpenAI's format), one JSON object per line."""
    rng = random.Random(seed)
    lines = []
    for _ in range(n):
        k = rng.randrange(len(QUESTIONS))
        messages = [
            {"role": "system", "content": "You are a helpful bank assistant."},
            {"role": "user", "content": QUESTIONS[k]},
            {"role": "assistant", "content": ANSWERS[k]},
        ]
        lines.append(json.dumps({"messages": messages}))
    path.write_text("\n".join(lines) + "\n")
    return path
