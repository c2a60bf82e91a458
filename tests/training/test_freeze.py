"""Freeze strategies, checked on real tiny encoders trained by a real Lightning Trainer."""

from __future__ import annotations

import lightning.pytorch as L
import pytest
import torch

from seqexp.pipeline import build, make_trainer
from tests.conftest import compose, tiny_overrides


class DropoutProbe(L.Callback):
    """Records, at every training step, which encoder modules are in training mode.

    All modules, not only nn.Dropout: attention blocks apply dropout functionally
    (scaled_dot_product_attention's dropout_p) when their own flag is set.
    """

    def __init__(self):
        self.seen: list[dict[str, bool]] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.seen.append({name: m.training for name, m in pl_module.encoder.named_modules() if name})


def train_briefly(overrides):
    cfg = compose(overrides)
    built = build(cfg)
    tagger = built.tagger
    before = {n: p.detach().clone() for n, p in tagger.encoder.named_parameters()}
    head_before = {n: p.detach().clone() for n, p in tagger.head.named_parameters()}
    probe = DropoutProbe()
    trainer = make_trainer(cfg, callbacks=[probe])
    trainer.fit(tagger, datamodule=built.datamodule)
    optimizer_params = {id(p) for g in trainer.optimizers[0].param_groups for p in g["params"]}
    return tagger, before, head_before, probe, optimizer_params, trainer.optimizers[0]


STEPS = {"trainer.limit_train_batches": "3", "optim": "sgd", "optim.encoder_lr": "0.5", "optim.lr": "0.5"}


@pytest.mark.parametrize(
    "model,strategy,k",
    [("tiny-bert", "last", 0), ("tiny-bert", "unfreeze", 0), ("tiny-bert", "top_k", 1),
     ("tiny-roberta", "top_k", 1), ("tiny-albert", "last", 0), ("tiny-albert", "top_k", 1)],
)
def test_frozen_weights_untouched_trainable_weights_move(model, strategy, k):
    overrides = tiny_overrides(model, train=48, **STEPS, freeze=strategy)
    if strategy == "top_k":
        overrides.append(f"freeze.top_k={k}")
    tagger, before, head_before, probe, in_optimizer, optimizer = train_briefly(overrides)

    frozen = {n for n, p in tagger.encoder.named_parameters() if not p.requires_grad}
    trainable = {n for n, p in tagger.encoder.named_parameters() if p.requires_grad}
    if strategy == "last":
        assert not trainable
    elif strategy == "unfreeze":
        assert not frozen
    else:
        assert frozen and trainable
        assert all(n in frozen for n in before if n.startswith("embeddings."))
    for name, param in tagger.encoder.named_parameters():
        if name in frozen:
            assert torch.equal(param, before[name]), f"frozen {name} changed"
            assert id(param) not in in_optimizer, f"frozen {name} given to the optimizer"
        else:
            assert id(param) in in_optimizer
    moved = [n for n in trainable if not torch.equal(dict(tagger.encoder.named_parameters())[n], before[n])]
    # Every trainable encoder weight that gets a gradient moves (word embeddings of unseen ids do not).
    if trainable:
        assert len(moved) >= 0.9 * len([n for n in trainable if "word_embeddings" not in n])
    assert all(not torch.equal(p, head_before[n]) for n, p in tagger.head.named_parameters())
    # No frozen parameter has weight decay, and the optimizer holds nothing else.
    trainable_ids = {id(p) for p in tagger.parameters() if p.requires_grad}
    assert in_optimizer == trainable_ids

    # Frozen modules ran in eval mode (no dropout) at every step; trainable ones in train mode.
    assert probe.seen
    for step in probe.seen:
        for name, training in step.items():
            inside_trainable = any(name == t or name.startswith(t + ".") for t in tagger.freeze.trainable_layers)
            if strategy == "unfreeze":
                assert training, name
            else:
                assert training == inside_trainable, f"{name}: training={training}"


def test_top_k_larger_than_depth_is_a_config_error():
    from seqexp.config import validate
    from seqexp.errors import ConfigError

    cfg = compose(tiny_overrides("tiny-bert", freeze="top_k") + ["freeze.top_k=5"])
    with pytest.raises(ConfigError, match="freeze.top_k"):
        validate(cfg)


def test_weight_decay_skips_biases_and_norms():
    from seqexp.training.optim import param_groups

    cfg = compose(tiny_overrides("tiny-bert", optim="adamw"))
    built = build(cfg)
    groups = param_groups(built.tagger.encoder, built.tagger.head, cfg.optim)
    for group in groups:
        for p in group["params"]:
            assert (group["weight_decay"] == 0.0) == (p.ndim <= 1)
    lrs = {g["lr"] for g in groups}
    assert lrs == {cfg.optim.lr, cfg.optim.encoder_lr}
