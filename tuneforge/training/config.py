"""The one typed config of a training run.

(Just over 500 lines: the whole schema of a run in one file, a docstring per field, so that
the CLI, YAML files and the jobs API read one place.)

Every option lives here, grouped (model, data, method/lora, optim, eval, checkpoint, output),
with a description per field. YAML files and CLI flags are both parsed into `TrainConfig`;
flags override YAML. Validation happens up front and reports every problem at once
(`ConfigError.problems`). Unknown keys are rejected.

Some hyperparameters may be ``"auto"``; `resolve_auto` turns them into numbers once the
number of training examples is known, following OpenAI's fine-tuning defaults.

Example:
    >>> cfg = load_config(None, {"model.name_or_path": "gpt2", "data.train": "train.jsonl",
    ...                          "output.dir": "out"})
    >>> cfg.optim.lr
    'auto'
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, get_args

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from tuneforge.auto import auto_batch_size, auto_epochs, auto_lr  # one rule for data, train, jobs
from tuneforge.modeling.folder import is_model_folder

Auto = Literal["auto"]
# OpenAI's "auto" DPO beta, and TRL's DPOConfig default.
AUTO_BETA = 0.1


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelSection(_Section):
    """Which base model to fine-tune, and how to run it."""

    name_or_path: str = Field(
        description="Hugging Face Hub id or local folder of an AutoModelForCausalLM "
        "(safetensors weights only). With parent.model it defaults to the parent folder."
    )
    dtype: Literal["auto", "fp32", "bf16"] = Field(
        "auto",
        description="Compute precision. auto: bf16 where the hardware multiplies bf16 fast (CUDA "
        "with bf16; a CPU whose measured, cached probe finds bf16 clearly faster), else fp32. "
        "In bf16 the frozen weights are held in bf16, the trained ones and the optimizer state "
        "in fp32, and the loss is computed in fp32.",
    )
    trust_remote_code: bool = Field(
        False, description="Allow model code from the Hub to run. Off unless you trust the repo."
    )
    gradient_checkpointing: bool = Field(
        False, description="Recompute activations in the backward pass: less memory, ~30% slower."
    )


class DataSection(_Section):
    """Training and validation files, and how examples become token sequences."""

    train: Path = Field(
        description="Training file (JSONL, CSV, Parquet or text): OpenAI chat, "
        "prompt-completion or {'text': ...} examples."
    )
    valid: Path | None = Field(None, description="Optional JSONL validation file, same formats.")
    train_on: Literal["assistant", "last_assistant", "all"] = Field(
        "assistant",
        description="Which tokens are trained: every assistant turn, only the last assistant "
        "turn, or all tokens.",
    )
    max_length: int = Field(
        2048, ge=8, description="Longest token sequence fed to the model (and packing row length)."
    )
    too_long: Literal["drop", "truncate"] = Field(
        "drop", description="What to do with examples longer than max_length (counted either way)."
    )
    packing: bool = Field(
        False,
        description="Pack several examples into each max_length row (block-causal attention, no "
        "cross-example leakage). Without packing, batches are grouped by length.",
    )

    @field_validator("train", "valid")
    @classmethod
    def _file_exists(cls, v: Path | None) -> Path | None:
        if v is not None and not Path(v).is_file():
            raise ValueError(f"file not found: {v}")
        return v


class LoraSection(_Section):
    """LoRA adapter settings (used when method is 'lora')."""

    r: int = Field(16, ge=1, description="Rank of the low-rank update.")
    alpha: float = Field(
        32, gt=0, description="Scaling numerator: the update is scaled by alpha/r."
    )
    dropout: float = Field(
        0.0,
        ge=0,
        lt=1,
        description="Dropout on the LoRA input. 0 by default: a short fine-tune barely "
        "overfits, and dropout keeps a copy of every adapted layer's input for backward "
        "(0.8 GB of a 135M model's 2.9 GB of activations).",
    )
    target_modules: list[str] | None = Field(
        None,
        description="Module names to adapt. Default per architecture (llama/qwen2/mistral: all "
        "attention and MLP projections; gpt2: c_attn, c_proj, c_fc; otherwise all linear).",
    )


class FreezeSection(_Section):
    """Parameters that never train (on top of what the method trains)."""

    blocks: int | float = Field(
        0,
        ge=0,
        description="Freeze the first N transformer blocks (an integer), or this fraction of "
        "them (a number below 1, rounded down).",
    )
    embeddings: bool | None = Field(
        None,
        description="Freeze the input embeddings. Default: frozen whenever any block is frozen.",
    )
    patterns: list[str] = Field(
        default_factory=list,
        description="Regexes (re.search) over parameter names; matching parameters are frozen.",
    )

    @field_validator("blocks")
    @classmethod
    def _blocks(cls, v: int | float) -> int | float:
        if isinstance(v, float) and not v < 1:
            raise ValueError("a fraction must be below 1; use an integer for a number of blocks")
        return v


class UnfreezeSection(_Section):
    """Gradual unfreezing (ULMFiT): train the top first, then one more block at a time."""

    every: int | Literal["epoch"] | None = Field(
        None,
        description="Unfreeze one more block (top down) every N optimizer steps, or every "
        "'epoch'. null disables gradual unfreezing.",
    )
    start_blocks: int = Field(
        0,
        ge=0,
        description="Blocks trainable from the start, besides the head (LoRA without a head "
        "needs at least 1).",
    )
    depth: int | None = Field(
        None,
        ge=1,
        description="Stop after this many blocks are trainable. null: every block that is not "
        "frozen, then the embeddings (unless frozen).",
    )


# The validation metrics that can pick a run's best evaluation (early stopping, the kept best
# checkpoint, export_best): whether higher is better (losses fall, accuracies rise), and the
# tasks that report each. The one owner of a metric's direction.
SelectionMetric = Literal[
    "valid_loss",
    "valid_mean_token_accuracy",
    "valid_accuracy",
    "valid_macro_f1",
    "valid_reward_accuracy",
    "valid_reward_margin",
]
SELECTION_METRICS: dict[str, tuple[bool, tuple[str, ...]]] = {
    "valid_loss": (False, ("causal_lm", "classify", "dpo")),
    "valid_mean_token_accuracy": (True, ("causal_lm",)),
    "valid_accuracy": (True, ("classify",)),
    "valid_macro_f1": (True, ("classify",)),
    "valid_reward_accuracy": (True, ("dpo",)),
    "valid_reward_margin": (True, ("dpo",)),
}
assert set(SELECTION_METRICS) == set(get_args(SelectionMetric))


def higher_is_better(metric: str) -> bool:
    """Whether a larger value of a selection metric is an improvement.

    Example:
        >>> higher_is_better("valid_loss"), higher_is_better("valid_reward_accuracy")
        (False, True)
    """
    return SELECTION_METRICS[metric][0]


class EarlyStopSection(_Section):
    """Stop when a validation metric stops improving."""

    patience: int | None = Field(
        None,
        ge=1,
        description="Stop after this many evaluations without an improvement of min_delta. "
        "null disables early stopping (needs eval.eval_every).",
    )
    metric: SelectionMetric = Field(
        "valid_loss",
        description="The validation metric that picks the best evaluation, for early stopping, "
        "checkpoint.keep_best and export_best. Lower is better for valid_loss, higher for the "
        "others. valid_mean_token_accuracy: task causal_lm; valid_accuracy, valid_macro_f1: "
        "classify; valid_reward_accuracy, valid_reward_margin: dpo.",
    )
    min_delta: float = Field(
        0.0,
        ge=0,
        description="Smallest change of the metric, in its better direction, that counts as "
        "an improvement.",
    )
    export_best: bool = Field(
        True,
        description="Export the weights of the best evaluation (not the last step) to the "
        "output folder.",
    )


class ClassifySection(_Section):
    """Sequence classification (task 'classify'): {"text": ..., "label": ...} examples."""

    labels: list[str] | None = Field(
        None,
        description="Class names in id order. Default: the sorted distinct labels of the "
        "training file.",
    )


class DpoSection(_Section):
    """Preference tuning (task 'dpo'): preference examples (input / preferred_output /
    non_preferred_output), trained by Direct Preference Optimization against the starting
    model as the reference."""

    beta: float | Auto = Field(
        "auto",
        description="Strength of the pull towards the reference: the implicit reward is beta "
        "x (log pi - log pi_ref). Lower lets the model move further. auto: 0.1 (OpenAI's "
        "and TRL's default).",
    )
    label_smoothing: float = Field(
        0.0,
        ge=0,
        lt=0.5,
        description="Share of pairs assumed mislabelled (conservative DPO); 0 is plain "
        "sigmoid DPO.",
    )
    sft_weight: float = Field(
        0.0,
        ge=0,
        description="Weight of the preferred reply's mean per-token loss added to each pair's "
        "DPO loss (SFT-regularised DPO; RPO, TRL's rpo_alpha): keeps the preferred replies "
        "likely while the pair's margin grows. 0 is plain DPO; 1 as in RPO.",
    )

    @field_validator("beta")
    @classmethod
    def _positive_beta(cls, v: float | str) -> float | str:
        if isinstance(v, float) and not v > 0:
            raise ValueError("must be > 0 or 'auto'")
        return v


class ParentSection(_Section):
    """Continued fine-tuning: start from an earlier TuneForge fine-tune."""

    model: Path | None = Field(
        None,
        description="Fine-tuned model folder to continue from (full weights, or an adapter on "
        "its base). Its tuneforge.json gives the base model and the data to replay.",
    )
    replay: float = Field(
        0.0,
        ge=0,
        lt=1,
        description="Share of the training mix drawn from the parent's training data, against "
        "forgetting (0.2: one example in five is replayed).",
    )
    lr_factor: float = Field(
        0.5,
        gt=0,
        le=1,
        description="With optim.lr 'auto', the LR is the parent's LR times this factor (when "
        "the parent trained the same task; DPO after SFT takes DPO's own auto LR).",
    )

    @field_validator("model")
    @classmethod
    def _is_model_folder(cls, v: Path | None) -> Path | None:
        if v is not None and not is_model_folder(v):
            raise ValueError(f"not a model folder (no config.json or adapter_config.json): {v}")
        return v


class OptimSection(_Section):
    """Optimizer, batch and learning-rate schedule."""

    epochs: int | Auto = Field(
        "auto",
        description="Passes over the training data. auto: 3, raised for tiny and lowered for huge "
        "datasets (OpenAI's rule).",
    )
    max_steps: int | None = Field(
        None, ge=1, description="Stop after this many optimizer steps (overrides epochs)."
    )
    batch_size: int | Auto = Field(
        "auto",
        description="Examples (or packed rows) per optimizer step, across all processes and "
        "accumulation micro-batches. auto: from dataset size.",
    )
    grad_accum: int = Field(
        1, ge=1, description="Micro-batches per optimizer step (per process); same global batch."
    )
    lr: float | Auto = Field(
        "auto",
        description="Peak learning rate. auto: 2e-4 for LoRA, 2e-5 for full fine-tuning at a "
        "hidden size of 4096, up to 4.5x that for narrower models (4096 / hidden size); a tenth "
        "of that for task dpo.",
    )
    schedule: Literal["cosine", "linear", "constant"] = Field(
        "linear", description="Decay after warmup: cosine or linear to zero, or constant."
    )
    warmup: float = Field(
        0.03,
        ge=0,
        description="Warmup length: a fraction of all steps if < 1, otherwise a number of steps.",
    )
    weight_decay: float = Field(
        0.0, ge=0, description="AdamW weight decay (never applied to norms, biases, embeddings)."
    )
    betas: tuple[float, float] = Field((0.9, 0.999), description="AdamW betas.")
    eps: float = Field(1e-8, gt=0, description="AdamW epsilon.")
    max_grad_norm: float | None = Field(
        1.0, description="Clip the global gradient norm to this value; null disables clipping."
    )
    layer_decay: float = Field(
        1.0,
        gt=0,
        le=1,
        description="Layer-wise LR decay: block i of n trains at lr * layer_decay^(n-1-i), the "
        "embeddings at lr * layer_decay^n; 1 gives every layer the same LR.",
    )
    head_lr_scale: float = Field(
        1.0, gt=0, description="LR multiplier of the LM or classification head."
    )

    @field_validator("epochs", "batch_size")
    @classmethod
    def _positive(cls, v: int | str) -> int | str:
        if isinstance(v, int) and v < 1:
            raise ValueError("must be >= 1 or 'auto'")
        return v

    @field_validator("lr")
    @classmethod
    def _positive_lr(cls, v: float | str) -> float | str:
        if isinstance(v, float) and not (0 < v < 1):
            raise ValueError("must be in (0, 1) or 'auto'")
        return v

    @field_validator("grad_accum")
    @classmethod
    def _batch_divides(cls, v: int, info: ValidationInfo) -> int:
        # A field validator (not a model validator) so this is reported alongside other errors.
        bs = info.data.get("batch_size")
        if isinstance(bs, int) and bs % v:
            raise ValueError(f"batch_size ({bs}) must be a multiple of grad_accum ({v})")
        return v


class EvalSection(_Section):
    """Validation during and after training."""

    eval_every: int | None = Field(
        None, ge=1, description="Evaluate every N optimizer steps (always at the end)."
    )
    max_examples: int | None = Field(
        256,
        ge=1,
        description="Examples used by periodic evaluation; the final full_valid_loss uses all.",
    )
    batch_size: int = Field(8, ge=1, description="Examples per evaluation forward pass.")


class CheckpointSection(_Section):
    """Checkpoints that allow an exact resume."""

    save_every: int | None = Field(
        None, ge=1, description="Save every N optimizer steps (and always at each epoch end)."
    )
    keep_last: int = Field(2, ge=1, description="Checkpoints kept, newest first (plus the best).")
    keep_best: bool = Field(
        True,
        description="Also keep the checkpoint of the best evaluation (by early_stop.metric).",
    )
    resume: str | None = Field(
        None,
        description="'auto' to continue from the newest checkpoint in the output folder if "
        "there is one, or the path of a checkpoint folder.",
    )

    @field_validator("resume")
    @classmethod
    def _resume_target(cls, v: str | None) -> str | None:
        if v not in (None, "auto") and not Path(v).is_dir():
            raise ValueError(f"checkpoint folder not found: {v} (use 'auto' or a folder)")
        return v


class OutputSection(_Section):
    """Where the fine-tuned model folder is written."""

    dir: Path = Field(description="Output folder: model/adapter, tokenizer, metrics, checkpoints.")
    merge: bool = Field(
        False, description="LoRA only: also write merged full weights into <dir>/merged."
    )
    overwrite: bool = Field(
        False, description="Allow writing into a non-empty output folder without resuming."
    )


class TrainConfig(_Section):
    """Everything a training run needs. See `load_config` for YAML + flag loading."""

    model: ModelSection
    data: DataSection
    task: Literal["causal_lm", "classify", "dpo"] = Field(
        "causal_lm",
        description="causal_lm: next-token prediction; classify: a sequence-classification "
        "head on the last non-pad token, trained on {'text', 'label'} examples; dpo: "
        "preference tuning (Direct Preference Optimization) on preference examples.",
    )
    method: Literal["full", "lora", "head"] = Field(
        "lora",
        description="full: train every weight; lora: train a low-rank adapter only; head: "
        "train only the LM (or classification) head on a frozen body.",
    )
    lora: LoraSection = Field(default_factory=LoraSection)
    freeze: FreezeSection = Field(default_factory=FreezeSection)
    unfreeze: UnfreezeSection = Field(default_factory=UnfreezeSection)
    classify: ClassifySection = Field(default_factory=ClassifySection)
    dpo: DpoSection = Field(default_factory=DpoSection)
    parent: ParentSection = Field(default_factory=ParentSection)
    optim: OptimSection = Field(default_factory=OptimSection)
    eval: EvalSection = Field(default_factory=EvalSection)
    early_stop: EarlyStopSection = Field(default_factory=EarlyStopSection)
    checkpoint: CheckpointSection = Field(default_factory=CheckpointSection)
    output: OutputSection
    seed: int = Field(42, description="Seed for weights init of adapters, data order, dropout.")

    @model_validator(mode="before")
    @classmethod
    def _model_from_parent(cls, raw: Any) -> Any:
        # `train --from v1` needs no --model: the parent folder names its own weights.
        if isinstance(raw, dict) and isinstance(raw.get("parent"), dict):
            parent = raw["parent"].get("model")
            model = raw.get("model")
            if parent is not None and (model is None or isinstance(model, dict)):
                model = dict(model or {})
                model.setdefault("name_or_path", str(parent))
                raw = {**raw, "model": model}
        return raw

    # Cross-section checks are field validators on the later field (fields validate in
    # order), so they are reported together with every other problem.
    @field_validator("task")
    @classmethod
    def _task_fits_data(cls, v: str, info: ValidationInfo) -> str:
        # On the task (set whenever it is not the default), not the method: a default is not
        # validated.
        data = info.data.get("data")
        if v in ("classify", "dpo") and data is not None and data.packing:
            raise ValueError(f"task {v!r} does not support data.packing")
        return v

    @field_validator("parent")
    @classmethod
    def _model_or_parent(cls, v: ParentSection, info: ValidationInfo) -> ParentSection:
        if v.model is not None and info.data.get("task") == "classify":
            raise ValueError("continued fine-tuning (parent.model) supports task 'causal_lm' only")
        if v.replay and v.model is None:
            raise ValueError("replay needs parent.model")
        if v.replay and info.data.get("task") == "dpo":
            raise ValueError("replay is not supported with task 'dpo'")
        return v

    @field_validator("eval")
    @classmethod
    def _eval_needs_valid(cls, v: EvalSection, info: ValidationInfo) -> EvalSection:
        data = info.data.get("data")
        if v.eval_every is not None and data is not None and data.valid is None:
            raise ValueError("eval_every needs data.valid")
        return v

    @field_validator("early_stop")
    @classmethod
    def _early_stop_needs_eval(cls, v: EarlyStopSection, info: ValidationInfo) -> EarlyStopSection:
        ev = info.data.get("eval")
        if v.patience is not None and ev is not None and ev.eval_every is None:
            raise ValueError("early stopping needs eval.eval_every (and data.valid)")
        task = info.data.get("task")
        if task is not None and task not in SELECTION_METRICS[v.metric][1]:
            reported = ", ".join(m for m, (_, tasks) in SELECTION_METRICS.items() if task in tasks)
            raise ValueError(
                f"metric {v.metric!r} is not reported by task {task!r} (it reports: {reported})"
            )
        return v

    @field_validator("checkpoint")
    @classmethod
    def _best_is_kept(cls, v: CheckpointSection, info: ValidationInfo) -> CheckpointSection:
        es = info.data.get("early_stop")
        if es is not None and es.patience is not None and es.export_best and not v.keep_best:
            raise ValueError("early_stop.export_best needs checkpoint.keep_best")
        return v

    @field_validator("output")
    @classmethod
    def _merge_needs_lora(cls, v: OutputSection, info: ValidationInfo) -> OutputSection:
        if v.merge and info.data.get("method", "lora") != "lora":
            raise ValueError("merge is only meaningful with method 'lora'")
        return v


class ConfigError(ValueError):
    """Raised with every problem of a config at once (`problems`: one line each)."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("invalid training config:\n" + "\n".join(f"  - {p}" for p in problems))


