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


@pytest.fixture(scope="session")
def tiny_deep_dir(tmp_path_factory, tiny_tokenizer):
    """A saved 4-block, 32-wide Llama model folder: enough blocks to unfreeze one by one."""
    from tuneforge.modeling.tiny import build_model, save_model_folder

    model = build_model(tiny_tokenizer, arch="llama", hidden_size=32, num_layers=4, num_heads=2)
    return save_model_folder(model, tiny_tokenizer, tmp_path_factory.mktemp("tiny-deep"))
