"""End to end: ``python -m seqexp.run`` as a user runs it, checked in the real MLflow store."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient

from tests import warm
from tests.conftest import REPO, shared_corpus

TEST_WORDS = 46_435  # eng.testb tokens (../shared/data/README.md)
TEST_SENTENCES = 3_453


def seqexp_run(tmp_path: Path, *overrides: str, check: bool = True, cold: bool = False) -> subprocess.CompletedProcess:
    """The CLI in a child process: forked from a warm interpreter (tests/warm.py), or started cold."""
    cmd = [sys.executable, "-m", "seqexp.run", *overrides]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    started = time.time()
    proc = (subprocess if cold else warm).run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    proc.wall = (started, time.time())
    if check and proc.returncode != 0:
        pytest.fail(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return proc


def only_run(tmp_path: Path, experiment: str = "seqexp"):
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlruns.db'}")
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 1
    return client, runs[0]


def artifact_text(client, run, path: str) -> str:
    local = client.download_artifacts(run.info.run_id, path)
    return Path(local).read_text(encoding="utf-8")


def assert_complete_run(client, run, *, model: str, head: str, freeze: str, optim: str, epochs: int,
                        wall: tuple[float, float] | None = None):
    assert run.info.status == "FINISHED"
    params, metrics, tags = run.data.params, run.data.metrics, run.data.tags
    # Grid axes as short top-level params, and every resolved value as a flat param.
    assert params["model"] == model and params["head"] == head
    assert params["freeze"] == freeze and params["optim"] == optim
    assert params["dataset"] == "conll2003" and params["scheduler"] == "linear" and params["seed"] == "1"
    assert params["model.name"] == model and params["optim.name"] == optim
    assert params["trainer.max_epochs"] == str(epochs) and "dataset.columns.tag" in params
    # Params are what a user compares or reproduces: no duplicate of an axis, no Hydra plumbing, no locations,
    # no "None" for unset values (the whole config is the config.yaml artifact).
    assert "freeze.strategy" not in params and "head._target_" not in params and "cache_dir" not in params
    assert not [k for k in params if k.startswith(("tracking.", "fault."))]
    assert "None" not in params.values()
    # Final scores: one value per run at step 0 (MLflow's charts draw a bar per run); split sizes are params.
    assert [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, "test_f1")] == [(0, metrics["test_f1"])]
    assert "test_sentences" not in metrics and params["test_sentences"] == str(TEST_SENTENCES)
    # MLflow habits: description, user and source, one dataset input per split with a digest.
    assert tags["mlflow.note.content"].startswith(f"**{model}**") and tags["mlflow.user"]
    assert tags["mlflow.source.name"] == "python -m seqexp.run"
    contexts = {d.dataset.name: [t.value for t in d.tags] for d in run.inputs.dataset_inputs}
    assert contexts == {"conll2003/train": ["training"], "conll2003/dev": ["validation"],
                        "conll2003/test": ["testing"]}
    for key in ("test_accuracy", "test_precision", "test_recall", "test_f1",
                "test_strict_f1", "test_f1_PER", "trainable_params", "total_params", "train_time_s"):
        assert key in metrics, key
    assert 0.0 <= metrics["test_f1"] <= 1.0 and 0.0 < metrics["test_accuracy"] <= 1.0
    if wall is not None:  # process start to first training step: after the MLflow run began, before the end
        launched, ended = wall
        assert run.info.start_time / 1000 - launched < float(tags["startup_s"]) < ended - launched
    history = client.get_metric_history(run.info.run_id, "val_f1")
    assert sorted(m.step for m in history) == list(range(epochs))
    assert len(client.get_metric_history(run.info.run_id, "train_loss")) == epochs
    # Tags: git commit, command line, overrides; the run name follows from the overrides.
    assert tags["mlflow.source.git.commit"]
    assert "seqexp.run" in tags["command"]
    assert f"model={model}" in tags["overrides"]
    assert run.info.run_name.startswith(f"{model}|{freeze}|{optim}")
    # Artifacts: resolved config, per-type report, test predictions for every test word.
    assert f"name: {model}" in artifact_text(client, run, "config.yaml")
    assert "PER" in artifact_text(client, run, "test_report.txt")
    conll = artifact_text(client, run, "test_predictions.txt")
    sentences = [block for block in conll.split("\n\n") if block.strip()]
    assert len(sentences) == TEST_SENTENCES
    assert sum(len(block.splitlines()) for block in sentences) == TEST_WORDS
    return metrics


def common(tmp_path: Path, data: Path, train: int = 200) -> list[str]:
    return [f"dataset.data_dir={data}", f"dataset.max_train_sentences={train}",
            "trainer.batch_size=16"]


def test_tiny_bert_run_lands_in_mlflow(tmp_path):
    """Started cold, exactly as a user starts it: its startup_s counts the imports."""
    data = shared_corpus("conll2003")
    proc = seqexp_run(tmp_path, "model=tiny-bert", "freeze=unfreeze", "optim=adam", "trainer.max_epochs=2",
                      *common(tmp_path, data), cold=True)
    client, run = only_run(tmp_path)
    assert_complete_run(client, run, model="tiny-bert", head="linear", freeze="unfreeze", optim="adam", epochs=2,
                        wall=proc.wall)


def test_tiny_roberta_with_crf(tmp_path):
    data = shared_corpus("conll2003")
    seqexp_run(tmp_path, "model=tiny-roberta", "head=crf", "freeze=unfreeze", "optim=adamw",
               "trainer.max_epochs=1", *common(tmp_path, data))
    client, run = only_run(tmp_path)
    assert_complete_run(client, run, model="tiny-roberta", head="crf", freeze="unfreeze", optim="adamw", epochs=1)


def test_tiny_albert_head_only(tmp_path):
    data = shared_corpus("conll2003")
    seqexp_run(tmp_path, "model=tiny-albert", "freeze=last", "optim=sgd", "trainer.max_epochs=1",
               *common(tmp_path, data))
    client, run = only_run(tmp_path)
    metrics = assert_complete_run(client, run, model="tiny-albert", head="linear", freeze="last", optim="sgd", epochs=1)
    assert metrics["trainable_params"] < 0.05 * metrics["total_params"]


def test_bad_config_is_rejected_before_loading(tmp_path):
    data = shared_corpus("conll2003")
    proc = seqexp_run(tmp_path, "model=minilm", "optim.lr=-0.1", f"dataset.data_dir={data}", check=False)
    assert proc.returncode == 2
    assert "optim.lr" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "mlruns.db").exists()


# Real pretrained weights must clearly beat both chance and an encoder with no pretraining.
# Measured on this machine (seed 1, 1,000 CoNLL-2003 training sentences, 1 epoch, batch 16,
# scored on the full test set, 2026-11-26):
#   minilm    unfreeze adam   test F1 0.477  (precision 0.451, recall 0.507)
#   tiny-bert unfreeze adam   test F1 0.000  (random init, same budget: predicts only O)
# 0.35 leaves room for other CPUs' float rounding and library versions, yet fails if the
# pretrained weights were not loaded, labels were misaligned, or dropout/freezing broke.
# Dev is cut to its first 300 sentences: with one epoch there is one checkpoint to select, so the tested
# weights (and the test F1) are the same as with the whole dev set; the labels come from train alone.
# One torch thread, as the other subprocess tests: beside make test's other worker, two threads on the two
# cores took 88 s against 60 s, for the same test F1 (0.4981; 2026-12-08, a one-core load beside it).
MINILM_F1_THRESHOLD = 0.35


def test_minilm_beats_measured_threshold(tmp_path):
    data = shared_corpus("conll2003")
    seqexp_run(tmp_path, "model=minilm", "freeze=unfreeze", "optim=adam", "trainer.max_epochs=1",
               f"dataset.data_dir={data}", "dataset.max_train_sentences=1000", "dataset.max_dev_sentences=300",
               "trainer.batch_size=16", "trainer.num_threads=1")
    client, run = only_run(tmp_path)
    metrics = assert_complete_run(client, run, model="minilm", head="linear", freeze="unfreeze", optim="adam",
                                  epochs=1)
    assert metrics["test_f1"] > MINILM_F1_THRESHOLD, metrics["test_f1"]
