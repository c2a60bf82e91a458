"""``python -m seqexp.run``: one training run (or, with ``-m``, a sweep of them).

validate config -> open the MLflow run -> read data -> load encoder -> freeze ->
fit -> test on every word -> log metrics and artifacts.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import re
import signal
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from seqexp.config_errors import ConfigError
from seqexp.data.sentences import DataFormatError

log = logging.getLogger("seqexp")

# Errors that are the user's to fix: one clear line, no traceback.
USER_ERRORS: tuple[type[BaseException], ...] = (ConfigError, DataFormatError)


def _user_errors() -> tuple[type[BaseException], ...]:
    from seqexp.data.sources import DataSourceError
    from seqexp.disk import DiskFullError
    from seqexp.models.encoders import EncoderUnavailableError
    from seqexp.tracking_buffer import TrackingUnavailableError

    # The Tagger (and torch with it) is imported only once training starts; before that no
    # NonFiniteLossError can exist, and config errors must not pay seconds of imports.
    tagger = sys.modules.get("seqexp.models.tagger")
    training = (tagger.NonFiniteLossError,) if tagger is not None else ()
    checkpoints = sys.modules.get("seqexp.training.checkpoints")
    training += (checkpoints.CheckpointError,) if checkpoints is not None else ()
    return USER_ERRORS + (DataSourceError, DiskFullError, EncoderUnavailableError, TrackingUnavailableError,
                          *training)


def hydra_context() -> tuple[dict[str, str], list[str]]:
    """(chosen option per config group, command-line overrides) of this job."""
    if not HydraConfig.initialized():
        return {}, []
    hc = HydraConfig.get()
    choices = {k: str(v) for k, v in hc.runtime.choices.items() if not k.startswith("hydra")}
    return choices, list(hc.overrides.task)


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


@dataclass
class Built:
    """Everything one run trains and evaluates."""

    splits: dict
    labels: list[str]
    datamodule: object
    tagger: object


def build(cfg: DictConfig, metric_sink=None) -> Built:
    """Data, encoder, head and freeze plan as the config says; nothing trained yet."""
    import lightning.pytorch as L
    import torch

    from seqexp.data import memo
    from seqexp.data.datamodule import TaggingDataModule, label_vocabulary
    from seqexp.data.schemes import scoring_scheme
    from seqexp.data.sources import load_splits
    from seqexp.models.encoders import load_encoder
    from seqexp.models.tagger import Tagger
    from seqexp.training.freeze import apply_freeze

    if cfg.trainer.num_threads:
        torch.set_num_threads(cfg.trainer.num_threads)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    cache_dir = Path(cfg.cache_dir).expanduser()

    splits = memo.splits(cfg.dataset, cache_dir, lambda: load_splits(cfg.dataset, cache_dir))
    labels = label_vocabulary(splits["train"])
    encoder = load_encoder(cfg.model, splits["train"], cache_dir)
    dm = TaggingDataModule(
        splits, encoder.tokenizer, labels, encoder.max_length,
        batch_size=cfg.trainer.batch_size, eval_batch_size=cfg.trainer.eval_batch_size,
        length_grouped=cfg.trainer.length_grouped, seed=cfg.seed, num_workers=cfg.trainer.num_workers,
    )
    dm.setup()
    L.seed_everything(cfg.seed, workers=True, verbose=False)  # head init independent of data/encoder loading
    head = hydra.utils.instantiate(cfg.head)(hidden_size=encoder.model.config.hidden_size, num_labels=len(labels))
    plan = apply_freeze(encoder.model, cfg.freeze.strategy, cfg.freeze.top_k)
    if plan.strategy == "last" and cfg.trainer.feature_cache:
        use_feature_cache(encoder.model, dm, cfg, cache_dir)
    model = torch.compile(encoder.model, backend=cfg.trainer.compile_backend) if cfg.trainer.compile else encoder.model
    tagger = Tagger(
        model, head, labels, alignment=cfg.alignment, optim_cfg=cfg.optim,
        scheduler_cfg=cfg.scheduler, freeze=plan,
        scoring_scheme=scoring_scheme(cfg.dataset.scheme),
        gold={"dev": dm.gold("dev"), "test": dm.gold("test")},
        metric_sink=metric_sink, lr_scale=cfg.freeze.lr_scale,
    )
    return Built(splits, labels, dm, tagger)


def use_feature_cache(encoder, dm, cfg: DictConfig, cache_dir: Path) -> None:
    """Head-only runs: encode every split once (or load it), so epochs never run the encoder."""
    from seqexp.models.feature_cache import cached_features, encoder_fingerprint

    if cfg.trainer.precision not in ("32-true", "32", 32):
        log.info("feature cache off: it stores fp32 features, trainer.precision is %s", cfg.trainer.precision)
        return
    fp = encoder_fingerprint(encoder)
    for split, windows in dm.windows.items():
        dm.use_features(split, functools.partial(cached_features, encoder, windows, cfg.alignment, cache_dir, fp,
                                                 batch_size=cfg.trainer.eval_batch_size,
                                                 storage=cfg.trainer.feature_cache_dtype))


def make_trainer(cfg: DictConfig, callbacks=()):
    import lightning.pytorch as L
    from lightning.pytorch.callbacks import Checkpoint

    t = cfg.trainer
    callbacks = list(callbacks)
    if t.get("host_mmap_threshold_mib") is not None:
        from seqexp.training.host_memory import MmapThreshold

        callbacks.append(MmapThreshold(t.host_mmap_threshold_mib))
    checkpointing = any(isinstance(c, Checkpoint) for c in callbacks)
    plugins = []
    if checkpointing:
        from seqexp.training.checkpoints import StreamingCheckpointIO

        plugins.append(StreamingCheckpointIO())
    return L.Trainer(
        max_epochs=t.max_epochs, max_steps=t.max_steps, max_time=t.max_time,
        accelerator=t.accelerator, devices=t.devices, precision=t.precision,
        gradient_clip_val=t.gradient_clip_val, accumulate_grad_batches=t.accumulate_grad_batches,
        limit_train_batches=t.limit_train_batches, log_every_n_steps=t.log_every_n_steps,
        check_val_every_n_epoch=t.val_every_n_epochs or 1, limit_val_batches=None if t.val_every_n_epochs else 0,
        logger=False, enable_checkpointing=checkpointing, plugins=plugins,
        enable_model_summary=False,
        num_sanity_val_steps=0, enable_progress_bar=sys.stderr.isatty(), callbacks=callbacks,
    )


def process_started() -> float:
    """Wall-clock time this process started (Linux: from /proc, to 10 ms; else: now)."""
    import os

    try:
        with open("/proc/self/stat") as f:
            ticks = int(f.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
        return time.time() - (uptime - ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return time.time()


PROCESS_STARTED = process_started()
_job_started: float | None = None  # the first job of a process counts from the process's start


def train_and_test(cfg: DictConfig, tracker, resume=None) -> dict:
    """The run itself, logging into ``tracker``'s open MLflow run. Returns test metrics.

    ``resume`` (a ``seqexp.training.checkpoints.SavedState``): continue training from that checkpoint.
    """
    from seqexp.metrics import format_report
    from seqexp.training.freeze import count_parameters

    built = build(cfg, metric_sink=tracker.log_metrics)
    tagger, dm, splits = built.tagger, built.datamodule, built.splits
    trainable, total = count_parameters(tagger)
    log.info("parameters: %s trainable of %s (%s)", f"{trainable:,}", f"{total:,}", cfg.freeze.strategy)
    tracker.log_params({"labels": " ".join(built.labels)})
    tracker.log_metrics({
        "trainable_params": trainable, "total_params": total,
        **{f"{k}_sentences": len(v) for k, v in splits.items()},
        **{f"{k}_split_sentences": v for k, v in dm.split_counts.items()},
    })

    from seqexp.training import faults
    from seqexp.training.stopping import recorded_stop

    callbacks = [faults.callback(cfg.fault)] if cfg.fault.kind else []
    saver = None
    with contextlib.ExitStack() as stack:
        if cfg.trainer.checkpoint_every_n_steps is not None:
            from seqexp.sweep import fingerprint
            from seqexp.training.checkpoints import LastCheckpoint, checkpoint_path

            fp = fingerprint(cfg)
            saver = LastCheckpoint(checkpoint_path(cfg, fp), cfg.trainer.checkpoint_every_n_steps, tracker.run_id, fp)
            callbacks.append(saver)
        best = None
        if cfg.trainer.val_every_n_epochs:  # select on dev; without checkpoints the best weights live in a temp dir
            from seqexp.training import selection

            folder = saver.path.parent if saver is not None else \
                Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="seqexp-best-")))
            best, selecting = selection.callbacks(cfg.trainer, folder)
            callbacks.extend(selecting)
        trainer = make_trainer(cfg, callbacks=callbacks)
        started = time.perf_counter()
        with recorded_stop(trainer, tracker):
            trainer.fit(tagger, datamodule=dm, ckpt_path=resume.path if resume is not None else None)
        train_time = time.perf_counter() - started
        if saver is not None and saver.save_seconds:
            log.info("checkpoints: %d saved to %s, %.2fs each on average", len(saver.save_seconds), saver.path,
                     sum(saver.save_seconds) / len(saver.save_seconds))
        metrics = {"train_time_s": train_time, "max_epochs": float(cfg.trainer.max_epochs),
                   "epochs_run": float(trainer.fit_loop.epoch_progress.current.completed)}
        if tagger.first_step_at is not None and _job_started is not None:
            metrics["startup_s"] = tagger.first_step_at - _job_started
            log.info("first training step %.1fs after the %s started", metrics["startup_s"],
                     "process" if _job_started == PROCESS_STARTED else "job")
        tested = best.best_model_path if best is not None and best.best_model_path else None
        trainer.test(tagger, datamodule=dm, ckpt_path=tested, verbose=False)
    if tested is not None:
        metrics.update(selection.tested_weights(tagger))
        log.info("testing the weights of epoch %d (best %s %.4f of %d epochs run)", metrics["best_epoch"],
                 cfg.trainer.monitor, float(best.best_model_score), metrics["epochs_run"])
        tracker.set_tags({"selection": f"best dev epoch ({cfg.trainer.monitor})"})
    else:
        tracker.set_tags({"selection": "last epoch (no dev evaluation)"})

    result = tagger.results["test"]
    metrics.update({f"test_{k}": v for k, v in result.items() if isinstance(v, float)})
    for kind, scores in result.get("per_type", {}).items():
        metrics.update({f"test_{m}_{metric_safe(kind)}": scores[m] for m in ("precision", "recall", "f1")})
    tracker.log_metrics(metrics, step=trainer.current_epoch)
    tracker.log_text(OmegaConf.to_yaml(cfg, resolve=True), "config.yaml")
    tracker.log_text(format_report(result), "test_report.txt")
    tracker.log_text(json.dumps(result, indent=2, sort_keys=True), "test_metrics.json")
    if cfg.tracking.log_predictions:
        tracker.log_text(conll_predictions(splits["test"], tagger.predictions["test"]), "test_predictions.conll")
    log.info("test: accuracy %.4f  precision %.4f  recall %.4f  f1 %.4f",
             result["accuracy"], result["precision"], result["recall"], result["f1"])
    return metrics


def best_dev_f1(metrics: dict, run_id: str, uri: str) -> float | None:
    """A run's objective for a search (what ``main()`` returns to a sweeper): its best dev F1.

    ``best_val_f1`` when the run logged it, else the highest ``val_f1`` in its MLflow history
    (None when dev was never evaluated). The test set never chooses.
    """
    if metrics.get("best_val_f1") is not None:
        return metrics["best_val_f1"]
    from seqexp.tracking import client

    return max((m.value for m in client(uri).get_metric_history(run_id, "val_f1")), default=None)


def run(cfg: DictConfig) -> float | None:
    """Validate, skip if already done, then train and test inside one MLflow run. Returns best dev F1."""
    from seqexp import gc_startup
    from seqexp.config import validate
    from seqexp.sweep import Outcome, claim_job, claimed_by, fingerprint, job_tags
    from seqexp.tracking import AXES, RunTracker, run_name
    from seqexp.training.stopping import interruptible

    global _job_started
    _job_started = PROCESS_STARTED if _job_started is None else time.time()
    validate(cfg)
    quiet_libraries()  # imports Lightning, and torch with it
    gc_startup.freeze_imports()
    choices, overrides = hydra_context()
    axes = {axis: choices.get(axis, "?") for axis in AXES}
    axes["seed"] = str(cfg.seed)
    name = cfg.tracking.run_name or run_name(choices, overrides, cfg.seed)
    fp = fingerprint(cfg)
    tracker = RunTracker(cfg.tracking.uri, cfg.tracking.experiment)
    if cfg.trainer.checkpoint_every_n_steps is not None:
        from seqexp.training.checkpoints import checkpoint_path

        tracker.outbox.checkpoint = str(checkpoint_path(cfg, fp))  # a replay that ends the run removes it
    try:
        with tracker, interruptible():  # Ctrl-C and SIGTERM: the run ends KILLED
            # Done already, or being trained by another process: skip. Else this process owns the job.
            claim = claim_job(cfg, tracker, fp, name, axes, job_tags(cfg, fp, overrides))
            if claim.done is not None:
                f1 = claim.done.data.metrics.get("test_f1")
                log.info("%s: already FINISHED as run %s (test_f1 %s); skipping (rerun=true forces it)",
                         name, claim.done.info.run_id, f1)
                dev_f1 = best_dev_f1(claim.done.data.metrics, claim.done.info.run_id, tracker.uri)
                Outcome(name, "SKIPPED", claim.done.info.run_id, f1, dev_f1=dev_f1).save()
                return dev_f1
            if claim.holder is not None:
                log.info("%s: %s; skipping", name, claimed_by(claim.holder))
                Outcome(name, "SKIPPED", claim.holder.info.run_id, error=claimed_by(claim.holder)).save()
                return None
            resume = claim.resume
            if resume is not None:
                log.info("resuming run %s (%s) from step %d (saved in epoch %d): %s",
                         name, resume.run_id, resume.global_step, resume.epoch + 1, resume.path)
                tracker.set_tags({"resumed_from_step": resume.global_step})
            log.info("MLflow run %s (%s) in %s", name, tracker.run_id, tracker.uri)
            metrics = train_and_test(cfg, tracker, resume)
    except BaseException as exc:
        status = "FAILED" if isinstance(exc, Exception) else "KILLED"
        Outcome(name, status, tracker.run_id or "", error=f"{type(exc).__name__}: {exc}").save()
        raise
    if cfg.trainer.checkpoint_every_n_steps is not None and not cfg.trainer.keep_checkpoint:
        from seqexp.training.checkpoints import checkpoint_path, remove_checkpoint

        remove_checkpoint(checkpoint_path(cfg, fp))  # it exists only for resume
    dev_f1 = best_dev_f1(metrics, tracker.run_id, tracker.uri)
    Outcome(name, "FINISHED", tracker.run_id, metrics["test_f1"], dev_f1=dev_f1).save()
    return dev_f1


def quiet_libraries() -> None:
    """Keep the console for seqexp's own lines: no weight-loading bars, tips or deprecation noise."""
    import os
    import warnings

    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    import lightning.pytorch  # noqa: F401  (it sets its loggers to INFO on import)

    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*treespec.*")
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    # Our batch sampler resumes mid-epoch through the datamodule's state (seqexp/training/checkpoints.py).
    warnings.filterwarnings("ignore", message=".*your dataloader is not resumable.*")
    # Frozen modules are in eval mode on purpose (no dropout in what does not train).
    warnings.filterwarnings("ignore", message=r".*module\(s\) in eval mode at the start of training.*")


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> float | None:
    multirun = HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN
    try:
        return run(cfg)
    except KeyboardInterrupt as exc:  # Ctrl-C or SIGTERM (seqexp.training.stopping): the run is KILLED
        signum = getattr(exc, "signum", signal.SIGINT)
        where = "; the sweep stops here" if multirun else ""
        print(f"seqexp: interrupted by {signal.Signals(signum).name}: its MLflow run ends KILLED{where}. "
              "Run the same command again to resume it from its last checkpoint (finished runs are skipped).",
              file=sys.stderr)
        if multirun:
            from seqexp.sweep import end_interrupted_sweep

            end_interrupted_sweep()
        sys.exit(128 + signum)
    except _user_errors() as exc:
        if multirun:  # recorded as FAILED; the sweep goes on with the other jobs
            log.error("job failed: %s", exc)
            from seqexp.sweep import record_failure

            record_failure(exc)
            return None
        print(f"seqexp: error: {exc}", file=sys.stderr)
        sys.exit(2)
    except Exception as exc:
        if multirun:
            log.exception("job failed")
            from seqexp.sweep import record_failure

            record_failure(exc)
            return None
        raise


if __name__ == "__main__":
    from seqexp import gc_startup

    gc_startup.defer()
    main()
