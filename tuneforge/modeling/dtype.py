"""Which floating-point type is fast on this machine: `dtype: auto`, decided by a measured probe.

bf16 halves the memory of weights and activations, and where the hardware multiplies bf16
natively (CUDA GPUs from Ampere on; CPUs with AMX or AVX512-BF16) it is several times faster
than fp32. Elsewhere PyTorch emulates it and bf16 is slower than fp32. Which case holds is
not guessed from a CPU name: on CPU a short probe times a matmul of a transformer's shapes in
both types, and bf16 is chosen when it is clearly faster. The verdict is cached per machine
(CPU model, thread count, PyTorch version) in `$TUNEFORGE_CACHE` (default
`~/.cache/tuneforge`), so the probe runs once (about a second).

Example:
    >>> choice = resolve_dtype("auto", "cpu")
    >>> choice.name, choice.reason  # ('bf16', 'bf16 matmul 4.6x fp32 on this CPU (probe)')
"""

from __future__ import annotations

import contextlib
import json
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from tuneforge.fsutil import cache_dir, write_json

DTypeName = Literal["fp32", "bf16", "fp16"]
DTYPE_NAMES: tuple[str, ...] = ("auto", "fp32", "bf16", "fp16")

# bf16 must beat fp32 by this much to be chosen: below it the halved memory is not worth
# the lost precision and the extra casts around the matmuls.
MIN_SPEEDUP = 1.5
_PROBE_VERSION = 1


@dataclass(frozen=True)
class DTypeChoice:
    """The dtype a run uses, and why (printed and recorded in the model's manifest)."""

    name: DTypeName
    reason: str

    @property
    def torch_dtype(self) -> Any:
        import torch

        return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[self.name]


def resolve_dtype(requested: str, device: Any = "cpu") -> DTypeChoice:
    """`requested` ("auto", "fp32", "bf16", "fp16") for `device`, as a `DTypeChoice`.

    "auto" is bf16 on a CUDA device that supports it, bf16 on a CPU whose probe measures a
    bf16 matmul at least `MIN_SPEEDUP` times faster than fp32, and fp32 everywhere else.

    Raises:
        ValueError: an unknown name.
    """
    if requested not in DTYPE_NAMES:
        raise ValueError(f"dtype {requested!r}: choose one of {', '.join(DTYPE_NAMES)}")
    if requested != "auto":
        return DTypeChoice(requested, "asked for")  # type: ignore[arg-type]
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return DTypeChoice("bf16", "CUDA device with bf16")
        return DTypeChoice("fp32", "CUDA device without bf16")
    if device.type != "cpu":
        return DTypeChoice("fp32", f"no probe for {device.type} devices")
    speedup = cpu_bf16_speedup()
    verdict = f"bf16 matmul {speedup:.1f}x fp32 on this CPU (probe)"
    return DTypeChoice("bf16" if speedup >= MIN_SPEEDUP else "fp32", verdict)


def cpu_bf16_speedup() -> float:
    """How many times faster a bf16 matmul runs than an fp32 one on this CPU (cached)."""
    import torch

    key = {
        "version": _PROBE_VERSION,
        "cpu": _cpu_model(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }
    path = cache_dir() / "dtype-probe.json"
    try:
        cached = json.loads(path.read_text())
        if cached.get("key") == key:
            return float(cached["speedup"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    speedup = measure_bf16_speedup()
    with contextlib.suppress(OSError):  # a read-only home: probe again next time
        write_json(path, {"key": key, "speedup": speedup})
    return speedup


def measure_bf16_speedup(n: int = 512, k: int = 576, m: int = 1536) -> float:
    """Time `(n, k) @ (k, m)` (a small model's MLP shapes) in fp32 and in bf16; return
    fp32 time / bf16 time, best of a few repeats each."""
    import torch

    def best_time(dtype: torch.dtype) -> float:
        a = torch.randn(n, k).to(dtype)
        b = torch.randn(k, m).to(dtype)
        torch.matmul(a, b)  # warm up (the first call may pick kernels or allocate)
        best = float("inf")
        for _ in range(5):
            start = time.perf_counter()
            for _ in range(4):
                torch.matmul(a, b)
            best = min(best, time.perf_counter() - start)
        return best

    with torch.inference_mode():
        return best_time(torch.float32) / best_time(torch.bfloat16)


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
