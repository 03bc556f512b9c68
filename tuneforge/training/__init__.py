"""Training: config, the loop, optimizer and schedules, loss, checkpoints, lr-find.

Example:
    >>> from tuneforge.training import load_config, run_training
    >>> cfg = load_config("examples/lora.yaml", {"optim.epochs": 2})
    >>> result = run_training(cfg)
"""

import importlib
from typing import Any

from tuneforge.training.config import ConfigError, TrainConfig, load_config, resolve_auto
from tuneforge.training.lineage import lineage

# These pull in torch: they load on first use, so reading a config (the CLI derives its train
# flags from `TrainConfig`) starts without it.
_LAZY = {
    "FinetuneRecipe": "loop",
    "TrainResult": "loop",
    "run_training": "loop",
    "causal_lm_loss": "loss",
    "LRFindResult": "lr_find",
    "lr_find": "lr_find",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        module = importlib.import_module(f"{__name__}.{_LAZY[name]}")
        # Bound here, so the function `lr_find` wins over the submodule of the same name.
        globals()[name] = getattr(module, name)
        return globals()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "ConfigError",
    "FinetuneRecipe",
    "LRFindResult",
    "TrainConfig",
    "TrainResult",
    "causal_lm_loss",
    "lineage",
    "load_config",
    "lr_find",
    "resolve_auto",
    "run_training",
]
