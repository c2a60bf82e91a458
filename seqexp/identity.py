"""Run identity, in one place: which config keys make two runs different, and the grid axes.

Every flattened config key (``optim.lr``, ``trainer.eval_batch_size``, ...) has one *role*:

``compared`` (the default)
    what a study compares or tunes: the encoder, the freezing strategy, the head, the optimizer and
    its schedule, ``alignment``, the seed, fault injection. A key added later is ``compared`` unless
    it is listed below, so a new strategy parameter (``freeze.*``) splits runs by default.
``setting``
    the data and the training budget (``dataset.*``, ``trainer.*``): they change the result just as
    much, but a study usually holds them fixed, so run names leave them out (the parent run's overrides
    and each run's params show them; the report shows the budget per cell), unless the sweep varies
    one (``trainer.precision=32-true,bf16-mixed``): then it is in the name, or two runs would share it.
``runtime``
    where a run executes, how fast, in which order its floating-point sums are taken, and what it
    records (:data:`RUNTIME`). Changing one computes the same thing.

**The rule:** a key changes the result unless its role is ``runtime``. One rule serves three places:

- the fingerprint (:func:`fingerprint`: skip-if-finished, claims, the checkpoint folder) hashes
  exactly the keys that change the result;
- the report (``seqexp.report.aggregate``) splits cells on exactly those keys, wherever they differ
  between runs (the seed makes repeats, tuned keys make candidates); runtime keys never split a cell;
- run names (``seqexp.tracking.run_name``) show the ``compared`` overrides that have no slot of their
  own, and the ``setting`` overrides the sweep varies (:func:`in_run_name`).

Where float noise is the only difference, the key is runtime. ``trainer.eval_batch_size`` is the
case in point: padding is masked, so the batch size only changes the order of floating-point sums
(measured on CPU, tiny-bert, 150 CoNLL-2003 sentences, batch 64 vs 5: full fine-tuning logged
identical dev, test and train-loss values; head-only, whose cached features are computed in eval
batches, identical dev and test metrics and train losses equal to 1e-7). Threads, the accelerator,
compilation and checkpoint cadence are the same kind of key. Keys that say *which* data or model
(``dataset.data_dir``, ``dataset.source``, ``model.path``) are not locations in this sense: another
folder may hold other files, so they change the result.

A change of this definition changes fingerprints: bump :data:`FINGERPRINT_VERSION`.

Importable without torch, transformers or omegaconf.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Collection, Mapping

# Config groups whose chosen option is logged as a short param (``model=bert``), in report order.
AXES = ("dataset", "model", "freeze", "optim", "scheduler", "head")
# The report groups cells by these (one table block per model, per dataset when datasets vary) ...
GROUP_AXES = ("dataset", "model")
# ... and calls the rest of a cell's axes its *strategy* (``unfreeze+adam``).
STRATEGY_AXES = tuple(a for a in AXES if a not in GROUP_AXES)
# The user's grid: each has a slot in every run name (``bert|last|adam|s1``) and a column in every table.
NAME_AXES = ("model", "freeze", "optim")
# Repeats of one configuration; the last slot of a run name (``s1``).
SEED = "seed"
# The config group that names the study: its choice is the MLflow experiment, not part of a run name.
STUDY_GROUP = "experiment"
# Params a run logs about its data, not config keys: they follow from the config and the files.
DATA_PARAMS = ("labels",)

COMPARED, SETTING, RUNTIME_ROLE = "compared", "setting", "runtime"
SETTING_GROUPS = ("dataset", "trainer")
# Keys (and every key below them) that do not change what a run computes.
RUNTIME = (
    # where results go, where built tiny encoders and fetched (checksummed) corpora are kept
    "tracking", "cache_dir",
    # bookkeeping: redo a finished job, continue a killed one, which keys the study tunes (for the report)
    "rerun", "resume", "tuned",
    # where and how parallel: the same computation, other float rounding at most. Not trainer.devices:
    # several devices train data-parallel, so each optimizer step sees devices x batch_size sentences.
    # trainer.strategy: auto or ddp, the same processes for the same trainer.devices.
    "trainer.accelerator", "trainer.strategy", "trainer.num_threads", "trainer.num_workers",
    "trainer.host_mmap_threshold_mib", "trainer.compile", "trainer.compile_backend", "trainer.eval_batch_size",
    # how often train_loss is logged
    "trainer.log_every_n_steps",
    # where checkpoints go and how often: a resumed run computes what an uninterrupted one does
    "trainer.checkpoint_every_n_steps", "trainer.checkpoint_dir", "trainer.keep_checkpoint",
)

# 1: the hash of the fingerprinted keys alone (eval_batch_size, compile and log_every_n_steps counted).
# 2: this module's rule, with the version in the hash (trainer.devices counted).
FINGERPRINT_VERSION = 2
FINGERPRINT_TAG = "seqexp.fingerprint"
FINGERPRINT_VERSION_TAG = "seqexp.fingerprint_version"


def _under(key: str, names: tuple[str, ...]) -> bool:
    return any(key == n or key.startswith(n + ".") for n in names)


@functools.lru_cache(maxsize=4096)
def role(key: str) -> str:
    """``runtime``, ``setting`` or ``compared`` (see the module docstring); ``+``/``~`` prefixes ignored."""
    key = key.lstrip("+~")
    if _under(key, RUNTIME):
        return RUNTIME_ROLE
    if key.startswith(tuple(g + "." for g in SETTING_GROUPS)):
        return SETTING
    return COMPARED


def changes_result(key: str) -> bool:
    """Whether two runs that differ only in ``key`` compute different things (fingerprint, report cells)."""
    return role(key) != RUNTIME_ROLE


def in_run_name(key: str, swept: Collection[str] = ()) -> bool:
    """Whether an override of ``key`` is spelled out in the run name: a compared key without a slot, or
    a setting among the sweep's varied keys ``swept``.

    Left out: runtime keys (they change nothing), settings the sweep does not vary (a study holds them
    fixed), the name's own slots (:data:`NAME_AXES`, :data:`SEED`) and the study (:data:`STUDY_GROUP`,
    the MLflow experiment).
    """
    key = key.lstrip("+~")
    if key in (*NAME_AXES, SEED, STUDY_GROUP):
        return False
    kind = role(key)
    return kind == COMPARED or (kind == SETTING and key in swept)


def fingerprint(flat: Mapping[str, str]) -> str:
    """Hash of a flattened, resolved config's keys that change the result, and :data:`FINGERPRINT_VERSION`."""
    kept = {k: v for k, v in flat.items() if changes_result(k)}
    payload = json.dumps({"version": FINGERPRINT_VERSION, "config": kept}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]
