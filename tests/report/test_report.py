"""The report over a real MLflow sqlite store holding a sweep, built the way seqexp.run logs runs.

The store: one sweep parent, 2 models × 2 strategies × 3 seeds FINISHED child
runs (predictions = real CoNLL-2003 test sentences with controlled corruption,
metrics computed from them with seqexp.metrics.evaluate), one FAILED child and
one standalone run outside the sweep.
"""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag

from seqexp.metrics import evaluate
from seqexp.report import build_report, collect_report
from seqexp.report.__main__ import main
from tests import warm
from tests.conftest import REPO, shared_corpus
from tests.report.test_significance import corrupt, read_tags


def run_id_of(cell: str) -> str:
    """The run id of a report cell, "`id`" or its link "[`id`](http://.../runs/id)"."""
    return re.search(r"`([0-9a-f]+)`", cell).group(1)


EXPERIMENT = "study"
SWEEP = "2024-05-01_12-00-00_ab12"
# (model, freeze) -> share of entities the predictions lose; the best strategy differs per model.
DROP = {("minilm", "unfreeze"): 0.05, ("minilm", "last"): 0.30,
        ("tiny-bert", "last"): 0.10, ("tiny-bert", "unfreeze"): 0.25}
SEEDS = ("1", "2", "3")
N_SENTENCES = 300
PNG = b"\x89PNG\r\n\x1a\n"


def conll(gold, pred) -> str:
    lines = []
    for g_sent, p_sent in zip(gold, pred):
        lines += [f"w{i}\t{g}\t{p}" for i, (g, p) in enumerate(zip(g_sent, p_sent))]
        lines.append("")
    return "\n".join(lines)


def log_run(client, exp_id, name, axes, *, tags, status="FINISHED", gold=None, pred=None, time_s=0.0,
            trainable=0):
    """One run in the schema seqexp.run/tracking.py write."""
    run = client.create_run(exp_id, run_name=name, tags={"mlflow.source.git.commit": "abc123def456",
                                                         "command": "python -m seqexp.run -m", **tags})
    rid = run.info.run_id
    params = {**axes, "model.name": axes["model"], "freeze.strategy": axes["freeze"], "optim.name": axes["optim"],
              "dataset.scheme": "IOB2", "dataset.task": "ner", "trainer.max_epochs": "3",
              "dataset.data_dir": "/somewhere/conll2003", "labels": "B-LOC B-MISC B-ORG B-PER I-LOC O"}
    client.log_batch(rid, params=[Param(k, v) for k, v in params.items()],
                     tags=[RunTag("mlflow.runName", name)], synchronous=True)
    if gold is not None:
        result = evaluate(gold, pred, "IOB2")
        metrics = {f"test_{k}": v for k, v in result.items() if isinstance(v, float)}
        for kind, s in result["per_type"].items():
            metrics.update({f"test_{m}_{kind}": s[m] for m in ("precision", "recall", "f1")})
        metrics.update(trainable_params=trainable, total_params=22_713_216, train_time_s=time_s)
        ms = [Metric(k, float(v), 0, 3) for k, v in metrics.items()]
        for epoch in range(3):  # a learning curve approaching the test score
            val = result["f1"] * (0.7 + 0.1 * epoch)
            ms += [Metric("val_f1", val, epoch, epoch), Metric("val_loss", 1.0 / (epoch + 1), epoch, epoch),
                   Metric("train_loss", 1.2 / (epoch + 1), epoch, epoch), Metric("val_accuracy", 0.9, epoch, epoch)]
        client.log_batch(rid, metrics=ms, synchronous=True)
        client.log_text(rid, conll(gold, pred), "test_predictions.conll")  # the name runs made before 2026-12 used
        client.log_text(rid, json.dumps({k: v for k, v in result.items() if k != "per_type"}), "test_metrics.json")
        client.log_text(rid, f"model:\n  name: {axes['model']}\n", "config.yaml")
    else:
        client.set_tag(rid, "error", "RuntimeError: out of memory")
    client.set_terminated(rid, status)
    return rid


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> dict:
    gold = read_tags(shared_corpus("conll2003") / "eng.testb", limit=N_SENTENCES)
    root = tmp_path_factory.mktemp("store")
    uri = f"sqlite:///{root / 'mlruns.db'}"
    client = MlflowClient(uri)
    exp_id = client.create_experiment(EXPERIMENT, artifact_location=(root / "artifacts").as_uri())
    client.create_experiment("other")
    parent = client.create_run(exp_id, run_name="sweep", tags={"seqexp.role": "sweep", "seqexp.sweep_id": SWEEP,
                                                                "overrides": "model=minilm,tiny-bert freeze=last,unfreeze"})
    child_tags = {"seqexp.role": "job", "seqexp.sweep_id": SWEEP, "mlflow.parentRunId": parent.info.run_id}
    children = {}
    for (model, freeze), drop in DROP.items():
        for k, seed in enumerate(SEEDS):
            pred = corrupt(gold, drop, seed=len(children))
            axes = {"model": model, "dataset": "conll2003", "freeze": freeze, "optim": "adam",
                    "scheduler": "linear", "head": "linear", "seed": seed}
            name = f"{model}|{freeze}|adam|s{seed}"
            time_s = (100.0 if freeze == "unfreeze" else 30.0) * (2 if model == "minilm" else 1) + k
            trainable = 22_713_216 if freeze == "unfreeze" else 3_081
            children[log_run(client, exp_id, name, axes, tags=child_tags, gold=gold, pred=pred, time_s=time_s,
                             trainable=trainable)] = name
    failed_axes = {"model": "minilm", "dataset": "conll2003", "freeze": "unfreeze", "optim": "sgd",
                   "scheduler": "linear", "head": "linear", "seed": "1"}
    failed = log_run(client, exp_id, "minilm|unfreeze|sgd|s1", failed_axes, tags=child_tags, status="FAILED")
    client.set_terminated(parent.info.run_id, "FINISHED")
    standalone_axes = {**failed_axes, "freeze": "last", "optim": "adam", "seed": "4"}
    standalone = log_run(client, exp_id, "minilm|last|adam|s4", standalone_axes, tags={}, gold=gold,
                         pred=corrupt(gold, 0.30, seed=99), time_s=61.0, trainable=3_081)
    return {"uri": uri, "root": root, "client": client, "children": children, "failed": failed,
            "standalone": standalone, "parent": parent.info.run_id}


