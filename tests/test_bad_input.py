"""The bad-input matrix, end to end: what a user sees from ``python -m seqexp.run``.

* Config errors stop before any model loads, with one line and no traceback.
* A strict-scheme data error stops before the encoder loads, with one line naming file:line.
* A real tiny run finishes with dev/test labels that train never saw (scored as
  misses), a 3,000-word sentence (every word predicted) and duplicate sentences
  (kept and scored).

The row-by-row unit tests live in tests/data/ (readers, sources, schemes, encoding).
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
from seqeval.metrics import recall_score
from seqeval.metrics.sequence_labeling import get_entities

from tests import warm
from tests.conftest import REPO, compose
from tests.test_run_e2e import artifact_text, only_run
from tests.test_tracking_http import free_port
from tests.tmpfs import small_tmpfs  # noqa: F401  (a fixture)

# Runs each argv through `python -m seqexp.run` in ONE interpreter (runpy), so that what the
# config errors imported can be read off sys.modules; prints one JSON record per argv.
DRIVER = r"""
import contextlib, io, json, os, runpy, sys, time
records = []
for argv in json.loads(sys.argv[1]):
    sys.argv = ["seqexp.run", *argv]
    err, code, started = io.StringIO(), 0, time.perf_counter()
    with contextlib.redirect_stderr(err):
        try:
            runpy.run_module("seqexp.run", run_name="__main__", alter_sys=True)
        except SystemExit as exc:
            code = exc.code
    records.append({"code": code, "stderr": err.getvalue(), "seconds": time.perf_counter() - started,
                    "heavy": sorted(m for m in ("torch", "transformers", "lightning") if m in sys.modules),
                    "cache": sorted(os.listdir(os.environ["SEQEXP_CACHE"])), "mlruns": os.path.exists("mlruns.db")})
