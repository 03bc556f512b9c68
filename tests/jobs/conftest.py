"""Fixtures of the job-store tests: a store of its own per test, and small chat files."""

from __future__ import annotations

import random
import shutil
from pathlib import Path

import pytest

from tuneforge.jobs import JobStore


@pytest.fixture
def store(tmp_path):
    s = JobStore.open(tmp_path / "data")
    yield s
    s.close()


@pytest.fixture
def upload(store, tmp_path):
    """upload(org, path) -> the store's File row (the source is copied, not moved)."""

    def _upload(org: str, path: Path, purpose: str = "fine-tune"):
        tmp = tmp_path / f"upload-{random.random()}"
        shutil.copyfile(path, tmp)
        return store.add_file(org, path.name, purpose, tmp)

    return _upload
