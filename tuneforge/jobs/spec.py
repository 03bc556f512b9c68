"""What a client asks for when it creates a fine-tuning job, and how that becomes a TrainConfig.

`JobCreate` is OpenAI's request body (`model`, `training_file`, `validation_file`, `suffix`,
`seed`, `metadata`, `method`, the deprecated top-level `hyperparameters`, `integrations`)
plus TuneForge's own settings in `method.supervised.tuneforge`: the `TrainConfig` keys of an
allowlist (`tuneforge.jobs.limits.CLIENT_KEYS`: hyperparameters and model surgery; never
the model, data or output locations, resuming, the seed or `model.trust_remote_code`),
nested (`{"lora": {"r": 8}}`) or dotted (`{"lora.r": 8}`), within the server's caps
(`JobLimits`). `plan_training` turns a request into `TrainConfig` overrides and validates
them with the same `load_config` as `tuneforge train`, so a bad setting is refused when the
job is created, with every problem listed at once.

OpenAI's hyperparameters map onto the config: `n_epochs` -> optim.epochs, `batch_size` ->
optim.batch_size, `learning_rate_multiplier` -> optim.lr = multiplier x the "auto" LR of the
method and task for the model's width (`tuneforge.auto.auto_lr`: DPO's is a tenth of
supervised fine-tuning's), and for `method.type: dpo` (preference tuning: task 'dpo') `beta`
-> dpo.beta. "auto" keeps TrainConfig's "auto". A DPO job takes its settings from
`method.dpo` (`hyperparameters`, `tuneforge`) as a supervised one does from
`method.supervised`.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from tuneforge.jobs.errors import InvalidRequest
from tuneforge.jobs.failures import public_message
from tuneforge.jobs.limits import CLIENT_KEYS, JobLimits, key_problems
from tuneforge.modeling.folder import read_folder

Auto = Literal["auto"]
SUFFIX_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
# Steps between validation passes when a validation file is given (tuneforge.eval.eval_every
# overrides it).
DEFAULT_EVAL_EVERY = 10

# Config keys the job sets itself (named in the refusal: the client sets them elsewhere).
RESERVED_KEYS = {
    "model.name_or_path": "the job's `model`",
    "data.train": "`training_file`",
    "data.valid": "`validation_file`",
    "output.dir": "the job's output folder",
    "output.overwrite": "the job's output folder",
    "checkpoint.resume": "the worker (jobs always resume from their last checkpoint)",
    "parent.model": "the job's `model` (an ft: model id continues from it)",
    "seed": "`seed`",
}


class Hyperparameters(BaseModel):
    """OpenAI's supervised hyperparameters: a value or "auto" each."""

    model_config = ConfigDict(extra="forbid")

    n_epochs: int | Auto = Field("auto", description="Passes over the training data.")
    batch_size: int | Auto = Field("auto", description="Examples per optimizer step.")
    learning_rate_multiplier: float | Auto = Field(
        "auto", description="Scales the method's default learning rate."
    )

    @field_validator("n_epochs", "batch_size")
    @classmethod
    def _positive_int(cls, v: int | str) -> int | str:
        if isinstance(v, int) and not 1 <= v <= 1000 and not isinstance(v, bool):
            raise ValueError("must be between 1 and 1000, or 'auto'")
        return v

    @field_validator("learning_rate_multiplier")
    @classmethod
    def _positive_float(cls, v: float | str) -> float | str:
        if isinstance(v, float) and not 0 < v <= 100:
            raise ValueError("must be in (0, 100], or 'auto'")
        return v


class DpoHyperparameters(Hyperparameters):
    """OpenAI's DPO hyperparameters: the supervised ones and `beta`."""

    beta: float | Auto = Field(
        "auto", description="DPO's beta: the pull towards the reference (auto: 0.1)."
    )

    @field_validator("beta")
    @classmethod
    def _positive_beta(cls, v: float | str) -> float | str:
        if isinstance(v, float) and not 0 < v <= 100:
            raise ValueError("must be in (0, 100], or 'auto'")
        return v


_TUNEFORGE_FIELD = Field(
    None,
    description="TuneForge settings: TrainConfig keys (nested or dotted) of the API's "
    "allowlist, within the server's caps, e.g. {'method': 'lora', 'lora': {'r': 8}, "
    "'optim': {'max_steps': 100}, 'early_stop': {'patience': 3}}.",
)


class SupervisedMethod(BaseModel):
    """`method.supervised`: OpenAI's hyperparameters and TuneForge's extension settings."""

    model_config = ConfigDict(extra="forbid")

    hyperparameters: Hyperparameters | None = None
    tuneforge: dict[str, Any] | None = _TUNEFORGE_FIELD


class DpoMethod(BaseModel):
    """`method.dpo`: OpenAI's DPO hyperparameters and TuneForge's extension settings."""

    model_config = ConfigDict(extra="forbid")

    hyperparameters: DpoHyperparameters | None = None
    tuneforge: dict[str, Any] | None = _TUNEFORGE_FIELD


