"""Importing a GGUF file (from Ollama or llama.cpp) as a standard Hugging Face model folder.

`transformers` reads the GGUF (through llama.cpp's `gguf` package) and dequantizes its
tensors; this module checks the file up front, writes the folder atomically, and records
where it came from in `tuneforge.json`. The result loads with plain `transformers`:

    >>> import_gguf("SmolLM2-135M-Instruct.Q4_1.gguf", "smollm2")
    PosixPath('smollm2')
    >>> AutoModelForCausalLM.from_pretrained("smollm2")
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import shutil
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from tuneforge import __version__
from tuneforge.fsutil import fsync_dir
from tuneforge.modeling.folder import write_manifest
from tuneforge.modeling.load import DTYPES

# Bumped whenever an import would write a different folder (caches of imports key on it).
IMPORT_FORMAT = 1

GGUF_MAGIC = b"GGUF"
# Tensor types that hold plain floats: a file made only of these is converted, not dequantized.
_FLOAT_TYPES = {"F32", "F16", "BF16", "F64"}
# GGUF architecture names that transformers spells differently.
_ARCH_ALIASES = {"qwen2moe": "qwen2_moe", "qwen3moe": "qwen3_moe", "gpt-oss": "gpt_oss"}
# Entries of transformers' GGUF table that are not causal LMs.
_NOT_CAUSAL_LM = {"general", "tokenizer", "t5", "t5encoder", "umt5"}


class GGUFError(ValueError):
    """A GGUF import or export that cannot be done; the message is one line, fit for the
    command line."""


class GGUFImportError(GGUFError):
    """A file that cannot be imported; the message is one line, fit for the command line."""


@dataclass(frozen=True)
class GGUFInfo:
    """What a GGUF file's header says about the model (read without loading its tensors)."""

    architecture: str  # GGUF spelling, e.g. "llama"
    name: str | None  # general.name
    quantization: str  # the file type, e.g. "Q4_1"; "F16" for an unquantized file
    tensor_types: dict[str, int] = field(default_factory=dict)  # e.g. {"Q4_1": 210, "F32": 61}
    eos_token_ids: list[int] = field(default_factory=list)  # eos, then end-of-turn if distinct
    context_length: int | None = None

    @property
    def dequantized(self) -> bool:
        """Whether importing dequantizes (some tensor is quantized, not a plain float)."""
        return any(t not in _FLOAT_TYPES for t in self.tensor_types)


def supported_architectures() -> list[str]:
    """GGUF architectures this import turns into a causal LM (those transformers can read)."""
    from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES

    names = set(GGUF_SUPPORTED_ARCHITECTURES) - _NOT_CAUSAL_LM
    names |= {alias for alias, name in _ARCH_ALIASES.items() if name in names}
    return sorted(names)


def is_gguf(path: str | Path) -> bool:
    """Whether `path` is a file that starts with the GGUF magic bytes."""
    path = Path(path)
    if not path.is_file():
        return False
    with path.open("rb") as f:
        return f.read(4) == GGUF_MAGIC


def read_gguf_info(path: str | Path) -> GGUFInfo:
    """Read a GGUF file's header: architecture, quantization, tensor types, eos tokens.

    Raises GGUFImportError for a file that is not GGUF or cannot be read.
    """
    from gguf import GGUFReader, LlamaFileType

    path = Path(path)
    if not path.is_file():
        raise GGUFImportError(f"{path}: no such file")
    if not is_gguf(path):
        raise GGUFImportError(f"{path}: not a GGUF file (it does not start with 'GGUF')")
    try:
        reader = GGUFReader(path)
    except Exception as err:  # the reader raises bare ValueError/IndexError/struct errors
        raise GGUFImportError(f"{path}: unreadable GGUF file ({err})") from None

    def scalar(key: str) -> Any:
        f = reader.fields.get(key)
        return None if f is None else f.contents()

    arch = scalar("general.architecture")
    if not isinstance(arch, str):
        raise GGUFImportError(f"{path}: GGUF file without general.architecture")
    tensor_types = Counter(t.tensor_type.name for t in reader.tensors)
    file_type = scalar("general.file_type")
    try:
        # LlamaFileType names read MOSTLY_Q4_1, ALL_F32, ...
        quantization = LlamaFileType(file_type).name.partition("_")[2]
    except (ValueError, TypeError):
        quantization = ""
    if not quantization:
        quantized = Counter({t: n for t, n in tensor_types.items() if t not in _FLOAT_TYPES})
        quantization = (quantized or tensor_types).most_common(1)[0][0] if tensor_types else "?"
    eos = [scalar(f"tokenizer.ggml.{k}_token_id") for k in ("eos", "eot")]
    return GGUFInfo(
        architecture=arch,
        name=scalar("general.name"),
        quantization=quantization,
        tensor_types=dict(tensor_types.most_common()),
        eos_token_ids=list(dict.fromkeys(int(i) for i in eos if i is not None)),
        context_length=scalar(f"{arch}.context_length"),
    )


