"""What makes each strategy itself, checked numerically on tiny encoders (the shared contract is test_contract.py)."""

from __future__ import annotations

import lightning.pytorch as L
import pytest
import torch

from seqexp.errors import ConfigError
from seqexp.pipeline import build, make_trainer
from tests.conftest import compose


def cfg_for(model: str, strategy: str, corpus, *extra: str):
    return compose([f"model={model}", f"freeze={strategy}", f"dataset.data_dir={corpus}",
                    "dataset.max_train_sentences=24", "dataset.max_dev_sentences=16", "trainer.batch_size=8",
                    "trainer.num_threads=1", "trainer.early_stopping=false", *extra])


def groups_by_param(tagger, optimizer) -> dict[str, dict]:
    names = {id(p): n for n, p in tagger.named_parameters()}
    return {names[id(p)]: g for g in optimizer.param_groups for p in g["params"]}


@pytest.mark.parametrize("model", ["tiny-bert", "tiny-albert"])
def test_llrd_gives_each_layer_its_decayed_rate(model, mini_conll):
    """Block l of L learns at encoder_lr x decay^(L-l), the embeddings at decay^L, the head at optim.lr."""
    cfg = cfg_for(model, "llrd", mini_conll, "freeze.decay=0.5", "optim.lr=1e-2", "optim.encoder_lr=1e-3",
                  "freeze.lr_scale=2", "scheduler=constant")
    from seqexp.training.optim import param_groups

    built = build(cfg)
    groups = param_groups(built.tagger._all_named(), built.tagger.strategy, cfg.optim, 0)
    names = {id(p): n for n, p in built.tagger.named_parameters()}
    lr = {names[id(p)]: g["lr"] for g in groups for p in g["params"]}
    top = 2 if model == "tiny-bert" else 1  # tiny-bert: 2 blocks; ALBERT: one shared block
    for name, rate in lr.items():
        if name.startswith("head."):
            expected = 1e-2 * 2
        elif ".embeddings." in name or "embedding_hidden_mapping_in" in name:
            expected = 1e-3 * 2 * 0.5 ** top
        elif model == "tiny-bert" and ".layer.0." in name:
            expected = 1e-3 * 2 * 0.5
        else:  # the top block, and what sits above it (pooler)
            expected = 1e-3 * 2
        assert rate == pytest.approx(expected, rel=1e-12), name
    assert min(lr.values()) == pytest.approx(1e-3 * 2 * 0.5 ** top)  # the embeddings learn slowest


class Rates(L.Callback):
    def __init__(self):
        self.seen = []

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        groups = groups_by_param(pl_module, optimizer)
        self.seen.append((trainer.current_epoch, pl_module.phase, {n: g["lr"] for n, g in groups.items()}))


def test_gradual_unfreezes_one_block_per_epoch_top_down(mini_conll):
    """Phase p trains the head and the top p blocks; the last phase adds the embeddings. New blocks join
    the optimizer at the current point of the schedule, with their own base rate."""
    cfg = cfg_for("tiny-bert", "gradual", mini_conll, "trainer.max_epochs=5", "optim=sgd", "optim.lr=0.1",
                  "optim.encoder_lr=0.01", "scheduler=linear", "scheduler.warmup_ratio=0")
    built = build(cfg)
    rates = Rates()
    trainer = make_trainer(cfg, callbacks=[rates], strategy=built.tagger.strategy)
    trainer.fit(built.tagger, datamodule=built.datamodule)
    assert built.tagger.strategy.phases == 4
    total = trainer.estimated_stepping_batches
    step = 0
    for epoch, phase, lr in rates.seen:
        assert phase == min(epoch, 3)
        layers = {n.split(".layer.")[1].split(".")[0] for n in lr if ".layer." in n}
        assert layers == {"0", "1"}.intersection({"1"} if phase == 1 else {"0", "1"} if phase >= 2 else set())
        assert any(".embeddings." in n for n in lr) == (phase == 3)
        factor = max(0.0, 1 - step / total)  # linear schedule, no warmup
        for name, rate in lr.items():
            base = 0.1 if name.startswith("head.") else 0.01
            assert rate == pytest.approx(base * factor, rel=1e-9, abs=1e-15), (epoch, name)
        step += 1


def test_lp_ft_probes_on_cached_features_then_fine_tunes_in_one_mlflow_run(mini_conll, tmp_path):
    """Phase 0: the head alone, at probe_lr_scale x its rate, on cached features (the encoder never
    runs); phase 1: everything. One MLflow run holds the dev curve of both phases."""
    from seqexp.run import run
    from seqexp.tracking import client

    db = tmp_path / "mlflow.db"
    cfg = cfg_for("tiny-bert", "lp_ft", mini_conll, "freeze.probe_epochs=2", "trainer.max_epochs=3",
                  "freeze.probe_lr_scale=10", "optim=sgd", "optim.lr=0.1", "scheduler=constant",
                  f"tracking.uri=sqlite:///{db}", "trainer.checkpoint_every_n_steps=null")
    built = build(cfg)
    calls = []
    built.tagger.encoder.register_forward_hook(lambda *a: calls.append(built.tagger.phase))
    rates = Rates()
    trainer = make_trainer(cfg, callbacks=[rates], strategy=built.tagger.strategy)
    trainer.fit(built.tagger, datamodule=built.datamodule)
    assert calls and set(calls) == {1}, "the encoder ran in the probe phase"
    for epoch, phase, lr in rates.seen:
        assert phase == (1 if epoch >= 2 else 0)
        assert lr["head.classifier.weight"] == pytest.approx(1.0 if phase == 0 else 0.1)
        assert any(n.startswith("encoder.") for n in lr) == (phase == 1)

    run(cfg)
    c = client(f"sqlite:///{db}")
    (logged,) = c.search_runs([c.get_experiment_by_name(cfg.tracking.experiment).experiment_id])
    assert logged.info.status == "FINISHED"
    assert [m.step for m in c.get_metric_history(logged.info.run_id, "val_f1")] == [0, 1, 2]
    assert logged.data.params["freeze.probe_epochs"] == "2"


