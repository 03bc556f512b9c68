"""What a client's job may reach: the settings it may choose, the server's caps, its quotas.

A job's `method.supervised.tuneforge` settings become a `TrainConfig` that runs on the
server's hardware, with the server's files and credentials. So the client chooses from an
allowlist (`CLIENT_KEYS`: training hyperparameters and model surgery, never where data,
models or code come from), every number that scales cost has a cap (`JobLimits`, set by the
operator through `ServerSettings`), the regexes a client sends are checked to match in
bounded time (`regex_problem`), and an organization has at most `max_active_jobs` jobs
waiting or running and `max_file_bytes` of stored files.

`JobLimits` lives here (not in the server) so the store and the worker, which must not import
the server, apply the same caps; `ServerSettings.job_limits()` builds one from the settings.

Example:
    >>> limits = JobLimits(max_steps=1000)
    >>> limits.config_problems({"optim.max_steps": 10**9}, cfg=None)
    ['optim.max_steps: at most 1000 on this server (got 1000000000)']
"""

from __future__ import annotations

import functools
import re
import sys
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field

from tuneforge.jobs.errors import StoreError

# The stdlib's regex parser: the same parse `re.compile` uses.
if sys.version_info >= (3, 11):
    from re import _parser as _sre  # type: ignore[attr-defined]
else:
    import sre_parse as _sre

# TrainConfig keys a client may set in `method.supervised.tuneforge` / `method.dpo.tuneforge`
# (dotted). Everything
# else is the server's: the model and data locations, the output folder, resuming, and
# `model.trust_remote_code` (the operator's switch: a client turning it on would run a Hub
# repo's Python on the server).
CLIENT_KEYS = frozenset(
    {
        "task",
        "method",
        "model.dtype",
        "model.gradient_checkpointing",
        "data.train_on",
        "data.max_length",
        "data.too_long",
        "data.packing",
        "lora.r",
        "lora.alpha",
        "lora.dropout",
        "lora.target_modules",
        "freeze.blocks",
        "freeze.embeddings",
        "freeze.patterns",
        "unfreeze.every",
        "unfreeze.start_blocks",
        "unfreeze.depth",
        "classify.labels",
        "dpo.beta",
        "dpo.label_smoothing",
        "dpo.sft_weight",
        "parent.replay",
        "parent.lr_factor",
        "optim.epochs",
        "optim.max_steps",
        "optim.batch_size",
        "optim.grad_accum",
        "optim.lr",
        "optim.schedule",
        "optim.warmup",
        "optim.weight_decay",
        "optim.betas",
        "optim.eps",
        "optim.max_grad_norm",
        "optim.layer_decay",
        "optim.head_lr_scale",
        "eval.eval_every",
        "eval.max_examples",
        "eval.batch_size",
        "early_stop.patience",
        "early_stop.metric",
        "early_stop.min_delta",
        "early_stop.export_best",
        "checkpoint.save_every",
        "checkpoint.keep_last",
        "checkpoint.keep_best",
        "output.merge",
    }
)

# Lists a client sends: how many entries, how long each (module names, labels, regexes).
MAX_LIST_ITEMS = 64
MAX_LABELS = 1000
MAX_ITEM_CHARS = 128
# Regexes (freeze.patterns) are matched with Python's backtracking `re` against every
# parameter name (~100 characters), so a pattern must be short and of a shape whose matching
# time stays polynomial and small: see `regex_problem`.
MAX_PATTERN_CHARS = 128
MAX_UNBOUNDED_REPEATS = 2
# A counted repeat above this behaves like an unbounded one for backtracking.
_BIG_REPEAT = 16


class QuotaExceeded(StoreError):
    """An organization is over one of its limits (HTTP 429, OpenAI's quota/rate-limit codes).

    Sent with `x-should-retry: false`: the official client would otherwise retry at once,
    and waiting a second does not finish a job or free storage.
    """

    status = 429
    headers: ClassVar[dict[str, str]] = {"x-should-retry": "false"}


