"""``freeze=lora``: low-rank adapters on the attention projections, through PEFT (Hu et al. 2022, "LoRA").

Each target weight ``W`` (query and value, as the paper adapts ``W_q`` and ``W_v``) becomes
``W + (alpha / r) B A`` with ``A`` (r x d_in, random) and ``B`` (d_out x r, zero at start, so training
starts from the pretrained encoder) the only encoder parameters that train; dropout ``freeze.dropout``
is applied to the adapter's input. The head trains fully. ``peft.LoraConfig`` / ``get_peft_model``
do the work (``seqexp/strategies/adapters.py``: names, checkpoints, dropout); a trained adapter can be
merged into ``W`` (``merge_and_unload``) and predicts the same.

Targets per model type: BERT and RoBERTa ``attention.self.query/value`` of every layer; ALBERT
``attention.query/value`` of its shared layer. ALBERT shares one layer's weights across all depths
(albert-base: 1 group serving 12 depths), so one adapter serves all depths too: the same update
``B A`` is added at every depth, and ALBERT trains L times fewer adapter weights than a BERT of the
same size and ``r`` (albert-base, r=8: 24,576; bert-base: 294,912).
"""

from __future__ import annotations

from seqexp.errors import ConfigError
from seqexp.strategies.adapters import PeftAdapter


class LoRA(PeftAdapter):
    prefix = "lora_"
    TARGETS = {
        "bert": {"target_modules": ["query", "value"]},
        "roberta": {"target_modules": ["query", "value"]},
        "albert": {"target_modules": ["query", "value"]},
    }

    def __init__(self, *, r: int, alpha: float, dropout: float, **rest):
        super().__init__(**rest)
        self.r = r
        self.alpha = alpha
        self.dropout = dropout

    def check(self, cfg) -> None:
        super().check(cfg)
        if not isinstance(self.r, int) or isinstance(self.r, bool) or self.r < 1:
            raise ConfigError(f"`freeze.r`: the adapter's rank must be a whole number >= 1, got {self.r!r}")
        a = self.alpha
        if not isinstance(a, (int, float)) or isinstance(a, bool) or not a > 0:
            raise ConfigError(f"`freeze.alpha`: the adapter's scale (alpha / r) needs a number > 0, got {a!r}")
        d = self.dropout
        if not isinstance(d, (int, float)) or isinstance(d, bool) or not 0 <= d < 1:
            raise ConfigError(f"`freeze.dropout`: must be a number in [0, 1), got {d!r}")

    def peft_config(self, model_type: str):
        from peft import LoraConfig

        return LoraConfig(r=self.r, lora_alpha=self.alpha, lora_dropout=self.dropout, bias="none",
                          **self.targets(model_type))
