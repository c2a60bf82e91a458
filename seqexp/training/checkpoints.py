"""Checkpoints for resume: one ``last.ckpt`` per run, kept only while the run is unfinished.

    python -m seqexp.run trainer.checkpoint_every_n_steps=200     # killed? the same command resumes it

Where: ``<trainer.checkpoint_dir>/<config fingerprint>/last.ckpt``. ``checkpoint_dir``
null (the default) means a ``checkpoints/`` folder beside the sqlite MLflow store
(``./checkpoints`` for other stores). The file is replaced atomically (written to a
temporary name, flushed to disk, renamed) every ``trainer.checkpoint_every_n_steps``
optimizer steps and at every epoch end (after validation), so a kill at any moment
leaves the previous checkpoint whole. A FINISHED run deletes it unless
``trainer.keep_checkpoint=true``; a FAILED or KILLED run keeps it for resume.

What a checkpoint holds, beyond what Lightning saves (weights, optimizer, scheduler,
loop progress, and the datamodule's position inside the epoch):

- the torch, CUDA, Python and NumPy random states, restored when training restarts,
  so dropout after a resume draws what it would have drawn without the interruption;
- ``seqexp``: the MLflow run id, the config fingerprint and a fingerprint of the frozen
  encoder weights.

Parameters the strategy never trains, in any phase (the encoder of ``freeze=last``, the
frozen layers of ``top_k``, the base weights under LoRA) are not stored: they come back from
the pretrained source when the run is rebuilt, and a hash of them, stored in the checkpoint,
is checked on load. A head-only checkpoint is the head and its optimizer state: kilobytes
instead of the encoder's megabytes. A multi-phase strategy (gradual unfreezing) stores every
parameter it trains in any phase, and the phase: a run resumed after an unfreeze continues
the trained blocks with the optimizer groups of that phase (``Tagger.on_load_checkpoint``).
"""

from __future__ import annotations

import io
import logging
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path

import lightning.pytorch as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Checkpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO

from seqexp.data import memo
from seqexp.errors import CheckpointError  # noqa: F401  (defined with every user error)
from seqexp.disk import guarded_write
from seqexp.tracking import resolve_uri

log = logging.getLogger("seqexp")

NAME = "last.ckpt"
BEST = "best.ckpt"  # the weights of the best dev evaluation so far (seqexp.run: Lightning's ModelCheckpoint)


def checkpoint_root(cfg) -> Path:
    """``trainer.checkpoint_dir``, or ``checkpoints/`` beside the sqlite store (``./checkpoints`` otherwise)."""
    if cfg.trainer.checkpoint_dir:
        return Path(cfg.trainer.checkpoint_dir).expanduser().resolve()
    uri = resolve_uri(cfg.tracking.uri)
    if uri.startswith("sqlite:///"):
        return Path(uri[len("sqlite:///"):]).parent / "checkpoints"
    return Path("checkpoints").resolve()


def checkpoint_path(cfg, fingerprint: str) -> Path:
    return checkpoint_root(cfg) / fingerprint / NAME


@dataclass
class SavedState:
    """What a checkpoint says about itself, read without loading its tensors."""

    path: Path
    run_id: str
    fingerprint: str
    global_step: int
    epoch: int


def read_saved_state(path: Path) -> SavedState | None:
    """The checkpoint's run id and position, or None when there is none (or it cannot be read)."""
    if not path.is_file():
        return None
    try:
        ckpt = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
        meta = ckpt["seqexp"]
        return SavedState(path, meta["run_id"], meta["fingerprint"], int(ckpt["global_step"]), int(ckpt["epoch"]))
    except Exception as exc:  # noqa: BLE001 -- an unreadable checkpoint means: start afresh
        log.warning("ignoring checkpoint %s: it cannot be read (%s)", path, exc)
        return None


