"""Run identity (seqexp/identity.py): the fingerprint, the report's cells and run names follow one rule.

Walks every key of the real composed config (every option of every config group), changes it alone,
and checks that the fingerprint and the report agree on whether the two runs are one configuration.
"""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from functools import reduce
from pathlib import Path

from omegaconf import OmegaConf


from seqexp import identity
from seqexp.report.aggregate import group_configs
from seqexp.report.collect import RunRecord
from seqexp.report.sections import _hyper
from seqexp.sweep import fingerprint, job_tags
from seqexp.tracking import flatten, run_name
from tests import warm
from tests.conftest import CONF, REPO, compose


def every_composition():
    """The default config and one per option of every config group in conf/ (Hydra's own excluded),
    each resolved to plain values (what ``flatten`` and the fingerprint see)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    groups = sorted(p for p in CONF.iterdir() if p.is_dir() and p.name not in ("hydra", identity.STUDY_GROUP))
    overrides = [[]] + [[f"{g.name}={o.stem}"] for g in groups for o in sorted(g.glob("*.yaml"))]
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        for override in overrides:
            cfg = hydra_compose(config_name="config", overrides=override)
            yield " ".join(override) or "defaults", OmegaConf.to_container(cfg, resolve=True)


def replaced(cfg: dict, key: str, value) -> dict:
    out = copy.deepcopy(cfg)
    *parents, leaf = key.split(".")
    node = out
    for part in parents:
        node = node[part]
    node[leaf] = value
    return out


def other_value(value):
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 1
    if isinstance(value, float):
        return value * 2 + 1
    if isinstance(value, list):
        return [*value, "other"]
    return "other" if value is None else f"{value}-other"


def record(run_id: str, cfg, start: int) -> RunRecord:
    """The params a run logs: every flattened value plus the grid axes (the same for both runs here)."""
    params = {**flatten(cfg), **{axis: "x" for axis in identity.AXES}, identity.SEED: str(cfg[identity.SEED])}
    return RunRecord(run_id, run_id, "FINISHED", "1", params, {"test_f1": 0.5, "best_val_f1": 0.5}, {},
                     start_time=start)


def test_fingerprint_report_and_run_names_agree_on_every_config_key():
    checked: dict[str, bool] = {}
    for where, cfg in every_composition():
        base_fp = fingerprint(cfg)
        for key in (k for k in flatten(cfg) if k not in checked):  # each key once, where it first appears
            value = reduce(lambda node, part: node[part], key.split("."), cfg)
            new = other_value(value)
            changed = replaced(cfg, key, new)
            differs = fingerprint(changed) != base_fp
            grid = group_configs([record("a", cfg, 1), record("b", changed, 2)])
            split = len(grid.cells) == 2 or len(grid.candidates()) == 2
            if key == identity.SEED:  # another seed: another run of the same configuration
                assert differs and not split and grid.configs[0].seeds == [str(value), str(new)], where
            else:
                assert differs == split, (where, key, "fingerprint" if differs else "report", "alone splits")
                # Not split: the second run is the first one's seed again, never averaged as a new seed.
                assert split or [r.run_id for r, _ in grid.repeated] == ["b"], (where, key)
            override = f"{key}={new}"
            name = run_name({"model": "m", "freeze": "f", "optim": "o"}, [override], 1)
            assert override not in name or differs, (where, key, "in the run name but changes nothing")
            assert not _hyper(key) or differs, (where, key, "listed as a hyperparameter but changes nothing")
            checked[key] = differs
    # The walk saw both kinds, and the keys the report and the fingerprint used to disagree on.
    assert not checked["trainer.eval_batch_size"] and not checked["trainer.compile"]
    assert checked["dataset.data_dir"] and checked["optim.lr"] and checked["freeze.lr_scale"]
    assert len(checked) > 90, sorted(checked)


def test_fingerprint_is_versioned_and_the_version_is_a_tag(monkeypatch):
    cfg = compose([])
    fp = fingerprint(cfg)
    assert job_tags(cfg, fp, [])[identity.FINGERPRINT_VERSION_TAG] == str(identity.FINGERPRINT_VERSION)
    monkeypatch.setattr(identity, "FINGERPRINT_VERSION", identity.FINGERPRINT_VERSION + 1)
    assert fingerprint(cfg) != fp  # runs of an older rule are not taken for this one's


def test_run_names_show_compared_overrides_only():
    overrides = ["model=tiny-bert", "freeze=last", "optim=sgd", "optim.lr=0.3", "head=crf", "seed=4",
                 "dataset.max_train_sentences=50", "trainer.max_epochs=1", "trainer.eval_batch_size=8",
                 "tracking.uri=sqlite:///x.db", "rerun=true", "experiment=demo", "+freeze.new_knob=2"]
    name = run_name({"model": "tiny-bert", "freeze": "last", "optim": "sgd"}, overrides, 4)
    assert name == "tiny-bert|last|sgd|optim.lr=0.3|head=crf|freeze.new_knob=2|s4"
    # A setting the sweep varies is in the name (else its runs would share one); a runtime key never is.
    swept = ["trainer.max_epochs", "trainer.eval_batch_size", "seed", "optim.lr"]
    name = run_name({"model": "tiny-bert", "freeze": "last", "optim": "sgd"}, overrides, 4, swept)
    assert name == "tiny-bert|last|sgd|optim.lr=0.3|head=crf|trainer.max_epochs=1|freeze.new_knob=2|s4"


def test_identity_imports_without_torch():
    code = "import sys, seqexp.identity; assert 'torch' not in sys.modules and 'omegaconf' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})


def test_runs_differing_only_in_eval_batch_size_are_one_configuration(tmp_path: Path, mini_conll):
    """A real sweep over the eval batch size: its second job is the first, already FINISHED. Forced with
    rerun=true, it logs the same dev and test scores (padding is masked), and the report keeps one run."""
    from mlflow import MlflowClient

    from seqexp.report.collect import select_runs

    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    base = ["model=tiny-bert", "freeze=last", "trainer.max_epochs=5", "trainer.batch_size=16",
            "trainer.num_threads=1", f"dataset.data_dir={mini_conll}", f"tracking.uri={uri}",
            "tracking.log_predictions=false"]

    def run(*extra: str, sweep: bool = False) -> subprocess.CompletedProcess:
        command = [sys.executable, "-m", "seqexp.run", *(["-m"] if sweep else []), *base, *extra]
        proc = warm.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=600,
                              env={**os.environ, "PYTHONPATH": str(REPO)})
        assert proc.returncode == 0, proc.stderr[-3000:]
        return proc

    # One sweep over the eval batch size: its second job is the first one, already FINISHED.
    assert "1 finished, 1 skipped, 0 failed" in run("trainer.eval_batch_size=64,5", sweep=True).stdout
    run("trainer.eval_batch_size=5", "rerun=true")
    client = MlflowClient(uri)
    first, second = [r for r in client.search_runs([client.get_experiment_by_name("seqexp").experiment_id],
                                                   order_by=["attributes.start_time ASC"])
                     if r.data.tags.get("seqexp.role") != "sweep"]
    # A runtime key is not a param (it changes nothing); the resolved config artifact says what each run used.
    used = [OmegaConf.load(client.download_artifacts(r.info.run_id, "config.yaml", str(tmp_path / r.info.run_id)))
            for r in (first, second)]
    assert [c.trainer.eval_batch_size for c in used] == [64, 5]
    assert "trainer.eval_batch_size" not in first.data.params
    assert first.data.tags["seqexp.fingerprint"] == second.data.tags["seqexp.fingerprint"]
    assert first.data.metrics["test_f1"] > 0  # it learnt something, so equal scores say something
    for key in ("test_f1", "test_precision", "test_recall", "test_accuracy", "best_val_f1"):
        assert second.data.metrics[key] == first.data.metrics[key], key
    history = [[m.value for m in client.get_metric_history(r.info.run_id, "val_f1")] for r in (first, second)]
    assert history[0] == history[1] and len(history[0]) > 1
    from seqexp.report.collect import open_client

    selection = select_runs(open_client(uri), uri, "seqexp")
    assert [r.run_id for r in selection.finished] == [first.info.run_id]
    assert [r.run_id for r, _ in selection.excluded] == [second.info.run_id]
