"""The process's resident memory: readings, the peak's reset, and freed blocks given back."""

from __future__ import annotations

import platform
import subprocess
import sys
from pathlib import Path

import pytest

linux = pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="needs /proc")

# Allocates 40 blocks of 4 MiB with a small block kept after each (so the big ones' places
# are holes in the heap, not its top), frees the big ones and prints the MB still resident.
_HOLES = """
import sys
from tuneforge import memory
if sys.argv[1] == "prompt":
    assert memory.free_large_blocks_promptly()
x = bytearray(8 << 20)  # a first large free: glibc raises its threshold above this size
del x
before = memory.rss_gb()
big, kept = [], []
for _ in range(40):
    big.append(bytearray(4 << 20))
    kept.append(bytearray(256 << 10))
del big
print(round((memory.rss_gb() - before) * 1000))
"""


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


@linux
@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="needs glibc")
def test_freed_large_blocks_go_back_to_the_system():
    def retained_mb(mode: str) -> int:
        run = subprocess.run(
            [sys.executable, "-c", _HOLES, mode], capture_output=True, text=True, check=True
        )
        return int(run.stdout)

    # glibc's default keeps 160 MB of freed 4 MiB blocks resident as heap holes; pinned at
    # its default threshold, they are unmapped when freed.
    assert retained_mb("default") > 100
    assert retained_mb("prompt") < 40