def find_resumable(mlflow_client, experiment: str, path: Path) -> SavedState | None:
    """The checkpoint at ``path`` if its MLflow run, in this experiment, ended KILLED or FAILED.

    A run left RUNNING by a dead process counts once ``seqexp.sweep.standing`` has
    marked it KILLED. A RUNNING run whose process lives is never resumed twice.
    """
    saved = read_saved_state(path)
    if saved is None:
        return None
    try:
        run = mlflow_client.get_run(saved.run_id)
    except Exception:  # noqa: BLE001 -- another store's run
        log.warning("checkpoint %s belongs to run %s, which this MLflow store does not hold: starting afresh",
                    path, saved.run_id)
        return None
    exp = mlflow_client.get_experiment_by_name(experiment)
    if exp is None or run.info.experiment_id != exp.experiment_id:
        log.warning("checkpoint %s belongs to run %s of another experiment: starting afresh", path, saved.run_id)
        return None
    if run.info.status not in ("KILLED", "FAILED"):
        log.warning("checkpoint %s belongs to run %s, which is %s: starting afresh",
                    path, saved.run_id, run.info.status)
        return None
    return saved


def resume_point(cfg, mlflow_client, fingerprint: str) -> SavedState | None:
    """What this run continues: an interrupted run's checkpoint, unless ``resume=false`` (or checkpoints are off)."""
    if cfg.trainer.checkpoint_every_n_steps is None:
        return None
    path = checkpoint_path(cfg, fingerprint)
    if not cfg.resume:
        if path.is_file():
            log.info("resume=false: starting a new run; checkpoint %s will be replaced", path)
        return None
    return find_resumable(mlflow_client, cfg.tracking.experiment, path)


def remove_checkpoint(path: Path) -> None:
    """Delete a finished run's checkpoint, its best-dev weights, any torn temporary file, and the folder."""
    path.unlink(missing_ok=True)
    (path.parent / BEST).unlink(missing_ok=True)
    for torn in path.parent.glob(".*.ckpt.*.tmp"):  # a killed process's half-written checkpoint
        torn.unlink(missing_ok=True)
    try:
        path.parent.rmdir()
    except OSError:
        pass


# -- random states -------------------------------------------------------------------------------
def rng_states() -> dict:
    """Every random generator training draws from, in a form ``torch.load(weights_only=True)`` accepts."""
    np_state = np.random.get_state()
    states = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].copy()), *np_state[2:]],
    }
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict) -> None:
    torch.set_rng_state(states["torch"])
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, *rest = states["numpy"]
    np.random.set_state((name, keys.numpy(), *rest))
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


# -- frozen weights ------------------------------------------------------------------------------
def frozen_fingerprint(module: torch.nn.Module, keys: set[str]) -> str:
    """Hash of the frozen tensors, byte for byte (names, dtypes, shapes, values); computed once for the
    same unchanged tensors (``seqexp.data.memo.digest``: a later head-only job of a sweep shares them)."""
    state = module.state_dict(keep_vars=True)
    named = [(name, state[name]) for name in sorted(keys)]
    return memo.tensor_digest("frozen_fingerprint", named, lambda name, t: f"{name}|{t.dtype}|{tuple(t.shape)}|")


