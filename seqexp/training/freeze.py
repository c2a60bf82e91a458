"""Freeze strategies: which encoder parameters train, and which modules stay in eval mode.

``last``      only the tagging head trains; the whole encoder is frozen.
``unfreeze``  everything trains.
``top_k``     the head plus the top ``k`` transformer layers train; embeddings and
              the layers below stay frozen.

ALBERT shares one set of layer weights across all depths (``num_hidden_groups``
groups, 1 for albert-base). There, ``top_k`` unfreezes the layer *groups* that
serve the top ``k`` depths. With a single group that is the whole shared stack:
``top_k=1`` already trains the weights every depth uses, while the embeddings and
the embedding-to-hidden projection stay frozen.

Frozen parameters get ``requires_grad=False`` so they never reach the optimizer
(and so never get weight decay), and every module that holds only frozen weights
is kept in eval mode (no dropout) even after Lightning calls ``.train()``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from seqexp.config_errors import ConfigError

if TYPE_CHECKING:
    from torch import nn

STRATEGIES = ("last", "unfreeze", "top_k")


@dataclass
class FreezePlan:
    strategy: str
    trainable_layers: list[str] = field(default_factory=list)
    frozen_modules: list[nn.Module] = field(default_factory=list)

    def keep_frozen_in_eval(self) -> None:
        # Flag by flag, not .eval(): that would recurse into trainable layers below an ancestor.
        # Every module counts, not only leaves: attention blocks apply dropout functionally.
        for module in self.frozen_modules:
            module.training = False


def _albert_groups_for_top_k(encoder: nn.Module, k: int) -> set[int]:
    cfg = encoder.config
    depth, groups = cfg.num_hidden_layers, cfg.num_hidden_groups
    per_group = depth // groups
    return {min(d // per_group, groups - 1) for d in range(depth - k, depth)}


def _trainable_layer_names(encoder: nn.Module, k: int) -> list[str]:
    """Qualified names of the transformer blocks that train under ``top_k``."""
    from seqexp.models.encoders import transformer_layers

    layers = transformer_layers(encoder)
    names = {id(m): n for n, m in encoder.named_modules()}
    if getattr(encoder.config, "model_type", "") == "albert":
        chosen = sorted(_albert_groups_for_top_k(encoder, k))
        return [names[id(layers[g])] for g in chosen]
    depth = len(layers)
    if k > depth:
        raise ConfigError(f"`freeze.top_k`: {k} is larger than the encoder's {depth} layers")
    return [names[id(m)] for m in layers[depth - k :]] if k else []


def apply_freeze(encoder: nn.Module, strategy: str, top_k: int = 0) -> FreezePlan:
    """Set ``requires_grad`` on the encoder and list the modules that must stay in eval."""
    if strategy not in STRATEGIES:
        raise ConfigError(f"`freeze.strategy`: unknown {strategy!r}; choose one of {', '.join(STRATEGIES)}")
    if strategy == "unfreeze":
        encoder.requires_grad_(True)
        return FreezePlan(strategy, trainable_layers=["*"])
    trainable = _trainable_layer_names(encoder, top_k) if strategy == "top_k" else []

    def is_trainable(name: str) -> bool:
        return any(name == t or name.startswith(t + ".") for t in trainable)

    for name, param in encoder.named_parameters():
        param.requires_grad_(is_trainable(name))
    frozen = [module for name, module in encoder.named_modules() if not is_trainable(name)]
    plan = FreezePlan(strategy, trainable_layers=trainable, frozen_modules=frozen)
    plan.keep_frozen_in_eval()
    return plan


def count_parameters(module: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    total = sum(p.numel() for p in module.parameters())
    trainable = sum(p.numel() for p in module.parameters() if p.requires_grad)
    return trainable, total
