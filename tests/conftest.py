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
