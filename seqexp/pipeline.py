"""One run, top to bottom: data -> encoder -> strategy -> trainer -> fit -> test -> log.

``seqexp.run`` (the CLI) opens the MLflow run and calls :func:`train_and_test` inside it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger("seqexp")


@dataclass
class Built:
    """Everything one run trains and evaluates."""

    splits: dict
    labels: list[str]
    datamodule: object
    tagger: object


def build(cfg: DictConfig, metric_sink=None) -> Built:
    """Data, encoder, strategy and Tagger as the config says; nothing trained yet."""
    import lightning.pytorch as L
    import torch

    from seqexp.data import memo
    from seqexp.data.datamodule import TaggingDataModule, label_vocabulary
    from seqexp.data.schemes import scoring_scheme
    from seqexp.data.sources import load_splits
    from seqexp.models.encoders import load_encoder
    from seqexp.models.tagger import Tagger
    from seqexp.strategies import from_config

    if cfg.trainer.num_threads:
        torch.set_num_threads(cfg.trainer.num_threads)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    cache_dir = Path(cfg.cache_dir).expanduser()

    # data
    splits = memo.splits(cfg.dataset, cache_dir, lambda: load_splits(cfg.dataset, cache_dir))
    labels = label_vocabulary(splits["train"])
    strategy = from_config(cfg.freeze)
    frozen_throughout = all(map(strategy.static, range(strategy.phases)))
    encoder = load_encoder(cfg.model, splits["train"], cache_dir, unchanged=frozen_throughout)
    dm = TaggingDataModule(
        splits, encoder.tokenizer, labels, encoder.max_length,
        batch_size=cfg.trainer.batch_size, eval_batch_size=cfg.trainer.eval_batch_size,
        length_grouped=cfg.trainer.length_grouped, seed=cfg.seed, num_workers=cfg.trainer.num_workers,
    )
    dm.setup()
    # strategy: it may wrap the encoder and add a mixer; the Tagger applies its phase 0
    L.seed_everything(cfg.seed, workers=True, verbose=False)  # head init independent of data/encoder loading
    base = strategy.prepare(encoder.model)
    config = encoder.model.config
    head = hydra.utils.instantiate(cfg.head)(hidden_size=config.hidden_size, num_labels=len(labels))
    mixer = strategy.mixer(config.num_hidden_layers + 1, config.hidden_size)
    model = torch.compile(base, backend=cfg.trainer.compile_backend) if cfg.trainer.compile else base
    tagger = Tagger(
        model, head, labels, strategy=strategy, alignment=cfg.alignment, optim_cfg=cfg.optim,
        scheduler_cfg=cfg.scheduler, scoring_scheme=scoring_scheme(cfg.dataset.scheme),
        gold={"dev": dm.gold("dev"), "test": dm.gold("test")},
        metric_sink=metric_sink, mixer=mixer, base_encoder=base,
    )
    if cfg.trainer.feature_cache and strategy.static(0):
        use_feature_cache(base, dm, cfg, cache_dir, every_phase=frozen_throughout, layers=strategy.hidden)
    return Built(splits, labels, dm, tagger)


def use_feature_cache(encoder, dm, cfg: DictConfig, cache_dir: Path, every_phase: bool = True,
                      layers: str = "last") -> None:
    """Encode every split once (or load it), so epochs on a frozen encoder never run it.

    ``every_phase`` false (the encoder trains in a later phase): the train and dev features are
    computed now, while the encoder is still the pretrained one, and their batches keep the
    encoder's inputs for the later phases; the test split always runs the encoder."""
    import functools

    from seqexp.models.feature_cache import cached_features, encoder_fingerprint

    if cfg.trainer.precision not in ("32-true", "32", 32):
        log.info("feature cache off: it stores fp32 features, trainer.precision is %s", cfg.trainer.precision)
        return
    fp = encoder_fingerprint(encoder)
    for split, windows in dm.windows.items():
        if not every_phase and split == "test":
            continue
        dm.use_features(split, functools.partial(cached_features, encoder, windows, cfg.alignment, cache_dir, fp,
                                                 batch_size=cfg.trainer.eval_batch_size,
                                                 storage=cfg.trainer.feature_cache_dtype, layers=layers),
                        with_inputs=not every_phase)
        if not every_phase:
            dm.split_features(split)


