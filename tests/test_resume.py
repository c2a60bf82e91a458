"""Resume, end to end: real ``python -m seqexp.run`` processes SIGKILLed mid-epoch, then run again."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from mlflow import MlflowClient

from tests import warm
from tests.conftest import REPO, compose

# Full fine-tuning of tiny-bert (dropout 0.1 on) with small batches: ~38 steps an epoch on mini_conll.
BASE = ["model=tiny-bert", "freeze=unfreeze", "trainer.batch_size=4", "trainer.num_threads=1",
        "trainer.checkpoint_every_n_steps=8"]


def env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO)}


def start(cwd: Path, *args: str) -> subprocess.Popen:
    cwd.mkdir(parents=True, exist_ok=True)
    log = open(cwd / "first.log", "w")  # noqa: SIM115 -- closed with the process
    return warm.Popen([sys.executable, "-m", "seqexp.run", *args], cwd=cwd, env=env(),
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def finish(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    return warm.run([sys.executable, "-m", "seqexp.run", *args], cwd=cwd, env=env(),
                          capture_output=True, text=True, timeout=600)


def checkpoint_state(path: Path) -> dict | None:
    """Epoch, step and whether it was written mid-epoch; None while there is no readable file."""
    try:
        ckpt = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
    except (FileNotFoundError, RuntimeError, EOFError):
        return None
    progress = ckpt["loops"]["fit_loop"]["epoch_loop.batch_progress"]
    return {"epoch": ckpt["epoch"], "step": ckpt["global_step"], "mid_epoch": not progress["is_last_batch"],
            "run_id": ckpt["seqexp"]["run_id"]}


def kill_when(proc: subprocess.Popen, path: Path, condition, timeout: float = 240) -> dict:
    """SIGKILL the process group as soon as the checkpoint at ``path`` meets ``condition``."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        state = checkpoint_state(path) if path.exists() else None
        if state is not None and condition(state):
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
            return checkpoint_state(path)  # the last one written before the kill
        if proc.poll() is not None:
            log = (path.parents[2] / "first.log").read_text()
            pytest.fail(f"the run ended ({proc.returncode}) before a matching checkpoint appeared:\n{log[-3000:]}")
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    pytest.fail(f"no matching checkpoint at {path} within {timeout} s")


def runs(cwd: Path, role: str | None = None):
    client = MlflowClient(f"sqlite:///{cwd / 'mlruns.db'}")
    exp = client.get_experiment_by_name("seqexp")
    found = client.search_runs([exp.experiment_id], max_results=100)
    if role is not None:
        found = [r for r in found if r.data.tags.get("seqexp.role") == role]
    return client, found


def per_epoch(client, run_id: str, key: str) -> dict[int, float]:
    history = client.get_metric_history(run_id, key)
    assert len(history) == len({m.step for m in history}), f"{key} logged twice for one epoch"
    return {m.step: m.value for m in history}


def test_killed_mid_epoch_run_resumes_same_mlflow_run_with_equal_metrics(tmp_path, mini_conll):
    args = [*BASE, f"dataset.data_dir={mini_conll}", "trainer.max_epochs=2"]
    ckpt = tmp_path / "run" / "checkpoints" / fingerprint_of(args) / "last.ckpt"
    reference = start(tmp_path / "ref", *args)  # the same config, uninterrupted, in another store
    victim = start(tmp_path / "run", *args)
    killed = kill_when(victim, ckpt, lambda s: s["epoch"] == 1 and s["mid_epoch"])
    assert killed["mid_epoch"] and killed["epoch"] == 1

    again = finish(tmp_path / "run", *args)  # the same command
    assert again.returncode == 0, again.stderr[-4000:]
    said = again.stdout + again.stderr
    assert f"resuming run tiny-bert|unfreeze|adamw|s1 ({killed['run_id']}) from step {killed['step']}" in said
    assert reference.wait(timeout=600) == 0, (tmp_path / "ref" / "first.log").read_text()[-4000:]

    client, (run,) = runs(tmp_path / "run")
    ref_client, (ref,) = runs(tmp_path / "ref")
    assert run.info.run_id == killed["run_id"] and run.info.status == "FINISHED"
    assert run.data.tags["resumed_from_step"] == str(killed["step"])
    assert "error" not in run.data.tags and "died" in run.data.tags["resumed_after_error"]
    assert not ckpt.exists() and not ckpt.parent.exists()  # FINISHED: the checkpoint is gone
    test = {k: v for k, v in run.data.metrics.items() if k.startswith("test_")}
    ref_test = {k: v for k, v in ref.data.metrics.items() if k.startswith("test_")}
    assert {"test_f1", "test_precision", "test_recall", "test_accuracy"} <= set(test)
    assert test == ref_test
    for key in ("val_f1", "val_precision", "val_recall", "val_accuracy", "val_loss", "train_loss"):
        assert per_epoch(client, run.info.run_id, key) == per_epoch(ref_client, ref.info.run_id, key), key
    assert sorted(per_epoch(client, run.info.run_id, "val_f1")) == [0, 1]