def _set_dotted(tree: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    node = tree
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError([f"{key}: {part!r} is not a section"])
        node = child
    node[parts[-1]] = value


def load_config(
    yaml_path: str | Path | None = None, overrides: dict[str, Any] | None = None
) -> TrainConfig:
    """Build a validated `TrainConfig` from an optional YAML file plus dotted-key overrides.

    Overrides (e.g. ``{"optim.lr": 1e-4}``) win over the YAML. Raises `ConfigError` listing
    every problem: unknown keys, wrong types, out-of-range values, missing files.
    """
    raw: dict[str, Any] = {}
    if yaml_path is not None:
        try:
            loaded = yaml.safe_load(Path(yaml_path).read_text())
        except (OSError, yaml.YAMLError) as err:
            raise ConfigError([f"cannot read {yaml_path}: {err}"]) from err
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError([f"{yaml_path}: top level must be a mapping"])
        raw = loaded or {}
    for key, value in (overrides or {}).items():
        if value is not None:
            _set_dotted(raw, key, value)
    try:
        return TrainConfig.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(_describe(err)) from None


def _describe(err: ValidationError) -> list[str]:
    by_loc: dict[str, list[str]] = {}
    for e in err.errors():
        # pydantic reports each member of a union separately (loc ends in "int",
        # "literal['auto']", ...); fold them into one line per field.
        parts = [str(p) for p in e["loc"]]
        members = {"int", "float", "str", "bool", "none"}
        parts = [
            p for p in parts if p not in members and not p.startswith(("literal[", "function-"))
        ]
        loc = ".".join(parts) or "<config>"
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown key"
        elif e["type"] == "missing":
            msg = "required"
        elif e["type"] == "literal_error" and "'auto'" in msg and loc in by_loc:
            msg = f"must be a number or 'auto' (got {e['input']!r})"
            by_loc[loc] = []
        by_loc.setdefault(loc, [])
        if msg not in by_loc[loc]:
            by_loc[loc].append(msg)
    return [f"{loc}: {msg}" for loc, msgs in by_loc.items() for msg in msgs]


def resolve_auto(
    cfg: TrainConfig,
    n_examples: int,
    multiple_of: int = 1,
    lr: float | None = None,
    width: int | None = None,
) -> TrainConfig:
    """Replace every "auto" with a number; `multiple_of` is grad_accum x world size, `lr` the
    LR to use for "auto" instead of `auto_lr` (continued fine-tuning lowers the parent's),
    `width` the model's hidden size (`auto_lr`).

    Returns a new config; the input is untouched.
    """
    optim = cfg.optim.model_copy()
    if optim.epochs == "auto":
        optim.epochs = auto_epochs(n_examples)
    if optim.batch_size == "auto":
        bs = auto_batch_size(n_examples)
        optim.batch_size = max(multiple_of, bs - bs % multiple_of)
    if optim.lr == "auto":
        optim.lr = lr if lr is not None else auto_lr(cfg.method, width, cfg.task)
    dpo = cfg.dpo.model_copy()
    if dpo.beta == "auto":
        dpo.beta = AUTO_BETA
    return cfg.model_copy(update={"optim": optim, "dpo": dpo})


def save_config(cfg: TrainConfig, path: str | Path) -> None:
    """Write the effective config as YAML (paths as strings, every field explicit)."""
    Path(path).write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
