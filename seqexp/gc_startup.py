"""Cyclic garbage collection in ``python -m seqexp.run``: off while modules import, then frozen.

Measured on the 4-run head-only sweep of ``make bench`` (2 CPUs): the process ends with about
930k objects tracked by the collector, nearly all of them module state of torch (with sympy),
Lightning, torchmetrics, transformers and MLflow. Python's generational collector walked
them again and again:

- 10 full collections while those modules imported, 2.8 s in all (each one longer, since
  each walks everything imported so far);
- full collections during the jobs, 0.85 s each;
- about 3.8 s of collections at interpreter exit, after the last line was printed.

So the command disables the collector before its imports (:func:`defer`), and once the heavy
modules are in, before the first job builds anything, moves every object alive at that point
into the permanent generation (:func:`freeze_imports`, ``gc.freeze()``) and enables it again.
Later collections, and the ones at exit, walk only what the jobs create. What a job creates is
collected as before: freezing happens before any of it exists, so a finished job's model,
trainer and data are never pinned. Garbage cycles created during the imports themselves stay
(a few thousand small objects). Reference counting, which frees almost everything, is
untouched.

Measured on that sweep, 3 runs each, alternating, on a quiet machine: 70.1 s without this,
63.0 s with it (median wall time of the whole process; 0.898x pair by pair), and no higher
peak RSS (1,252 vs 1,428 MB median).

Only the ``python -m seqexp.run`` process does this (``run.py``'s ``__main__``): a library
user's process, or pytest's, keeps its collector as it is.
"""

from __future__ import annotations

import gc

_deferred = False


def defer() -> None:
    """No cyclic collection until :func:`freeze_imports`; called first thing by the command."""
    global _deferred
    if gc.isenabled():
        gc.disable()
        _deferred = True


def freeze_imports() -> None:
    """If :func:`defer` was called: freeze everything alive now, and collect again from here on."""
    global _deferred
    if _deferred:
        gc.freeze()
        gc.enable()
        _deferred = False