@pytest.fixture(scope="module")
def sweep_report(store, tmp_path_factory) -> Path:
    return build_report(store["uri"], SWEEP, tmp_path_factory.mktemp("out") / "r", bootstrap=1000, seed=0)


def section(md: str, title: str) -> str:
    start = md.index(f"## {title}")
    end = md.find("\n## ", start + 1)
    return md[start:end if end > 0 else None]


def md_table(text: str) -> list[dict[str, str]]:
    lines = [ln for ln in text.splitlines() if ln.startswith("|")]
    split = lambda ln: [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", ln.strip())[1:-1]]  # noqa: E731
    header = split(lines[0])
    return [dict(zip(header, split(ln))) for ln in lines[2:]]


def number(cell: str) -> tuple[float, float | None]:
    """"**91.23 ± 0.12** ★" -> (91.23, 0.12)."""
    parts = cell.replace("*", "").replace("★", "").split("±")
    return float(parts[0]), (float(parts[1]) if len(parts) > 1 else None)


def mean_std(values: list[float]) -> tuple[float, float]:
    m = sum(values) / len(values)
    return m, (sum((v - m) ** 2 for v in values) / (len(values) - 1)) ** 0.5


def test_main_table_numbers_are_the_mlflow_metrics(store, sweep_report):
    client = store["client"]
    runs = [client.get_run(rid) for rid in store["children"]]
    rows = md_table(section(sweep_report.read_text(), "1. Test scores"))
    assert len(rows) == 4
    for row in rows:
        mine = [r for r in runs if r.data.params["model"] == row["model"] and r.data.params["freeze"] == row["freeze"]]
        assert row["optim"] == "adam" and row["seeds"] == "3" and len(mine) == 3
        for column, key in (("accuracy", "test_accuracy"), ("precision", "test_precision"),
                            ("recall", "test_recall"), ("F1", "test_f1")):
            want_mean, want_std = mean_std([r.data.metrics[key] for r in mine])
            got_mean, got_std = number(row[column])
            assert abs(got_mean - 100 * want_mean) <= 0.005 + 1e-9, (row, column)
            assert abs(got_std - 100 * want_std) <= 0.005 + 1e-9, (row, column)
        trainable = int(mine[0].data.metrics["trainable_params"])
        assert row["trainable params"].startswith(f"{trainable:,}")
        assert float(row["train time (s)"].split("±")[0]) == pytest.approx(
            sum(r.data.metrics["train_time_s"] for r in mine) / 3, abs=0.05)


def test_best_cell_per_model(sweep_report):
    rows = md_table(section(sweep_report.read_text(), "1. Test scores"))
    starred = {(r["model"], r["freeze"]) for r in rows if "★" in r["F1"]}
    assert starred == {("minilm", "unfreeze"), ("tiny-bert", "last")}
    assert all(r["F1"].startswith("**") for r in rows if "★" in r["F1"])


def test_api_table_matches_store(store):
    data = collect_report(store["uri"], SWEEP, bootstrap=0)
    client = store["client"]
    for row in data.table():
        values = [client.get_run(rid).data.metrics["test_f1"] for rid in row["run_ids"]]
        assert row["test_f1"]["mean"] == pytest.approx(sum(values) / len(values), abs=1e-12)
        assert row["best"] == ((row["axes"]["model"], row["axes"]["freeze"]) in
                               {("minilm", "unfreeze"), ("tiny-bert", "last")})
    assert data.comparisons == []


def test_per_type_table(store, sweep_report):
    rows = md_table(section(sweep_report.read_text(), "4. Per-type"))
    assert len(rows) == 4 and {"LOC", "MISC", "ORG", "PER"} <= set(rows[0])
    client = store["client"]
    for row in rows:
        runs = [client.get_run(rid) for rid, name in store["children"].items()
                if name.startswith(f"{row['model']}|{row['strategy'].split('+')[0]}|")]
        want = sum(r.data.metrics["test_f1_PER"] for r in runs) / len(runs)
        assert abs(float(row["PER"]) - 100 * want) <= 0.005 + 1e-9


def test_images_exist_and_html_embeds_pngs(sweep_report):
    md = sweep_report.read_text()
    refs = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)
    assert len(refs) == 3
    for ref in refs:
        assert (sweep_report.parent / ref).read_bytes().startswith(PNG)
    html = sweep_report.with_name("report.html").read_text()
    uris = re.findall(r'<img src="data:image/png;base64,([^"]+)"', html)
    assert len(uris) == 3
    assert all(base64.b64decode(u).startswith(PNG) for u in uris)
    assert 'src="http' not in html and "<link" not in html  # self-contained


