"""Tagging heads: shapes, learning, padding invariance, masked batch norm, configs."""

from __future__ import annotations

from pathlib import Path

import hydra
import pytest
import torch
from omegaconf import OmegaConf
from torch.nn import functional as F

from seqexp.models.heads import BiLSTMHead, CRFHead, LinearHead, MLPHead, TaggingHead

H, C = 12, 5
LENGTHS = [5, 3, 1, 4]
CONF = Path(__file__).resolve().parents[2] / "conf" / "head"


def make_head(kind: str, **kw) -> TaggingHead:
    if kind == "linear":
        return LinearHead(H, C, **kw)
    if kind == "mlp":
        return MLPHead(H, C, hidden_dim=16, **kw)
    if kind == "mlp_bn":
        return MLPHead(H, C, hidden_dim=16, num_layers=2, batch_norm=True, **kw)
    if kind == "crf":
        return CRFHead(H, C, **kw)
    if kind == "bilstm":
        return BiLSTMHead(H, C, hidden_dim=8, **kw)
    raise AssertionError(kind)


KINDS = ["linear", "mlp", "mlp_bn", "crf", "bilstm"]


def padded(width: int, seed: int = 0, lengths: list[int] = LENGTHS):
    """The same sentences padded to ``width``, with large junk features and -100 labels in the padding."""
    g = torch.Generator().manual_seed(seed)
    real_w = max(lengths)
    feats = torch.randn(len(lengths), real_w, H, generator=g)
    labels = torch.randint(C, (len(lengths), real_w), generator=g)
    mask = torch.arange(width)[None] < torch.tensor(lengths)[:, None]
    junk = torch.randn(len(lengths), width, H, generator=torch.Generator().manual_seed(99)) * 100
    features = torch.where(mask[..., None], F.pad(feats, (0, 0, 0, width - real_w)), junk)
    labels = F.pad(labels, (0, width - real_w)).masked_fill(~mask, -100)
    return features, labels, mask


@pytest.mark.parametrize("kind", KINDS)
def test_shapes_and_padded_decode(kind):
    torch.manual_seed(0)
    head = make_head(kind)
    features, labels, mask = padded(7)
    emissions = head(features, mask)
    assert emissions.shape == (4, 7, C) and emissions.dtype == torch.float32
    loss = head.loss(emissions, labels, mask)
    assert loss.dim() == 0 and torch.isfinite(loss)
    tags = head.decode(emissions, mask)
    assert tags.shape == (4, 7) and tags.dtype == torch.long
    assert tags[~mask].eq(0).all()
    assert ((tags >= 0) & (tags < C)).all()


@pytest.mark.parametrize("kind", KINDS)
def test_padding_does_not_affect_real_positions(kind):
    torch.manual_seed(0)
    head = make_head(kind, dropout=0.0)
    if kind == "mlp_bn":
        head.train()  # batch statistics must come from real words only
    else:
        head.eval()
    narrow = padded(5)
    wide = padded(9)
    em5, em9 = head(narrow[0], narrow[2]), head(wide[0], wide[2])
    m = narrow[2]
    assert torch.allclose(em5[m], em9[:, :5][m], atol=1e-5)
    assert torch.allclose(head.loss(em5, narrow[1], narrow[2]), head.loss(em9, wide[1], wide[2]), atol=1e-5)
    assert torch.equal(head.decode(em5, narrow[2]), head.decode(em9, wide[2])[:, :5])


def test_mlp_batch_norm_uses_only_real_words():
    torch.manual_seed(0)
    head = MLPHead(H, C, hidden_dim=16, num_layers=1, batch_norm=True, dropout=0.0).train()
    bn = head.norms[0]
    features, _, mask = padded(9)
    head(features, mask)
    pre = head.linears[0](features)[mask]  # the real words' pre-norm activations
    momentum = bn.momentum
    assert torch.allclose(bn.running_mean, momentum * pre.mean(0), atol=1e-5)
    assert torch.allclose(bn.running_var, (1 - momentum) + momentum * pre.var(0, unbiased=True), atol=1e-4)
    # Same batch padded differently: identical running statistics.
    other = MLPHead(H, C, hidden_dim=16, num_layers=1, batch_norm=True, dropout=0.0).train()
    other.load_state_dict({k: v for k, v in head.state_dict().items() if "norms" not in k}, strict=False)
    f5, _, m5 = padded(5)
    other(f5, m5)
    assert torch.allclose(other.norms[0].running_mean, bn.running_mean, atol=1e-6)
    assert torch.allclose(other.norms[0].running_var, bn.running_var, atol=1e-6)


