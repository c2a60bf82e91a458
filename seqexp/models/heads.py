"""Tagging heads: word features in, per-label scores out, plus their loss and decoder.

The Tagger gives every head the same three tensors:

* ``features: FloatTensor[B, W, H]``, one vector per word;
* ``mask: BoolTensor[B, W]``, real words, always a prefix of each row;
* ``labels: LongTensor[B, W]``, ``-100`` where nothing is to be learned (padding,
  or a gold label the label set does not know).

and relies only on :class:`TaggingHead`'s three methods, so that the heads can
be swapped from the command line (``head=linear|mlp|bilstm|crf``) with everything else
fixed. That is the point of the comparison: only the head changes.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from seqexp.models.crf import CRF, IGNORE_INDEX
from seqexp.models.dropout import FastDropout

_ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "gelu": nn.GELU,
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "silu": nn.SiLU,
}


class TaggingHead(nn.Module):
    """Base class: a per-word softmax classifier.

    Subclasses build ``emissions`` in :meth:`forward`; the defaults for
    :meth:`loss` (token-level cross-entropy) and :meth:`decode` (per-word
    argmax) are what a softmax head needs. :class:`CRFHead` overrides both.
    """

    num_labels: int

    def forward(self, features: Tensor, mask: Tensor | None = None) -> Tensor:
        """Return ``emissions: FloatTensor[B, W, C]``.

        ``mask`` is optional because only heads that mix information across
        words of the batch (batch norm in :class:`MLPHead`) need it; without it
        every position counts as a real word.
        """
        raise NotImplementedError

    def loss(self, emissions: Tensor, labels: Tensor, mask: Tensor) -> Tensor:
        """Mean cross-entropy over *counted* words: ``mask & (labels != -100)``.

        A batch with no counted word gives 0 (still attached to the graph)
        rather than the NaN that ``F.cross_entropy`` returns for an empty mean.
        """
        counted = mask & (labels != IGNORE_INDEX)
        target = labels.masked_fill(~counted, IGNORE_INDEX)
        total = F.cross_entropy(
            emissions.float().reshape(-1, emissions.size(-1)),
            target.reshape(-1),
            ignore_index=IGNORE_INDEX,
            reduction="sum",
        )
        return total / counted.sum().clamp(min=1)

    def decode(self, emissions: Tensor, mask: Tensor) -> Tensor:
        """Per-word argmax label ids, ``LongTensor[B, W]``; padded positions are 0."""
        return emissions.argmax(dim=-1).masked_fill(~mask, 0)


class LinearHead(TaggingHead):
    """Dropout then one linear layer: the standard fine-tuning head (softmax + CE)."""

    def __init__(self, hidden_size: int, num_labels: int, dropout: float = 0.1) -> None:
        super().__init__()
        self.num_labels = num_labels
        self.dropout = FastDropout(dropout)
        self.classifier = nn.Linear(hidden_size, num_labels)

    def forward(self, features: Tensor, mask: Tensor | None = None) -> Tensor:
        return self.classifier(self.dropout(features))


class MaskedBatchNorm1d(nn.BatchNorm1d):
    """BatchNorm over real words only.

    Padding is excluded from the statistics (the masked positions are gathered,
    normalised, and scattered back), so how a batch happens to be padded never
    changes the output at real words nor the running statistics. Padded
    positions come out as 0.

    A training batch with a single real word cannot give a batch variance; it
    is normalised with the running statistics instead (and does not update them)
    rather than raising as ``nn.BatchNorm1d`` would.
    """

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:  # type: ignore[override]
        if mask is None:
            mask = torch.ones(x.shape[:-1], dtype=torch.bool, device=x.device)
        flat = x[mask]  # [N, D]
        if self.training and flat.size(0) < 2:
            normed = F.batch_norm(
                flat, self.running_mean, self.running_var, self.weight, self.bias,
                training=False, eps=self.eps,
            )
        else:
            normed = super().forward(flat)
        out = x.new_zeros(x.shape[:-1] + (normed.size(-1),), dtype=normed.dtype)
        out[mask] = normed
        return out


class MLPHead(TaggingHead):
    """Dropout, ``num_layers`` x (Linear -> [BatchNorm] -> activation -> Dropout), Linear.

    Tests whether a little extra non-linear capacity on top of the encoder helps,
    especially when the encoder is frozen.
    """

    def __init__(
        self,
        hidden_size: int,
        num_labels: int,
        hidden_dim: int = 256,
        num_layers: int = 1,
        activation: str = "gelu",
        batch_norm: bool = False,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"num_layers must be >= 1 (use head=linear for none), got {num_layers}")
        if activation not in _ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}; choose from {sorted(_ACTIVATIONS)}")
        self.num_labels = num_labels
        self.input_dropout = FastDropout(dropout)
        self.linears = nn.ModuleList()
        self.norms = nn.ModuleList() if batch_norm else None
        for i in range(num_layers):
            self.linears.append(nn.Linear(hidden_size if i == 0 else hidden_dim, hidden_dim))
            if self.norms is not None:
                self.norms.append(MaskedBatchNorm1d(hidden_dim))
        self.activation = _ACTIVATIONS[activation]()
        self.dropout = FastDropout(dropout)
        self.classifier = nn.Linear(hidden_dim, num_labels)

    def forward(self, features: Tensor, mask: Tensor | None = None) -> Tensor:
        """Emissions ``[B, W, C]``. Pass ``mask`` when ``batch_norm`` is on, or padding is normalised too."""
        x = self.input_dropout(features)
        for i, linear in enumerate(self.linears):
            x = linear(x)
            if self.norms is not None:
                x = self.norms[i](x, mask)
            x = self.dropout(self.activation(x))
        return self.classifier(x)


class BiLSTMHead(TaggingHead):
    """Dropout, a ``num_layers``-layer bidirectional LSTM over each sentence's words, dropout, Linear.

    The feature-based rows of Devlin et al. 2019 (BERT, Table 7) put a two-layer 768-dimensional
    BiLSTM before the classifier; with ``freeze=scalar_mix`` or ``freeze=last`` this reruns them.
    ``hidden_dim`` is each direction's size. Sequences are packed by their real length (``mask``,
    a prefix of each row), so padding never reaches the states of real words: a sentence gets the
    same emissions alone and padded in a batch. Padded positions come out as the classifier's bias.
    """

    def __init__(self, hidden_size: int, num_labels: int, hidden_dim: int = 768, num_layers: int = 2,
                 dropout: float = 0.1) -> None:
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {num_layers}")
        self.num_labels = num_labels
        self.input_dropout = FastDropout(dropout)
        self.lstm = nn.LSTM(hidden_size, hidden_dim, num_layers=num_layers, bidirectional=True,
                            batch_first=True, dropout=dropout if num_layers > 1 else 0.0)
        self.dropout = FastDropout(dropout)
        self.classifier = nn.Linear(2 * hidden_dim, num_labels)

    def forward(self, features: Tensor, mask: Tensor | None = None) -> Tensor:
        x = self.input_dropout(features)
        batch, words = x.shape[:2]
        lengths = (mask.sum(1) if mask is not None else torch.full((batch,), words)).cpu()
        real = lengths > 0  # an all-padding row (never in practice) has nothing to pack
        out = x.new_zeros(batch, words, 2 * self.lstm.hidden_size)
        if bool(real.any()):
            packed = nn.utils.rnn.pack_padded_sequence(x[real], lengths[real], batch_first=True,
                                                       enforce_sorted=False)
            states, _ = self.lstm(packed)
            states, _ = nn.utils.rnn.pad_packed_sequence(states, batch_first=True, total_length=words)
            out[real.to(out.device)] = states
        return self.classifier(self.dropout(out))


class CRFHead(TaggingHead):
    """Linear emissions scored by a linear-chain CRF.

    Loss: the CRF negative log-likelihood summed over sentences and divided by
    the number of sentences in the batch (``B``), i.e. the mean NLL per
    sentence, not per word: its scale therefore differs from the softmax heads'
    per-word cross-entropy, which matters only for loss curves, not for the
    optimum. Gold labels of ``-100`` at real words are marginalised (see
    :meth:`seqexp.models.crf.CRF.neg_log_likelihood`). Decode: Viterbi.
    """

    def __init__(self, hidden_size: int, num_labels: int, dropout: float = 0.1) -> None:
        super().__init__()
        self.num_labels = num_labels
        self.dropout = FastDropout(dropout)
        self.classifier = nn.Linear(hidden_size, num_labels)
        self.crf = CRF(num_labels)

    def forward(self, features: Tensor, mask: Tensor | None = None) -> Tensor:
        return self.classifier(self.dropout(features))

    def loss(self, emissions: Tensor, labels: Tensor, mask: Tensor) -> Tensor:
        nll = self.crf.neg_log_likelihood(emissions, labels, mask)
        return nll.sum() / max(nll.size(0), 1)

    def decode(self, emissions: Tensor, mask: Tensor) -> Tensor:
        return self.crf.decode(emissions, mask)