def test_resume_false_starts_a_new_run(tmp_path, mini_conll):
    """In-process (a real ``seqexp.run.run``): a dead process's run with a checkpoint, then ``resume=false``."""
    import socket

    from seqexp.run import run
    from seqexp.sweep import fingerprint
    from seqexp.tracking import RunTracker
    from seqexp.training.checkpoints import checkpoint_path

    cfg = compose([*BASE, f"dataset.data_dir={mini_conll}", "trainer.max_epochs=1", "trainer.batch_size=16",
                   f"tracking.uri=sqlite:///{tmp_path / 'mlruns.db'}", "resume=false"])
    fp = fingerprint(cfg)
    dead = warm.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()
    old = RunTracker(cfg.tracking.uri, "seqexp")
    old.start(cfg, "tiny-bert|unfreeze|adamw|s1", {"model": "tiny-bert"},
              tags={"seqexp.fingerprint": fp, "seqexp.pid": dead, "seqexp.host": socket.gethostname()})
    ckpt = checkpoint_path(cfg, fp)
    ckpt.parent.mkdir(parents=True)
    torch.save({"seqexp": {"run_id": old.run_id, "fingerprint": fp}, "global_step": 3, "epoch": 0}, ckpt)

    run(cfg)
    client, found = runs(tmp_path)
    status = {r.info.run_id: r.info.status for r in found}
    assert len(status) == 2 and status.pop(old.run_id) == "KILLED"
    (new_id,) = status
    assert status[new_id] == "FINISHED"
    assert "resumed_from_step" not in client.get_run(new_id).data.tags
    assert not ckpt.exists()  # replaced by the new run's, which it deleted when it FINISHED


def test_sweep_killed_in_its_second_job_is_completed_by_the_same_command(tmp_path, mini_conll):
    args = [*BASE, f"dataset.data_dir={mini_conll}", "trainer.max_epochs=1"]
    second = tmp_path / "checkpoints" / fingerprint_of([*args, "seed=2"]) / "last.ckpt"
    sweep = start(tmp_path, "-m", *args, "seed=1,2")
    killed = kill_when(sweep, second, lambda s: s["mid_epoch"] and s["step"] >= 8)
    client, jobs = runs(tmp_path, "job")
    first = {r.data.params["seed"]: r for r in jobs}["1"]
    assert first.info.status == "FINISHED"

    again = finish(tmp_path, "-m", *args, "seed=1,2")
    assert again.returncode == 0, again.stderr[-4000:]
    assert "1 finished, 1 skipped, 0 failed" in again.stdout
    _, jobs = runs(tmp_path, "job")
    by_seed = {r.data.params["seed"]: r for r in jobs}
    assert len(jobs) == 2
    assert by_seed["1"].info.run_id == first.info.run_id and by_seed["1"].info.end_time == first.info.end_time
    resumed = by_seed["2"]
    assert resumed.info.run_id == killed["run_id"] and resumed.info.status == "FINISHED"
    assert resumed.data.tags["resumed_from_step"] == str(killed["step"])
    assert "test_f1" in resumed.data.metrics
    _, (parent,) = runs(tmp_path, "sweep")
    assert parent.info.status == "FINISHED"


def fingerprint_of(overrides: list[str]) -> str:
    from seqexp.sweep import fingerprint

    return fingerprint(compose(overrides))


def test_resumed_run_keeps_its_best_dev_epoch_and_early_stopping_count(tmp_path, mini_conll):
    """Killed in epoch 3, after its best dev epoch (1): the resumed run tests epoch 1's weights and stops at 4.

    Head-only tiny-bert on mini_conll, seed 1: dev F1 0.109, 0.047, 0.085, 0.066 -> patience 3 ends it after
    epoch 4. Had the resume lost ModelCheckpoint's best score, epoch 3 (0.085) would be tested; had it lost
    EarlyStopping's count, the run would go on past epoch 4.
    """
    args = ["model=tiny-bert", "freeze=last", "trainer.batch_size=4", "trainer.num_threads=1",
            "trainer.checkpoint_every_n_steps=8", f"dataset.data_dir={mini_conll}", "trainer.max_epochs=10",
            "trainer.patience=3"]
    ckpt = tmp_path / "run" / "checkpoints" / fingerprint_of(args) / "last.ckpt"
    reference = start(tmp_path / "ref", *args)
    victim = start(tmp_path / "run", *args)
    killed = kill_when(victim, ckpt, lambda s: s["epoch"] == 2 and s["mid_epoch"])
    assert (ckpt.parent / "best.ckpt").is_file()  # the best weights so far survive the kill

    again = finish(tmp_path / "run", *args)
    assert again.returncode == 0, again.stderr[-4000:]
    assert reference.wait(timeout=600) == 0, (tmp_path / "ref" / "first.log").read_text()[-4000:]
    client, (run,) = runs(tmp_path / "run")
    _, (ref,) = runs(tmp_path / "ref")
    assert run.info.run_id == killed["run_id"] and run.data.tags["resumed_from_step"] == str(killed["step"])
    m, r = run.data.metrics, ref.data.metrics
    assert r["best_epoch"] < r["epochs_run"] < r["max_epochs"]  # the case this test is about
    for key in ("best_epoch", "best_val_f1", "epochs_run", "max_epochs"):
        assert m[key] == r[key], key
    assert {k: v for k, v in m.items() if k.startswith("test_")} == {k: v for k, v in r.items() if k.startswith("test_")}
    assert run.data.tags["stop_reason"] == ref.data.tags["stop_reason"] == "early_stopping"
    assert not ckpt.parent.exists()  # FINISHED: last.ckpt and best.ckpt are gone