class Method(BaseModel):
    """`method`: `supervised` and `dpo` are trained; `reinforcement` is refused."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["supervised", "dpo", "reinforcement"]
    supervised: SupervisedMethod | None = None
    dpo: DpoMethod | None = None
    reinforcement: dict[str, Any] | None = None


def method_type(req: JobCreate) -> str:
    """ "supervised" or "dpo": the objective a job trains."""
    return req.method.type if req.method is not None else "supervised"


def _section(req: JobCreate) -> SupervisedMethod | DpoMethod | None:
    """The request's `method.<type>` object (None when not given)."""
    if req.method is None:
        return None
    return req.method.dpo if req.method.type == "dpo" else req.method.supervised


class JobCreate(BaseModel):
    """The body of `POST /v1/fine_tuning/jobs`."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(min_length=1, max_length=512)
    training_file: str = Field(min_length=1, max_length=64)
    validation_file: str | None = Field(None, max_length=64)
    suffix: str | None = None
    seed: int | None = Field(None, ge=0, le=2**31 - 1)
    metadata: dict[str, str] | None = None
    method: Method | None = None
    hyperparameters: Hyperparameters | None = None
    integrations: list[dict[str, Any]] | None = None

    @field_validator("suffix")
    @classmethod
    def _suffix(cls, v: str | None) -> str | None:
        if v is not None and not SUFFIX_RE.match(v):
            raise ValueError("must be 1-64 characters: letters, digits, '-', '_' or '.'")
        return v

    @field_validator("metadata")
    @classmethod
    def _metadata(cls, v: dict[str, str] | None) -> dict[str, str] | None:
        if v is None:
            return v
        if len(v) > 16:
            raise ValueError("at most 16 keys")
        for key, value in v.items():
            if len(key) > 64 or len(value) > 512:
                raise ValueError("keys are at most 64 characters, values at most 512")
        return v


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict):  # an empty section sets nothing
            flat.update(_flatten(value, dotted + "."))
        else:
            flat[dotted] = value
    return flat


def effective_hyperparameters(req: JobCreate) -> Hyperparameters:
    """The requested hyperparameters: `method.<type>.hyperparameters`, else the deprecated
    top-level `hyperparameters` (giving both, differently, is refused). A DPO job's are
    `DpoHyperparameters` (with `beta`)."""
    kind = method_type(req)
    section = _section(req)
    in_method = section.hyperparameters if section is not None else None
    both = in_method is not None and req.hyperparameters is not None
    if both and in_method != req.hyperparameters:
        raise InvalidRequest(
            "Give hyperparameters once: `hyperparameters` is deprecated in favour of "
            f"`method.{kind}.hyperparameters`.",
            param="hyperparameters",
        )
    if kind == "dpo":
        if in_method is None and req.hyperparameters is not None:
            return DpoHyperparameters(**req.hyperparameters.model_dump())
        return in_method or DpoHyperparameters()
    return in_method or req.hyperparameters or Hyperparameters()


def tuneforge_overrides(req: JobCreate) -> dict[str, Any]:
    """The extension settings as dotted TrainConfig keys (not yet checked: see
    `plan_training`)."""
    section = _section(req)
    return _flatten((section.tuneforge if section is not None else None) or {})


def _refuse(
    problems: list[str], params: dict[str, str], ext_path: str = "method.supervised.tuneforge"
) -> InvalidRequest:
    """One 400 listing every problem; `param` names the first problem's setting as the client
    sent it (`params`: dotted key -> request path), else the extension as a whole.

    Problems of the settings the job fills in could name server paths: they are cut to
    their last part, as in a failed job's error.
    """
    problems = [public_message(p) for p in problems]
    param = next(
        (params[k] for k in (p.split(":", 1)[0] for p in problems) if k in params), ext_path
    )
    return InvalidRequest(
        "Invalid training settings: " + "; ".join(problems),
        param=param,
        code="invalid_tuneforge_config",
    )


def check_method(req: JobCreate) -> None:
    """Refuse methods TuneForge cannot train yet, and settings given for another method than
    the job's, with a clear message."""
    if req.method is None:
        return
    kind = req.method.type
    if kind == "reinforcement":
        raise InvalidRequest(
            "method.type 'reinforcement' is not supported yet: TuneForge trains supervised "
            "and preference (DPO) fine-tunes (full, LoRA, frozen layers). Use method.type "
            "'supervised' or 'dpo'.",
            param="method.type",
            code="unsupported_method",
        )
    other = "dpo" if kind == "supervised" else "supervised"
    if getattr(req.method, other) is not None:
        raise InvalidRequest(
            f"method.{other} is given but method.type is {kind!r}: put the settings in "
            f"method.{kind}.",
            param=f"method.{other}",
        )
    task = (tuneforge_overrides(req)).get("task")
    if task is not None and (task == "dpo") != (kind == "dpo"):
        raise InvalidRequest(
            f"method.{kind}.tuneforge task {task!r} does not fit method.type {kind!r}: a "
            "preference (DPO) fine-tune is method.type 'dpo', any other task is 'supervised'.",
            param=f"method.{kind}.tuneforge",
            code="invalid_tuneforge_config",
        )