def test_mlp_batch_norm_survives_a_single_real_word():
    head = MLPHead(H, C, hidden_dim=8, batch_norm=True).train()
    features, labels, mask = padded(3, lengths=[1])
    emissions = head(features, mask)
    head.loss(emissions, labels, mask).backward()
    assert torch.isfinite(emissions).all()


@pytest.mark.parametrize("kind", ["linear", "mlp", "mlp_bn"])
def test_softmax_decode_is_argmax(kind):
    torch.manual_seed(0)
    head = make_head(kind).eval()
    features, _, mask = padded(6)
    emissions = head(features, mask)
    tags = head.decode(emissions, mask)
    assert torch.equal(tags[mask], emissions.argmax(-1)[mask])


def test_softmax_loss_is_mean_over_counted_words():
    head = LinearHead(H, C).eval()
    features, labels, mask = padded(6)
    labels[0, 2] = -100  # a gold label unknown to the label set
    emissions = head(features, mask)
    counted = mask & (labels != -100)
    expected = F.cross_entropy(emissions[counted], labels[counted])
    assert head.loss(emissions, labels, mask).item() == pytest.approx(expected.item(), abs=1e-6)
    # Nothing counted: 0, not NaN, and still differentiable.
    empty = head.loss(emissions, torch.full_like(labels, -100), mask)
    assert empty.item() == 0.0
    empty.backward()


def test_crf_head_loss_is_mean_nll_per_sentence_and_handles_unknown_labels():
    head = CRFHead(H, C).eval()
    features, labels, mask = padded(6)
    labels[0, 1] = -100
    emissions = head(features, mask)
    nll = head.crf.neg_log_likelihood(emissions, labels, mask)
    loss = head.loss(emissions, labels, mask)
    assert loss.item() == pytest.approx(nll.mean().item(), rel=1e-6)
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in head.parameters())


@pytest.mark.parametrize("kind", KINDS)
def test_each_head_fits_a_tiny_problem(kind):
    """Labels are a fixed function of the word's features: the loss must fall fast."""
    torch.manual_seed(0)
    lengths = [6, 4, 5, 2, 6, 3, 1, 5]
    features, _, mask = padded(6, seed=1, lengths=lengths)
    teacher = torch.randn(H, C, generator=torch.Generator().manual_seed(3))
    labels = (features @ teacher).argmax(-1).masked_fill(~mask, -100)
    head = make_head(kind, dropout=0.0).train()
    opt = torch.optim.Adam(head.parameters(), lr=0.05)
    losses = []
    for _ in range(40):
        opt.zero_grad()
        loss = head.loss(head(features, mask), labels, mask)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.3 * losses[0], losses
    head.eval()
    pred = head.decode(head(features, mask), mask)
    assert (pred[mask] == labels[mask]).float().mean() > 0.9


@pytest.mark.parametrize(("name", "cls"),
                         [("linear", LinearHead), ("mlp", MLPHead), ("crf", CRFHead), ("bilstm", BiLSTMHead)])
def test_config_instantiates_as_a_partial(name, cls):
    path = CONF / f"{name}.yaml"
    assert path.read_text().startswith("# python -m seqexp.run head=")
    head = hydra.utils.instantiate(OmegaConf.load(path))(hidden_size=H, num_labels=C)
    assert isinstance(head, cls)
    assert head(torch.zeros(2, 3, H)).shape == (2, 3, C)


def test_mlp_rejects_bad_arguments():
    with pytest.raises(ValueError, match="activation"):
        MLPHead(H, C, activation="swishy")
    with pytest.raises(ValueError, match="num_layers"):
        MLPHead(H, C, num_layers=0)


def test_bilstm_gives_a_sentence_the_same_emissions_alone_and_padded_in_a_batch():
    """Packed sequences: neither direction of either layer ever reads a padded position."""
    torch.manual_seed(0)
    head = BiLSTMHead(H, C, hidden_dim=8, num_layers=2, dropout=0.0).eval()
    features, _, mask = padded(9)  # junk of magnitude 100 in the padding
    batch = head(features, mask)
    for row, length in enumerate(LENGTHS):
        alone = head(features[row : row + 1, :length])  # no padding at all, no mask
        torch.testing.assert_close(batch[row, :length], alone[0], atol=1e-6, rtol=1e-6)
    # The backward direction is real: a later word changes an earlier word's emissions.
    changed = features.clone()
    changed[0, 4] += 1.0
    assert not torch.allclose(head(changed, mask)[0, 0], batch[0, 0])


def test_bilstm_config_is_two_bidirectional_layers_of_the_configured_size():
    head = hydra.utils.instantiate(OmegaConf.load(CONF / "bilstm.yaml"), hidden_dim=16)(hidden_size=H, num_labels=C)
    assert head.lstm.num_layers == 2 and head.lstm.bidirectional and head.lstm.hidden_size == 16
    assert head.classifier.in_features == 32
