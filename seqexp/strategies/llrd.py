"""``freeze=llrd``: full fine-tuning with layer-wise learning-rate decay.

Howard & Ruder 2018 ("discriminative fine-tuning", ULMFiT); Clark et al. 2020 (ELECTRA, decay 0.8).
Block ``l`` of ``L`` (1-based, bottom to top) learns at ``encoder_lr x decay^(L-l)``: the top block
at ``optim.encoder_lr``, each block below ``decay`` times slower, the embeddings (depth 0) slowest at
``encoder_lr x decay^L``. The head learns at ``optim.lr``. All times ``freeze.lr_scale``.

ALBERT shares one block across all depths (albert-base: ``L = 1``): the shared block learns at
``encoder_lr`` and the embeddings (with the embedding-to-hidden projection) at ``encoder_lr x decay``.
"""

from __future__ import annotations

from seqexp.errors import ConfigError
from seqexp.strategies.base import blocks, depth_of
from seqexp.strategies.unfreeze import Unfreeze


class LayerwiseDecay(Unfreeze):
    def __init__(self, *, decay: float, **budget):
        super().__init__(**budget)
        self.decay = decay
        self._depth: dict[str, int] = {}
        self._top = 0

    def check(self, cfg) -> None:
        d = self.decay
        if not isinstance(d, (int, float)) or isinstance(d, bool) or not 0 < d <= 1:
            raise ConfigError(f"`freeze.decay`: must be a number in (0, 1] (1: no decay), got {d!r}")

    def prepare(self, encoder):
        self._depth = depth_of(encoder)
        self._top = len(blocks(encoder))  # L: the top block's depth (parameters above it, a pooler, share it)
        return encoder

    def lr(self, part, name, optim, phase):
        if part != "encoder":
            return super().lr(part, name, optim, phase)
        depth = min(self._depth[name], self._top)
        return optim.encoder_lr * self.lr_scale * self.decay ** (self._top - depth)