def test_provenance_lists_exactly_the_runs_used(store, sweep_report):
    md = sweep_report.read_text()
    prov = section(md, "Provenance")
    listed = {run_id_of(row["run id"]): row["run name"] for row in md_table(prov)}
    assert listed == store["children"]
    assert store["uri"].split("///")[1] in prov and SWEEP in prov and store["parent"] in prov
    assert "abc123def456" in prov


def test_failed_runs_are_excluded_and_listed(store, sweep_report):
    md = sweep_report.read_text()
    excluded = md_table(section(md, "Excluded runs"))
    assert [run_id_of(r["run id"]) for r in excluded] == [store["failed"]]
    assert "FAILED" in excluded[0]["status / reason"] and "out of memory" in excluded[0]["status / reason"]
    assert "sgd" not in section(md, "1. Test scores")
    assert store["standalone"] not in md  # not part of the sweep


def test_significance_and_verdict_in_words(sweep_report):
    md = sweep_report.read_text()
    sig = section(md, "8. Significance")
    stats = r"\((\d+\.\d) vs (\d+\.\d); ε_min 0\.00, Holm p[<=]0\.0\d+, 3 seeds\)"
    assert re.search(r"On minilm, unfreeze\+adam beats last\+adam by \d+\.\d F1 " + stats + ": significant\.", sig), sig
    assert re.search(r"On tiny-bert, last\+adam beats unfreeze\+adam by \d+\.\d F1 " + stats + ": significant\.",
                     sig), sig
    assert "Holm–Bonferroni" in sig and "ε_min < 0.2" in sig and "Bonferroni-adjusted" in sig
    verdict = section(md, "Verdict")
    # One plain sentence per model: which, by how much, how sure, at what cost.
    assert re.search(r"On \*\*minilm\*\*, \*\*unfreeze\+adam\*\* beats last\+adam by \d+\.\d test F1 "
                     r"\(\d+\.\d\d vs \d+\.\d\d; ε_min 0\.00, Holm p[<=]0\.0\d+, 3 seeds: significant\), "
                     r"at 3\.\d× the train time and 100% vs 0\.014% of the parameters trained\.", verdict), verdict
    assert re.search(r"On \*\*tiny-bert\*\*, \*\*last\+adam\*\* beats unfreeze\+adam by \d+\.\d test F1 .*: "
                     r"significant\), at 0\.3\d× the train time and 0\.014% vs 100%", verdict), verdict
    assert "inconclusive" not in verdict.split("Verdict rule")[0]
    assert md.index("## Verdict") < md.index("## 1. Test scores")


