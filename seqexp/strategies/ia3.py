"""``freeze=ia3``: learned rescaling vectors, through PEFT (Liu et al. 2022, "(IA)^3", T-Few).

Three vectors per layer train, all initialised to ones (training starts from the pretrained
encoder): ``l_k`` and ``l_v`` scale the attention keys and values (each projection's output), and
``l_ff`` scales the feed-forward block's inner activations (the input of its second linear layer,
a PEFT ``feedforward_modules`` entry). The head trains fully. ``peft.IA3Config`` / ``get_peft_model``
do the work (``seqexp/strategies/adapters.py``: names, checkpoints, dropout); the vectors can be
merged into the weights (``merge_and_unload``) and predict the same.

Targets per model type, as regexes so that exactly these modules match: BERT and RoBERTa
``attention.self.key/value`` and ``layer.<i>.output.dense`` (the FFN's second layer; not
``attention.output.dense``, which PEFT's own table also catches); ALBERT ``attention.key/value`` and
``ffn_output`` of its shared layer. ALBERT shares one layer's weights across all depths
(albert-base: 1 group serving 12 depths), so one set of vectors serves all depths too: the same
scaling applies at every depth, L times fewer trained values than a BERT of the same size.
"""

from __future__ import annotations

from seqexp.errors import ConfigError
from seqexp.strategies.adapters import PeftAdapter

_BERT_FFN = r".*\.layer\.\d+\.output\.dense"
_ALBERT_FFN = r".*\.ffn_output"


class IA3(PeftAdapter):
    prefix = "ia3_"
    TARGETS = {
        "bert": {"target_modules": rf".*\.attention\.self\.(key|value)|{_BERT_FFN}", "feedforward_modules": _BERT_FFN},
        "roberta": {"target_modules": rf".*\.attention\.self\.(key|value)|{_BERT_FFN}",
                    "feedforward_modules": _BERT_FFN},
        "albert": {"target_modules": rf".*\.attention\.(key|value)|{_ALBERT_FFN}", "feedforward_modules": _ALBERT_FFN},
    }

    def __init__(self, *, feedforward_modules=None, **rest):
        super().__init__(**rest)
        self.feedforward_modules = feedforward_modules

    def check(self, cfg) -> None:
        super().check(cfg)
        if (self.feedforward_modules is None) != (self.target_modules is None):
            raise ConfigError("`freeze.feedforward_modules`: set it together with `freeze.target_modules` "
                              "(the feed-forward modules among them), or leave both null")

    def targets(self, model_type: str) -> dict:
        if self.target_modules is not None:
            return {"target_modules": self.target_modules, "feedforward_modules": self.feedforward_modules}
        return super().targets(model_type)

    def peft_config(self, model_type: str):
        from peft import IA3Config

        return IA3Config(**self.targets(model_type))
