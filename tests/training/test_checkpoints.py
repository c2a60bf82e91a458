"""Checkpoints and resume, in process: real tiny encoders, real Lightning fits, real MLflow sqlite stores."""

from __future__ import annotations

import shutil
from pathlib import Path

import lightning.pytorch as L
import pytest
import torch

from seqexp.errors import ConfigError
from seqexp.data.datamodule import LengthGroupedBatches
from seqexp.training.checkpoints import CheckpointError, LastCheckpoint, find_resumable, read_saved_state
from tests.conftest import compose
from tests.tmpfs import fill, small_tmpfs  # noqa: F401  (a fixture)


# -- the batch sampler ---------------------------------------------------------------------------
def test_sampler_resume_at_continues_the_epoch_and_the_epochs_after_it():
    lengths = [(i * 37) % 23 + 1 for i in range(100)]
    straight = LengthGroupedBatches(lengths, 8, seed=3)
    epochs = [list(straight) for _ in range(3)]
    resumed = LengthGroupedBatches(lengths, 8, seed=3)
    resumed.resume_at(1, 5)  # epoch 1 (the second), 5 batches already trained
    assert list(resumed) == epochs[1][5:]
    assert list(resumed) == epochs[2]
    complete = LengthGroupedBatches(lengths, 8, seed=3)
    complete.resume_at(0, len(complete))  # saved at the end of epoch 0: epoch 1 comes next, whole
    assert list(complete) == epochs[1]


# -- config --------------------------------------------------------------------------------------
@pytest.mark.parametrize("override, key", [
    ("trainer.checkpoint_every_n_steps=-1", "trainer.checkpoint_every_n_steps"),
    ("trainer.checkpoint_every_n_steps=2.5", "trainer.checkpoint_every_n_steps"),
    ("trainer.keep_checkpoint=sometimes", "trainer.keep_checkpoint"),
    ("resume=maybe", "resume"),
])
def test_bad_resume_keys_are_config_errors_naming_the_key(override, key):
    from seqexp.config import validate

    with pytest.raises(ConfigError, match=f"`{key}`"):
        validate(compose([override]))


def test_resume_keys_do_not_change_the_fingerprint():
    from seqexp.sweep import fingerprint

    base = fingerprint(compose([]))
    for override in ("resume=false", "trainer.checkpoint_every_n_steps=7", "trainer.checkpoint_dir=/x",
                     "trainer.keep_checkpoint=true"):
        assert fingerprint(compose([override])) == base, override


def test_default_checkpoint_folder_is_beside_the_sqlite_store(tmp_path):
    from seqexp.training.checkpoints import checkpoint_path

    cfg = compose([f"tracking.uri=sqlite:///{tmp_path}/store/mlruns.db"])
    assert checkpoint_path(cfg, "abc") == tmp_path / "store" / "checkpoints" / "abc" / "last.ckpt"
    cfg = compose([f"trainer.checkpoint_dir={tmp_path}/ck"])
    assert checkpoint_path(cfg, "abc") == tmp_path / "ck" / "abc" / "last.ckpt"


# -- training and resuming in process ------------------------------------------------------------
class Steps(L.Callback):
    """Every training step's epoch, batch index, global step, sentences and loss."""

    def __init__(self):
        self.rows = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.rows.append((trainer.current_epoch, batch_idx, trainer.global_step,
                          tuple(batch["sentence"].tolist()), float(outputs["loss"])))


class KeepEvery(LastCheckpoint):
    """Also copies each checkpoint as ``step<N>[-end].ckpt``, to resume from any of them."""

    def save(self, trainer):
        super().save(trainer)
        end = "-end" if trainer.fit_loop.epoch_loop.batch_progress.is_last_batch else ""
        shutil.copy(self.path, self.path.parent / f"step{trainer.global_step}{end}.ckpt")


def fit(cfg, folder: Path, ckpt: Path | None = None, keep: bool = False, tamper=None):
    """A real fit and test of ``cfg``; returns (steps, test result, metrics emitted, checkpoint callback)."""
    from seqexp.pipeline import build, make_trainer
    from seqexp.run import quiet_libraries

    quiet_libraries()
    built = build(cfg)
    if tamper is not None:
        tamper(built.tagger)
    emitted = []
    built.tagger.metric_sink = lambda metrics, step: emitted.append((step, dict(metrics)))
    steps = Steps()
    saver = (KeepEvery if keep else LastCheckpoint)(folder / "last.ckpt", cfg.trainer.checkpoint_every_n_steps,
                                                   "run-id", "fp")
    trainer = make_trainer(cfg, callbacks=[steps, saver])
    trainer.fit(built.tagger, datamodule=built.datamodule, ckpt_path=ckpt)
    trainer.test(built.tagger, datamodule=built.datamodule, verbose=False)
    return steps.rows, built.tagger.results["test"], emitted, saver


