"""Fine-tuning strategies: which weights train, how fast, and when.

One strategy is one class in this package and one ``conf/freeze/<name>.yaml`` that selects it by
``_target_`` (``seqexp/strategies/base.py`` says what a strategy answers). Adding one:

1. ``seqexp/strategies/<name>.py``: a subclass of ``Strategy`` (or of a close one) that overrides
   what differs (``trainable``, ``lr``, ``phase_at``, ``prepare``, ...); name its source in the docstring.
2. ``conf/freeze/<name>.yaml``: ``_target_``, ``strategy: <name>``, its budget (``max_epochs``,
   ``patience``, ``lr_scale``) and its own keys, headed by the command that runs it.
3. Done: ``tests/strategies/test_contract.py`` checks it on every tiny encoder.
"""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf

from seqexp.errors import ConfigError
from seqexp.strategies.base import Strategy

__all__ = ["Strategy", "from_config"]


def from_config(freeze_cfg: DictConfig) -> Strategy:
    """The strategy ``conf/freeze/*.yaml`` describes; a ConfigError names the key that is wrong.

    Imports the strategy's module only (no torch): config checks call it."""
    import importlib

    target = freeze_cfg.get("_target_")
    if not isinstance(target, str) or "." not in target:
        raise ConfigError(f"`freeze._target_`: must name a strategy class, e.g. seqexp.strategies.last.Last, "
                          f"got {target!r}")
    module_name, _, cls_name = target.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), cls_name)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"`freeze._target_`: cannot import {target!r} ({exc})") from None
    if not (isinstance(cls, type) and issubclass(cls, Strategy)):
        raise ConfigError(f"`freeze._target_`: {target!r} is not a seqexp.strategies.Strategy")
    params = OmegaConf.to_container(freeze_cfg, resolve=True)
    params.pop("_target_")
    accepted = _keywords(cls)
    unknown = sorted(set(params) - accepted)
    if unknown:
        raise ConfigError(f"`freeze.{unknown[0]}`: not a key of {cls_name} (it takes: {', '.join(sorted(accepted))})")
    return cls(**params)


def _keywords(cls: type) -> set[str]:
    """The keyword arguments ``cls`` takes, its bases' included (subclasses pass ``**budget`` on)."""
    import inspect

    names: set[str] = set()
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is not None:
            names |= {p.name for p in inspect.signature(init).parameters.values()
                      if p.kind is p.KEYWORD_ONLY}
    return names
