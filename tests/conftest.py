"""Shared fixtures: the real corpora in ../shared/data and a scratch MLflow store."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("SEQEXP_SHARED_DATA", REPO.parent / "shared" / "data"))


def shared_corpus(name: str) -> Path:
    """Path to a corpus in ../shared/data, or skip the test with the reason."""
    path = SHARED_DATA / name
    if not path.is_dir():
        pytest.skip(f"real corpus {path} is absent (set SEQEXP_SHARED_DATA to its parent folder)")
    return path


@pytest.fixture
def conll2003_dir() -> Path:
    return shared_corpus("conll2003")

# Tiny encoders and fetched corpora are built once per checkout and shared by all tests.
os.environ.setdefault("SEQEXP_CACHE", str(REPO / ".cache" / "seqexp-test"))
CONF = REPO / "conf"


def compose(overrides: list[str]):
    """The real Hydra composition of conf/, as ``python -m seqexp.run`` would see it."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return hydra_compose(config_name="config", overrides=overrides)


def tiny_overrides(model: str = "tiny-bert", train: int = 64, **extra: str) -> list[str]:
    """A CoNLL-2003 run small enough for a unit test (skips if the corpus is absent)."""
    data = shared_corpus("conll2003")
    base = {
        "model": model,
        "dataset.data_dir": str(data),
        "dataset.max_train_sentences": str(train),
        "trainer.max_epochs": "1",
        "trainer.batch_size": "16",
    }
    base.update(extra)
    return [f"{k}={v}" for k, v in base.items()]


def _first_sentences(src: Path, dst: Path, n: int) -> None:
    blocks = [b for b in src.read_text(encoding="utf-8").split("\n\n") if b.strip()]
    dst.write_text("\n\n".join(blocks[:n]) + "\n", encoding="utf-8")


@pytest.fixture(scope="session")
def mini_conll(tmp_path_factory) -> Path:
    """The first 150 sentences of each real CoNLL-2003 split: a corpus fast enough for sweeps."""
    src = shared_corpus("conll2003")
    dst = tmp_path_factory.mktemp("mini-conll2003")
    for name in ("eng.train", "eng.testa", "eng.testb"):
        _first_sentences(src / name, dst / name, 150)
    return dst


# Hub ids of the user's grid (conf/model/{bert,roberta,albert}.yaml) and the tiny encoder of the same
# family (seqexp/models/tiny.py) that stands in for each in a test's Hugging Face cache.
HUB_STAND_INS = {"bert-base-cased": "tiny-bert", "roberta-base": "tiny-roberta", "albert-base-v2": "tiny-albert"}


def _as_hub_snapshot(built: Path, hub_id: str, hub: Path) -> None:
    """Copy a save_pretrained folder into the hub cache's own layout, as ``snapshot_download`` leaves it:
    ``models--<id>/blobs/<sha256>``, ``snapshots/<rev>/<file>`` (a link to its blob), ``refs/main`` = ``<rev>``."""
    import hashlib
    import json
    import shutil

    repo = hub / f"models--{hub_id.replace('/', '--')}"
    rev = hashlib.sha1(hub_id.encode()).hexdigest()
    snapshot = repo / "snapshots" / rev
    (repo / "blobs").mkdir(parents=True)
    snapshot.mkdir(parents=True)
    for src in sorted(built.iterdir()):
        if src.name == "seqexp-tiny.json":  # the builder's own marker: no hub repo has it
            continue
        data = src.read_bytes()
        if hub_id == "roberta-base" and src.name in ("tokenizer.json", "tokenizer_config.json"):
            # roberta-base's own files say add_prefix_space=false: seqexp must set it, as for the real model.
            data = json.dumps(_without_prefix_space(json.loads(data)), indent=2).encode()
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        (snapshot / src.name).symlink_to(Path("..", "..", "blobs", blob.name))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(rev)
    shutil.rmtree(built)


def _without_prefix_space(node):
    if isinstance(node, dict):
        return {k: (False if k == "add_prefix_space" else _without_prefix_space(v)) for k, v in node.items()}
    if isinstance(node, list):
        return [_without_prefix_space(v) for v in node]
    return node


@pytest.fixture(scope="session")
def hub_cache(tmp_path_factory, mini_conll) -> dict[str, str]:
    """A Hugging Face hub cache holding tiny stand-ins under ``bert-base-cased``, ``roberta-base`` and
    ``albert-base-v2`` (WordPiece BERT, byte-level BPE RoBERTa, sentencepiece-unigram ALBERT, the
    tokenizer classes the real ids load), their tokenizers trained on the mini CoNLL-2003 training split.

    Returns the environment to run with (``{**os.environ, **hub_cache}``): ``HF_HOME``/``HF_HUB_CACHE``
    on it and ``HF_HUB_OFFLINE=1``. ``model=bert|roberta|albert`` then loads through the same code
    as for a user who has the models cached (seqexp.models.encoders: hub source, cache first).
    """
    from seqexp.data.sources import load_splits
    from seqexp.models.tiny import build_tiny

    home = tmp_path_factory.mktemp("hf-home")
    hub = home / "hub"
    train = load_splits(compose([f"dataset.data_dir={mini_conll}"]).dataset, home)["train"]
    for hub_id, tiny in HUB_STAND_INS.items():
        built = build_tiny(compose([f"model={tiny}"]).model, train, home / "build")
        _as_hub_snapshot(built, hub_id, hub)
    return {"HF_HOME": str(home), "HF_HUB_CACHE": str(hub), "HF_HUB_OFFLINE": "1"}
