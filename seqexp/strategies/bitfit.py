"""``freeze=bitfit``: only the encoder's bias terms and the head train (Ben Zaken et al. 2022, "BitFit").

Every bias of the encoder (attention query/key/value/output, feed-forward, layer norms, embedding
layer norm) trains; every weight matrix and embedding table stays as pretrained. Dropout stays on
wherever something trains, as in the paper's fine-tuning.
"""

from __future__ import annotations

from seqexp.strategies.base import Strategy


class BitFit(Strategy):
    def trainable(self, encoder, phase):
        return {n for n, _ in encoder.named_parameters() if n == "bias" or n.endswith(".bias")}

    def static(self, phase):
        return False
