"""A linear-chain conditional random field in plain torch.

Written here rather than taken from a package so that the one piece of the CRF
head that is easy to get subtly wrong (padding, length-1 sentences, unknown gold
labels) is small, readable and checked against brute-force enumeration in
``tests/models/test_crf.py``.

Conventions, shared with :mod:`seqexp.models.heads`:

* batch-first: ``emissions[B, W, C]``, ``tags[B, W]``, ``mask[B, W]``;
* ``mask`` marks real words and is a prefix (``True ... True False ... False``);
* every sentence that contributes to a loss has at least one real word (an empty
  one contributes exactly 0 to the negative log-likelihood; its decode is all 0);
* a tag of ``-100`` at a real position means "gold label unknown" (see
  :meth:`CRF.neg_log_likelihood`);
* everything is computed in float32 (emissions are up-cast), so mixed-precision
  training cannot overflow the log-space sums.

All computations are vectorised over the batch and loop only over time.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

IGNORE_INDEX = -100

# Log-weight given to tags excluded by a known gold label. Finite (not -inf) so
# that no logsumexp ever sees an all -inf row (whose backward is NaN); exp(-1e4)
# is exactly 0 in float32, so results are identical to a hard constraint.
_EXCLUDED = -1e4


class CRF(nn.Module):
    """Linear-chain CRF with start, end and tag-to-tag transition scores.

    The score of a tag sequence ``y`` of length ``n`` is::

        start[y_0] + sum_t emissions[t, y_t] + sum_{t>0} transitions[y_{t-1}, y_t] + end[y_{n-1}]

    ``transitions[i, j]`` is the score of moving *from* tag ``i`` *to* tag ``j``.
    """

    def __init__(self, num_tags: int) -> None:
        super().__init__()
        if num_tags < 1:
            raise ValueError(f"num_tags must be >= 1, got {num_tags}")
        self.num_tags = num_tags
        # Small uniform initialisation, as in the classic BiLSTM-CRF recipes:
        # the emissions dominate at the start of training.
        self.start_transitions = nn.Parameter(torch.empty(num_tags).uniform_(-0.1, 0.1))
        self.end_transitions = nn.Parameter(torch.empty(num_tags).uniform_(-0.1, 0.1))
        self.transitions = nn.Parameter(torch.empty(num_tags, num_tags).uniform_(-0.1, 0.1))

    def extra_repr(self) -> str:
        return f"num_tags={self.num_tags}"

    # ------------------------------------------------------------------ scores
    def log_partition(self, emissions: Tensor, mask: Tensor) -> Tensor:
        """``log Z`` per sentence, ``FloatTensor[B]``, by the forward algorithm."""
        emissions = emissions.float()
        self._check(emissions, mask)
        alpha = self.start_transitions + emissions[:, 0]  # [B, C]
        trans = self.transitions.unsqueeze(0)  # [1, C_from, C_to]
        for t in range(1, emissions.size(1)):
            # [B, C_from, 1] + [1, C_from, C_to] + [B, 1, C_to] -> logsumexp over C_from
            nxt = torch.logsumexp(alpha.unsqueeze(2) + trans + emissions[:, t].unsqueeze(1), dim=1)
            # Padded steps keep alpha unchanged: the mask is a prefix, so alpha
            # ends up holding the value at each sentence's last real word.
            alpha = torch.where(mask[:, t].unsqueeze(1), nxt, alpha)
        return torch.logsumexp(alpha + self.end_transitions, dim=1)

    def neg_log_likelihood(self, emissions: Tensor, tags: Tensor, mask: Tensor) -> Tensor:
        """Negative log-likelihood of the gold tags per sentence, ``FloatTensor[B]``.

        Positions where ``mask`` is True but ``tags == -100`` (a gold label
        outside the label set) are *marginalised*: the numerator is the
        log-sum of the scores of every sequence that agrees with the known
        labels, so the model is neither rewarded nor punished for what it puts
        there. With no ``-100`` this is exactly ``log Z - score(gold)``; a
        sentence whose labels are all ``-100`` gets 0. We chose marginalising
        over dropping the sentence because the known labels around an unknown
        one still carry signal, and it needs no special case: it is the same
        forward algorithm on emissions where excluded tags get a score of
        ``-1e4``. Both passes run as one batch of ``2B`` sentences.
        """
        emissions = emissions.float()
        self._check(emissions, mask)
        if tags.shape != mask.shape:
            raise ValueError(f"tags {tuple(tags.shape)} and mask {tuple(mask.shape)} differ in shape")
        known = mask & (tags != IGNORE_INDEX)
        allowed = torch.nn.functional.one_hot(tags.clamp(min=0), self.num_tags).bool()
        allowed |= ~known.unsqueeze(2)  # unknown or padded positions allow every tag
        constrained = emissions.masked_fill(~allowed, _EXCLUDED)
        both = self.log_partition(torch.cat([emissions, constrained]), torch.cat([mask, mask]))
        log_z, log_gold = both.chunk(2)
        return log_z - log_gold

    # ----------------------------------------------------------------- decode
    def decode(self, emissions: Tensor, mask: Tensor) -> Tensor:
        """Best tag sequence per sentence by Viterbi, ``LongTensor[B, W]``; padding is 0."""
        emissions = emissions.float()
        self._check(emissions, mask)
        batch, width, _ = emissions.shape
        score = self.start_transitions + emissions[:, 0]  # [B, C]
        trans = self.transitions.unsqueeze(0)
        backpointers = []  # backpointers[t-1][b, j]: best previous tag when tag j is at t
        for t in range(1, width):
            best, idx = (score.unsqueeze(2) + trans).max(dim=1)  # over C_from
            score = torch.where(mask[:, t].unsqueeze(1), best + emissions[:, t], score)
            backpointers.append(idx)
        score = score + self.end_transitions
        best_last = score.argmax(dim=1)  # [B]

        lengths = mask.sum(dim=1)
        out = torch.zeros(batch, width, dtype=torch.long, device=emissions.device)
        cur = best_last
        # Walk back from the last column; a sentence joins the walk at its own
        # last real word (t == length-1) and is 0 on its padding.
        for t in range(width - 1, -1, -1):
            cur = torch.where(lengths - 1 == t, best_last, cur)
            inside = t < lengths
            out[:, t] = torch.where(inside, cur, torch.zeros_like(cur))
            if t > 0:
                prev = backpointers[t - 1].gather(1, cur.unsqueeze(1)).squeeze(1)
                cur = torch.where(inside, prev, cur)
        return out

    # ---------------------------------------------------------------- helpers
    def _check(self, emissions: Tensor, mask: Tensor) -> None:
        if emissions.dim() != 3 or emissions.size(2) != self.num_tags:
            raise ValueError(
                f"emissions must be [B, W, {self.num_tags}], got {tuple(emissions.shape)}"
            )
        if mask.shape != emissions.shape[:2]:
            raise ValueError(
                f"mask {tuple(mask.shape)} does not match emissions {tuple(emissions.shape)}"
            )
        if mask.dtype != torch.bool:
            raise TypeError(f"mask must be bool, got {mask.dtype}")
        if emissions.size(1) == 0:
            raise ValueError("emissions have no time steps (W == 0)")
