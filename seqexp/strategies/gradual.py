"""``freeze=gradual``: gradual unfreezing (Howard & Ruder 2018, ULMFiT).

Phase 0 trains the head alone; each phase after it unfreezes one more transformer block, from
the top down, every ``freeze.every_n_epochs`` epochs (or every ``freeze.every_n_steps`` optimizer
steps); the last phase also unfreezes the embeddings, so the whole encoder trains. An encoder of
``L`` blocks has ``L + 2`` phases. Newly unfrozen parameters join the optimizer as new parameter
groups with their learning rate (``optim.encoder_lr x freeze.lr_scale``, on the same schedule),
and their modules leave eval mode.

Resume-safe (Lightning issue #6891): every checkpoint stores the phase and every parameter the
strategy trains in any phase, so a run resumed after an unfreeze rebuilds the optimizer with the
same groups and restores the trained blocks, not the pretrained ones.

ALBERT (one shared block): phase 1 unfreezes the shared block, phase 2 the embeddings.
Early stopping counts only the dev evaluations of the last phase (``seqexp.training.selection``).
"""

from __future__ import annotations

from seqexp.errors import ConfigError
from seqexp.strategies.base import Strategy, blocks, names_under, whole_number


class Gradual(Strategy):
    def __init__(self, *, every_n_epochs: int | None = 1, every_n_steps: int | None = None, **budget):
        super().__init__(**budget)
        self.every_n_epochs = every_n_epochs
        self.every_n_steps = every_n_steps
        self.phases = 2  # known once the encoder is (prepare); enough to say "more than one"

    def check(self, cfg) -> None:
        if (self.every_n_epochs is None) == (self.every_n_steps is None):
            raise ConfigError("`freeze.every_n_epochs`/`freeze.every_n_steps`: set exactly one of them (the other null)")
        if self.every_n_epochs is not None:
            whole_number(self.every_n_epochs, "freeze.every_n_epochs", 1)
        else:
            whole_number(self.every_n_steps, "freeze.every_n_steps", 1)

    def prepare(self, encoder):
        self.phases = len(blocks(encoder)) + 2
        return encoder

    def trainable(self, encoder, phase):
        stack = [name for name, _ in blocks(encoder)]
        if phase >= len(stack) + 1:
            return {n for n, _ in encoder.named_parameters()}
        return names_under(encoder, stack[len(stack) - phase:] if phase else [])

    def static(self, phase):
        return phase == 0

    def phase_at(self, epoch, step):
        done = epoch // self.every_n_epochs if self.every_n_epochs is not None else step // self.every_n_steps
        return min(done, self.phases - 1)


