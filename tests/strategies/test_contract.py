"""The contract every fine-tuning strategy keeps, checked for every ``conf/freeze/*.yaml`` on every tiny encoder.

A new strategy (one YAML, one class) is checked here without new test code:

- frozen weights are bit-identical after training steps;
- the optimizer holds exactly the parameters that train, at every step of every phase;
- modules the strategy keeps frozen in a phase are in eval mode (no dropout), and a fully frozen
  encoder is entirely in eval mode;
- the checkpoint holds exactly what trains (every parameter that trained in any phase), and the
  logged trained/total counts say the same;
- a run resumed from a checkpoint saved after a phase boundary ends bit-identical to the
  uninterrupted run (CPU, same seed). This is the gradual-unfreezing trap (Lightning #6891): a
  checkpoint that leaves out the blocks unfrozen later restarts them from the pretrained weights.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import lightning.pytorch as L
import pytest
import torch

from seqexp.pipeline import build, make_trainer
from seqexp.training.checkpoints import LastCheckpoint
from tests import warm
from tests.conftest import CONF, compose

STRATEGIES = sorted(p.stem for p in (CONF / "freeze").glob("*.yaml"))
# The tiny encoders built here; test_contract_through_the_hub_path reruns this file over the hub ids
# (model=bert,roberta,albert from a hub cache of tiny stand-ins) by setting SEQEXP_CONTRACT_MODELS.
MODELS = os.environ.get("SEQEXP_CONTRACT_MODELS", "tiny-bert,tiny-roberta,tiny-albert").split(",")


class Probe(L.Callback):
    """At every training step (after the strategy's callbacks moved the phase): what trains, what the
    optimizer holds, which encoder modules are in training mode; at every epoch end a copy of the
    checkpoint LastCheckpoint just wrote."""

    def __init__(self, saver: LastCheckpoint, keep: Path):
        self.saver, self.keep = saver, keep
        self.steps: list[dict] = []

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        in_optimizer = {id(p) for g in optimizer.param_groups for p in g["params"]}
        self.steps.append({
            "phase": pl_module.phase,
            "trains": {n for n, p in pl_module.named_parameters() if p.requires_grad},
            "optimizer_matches": in_optimizer == {id(p) for p in pl_module.parameters() if p.requires_grad},
            "training": {n: m.training for n, m in pl_module._base[0].named_modules()},
            "eval": {id(m) for m in pl_module._eval_modules},
            "modules": {n: id(m) for n, m in pl_module._base[0].named_modules()},
        })

    # Lightning runs Checkpoint callbacks last: the epoch's checkpoint exists when the next epoch starts.
    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch and self.saver.path.exists():
            shutil.copy(self.saver.path, self.keep / f"epoch{trainer.current_epoch - 1}.ckpt")

    def on_train_end(self, trainer, pl_module):
        shutil.copy(self.saver.path, self.keep / f"epoch{trainer.current_epoch - 1}.ckpt")


def overrides(model: str, strategy: str, corpus: Path, epochs: int) -> list[str]:
    return [f"model={model}", f"freeze={strategy}", f"dataset.data_dir={corpus}",
            "dataset.max_train_sentences=24", "dataset.max_dev_sentences=16", "trainer.batch_size=8",
            f"trainer.max_epochs={epochs}", "trainer.early_stopping=false", "trainer.num_threads=1",
            "optim=sgd", "optim.lr=0.5", "optim.encoder_lr=0.5", "scheduler=linear"]


def fit(cfg, folder: Path, resume_from: Path | None = None):
    built = build(cfg)
    saver = LastCheckpoint(folder / "last.ckpt", 0, "contract", "contract")
    probe = Probe(saver, folder)
    trainer = make_trainer(cfg, callbacks=[saver, probe], strategy=built.tagger.strategy)
    trainer.fit(built.tagger, datamodule=built.datamodule, ckpt_path=resume_from)
    return built, probe


def epochs_for(strategy_name: str, model: str, corpus: Path) -> tuple[int, int]:
    """(epochs to run, the epoch whose end-of-epoch checkpoint is resumed): two epochs into the last
    phase, resuming from the end of the first epoch after the first phase boundary (epoch 1 of a
    one-phase strategy)."""
    strategy = build(compose(overrides(model, strategy_name, corpus, 1))).tagger.strategy  # prepared
    starts = [e for e in range(1, 13) if strategy.phase_at(e, 0) != strategy.phase_at(e - 1, 0)]
    if strategy.phases == 1 or not starts:
        return 3, 0
    return starts[-1] + 2, starts[0]


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_strategy_contract(strategy, model, mini_conll, tmp_path):
    epochs, resume_epoch = epochs_for(strategy, model, mini_conll)
    cfg = compose(overrides(model, strategy, mini_conll, epochs))
    torch.manual_seed(0)
    first = tmp_path / "uninterrupted"
    first.mkdir()
    built, probe = fit(cfg, first)
    tagger = built.tagger
    pretrained = build(cfg).tagger.state_dict()  # the same build, untrained

    # The optimizer holds exactly what trains, at every step of every phase.
    assert probe.steps and all(s["optimizer_matches"] for s in probe.steps)
    phases = sorted({s["phase"] for s in probe.steps})
    if tagger.strategy.phases > 1:
        assert len(phases) > 1, f"{strategy}: the run never left phase {phases}"

    # Frozen weights are bit-identical; everything that trained in any phase is what the checkpoint holds.
    ever = set().union(*(s["trains"] for s in probe.steps))
    state = tagger.state_dict()
    params = dict(tagger.named_parameters())
    for name in params:
        if name not in ever:
            assert torch.equal(state[name], pretrained[name]), f"{strategy}: frozen {name} changed"
    moved = {n for n in ever if not torch.equal(state[n], pretrained[n])}
    assert moved, f"{strategy}: nothing trained"
    saved = torch.load(first / f"epoch{epochs - 1}.ckpt", map_location="cpu", weights_only=True)
    saved_params = {k for k in saved["state_dict"] if k in params}
    assert saved_params == ever, (f"{strategy}: checkpoint holds {len(saved_params)} parameters, "
                                  f"{len(ever)} trained (e.g. {sorted(saved_params ^ ever)[:3]})")
    trained, total = tagger.parameter_counts()
    assert trained == sum(params[n].numel() for n in ever) and total == sum(p.numel() for p in params.values())

    # Eval mode: what the strategy keeps frozen, and the whole of a frozen encoder.
    for step in probe.steps:
        for name, training in step["training"].items():
            if step["modules"][name] in step["eval"]:
                assert not training, f"{strategy}: {name} in train mode in phase {step['phase']}"
        if not any(n.startswith("encoder.") for n in step["trains"]):
            assert not any(step["training"].values()), f"{strategy}: a frozen encoder has modules in train mode"
        elif tagger.strategy.eval_modules(tagger._base[0], step["phase"]) == []:
            assert all(step["training"].values()), f"{strategy}: dropout off where everything trains"

    # Resumed after the phase boundary: ends exactly where the uninterrupted run ended.
    second = tmp_path / "resumed"
    second.mkdir()
    ckpt = second / "from.ckpt"
    shutil.copy(first / f"epoch{resume_epoch}.ckpt", ckpt)
    resumed, probe2 = fit(cfg, second, resume_from=ckpt)
    assert probe2.steps and probe2.steps[0]["phase"] == probe.steps[len(probe.steps) - len(probe2.steps)]["phase"]
    end = resumed.tagger.state_dict()
    for name in params:
        assert torch.equal(end[name], state[name]), f"{strategy}: {name} differs after resume"


# Outside make test (.ci/run runs it); make test: test_strategy_contract on the tiny encoders of the same families;
# the hub path: test_hub_cache
@pytest.mark.extended
def test_contract_through_the_hub_path(hub_cache):
    """The same contract for ``model=bert,roberta,albert``, loaded offline from a Hugging Face hub cache
    (tokenizers, RoBERTa's add_prefix_space, ALBERT's shared layers: the code a user with hub access runs).
    A child pytest: the hub cache location is read when huggingface_hub is imported."""
    if os.environ.get("SEQEXP_CONTRACT_MODELS"):
        pytest.skip("already running over the hub ids")
    env = {**os.environ, **hub_cache, "SEQEXP_CONTRACT_MODELS": "bert,roberta,albert"}
    proc = warm.run([sys.executable, "-m", "pytest", __file__, "-q", "-x", "-p", "no:cacheprovider",
                           "-k", "test_strategy_contract"], env=env, capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stdout[-5000:]
    assert f"{len(STRATEGIES) * 3} passed" in proc.stdout, proc.stdout[-2000:]
