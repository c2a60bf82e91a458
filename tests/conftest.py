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