def make_trainer(cfg: DictConfig, callbacks=(), strategy=None):
    """The Lightning Trainer of ``cfg``. With ``strategy`` (a ``seqexp.strategies.Strategy``): its callbacks
    (phase changes) come first."""
    import lightning.pytorch as L
    from lightning.pytorch.callbacks import Checkpoint

    t = cfg.trainer
    callbacks = [*(strategy.callbacks() if strategy is not None else ()), *callbacks]
    if t.get("host_mmap_threshold_mib") is not None:
        from seqexp.training.host_memory import MmapThreshold

        callbacks.append(MmapThreshold(t.host_mmap_threshold_mib))
    checkpointing = any(isinstance(c, Checkpoint) for c in callbacks)
    if not sys.stderr.isatty():  # logged to a file: a line every 10% of an epoch instead of a bar
        from seqexp.progress import LineProgress

        callbacks.append(LineProgress(10))
    plugins = []
    if checkpointing:
        from seqexp.training.checkpoints import StreamingCheckpointIO

        plugins.append(StreamingCheckpointIO())
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    from seqexp.errors import ConfigError
    from seqexp.training import distributed

    try:
        return L.Trainer(
            max_epochs=t.max_epochs, max_steps=t.max_steps,
            max_time=t.max_time,
            accelerator=t.accelerator, devices=t.devices if distributed.processes(t) > 1 else 1,
            strategy=distributed.lightning_strategy(t), precision=t.precision,
            # Several processes: LengthGroupedBatches shares every batch out itself; Lightning's
            # DistributedSampler would pad a split with repeated windows (seqexp/training/distributed.py).
            use_distributed_sampler=False,
            gradient_clip_val=t.gradient_clip_val, accumulate_grad_batches=t.accumulate_grad_batches,
            limit_train_batches=t.limit_train_batches, log_every_n_steps=t.log_every_n_steps,
            check_val_every_n_epoch=t.val_every_n_epochs or 1, limit_val_batches=None if t.val_every_n_epochs else 0,
            logger=False, enable_checkpointing=checkpointing, plugins=plugins,
            enable_model_summary=False,
            num_sanity_val_steps=0, enable_progress_bar=True, callbacks=callbacks,
        )
    except MisconfigurationException as exc:  # e.g. more devices than the accelerator has
        raise ConfigError(f"`trainer.devices`/`trainer.accelerator`/`trainer.strategy`: {exc}") from None


def metric_safe(tag: str) -> str:
    """A tag as MLflow accepts it in a metric name (POS tags such as ``PRP$`` or ``''``)."""
    safe = re.sub(r"[^A-Za-z0-9_\-. /]", lambda m: f"x{ord(m.group()):02x}", tag)
    return safe or "empty"


def conll_predictions(sentences, predictions) -> str:
    """Test predictions as CoNLL columns: word, gold, predicted; blank line between sentences."""
    lines = []
    for sentence, pred in zip(sentences, predictions):
        lines.extend(f"{w}\t{g}\t{p}" for w, g, p in zip(sentence.words, sentence.tags, pred))
        lines.append("")
    return "\n".join(lines)


def train_and_test(cfg: DictConfig, tracker, resume=None, job_started: float | None = None,
                   since: str = "job") -> dict:
    """The run itself, logging into ``tracker``'s open MLflow run. Returns its final metrics.

    ``resume`` (a ``seqexp.training.checkpoints.SavedState``): continue training from that checkpoint.
    ``job_started``: wall-clock start of the ``since`` (process or job), for the ``startup_s`` metric.
    """
    built = build(cfg, metric_sink=tracker.log_metrics)  # data, encoder, strategy, Tagger
    tagger, dm = built.tagger, built.datamodule
    log_sizes(cfg, built, tracker)
    with contextlib.ExitStack() as stack:
        callbacks, saver, best = run_callbacks(cfg, tracker, stack)
        trainer = make_trainer(cfg, callbacks=callbacks, strategy=tagger.strategy)
        started = time.perf_counter()
        from seqexp.training.distributed import announce, processes
        from seqexp.training.stopping import recorded_stop

        # DDP: the processes Lightning starts at fit learn the MLflow run and the checkpoint from rank 0
        if processes(cfg.trainer) > 1:
            stack.enter_context(announce(tracker.run_id, resume.path if resume is not None else None))
        with recorded_stop(trainer, tracker):  # fit
            trainer.fit(tagger, datamodule=dm, ckpt_path=resume.path if resume is not None else None)
        metrics = {"train_time_s": time.perf_counter() - started, "max_epochs": float(cfg.trainer.max_epochs),
                   "epochs_run": float(trainer.fit_loop.epoch_progress.current.completed)}
        if saver is not None and saver.save_seconds and trainer.is_global_zero:  # DDP: rank 0 writes
            log.info("checkpoints: %d saved to %s, %.2fs each on average", len(saver.save_seconds), saver.path,
                     sum(saver.save_seconds) / len(saver.save_seconds))
        if tagger.first_step_at is not None and job_started is not None:
            startup = tagger.first_step_at - job_started
            tracker.set_tags({"startup_s": f"{startup:.2f}"})
            log.info("first training step %.1fs after the %s started", startup, since)
        tested = best.best_model_path if best is not None and best.best_model_path else None
        trainer.test(tagger, datamodule=dm, ckpt_path=tested, verbose=False)  # test: the best dev weights
    if tested is not None:
        from seqexp.training import selection

        metrics.update(selection.tested_weights(tagger))
        log.info("testing the weights of epoch %d (best %s %.4f of %d epochs run)", metrics["best_epoch"],
                 cfg.trainer.monitor, float(best.best_model_score), metrics["epochs_run"])
        tracker.set_tags({"selection": f"best dev epoch ({cfg.trainer.monitor})"})
    else:
        tracker.set_tags({"selection": "last epoch (no dev evaluation)"})
    log_results(cfg, built, tracker, metrics)
    return metrics