def sha256_file(path: str | Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with Path(path).open("rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def import_gguf(path: str | Path, out_dir: str | Path, dtype: str = "fp32") -> Path:
    """Import a GGUF file into `out_dir` as a Hugging Face folder; return `out_dir`.

    The folder holds safetensors weights in `dtype` ("fp32" keeps the dequantized values
    exactly; "bf16" / "fp16" halve the size), `config.json`, the tokenizer with the GGUF's
    chat template, `generation_config.json` whose eos is the GGUF's (for chat models the
    end-of-turn token, e.g. `<|im_end|>`), and `tuneforge.json` recording the source file,
    its SHA-256 and its quantization. Tied embeddings stay tied (no separate lm_head).

    The folder is built next to `out_dir` and renamed into place, so an interrupted import
    leaves nothing behind. Raises GGUFImportError for a non-GGUF file, an architecture
    transformers cannot read, an unknown dtype, or an `out_dir` that exists and is not empty.
    """
    path, out = Path(path), Path(out_dir)
    if dtype not in DTYPES:
        raise GGUFImportError(f"unknown dtype {dtype!r}: use one of {', '.join(DTYPES)}")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise GGUFImportError(f"{out}: already exists and is not an empty folder")
    info = read_gguf_info(path)
    if info.architecture not in supported_architectures():
        raise GGUFImportError(
            f"{path.name}: architecture {info.architecture!r} is not supported "
            f"(supported: {', '.join(supported_architectures())})"
        )
    digest = sha256_file(path)

    out.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent))
    try:
        _write_folder(path, info, stage, DTYPES[dtype])
        write_import_manifest(stage, info, source=path, sha256=digest, dtype=dtype)
        _make_readable(stage)
        if out.exists():
            out.rmdir()  # empty (checked above): rename cannot replace a folder on every OS
        os.replace(stage, out)
        fsync_dir(out.parent)
    finally:
        if stage.exists():
            shutil.rmtree(stage, ignore_errors=True)
    return out


def _write_folder(path: Path, info: GGUFInfo, dest: Path, dtype: torch.dtype) -> None:
    """Dequantize with transformers and save model, tokenizer and generation config."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    source = {"pretrained_model_name_or_path": str(path.parent), "gguf_file": path.name}
    try:
        tokenizer = AutoTokenizer.from_pretrained(**source)
        loaded = AutoModelForCausalLM.from_pretrained(**source, dtype=dtype)
    except (ValueError, KeyError, NotImplementedError, RuntimeError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise GGUFImportError(f"{path.name}: transformers could not read it ({first})") from None

    # The GGUF-loaded model carries a GGUF "quantizer" that refuses save_pretrained; move its
    # (already dequantized) tensors into a plain model built from the same config.
    config = copy.deepcopy(loaded.config)
    for attr in ("quantization_config", "_model_name_or_path"):  # the latter is general.name
        config.__dict__.pop(attr, None)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.load_state_dict(loaded.state_dict(), assign=True)
    model.tie_weights()
    eos = info.eos_token_ids or [config.eos_token_id]
    model.generation_config = GenerationConfig(
        bos_token_id=config.bos_token_id,
        eos_token_id=eos[0] if len(eos) == 1 else eos,
        pad_token_id=getattr(config, "pad_token_id", None),
    )
    model.save_pretrained(dest)

    if info.context_length:
        tokenizer.model_max_length = int(info.context_length)
    tokenizer.save_pretrained(dest)
    # transformers 5 names its generic fast tokenizer "TokenizersBackend", a class 4.x lacks;
    # "PreTrainedTokenizerFast" names the same class in both.
    tok_config = dest / "tokenizer_config.json"
    # is_local / local_files_only describe how this process loaded it, not the folder.
    data = json.loads(tok_config.read_text())
    if data.get("tokenizer_class") == "TokenizersBackend":
        data["tokenizer_class"] = "PreTrainedTokenizerFast"
    for key in ("is_local", "local_files_only"):
        data.pop(key, None)
    tok_config.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def write_import_manifest(
    folder: Path, info: GGUFInfo, source: Path, sha256: str, dtype: str
) -> None:
    """Write `tuneforge.json` recording the import (the one place its keys are chosen)."""
    write_manifest(
        folder,
        {
            "tuneforge_version": __version__,
            "architecture": info.architecture,
            "dtype": dtype,
            "import": {
                "format": "gguf",
                "file": source.name,
                "sha256": sha256,
                "name": info.name,
                "quantization": info.quantization,
                "tensor_types": info.tensor_types,
                "dequantized": info.dequantized,
            },
        },
    )


def _make_readable(folder: Path) -> None:
    """mkdtemp makes a 0700 folder (and safetensors 0600 files): give them the umask's modes."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(folder, 0o777 & ~umask)
    for file in folder.iterdir():
        if file.is_file():
            os.chmod(file, 0o666 & ~umask)
