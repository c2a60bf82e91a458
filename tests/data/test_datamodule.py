"""Length-grouped batching: every window exactly once per epoch, less padding, reproducible."""

from __future__ import annotations

import random

from seqexp.data.datamodule import LengthGroupedBatches


def test_every_window_exactly_once_per_epoch():
    rng = random.Random(0)
    lengths = [rng.randint(3, 120) for _ in range(1001)]
    sampler = LengthGroupedBatches(lengths, batch_size=32, seed=3)
    for _ in range(3):
        batches = list(sampler)
        assert len(batches) == len(sampler)
        seen = sorted(i for b in batches for i in b)
        assert seen == list(range(len(lengths)))
        assert all(1 <= len(b) <= 32 for b in batches)


def test_grouping_cuts_padding_and_epochs_differ():
    rng = random.Random(1)
    lengths = [rng.randint(3, 120) for _ in range(3000)]

    def padded(batches):
        return sum(max(lengths[i] for i in b) * len(b) for b in batches)

    grouped = LengthGroupedBatches(lengths, 32, seed=1)
    plain = LengthGroupedBatches(lengths, 32, seed=1, grouped=False)
    first, second = list(grouped), list(grouped)
    assert first != second
    assert padded(first) < 0.7 * padded(list(plain))
    # Same seed, same epoch: same order.
    assert list(LengthGroupedBatches(lengths, 32, seed=1)) == first


def _globally_sorted(lengths, batches) -> bool:
    """Whether the batches are consecutive runs of one length-sorted order (they came from one pool)."""
    runs = sorted(batches, key=lambda b: (-max(lengths[i] for i in b), -min(lengths[i] for i in b)))
    seq = [lengths[i] for b in runs for i in b]
    return seq == sorted(seq, reverse=True)


def test_a_short_remainder_joins_the_pool_before_it():
    """Pools are 50 batches of windows; a last pool under half that would make badly padded batches of its own,
    so it is sorted together with the pool before it. A remainder of half a pool or more stays a pool."""
    rng = random.Random(2)
    lengths = [rng.randint(3, 120) for _ in range(2400)]
    merged = list(LengthGroupedBatches(lengths[:2000], 32, seed=1))  # 1,600 + 400: one pool of 2,000
    assert _globally_sorted(lengths, merged)
    assert sorted(i for b in merged for i in b) == list(range(2000)) and len(merged) == 63
    kept = list(LengthGroupedBatches(lengths, 32, seed=1))  # 1,600 + 800: two pools
    assert not _globally_sorted(lengths, kept)
    assert sorted(i for b in kept for i in b) == list(range(2400))


def test_eval_order_is_sorted_and_complete():
    lengths = [5, 50, 7, 30, 2]
    batches = list(LengthGroupedBatches(lengths, 2, seed=0, shuffle=False))
    assert batches == [[1, 3], [2, 0], [4]]


def _windows():
    from seqexp.data.encoding import IGNORE, Window

    return [  # two sentences, the second cut into two overlapping windows
        Window(0, 0, [101, 7, 8, 9, 102], [1, 2, 4], [2, 4, 5], 0, 3, [1, 0, IGNORE]),
        Window(1, 0, [101, 5, 102], [1], [2], 0, 1, [2]),
        Window(1, 1, [101, 6, 6, 4, 102], [1, 3], [3, 4], 1, 2, [0, 1]),
    ]


def test_collator_pads_every_field_of_the_windows_it_is_given():
    import torch

    from seqexp.data.datamodule import Collator
    from seqexp.data.encoding import IGNORE

    batch = Collator(0, _windows())([2, 1])
    assert batch["input_ids"].tolist() == [[101, 6, 6, 4, 102], [101, 5, 102, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]]
    assert batch["word_starts"].tolist() == [[1, 3], [1, 0]]
    assert batch["word_ends"].tolist() == [[3, 4], [2, 1]]
    assert batch["labels"].tolist() == [[0, 1], [2, IGNORE]]
    assert batch["word_mask"].tolist() == [[True, True], [True, False]]
    assert batch["score_mask"].tolist() == [[False, True], [True, False]]  # window 2 scores its word 1 only
    assert batch["sentence"].tolist() == [1, 1] and batch["first_word"].tolist() == [1, 0]
    assert batch["word_mask"].dtype == batch["score_mask"].dtype == torch.bool
    assert "features" not in batch


def test_collator_with_features_serves_them_instead_of_the_encoder_inputs():
    import torch

    from seqexp.data.datamodule import Collator
    from seqexp.models.feature_cache import WindowFeatures

    vectors = torch.arange(6 * 2, dtype=torch.float32).view(6, 2)  # 3 + 1 + 2 words
    calls = []

    def provider():
        calls.append(1)
        return WindowFeatures(vectors, torch.tensor([0, 3, 4, 6]))

    collate = Collator(0, _windows(), provider)
    assert calls == []  # nothing computed before the first batch
    batch = collate([0, 2])
    collate([1])
    assert calls == [1]
    assert torch.equal(batch["features"][0], vectors[0:3])
    assert torch.equal(batch["features"][1], torch.cat([vectors[4:6], torch.zeros(1, 2)]))
    assert not {"input_ids", "attention_mask", "word_starts", "word_ends"} & batch.keys()
    assert batch["labels"].shape == batch["word_mask"].shape == (2, 3)