print(json.dumps(records))
"""

PER = ["Anna", "Boris", "Carla", "Dmitri", "Elena", "Farid", "Greta", "Hiro", "Ines", "Jonas"]
LOC = ["Paris", "Lagos", "Lima", "Oslo", "Quito", "Riga", "Sofia", "Tokyo", "Vienna", "Zagreb"]
MISC = ["German", "French", "Swahili"]  # B-MISC occurs in dev and test only
TEMPLATES = [("{p} visited {l} .", "B-PER O B-LOC O"), ("yesterday {p} left {l} again .", "O B-PER O B-LOC O O"),
             ("the weather in {l} is fine .", "O O O B-LOC O O O"), ("{p} lives in {l} .", "B-PER O O B-LOC O")]
MISC_TEMPLATE = ("{p} speaks {m} in {l} .", "B-PER O B-MISC O B-LOC O")
LONG = 3_000


def synthetic(rng: random.Random, n: int, *, misc: bool) -> list[list[tuple[str, str]]]:
    """Template sentences whose entities a tiny head-only model learns in a few epochs."""
    out = []
    for i in range(n):
        words, tags = MISC_TEMPLATE if misc and i % 4 == 0 else TEMPLATES[i % len(TEMPLATES)]
        words = words.format(p=rng.choice(PER), l=rng.choice(LOC), m=rng.choice(MISC)).split()
        out.append(list(zip(words, tags.split())))
    return out


def long_sentence(rng: random.Random) -> list[tuple[str, str]]:
    words: list[tuple[str, str]] = []
    while len(words) < LONG:
        words += [pair for s in synthetic(rng, 8, misc=False) for pair in s]
    return words[:LONG]  # single-word entities: any cut is a valid IOB2 sequence


def write_conll(path: Path, sentences: list[list[tuple[str, str]]]) -> None:
    path.write_text("\n\n".join("\n".join(f"{w} {t}" for w, t in s) for s in sentences) + "\n", encoding="utf-8")


def corpus(folder: Path) -> dict[str, list[list[tuple[str, str]]]]:
    rng = random.Random(0)
    splits = {"train": synthetic(rng, 200, misc=False) + [long_sentence(rng)],
              "dev": synthetic(rng, 40, misc=True) + [long_sentence(rng)],
              "test": synthetic(rng, 40, misc=True) + [long_sentence(rng)]}
    folder.mkdir()
    for split, sentences in splits.items():
        write_conll(folder / f"{split}.txt", sentences)
    return splits


def dataset_overrides(folder: Path) -> list[str]:
    return [f"dataset.data_dir={folder}", "dataset.files.train=train.txt", "dataset.files.dev=dev.txt",
            "dataset.files.test=test.txt", "dataset.columns.word=0", "dataset.columns.tag=1"]


def test_config_errors_stop_before_any_model_loads(tmp_path: Path) -> None:
    data = tmp_path / "corpus"
    corpus(data)
    base = ["model=tiny-bert", *dataset_overrides(data)]
    broken = {"json": '{"model_type": "bert",\n  "hidden_size": 8,,\n}\n', "empty": "", "no-type": '{"a": 1}'}
    for name, text in broken.items():  # local model folders whose config.json transformers would choke on
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.json").write_text(text)
    (tmp_path / "no-config").mkdir()
    config_cases = [  # (overrides, the key the one error line must name)
        (["model=nosuch", *dataset_overrides(data)], None),
        ([*base, "freeze=top_k", "freeze.top_k=5"], "freeze.top_k"),
        ([*base, "optim.lr=0"], "optim.lr"),
        ([*base, "optim.lr=-0.001"], "optim.lr"),
        ([*base, "optim.encoder_lr=0"], "optim.encoder_lr"),
        ([*base, "optim.lr=nan"], "optim.lr"),  # NaN passed `<= 0`; torch raised after loading everything
        ([*base, "optim.encoder_lr=inf"], "optim.encoder_lr"),
        ([*base, "optim.weight_decay=-inf"], "optim.weight_decay"),
        ([*base, "trainer.max_epochs=inf"], "trainer.max_epochs"),
        ([*base, "tracking.outage_wait_s=inf"], "tracking.outage_wait_s"),
        ([*base, "+head.new_float_key=nan"], "head.new_float_key"),  # keys added later are covered too
        ([*base, "seed=-1"], "seed"),  # was a Lightning traceback and a FAILED run named ...|s-1
        ([*base, "seed=4294967296"], "seed"),
        ([*base, "seed=1.5"], "seed"),
        *[([*base, "model.source=local", f"model.path={tmp_path / name}"], None)
          for name in (*broken, "no-config")],
        ([*base, "dataset.columns.tag=7"], "dataset.columns.tag"),
        ([*base, f"tracking.uri=http://127.0.0.1:{free_port()}"], "tracking.uri"),
    ]
    cases = [argv for argv, _ in config_cases]
    work = tmp_path / "work"
    work.mkdir()
    cache = tmp_path / "cache"
    cache.mkdir()
    env = {**os.environ, "PYTHONPATH": str(REPO), "SEQEXP_CACHE": str(cache)}
    # cold, not tests/warm.py: what the driver imported is read off sys.modules
    proc = subprocess.run([sys.executable, "-c", DRIVER, json.dumps(cases)], cwd=work, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = json.loads(proc.stdout.strip().splitlines()[-1])

    hydra = records[0]  # Hydra's own message: names the group and lists its options, exit 1
    assert hydra["code"] == 1, hydra
    assert hydra["stderr"].startswith("In 'config': Could not find 'model/nosuch'\n"), hydra["stderr"]
    assert "Available options in 'model':\n\talbert\n" in hydra["stderr"] and "\ttiny-bert\n" in hydra["stderr"]
    for (argv, key), record in zip(config_cases, records):
        assert "Traceback" not in record["stderr"], argv
        # Before any model loads: no torch/transformers/lightning, nothing built, no MLflow run. (That, not
        # the wall time, is the proof: seconds depend on the machine's load.)
        assert record["heavy"] == [] and record["cache"] == [] and not record["mlruns"], (argv, record)
        if argv != config_cases[0][0]:
            assert record["code"] == 2, (argv, record)
        if key is not None:
            assert record["stderr"].startswith(f"seqexp: error: `{key}`: "), (argv, record["stderr"])
            assert record["stderr"].count("\n") == 1, record["stderr"]  # exactly one line
    assert "5 is larger than the depth of `model=tiny-bert` (2 layers)" in records[1]["stderr"]
    by_argv = {tuple(argv): record["stderr"] for argv, record in zip(cases, records)}
    local = {name: by_argv[(*base, "model.source=local", f"model.path={tmp_path / name}")]
             for name in (*broken, "no-config")}
    for name, stderr in local.items():  # one line naming the file, exit 2, before transformers is imported
        assert stderr.startswith(f"seqexp: error: {tmp_path / name}") and stderr.count("\n") == 1, stderr
    assert local["json"].startswith(f"seqexp: error: {tmp_path / 'json' / 'config.json'}:2:20: not valid JSON "
                                    "(Expecting property name enclosed in double quotes); "), local["json"]
    assert local["empty"].startswith(f"seqexp: error: {tmp_path / 'empty' / 'config.json'}:1:1: not valid JSON")
    assert 'holds no "model_type"' in local["no-type"]
    assert local["no-config"].startswith(f"seqexp: error: {tmp_path / 'no-config'} has no config.json")
    assert by_argv[(*base, "optim.lr=nan")] == "seqexp: error: `optim.lr`: must be a finite number, got nan\n"
    assert by_argv[(*base, "seed=-1")] == ("seqexp: error: `seed`: must be a whole number in [0, 4294967295] "
                                           "(2**32-1), got -1\n")


def test_strict_scheme_error_stops_before_the_encoder_with_one_line(tmp_path: Path) -> None:
    from seqexp.errors import USER_ERRORS
    from seqexp.pipeline import build

    folder = tmp_path / "strict"
    folder.mkdir()
    for split in ("train", "test"):
        (folder / f"{split}.txt").write_text("EU B-ORG\nrejects O\n")
    (folder / "dev.txt").write_text("EU B-ORG\n\nin O\nBerlin B-LOC\nPeter I-PER\n")
    cfg = compose(["model=tiny-bert", *dataset_overrides(folder), "dataset.strict=true",
                   f"cache_dir={tmp_path / 'cache'}"])
    with pytest.raises(USER_ERRORS) as err:  # main() prints these as one `seqexp: error:` line, exit 2
        build(cfg)
    assert str(err.value) == (
        f"{folder / 'dev.txt'}:3: invalid IOB2 sequence: word 3 has 'I-PER' after 'B-LOC' at the end of the "
        "sentence, which seqeval would read as 'B-PER'; fix the tags, or set `dataset.strict=false` to repair them")
    assert not (tmp_path / "cache" / "encoders").exists()  # stopped before the encoder was built


@pytest.mark.parametrize("strict", ["true", "false"])
def test_tag_without_type_stops_before_the_encoder_with_file_and_line(tmp_path: Path, strict: str) -> None:
    """`EU NNP B-NP B-` trained a whole epoch, then crashed the first validation with a traceback."""
    from seqexp.errors import USER_ERRORS
    from seqexp.pipeline import build

    folder = tmp_path / "chunks"
    folder.mkdir()
    for split in ("train", "dev", "test"):
        (folder / f"{split}.txt").write_text("EU NNP B-NP B-ORG\nrejects VBZ B-VP O\n")
    (folder / "dev.txt").write_text("EU NNP B-NP B-ORG\n\nEU NNP B-NP B-\n")
    cfg = compose(["model=tiny-bert", *dataset_overrides(folder), "dataset.columns.tag=3",
                   f"dataset.strict={strict}", f"cache_dir={tmp_path / 'cache'}"])
    with pytest.raises(USER_ERRORS) as err:
        build(cfg)
    assert str(err.value).startswith(f"{folder / 'dev.txt'}:3: tag 'B-' is not a IOB2 tag: its type is missing "
                                     "after 'B-' (expected e.g. 'B-PER'); fix the tag ")
    assert not (tmp_path / "cache" / "encoders").exists()  # stopped before the encoder was built


def test_unseen_labels_long_sentence_and_duplicates_in_a_tiny_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """In-process ``seqexp.run.run`` (validate -> MLflow run -> data -> encoder -> fit -> test -> log),
    as ``python -m seqexp.run`` calls it, without paying a second interpreter's imports."""
    from seqexp.run import run

    splits = corpus(tmp_path / "corpus")
    test = splits["test"]
    monkeypatch.chdir(tmp_path)
    cfg = compose(["model=tiny-bert", "freeze=last", "optim=adam", "optim.lr=0.02", "trainer.max_epochs=4",
                   "trainer.batch_size=16", f"tracking.uri=sqlite:///{tmp_path / 'mlruns.db'}",
                   *dataset_overrides(tmp_path / "corpus")])
    with caplog.at_level(logging.INFO, logger="seqexp.data.sources"):
        run(cfg)
    output = caplog.text
    n_misc = sum(tag == "B-MISC" for s in test for _, tag in s)
    assert n_misc > 0
    assert (f"conll2003/test: {n_misc} word(s) have label(s) never seen in train: B-MISC ({n_misc}); the model "
            "cannot predict them, so they are scored as errors and get no loss") in output
    duplicates = len(test) - len({tuple(s) for s in test})
    assert duplicates > 0 and f"conll2003/test: {duplicates} of {len(test)} sentences repeat an earlier one" in output

    client, run = only_run(tmp_path)
    metrics = run.data.metrics
    assert run.info.status == "FINISHED"
    assert "B-MISC" not in run.data.params["labels"].split()  # the model cannot predict it
    assert math.isfinite(metrics["val_loss"])  # no loss on unseen-label words, and no NaN from them
    # Every word of every test sentence, the 3,000-word one and the duplicates included, has a prediction.
    params = run.data.params
    assert params["test_sentences"] == str(len(test)) and params["test_split_sentences"] == "1"
    blocks = [b.splitlines() for b in artifact_text(client, run, "test_predictions.txt").split("\n\n") if b.strip()]
    assert [len(b) for b in blocks] == [len(s) for s in test] and len(blocks[-1]) == LONG
    rows = [[line.split("\t") for line in block] for block in blocks]
    gold = [[g for _, g, _ in block] for block in rows]
    pred = [[p for _, _, p in block] for block in rows]
    assert gold == [[t for _, t in s] for s in test]  # unseen gold labels stay in the scored gold
    assert not any("MISC" in p for sentence in pred for p in sentence)

    # Recall counts every gold MISC entity as missed.
    assert math.isclose(metrics["test_recall"], recall_score(gold, pred), abs_tol=1e-9)
    assert metrics["test_recall_MISC"] == 0.0
    gold_entities = {(i, *e) for i, tags in enumerate(gold) for e in get_entities(tags)}
    found = gold_entities & {(i, *e) for i, tags in enumerate(pred) for e in get_entities(tags)}
    known = {e for e in gold_entities if e[1] != "MISC"}
    assert metrics["test_recall"] == len(found) / len(gold_entities)
    assert len(found) / len(known) > 0.5  # the model did learn PER and LOC ...
    assert metrics["test_recall"] <= len(known) / len(gold_entities) < 1  # ... and MISC caps its recall


