"""glibc's mmap threshold while an encoder trains on CPU (seqexp/training/host_memory.py)."""

from __future__ import annotations

import subprocess
import sys

import lightning.pytorch as L
import pytest

from seqexp.errors import ConfigError
from seqexp.pipeline import build, make_trainer
from seqexp.training.host_memory import MmapThreshold
from tests.conftest import compose

glibc = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="mallopt is glibc's (Linux)")


@glibc
def test_blocks_above_the_threshold_go_back_to_the_system_when_freed():
    code = """
import torch
from seqexp.training.host_memory import set_mmap_threshold
def rss():
    return int(open('/proc/self/status').read().split('VmRSS:')[1].split()[0]) // 1024
big = torch.ones(16 << 18); del big            # a freed 16 MiB block: glibc's dynamic threshold goes up
assert set_mmap_threshold(1 << 20)
before = rss()
x = torch.ones(8 << 18)                         # 8 MiB, above the fixed 1 MiB threshold: mmap
during = rss(); del x; after = rss()
assert during - before >= 7, (before, during)
assert after - before <= 1, (before, during, after)
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


class _Seen(L.Callback):
    def __init__(self):
        self.active = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.active += [c.active for c in trainer.callbacks if isinstance(c, MmapThreshold)]


@glibc
@pytest.mark.parametrize("freeze, mib, expected", [("unfreeze", 1, [True]), ("last", 1, [False]), ("unfreeze", None, []),
                                                   ("gradual", 1, [True])])  # its encoder trains from phase 2
def test_fixed_only_while_an_encoder_trains_on_cpu(mini_conll, freeze, mib, expected):
    cfg = compose(["model=tiny-bert", f"freeze={freeze}", f"dataset.data_dir={mini_conll}", "trainer.max_epochs=1",
                   "trainer.limit_train_batches=1", "trainer.val_every_n_epochs=0",
                   f"trainer.host_mmap_threshold_mib={'null' if mib is None else mib}"])
    built = build(cfg)
    seen = _Seen()
    trainer = make_trainer(cfg, callbacks=[seen])
    trainer.fit(built.tagger, datamodule=built.datamodule)
    assert seen.active == expected
    assert not any(getattr(c, "active", False) for c in trainer.callbacks if isinstance(c, MmapThreshold))


@pytest.mark.parametrize("value", [0, -1, 33, "big", True])
def test_bad_threshold_is_a_config_error(value):
    from seqexp.config import validate

    cfg = compose([f"trainer.host_mmap_threshold_mib={value}"])
    with pytest.raises(ConfigError, match="trainer.host_mmap_threshold_mib"):
        validate(cfg)


def test_by_default_glibc_keeps_its_own_threshold_for_every_job():
    """The default sets nothing, so no job of a sweep process inherits a fixed threshold from an earlier one
    (benchmarks/results/2026-12-02-mmap-later-jobs.md); a number is the opt-in."""
    for freeze in ("unfreeze", "last"):
        trainer = make_trainer(compose(["model=tiny-bert", f"freeze={freeze}"]))
        assert not [c for c in trainer.callbacks if isinstance(c, MmapThreshold)], freeze
    trainer = make_trainer(compose(["model=tiny-bert", "freeze=unfreeze", "trainer.host_mmap_threshold_mib=1"]))
    assert [c.nbytes for c in trainer.callbacks if isinstance(c, MmapThreshold)] == [1 << 20]
