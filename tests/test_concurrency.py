"""Concurrent writers: a joblib sweep with 4 workers on a fresh sqlite store loses no run and no metric."""

from __future__ import annotations

from tests.test_sweep import runs, sweep

EPOCHS = 2
PER_EPOCH = {"train_loss", "val_loss", "val_f1", "val_precision", "val_recall", "val_accuracy",
             "val_strict_f1", "val_strict_precision", "val_strict_recall"}
AT_END = {"test_loss", "test_f1", "test_precision", "test_recall", "test_accuracy", "test_strict_f1",
          "test_strict_precision", "test_strict_recall", "train_time_s", "trainable_params", "total_params"}
SPLIT_SIZES = {"train_sentences", "dev_sentences", "test_sentences"}  # params: bookkeeping, not metrics


def test_joblib_four_workers_fresh_sqlite_every_run_and_metric(tmp_path, mini_conll):
    proc = sweep(tmp_path, "hydra/launcher=joblib", "hydra.launcher.n_jobs=4",
                 "model=tiny-bert", "freeze=last", "optim=adam,sgd", "seed=1,2,3,4",
                 f"dataset.data_dir={mini_conll}", "dataset.max_train_sentences=32",
                 f"trainer.max_epochs={EPOCHS}", "trainer.batch_size=16", "trainer.num_threads=1")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert "8 finished, 0 skipped, 0 failed" in proc.stdout
    client, parents, children = runs(tmp_path)
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert sorted((c.data.params["optim"], c.data.params["seed"]) for c in children) == sorted(
        (o, str(s)) for o in ("adam", "sgd") for s in (1, 2, 3, 4))
    keys = {frozenset(c.data.metrics) for c in children}
    assert len(keys) == 1, "every run has the same metric keys"
    (got,) = keys
    assert PER_EPOCH | AT_END <= got, sorted(PER_EPOCH | AT_END - got)
    assert any(k.startswith("test_f1_") for k in got)  # per entity type
    for child in children:
        assert child.info.status == "FINISHED"
        assert child.data.tags["mlflow.parentRunId"] == parents[0].info.run_id
        for key in PER_EPOCH:
            steps = sorted(m.step for m in client.get_metric_history(child.info.run_id, key))
            assert steps == list(range(EPOCHS)), (child.info.run_name, key, steps)
        assert len(child.data.params) == len(children[0].data.params) and SPLIT_SIZES <= set(child.data.params)
        assert len(child.inputs.dataset_inputs) == 3  # train, dev, test: no job lost its inputs to another's
