"""Small chat datasets written into each test's own temporary folder."""

from __future__ import annotations

from pathlib import Path

import pytest
from train_data import write_chat_jsonl


@pytest.fixture
def chat_data(tmp_path) -> tuple[Path, Path]:
    """(train.jsonl with 32 examples, valid.jsonl with 8)."""
    return (
        write_chat_jsonl(tmp_path / "train.jsonl", 32, seed=0),
        write_chat_jsonl(tmp_path / "valid.jsonl", 8, seed=1),
    )
