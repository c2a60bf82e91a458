"""Layer mixing: one vector per word from all of an encoder's hidden layers (``freeze=scalar_mix``)."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class ScalarMix(nn.Module):
    """``gamma * sum_j softmax(s)_j h_j`` over the layers j = 0 (embeddings) .. L (Peters et al. 2018, ELMo, eq. 1).

    ``s`` starts at zero (the plain mean of the layers) and ``gamma`` at one; both train.
    Input ``[B, W, layers, H]``, output ``[B, W, H]``.
    """

    def __init__(self, num_layers: int):
        super().__init__()
        self.num_layers = num_layers
        self.scalars = nn.Parameter(torch.zeros(num_layers))
        self.gamma = nn.Parameter(torch.ones(()))

    def weights(self) -> Tensor:
        return torch.softmax(self.scalars, dim=0)

    def forward(self, layers: Tensor) -> Tensor:
        if layers.dim() != 4 or layers.size(2) != self.num_layers:
            raise ValueError(f"ScalarMix of {self.num_layers} layers got word states of shape {tuple(layers.shape)}")
        return self.gamma * torch.einsum("bwlh,l->bwh", layers, self.weights().to(layers.dtype))
