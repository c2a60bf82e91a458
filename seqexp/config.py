"""Config checks that run before any data or model is loaded.

Each check names the offending key, so a typo costs seconds, not a crashed job.
"""

from __future__ import annotations

import math
import re

from omegaconf import DictConfig, OmegaConf

from seqexp.errors import ConfigError
from seqexp.data.sources import validate_dataset_cfg
from seqexp.models import ALIGNMENTS
from seqexp.models.encoders import check_files
from seqexp.strategies import from_config as strategy_from_config
from seqexp.tracking import check_reachable
from seqexp.training import distributed, faults
from seqexp.training.optim import OPTIMIZERS, SCHEDULES

# The seeds Lightning's seed_everything (and numpy) accept.
SEED_RANGE = (0, 2**32 - 1)


# Keys whose values are words that Hydra reads as floats (`fault.kind=nan`); their own checks see them.
WORDS_READ_AS_FLOATS = ("fault.kind",)


def _finite(node, key: str = "") -> None:
    """Every float anywhere in the config must be finite: NaN passes every ``<= 0`` check and
    ``nan``/``inf`` reach torch only after data and encoder are loaded. A walk over the whole
    config, so keys added later are covered without listing them here."""
    if isinstance(node, DictConfig) or OmegaConf.is_list(node):
        node = OmegaConf.to_container(node, resolve=False)  # interpolations stay strings: checked where set
    if isinstance(node, dict):
        for name, value in node.items():
            _finite(value, f"{key}.{name}" if key else str(name))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            _finite(value, f"{key}[{i}]")
    elif isinstance(node, float) and not math.isfinite(node) and key not in WORDS_READ_AS_FLOATS:
        raise ConfigError(f"`{key}`: must be a finite number, got {node!r}")


def _seed(value) -> None:
    low, high = SEED_RANGE
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise ConfigError(f"`seed`: must be a whole number in [{low}, {high}] (2**32-1), got {value!r}")


def _positive(cfg: DictConfig, key: str) -> None:
    value = cfg
    for part in key.split("."):
        value = value[part]
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value) or value <= 0:
        raise ConfigError(f"`{key}`: must be a positive finite number, got {value!r}")


def _one_of(value, key: str, allowed) -> None:
    if value not in allowed:
        raise ConfigError(f"`{key}`: unknown {value!r}; choose one of {', '.join(map(str, allowed))}")


def _max_time(value) -> None:
    """``trainer.max_time`` as Lightning takes it from a config: null, "DD:HH:MM:SS" or a timedelta mapping."""
    if value is None or isinstance(value, DictConfig):
        return
    if not isinstance(value, str) or not re.fullmatch(r"\d+:\d\d:\d\d:\d\d", value.strip()):
        raise ConfigError(f"`trainer.max_time`: expected \"DD:HH:MM:SS\" (e.g. \"00:02:30:00\"), got {value!r}")


def _checkpoints(cfg: DictConfig) -> None:
    """The resume keys (seqexp/training/checkpoints.py)."""
    every = cfg.trainer.get("checkpoint_every_n_steps")
    if every is not None and (not isinstance(every, int) or isinstance(every, bool) or every < 0):
        raise ConfigError("`trainer.checkpoint_every_n_steps`: must be a whole number >= 0 "
                          f"(0: at epoch ends only) or null (no checkpoints), got {every!r}")
    folder = cfg.trainer.get("checkpoint_dir")
    if folder is not None and (not isinstance(folder, str) or not folder.strip()):
        raise ConfigError(f"`trainer.checkpoint_dir`: must be a folder path or null, got {folder!r}")
    for key, value in (("trainer.keep_checkpoint", cfg.trainer.get("keep_checkpoint")), ("resume", cfg.get("resume"))):
        if not isinstance(value, bool):
            raise ConfigError(f"`{key}`: must be true or false, got {value!r}")


MONITORS = ("val_f1", "val_strict_f1", "val_accuracy")  # dev metrics that select the tested weights (higher is better)


def _whole(value, key: str, minimum: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ConfigError(f"`{key}`: must be a whole number >= {minimum}, got {value!r}")


def _selection(cfg: DictConfig) -> None:
    """Model selection on dev (early stopping, best weights) and the study's tuned keys."""
    t = cfg.trainer
    _one_of(t.get("monitor"), "trainer.monitor", MONITORS)
    if not isinstance(t.get("early_stopping"), bool):
        raise ConfigError(f"`trainer.early_stopping`: must be true or false, got {t.get('early_stopping')!r}")
    _whole(t.get("patience"), "trainer.patience", 1)
    delta = t.get("min_delta")
    if not isinstance(delta, (int, float)) or isinstance(delta, bool) or not 0 <= delta < 1:
        raise ConfigError(f"`trainer.min_delta`: must be a number in [0, 1) (an F1 gain), got {delta!r}")
    _positive(cfg, "freeze.lr_scale")
    tuned = cfg.get("tuned") or []
    if isinstance(tuned, str) or not all(isinstance(k, str) for k in tuned):
        raise ConfigError(f"`tuned`: must be a list of config keys, e.g. [freeze.lr_scale], got {tuned!r}")
    for key in tuned:
        if key in ("seed", "model", "dataset", "freeze", "optim") or OmegaConf.select(cfg, key, default=_ABSENT) is _ABSENT:
            raise ConfigError(f"`tuned`: {key!r} is not a config key that can be tuned")


_ABSENT = object()


def _multirun() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def validate(cfg: DictConfig) -> None:
    """Raise ConfigError for the first invalid value found."""
    _finite(cfg)
    _seed(cfg.get("seed"))
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
    check_files(cfg.model)
    strategy = strategy_from_config(cfg.freeze)
    strategy.check(cfg)
    distributed.check(cfg, strategy, multirun=_multirun())
    _max_time(cfg.trainer.get("max_time"))
    _one_of(cfg.trainer.get("feature_cache_dtype"), "trainer.feature_cache_dtype", (None, "float16", "bfloat16", "float32"))
    every = cfg.trainer.get("val_every_n_epochs", 1)
    if not isinstance(every, int) or isinstance(every, bool) or every < 0:
        raise ConfigError(f"`trainer.val_every_n_epochs`: must be a whole number >= 0 (0: no dev evaluation), "
                          f"got {every!r}")
    mib = cfg.trainer.get("host_mmap_threshold_mib")
    if mib is not None and (not isinstance(mib, (int, float)) or isinstance(mib, bool) or not 0 < mib <= 32):
        raise ConfigError(f"`trainer.host_mmap_threshold_mib`: must be a number of MiB in (0, 32], or null "
                          f"(glibc's dynamic threshold), got {mib!r}")
    faults.check(cfg.fault)
    _checkpoints(cfg)
    _selection(cfg)
    validate_dataset_cfg(cfg.dataset)
    wait = cfg.tracking.get("outage_wait_s", 0)
    if not isinstance(wait, (int, float)) or isinstance(wait, bool) or wait < 0:
        raise ConfigError(f"`tracking.outage_wait_s`: must be a number of seconds >= 0, got {wait!r}")
    check_reachable(cfg.tracking.uri)
