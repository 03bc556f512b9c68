"""Training: config, the loop, optimizer and schedules, loss, checkpoints, lr-find.

Example:
    >>> from tuneforge.training import load_config, run_training
    >>> cfg = load_config("examples/lora.yaml", {"optim.epochs": 2})
    >>> result = run_training(cfg)
"""

from tuneforge.training.config import ConfigError, TrainConfig, load_config, resolve_auto
from tuneforge.training.loop import FinetuneRecipe, TrainResult, run_training
from tuneforge.training.loss import causal_lm_loss

__all__ = [
    "ConfigError",
    "FinetuneRecipe",
    "TrainConfig",
    "TrainResult",
    "causal_lm_loss",
    "load_config",
    "resolve_auto",
    "run_training",
]
