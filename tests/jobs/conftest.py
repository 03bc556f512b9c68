"""Fixtures of the job-store tests: a store of its own per test, and small chat files."""

from __future__ import annotations

import random
import shutil
from pathlib import Path

import pytest

from tuneforge.jobs import JobStore


@pytest.fixture
def store(tmp_path, store_url):
    """A store of its own, on SQLite and on PostgreSQL (the `store_url` parameter)."""
    s = JobStore.open(tmp_path / "data", store_url)
    yield s
    s.close()


@pytest.fixture
def store_args(store):
    """CLI options that open `store` (`tuneforge worker`, `tuneforge jobs ...`)."""
    args = ["--data-dir", str(store.data_dir)]
    return args if store.url.startswith("sqlite") else [*args, "--database-url", store.url]


@pytest.fixture
def upload(store, tmp_path):
    """upload(org, path) -> the store's File row (the source is copied, not moved)."""

    def _upload(org: str, path: Path, purpose: str = "fine-tune"):
        tmp = tmp_path / f"upload-{random.random()}"
        shutil.copyfile(path, tmp)
        return store.add_file(org, path.name, purpose, tmp)

    return _upload
