"""freeze=ia3 (seqexp/strategies/ia3.py): PEFT's (IA)^3 vectors on keys, values and the FFN, on real tiny encoders."""

from __future__ import annotations

import pytest
import torch

from tests.strategies.adapter_checks import checkpoint_keys, config_errors, dev_batch, emissions, train_steps

# (module name suffix, where its vector scales) of each distinct layer
SITES = {"tiny-bert": {"attention.self.key": "out", "attention.self.value": "out", "output.dense": "in"},
         "tiny-albert": {"attention.key": "out", "attention.value": "out", "ffn_output": "in"}}


@pytest.mark.parametrize("model", ["tiny-bert", "tiny-albert"])
def test_vectors_scale_keys_values_and_ffn_activations_and_only_they_train(model, mini_conll, tmp_path):
    cfg, built, trainer, before = train_steps(model, "ia3", mini_conll)
    tagger, encoder = built.tagger, built.tagger.encoder
    config = encoder.config
    vectors = tagger.strategy.trainable(encoder, 0)
    assert vectors and all(n.endswith(".ia3_l.default") for n in vectors)
    modules = dict(encoder.named_modules())
    adapted = {n.removesuffix(".ia3_l.default") for n in vectors}
    layers = 1 if model == "tiny-albert" else config.num_hidden_layers  # ALBERT: one shared layer, every depth
    assert len(adapted) == 3 * layers
    assert not any(n.endswith("attention.output.dense") for n in adapted)  # not the attention's output projection
    torch.manual_seed(0)
    for name in adapted:
        site = next(where for suffix, where in SITES[model].items() if name.endswith(suffix))
        module = modules[name]
        base = module.base_layer
        scale = module.ia3_l["default"]
        assert torch.equal(before[f"{name}.ia3_l.default"], torch.ones_like(scale))  # starts as the identity
        assert not torch.equal(scale, torch.ones_like(scale))  # and trained
        x = torch.randn(3, base.in_features)
        with torch.no_grad():
            if site == "out":  # l_k, l_v: the projection's output, one value per output feature
                assert scale.shape == (base.out_features, 1)
                expected = base(x) * scale.flatten()
            else:  # l_ff: the FFN's inner activations, the input of its second layer
                assert scale.shape == (1, base.in_features) and base.in_features == config.intermediate_size
                expected = base(x * scale.flatten())
            torch.testing.assert_close(module(x), expected)
    for name, param in encoder.named_parameters():
        if name not in vectors:
            assert not param.requires_grad and torch.equal(param, before[name]), f"pretrained {name} changed"
    keys = checkpoint_keys(trainer, tmp_path / "last.ckpt")
    assert keys == {f"encoder.{n}" for n in vectors} | {f"head.{n}" for n in tagger.head.state_dict()}


def test_merged_and_unmerged_vectors_predict_the_same(mini_conll, tmp_path):
    cfg, built, trainer, _ = train_steps("tiny-roberta", "ia3", mini_conll)
    tagger, batch = built.tagger, dev_batch(built)
    trained = emissions(tagger, batch)
    with tagger.encoder.disable_adapter():
        assert not torch.equal(emissions(tagger, batch), trained)  # the steps moved the vectors
    with torch.no_grad():  # a few steps move them little: scale them further, so that a wrong merge shows
        for name, param in tagger.encoder.named_parameters():
            if name in tagger.strategy.trainable(tagger.encoder, 0):
                param.mul_(1 + 0.5 * torch.randn(param.shape, generator=torch.Generator().manual_seed(0)))
    unmerged = emissions(tagger, batch)
    with tagger.encoder.disable_adapter():
        assert (emissions(tagger, batch) - unmerged).abs().max() > 1e-2
    weights = {n: p.detach().clone() for n, p in tagger.encoder.named_parameters() if "base_layer" in n}
    tagger.encoder.merge_adapter()  # in place: the vectors folded into the weights, which now run alone
    assert all(m.merged for n, m in tagger.encoder.named_modules() if hasattr(m, "ia3_l"))
    assert any(not torch.equal(p, weights[n]) for n, p in tagger.encoder.named_parameters() if n in weights)
    merged = emissions(tagger, batch)
    mask = batch["word_mask"]
    torch.testing.assert_close(merged[mask], unmerged[mask], atol=1e-5, rtol=1e-5)


def test_config_errors_name_the_key_before_torch_is_imported():
    errors, heavy = config_errors([
        ["freeze=ia3"],
        ["freeze=ia3", "freeze.target_modules=[key,value,output.dense]", "freeze.feedforward_modules=[output.dense]"],
        ["freeze=ia3", "freeze.target_modules=[key,value]"],
        ["freeze=ia3", "freeze.target_modules=7"],
    ])
    assert errors[:2] == [None, None]
    assert "`freeze.feedforward_modules`" in errors[2]
    assert "`freeze.target_modules`" in errors[3]
    assert heavy == []
