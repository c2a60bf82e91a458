"""Model selection on dev inside a run: the test metrics are those of the best dev epoch's weights."""

from __future__ import annotations

import pytest
from mlflow import MlflowClient

from seqexp.errors import ConfigError
from tests.conftest import compose

# Head-only tiny-bert on mini_conll, seed 1, a constant LR: dev F1 peaks at epoch 1 and falls after it, and
# with a constant schedule the first k epochs are the same whatever the budget.
BASE = ["model=tiny-bert", "freeze=last", "trainer.batch_size=4", "trainer.num_threads=1", "scheduler=constant",
        "trainer.checkpoint_every_n_steps=null"]


def finished(tmp_path, name: str, *overrides: str) -> dict[str, float]:
    """Run in-process (the real ``seqexp.run.run``) into its own store; the run's metrics and tags."""
    from seqexp.run import run

    db = tmp_path / f"{name}.db"
    run(compose([*BASE, *overrides, f"tracking.uri=sqlite:///{db}"]))
    client = MlflowClient(f"sqlite:///{db}")
    (found,) = client.search_runs([client.get_experiment_by_name("seqexp").experiment_id])
    curve = {m.step: m.value for m in client.get_metric_history(found.info.run_id, "val_f1")}
    return {**found.data.metrics, **{f"tag:{k}": v for k, v in found.data.tags.items()}, "val_f1 by epoch": curve}


def test_run_is_tested_on_its_best_dev_weights_not_the_last(tmp_path, mini_conll):
    data = f"dataset.data_dir={mini_conll}"
    selected = finished(tmp_path, "selected", data, "trainer.max_epochs=4", "trainer.early_stopping=false")
    assert selected["epochs_run"] == selected["max_epochs"] == 4  # no early stopping: the whole budget
    best = int(selected["best_epoch"])
    assert 1 <= best < 4, "the case this test is about: the best dev epoch is not the last"
    assert selected["tag:selection"] == "best dev epoch (val_f1)"
    assert selected["tag:stop_reason"] == "max_epochs"

    # The same training stopped at the best epoch, tested on its last weights: the very same test scores.
    at_best = finished(tmp_path, "at_best", data, f"trainer.max_epochs={best}", "trainer.val_every_n_epochs=0")
    assert at_best["tag:selection"] == "last epoch (no dev evaluation)" and "best_epoch" not in at_best
    tests = [k for k in selected if k.startswith("test_")]
    assert tests and all(selected[k] == at_best[k] for k in tests)
    # ... and not those of the last epoch.
    last = finished(tmp_path, "last", data, "trainer.max_epochs=4", "trainer.val_every_n_epochs=0")
    assert last["test_f1"] != selected["test_f1"]
    # The dev score logged for the tested weights is that epoch's val_f1, the best of the curve.
    curve = selected["val_f1 by epoch"]
    assert selected["best_val_f1"] == curve[best - 1] == max(curve.values()) > curve[3]


def test_early_stopping_ends_the_run_after_patience_evaluations_without_a_gain(tmp_path, mini_conll):
    m = finished(tmp_path, "es", f"dataset.data_dir={mini_conll}", "trainer.max_epochs=20", "trainer.patience=2")
    assert m["tag:stop_reason"] == "early_stopping"
    assert m["epochs_run"] == m["best_epoch"] + 2 < 20


@pytest.mark.parametrize(("override", "key"), [
    ("trainer.monitor=test_f1", "trainer.monitor"),  # the test set never chooses
    ("trainer.patience=0", "trainer.patience"),
    ("trainer.min_delta=-0.1", "trainer.min_delta"),
    ("freeze.lr_scale=0", "freeze.lr_scale"),
    ("tuned=[optim.nosuch]", "tuned"),
])
def test_selection_keys_are_checked(override, key):
    from seqexp.config import validate

    with pytest.raises(ConfigError, match=f"`{key}`"):
        validate(compose(["tracking.uri=sqlite:///unused.db", override]))


def test_each_strategy_carries_its_budget_and_the_command_line_overrides_it():
    head, full = compose(["freeze=last"]), compose(["freeze=unfreeze"])
    assert head.trainer.max_epochs > full.trainer.max_epochs and head.freeze.lr_scale > full.freeze.lr_scale
    assert head.trainer.patience == head.freeze.patience
    assert compose(["freeze=last", "trainer.max_epochs=3"]).trainer.max_epochs == 3