def plan_training(
    req: JobCreate,
    *,
    base_path: str | None,
    parent_path: str | None,
    train_path: Path,
    valid_path: Path | None,
    output_dir: Path,
    seed: int,
    limits: JobLimits | None = None,
) -> dict[str, Any]:
    """TrainConfig overrides (dotted keys) for a job, validated by `load_config` and held to
    `limits` (the server's caps; defaults when None).

    Raises `InvalidRequest` listing every problem at once: settings outside the allowlist,
    invalid values, caps exceeded.
    """
    from tuneforge.auto import auto_lr
    from tuneforge.training.config import ConfigError, load_config

    limits = limits or JobLimits()
    check_method(req)
    kind = method_type(req)
    ext_path = f"method.{kind}.tuneforge"
    hp = effective_hyperparameters(req)
    ext = tuneforge_overrides(req)
    refused = key_problems(ext, RESERVED_KEYS)
    problems: list[str] = []
    # Only allowed keys go on to validation: a refused key is reported once, as refused.
    overrides: dict[str, Any] = {k: v for k, v in ext.items() if k in CLIENT_KEYS}
    clash = {
        "n_epochs": "optim.epochs",
        "batch_size": "optim.batch_size",
        "learning_rate_multiplier": "optim.lr",
    }
    if isinstance(hp, DpoHyperparameters):
        clash["beta"] = "dpo.beta"
    for name, key in clash.items():
        if getattr(hp, name) != "auto" and key in ext:
            raise InvalidRequest(
                f"hyperparameters.{name} and {ext_path} {key} both set the same thing; give one.",
                param=ext_path,
                code="invalid_tuneforge_config",
            )
    # Where each setting came from in the request, for the `param` of a refusal.
    params = {k: f"{ext_path}.{k}" for k in ext}
    hp_path = "hyperparameters" if req.hyperparameters else f"method.{kind}.hyperparameters"
    for name, key in clash.items():
        if getattr(hp, name) != "auto":
            params[key] = f"{hp_path}.{name}"
    if hp.n_epochs != "auto":
        overrides["optim.epochs"] = hp.n_epochs
    if hp.batch_size != "auto":
        overrides["optim.batch_size"] = hp.batch_size
    if kind == "dpo":
        overrides["task"] = "dpo"
        if isinstance(hp, DpoHyperparameters) and hp.beta != "auto":
            overrides["dpo.beta"] = float(hp.beta)
    if hp.learning_rate_multiplier != "auto":
        method = str(ext.get("method", "lora"))
        start = parent_path or base_path
        width = read_folder(start).width if start else None
        base_lr = auto_lr(method, width, str(overrides.get("task", "causal_lm")))
        overrides["optim.lr"] = float(hp.learning_rate_multiplier) * base_lr
    if valid_path is not None and "eval.eval_every" not in ext:
        # OpenAI reports validation metrics periodically during training; so do we.
        overrides["eval.eval_every"] = DEFAULT_EVAL_EVERY
    if parent_path is not None:
        overrides["parent.model"] = parent_path
    else:
        overrides["model.name_or_path"] = base_path
    overrides.update(
        {
            "data.train": str(train_path),
            "data.valid": str(valid_path) if valid_path is not None else None,
            "output.dir": str(output_dir),
            "output.overwrite": True,  # a retry before the first checkpoint starts afresh
            "checkpoint.resume": "auto",
            "seed": seed,
        }
    )
    cfg = None
    try:
        cfg = load_config(None, overrides)
    except ConfigError as err:
        problems += err.problems
    problems += refused
    # Caps on the typed config when it validated (so "1e9" or 1e9 count as the int they
    # become), else on the numbers as sent; hyperparameters count as their config keys.
    problems += limits.config_problems(overrides, cfg)
    if problems:
        raise _refuse(problems, params, ext_path)
    return {k: v for k, v in overrides.items() if v is not None}


def resolved_hyperparameters(config: dict[str, Any], width: int | None = None) -> dict[str, Any]:
    """OpenAI's hyperparameters from a run's effective config (config.yaml, autos resolved) and
    its model's width (the LR multiplier is of `auto_lr` for it)."""
    from tuneforge.auto import auto_lr

    optim = config.get("optim", {})
    lr = optim.get("lr")
    method, task = config.get("method", "lora"), config.get("task", "causal_lm")
    base_lr = auto_lr(method, width, task)
    multiplier = round(lr / base_lr, 6) if isinstance(lr, (int, float)) else lr
    resolved = {
        "n_epochs": optim.get("epochs"),
        "batch_size": optim.get("batch_size"),
        "learning_rate_multiplier": multiplier,
    }
    if config.get("task") == "dpo":
        resolved["beta"] = config.get("dpo", {}).get("beta")
    return resolved
