"""Fault injection, for tests: make a run fail in a chosen way at a chosen training step.

    python -m seqexp.run model=tiny-bert fault.kind=nan fault.step=3

``fault.kind`` (default ``null``: off):

``nan``, ``inf``  the training loss of that step becomes NaN / +inf. The head's loss is
                  poisoned, so the Tagger's own non-finite-loss check stops the run (FAILED).
``error``         a RuntimeError is raised (FAILED, with traceback.txt).
``kill``          the process SIGKILLs itself: a power loss. The MLflow run stays RUNNING
                  until a rerun finds its process dead and marks it KILLED.
``sigterm``       the process sends itself SIGTERM, as a scheduler would (KILLED).

``fault.step`` is Lightning's ``trainer.global_step`` when the fault fires: the number of
optimizer steps already taken, so ``0`` is the first training batch. A step the run never
reaches never fires (a warning says so). The ``fault`` keys are part of a run's config
fingerprint like any other, so ``-m fault.kind=null,nan,error`` is three jobs.
"""

from __future__ import annotations

import logging
import math
import os
import signal

from seqexp.errors import ConfigError

log = logging.getLogger("seqexp")

KINDS = ("nan", "inf", "error", "kill", "sigterm")


def kind_of(fault) -> str | None:
    """``fault.kind`` as a name: Hydra reads ``fault.kind=nan`` (and ``inf``) from the command line as floats."""
    kind = fault.kind
    if isinstance(kind, float):
        return "nan" if math.isnan(kind) else "inf" if kind == math.inf else str(kind)
    return kind


def check(fault) -> None:
    """ConfigError naming the key when ``fault`` is not a valid fault-injection setting."""
    kind = kind_of(fault)
    if kind is not None and kind not in KINDS:
        raise ConfigError(f"`fault.kind`: unknown {kind!r}; choose one of {', '.join(KINDS)} (or null: off)")
    step = fault.step
    if not isinstance(step, int) or isinstance(step, bool) or step < 0:
        raise ConfigError(f"`fault.step`: must be a whole number >= 0 (a trainer.global_step), got {step!r}")


def fire(kind: str, step: int, pl_module) -> None:
    """Make the fault happen now, inside training step ``step``."""
    log.warning("fault injection: fault.kind=%s at training step %d", kind, step)
    if kind in ("nan", "inf"):
        poison_loss(pl_module.head, float(kind))
    elif kind == "error":
        raise RuntimeError(f"injected fault at training step {step} (fault.kind=error)")
    elif kind == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    elif kind == "sigterm":
        os.kill(os.getpid(), signal.SIGTERM)


def poison_loss(head, value: float) -> None:
    """The head's next loss has ``value`` (NaN or inf) added; later losses are clean again."""
    clean = head.loss

    def poisoned(*args, **kwargs):
        del head.loss  # back to the class's method
        return clean(*args, **kwargs) + value

    head.loss = poisoned


def callback(fault):
    """The Lightning callback that fires ``fault.kind`` at ``trainer.global_step == fault.step``."""
    import lightning.pytorch as L  # here, not at import: config validation must not import torch

    kind, step = kind_of(fault), fault.step

    class FaultInjection(L.Callback):
        fired = False

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            if not self.fired and trainer.global_step == step:
                self.fired = True
                fire(kind, step, pl_module)

        def on_train_end(self, trainer, pl_module) -> None:
            if not self.fired:
                log.warning("fault injection: fault.kind=%s never fired: training ended at step %d, "
                            "before fault.step=%d", kind, trainer.global_step, step)

    return FaultInjection()
