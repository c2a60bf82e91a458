"""``freeze=unfreeze``: full fine-tuning, every encoder parameter and the head train (Devlin et al. 2019)."""

from __future__ import annotations

from seqexp.strategies.base import Strategy


class Unfreeze(Strategy):
    """Everything trains: embeddings, every layer, the head; dropout everywhere."""

    def trainable(self, encoder, phase):
        return {n for n, _ in encoder.named_parameters()}

    def eval_modules(self, encoder, phase):
        return []

    def static(self, phase):
        return False
