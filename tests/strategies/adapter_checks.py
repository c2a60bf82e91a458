"""What freeze=lora and freeze=ia3 share in their tests: a few real training steps on a tiny encoder,
the checkpoint they leave, merged-vs-unmerged predictions, and config errors raised before torch."""

from __future__ import annotations

import json
import subprocess
import sys

import torch

from tests.conftest import REPO, compose, tiny_overrides

# SGD with a large rate: a few steps move the adapter far from its initialisation (LoRA's B is zero,
# IA3's vectors are ones, so untrained adapters would make merged == unmerged trivially true).
STEPS = {"trainer.limit_train_batches": "4", "optim": "sgd",
         "optim.lr": "0.5", "optim.encoder_lr": "0.5", "freeze.lr_scale": "1.0"}


def train_steps(model: str, strategy: str, data_dir, **extra):
    """(cfg, built, trainer, encoder weights before training) after a few real training steps on
    ``data_dir`` (the ``mini_conll`` fixture: 150 sentences per split)."""
    from seqexp.pipeline import build, make_trainer

    cfg = compose(tiny_overrides(model, train=64, freeze=strategy, **STEPS, **{"dataset.data_dir": str(data_dir)},
                                 **extra))
    built = build(cfg)
    before = {n: p.detach().clone() for n, p in built.tagger.encoder.named_parameters()}
    trainer = make_trainer(cfg)
    trainer.fit(built.tagger, datamodule=built.datamodule)
    return cfg, built, trainer, before


def dev_batch(built) -> dict:
    return next(iter(built.datamodule.val_dataloader()))


@torch.no_grad()
def emissions(tagger, batch) -> torch.Tensor:
    tagger.eval()
    return tagger(batch)


def checkpoint_keys(trainer, path) -> set[str]:
    trainer.save_checkpoint(path)
    return set(torch.load(path, map_location="cpu", weights_only=False)["state_dict"])


CHECK_DRIVER = r"""
import json, sys
from tests.conftest import compose
from seqexp.config import validate
from seqexp.errors import ConfigError
out = []
for overrides in json.loads(sys.argv[1]):
    try:
        validate(compose(["model=tiny-bert", *overrides]))
        out.append({"error": None})
    except ConfigError as exc:
        out.append({"error": str(exc)})
out.append({"heavy": sorted(m for m in ("torch", "peft", "transformers") if m in sys.modules)})
print(json.dumps(out))
"""


def config_errors(cases: list[list[str]]) -> tuple[list[str | None], list[str]]:
    """(each case's ConfigError message or None, heavy modules imported): one interpreter, no training."""
    # cold, not tests/warm.py: what the driver imported is read off sys.modules
    proc = subprocess.run([sys.executable, "-c", CHECK_DRIVER, json.dumps(cases)], cwd=REPO, capture_output=True,
                          text=True, timeout=120, check=True)
    records = json.loads(proc.stdout.strip().splitlines()[-1])
    return [r["error"] for r in records[:-1]], records[-1]["heavy"]
