"""Model selection on dev: a run is tested with the weights of its best dev evaluation, and stops early.

    python -m seqexp.run trainer.patience=3 trainer.min_delta=0.001   # trainer.early_stopping=false: full budget

Both halves are Lightning's own callbacks:

- :class:`~lightning.pytorch.callbacks.ModelCheckpoint` on ``trainer.monitor`` (dev F1 by
  default) keeps the best weights so far in ``<folder>/best.ckpt`` (the run's checkpoint
  folder, beside ``last.ckpt``). Frozen weights are left out of it, as of every checkpoint
  (``Tagger.on_save_checkpoint``), so a head-only run's best weights are kilobytes.
- :class:`~lightning.pytorch.callbacks.EarlyStopping` ends ``fit`` after ``trainer.patience``
  dev evaluations without a gain above ``trainer.min_delta``, counting only those of the strategy's
  last phase (:class:`LastPhaseEarlyStopping`): ``gradual`` and ``lp_ft`` train the whole encoder
  only in their last phase, and the head-only evaluations before it say nothing about when that
  phase has converged.

Their state (best score, best path, evaluations without a gain) is part of ``last.ckpt``, so a
killed run that resumes picks the same best epoch as an uninterrupted one. The test set is
never looked at before ``fit`` ends; :func:`tested_weights` says what was tested.
"""

from __future__ import annotations

from pathlib import Path

from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint

from seqexp.training.checkpoints import BEST


class LastPhaseEarlyStopping(EarlyStopping):
    """Lightning's ``EarlyStopping``, blind to dev evaluations made before the strategy's last phase.

    Before, the strategies with phases set the Trainer's ``min_epochs``/``min_steps`` to the start of their last
    phase. But Lightning latches a stop decision: patience running out during an earlier phase set
    ``trainer.should_stop`` for good, and the run ended as soon as ``min_epochs`` was met, even though dev F1
    had improved since (Lightning issue #19966, open). In the strategies study with every budget doubled, an
    ``lp_ft`` run whose probe stalled for two epochs stopped after its first fine-tuning epoch, 6 of 16.
    Here the earlier evaluations are not looked at at all: the last phase starts with a full patience and
    the best score of its own evaluations.
    """

    def on_validation_end(self, trainer, pl_module) -> None:
        strategy = getattr(pl_module, "strategy", None)
        if strategy is not None and pl_module.phase < strategy.phases - 1:
            return
        super().on_validation_end(trainer, pl_module)


def callbacks(trainer_cfg, folder: Path) -> tuple[ModelCheckpoint, list]:
    """(the best-weights saver, every selection callback) for ``trainer_cfg``."""
    best = ModelCheckpoint(dirpath=folder, filename=Path(BEST).stem, monitor=trainer_cfg.monitor, mode="max",
                           save_top_k=1, save_weights_only=True, save_last=False, enable_version_counter=False,
                           auto_insert_metric_name=False)
    out: list = [best]
    if trainer_cfg.early_stopping:
        out.append(LastPhaseEarlyStopping(monitor=trainer_cfg.monitor, mode="max", patience=trainer_cfg.patience,
                                 min_delta=trainer_cfg.min_delta, check_on_train_epoch_end=False, verbose=False))
    return best, out


def early_stopped(trainer) -> bool:
    """Whether EarlyStopping ended this ``fit``."""
    return any(isinstance(c, EarlyStopping) and c.stopped_epoch > 0 for c in trainer.callbacks)


def tested_weights(tagger) -> dict[str, float]:
    """Metrics that say which weights were tested: ``best_epoch`` (1-based) and the dev scores at it.

    Read from the checkpoint the test loaded (``Tagger.loaded``), so they describe exactly those weights.
    """
    loaded = tagger.loaded
    if not loaded:
        return {}
    dev = loaded.get("dev", {})
    metrics = {"best_epoch": float(loaded["epoch"] + 1)}
    metrics.update({f"best_val_{k}": v for k, v in dev.items() if k != "loss"})
    return metrics