class StreamingCheckpointIO(TorchCheckpointIO):
    """``torch.save`` straight into the file, atomically: every checkpoint (``last.ckpt``, and the
    best dev weights ``best.ckpt``) is written to a temporary name, flushed to disk and renamed,
    so a kill at any moment leaves the previous file whole; a full disk is one line.

    Lightning's own writer serializes the whole checkpoint into an in-memory buffer first and
    then copies it out. Full fine-tuning of MiniLM (weights + AdamW state, 271 MB), 300
    sentences, 1 epoch: peak RSS 1,844 MB with Lightning's writer, 1,643 MB with this one,
    1,612 MB without checkpoints.
    """

    def save_checkpoint(self, checkpoint: dict, path, storage_options=None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options")
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        with guarded_write(tmp, path, "checkpoint", fix="set `trainer.checkpoint_dir` to a folder on another "
                           "disk (or `trainer.checkpoint_every_n_steps=null`: no checkpoints)"):
            with open(tmp, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)


class LastCheckpoint(Checkpoint):
    """Writes ``path`` every ``every_n_steps`` optimizer steps and at every epoch end; resumes from it.

    A :class:`~lightning.pytorch.callbacks.Checkpoint`, so Lightning calls its epoch-end hook
    after the LightningModule's: the saved state includes the epoch's logged train loss.
    ``every_n_steps`` 0 saves at epoch ends only.
    """

    def __init__(self, path: Path, every_n_steps: int, run_id: str, fingerprint: str):
        self.path = Path(path)
        self.every_n_steps = every_n_steps
        self.meta = {"run_id": run_id, "fingerprint": fingerprint}
        self.save_seconds: list[float] = []
        self._frozen: set[str] = set()
        self._frozen_fp: str | None = None
        self._last_saved_step = -1
        self._rng_to_restore: dict | None = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        # What the strategy never trains, in any phase: the Tagger leaves it out of every checkpoint
        # (on_save_checkpoint) and loads non-strictly. Those weights never change: hashed once.
        self._frozen = set(pl_module.never_trained)

    # -- saving ------------------------------------------------------------------------------
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        last_of_epoch = batch_idx + 1 >= trainer.num_training_batches  # the epoch-end save follows
        if (self.every_n_steps and step and step % self.every_n_steps == 0
                and step != self._last_saved_step and not last_of_epoch):
            self.save(trainer)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.save(trainer)

    def save(self, trainer: L.Trainer) -> None:
        started = time.perf_counter()
        trainer.save_checkpoint(self.path)  # atomic: StreamingCheckpointIO
        self._last_saved_step = trainer.global_step
        self.save_seconds.append(time.perf_counter() - started)
        log.debug("checkpoint at step %d: %s (%.2fs)", trainer.global_step, self.path, self.save_seconds[-1])

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        if self._frozen and self._frozen_fp is None:  # frozen weights never change: hash them once
            self._frozen_fp = frozen_fingerprint(pl_module, self._frozen)
        checkpoint["seqexp"] = meta = {**self.meta, "frozen_fingerprint": self._frozen_fp, "rng": rng_states()}
        if trainer.world_size > 1:  # DDP: each rank draws its own dropout masks, and resumes its own stream
            import torch.distributed as dist

            mine = io.BytesIO()
            torch.save(meta["rng"], mine)  # bytes: all_gather_object cannot pickle tensors here (torch 2.13)
            meta["rng_ranks"] = [None] * trainer.world_size
            dist.all_gather_object(meta["rng_ranks"], mine.getvalue())

    # -- resuming ----------------------------------------------------------------------------
    def on_load_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        """Called after Lightning loaded the weights: check what it could not, and keep the random states."""
        meta = checkpoint.get("seqexp", {})
        where = f"checkpoint {self.path}"
        if meta.get("fingerprint") != self.meta["fingerprint"]:
            raise CheckpointError(f"{where} was written for config {meta.get('fingerprint')}, "
                                  f"not this run's {self.meta['fingerprint']}; pass resume=false to start afresh")
        expected = set(pl_module.state_dict()) - self._frozen
        saved = set(checkpoint["state_dict"])
        if saved != expected:
            diff = sorted(saved ^ expected)
            raise CheckpointError(f"{where} does not hold this model's trainable weights "
                                  f"({len(diff)} differ, e.g. {diff[0]}); pass resume=false to start afresh")
        if self._frozen:
            current = frozen_fingerprint(pl_module, self._frozen)
            if meta.get("frozen_fingerprint") != current:
                raise CheckpointError(f"{where}: the frozen encoder weights differ from those it was trained "
                                      f"with ({meta.get('frozen_fingerprint')} vs {current}); "
                                      "pass resume=false to start afresh")
            self._frozen_fp = current
        ranks = meta.get("rng_ranks")
        self._rng_to_restore = meta.get("rng")
        if ranks and trainer.global_rank < len(ranks):
            self._rng_to_restore = torch.load(io.BytesIO(ranks[trainer.global_rank]), weights_only=True)

    def on_train_start(self, trainer, pl_module) -> None:
        # Here, not at load time: Lightning's set-up between the two must not shift the streams.
        if self._rng_to_restore is not None:
            set_rng_states(self._rng_to_restore)
            self._rng_to_restore = None
