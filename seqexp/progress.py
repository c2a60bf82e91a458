"""Progress of a run whose output goes to a file (a sweep's job log, ``nohup``, a cluster job).

On a terminal Lightning draws its own bar (``TQDMProgressBar``). Written to a file, that bar is
either absent or a wall of carriage returns, so ``LineProgress`` (a Lightning ``ProgressBar``) logs
one line every ``every_pct`` percent of an epoch instead: batches done, speed and time left in the
epoch, and the running train loss. ``StepLoss`` logs ``train_loss_step`` to MLflow every
``trainer.log_every_n_steps`` optimizer steps, beside the per-epoch ``train_loss``.
"""

from __future__ import annotations

import logging
import math
import time

from lightning.pytorch.callbacks import Callback, ProgressBar

log = logging.getLogger("seqexp.progress")


def _duration(seconds: float) -> str:
    seconds = round(seconds)
    return f"{seconds} s" if seconds < 60 else f"{seconds // 60} min {seconds % 60:02d} s"


def _loss(outputs) -> float | None:
    loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
    try:
        return float(loss)
    except (TypeError, ValueError):
        return None


class LineProgress(ProgressBar):
    """One log line every ``every_pct`` % of a training epoch (and at its end)."""

    def __init__(self, every_pct: float = 10.0):
        super().__init__()
        self.every_pct = every_pct
        self._enabled = True
        self._started = 0.0
        self._first_batch = 0
        self._next_pct = every_pct
        self._loss_sum, self._loss_n = 0.0, 0

    @property
    def is_enabled(self) -> bool:
        return self._enabled

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._started = time.monotonic()
        self._first_batch = None
        self._next_pct = self.every_pct
        self._loss_sum, self._loss_n = 0.0, 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if not self._enabled or trainer.sanity_checking:
            return
        if self._first_batch is None:  # a run resumed mid-epoch starts past batch 0
            self._first_batch = batch_idx
        loss = _loss(outputs)
        if loss is not None and math.isfinite(loss):
            self._loss_sum, self._loss_n = self._loss_sum + loss, self._loss_n + 1
        total = self.total_train_batches
        done = batch_idx + 1
        if not total or math.isinf(total):
            return
        pct = 100.0 * done / total
        if pct + 1e-9 < self._next_pct and done < total:
            return
        self._next_pct = (math.floor(pct / self.every_pct) + 1) * self.every_pct
        elapsed = time.monotonic() - self._started
        rate = (done - self._first_batch) / elapsed if elapsed > 0 else 0.0
        left = f", {_duration((total - done) / rate)} left in the epoch" if rate > 0 and done < total else ""
        mean = f", train_loss {self._loss_sum / self._loss_n:.4f}" if self._loss_n else ""
        epochs = trainer.max_epochs if trainer.max_epochs and trainer.max_epochs > 0 else "?"
        log.info("epoch %d/%s: %3.0f%% (%d/%d batches, %.1f batches/s%s)%s", trainer.current_epoch + 1, epochs,
                 pct, done, total, rate, left, mean)


class StepLoss(Callback):
    """``train_loss_step`` into MLflow every ``every_n_steps`` optimizer steps (x axis: the global step)."""

    def __init__(self, sink, every_n_steps: int):
        self.sink = sink
        self.every_n_steps = max(int(every_n_steps), 1)
        self._last = -1

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if step == self._last or step % self.every_n_steps:
            return  # accumulating gradients: the same optimizer step again
        loss = _loss(outputs)
        if trainer.world_size > 1 and loss is not None:  # the mean over every rank's part of the batch
            import torch

            loss = float(trainer.strategy.reduce(torch.tensor(loss, device=pl_module.device), reduce_op="mean"))
        if loss is not None and math.isfinite(loss):
            self._last = step
            self.sink({"train_loss_step": loss}, step)
