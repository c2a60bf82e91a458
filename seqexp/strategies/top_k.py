"""``freeze=top_k freeze.top_k=K``: the head and the top K transformer blocks train.

The embeddings and the blocks below stay frozen and in eval mode (no dropout where nothing
trains). ALBERT shares one set of layer weights across all depths (``num_hidden_groups`` groups,
1 for albert-base): there ``top_k`` unfreezes the layer *groups* that serve the top K depths.
With a single group that is the whole shared stack: ``top_k=1`` already trains the weights every
depth uses, while the embeddings and the embedding-to-hidden projection stay frozen.
"""

from __future__ import annotations

from seqexp.errors import ConfigError
from seqexp.strategies.base import Strategy, blocks, names_under, whole_number


def top_blocks(encoder, k: int) -> list[str]:
    """Qualified names of the blocks that serve the top ``k`` depths (ALBERT: their shared groups)."""
    stack = blocks(encoder)
    cfg = encoder.config
    if getattr(cfg, "model_type", "") == "albert":
        depth, groups = cfg.num_hidden_layers, cfg.num_hidden_groups
        per_group = depth // groups
        chosen = sorted({min(d // per_group, groups - 1) for d in range(max(0, depth - k), depth)})
        return [stack[g][0] for g in chosen]
    if k > len(stack):
        raise ConfigError(f"`freeze.top_k`: {k} is larger than the encoder's {len(stack)} layers")
    return [name for name, _ in stack[len(stack) - k:]] if k else []


class TopK(Strategy):
    def __init__(self, *, top_k: int, **budget):
        super().__init__(**budget)
        self.top_k = top_k

    def check(self, cfg) -> None:
        from seqexp.models.encoders import encoder_depth

        whole_number(self.top_k, "freeze.top_k", 0)
        depth = encoder_depth(cfg.model)
        if depth is not None and self.top_k > depth:
            raise ConfigError(f"`freeze.top_k`: {self.top_k} is larger than the depth of `model={cfg.model.name}` "
                              f"({depth} layers)")

    def trainable(self, encoder, phase):
        return names_under(encoder, top_blocks(encoder, self.top_k))

    def static(self, phase):
        return self.top_k == 0