def test_experiment_target_takes_all_finished_runs(store, tmp_path):
    data = collect_report(store["uri"], EXPERIMENT, bootstrap=200)
    used = {r.run_id for c in data.grid.configs for r in c.runs}
    assert used == set(store["children"]) | {store["standalone"]}
    assert store["parent"] not in used
    minilm_last = next(c for c in data.grid.configs if c.axes["model"] == "minilm" and c.axes["freeze"] == "last")
    assert minilm_last.seeds == ["1", "2", "3", "4"]
    comp = next(c for c in data.comparisons if c.group == "minilm")
    assert comp.result is not None and comp.result.n_seeds == 3  # seed 4 has no partner


def test_cli_writes_the_report(store, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = warm.run([sys.executable, "-m", "seqexp.report", SWEEP, "--uri", store["uri"], "--bootstrap", "200"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    out = tmp_path / "reports" / SWEEP  # the default --out
    assert f"wrote {Path('reports') / SWEEP / 'report.md'}" in proc.stdout
    assert (out / "report.md").is_file() and (out / "report.html").is_file()
    assert len(list(out.glob("*.png"))) == 3
    assert "Downloading artifacts" not in proc.stderr


def test_cli_unknown_target_exits_2_with_one_line(store, tmp_path, capsys):
    # In-process (the subprocess path is covered above): saves a second MLflow start-up.
    assert main(["nope", "--uri", store["uri"], "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("seqexp.report: error: no experiment or sweep named 'nope'")
    assert f"'{EXPERIMENT}'" in err[0] and "'other'" in err[0] and SWEEP in err[0]
    assert not (tmp_path / "r").exists()


def test_cli_missing_store(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["study"]) == 2  # default --uri sqlite:///mlruns.db, relative to the current directory
    assert "no MLflow store at" in capsys.readouterr().err
    assert not (tmp_path / "mlruns.db").exists()


def test_plots_keep_legends_off_the_data_and_labels_apart(store, tmp_path, caplog):
    import matplotlib.pyplot as plt

    from seqexp.report import plots
    from seqexp.report.build import collect_report

    data = collect_report(store["uri"], SWEEP, bootstrap=0)
    with caplog.at_level("WARNING", logger="seqexp.report.plots"):
        plots.learning_curves(data.grid.configs, data.histories, tmp_path / "curves.png")
        plots.f1_bars(data.grid.groups(), tmp_path / "bars.png")
        plots.cost_quality(data.grid.configs, tmp_path / "cost.png")
    assert [r.getMessage() for r in caplog.records] == []
    # The check itself: a legend drawn inside the axes, two labels on one spot.
    fig, ax = plt.subplots()
    ax.plot([0, 1], [0, 1], label="a run")
    ax.legend(loc="center")
    ax.annotate("minilm+last", (0.5, 0.5))
    ax.annotate("minilm+unfreeze", (0.5, 0.5))
    problems = plots.layout_problems(fig)
    plt.close(fig)
    assert any("legend covers" in p for p in problems) and any("overlap" in p for p in problems)
