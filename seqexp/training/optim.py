"""Optimizers and learning-rate schedules over the trainable parameters only.

Two learning rates: ``optim.lr`` for the tagging head, ``optim.encoder_lr`` for the
encoder parameters that train, both multiplied by the strategy's ``freeze.lr_scale``
(head-only training affords a higher rate than full fine-tuning). Weight decay never touches biases, normalisation
weights (any 1-D tensor) or frozen parameters (those never reach the optimizer).
Every schedule steps once per optimizer step (per batch).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import TYPE_CHECKING

from seqexp.config_errors import ConfigError

if TYPE_CHECKING:
    import torch
    from torch import nn

OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("constant", "linear", "cosine")


def _groups(named: Iterable[tuple[str, nn.Parameter]], lr: float, weight_decay: float) -> list[dict]:
    decay, no_decay = [], []
    for _, param in named:
        if param.requires_grad:
            (no_decay if param.ndim <= 1 else decay).append(param)
    groups = [{"params": decay, "lr": lr, "weight_decay": weight_decay},
              {"params": no_decay, "lr": lr, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def param_groups(encoder: nn.Module, head: nn.Module, cfg, lr_scale: float = 1.0) -> list[dict]:
    return _groups(head.named_parameters(), cfg.lr * lr_scale, cfg.weight_decay) + _groups(
        encoder.named_parameters(), cfg.encoder_lr * lr_scale, cfg.weight_decay
    )


def build_optimizer(encoder: nn.Module, head: nn.Module, cfg, fused: bool = True,
                    lr_scale: float = 1.0) -> torch.optim.Optimizer:
    """``fused``: one kernel per step instead of a dozen elementwise ops per parameter (CPU and CUDA).
    Lightning refuses gradient clipping with a fused optimizer under mixed precision: pass False there."""
    import torch

    groups = param_groups(encoder, head, cfg, lr_scale)
    devices = {p.device.type for g in groups for p in g["params"]}
    fused = (fused and devices <= {"cpu", "cuda"}) or None
    if cfg.name == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr * lr_scale, momentum=cfg.momentum, nesterov=cfg.nesterov, fused=fused)
    if cfg.name in ("adam", "adamw"):
        cls = torch.optim.AdamW if cfg.name == "adamw" else torch.optim.Adam
        # Adam's weight_decay is L2 in the gradient; AdamW's is decoupled.
        return cls(groups, lr=cfg.lr * lr_scale, betas=tuple(cfg.betas), eps=cfg.eps, fused=fused)
    raise ConfigError(f"`optim.name`: unknown {cfg.name!r}; choose one of {', '.join(OPTIMIZERS)}")


def lr_lambda(name: str, total_steps: int, warmup_ratio: float):
    """Multiplier of the base learning rate at optimizer step ``step``."""
    if name not in SCHEDULES:
        raise ConfigError(f"`scheduler.name`: unknown {name!r}; choose one of {', '.join(SCHEDULES)}")
    total = max(1, total_steps)
    warmup = int(round(warmup_ratio * total))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        if name == "constant":
            return 1.0
        progress = (step - warmup) / max(1, total - warmup)
        progress = min(1.0, progress)
        if name == "linear":
            return max(0.0, 1.0 - progress)
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


def build_scheduler(optimizer: torch.optim.Optimizer, cfg, total_steps: int):
    import torch

    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg.name, total_steps, cfg.warmup_ratio))