class JobLimits(BaseModel):
    """Caps on what one job may cost, and per-organization quotas (the operator's choice)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_steps: int = Field(100_000, ge=1, description="Largest optim.max_steps.")
    max_epochs: int = Field(100, ge=1, description="Largest optim.epochs (n_epochs).")
    max_batch_size: int = Field(
        1024, ge=1, description="Largest optim.batch_size, optim.grad_accum, eval.batch_size."
    )
    max_length: int = Field(32_768, ge=8, description="Largest data.max_length (tokens).")
    max_lora_r: int = Field(256, ge=1, description="Largest lora.r.")
    max_keep_last: int = Field(10, ge=1, description="Largest checkpoint.keep_last.")
    max_wall_s: float = Field(
        86_400.0,
        gt=0,
        description="Wall-clock limit of one run of a job (seconds); past it the worker stops "
        "training and fails the job.",
    )
    max_active_jobs: int = Field(
        16, ge=1, description="Jobs per organization validating, queued or running at once."
    )
    max_file_bytes: int = Field(
        100 * 1024**3, ge=0, description="Bytes of stored files per organization."
    )

    def config_problems(self, flat: dict[str, Any], cfg: Any | None) -> list[str]:
        """Every cap a client's settings break, one line each.

        `flat` holds the dotted settings as sent; `cfg` is the validated `TrainConfig` when
        there is one (its values are typed, e.g. "1e9" already an int), else caps are
        checked on the numbers as sent.
        """
        caps = {
            "optim.max_steps": self.max_steps,
            "optim.epochs": self.max_epochs,
            "optim.batch_size": self.max_batch_size,
            "optim.grad_accum": self.max_batch_size,
            "eval.batch_size": self.max_batch_size,
            "data.max_length": self.max_length,
            "lora.r": self.max_lora_r,
            "checkpoint.keep_last": self.max_keep_last,
        }
        problems = []
        for key, cap in caps.items():
            value = _lookup(cfg, key) if cfg is not None else flat.get(key)
            if isinstance(value, (int, float)) and not isinstance(value, bool) and value > cap:
                shown = int(value) if float(value).is_integer() else value
                problems.append(f"{key}: at most {cap} on this server (got {shown})")
        for key, most in (
            ("lora.target_modules", MAX_LIST_ITEMS),
            ("classify.labels", MAX_LABELS),
            ("freeze.patterns", MAX_LIST_ITEMS),
        ):
            items = flat.get(key)
            if not isinstance(items, list):
                continue
            if len(items) > most:
                problems.append(f"{key}: at most {most} entries (got {len(items)})")
                continue
            limit = MAX_PATTERN_CHARS if key == "freeze.patterns" else MAX_ITEM_CHARS
            for item in items:
                if isinstance(item, str) and len(item) > limit:
                    problems.append(f"{key}: entries are at most {limit} characters")
                    break
                if key == "freeze.patterns" and isinstance(item, str):
                    why = regex_problem(item)
                    if why:
                        problems.append(f"freeze.patterns: {item!r} {why}")
        return problems


def _lookup(cfg: Any, dotted: str) -> Any:
    node = cfg
    for part in dotted.split("."):
        node = getattr(node, part, None)
    return node


def key_problems(flat: dict[str, Any], reserved: dict[str, str]) -> list[str]:
    """Keys a client may not set: reserved ones (the job sets them), then any key outside
    `CLIENT_KEYS` (a server-side setting, or no setting at all)."""
    problems = []
    for key in flat:
        if key in reserved:
            problems.append(f"{key}: set by {reserved[key]}")
        elif key not in CLIENT_KEYS:
            problems.append(
                f"{key}: not settable over the API (a server setting)"
                if key in _config_keys()
                else f"{key}: unknown key"
            )
    return problems


@functools.cache
def _config_keys() -> frozenset[str]:
    """Every dotted key of `TrainConfig` (imported late: pydantic models only, no torch)."""
    from pydantic import BaseModel as _Model

    from tuneforge.training.config import TrainConfig

    def walk(model: type[_Model], prefix: str) -> list[str]:
        out = []
        for name, field in model.model_fields.items():
            sub = field.annotation
            if isinstance(sub, type) and issubclass(sub, _Model):
                out += walk(sub, f"{prefix}{name}.")
            else:
                out.append(prefix + name)
        return out

    return frozenset(walk(TrainConfig, ""))


def regex_problem(pattern: str) -> str | None:
    """Why `pattern` may not be matched on the server, or None when it is safe.

    Python's `re` backtracks and takes no timeout (and no linear engine is among our
    dependencies), so the shape is checked instead, on the stdlib's own parse of the
    pattern: no repeat inside a repeat (`(a+)+`, `(\\w*)*`), no alternation inside an
    unbounded repeat (`(ab|a)*`), no back-references or lookarounds, and at most
    MAX_UNBOUNDED_REPEATS unbounded repeats in all. A pattern of that shape costs at most
    about n^(k+1) steps on a name of n characters (k repeats), not 2^n: `\\w*\\w*x` fails
    on 200 characters in ~8 ms, where `(a+)+$` takes ~2.4 s on 24. Ordinary freeze patterns
    (`^model\\.layers\\.[0-5]\\.`, `.*mlp.*`, `(q|k|v)_proj`) pass.
    """
    if len(pattern) > MAX_PATTERN_CHARS:
        return f"is longer than {MAX_PATTERN_CHARS} characters"
    try:
        tree = _sre.parse(pattern)
    except (re.error, RecursionError, OverflowError) as err:
        return f"is not a valid regex ({err})"
    counter = [0]
    why = _unsafe(tree, inside_repeat=False, unbounded=counter)
    if why:
        return why
    if counter[0] > MAX_UNBOUNDED_REPEATS:
        return f"has more than {MAX_UNBOUNDED_REPEATS} unbounded repeats"
    return None


_REPEATS = {_sre.MAX_REPEAT, _sre.MIN_REPEAT} | (
    {_sre.POSSESSIVE_REPEAT} if hasattr(_sre, "POSSESSIVE_REPEAT") else set()
)


def _children(op: Any, arg: Any) -> list[Any]:
    """The sub-patterns of one parsed item: a group's body, each alternative, a repeat's body."""
    if op in _REPEATS:
        return [arg[2]]
    if op == _sre.SUBPATTERN:
        return [arg[-1]]
    if op == _sre.BRANCH:
        return list(arg[1])
    if op == getattr(_sre, "ATOMIC_GROUP", None):
        return [arg]
    return []


def _has_branch(items: Any) -> bool:
    return any(
        op == _sre.BRANCH or any(_has_branch(sub) for sub in _children(op, arg))
        for op, arg in items
    )


def _unsafe(items: Any, *, inside_repeat: bool, unbounded: list[int]) -> str | None:
    for op, arg in items:
        if op in (_sre.GROUPREF, _sre.GROUPREF_EXISTS):
            return "uses a back-reference"
        if op in (_sre.ASSERT, _sre.ASSERT_NOT):
            return "uses a lookaround"
        if op in _REPEATS:
            if inside_repeat:
                return "nests a repeat inside a repeat (catastrophic backtracking)"
            _lo, hi, body = arg
            if hi is _sre.MAXREPEAT or hi > _BIG_REPEAT:
                unbounded[0] += 1
                # (Alternatives of single characters were already folded into a class.)
                if _has_branch(body):
                    return "repeats an alternation (catastrophic backtracking)"
        for sub in _children(op, arg):
            why = _unsafe(sub, inside_repeat=inside_repeat or op in _REPEATS, unbounded=unbounded)
            if why:
                return why
    return None


# -- the training subprocess's environment ---------------------------------------------------
# Variables a training process never needs and must not see: the server's API keys and the
# database credentials (a job's settings choose code paths in training; nothing there should
# be able to read, log or upload a secret). Every TUNEFORGE_* variable goes, as do the
# PostgreSQL client's.
_SECRET_PREFIXES = ("TUNEFORGE_",)
_SECRET_NAMES = {"DATABASE_URL", "PGPASSWORD", "PGPASSFILE", "PGSERVICEFILE"}
_KEPT = {"TUNEFORGE_CACHE"}  # a cache folder (tuneforge.demo), not a secret


def training_environment(environ: dict[str, str]) -> dict[str, str]:
    """A copy of `environ` without the server's secrets (for the training subprocess)."""
    return {
        k: v
        for k, v in environ.items()
        if k in _KEPT
        or (not k.upper().startswith(_SECRET_PREFIXES) and k.upper() not in _SECRET_NAMES)
    }
