"""freeze=scalar_mix (seqexp/strategies/scalar_mix.py): every hidden layer of a frozen encoder, from a
float16 feature cache, mixed by learned softmax weights and a scale gamma."""

from __future__ import annotations

import torch

from seqexp.models.mix import ScalarMix
from tests.conftest import compose, tiny_overrides
from tests.strategies.adapter_checks import checkpoint_keys, dev_batch, emissions, train_steps


def test_scalar_mix_is_gamma_times_a_softmax_weighted_sum_of_the_layers():
    layers = torch.randn(2, 3, 4, 5, generator=torch.Generator().manual_seed(0))
    mix = ScalarMix(4)
    torch.testing.assert_close(mix(layers), layers.mean(2))  # s = 0, gamma = 1: the plain mean
    s, gamma = torch.tensor([0.0, 1.0, 2.0, -1.0]), 0.5
    with torch.no_grad():
        mix.scalars.copy_(s)
        mix.gamma.fill_(gamma)
    w = s.exp() / s.exp().sum()
    expected = gamma * sum(w[j] * layers[:, :, j] for j in range(4))
    torch.testing.assert_close(mix(layers), expected)
    out = mix(layers)
    out.sum().backward()
    assert mix.scalars.grad is not None and mix.gamma.grad is not None


def build(mini_conll, **extra):
    from seqexp.pipeline import build as build_run

    return build_run(compose(tiny_overrides("tiny-bert", train=64, freeze="scalar_mix",
                                            **{"dataset.data_dir": str(mini_conll)}, **extra)))


def test_the_cache_serves_every_layer_in_float16_under_its_own_key(mini_conll, tmp_path):
    from seqexp.models.feature_cache import cached_features, compute_features, encoder_fingerprint

    built = build(mini_conll)
    encoder, dm = built.tagger.encoder, built.datamodule
    config = encoder.config
    assert isinstance(built.tagger.mixer, ScalarMix) and built.tagger.mixer.num_layers == config.num_hidden_layers + 1
    served = dm.split_features("train")
    words = sum(len(w.word_starts) for w in dm.windows["train"])
    assert served.vectors.shape == (words, config.num_hidden_layers + 1, config.hidden_size)
    assert served.vectors.dtype == torch.float16
    # Layer j of the cache is hidden_states[j] at each word's first subword, rounded to float16.
    w = dm.windows["train"][0]
    with torch.no_grad():
        out = encoder(input_ids=torch.tensor([w.input_ids]), output_hidden_states=True).hidden_states
    for j, states in enumerate(out):
        torch.testing.assert_close(served.window(0)[:, j].float(), states[0, w.word_starts], atol=2e-3, rtol=2e-3)
    # Its top layer is exactly what freeze=last caches (the same canonical batches), rounded.
    top = compute_features(encoder, dm.windows["train"], "first")
    assert torch.equal(served.vectors[:, -1], top.vectors.half())
    # The layers kept are part of the key: both live side by side on disk.
    fp = encoder_fingerprint(encoder)
    cached_features(encoder, dm.windows["dev"], "first", tmp_path, fp, layers="last", storage="float16")
    cached_features(encoder, dm.windows["dev"], "first", tmp_path, fp, layers="all", storage="float16")
    sizes = sorted(p.stat().st_size for p in (tmp_path / "features").glob("*.pt"))
    assert len(sizes) == 2 and sizes[1] > 2.5 * sizes[0]  # 3 layers against 1


def test_only_mix_and_head_train_at_the_head_rate_and_are_checkpointed(mini_conll, tmp_path):
    cfg, built, trainer, before = train_steps("tiny-bert", "scalar_mix", mini_conll)
    tagger = built.tagger
    for name, param in tagger.encoder.named_parameters():
        assert not param.requires_grad and torch.equal(param, before[name])
    assert not torch.equal(tagger.mixer.scalars, torch.zeros_like(tagger.mixer.scalars))  # the mix learned
    groups = trainer.optimizers[0].param_groups
    mix_ids = {id(p) for p in tagger.mixer.parameters()}
    rates = {g["initial_lr"] for g in groups if mix_ids & {id(p) for p in g["params"]}}
    assert rates == {cfg.optim.lr * cfg.freeze.lr_scale}
    keys = checkpoint_keys(trainer, tmp_path / "last.ckpt")
    assert keys == {f"mixer.{n}" for n in tagger.mixer.state_dict()} | {f"head.{n}" for n in tagger.head.state_dict()}

    # Without the cache the Tagger runs the encoder for all layers itself: the same emissions (to float16).
    uncached = build(mini_conll, **{"trainer.feature_cache": "false"})
    uncached.tagger.load_state_dict(tagger.state_dict())
    batch, raw = dev_batch(built), dev_batch(uncached)
    assert "features" in batch and "features" not in raw and batch["features"].dim() == 4
    mask = raw["word_mask"]
    torch.testing.assert_close(emissions(tagger, batch)[mask], emissions(uncached.tagger, raw)[mask],
                               atol=2e-2, rtol=2e-3)


def test_word_pooling_of_all_layers_is_each_layers_pooling():
    from seqexp.models.tagger import pool_words

    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(2, 7, 3, 4, generator=g)  # [B, T, L + 1, H]
    starts = torch.tensor([[1, 2, 5], [1, 3, 4]])
    ends = torch.tensor([[2, 5, 6], [3, 4, 6]])
    for how in ("first", "last", "mean"):
        pooled = pool_words(hidden, starts, ends, how)
        assert pooled.shape == (2, 3, 3, 4)
        for j in range(3):
            torch.testing.assert_close(pooled[:, :, j], pool_words(hidden[:, :, j], starts, ends, how))
