"""A tiny model fine-tuned on the toy task, shared by the end-to-end evaluation tests."""

from __future__ import annotations

import pytest
from toy import train_toy, write_toy


@pytest.fixture(scope="module")
def toy_finetune(tmp_path_factory, tiny_model_dir):
    """(fine-tuned model folder, hold-out file): a full fine-tune that learned the toy answers."""
    root = tmp_path_factory.mktemp("toy")
    train = write_toy(root / "train.jsonl", 20)
    holdout = write_toy(root / "holdout.jsonl", 10, offset=2)
    model = train_toy(
        tiny_model_dir,
        train,
        root / "ft",
        **{
            "method": "full",
            "optim.epochs": 4,
            "optim.batch_size": 2,
            "optim.lr": 5e-3,
            "data.valid": str(holdout),
        },
    )
    return model, holdout
