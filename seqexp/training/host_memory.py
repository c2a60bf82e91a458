"""Peak host memory of fine-tuning an encoder on CPU: glibc's mmap threshold (an opt-in).

    python -m seqexp.run freeze=unfreeze                                   # the default: glibc's own
    python -m seqexp.run freeze=unfreeze trainer.host_mmap_threshold_mib=1  # less memory, slower

glibc serves an allocation from its heap unless it is larger than its mmap threshold, and
that threshold grows (up to 32 MiB) each time a larger mmap-served block is freed. Training an
encoder frees and reallocates activations of a different size at every length-grouped batch,
so after a few long batches every activation comes from the heap, and the heap keeps the
freed space in pieces: memory counted in RSS that no tensor uses.

With the threshold fixed at N MiB, activations above N come from mmap and go back to the system
when freed. Measured at 1 MiB on full fine-tuning of MiniLM, 2,000 CoNLL-2003 sentences, batch 32,
one epoch, 2 CPUs, three rounds (benchmarks/mmap_later_jobs.py): peak RSS about 1,746 MiB instead
of 2,000 (-13%), fit 51.4 s instead of 46.2 s (+11%; the page faults of fresh mappings). Earlier,
2 MiB gave 1,727 MB and 4 MiB 1,795 MB (against 1,854 MB).

``mallopt`` turns the dynamic threshold off for the rest of the process, and glibc has no call
that turns it back on. So when fitting ends the threshold is set to 32 MiB, the most the dynamic
one reaches, and whatever the process runs next (the test, later jobs of a sweep) runs with that
fixed threshold: in the same measurement a head-only job after it took 35.7 s instead of 33.1 s
(+8%, the rounds' ranges overlapping), with a lower process peak. That is why the default is
``null``: nothing is set, and every job gets glibc's own behaviour.

Only while fitting a strategy whose encoder trains on the CPU, in any of its phases (``gradual`` and
``lp_ft`` start with the head alone): with ``freeze=last`` nothing big is kept for a backward pass, and
GPU activations are not host memory. Linux with glibc only; elsewhere
this does nothing.
"""

from __future__ import annotations

import ctypes
import logging

import lightning.pytorch as L

log = logging.getLogger(__name__)

M_MMAP_THRESHOLD = -3  # <malloc.h>
DYNAMIC_MAX = 32 << 20  # glibc's DEFAULT_MMAP_THRESHOLD_MAX on 64-bit systems


def set_mmap_threshold(nbytes: int) -> bool:
    """``mallopt(M_MMAP_THRESHOLD, nbytes)``; False where the C library has no ``mallopt``."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return mallopt(M_MMAP_THRESHOLD, int(nbytes)) == 1


class MmapThreshold(L.Callback):
    """Fixes glibc's mmap threshold at ``mib`` MiB while an encoder trains on the CPU."""

    def __init__(self, mib: float):
        self.nbytes = int(mib * (1 << 20))
        self.active = False

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.strategy.root_device.type == "cpu" and getattr(pl_module, "encoder_ever_trains", False):
            self.active = set_mmap_threshold(self.nbytes)
            log.debug("glibc mmap threshold %d bytes: %s", self.nbytes, self.active)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.active:
            set_mmap_threshold(DYNAMIC_MAX)
            self.active = False
