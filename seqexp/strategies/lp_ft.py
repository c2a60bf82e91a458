"""``freeze=lp_ft``: linear probe, then fine-tune (Kumar et al. 2022, "Fine-Tuning can Distort
Pretrained Features and Underperform Out-of-Distribution").

Phase 0 (the first ``freeze.probe_epochs`` epochs) trains the head alone on the frozen encoder's
cached features, at ``freeze.probe_lr_scale`` times the head's learning rate; phase 1 fine-tunes
everything, starting from that head, with the usual learning rates (``x freeze.lr_scale``). One run,
one MLflow run: the dev curve shows both phases; ``best_epoch`` may fall in either (then the probe's
head on the pretrained encoder is what is tested). Early stopping waits for the fine-tuning phase.
"""

from __future__ import annotations

from seqexp.errors import ConfigError
from seqexp.strategies.base import whole_number
from seqexp.strategies.unfreeze import Unfreeze


class LinearProbeFineTune(Unfreeze):
    phases = 2

    def __init__(self, *, probe_epochs: int, probe_lr_scale: float = 1.0, **budget):
        super().__init__(**budget)
        self.probe_epochs = probe_epochs
        self.probe_lr_scale = probe_lr_scale

    def check(self, cfg) -> None:
        whole_number(self.probe_epochs, "freeze.probe_epochs", 1)
        if self.probe_epochs >= cfg.trainer.max_epochs:
            raise ConfigError(f"`freeze.probe_epochs`: {self.probe_epochs} leaves no epoch to fine-tune in "
                              f"`trainer.max_epochs` ({cfg.trainer.max_epochs})")
        s = self.probe_lr_scale
        if not isinstance(s, (int, float)) or isinstance(s, bool) or not s > 0:
            raise ConfigError(f"`freeze.probe_lr_scale`: must be a positive number, got {s!r}")

    def trainable(self, encoder, phase):
        return super().trainable(encoder, phase) if phase else set()

    def eval_modules(self, encoder, phase):
        return [] if phase else list(encoder.modules())

    def static(self, phase):
        return phase == 0

    def lr(self, part, name, optim, phase):
        rate = super().lr(part, name, optim, phase)
        return rate * self.probe_lr_scale if phase == 0 else rate

    def phase_at(self, epoch, step):
        return 1 if epoch >= self.probe_epochs else 0