def tiny_cfg(mini_conll, freeze: str, epochs: int):
    return compose(["model=tiny-bert", f"freeze={freeze}", f"dataset.data_dir={mini_conll}",
                    f"trainer.max_epochs={epochs}", "trainer.batch_size=16", "trainer.num_threads=1",
                    "trainer.checkpoint_every_n_steps=3"])


def assert_resumes_exactly(cfg, folder: Path, reference, ckpt: Path):
    ref_rows, ref_test, ref_emitted, _ = reference
    rows, test, emitted, _ = fit(cfg, folder / "resumed", ckpt=ckpt)
    assert rows, f"nothing was left to train after {ckpt.name}"
    # The same batches, in the same order, with bit-identical losses (dropout included) ...
    assert rows == [r for r in ref_rows if r[2] >= rows[0][2]], ckpt.name
    # ... the same per-epoch dev metrics and train loss, and the same test result.
    assert emitted == ref_emitted[len(ref_emitted) - len(emitted):], ckpt.name
    assert test == ref_test, ckpt.name


def test_full_fine_tuning_resumed_mid_epoch_or_at_epoch_end_equals_uninterrupted(tmp_path, mini_conll):
    cfg = tiny_cfg(mini_conll, "unfreeze", epochs=2)  # tiny-bert has dropout 0.1: RNG state matters
    reference = fit(cfg, tmp_path, keep=True)
    saved = {p.name for p in tmp_path.glob("step*.ckpt")}
    mid_second_epoch = max((p for p in saved if not p.endswith("-end.ckpt")), key=lambda p: int(p[4:-5]))
    first_epoch_end = min(p for p in saved if p.endswith("-end.ckpt"))
    assert int(mid_second_epoch[4:-5]) > int(first_epoch_end[4:].split("-")[0])
    for name in (mid_second_epoch, first_epoch_end):
        assert_resumes_exactly(cfg, tmp_path, reference, tmp_path / name)
    # The whole model is in a full fine-tuning checkpoint.
    ckpt = torch.load(tmp_path / mid_second_epoch, weights_only=True)
    assert any(k.startswith("encoder.") for k in ckpt["state_dict"])


def test_head_only_checkpoint_is_small_without_encoder_weights_and_checks_the_encoder(tmp_path, mini_conll):
    cfg = tiny_cfg(mini_conll, "last", epochs=1)
    reference = fit(cfg, tmp_path, keep=True)
    saver = reference[3]
    mid = next(p for p in sorted(tmp_path.glob("step*.ckpt")) if not p.name.endswith("-end.ckpt"))
    ckpt = torch.load(mid, weights_only=True)
    assert ckpt["state_dict"] and not any(k.startswith("encoder") for k in ckpt["state_dict"])
    assert all(k.startswith("head.") for k in ckpt["state_dict"])
    assert ckpt["seqexp"]["frozen_fingerprint"]
    assert mid.stat().st_size < 100_000, mid.stat().st_size  # tiny-bert's encoder alone is 3.6 MB
    assert saver.save_seconds and max(saver.save_seconds) < 5

    assert_resumes_exactly(cfg, tmp_path, reference, mid)

    def other_encoder(tagger):
        with torch.no_grad():
            next(tagger.encoder.parameters()).add_(1.0)

    with pytest.raises(CheckpointError, match="frozen encoder weights differ"):
        fit(cfg, tmp_path / "tampered", ckpt=mid, tamper=other_encoder)


