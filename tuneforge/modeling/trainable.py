"""Which parameters train, in which optimizer group, at what learning rate.

Every fine-tuning method is model surgery plus one `TrainablePlan`:

- full: every parameter trains;
- lora: `apply_lora` injects adapters (peft), and only `lora_` parameters train;
- head: only the LM head (or a classification head) trains;
- frozen layers, gradual unfreezing and layer-wise learning rates are further `ParamRule`s
  over parameter names, placed by `Layout` (embeddings, blocks from `find_blocks`, top).

A plan maps each parameter name to a `ParamSetting` (trainable, group, lr_scale,
weight_decay); `apply` sets `requires_grad`, `param_groups` builds the AdamW groups.
`TrainableSpec` + `build_plan` is the whole transfer-learning surface in one place: the
training loop asks for a plan, never branches on the method.

Example:
    >>> model = apply_lora(model, LoraSpec(r=8))
    >>> plan = plan_for_method(model, "lora", weight_decay=0.01)
    >>> optimizer = torch.optim.AdamW(plan.param_groups(model, lr=2e-4))
    >>> spec = TrainableSpec("full", freeze_blocks=2, layer_decay=0.8, unfrozen_blocks=1)
    >>> plan = build_plan(model, spec).apply(model)  # head + top block train, lower LR below
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import torch
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


def apply_lora(model: nn.Module, spec: LoraSpec, task_type: str = "CAUSAL_LM") -> nn.Module:
    """Wrap `model` in a peft `PeftModel` with LoRA adapters (base weights frozen by peft).

    `task_type="SEQ_CLS"` for a sequence classifier: peft then also trains and saves the new
    classification head in full (`modules_to_save`).
    """
    from peft import LoraConfig, get_peft_model

    targets = list(spec.target_modules) if spec.target_modules else lora_targets(model)
    config = LoraConfig(
        r=spec.r,
        lora_alpha=spec.alpha,
        lora_dropout=spec.dropout,
        target_modules=targets,
        # GPT-2 style Conv1D layers store weights transposed.
        fan_in_fan_out=getattr(base_causal_lm(model).config, "model_type", None) == "gpt2",
        task_type=task_type,
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

    def param_groups(
        self, model: nn.Module, lr: float, names: Iterable[str] | None = None
    ) -> list[dict]:
        """AdamW parameter groups: one per (group, lr_scale, weight_decay), trainable only.

        Each group carries `lr`, `weight_decay`, its `name` and `lr_scale` (schedulers scale
        the base LR of each group, so the multiplier survives scheduling). `names` restricts
        the groups to those parameters (gradual unfreezing adds the newly trainable ones).
        """
        only = set(names) if names is not None else None
        groups: dict[tuple[str, float, float], dict] = {}
        for name, param in model.named_parameters():
            s = self.settings[name]
            if not s.trainable or (only is not None and name not in only):
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

    def trainable_names(self) -> set[str]:
        return {name for name, s in self.settings.items() if s.trainable}

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


def _exact(names: Iterable[str]) -> str:
    """A regex matching exactly these parameter names."""
    return "^(" + "|".join(re.escape(n) for n in sorted(names)) + ")$"


@dataclass(frozen=True)
class Layout:
    """Where each parameter of a model sits, bottom to top.

    Positions: 0 for the embeddings (and anything else outside the blocks that is an
    `nn.Embedding`), `i + 1` for transformer block `i`, `n_blocks + 1` for the top (final
    norm, LM head, classification head). `head` names the head's parameters; with tied
    embeddings (GPT-2) the head *is* the input embedding matrix, named once.
    """

    n_blocks: int
    position: dict[str, int]
    head: frozenset[str]

    @classmethod
    def of(cls, model: nn.Module) -> Layout:
        lm = base_causal_lm(model)
        path, blocks = find_blocks(model)
        block_re = re.compile(rf"(^|\.){re.escape(path)}\.(\d+)\.")
        head_module = lm.get_output_embeddings()
        if head_module is None:  # *ForSequenceClassification and friends
            head_module = getattr(lm, "score", None) or getattr(lm, "classifier", None)
        head_ids = {id(p) for p in head_module.parameters()} if head_module is not None else set()
        embedding_ids = {
            id(p)
            for m in lm.modules()
            if isinstance(m, nn.Embedding)
            for p in m.parameters(recurse=False)
        }
        position, head = {}, set()
        for name, param in model.named_parameters():
            m = block_re.search(name)
            if m:
                position[name] = int(m.group(2)) + 1
            elif id(param) in embedding_ids and id(param) not in head_ids:
                position[name] = 0
            else:
                position[name] = len(blocks) + 1
            if id(param) in head_ids:
                head.add(name)
        return cls(len(blocks), position, frozenset(head))

    def names(self, positions: Iterable[int]) -> set[str]:
        wanted = set(positions)
        return {n for n, pos in self.position.items() if pos in wanted}


@dataclass(frozen=True)
class TrainableSpec:
    """Everything that decides which parameters train and at what LR, in one value.

    Args:
        method: "full" (every weight), "lora" (adapter weights; apply `apply_lora` first) or
            "head" (only the LM / classification head).
        freeze_blocks: the first N transformer blocks never train.
        freeze_embeddings: the input embeddings never train.
        freeze_patterns: regexes over parameter names that never train.
        layer_decay: block i of n trains at lr * layer_decay^(n-1-i), the embeddings at
            lr * layer_decay^n; the top (final norm, head) at lr.
        head_lr_scale: extra LR multiplier of the head.
        unfrozen_blocks: gradual unfreezing; None: no limit; k: only the top k blocks (and the
            head, and the top norm) may train; k > n_blocks also lets the embeddings train.
        weight_decay: AdamW decay of matrices (never of norms, biases, embeddings).
    """

    method: str = "full"
    freeze_blocks: int = 0
    freeze_embeddings: bool = False
    freeze_patterns: tuple[str, ...] = ()
    layer_decay: float = 1.0
    head_lr_scale: float = 1.0
    unfrozen_blocks: int | None = None
    weight_decay: float = 0.0


def method_rules(layout: Layout, method: str) -> tuple[list[ParamRule], bool]:
    """(rules, default_trainable) of a fine-tuning method."""
    if method == "full":
        return [], True
    if method == "lora":
        # modules_to_save: a new classification head, trained whole next to the adapters.
        return [ParamRule(r"\.(lora_|modules_to_save\.)", trainable=True)], False
    if method == "head":
        if not layout.head:
            raise ValueError("this model has no head to train on its own")
        return [ParamRule(_exact(layout.head), trainable=True)], False
    raise ValueError(f"unknown method {method!r}; choose 'full', 'lora' or 'head'")


def build_plan(model: nn.Module, spec: TrainableSpec) -> TrainablePlan:
    """The `TrainablePlan` of `spec` on `model`.

    Rules, later winning: the method's, then the gradual-unfreezing limit, then the frozen
    parameters, then one optimizer group per layer position with its LR scale. Each block is
    its own group, so a block unfrozen later can join the optimizer as a new group.
    """
    layout = Layout.of(model)
    n = layout.n_blocks
    rules, default_trainable = method_rules(layout, spec.method)
    if spec.unfrozen_blocks is not None:
        lowest_open = n + 1 - spec.unfrozen_blocks  # position of the lowest unfrozen block
        closed = layout.names(range(0, max(0, lowest_open))) - layout.head
        if closed:
            rules.append(ParamRule(_exact(closed), trainable=False))
    frozen = layout.names(range(1, 1 + spec.freeze_blocks))
    if spec.freeze_embeddings:
        frozen |= layout.names([0]) - layout.head
    if frozen:
        rules.append(ParamRule(_exact(frozen), trainable=False))
    rules += [ParamRule(p, trainable=False) for p in spec.freeze_patterns]
    for pos in range(n + 2):
        names = layout.names([pos]) - layout.head
        if names:
            group = "embeddings" if pos == 0 else f"block.{pos - 1}" if pos <= n else "top"
            scale = spec.layer_decay ** (n - pos) if pos <= n else 1.0
            rules.append(ParamRule(_exact(names), group=group, lr_scale=scale))
    if layout.head:
        rules.append(ParamRule(_exact(layout.head), group="head", lr_scale=spec.head_lr_scale))
    return TrainablePlan.build(model, rules, spec.weight_decay, default_trainable)


def plan_for_method(model: nn.Module, method: str, weight_decay: float = 0.0) -> TrainablePlan:
    """The plan of a fine-tuning method alone: "full", "lora" (adapters only) or "head"."""
    if method == "head":
        return build_plan(model, TrainableSpec("head", weight_decay=weight_decay))
    rules, default_trainable = method_rules(Layout.of(model), method)
    return TrainablePlan.build(model, rules, weight_decay, default_trainable)


def hold_dtypes(model: nn.Module, trainable: Iterable[str], frozen_dtype: torch.dtype) -> int:
    """Store each floating parameter of `model` in the dtype its role needs, once.

    Parameters named in `trainable` (those that train at any point of the run) are fp32: the
    optimizer updates them in place and keeps its state in their dtype, and bf16 would round
    small updates away. Every other parameter is frozen and held in `frozen_dtype` (bf16 in a
    bf16 run: half the memory, and autocast finds it already in the compute dtype instead of
    casting it at every op). The `Parameter` objects stay the same (tied weights stay tied).
    Returns how many parameters changed dtype.
    """
    names = set(trainable)
    changed = 0
    for name, param in model.named_parameters():
        if not param.is_floating_point():
            continue
        want = torch.float32 if name in names else frozen_dtype
        if param.dtype != want:
            param.data = param.data.to(want)
            changed += 1
    return changed


def skip_adapter_input_casts(model: nn.Module) -> None:
    """Under autocast, stop peft casting each LoRA layer's input to the adapters' fp32.

    peft casts the (bf16) activations to the adapter weights' dtype before the LoRA dropout
    and `lora_A`; autocast casts them straight back to bf16 for the matmul. Two copies of
    the activations per adapted layer, and the dropout in fp32, for nothing.
    """
    for module in model.modules():
        if hasattr(module, "lora_A"):
            module.cast_input_dtype_enabled = False
