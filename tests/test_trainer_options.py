"""Trainer options through the real config: dev evaluation frequency, and the GPU-path options
(bf16 autocast and torch.compile) composing on CPU.

The inductor code generation itself is checked on a GPU (benchmarks/gpu_check.py); here
the ``aot_eager`` backend runs the same Dynamo capture and AOT autograd in seconds.
"""

from __future__ import annotations

import math

import torch

from seqexp.pipeline import build, make_trainer
from tests.conftest import compose


def test_dev_evaluation_every_n_epochs_or_never(mini_conll):
    common = ["model=tiny-bert", "freeze=last", f"dataset.data_dir={mini_conll}", "trainer.batch_size=16",
              "trainer.limit_train_batches=2"]
    for every, epochs, evaluated in ((0, 2, []), (2, 3, [1]), (1, 2, [0, 1])):
        cfg = compose([*common, f"trainer.val_every_n_epochs={every}", f"trainer.max_epochs={epochs}"])
        built = build(cfg)
        seen = []
        built.tagger.metric_sink = lambda metrics, step: seen.append(step) if "val_f1" in metrics else None
        trainer = make_trainer(cfg)
        trainer.fit(built.tagger, datamodule=built.datamodule)
        assert seen == evaluated, every
        assert ("dev" in built.tagger.results) == bool(evaluated)
        assert trainer.current_epoch == epochs
        trainer.test(built.tagger, datamodule=built.datamodule, verbose=False)
        assert 0 <= built.tagger.results["test"]["f1"] <= 1


def test_bf16_autocast_and_compile_compose_on_cpu(mini_conll):
    cfg = compose(["model=tiny-bert", f"dataset.data_dir={mini_conll}", "trainer.max_epochs=1",
                   "trainer.limit_train_batches=3", "trainer.batch_size=8", "trainer.precision=bf16-mixed",
                   "trainer.compile=true", "trainer.compile_backend=aot_eager"])
    built = build(cfg)
    tagger = built.tagger
    assert isinstance(tagger.encoder, torch._dynamo.eval_frame.OptimizedModule)
    dtypes = set()
    tagger.head.register_forward_hook(lambda module, args, out: dtypes.add(out.dtype))
    trainer = make_trainer(cfg)
    trainer.fit(tagger, datamodule=built.datamodule)
    trainer.test(tagger, datamodule=built.datamodule, verbose=False)
    assert dtypes == {torch.bfloat16}  # the head ran under bf16 autocast, in training and evaluation
    assert trainer.global_step == 3
    result = tagger.results["test"]
    assert math.isfinite(result["loss"]) and 0 <= result["f1"] <= 1
    assert len(tagger.predictions["test"]) == len(built.splits["test"])