# -- which run resumes ---------------------------------------------------------------------------
def test_find_resumable_takes_only_a_killed_or_failed_run_of_this_experiment(tmp_path):
    from mlflow import MlflowClient

    from seqexp.tracking import experiment_id

    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    client = MlflowClient(uri)
    exp = experiment_id(client, "study", uri)
    other = experiment_id(client, "other", uri)
    path = tmp_path / "ck" / "last.ckpt"
    path.parent.mkdir()

    def checkpoint_of(experiment: str, status: str):
        run = client.create_run(experiment)
        if status != "RUNNING":
            client.set_terminated(run.info.run_id, status)
        torch.save({"seqexp": {"run_id": run.info.run_id, "fingerprint": "fp"}, "global_step": 7, "epoch": 1}, path)
        return run.info.run_id

    assert find_resumable(client, "study", path) is None  # no checkpoint
    for status in ("KILLED", "FAILED"):
        run_id = checkpoint_of(exp, status)
        saved = find_resumable(client, "study", path)
        assert (saved.run_id, saved.global_step, saved.epoch) == (run_id, 7, 1)
    for status in ("FINISHED", "RUNNING"):
        checkpoint_of(exp, status)
        assert find_resumable(client, "study", path) is None, status
    checkpoint_of(other, "KILLED")
    assert find_resumable(client, "study", path) is None
    path.write_bytes(b"not a checkpoint: a torn write")
    assert read_saved_state(path) is None and find_resumable(client, "study", path) is None


# -- a full disk ---------------------------------------------------------------------------------
class FillAfterFirstSave(LastCheckpoint):
    """After the first checkpoint, fill its (tmpfs) disk so the next one cannot be written whole."""

    def save(self, trainer):
        first = not self.path.exists()
        super().save(trainer)
        if first:
            self.first_bytes = self.path.read_bytes()
            fill(self.path.parent.parent, leave=len(self.first_bytes) // 2)
            self.free_before = shutil.disk_usage(self.path.parent).free


def test_disk_full_while_checkpointing_keeps_the_previous_checkpoint(tmp_path, mini_conll, small_tmpfs):
    """A real ENOSPC on a small tmpfs: one line "no space left on <folder>", no partial file, the
    previous checkpoint whole (it was torch's "[enforce fail at inline_container.cc] unexpected pos")."""
    from seqexp.disk import DiskFullError
    from seqexp.pipeline import build, make_trainer
    from seqexp.run import quiet_libraries

    disk = small_tmpfs("4m")
    cfg = tiny_cfg(mini_conll, "last", epochs=1)
    quiet_libraries()
    built = build(cfg)
    saver = FillAfterFirstSave(disk / "fp" / "last.ckpt", 3, "run-id", "fp")
    trainer = make_trainer(cfg, callbacks=[saver])
    with pytest.raises(DiskFullError) as err:
        trainer.fit(built.tagger, datamodule=built.datamodule)
    message = str(err.value)
    assert message.startswith(f"no space left on {disk / 'fp'} while writing the checkpoint last.ckpt ("), message
    assert f"the previous checkpoint {saver.path} is intact" in message and "trainer.checkpoint_dir" in message
    assert "\n" not in message
    assert sorted(p.name for p in (disk / "fp").iterdir()) == ["last.ckpt"]  # the partial .tmp is gone
    assert saver.path.read_bytes() == saver.first_bytes  # and the previous checkpoint is whole
    assert read_saved_state(saver.path).global_step == 3
    assert shutil.disk_usage(disk).free >= saver.free_before  # the space the partial file took is back


def test_a_signal_during_a_checkpoint_save_is_raised_after_it_leaving_a_whole_checkpoint(tmp_path):
    """A SIGTERM inside torch.save's writes came out as RuntimeError ("unexpected pos"): the run ended FAILED, not
    KILLED (1 in 3 signals timed at random within a save; the SLURM requeue test met it). The save ends first now."""
    import os
    import random
    import signal
    import threading
    import time

    from seqexp.training.checkpoints import StreamingCheckpointIO
    from seqexp.training.stopping import Interrupted, interruptible

    state = {f"w{i}": torch.full((256, 1024), float(i)) for i in range(40)}  # 40 MB in 40 records
    path = tmp_path / "last.ckpt"
    started = time.perf_counter()
    StreamingCheckpointIO().save_checkpoint(state, path)
    seconds = time.perf_counter() - started
    random.seed(0)
    for _ in range(20):  # without the fix, the chance that none of 20 signals lands in a write is (2/3)^20
        timer = threading.Timer(random.uniform(0, seconds), os.kill, (os.getpid(), signal.SIGTERM))
        timer.start()
        with pytest.raises(Interrupted), interruptible():
            StreamingCheckpointIO().save_checkpoint(state, path)
            timer.join()  # the signal came in the save (and was raised at its end) or comes now:
            time.sleep(5)  # the handler ends this sleep at once
        saved = torch.load(path, weights_only=True)
        assert saved.keys() == state.keys() and all(torch.equal(saved[k], state[k]) for k in state)
        assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]  # no temporary file left behind
