"""Training: config, the loop, optimizer and schedules, loss, checkpoints, lr-find.

Example:
    >>> from tuneforge.training import load_config, run_training
    >>> cfg = load_config("examples/lora.yaml", {"optim.epochs": 2})
    >>> result = run_training(cfg)
"""

from tuneforge.training.config import ConfigError, TrainConfig, load_config, resolve_auto
from tuneforge.training.lineage import lineage
from tuneforge.training.loop import FinetuneRecipe, TrainResult, run_training
from tuneforge.training.loss import causal_lm_loss
from tuneforge.training.lr_find import LRFindResult, lr_find

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
