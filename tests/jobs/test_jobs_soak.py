"""The soak (benchmarks/soak.py) as a test, on SQLite and on PostgreSQL: 4 worker processes,
200 tiny jobs, random SIGKILLs of workers and of the server. Minutes: marked slow."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

SOAK = Path(__file__).resolve().parents[2] / "benchmarks" / "soak.py"


def _soak_module():
    spec = importlib.util.spec_from_file_location("tuneforge_soak", SOAK)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_soak_every_job_succeeds_once_under_random_kills(store_url, tmp_path):
    soak = _soak_module()
    figures, problems = soak.run_soak(store_url, tmp_path / "data", jobs=200, workers=4, seed=1)
    print(figures)
    assert problems == []
    assert figures["jobs"] == figures["succeeded"] == 200
    assert figures["worker_kills"] > 0 and figures["server_kills"] > 0  # really disturbed
