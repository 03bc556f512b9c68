"""Loading a model to evaluate: a full model folder, a PEFT adapter folder, or a Hub id."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from tuneforge.modeling.attention import use_block_attention
from tuneforge.modeling.dtype import resolve_dtype
from tuneforge.modeling.folder import (
    TOKENIZER_FILES,
    ManifestError,
    has_tokenizer,
    read_folder,
)
from tuneforge.modeling.folder import read_manifest as folder_manifest
from tuneforge.modeling.load import load_model_and_tokenizer
from tuneforge.tokenize.tokenizer import load_tokenizer


class EvalError(ValueError):
    """Input the evaluation cannot run on; the message says what is wrong and how to fix it."""


@dataclass
class LoadedModel:
    """A model ready to evaluate, and where it came from."""

    model: Any
    tokenizer: Any
    name: str  # as the user gave it
    base: str | None  # the base model of an adapter or a TuneForge fine-tune, when known
    is_adapter: bool
    manifest: dict[str, Any]  # tuneforge.json, or {}
    dtype: str = "fp32"  # the weights' dtype ("auto" resolved)
    dtype_reason: str = ""  # why that dtype (`tuneforge.modeling.dtype.DTypeChoice`)


def read_manifest(folder: str | Path) -> dict[str, Any]:
    """The folder's `tuneforge.json` as a JSON object, or {} when there is none."""
    try:
        manifest = folder_manifest(folder)
    except ManifestError as e:
        raise EvalError(str(e)) from None
    return manifest.to_json() if manifest is not None else {}


def base_model_of(folder: str | Path) -> str | None:
    """The base a model folder was fine-tuned from: adapter_config.json, else tuneforge.json."""
    folder = Path(folder)
    if not folder.is_dir():
        return None
    found = read_folder(folder)
    try:
        return found.adapter_base or found.base_model
    except ManifestError as e:
        raise EvalError(str(e)) from None


def load_for_eval(
    name_or_path: str | Path, dtype: str = "auto", device: str | torch.device | None = None
) -> LoadedModel:
    """Load a model and tokenizer for evaluation, in eval mode, with weights in `dtype`
    ("auto": bf16 where the device multiplies bf16 fast, see `tuneforge.modeling.dtype`).

    A folder with `adapter_config.json` is a PEFT adapter: its base comes from
    `base_model_name_or_path` (or the folder's `tuneforge.json`), and the tokenizer from the
    adapter folder when it has one (TuneForge saves it there), else from the base. A full model
    folder must hold its tokenizer. Hub ids load as `load_model_and_tokenizer` does.

    Raises:
        EvalError: a missing folder, a folder without weights or tokenizer, an adapter whose
            base cannot be found; the message names the folder and the fix.
    """
    name = str(name_or_path)
    path = Path(name)
    looks_local = path.exists() or name.startswith((".", "/", "~")) or name.count("/") > 1
    if looks_local and not path.is_dir():
        raise EvalError(f"{name}: no such model folder")
    manifest = read_manifest(path) if path.is_dir() else {}
    is_adapter = path.is_dir() and read_folder(path).is_adapter
    if path.is_dir() and not is_adapter:
        if not read_folder(path).is_model:
            raise EvalError(
                f"{name}: not a model folder (no config.json or adapter_config.json); "
                "point --model at a folder written by `tuneforge train` or save_pretrained"
            )
        if not has_tokenizer(path):
            raise EvalError(
                f"{name}: the model folder has no tokenizer ({' / '.join(TOKENIZER_FILES[:2])}); "
                "save it next to the weights with tokenizer.save_pretrained(folder)"
            )
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        choice = resolve_dtype(dtype, device)
    except ValueError as e:
        raise EvalError(str(e)) from None
    base: str | None
    try:
        if is_adapter:
            model, tokenizer, base = _load_adapter(path, choice.name)
        else:
            model, tokenizer = load_model_and_tokenizer(name, dtype=choice.name)
            base = manifest.get("base_model")
    except EvalError:
        raise
    except (OSError, ValueError) as e:
        raise EvalError(f"cannot load model {name!r}: {e}") from e
    model.to(device).eval()
    if choice.name == "bf16":  # causal attention on the bf16 matmul units, as in training
        use_block_attention(model)
    return LoadedModel(
        model, tokenizer, name, base, is_adapter, manifest, choice.name, choice.reason
    )


def _load_adapter(path: Path, dtype: str = "fp32") -> tuple[Any, Any, str]:
    from peft import PeftModel

    base = base_model_of(path)
    if not base:
        raise EvalError(
            f"{path}: adapter without a base model (no base_model_name_or_path in "
            "adapter_config.json, no base_model in tuneforge.json)"
        )
    try:
        model, tokenizer = load_model_and_tokenizer(base, dtype=dtype)
    except (OSError, ValueError) as e:
        raise EvalError(f"{path}: cannot load the adapter's base model {base!r}: {e}") from e
    if has_tokenizer(path):
        tokenizer = load_tokenizer(path)
        if len(tokenizer) > model.get_input_embeddings().num_embeddings:
            model.resize_token_embeddings(len(tokenizer))
    # Folding the adapter into the weights gives the same function without the per-layer LoRA
    # detour: generation runs at the base model's speed.
    return PeftModel.from_pretrained(model, str(path)).merge_and_unload(), tokenizer, base
