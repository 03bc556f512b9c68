"""The process's resident memory: readings, the peak's reset, and freed blocks given back."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

linux = pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="needs /proc")

# In a fresh process: in a long one, a new block may reuse heap pages already resident.
_PEAK = """
from tuneforge import memory
memory.reset_peak_rss()
start = memory.peak_rss_gb()
assert start is not None and start >= memory.rss_gb() * 0.99 > 0
block = bytearray(200 << 20)  # written (zeroed): resident
assert memory.peak_rss_gb() - start > 0.19, (start, memory.peak_rss_gb())
del block
memory.release_memory()
memory.reset_peak_rss()
assert memory.peak_rss_gb() - start < 0.1
marks = memory.snapshot()
assert marks["peak_rss_gb"] >= marks["rss_gb"] > 0
print("ok")
"""


@linux
def test_peak_follows_an_allocation_and_resets():
    run = subprocess.run([sys.executable, "-c", _PEAK], capture_output=True, text=True)
    assert run.returncode == 0 and run.stdout.strip() == "ok", run.stderr[-2000:]
