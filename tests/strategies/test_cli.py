"""Every strategy from the command line, in one real Hydra sweep, logged to a real MLflow store."""

from __future__ import annotations

import os
import subprocess
import sys

from mlflow import MlflowClient
from omegaconf import OmegaConf

from tests import warm
from tests.conftest import CONF, REPO
from tests.strategies.test_contract import STRATEGIES


def test_every_strategy_runs_from_the_cli_and_logs_its_parameters(mini_conll, tmp_path):
    """``python -m seqexp.run -m freeze=<every strategy>``: one FINISHED run each, with the strategy's own keys
    (e.g. ``freeze.decay``) as params and its trained/total counts as metrics."""
    db = tmp_path / "mlruns.db"
    common = ["model=tiny-bert", f"dataset.data_dir={mini_conll}", "dataset.max_train_sentences=24",
              "dataset.max_dev_sentences=16", "trainer.batch_size=8", "trainer.num_threads=1",
              f"tracking.uri=sqlite:///{db}", "freeze.max_epochs=2", "tracking.log_predictions=false"]
    # lp_ft needs an epoch after its probe: its own sweep, with a 1-epoch probe.
    others = [s for s in STRATEGIES if s != "lp_ft"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    for sweep in ([f"freeze={','.join(others)}"], ["freeze=lp_ft", "freeze.probe_epochs=1"]):
        cmd = [sys.executable, "-m", "seqexp.run", "-m", *sweep, *common]
        proc = warm.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
        assert proc.returncode == 0, proc.stderr[-4000:]
    client = MlflowClient(f"sqlite:///{db}")
    runs = client.search_runs([client.get_experiment_by_name("seqexp").experiment_id])
    children = {r.data.params["freeze"]: r for r in runs if r.data.tags.get("seqexp.role") == "job"}
    assert sorted(children) == STRATEGIES, proc.stderr[-4000:]
    for name, run in children.items():
        assert run.info.status == "FINISHED", (name, run.info.status)
        own = OmegaConf.load(CONF / "freeze" / f"{name}.yaml")
        for key, value in own.items():  # the freeze axis names the class; unset keys are never logged
            if key not in ("_target_", "strategy") and value is not None:
                assert f"freeze.{key}" in run.data.params, (name, key)
        assert run.data.params["freeze"] == name
        metrics = run.data.metrics
        assert 0 < metrics["trainable_params"] <= metrics["total_params"], name
