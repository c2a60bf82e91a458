"""The user's literal command on the hub ids, offline, from a Hugging Face cache.

``python -m seqexp.run -m model=bert,roberta,albert freeze=last,unfreeze optim=adam,sgd`` loads
``bert-base-cased``, ``roberta-base`` and ``albert-base-v2`` through the hub source of
``seqexp.models.encoders`` (the local cache first). The ``hub_cache`` fixture (tests/conftest.py)
fills a temporary cache, in the cache's own layout, with tiny stand-ins of the same tokenizer
families saved under those ids, so the whole grid runs as it does for a user who has the models.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from mlflow import MlflowClient

from tests import warm
from tests.conftest import HUB_STAND_INS, REPO

GRID = ["model=bert,roberta,albert", "freeze=last,unfreeze", "optim=adam,sgd"]
# Small and quick: a few sentences, one epoch, no checkpoints.
SMALL = ["dataset.max_train_sentences=32", "dataset.max_dev_sentences=16",
         "trainer.max_epochs=1", "trainer.batch_size=16", "trainer.num_threads=1",
         "trainer.checkpoint_every_n_steps=null", "tracking.log_predictions=false"]


def env(hub_cache: dict[str, str]) -> dict[str, str]:
    return {**os.environ, **hub_cache, "PYTHONPATH": str(REPO)}


def test_the_users_grid_on_hub_ids_runs_from_the_cache(tmp_path: Path, hub_cache, mini_conll):
    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    command = [sys.executable, "-m", "seqexp.run", "-m", *GRID,
               f"dataset.data_dir={mini_conll}", f"tracking.uri={uri}", *SMALL]
    proc = warm.run(command, cwd=tmp_path, env=env(hub_cache), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "12 finished, 0 skipped, 0 failed" in proc.stdout
    assert "bert|last|adam|s1" in proc.stdout and "albert|unfreeze|sgd|s1" in proc.stdout  # the summary's run names

    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("seqexp").experiment_id], max_results=100)
    (parent,) = [r for r in runs if r.data.tags.get("seqexp.role") == "sweep"]
    children = [r for r in runs if r.data.tags.get("seqexp.role") == "job"]
    assert parent.info.status == "FINISHED" and len(children) == 12
    ids = {stand_in.removeprefix("tiny-"): hub_id for hub_id, stand_in in HUB_STAND_INS.items()}
    grid = set()
    for child in children:
        params, metrics = child.data.params, child.data.metrics
        assert child.info.status == "FINISHED", child.data.tags.get("error")
        assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert params["model.source"] == "hub" and params["model.path"] == ids[params["model"]]
        assert "test_f1" in metrics and "best_val_f1" in metrics
        assert metrics["total_params"] < 5_000_000  # the stand-in from the cache, not a 100M-parameter download
        grid.add((params["model"], params["freeze"], params["optim"]))
    assert grid == {(m, f, o) for m in ids for f in ("last", "unfreeze") for o in ("adam", "sgd")}


PROBE = """
import json, sys
from pathlib import Path
from seqexp.data.encoding import encode_split
from seqexp.data.sentences import Sentence
from seqexp.models.encoders import load_encoder, transformer_layers
from tests.conftest import compose

words = ("EU", "rejects", "German", "call", "to", "boycott", "British", "lamb", ".")
out = {}
for model in ("bert", "roberta", "albert"):
    enc = load_encoder(compose([f"model={model}"]).model, None, Path(sys.argv[1]))
    (window,) = encode_split([Sentence(words, ("O",) * len(words))], enc.tokenizer, {"O": 0}, enc.max_length,
                             overlap=False)
    out[model] = {"tokenizer": type(enc.tokenizer).__name__,
                  "first_pieces": enc.tokenizer.convert_ids_to_tokens([window.input_ids[i] for i in window.word_starts]),
                  "layer_groups": len(transformer_layers(enc.model)), "depth": enc.num_layers}
print(json.dumps(out))
"""


def test_hub_ids_load_with_their_tokenizer_families_as_a_user_gets_them(tmp_path: Path, hub_cache):
    """What the grid's runs trained on: each word's first subword carries its family's word-start mark
    (RoBERTa's files say add_prefix_space=false, as roberta-base's do), and ALBERT shares one layer group."""
    proc = warm.run([sys.executable, "-c", PROBE, str(tmp_path)], cwd=REPO, env=env(hub_cache),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["bert"]["tokenizer"].startswith("BertTokenizer")
    assert not any(p.startswith("##") for p in got["bert"]["first_pieces"]), got["bert"]
    assert got["roberta"]["tokenizer"].startswith("RobertaTokenizer")
    assert all(p.startswith("Ġ") for p in got["roberta"]["first_pieces"]), got["roberta"]
    assert got["albert"]["tokenizer"].startswith("AlbertTokenizer")
    assert all(p.startswith("▁") for p in got["albert"]["first_pieces"]), got["albert"]
    assert got["albert"]["layer_groups"] == 1 and got["albert"]["depth"] == 2  # two depths, one shared group
