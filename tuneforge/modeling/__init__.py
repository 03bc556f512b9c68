"""Models: loading base models and tokenizers, LoRA, freezing and parameter groups."""

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

__all__ = [
    "Layout",
    "LoraSpec",
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
    "unwrap_model",
]
