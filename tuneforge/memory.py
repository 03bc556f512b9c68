"""This process's resident memory: reading it, and handing freed memory back to the system.

Linux reports the resident set (`VmRSS`) and its high-water mark (`VmHWM`) in
`/proc/self/status`; writing "5" to `/proc/self/clear_refs` starts a new high-water mark. Other
systems have no such files: the readings are then None and the resets do nothing.

Example:
    >>> reset_peak_rss()
    >>> ...  # a phase
    >>> peak_rss_gb()  # e.g. 2.30
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import gc
from pathlib import Path


def _status(field: str) -> float | None:
    """A `/proc/self/status` field given in kB (KiB), in GB (1e9 bytes; None where there is
    none)."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024 / 1e9
    return None


def rss_gb() -> float | None:
    """This process's resident memory now, in GB."""
    return _status("VmRSS")


def peak_rss_gb() -> float | None:
    """This process's peak resident memory (since it started, or the last `reset_peak_rss`),
    in GB."""
    return _status("VmHWM")


def reset_peak_rss() -> None:
    """Start a new peak: Linux resets VmHWM to the current RSS on "5" in clear_refs."""
    with contextlib.suppress(OSError), open("/proc/self/clear_refs", "w") as f:
        f.write("5")


@functools.cache
def _libc() -> ctypes.CDLL | None:  # find_library runs `ldconfig -p`: once a process
    name = ctypes.util.find_library("c")
    with contextlib.suppress(OSError, TypeError):
        return ctypes.CDLL(name or "libc.so.6")
    return None


def release_memory() -> None:
    """Collect garbage and hand freed heap pages back to the system (glibc's malloc_trim)."""
    gc.collect()
    libc = _libc()
    with contextlib.suppress(AttributeError):
        if libc is not None:
            libc.malloc_trim(0)


def snapshot() -> dict[str, float | None]:
    """The resident memory now and the peak so far, in GB (3 decimals): a phase's mark."""
    now, peak = rss_gb(), peak_rss_gb()
    return {
        "rss_gb": None if now is None else round(now, 3),
        "peak_rss_gb": None if peak is None else round(peak, 3),
    }
