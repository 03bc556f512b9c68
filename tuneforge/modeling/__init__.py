"""Models: loading base models and tokenizers, LoRA, freezing and parameter groups."""

from tuneforge.modeling.load import (
    base_causal_lm,
    body_and_head,
    find_blocks,
    load_model_and_tokenizer,
    unwrap_model,
)
from tuneforge.modeling.trainable import (
    LoraSpec,
    ParamRule,
    ParamSetting,
    TrainablePlan,
    apply_lora,
    block_rules,
    plan_for_method,
)

__all__ = [
    "LoraSpec",
    "ParamRule",
    "ParamSetting",
    "TrainablePlan",
    "apply_lora",
    "base_causal_lm",
    "block_rules",
    "body_and_head",
    "find_blocks",
    "load_model_and_tokenizer",
    "plan_for_method",
    "unwrap_model",
]
