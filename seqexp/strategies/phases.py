"""The Lightning callback that moves a multi-phase strategy from phase to phase."""

from __future__ import annotations

import logging

import lightning.pytorch as L

log = logging.getLogger("seqexp")


class PhaseSchedule(L.Callback):
    """Before every training step, asks the strategy which phase this epoch and step are in and,
    when it changed, lets the Tagger enter it (``Tagger.enter_phase``: trainable set, optimizer
    groups, eval modes). Stateless: the phase is in every checkpoint (``Tagger.on_save_checkpoint``)."""

    def __init__(self, strategy):
        self.strategy = strategy

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        phase = self.strategy.phase_at(trainer.current_epoch, trainer.global_step)
        if phase != pl_module.phase:
            pl_module.enter_phase(phase)
            log.info("%s: phase %d of %d from epoch %d, step %d (%s trainable parameters)", self.strategy.name,
                     phase + 1, self.strategy.phases, trainer.current_epoch + 1, trainer.global_step,
                     f"{sum(p.numel() for p in pl_module.parameters() if p.requires_grad):,}")
