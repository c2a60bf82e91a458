"""freeze=lora (seqexp/strategies/lora.py): PEFT's LoRA on query/value, on real tiny encoders."""

from __future__ import annotations

import pytest
import torch

from seqexp.models.tagger import pool_words
from tests.strategies.adapter_checks import checkpoint_keys, config_errors, dev_batch, emissions, train_steps


def lora_size(model: str, config, r: int) -> int:
    """r x (d_in + d_out) per adapted projection: query and value of every *distinct* layer."""
    layers = 1 if model == "tiny-albert" else config.num_hidden_layers  # ALBERT: one shared layer, every depth
    return layers * 2 * r * (config.hidden_size + config.hidden_size)


@pytest.mark.parametrize("model", ["tiny-bert", "tiny-roberta", "tiny-albert"])
def test_only_the_adapter_and_head_train_and_checkpoints_hold_only_them(model, mini_conll, tmp_path):
    cfg, built, trainer, before = train_steps(model, "lora", mini_conll)
    tagger = built.tagger
    encoder = tagger.encoder
    adapter = tagger.strategy.trainable(encoder, 0)
    assert adapter and all(".lora_A." in n or ".lora_B." in n for n in adapter)
    assert all(n.startswith("base_model.model.") for n, _ in encoder.named_parameters())  # PEFT's wrap
    # query and value of each distinct layer, nothing else; ALBERT's shared layer gets one adapter for all depths
    assert sum(p.numel() for n, p in encoder.named_parameters() if n in adapter) == lora_size(model, encoder.config, cfg.freeze.r)
    for name, param in encoder.named_parameters():
        if name in adapter:
            assert param.requires_grad
        else:
            assert not param.requires_grad and torch.equal(param, before[name]), f"pretrained {name} changed"
    assert any(not torch.equal(p, before[n]) for n, p in encoder.named_parameters() if ".lora_B." in n)
    in_optimizer = {id(p) for g in trainer.optimizers[0].param_groups for p in g["params"]}
    assert in_optimizer == {id(p) for p in tagger.parameters() if p.requires_grad}
    # As in the paper, the whole model trains in train mode: LoRA's own dropout and every encoder dropout.
    tagger.train()
    modes = {n: m.training for n, m in encoder.named_modules()}
    assert any(n.endswith("lora_dropout.default") for n in modes) and all(modes.values())

    keys = checkpoint_keys(trainer, tmp_path / "last.ckpt")
    expected = {f"encoder.{n}" for n in adapter} | {f"head.{n}" for n in tagger.head.state_dict()}
    assert keys == expected


@pytest.mark.parametrize("model", ["tiny-bert", "tiny-albert"])
def test_merged_and_unmerged_adapters_predict_the_same(model, mini_conll, tmp_path):
    cfg, built, trainer, _ = train_steps(model, "lora", mini_conll)
    tagger, batch = built.tagger, dev_batch(built)
    unmerged = emissions(tagger, batch)
    with tagger.encoder.disable_adapter():  # the adapter changes what the encoder says
        assert (emissions(tagger, batch) - unmerged).abs().max() > 1e-3
    merged = tagger.encoder.merge_and_unload()  # plain transformers model, adapter folded into W
    assert not any("lora" in n for n, _ in merged.named_parameters())
    with torch.no_grad():
        hidden = merged(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
        words = pool_words(hidden, batch["word_starts"], batch["word_ends"], cfg.alignment)
        out = tagger.head(words, batch["word_mask"])
    mask = batch["word_mask"]
    torch.testing.assert_close(out[mask], unmerged[mask], atol=1e-5, rtol=1e-5)


def test_a_checkpoint_of_adapter_and_head_restores_the_predictions(mini_conll, tmp_path):
    from seqexp.pipeline import build

    cfg, built, trainer, _ = train_steps("tiny-roberta", "lora", mini_conll)
    batch = dev_batch(built)
    trained = emissions(built.tagger, batch)
    path = tmp_path / "adapter.ckpt"
    trainer.save_checkpoint(path)
    fresh = build(cfg).tagger  # pretrained encoder, new adapter and head
    assert (emissions(fresh, batch) - trained).abs().max() > 1e-3
    state = torch.load(path, map_location="cpu", weights_only=False)["state_dict"]
    missing, unexpected = fresh.load_state_dict(state, strict=False)
    assert not unexpected and set(missing) == fresh.never_trained
    torch.testing.assert_close(emissions(fresh, batch), trained, atol=0, rtol=0)


def test_config_errors_name_the_key_before_torch_is_imported():
    errors, heavy = config_errors([
        ["freeze=lora"],
        ["freeze=lora", "freeze.r=0"],
        ["freeze=lora", "freeze.r=2.5"],
        ["freeze=lora", "freeze.alpha=0"],
        ["freeze=lora", "freeze.dropout=1.0"],
        ["freeze=lora", "freeze.dropout=-0.1"],
        ["freeze=lora", "freeze.target_modules=[]"],
    ])
    assert errors[0] is None
    for error, key in zip(errors[1:], ["freeze.r", "freeze.r", "freeze.alpha", "freeze.dropout", "freeze.dropout",
                                       "freeze.target_modules"]):
        assert error is not None and f"`{key}`" in error and "\n" not in error
    assert heavy == []
