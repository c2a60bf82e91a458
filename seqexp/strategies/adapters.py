"""Adapters through the PEFT library (``peft``): what ``freeze=lora`` and ``freeze=ia3`` share.

``prepare`` wraps the encoder with ``peft.get_peft_model``: the pretrained weights stay frozen and
the adapter's few parameters are injected into the target modules. The wrap renames every encoder
parameter (``encoder.layer.0.attention.self.query.weight`` becomes
``base_model.model.encoder.layer.0.attention.self.query.base_layer.weight``; the adapter's are
``...query.lora_A.default.weight``), and ``trainable`` speaks the wrapped names. The head trains
fully. The encoder's outputs change as the adapter trains, so the feature cache never applies.

Checkpoints hold the adapter and the head only (everything else is ``Tagger.never_trained``).
Which modules keep dropout: those whose block holds an adapter (LoRA's own dropout follows its
adapted layer); the fully frozen rest (embeddings, feed-forward blocks without an adapter) runs in
eval mode, as every strategy's frozen modules do.

Target modules come from ``TARGETS`` for BERT, RoBERTa and ALBERT (by ``config.model_type``), from
PEFT's own table for other model types, or from ``freeze.target_modules``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from seqexp.errors import ConfigError
from seqexp.strategies.base import Strategy

if TYPE_CHECKING:
    from torch import nn


class PeftAdapter(Strategy):
    """Base of the PEFT strategies: ``peft_config(model_type)`` says which adapter goes where."""

    #: The adapter's parameter-name prefix in PEFT (``LoraModel.prefix``, ``IA3Model.prefix``).
    prefix: str = ""
    #: Per ``config.model_type``: the PEFT config keys naming the modules that get an adapter.
    TARGETS: dict[str, dict[str, Any]] = {}

    def __init__(self, *, target_modules=None, **budget):
        super().__init__(**budget)
        self.target_modules = target_modules

    def check(self, cfg) -> None:
        names = self.target_modules
        if names is not None and not (isinstance(names, str) and names) and not (
                isinstance(names, (list, tuple)) and names and all(isinstance(n, str) and n for n in names)):
            raise ConfigError("`freeze.target_modules`: must be null (the model type's table), a regex or a "
                              f"list of module names, got {names!r}")

    def targets(self, model_type: str) -> dict[str, Any]:
        """The PEFT config keys that place the adapter on an encoder of this model type."""
        if self.target_modules is not None:
            return {"target_modules": self.target_modules}
        if model_type in self.TARGETS:
            return dict(self.TARGETS[model_type])
        return {}  # PEFT's own table for this model type, or its error naming the type

    def peft_config(self, model_type: str):
        raise NotImplementedError

    def prepare(self, encoder: nn.Module) -> nn.Module:
        from peft import get_peft_model

        model_type = getattr(encoder.config, "model_type", "?")
        try:
            return get_peft_model(encoder, self.peft_config(model_type))
        except ValueError as exc:  # PEFT knows no target modules for this model type, or none matched
            raise ConfigError(f"`freeze.target_modules`: {self.name} cannot place its adapter on a "
                              f"{model_type!r} encoder ({str(exc).splitlines()[0]}); name the modules, "
                              "e.g. freeze.target_modules=[query,value]") from None

    def trainable(self, encoder: nn.Module, phase: int) -> set[str]:
        return {n for n, _ in encoder.named_parameters() if f".{self.prefix}" in n}

    def eval_modules(self, encoder: nn.Module, phase: int) -> list[nn.Module]:
        # As in the papers (Hu et al.; Liu et al.), adapters train inside a model in train mode: every dropout
        # of the frozen encoder stays on, whatever the architecture's module layout (BERT's hidden-state
        # dropout sits beside frozen weights only, ALBERT's beside adapted ones).
        return []

    def static(self, phase: int) -> bool:
        return False
