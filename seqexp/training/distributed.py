"""One run over N processes: Lightning DDP (``trainer.strategy=ddp trainer.devices=N``).

    python -m seqexp.run trainer.strategy=ddp trainer.devices=2 trainer.accelerator=cpu trainer.batch_size=16

Lightning's own launcher starts the processes: at ``trainer.fit`` the process the user started
(rank 0) runs the same command again N - 1 times (``LOCAL_RANK`` 1..N-1; Hydra's run folder,
no second ``config.yaml``). On CPU the processes talk over gloo, on GPUs over NCCL. What seqexp
adds, and where:

- **One MLflow run, logged by rank 0.** Rank 0 claims the job, opens (or resumes) the run and
  tells the other processes its id and checkpoint through :data:`ENV` (:func:`announce`). A
  process that finds it (:func:`parent_run`) never opens the store: it trains with a
  :class:`RankTracker`, whose writes go nowhere, and leaves the sweep bookkeeping alone.
- **Every optimizer step sees ``devices x batch_size`` windows**, the batches a one-process run
  with that batch size would make (``LengthGroupedBatches``: each global batch is split across
  the ranks), so each window trains once per epoch across ranks and every rank takes the same
  number of steps. Lightning's ``DistributedSampler`` is off (``use_distributed_sampler=False``):
  it would pad the split with repeated windows.
- **Dev and test**: each rank predicts its share of the windows; the predictions are gathered
  (``LightningModule.all_gather``), rank 0 scores the union once and broadcasts the scores, so
  model selection and early stopping decide the same on every rank (``Tagger._finish_eval``).
- **The feature cache** of a frozen encoder is computed by rank 0 alone while the others wait
  (Lightning's ``prepare_data`` barrier, ``TaggingDataModule.prepare_data``); they load its file.
- **Checkpoints** are written by rank 0 (Lightning's DDP strategy); every rank resumes from it.

Importable without torch: config checks use it.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator

from seqexp.errors import ConfigError

STRATEGIES = ("auto", "ddp")
ENV = "SEQEXP_DDP_RUN"  # rank 0 -> the processes it starts: {"run_id": ..., "resume": checkpoint or null}


def processes(trainer_cfg) -> int:
    """How many processes train one run: ``trainer.devices`` when it is a number above 1, else 1."""
    devices = trainer_cfg.get("devices", 1)
    return devices if isinstance(devices, int) and not isinstance(devices, bool) and devices > 1 else 1


def lightning_strategy(trainer_cfg) -> str:
    """What the Trainer gets: ``ddp`` for several processes; ``auto`` (one device) otherwise, also for
    ``trainer.strategy=ddp trainer.devices=1``, which is a plain run."""
    return "ddp" if processes(trainer_cfg) > 1 else "auto"


def available_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def check(cfg, strategy, multirun: bool) -> None:
    """ConfigError naming the key for a combination DDP does not support here.

    ``strategy``: the fine-tuning strategy (``seqexp.strategies``) of ``cfg.freeze``."""
    t = cfg.trainer
    name = t.get("strategy", "auto")
    if name not in STRATEGIES:
        extra = " (ddp_spawn: not supported, use ddp)" if name == "ddp_spawn" else ""
        raise ConfigError(f"`trainer.strategy`: unknown {name!r}; choose one of {', '.join(STRATEGIES)}{extra}")
    devices = t.get("devices", 1)
    if not (devices == "auto" or (isinstance(devices, int) and not isinstance(devices, bool) and devices >= 1)):
        raise ConfigError(f"`trainer.devices`: must be a whole number >= 1 (or auto: one), got {devices!r}")
    n = processes(t)
    if n == 1:
        return
    if t.get("accelerator") == "cpu" and n > available_cpus():
        raise ConfigError(f"`trainer.devices`: {n} processes with trainer.accelerator=cpu, but this machine "
                          f"gives this process {available_cpus()} CPU(s); use at most that many")
    if multirun:
        raise ConfigError(f"`trainer.devices`: {n} (DDP) in a sweep (-m): Lightning starts each run's other "
                          "processes by running the command again, which would run the whole sweep again; "
                          "run one command per configuration (python -m seqexp.run ... trainer.devices=N)")
    if t.get("compile"):
        raise ConfigError("`trainer.compile`: torch.compile with trainer.devices > 1 (DDP) is not supported "
                          "here; set trainer.compile=false or trainer.devices=1")
    if strategy.phases > 1:
        raise ConfigError(f"`freeze`: {cfg.freeze.strategy} changes which parameters train between phases, "
                          "and DDP synchronises only the gradients of what trained when it started; use "
                          "trainer.devices=1 with it")


def parent_run() -> dict | None:
    """In a process Lightning started for rank 1..N-1 of a run: what rank 0 announced; else None."""
    value = os.environ.get(ENV)
    if not value or os.environ.get("LOCAL_RANK", "0") == "0":
        return None
    return json.loads(value)


@contextlib.contextmanager
def announce(run_id: str | None, resume_path) -> Iterator[None]:
    """Rank 0, around ``fit`` and ``test``: the processes Lightning starts inherit the run and checkpoint."""
    os.environ[ENV] = json.dumps({"run_id": run_id, "resume": str(resume_path) if resume_path else None})
    try:
        yield
    finally:
        os.environ.pop(ENV, None)


class RankTracker:
    """The tracker of a process of rank > 0: rank 0 logs everything; these writes go nowhere."""

    def __init__(self, run_id: str | None):
        self.run_id = run_id

    def _nothing(self, *args, **kwargs) -> None:
        return None

    log_metrics = log_params = set_tags = log_text = log_inputs = _nothing
