"""Optimizers and learning-rate schedules over the trainable parameters only.

Learning rates come from the strategy (``seqexp.strategies.Strategy.lr``): by default
``optim.lr`` for the tagging head and ``optim.encoder_lr`` for the encoder parameters that train,
both times ``freeze.lr_scale`` (head-only training affords a higher rate than full fine-tuning);
``freeze=llrd`` gives each layer its own. Weight decay never touches biases, normalisation
weights (any 1-D tensor) or frozen parameters (those never reach the optimizer).
Every schedule steps once per optimizer step (per batch).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import TYPE_CHECKING

from seqexp.errors import ConfigError

if TYPE_CHECKING:
    import torch
    from torch import nn

OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("constant", "linear", "cosine")


def param_groups(named: Iterable[tuple[str, str, nn.Parameter]], strategy, cfg, phase: int) -> list[dict]:
    """One group per (learning rate, weight decay) over ``(part, name, parameter)`` triples, in the
    order first seen. The rate is the strategy's (``Strategy.lr``: one per layer, if it likes)."""
    groups: dict[tuple[float, float], list] = {}
    for part, name, param in named:
        rate = strategy.lr(part, name, cfg, phase)
        decay = 0.0 if param.ndim <= 1 else cfg.weight_decay
        groups.setdefault((rate, decay), []).append(param)
    return [{"params": params, "lr": rate, "weight_decay": decay} for (rate, decay), params in groups.items()]


def build_optimizer(groups: list[dict], cfg, fused: bool = True) -> torch.optim.Optimizer:
    """``fused``: one kernel per step instead of a dozen elementwise ops per parameter (CPU and CUDA).
    Lightning refuses gradient clipping with a fused optimizer under mixed precision: pass False there."""
    import torch

    devices = {p.device.type for g in groups for p in g["params"]}
    fused = (fused and devices <= {"cpu", "cuda"}) or None
    lr = groups[0]["lr"]
    if cfg.name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=cfg.momentum, nesterov=cfg.nesterov, fused=fused)
    if cfg.name in ("adam", "adamw"):
        cls = torch.optim.AdamW if cfg.name == "adamw" else torch.optim.Adam
        # Adam's weight_decay is L2 in the gradient; AdamW's is decoupled.
        return cls(groups, lr=lr, betas=tuple(cfg.betas), eps=cfg.eps, fused=fused)
    raise ConfigError(f"`optim.name`: unknown {cfg.name!r}; choose one of {', '.join(OPTIMIZERS)}")


def add_param_groups(optimizer, scheduler, groups: list[dict]) -> None:
    """New groups join a running optimizer (a strategy's next phase) on the schedule's current factor."""
    factor = scheduler.lr_lambdas[0](scheduler.last_epoch)
    for group in groups:
        group["initial_lr"] = group["lr"]
        optimizer.add_param_group(group)
        scheduler.base_lrs.append(group["initial_lr"])
        scheduler.lr_lambdas.append(scheduler.lr_lambdas[0])
        group["lr"] = group["initial_lr"] * factor
    scheduler._last_lr = [g["lr"] for g in optimizer.param_groups]


def set_base_lrs(optimizer, scheduler, rates: list[float]) -> None:
    """Give the existing groups new base rates (a strategy's next phase), on the schedule's current factor."""
    factor = scheduler.lr_lambdas[0](scheduler.last_epoch)
    for i, (group, rate) in enumerate(zip(optimizer.param_groups, rates)):
        group["initial_lr"] = scheduler.base_lrs[i] = rate
        group["lr"] = rate * factor
    scheduler._last_lr = [g["lr"] for g in optimizer.param_groups]


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
