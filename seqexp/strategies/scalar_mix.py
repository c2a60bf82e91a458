"""``freeze=scalar_mix``: a frozen encoder, a learned softmax-weighted sum of all its hidden layers
with a scale gamma, and the head (Peters et al. 2018, ELMo, eq. 1; the feature-based rows of
Devlin et al. 2019, BERT, Table 7, which also pool layers of a frozen BERT; add ``head=bilstm``
for their 2-layer BiLSTM).

The Tagger gets every layer's word states, ``[B, W, L + 1, H]`` (the embeddings and each block,
``output_hidden_states``), and ``seqexp.models.mix.ScalarMix`` mixes them into ``[B, W, H]`` for the
head; its L + 2 parameters learn at the head's rate (``optim.lr x lr_scale``). The encoder never
changes, so all layers are served from the feature cache, stored as float16 unless
``trainer.feature_cache_dtype`` says otherwise: (L + 1) x H x 2 bytes per word.

Memory, CoNLL-2003 (train + dev + test: 301,418 words, ``-DOCSTART-`` lines excluded) x MiniLM
(``model=minilm``: 6 layers + embeddings = 7 x 384 float16 = 5,376 bytes per word): 1,620,423,168
bytes (1,620 MB, 1.51 GiB; 7 / 2 = 3.5 times freeze=last's float32 cache) computed from the word
counts. Built once (``model=minilm freeze=scalar_mix``, every split): the same 1,620,423,168 bytes of
vectors in memory, 1,620,598,639 bytes in the three cache files on disk; encoding took 216 s of
one CPU thread, peak RSS 3.3 GB.
"""

from __future__ import annotations

from seqexp.strategies.last import Last


class ScalarMixStrategy(Last):
    hidden = "all"

    def mixer(self, num_layers: int, hidden_size: int):
        from seqexp.models.mix import ScalarMix

        return ScalarMix(num_layers)
