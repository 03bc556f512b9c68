"""Models: the model folder, loading base models and tokenizers, LoRA, freezing and groups.

`tuneforge.modeling.folder` (the model folder's layout, manifest, reader and writer) imports
neither torch nor transformers; the other names load torch when first used, so importing this
package stays cheap (the job worker and the CLI import it without starting torch).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tuneforge.modeling.folder import (
        Manifest,
        ModelFolder,
        read_folder,
        read_manifest,
        write_manifest,
    )
    from tuneforge.modeling.load import (
        base_causal_lm,
        body_and_head,
        find_blocks,
        load_classifier,
        load_model_and_tokenizer,
        unwrap_model,
    )
    from tuneforge.modeling.trainable import (
        Layout,
        LoraSpec,
        ParamRule,
        ParamSetting,
        TrainablePlan,
        TrainableSpec,
        apply_lora,
        block_rules,
        build_plan,
        plan_for_method,
    )

# Public name -> the module defining it (imported on first access, PEP 562).
_LAZY = {
    **dict.fromkeys(
        ("Manifest", "ModelFolder", "read_folder", "read_manifest", "write_manifest"),
        "tuneforge.modeling.folder",
    ),
    **dict.fromkeys(
        (
            "base_causal_lm",
            "body_and_head",
            "find_blocks",
            "load_classifier",
            "load_model_and_tokenizer",
            "unwrap_model",
        ),
        "tuneforge.modeling.load",
    ),
    **dict.fromkeys(
        (
            "Layout",
            "LoraSpec",
            "ParamRule",
            "ParamSetting",
            "TrainablePlan",
            "TrainableSpec",
            "apply_lora",
            "block_rules",
            "build_plan",
            "plan_for_method",
        ),
        "tuneforge.modeling.trainable",
    ),
}

__all__ = [
    "Layout",
    "LoraSpec",
    "Manifest",
    "ModelFolder",
    "ParamRule",
    "ParamSetting",
    "TrainablePlan",
    "TrainableSpec",
    "apply_lora",
    "base_causal_lm",
    "block_rules",
    "body_and_head",
    "build_plan",
    "find_blocks",
    "load_classifier",
    "load_model_and_tokenizer",
    "plan_for_method",
    "read_folder",
    "read_manifest",
    "unwrap_model",
    "write_manifest",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
