"""Config checks that run before any data or model is loaded.

Each check names the offending key, so a typo costs seconds, not a crashed job.
"""

from __future__ import annotations

from omegaconf import DictConfig

from seqexp.config_errors import ConfigError
from seqexp.data.sources import validate_dataset_cfg
from seqexp.models.encoders import encoder_depth
from seqexp.tracking import check_reachable
from seqexp.training.freeze import STRATEGIES
from seqexp.training.optim import OPTIMIZERS, SCHEDULES

# How a word's vector is made from its subwords' states (top-level key `alignment`).
ALIGNMENTS = ("first", "last", "mean")


def _positive(cfg: DictConfig, key: str) -> None:
    value = cfg
    for part in key.split("."):
        value = value[part]
    if not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0:
        raise ConfigError(f"`{key}`: must be a positive number, got {value!r}")


def _one_of(value, key: str, allowed) -> None:
    if value not in allowed:
        raise ConfigError(f"`{key}`: unknown {value!r}; choose one of {', '.join(map(str, allowed))}")


def validate(cfg: DictConfig) -> None:
    """Raise ConfigError for the first invalid value found."""
    _one_of(cfg.optim.name, "optim.name", OPTIMIZERS)
    for key in ("optim.lr", "optim.encoder_lr", "trainer.batch_size", "trainer.eval_batch_size",
                "trainer.max_epochs", "model.max_length"):
        _positive(cfg, key)
    if cfg.optim.weight_decay < 0:
        raise ConfigError(f"`optim.weight_decay`: must be >= 0, got {cfg.optim.weight_decay}")
    if not 0 <= cfg.optim.momentum < 1:
        raise ConfigError(f"`optim.momentum`: must be in [0, 1), got {cfg.optim.momentum}")
    if cfg.optim.nesterov and cfg.optim.name == "sgd" and cfg.optim.momentum <= 0:
        raise ConfigError("`optim.nesterov`: Nesterov momentum needs `optim.momentum` > 0")
    _one_of(cfg.scheduler.name, "scheduler.name", SCHEDULES)
    if not 0 <= cfg.scheduler.warmup_ratio < 1:
        raise ConfigError(f"`scheduler.warmup_ratio`: must be in [0, 1), got {cfg.scheduler.warmup_ratio}")
    _one_of(cfg.alignment, "alignment", ALIGNMENTS)
    _one_of(cfg.freeze.strategy, "freeze.strategy", STRATEGIES)
    if cfg.freeze.strategy == "top_k":
        k = cfg.freeze.top_k
        if not isinstance(k, int) or k < 0:
            raise ConfigError(f"`freeze.top_k`: must be a whole number >= 0, got {k!r}")
        depth = encoder_depth(cfg.model)
        if depth is not None and k > depth:
            raise ConfigError(f"`freeze.top_k`: {k} is larger than the depth of `model={cfg.model.name}` ({depth} layers)")
    validate_dataset_cfg(cfg.dataset)
    check_reachable(cfg.tracking.uri)