def disk_full_run(tmp_path: Path, disk: Path, *extra: str, multirun: bool = False) -> subprocess.CompletedProcess:
    """`python -m seqexp.run` head-only on a small corpus, checkpoints on ``disk``."""
    data = tmp_path / "corpus"
    if not data.exists():
        data.mkdir()
        rng = random.Random(0)
        for split in ("train", "dev", "test"):
            write_conll(data / f"{split}.txt", synthetic(rng, 48, misc=False))
    argv = ["model=tiny-bert", "freeze=last", "trainer.max_epochs=1", "trainer.batch_size=16",
            "trainer.checkpoint_every_n_steps=2", f"trainer.checkpoint_dir={disk}",
            f"tracking.uri=sqlite:///{tmp_path / 'mlruns.db'}", *dataset_overrides(data), *extra]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    command = [sys.executable, "-m", "seqexp.run", *(["-m"] if multirun else []), *argv]
    return warm.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)


def test_disk_full_while_checkpointing_is_one_line_and_exit_2(tmp_path: Path, small_tmpfs) -> None:
    """The whole stack, as a user runs it: checkpoints on a tmpfs too small for one. Was torch's
    "RuntimeError: [enforce fail at inline_container.cc:672] . unexpected pos" and a left-behind .tmp.
    (tests/training/test_checkpoints.py checks that the previous checkpoint stays whole.)"""
    disk = small_tmpfs("16k")  # a head-only tiny-bert checkpoint is about 20 KB
    single = disk_full_run(tmp_path, disk)
    assert single.returncode == 2, single.stderr[-3000:]
    assert "Traceback" not in single.stderr and "inline_container" not in single.stderr, single.stderr[-3000:]
    last = single.stderr.strip().splitlines()[-1]
    assert last.startswith(f"seqexp: error: no space left on {disk}/"), last
    assert "while writing the checkpoint last.ckpt" in last and "`trainer.checkpoint_dir`" in last
    assert [p.name for p in disk.rglob("*") if p.is_file()] == []  # no partial file fills the disk
    client, run = only_run(tmp_path)
    assert run.info.status == "FAILED"


@pytest.mark.slow
def test_disk_full_is_a_failed_job_in_a_sweep(tmp_path: Path, small_tmpfs) -> None:
    from mlflow import MlflowClient

    disk = small_tmpfs("16k")
    sweep = disk_full_run(tmp_path, disk, "seed=2,3", f"hydra.sweep.dir={tmp_path / 'multirun'}", multirun=True)
    output = sweep.stdout + sweep.stderr  # Hydra's job log goes to stdout
    assert sweep.returncode == 1, output[-3000:]
    assert "Traceback" not in output, output[-3000:]
    assert output.count(f"job failed: no space left on {disk}/") == 2, output[-3000:]
    assert "seqexp: 2 of 2 jobs failed" in sweep.stderr
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlruns.db'}")
    runs = client.search_runs([client.get_experiment_by_name("seqexp").experiment_id])
    children = [r for r in runs if r.data.params.get("seed") in ("2", "3")]
    assert sorted(r.info.status for r in children) == ["FAILED", "FAILED"], [r.info.status for r in runs]
    assert [p.name for p in disk.rglob("*") if p.is_file()] == []