def test_bitfit_trains_biases_only(mini_conll):
    built = build(cfg_for("tiny-roberta", "bitfit", mini_conll))
    trains = {n for n, p in built.tagger.encoder.named_parameters() if p.requires_grad}
    assert trains == {n for n, _ in built.tagger.encoder.named_parameters() if n.endswith(".bias")}
    assert trains and all(p.requires_grad for p in built.tagger.head.parameters())


def test_top_k_on_albert_trains_the_shared_group(mini_conll):
    """ALBERT shares its layer weights: top_k=1 trains the one group every depth uses, not the embeddings."""
    built = build(cfg_for("tiny-albert", "top_k", mini_conll, "freeze.top_k=1"))
    trains = {n for n, p in built.tagger.encoder.named_parameters() if p.requires_grad}
    assert trains and all(n.startswith("encoder.albert_layer_groups.0.") for n in trains)
    assert trains == {n for n, _ in built.tagger.encoder.named_parameters()
                      if n.startswith("encoder.albert_layer_groups.0.")}


def test_weight_decay_skips_biases_and_norms(mini_conll):
    cfg = cfg_for("tiny-bert", "unfreeze", mini_conll, "optim=adamw", "optim.weight_decay=0.01")
    built = build(cfg)
    from seqexp.training.optim import param_groups

    named = [("encoder", n, p) for n, p in built.tagger.encoder.named_parameters()]
    for group in param_groups(named, built.tagger.strategy, cfg.optim, 0):
        for p in group["params"]:
            assert (group["weight_decay"] == 0.0) == (p.ndim <= 1)


@pytest.mark.parametrize("override,key", [
    (["freeze=top_k", "freeze.top_k=5"], "freeze.top_k"),
    (["freeze=llrd", "freeze.decay=1.5"], "freeze.decay"),
    (["freeze=gradual", "freeze.every_n_steps=10"], "freeze.every_n_epochs"),
    (["freeze=lp_ft", "freeze.probe_epochs=8"], "freeze.probe_epochs"),
    (["freeze=last", "+freeze.typo=1"], "freeze"),
    (["freeze=last", "freeze._target_=seqexp.strategies.nothing.Here"], "freeze._target_"),
])
def test_strategy_config_errors_name_the_key(override, key):
    from seqexp.config import validate

    cfg = compose(["model=tiny-bert", *override])
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        validate(cfg)


def test_early_stopping_waits_for_the_last_phase(mini_conll, tmp_path):
    """Gradual unfreezing by steps: early stopping that would end the run after 2 epochs waits until every
    block and the embeddings have trained (it counts only the last phase's dev evaluations)."""
    from seqexp.training import selection

    cfg = cfg_for("tiny-bert", "gradual", mini_conll, "freeze.every_n_epochs=null", "freeze.every_n_steps=3",
                  "trainer.max_epochs=8", "trainer.early_stopping=true", "trainer.patience=1",
                  "trainer.min_delta=0.99")
    built = build(cfg)
    _, selecting = selection.callbacks(cfg.trainer, tmp_path)
    trainer = make_trainer(cfg, callbacks=selecting, strategy=built.tagger.strategy)
    trainer.fit(built.tagger, datamodule=built.datamodule)
    assert trainer.global_step >= 10 and built.tagger.phase == 3  # 4 phases, 3 steps each before the last
    assert trainer.current_epoch < 8  # and then it stopped early


def test_early_stopping_gives_the_last_phase_its_whole_patience(mini_conll, tmp_path):
    """lp_ft whose probe stalls (its head barely learns, so dev F1 stays put for patience evaluations): early
    stopping must neither end the run at the first fine-tuning epoch (Lightning latches a stop decided during
    the probe: issue #19966) nor count the probe's evaluations. With patience 2, the first fine-tuning
    evaluation sets the bar and two more are needed to stop: the run uses its whole budget of 3 + 3 epochs."""
    from seqexp.training import selection

    class Seen(L.Callback):
        def __init__(self):
            self.at_phase_start = None

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):  # the phase's first step
            if module.phase == 1 and self.at_phase_start is None:
                stopper = next(c for c in trainer.callbacks if isinstance(c, selection.LastPhaseEarlyStopping))
                self.at_phase_start = (trainer.should_stop, stopper.wait_count)

    cfg = cfg_for("tiny-bert", "lp_ft", mini_conll, "freeze.probe_epochs=3", "freeze.probe_lr_scale=1e-12",
                  "trainer.max_epochs=6", "trainer.early_stopping=true", "trainer.patience=2")
    built = build(cfg)
    _, selecting = selection.callbacks(cfg.trainer, tmp_path)
    seen = Seen()
    trainer = make_trainer(cfg, callbacks=[*selecting, seen], strategy=built.tagger.strategy)
    trainer.fit(built.tagger, datamodule=built.datamodule)
    assert seen.at_phase_start == (False, 0)
    assert trainer.current_epoch == 6 and not selection.early_stopped(trainer)
