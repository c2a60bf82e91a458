"""The frozen-encoder feature cache: bit-identical to recomputing, keyed right, safe to share."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from seqexp.models.feature_cache import (
    cached_features,
    compute_features,
    encoder_fingerprint,
    recompute_window,
)
from seqexp.pipeline import build
from tests import warm
from tests.conftest import REPO, compose
from tests.tmpfs import small_tmpfs  # noqa: F401  (a fixture)


def head_only(mini_conll, tmp_path, *extra):
    cfg = compose(["model=tiny-bert", "freeze=last", f"dataset.data_dir={mini_conll}",
                   *extra])
    return cfg, build(cfg)


def test_cached_features_are_bit_identical_to_recomputing(mini_conll, tmp_path):
    """Cached (memory, then disk) == recomputed without any cache, bit for bit; close to one window alone."""
    from seqexp.models import feature_cache

    cfg, built = head_only(mini_conll, tmp_path, "model.max_length=32")  # some windows split
    encoder, dm = built.tagger.encoder, built.datamodule
    for split in ("train", "test"):
        windows = dm.windows[split]
        cached = dm.split_features(split)
        assert len(cached.offsets) == len(windows) + 1
        fresh = compute_features(encoder, windows, cfg.alignment, batch_size=cfg.trainer.eval_batch_size)
        assert torch.equal(cached.vectors, fresh.vectors) and torch.equal(cached.offsets, fresh.offsets)
        feature_cache._MEMORY.clear()  # now from disk
        loaded = cached_features(encoder, windows, cfg.alignment, Path(cfg.cache_dir).expanduser(),
                                 encoder_fingerprint(encoder), batch_size=cfg.trainer.eval_batch_size)
        assert torch.equal(loaded.vectors, fresh.vectors)
        head = built.tagger.head.eval()
        for i in range(0, len(windows), 37):
            alone = recompute_window(encoder, windows[i], cfg.alignment)
            assert torch.allclose(cached.window(i), alone, atol=1e-5)
            assert torch.equal(head(cached.window(i)[None]), head(fresh.window(i)[None]))
    # The batches the Tagger trains on carry exactly those vectors.
    batch = next(iter(dm.train_dataloader()))
    row = int(batch["word_mask"][0].sum())
    assert torch.equal(built.tagger.word_features(batch)[0, :row], batch["features"][0, :row])


def test_key_changes_with_every_input(mini_conll, tmp_path):
    from seqexp.models import feature_cache

    cfg, built = head_only(mini_conll, tmp_path)
    encoder, windows = built.tagger.encoder, built.datamodule.windows["dev"]
    store = tmp_path / "cache"
    fp = encoder_fingerprint(encoder)

    def files():
        return sorted(p.name for p in (store / "features").glob("*.pt"))

    def cached_features(*args):
        feature_cache._MEMORY.clear()  # look at the disk store every time
        return feature_cache.cached_features(*args)

    cached_features(encoder, windows, "first", store, fp)
    assert len(files()) == 1
    cached_features(encoder, windows, "first", store, fp)  # hit: nothing new
    assert len(files()) == 1
    cached_features(encoder, windows, "mean", store, fp)  # pooling
    cached_features(encoder, windows[:-1], "first", store, fp)  # data
    with torch.no_grad():
        next(encoder.parameters()).view(-1)[0] += 1e-3
    fp2 = encoder_fingerprint(encoder)
    assert fp2 != fp
    cached_features(encoder, windows, "first", store, fp2)  # weights
    assert len(files()) == 4
    cached_features(encoder, windows, "first", store, fp2, 16)  # batch size: other shapes round differently
    assert len(files()) == 5
    _, shorter = head_only(mini_conll, tmp_path, "model.max_length=24")  # tokenisation / windows
    cached_features(shorter.tagger.encoder, shorter.datamodule.windows["dev"], "first", store,
                    encoder_fingerprint(shorter.tagger.encoder))
    assert len(files()) == 6


def test_compact_storage_is_the_rounded_features_and_served_as_float32(mini_conll, tmp_path):
    from seqexp.models import feature_cache

    cfg, built = head_only(mini_conll, tmp_path, "trainer.feature_cache_dtype=float16")
    encoder, dm = built.tagger.encoder, built.datamodule
    store = tmp_path / "cache"
    fp = encoder_fingerprint(encoder)
    full = feature_cache.cached_features(encoder, dm.windows["dev"], "first", store, fp)
    for storage in ("float16", "bfloat16"):
        feature_cache._MEMORY.clear()
        compact = feature_cache.cached_features(encoder, dm.windows["dev"], "first", store, fp, storage=storage)
        assert compact.vectors.dtype == feature_cache.STORAGE[storage]
        assert torch.equal(compact.vectors, full.vectors.to(compact.vectors.dtype))
        assert compact.nbytes * 2 == full.nbytes
    assert len(list((store / "features").glob("*.pt"))) == 3  # one file per storage dtype
    batch = next(iter(dm.val_dataloader()))  # the run's own dev loader: float16 storage
    assert batch["features"].dtype == torch.float32
    row = int(batch["word_mask"][0].sum())
    i = int(batch["sentence"][0])
    stored = dm.split_features("dev")
    assert stored.vectors.dtype == torch.float16
    assert torch.equal(batch["features"][0, :row], stored.window(i).float())


def test_two_processes_share_one_cache(mini_conll, tmp_path):
    store = tmp_path / "shared-cache"
    script = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(REPO)!r})
        from seqexp.models.feature_cache import cached_features, encoder_fingerprint
        from seqexp.pipeline import build
        from tests.conftest import compose
        cfg = compose(["model=tiny-bert", "freeze=last", "dataset.data_dir={mini_conll}",
                       "trainer.feature_cache=false"])
        built = build(cfg)
        enc = built.tagger.encoder
        cached_features(enc, built.datamodule.windows["train"], "first", {str(store)!r}, encoder_fingerprint(enc))
    """)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs = [warm.Popen([sys.executable, "-c", script], env=env, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-3000:]
    files = list((store / "features").iterdir())
    assert len(files) == 1 and files[0].suffix == ".pt"  # no temporary files left behind
    cfg, built = head_only(mini_conll, tmp_path, "trainer.feature_cache=false")
    enc = built.tagger.encoder
    fresh = compute_features(enc, built.datamodule.windows["train"], "first")
    data = torch.load(files[0], weights_only=True)
    assert torch.equal(data["vectors"], fresh.vectors) and torch.equal(data["offsets"], fresh.offsets)


def test_disk_full_while_writing_the_cache_names_the_folder_and_leaves_no_partial_file(
        mini_conll, tmp_path, small_tmpfs):
    """A real ENOSPC on a tmpfs smaller than the features: torch.save to a path raises only
    "[enforce fail at inline_container.cc] unexpected pos"; the user gets one line naming the folder."""
    from seqexp.disk import DiskFullError
    from seqexp.models import feature_cache

    disk = small_tmpfs("64k")
    cfg, built = head_only(mini_conll, tmp_path, "trainer.feature_cache=false")
    enc, windows = built.tagger.encoder, built.datamodule.windows["train"]
    feature_cache._MEMORY.clear()
    with pytest.raises(DiskFullError) as err:
        cached_features(enc, windows, "first", disk, encoder_fingerprint(enc))
    message = str(err.value)
    assert message.startswith(f"no space left on {disk / 'features'} while writing the feature cache file "), message
    assert "`cache_dir`" in message and "trainer.feature_cache=false" in message and "\n" not in message
    assert list((disk / "features").iterdir()) == []  # the partial temporary file is gone
    assert shutil.disk_usage(disk).free > 60_000  # and the disk is not left full
    feature_cache._MEMORY.clear()
    assert len(cached_features(enc, windows, "first", tmp_path / "roomy", encoder_fingerprint(enc)).offsets) \
        == len(windows) + 1
