"""What every fine-tuning strategy says, and the structure helpers strategies share.

A strategy is one class here and one ``conf/freeze/<name>.yaml`` that selects it by
``_target_`` (the config group keeps the user's word: ``freeze=last,unfreeze``). It says:

- ``check(cfg)``: what it checks in the config, before torch is imported;
- ``prepare(encoder)``: how it prepares the encoder (it may wrap it, as LoRA does);
- ``trainable(encoder, phase)``: the encoder parameters that train in a phase;
- ``lr(part, name, optim, phase)``: the learning rate of each parameter (one per layer, if it likes);
- ``phase_at(epoch, step)`` and ``callbacks()``: when its phases change (gradual unfreezing);
- ``static(phase)``: whether the encoder's outputs are fixed in a phase, so the feature cache applies;
- ``eval_modules(encoder, phase)``: the modules that must stay in eval mode (no dropout) in a phase;
- ``mixer(...)``: an optional trainable module between the encoder's word states and the head.

The Tagger (``seqexp/models/tagger.py``) does the rest the same way for every strategy: it sets
``requires_grad``, gives the optimizer exactly the parameters that train (newly trainable ones
join it as new parameter groups when a phase starts), keeps the ``eval_modules`` in eval mode,
and stores in every checkpoint exactly the parameters the strategy trains in any phase.

Nothing here imports torch at module level: config checks stay fast.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from seqexp.errors import ConfigError

if TYPE_CHECKING:
    from torch import nn



class Strategy:
    """Head-only training: the base every strategy refines. Subclasses override what differs."""

    #: The number of phases (gradual unfreezing, probe-then-fine-tune have more than one).
    phases: int = 1
    #: Which encoder states reach the head: ``"last"`` (the top layer) or ``"all"`` (every layer, for a mixer).
    hidden: str = "last"

    def __init__(self, *, strategy: str, max_epochs: int, patience: int, lr_scale: float):
        self.name = strategy
        self.max_epochs = max_epochs
        self.patience = patience
        self.lr_scale = lr_scale

    # -- config time (no torch) ----------------------------------------------------------------------
    def check(self, cfg) -> None:
        """Raise ConfigError naming the key for a value this strategy cannot use (the whole config is given)."""

    # -- build time ----------------------------------------------------------------------------------
    def prepare(self, encoder: nn.Module) -> nn.Module:
        """The encoder the Tagger runs: this one, or a wrapper of it."""
        return encoder

    def mixer(self, num_layers: int, hidden_size: int) -> nn.Module | None:
        """A trainable module applied to the pooled word states before the head (``hidden == "all"``:
        they are ``[B, W, num_layers, H]``)."""
        return None

    def trainable(self, encoder: nn.Module, phase: int) -> set[str]:
        """Names (``encoder.named_parameters()``) of the encoder parameters that train in ``phase``."""
        return set()

    def eval_modules(self, encoder: nn.Module, phase: int) -> list[nn.Module]:
        """Modules kept in eval mode in ``phase`` even while Lightning trains (default: those whose
        every parameter is frozen in this phase, and every module of a fully frozen encoder)."""
        names = self.trainable(encoder, phase)
        if not names:
            return list(encoder.modules())
        return frozen_subtrees(encoder, names)

    def static(self, phase: int) -> bool:
        """Whether the encoder's outputs cannot change in ``phase`` (frozen, in eval): cached features apply."""
        return True

    def lr(self, part: str, name: str, optim, phase: int) -> float:
        """Learning rate of parameter ``name`` of ``part`` (head | mixer | encoder) in ``phase``."""
        base = optim.encoder_lr if part == "encoder" else optim.lr
        return base * self.lr_scale

    def phase_at(self, epoch: int, step: int) -> int:
        """The phase of training at this epoch (0-based) and optimizer step."""
        return 0

    def callbacks(self) -> list:
        """Lightning callbacks of this strategy (multi-phase ones change phase on a schedule)."""
        if self.phases == 1:
            return []
        from seqexp.strategies.phases import PhaseSchedule

        return [PhaseSchedule(self)]

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name})"


def whole_number(value: Any, key: str, minimum: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ConfigError(f"`{key}`: must be a whole number >= {minimum}, got {value!r}")
    return value


# -- structure of an encoder ---------------------------------------------------------------------------
def blocks(encoder: nn.Module) -> list[tuple[str, nn.Module]]:
    """(qualified name, module) of the stacked transformer blocks, bottom to top.

    ALBERT shares one set of layer weights across all depths: it has ``num_hidden_groups``
    blocks (1 for albert-base), each serving several depths (``seqexp.models.encoders.transformer_layers``).
    """
    from seqexp.models.encoders import transformer_layers

    names = {id(m): n for n, m in encoder.named_modules()}
    return [(names[id(m)], m) for m in transformer_layers(encoder)]


def under(name: str, prefixes: Iterable[str]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def names_under(encoder: nn.Module, prefixes: Iterable[str]) -> set[str]:
    prefixes = list(prefixes)
    return {n for n, _ in encoder.named_parameters() if under(n, prefixes)}


def depth_of(encoder: nn.Module) -> dict[str, int]:
    """Each parameter's depth: 0 below the first block (embeddings, ALBERT's projection), ``l``
    for block ``l`` (1-based), ``L + 1`` above the top block (pooler, final norms)."""
    stack = blocks(encoder)
    first = {}
    for depth, (prefix, _) in enumerate(stack, start=1):
        for n, _ in encoder.named_parameters():
            if under(n, [prefix]):
                first[n] = depth
    embeddings = _embedding_prefixes(encoder)
    out = {}
    for n, _ in encoder.named_parameters():
        if n in first:
            out[n] = first[n]
        elif under(n, embeddings):
            out[n] = 0
        else:
            out[n] = len(stack) + 1
    return out


def _embedding_prefixes(encoder: nn.Module) -> list[str]:
    from seqexp.models.encoders import embeddings_module

    names = {id(m): n for n, m in encoder.named_modules()}
    prefixes = [names[id(embeddings_module(encoder))]]
    for n, _ in encoder.named_modules():  # ALBERT: the embedding-to-hidden projection below the shared layers
        if n.endswith("embedding_hidden_mapping_in"):
            prefixes.append(n)
    return prefixes


def frozen_subtrees(encoder: nn.Module, trainable: set[str]) -> list[nn.Module]:
    """Modules none of whose parameters (recursively) train, except parameter-free leaves inside a
    trainable block (its dropout), which follow their block."""
    owner = {}
    for mod_name, module in encoder.named_modules():
        for p_name, _ in module.named_parameters(recurse=True):
            full = f"{mod_name}.{p_name}" if mod_name else p_name
            owner.setdefault(mod_name, set()).add(full)
    trains = {m for m, params in owner.items() if params & trainable}
    out = []
    for mod_name, module in encoder.named_modules():
        if mod_name in trains:
            continue
        if mod_name not in owner:  # no parameters: dropout, activations; it follows its parent
            parent = mod_name.rsplit(".", 1)[0] if "." in mod_name else ""
            if parent in trains:
                continue
        out.append(module)
    return out
