"""``python -m seqexp.run``: one training run (or, with ``-m``, a sweep of them) -- the CLI.

validate the config -> skip if done, or claim the job -> open (or resume) the MLflow run ->
``seqexp.pipeline.train_and_test`` -> record the outcome. Errors the user fixes
(``seqexp.errors.USER_ERRORS``) print one line and exit 2; in a sweep the job is recorded FAILED.
"""

from __future__ import annotations

import logging
import signal
import sys
import time

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from seqexp.errors import USER_ERRORS

log = logging.getLogger("seqexp")


def hydra_context() -> tuple[dict[str, str], list[str]]:
    """(chosen option per config group, command-line overrides) of this job."""
    if not HydraConfig.initialized():
        return {}, []
    hc = HydraConfig.get()
    choices = {k: str(v) for k, v in hc.runtime.choices.items() if not k.startswith("hydra")}
    return choices, list(hc.overrides.task)


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
    from seqexp.pipeline import train_and_test
    from seqexp.sweep import Outcome, SweepInfo, claim_job, claimed_by, fingerprint, job_tags
    from seqexp.tracking import AXES, RunTracker, run_name
    from seqexp.training.stopping import interruptible

    global _job_started
    _job_started = PROCESS_STARTED if _job_started is None else time.time()
    validate(cfg)
    quiet_libraries()  # imports Lightning, and torch with it
    gc_startup.freeze_imports()
    from seqexp.training import distributed

    parent = distributed.parent_run()
    if parent is not None:  # rank > 0 of a DDP run: rank 0 owns the MLflow run and the sweep bookkeeping
        return train_rank(cfg, parent)
    choices, overrides = hydra_context()
    axes = {axis: choices.get(axis, "?") for axis in AXES}
    axes["seed"] = str(cfg.seed)
    sweep = SweepInfo.for_current_job()
    name = cfg.tracking.run_name or run_name(choices, overrides, cfg.seed, sweep.axes if sweep else ())
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
            metrics = train_and_test(cfg, tracker, resume, job_started=_job_started,
                                     since="process" if _job_started == PROCESS_STARTED else "job")
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


def train_rank(cfg: DictConfig, parent: dict) -> None:
    """A process Lightning started for rank 1..N-1 of a DDP run (seqexp/training/distributed.py): it trains
    its share and logs nothing; no claim, no MLflow run, no outcome, no checkpoint removal."""
    from pathlib import Path

    from seqexp.pipeline import train_and_test
    from seqexp.training.checkpoints import read_saved_state
    from seqexp.training.distributed import RankTracker
    from seqexp.training.stopping import interruptible

    resume = read_saved_state(Path(parent["resume"])) if parent.get("resume") else None
    with interruptible():
        train_and_test(cfg, RankTracker(parent["run_id"]), resume)
    return None


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
    # DDP: dev scores are broadcast from rank 0 (seqexp.models.tagger), the same on every rank; no sync needed.
    warnings.filterwarnings("ignore", message=r".*sync_dist=True.*")
    warnings.filterwarnings("ignore", message=r".*all_gather is deprecated.*")  # Lightning 2.6's own call
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
    except USER_ERRORS as exc:
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
