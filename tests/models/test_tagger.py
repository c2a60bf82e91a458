"""The Tagger on real tiny encoders: word pooling, every word predicted, reproducibility."""

from __future__ import annotations

import torch

from seqexp.models.tagger import pool_words
from seqexp.pipeline import build, make_trainer
from tests.conftest import compose


def test_pool_words_first_last_mean():
    hidden = torch.arange(2 * 6 * 2, dtype=torch.float32).reshape(2, 6, 2)
    starts = torch.tensor([[1, 2, 5], [1, 3, 0]])
    ends = torch.tensor([[2, 5, 6], [3, 5, 1]])
    first = pool_words(hidden, starts, ends, "first")
    last = pool_words(hidden, starts, ends, "last")
    mean = pool_words(hidden, starts, ends, "mean")
    for b in range(2):
        for w in range(3):
            s, e = int(starts[b, w]), int(ends[b, w])
            assert torch.equal(first[b, w], hidden[b, s])
            assert torch.equal(last[b, w], hidden[b, e - 1])
            assert torch.allclose(mean[b, w], hidden[b, s:e].mean(0))


def fit_and_test(overrides):
    cfg = compose(overrides)
    built = build(cfg)
    trainer = make_trainer(cfg)
    trainer.fit(built.tagger, datamodule=built.datamodule)
    trainer.test(built.tagger, datamodule=built.datamodule, verbose=False)
    return built


def test_sentences_longer_than_max_length_lose_no_word(mini_conll):
    # 24 subwords per window: many CoNLL sentences need several windows.
    built = fit_and_test(["model=tiny-bert", f"dataset.data_dir={mini_conll}", "trainer.max_epochs=1",
                          "model.max_length=24", "alignment=mean"])
    assert built.datamodule.split_counts["test"] > 10
    gold = built.datamodule.gold("test")
    pred = built.tagger.predictions["test"]
    assert [len(p) for p in pred] == [len(g) for g in gold]
    assert all(tag in built.labels for sentence in pred for tag in sentence)
    words = sum(len(g) for g in gold)
    assert round(built.tagger.results["test"]["accuracy"] * words) == sum(
        p == g for ps, gs in zip(pred, gold) for p, g in zip(ps, gs))


def test_same_seed_same_metrics_on_cpu(mini_conll):
    overrides = ["model=tiny-roberta", "head=crf", f"dataset.data_dir={mini_conll}", "trainer.max_epochs=1",
                 "seed=7"]
    first = fit_and_test(overrides).tagger.results["test"]
    second = fit_and_test(overrides).tagger.results["test"]
    assert first == second
    other = fit_and_test(overrides[:-1] + ["seed=8"]).tagger.results["test"]
    assert other != first
