"""Which parameters train, in which optimizer group, at what learning rate.

Every fine-tuning method is model surgery plus one `TrainablePlan`:

- full: every parameter trains;
- lora: `apply_lora` injects adapters (peft), and only `lora_` parameters train;
- frozen layers, head-only, gradual unfreezing and layer-wise learning rates are further
  `ParamRule`s over parameter names (block indices come from `find_blocks`).

A plan maps each parameter name to a `ParamSetting` (trainable, group, lr_scale,
weight_decay); `apply` sets `requires_grad`, `param_groups` builds the AdamW groups.

Example:
    >>> model = apply_lora(model, LoraSpec(r=8))
    >>> plan = plan_for_method(model, "lora", weight_decay=0.01)
    >>> optimizer = torch.optim.AdamW(plan.param_groups(model, lr=2e-4))
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from torch import nn

from tuneforge.modeling.load import base_causal_lm, find_blocks

# Per-architecture LoRA targets (model_type -> module names). Llama-style models adapt every
# attention and MLP projection, as in the QLoRA paper; GPT-2 fuses q/k/v into c_attn.
LORA_TARGETS: dict[str, list[str]] = {
    "llama": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "mistral": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "qwen2": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "qwen3": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "gemma": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "phi3": ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"],
    "gpt2": ["c_attn", "c_proj", "c_fc"],
    "gpt_neox": ["query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"],
}


@dataclass(frozen=True)
class LoraSpec:
    """LoRA hyperparameters; `target_modules=None` picks the architecture's default."""

    r: int = 16
    alpha: float = 32
    dropout: float = 0.05
    target_modules: Sequence[str] | None = None


def lora_targets(model: nn.Module) -> list[str] | str:
    """Default LoRA target module names for `model`'s architecture ("all-linear" if unknown)."""
    model_type = getattr(base_causal_lm(model).config, "model_type", None)
    return list(LORA_TARGETS.get(model_type, [])) or "all-linear"


def apply_lora(model: nn.Module, spec: LoraSpec) -> nn.Module:
    """Wrap `model` in a peft `PeftModel` with LoRA adapters (base weights frozen by peft)."""
    from peft import LoraConfig, get_peft_model

    targets = list(spec.target_modules) if spec.target_modules else lora_targets(model)
    config = LoraConfig(
        r=spec.r,
        lora_alpha=spec.alpha,
        lora_dropout=spec.dropout,
        target_modules=targets,
        # GPT-2 style Conv1D layers store weights transposed.
        fan_in_fan_out=getattr(base_causal_lm(model).config, "model_type", None) == "gpt2",
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, config)


@dataclass(frozen=True)
class ParamSetting:
    """How one parameter is trained."""

    trainable: bool
    group: str = "default"
    lr_scale: float = 1.0
    weight_decay: float = 0.0


@dataclass(frozen=True)
class ParamRule:
    """Override settings for parameters whose name matches `pattern` (a regex, `re.search`).

    Fields left as None keep the value set by earlier rules. Later rules win.
    """

    pattern: str
    trainable: bool | None = None
    group: str | None = None
    lr_scale: float | None = None
    weight_decay: float | None = None


def no_decay(name: str, param: nn.Parameter, embedding_names: set[str]) -> bool:
    """Norm weights, biases (1-D tensors) and embeddings are not decayed."""
    return param.ndim < 2 or name in embedding_names


@dataclass
class TrainablePlan:
    """The full answer to "what trains, how": parameter name -> `ParamSetting`."""

    settings: dict[str, ParamSetting] = field(default_factory=dict)

    @classmethod
    def build(
        cls,
        model: nn.Module,
        rules: Iterable[ParamRule],
        weight_decay: float = 0.0,
        default_trainable: bool = True,
    ) -> TrainablePlan:
        """Start from `default_trainable` for all parameters, then apply `rules` in order.

        Weight decay is `weight_decay` except for norms, biases and embeddings (0), unless a
        rule sets it explicitly.
        """
        embedding_names = {
            f"{mod_name}.{p_name}" if mod_name else p_name
            for mod_name, module in model.named_modules()
            if isinstance(module, nn.Embedding)
            for p_name, _ in module.named_parameters(recurse=False)
        }
        rules = [(re.compile(r.pattern), r) for r in rules]
        settings = {}
        for name, param in model.named_parameters():
            wd = 0.0 if no_decay(name, param, embedding_names) else weight_decay
            s = ParamSetting(trainable=default_trainable, weight_decay=wd)
            for regex, rule in rules:
                if regex.search(name):
                    s = ParamSetting(
                        trainable=s.trainable if rule.trainable is None else rule.trainable,
                        group=s.group if rule.group is None else rule.group,
                        lr_scale=s.lr_scale if rule.lr_scale is None else rule.lr_scale,
                        weight_decay=s.weight_decay
                        if rule.weight_decay is None
                        else rule.weight_decay,
                    )
            settings[name] = s
        return cls(settings)

    def apply(self, model: nn.Module) -> TrainablePlan:
        """Set `requires_grad` on every parameter of `model` according to the plan.

        Returns the plan itself, so `plan = TrainablePlan.build(...).apply(model)` reads well.
        """
        for name, param in model.named_parameters():
            param.requires_grad_(self.settings[name].trainable)
        return self

    def param_groups(self, model: nn.Module, lr: float) -> list[dict]:
        """AdamW parameter groups: one per (group, lr_scale, weight_decay), trainable only.

        Each group carries `lr`, `weight_decay`, its `name` and `lr_scale` (schedulers scale
        the base LR of each group, so the multiplier survives scheduling).
        """
        groups: dict[tuple[str, float, float], dict] = {}
        for name, param in model.named_parameters():
            s = self.settings[name]
            if not s.trainable:
                continue
            key = (s.group, s.lr_scale, s.weight_decay)
            if key not in groups:
                groups[key] = {
                    "params": [],
                    "name": f"{s.group}/lr{s.lr_scale:g}/wd{s.weight_decay:g}",
                    "lr": lr * s.lr_scale,
                    "lr_scale": s.lr_scale,
                    "weight_decay": s.weight_decay,
                }
            groups[key]["params"].append(param)
        return list(groups.values())

    def counts(self, model: nn.Module) -> tuple[int, int]:
        """(trainable parameter count, total parameter count)."""
        trainable = total = 0
        for name, param in model.named_parameters():
            total += param.numel()
            if self.settings[name].trainable:
                trainable += param.numel()
        return trainable, total


def block_rules(model: nn.Module, trainable_blocks: Iterable[int]) -> list[ParamRule]:
    """Rules freezing every transformer block except `trainable_blocks` (negative = from end).

    A building block for frozen-layer and gradual-unfreezing settings.
    """
    path, blocks = find_blocks(model)
    keep = {i % len(blocks) for i in trainable_blocks}
    # Parameter names carry the block path (possibly behind peft's "base_model.model." prefix).
    return [
        ParamRule(rf"(^|\.){re.escape(path)}\.{i}\.", trainable=i in keep)
        for i in range(len(blocks))
    ]


def plan_for_method(model: nn.Module, method: str, weight_decay: float = 0.0) -> TrainablePlan:
    """The plan of a fine-tuning method: "full" (everything) or "lora" (adapters only)."""
    if method == "full":
        return TrainablePlan.build(model, [], weight_decay, default_trainable=True)
    if method == "lora":
        return TrainablePlan.build(
            model, [ParamRule(r"\.lora_", trainable=True)], weight_decay, default_trainable=False
        )
    raise ValueError(f"unknown method {method!r}; choose 'full' or 'lora'")