def log_sizes(cfg: DictConfig, built: Built, tracker) -> None:
    trainable, total = built.tagger.parameter_counts()
    log.info("parameters: %s trained of %s (%s)", f"{trainable:,}", f"{total:,}", cfg.freeze.strategy)
    tracker.log_params({"labels": " ".join(built.labels),  # split sizes: bookkeeping, not curves
                        **{f"{k}_sentences": len(v) for k, v in built.splits.items()},
                        **{f"{k}_split_sentences": v for k, v in built.datamodule.split_counts.items()}})
    tracker.log_metrics({"trainable_params": trainable, "total_params": total})
    tracker.log_inputs(cfg, built.splits)


def run_callbacks(cfg: DictConfig, tracker, stack: contextlib.ExitStack):
    """(callbacks, last-checkpoint saver or None, best-dev saver or None): fault injection, resume
    checkpoints, and selection on dev."""
    from seqexp.progress import StepLoss
    from seqexp.training import faults

    callbacks = [faults.callback(cfg.fault)] if cfg.fault.kind else []
    callbacks.append(StepLoss(tracker.log_metrics, cfg.trainer.log_every_n_steps))
    saver = best = None
    if cfg.trainer.checkpoint_every_n_steps is not None:
        from seqexp.sweep import fingerprint
        from seqexp.training.checkpoints import LastCheckpoint, checkpoint_path

        fp = fingerprint(cfg)
        saver = LastCheckpoint(checkpoint_path(cfg, fp), cfg.trainer.checkpoint_every_n_steps, tracker.run_id, fp)
        callbacks.append(saver)
    if cfg.trainer.val_every_n_epochs:  # select on dev; without checkpoints the best weights live in a temp dir
        from seqexp.training import selection

        folder = saver.path.parent if saver is not None else \
            Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="seqexp-best-")))
        best, selecting = selection.callbacks(cfg.trainer, folder)
        callbacks.extend(selecting)
    return callbacks, saver, best


def log_results(cfg: DictConfig, built: Built, tracker, metrics: dict) -> None:
    from seqexp.metrics import format_report
    from seqexp.report.collect import PREDICTIONS  # .txt: MLflow's artifact view previews it

    result = built.tagger.results["test"]
    metrics.update({f"test_{k}": v for k, v in result.items() if isinstance(v, float)})
    for kind, scores in result.get("per_type", {}).items():
        metrics.update({f"test_{m}_{metric_safe(kind)}": scores[m] for m in ("precision", "recall", "f1")})
    tracker.log_metrics(metrics, step=0)  # one value per run: MLflow's charts draw it as a bar per run
    tracker.log_text(OmegaConf.to_yaml(cfg, resolve=True), "config.yaml")
    tracker.log_text(format_report(result), "test_report.txt")
    tracker.log_text(json.dumps(result, indent=2, sort_keys=True), "test_metrics.json")
    if cfg.tracking.log_predictions:
        tracker.log_text(conll_predictions(built.splits["test"], built.tagger.predictions["test"]),
                         PREDICTIONS)
    log.info("test: accuracy %.4f  precision %.4f  recall %.4f  f1 %.4f",
             result["accuracy"], result["precision"], result["recall"], result["f1"])
