"""The Tagger: any encoder + a pluggable tagging head, as one LightningModule.

subword states --(first | last | mean over each word's subwords)--> word states
--> head --> per-word emissions --> loss (training) or decoded label ids (eval).

Evaluation windows are stitched back into whole sentences, so every word of a
split gets exactly one prediction, however long its sentence is.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import lightning.pytorch as L
import numpy as np
import torch
from torch import nn

from seqexp.errors import NonFiniteLossError
from seqexp.metrics import evaluate
from seqexp.models import ALIGNMENTS
from seqexp.models.heads import TaggingHead
from seqexp.training.optim import add_param_groups, build_optimizer, build_scheduler, param_groups, set_base_lrs

if TYPE_CHECKING:
    from seqexp.strategies import Strategy

log = logging.getLogger("seqexp")

MetricSink = Callable[[dict[str, float], int], None]


def pool_words(hidden: torch.Tensor, starts: torch.Tensor, ends: torch.Tensor, how: str) -> torch.Tensor:
    """Word vectors [B, W, ...] from subword states [B, T, ...] and word spans [B, W]; ``...`` is [H],
    or [L + 1, H] for every layer's states (``encoder_states(..., "all")``)."""
    rest = hidden.shape[2:]

    def at(index: torch.Tensor) -> torch.Tensor:
        return index.view(*index.shape, *(1,) * len(rest)).expand(-1, -1, *rest)

    if how == "first":
        return hidden.gather(1, at(starts))
    if how == "last":
        return hidden.gather(1, at(ends - 1))
    if how == "mean":
        csum = nn.functional.pad(hidden.cumsum(1), (0, 0) * len(rest) + (1, 0))
        upper = csum.gather(1, at(ends))
        lower = csum.gather(1, at(starts))
        return (upper - lower) / at((ends - starts).clamp(min=1)).to(hidden.dtype)
    raise ValueError(f"alignment must be one of {ALIGNMENTS}, got {how!r}")


def encoder_states(encoder: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                   layers: str = "last") -> torch.Tensor:
    """Subword states [B, T, H] of the top layer (``layers="last"``), or [B, T, L + 1, H] of the
    embeddings and every layer (``"all"``, a strategy whose ``hidden`` is ``"all"``)."""
    if layers == "last":
        return encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    if layers == "all":
        out = encoder(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True)
        return torch.stack(out.hidden_states, dim=2)
    raise ValueError(f"layers must be 'last' or 'all', got {layers!r}")


class Tagger(L.LightningModule):
    """``strategy`` (``seqexp.strategies``) says which parameters train in which phase; the Tagger applies
    it the same way for every strategy. ``encoder`` is what runs (maybe ``torch.compile``'d);
    ``base_encoder`` the module the strategy prepared, whose parameter names it speaks of."""

    def __init__(self, encoder: nn.Module, head: TaggingHead, labels: list[str], *,
                 strategy: Strategy, alignment: str, optim_cfg, scheduler_cfg,
                 scoring_scheme: str | None, gold: dict[str, list[list[str]]],
                 metric_sink: MetricSink | None = None, mixer: nn.Module | None = None,
                 base_encoder: nn.Module | None = None):
        super().__init__()
        self.encoder = encoder
        self.mixer = mixer
        self.head = head
        self.labels = labels
        self.alignment = alignment
        self.optim_cfg = optim_cfg
        self.scheduler_cfg = scheduler_cfg
        self.strategy = strategy
        self._base = [base_encoder if base_encoder is not None else encoder]  # a list: not a second submodule
        self.scoring_scheme = scoring_scheme
        self.gold = gold
        self.metric_sink = metric_sink
        # What the strategy trains in any phase: kept in every checkpoint. The rest is never trained: it
        # comes back from the pretrained source, and checkpoints (resume, best dev weights) leave it out.
        base = self._base[0]
        ever = set().union(*(strategy.trainable(base, p) for p in range(strategy.phases)))
        trained = {id(p) for n, p in base.named_parameters() if n in ever}
        trained |= {id(p) for p in head.parameters()} | {id(p) for p in (mixer.parameters() if mixer else ())}
        self.never_trained = {n for n, p in self.named_parameters() if id(p) not in trained}
        self.encoder_ever_trains = bool(ever)  # in some phase (gradual, lp_ft: not in the first)
        self.strict_loading = not self.never_trained
        self.phase = -1
        self._eval_modules: list[nn.Module] = []
        self.set_phase(0)
        self.results: dict[str, dict] = {}
        self.predictions: dict[str, list[list[str]]] = {}
        self._pred: list[np.ndarray] | None = None
        self._loss_sum = 0.0
        self._loss_count = 0
        self.first_step_at: float | None = None
        self.loaded: dict = {}  # epoch and dev scores of the last checkpoint loaded (the best dev weights, for test)

    def parameter_counts(self) -> tuple[int, int]:
        """(parameters the strategy trains in any phase, all parameters)."""
        total = sum(p.numel() for p in self.parameters())
        trained = sum(p.numel() for n, p in self.named_parameters() if n not in self.never_trained)
        return trained, total

    # -- phases and modes ----------------------------------------------------
    @property
    def encoder_trains(self) -> bool:
        return any(p.requires_grad for p in self._base[0].parameters())

    def set_phase(self, phase: int) -> None:
        """The strategy's trainable set and eval-mode modules of ``phase``; the head always trains."""
        base = self._base[0]
        names = self.strategy.trainable(base, phase)
        for name, param in base.named_parameters():
            param.requires_grad_(name in names)
        self.head.requires_grad_(True)
        if self.mixer is not None:
            self.mixer.requires_grad_(True)
        self.phase = phase
        self._eval_modules = self.strategy.eval_modules(base, phase)
        if self.training:
            for module in base.modules():
                module.training = True
            self._keep_eval()

    def enter_phase(self, phase: int) -> None:
        """Mid-training: newly trainable parameters join the optimizer as new groups, on the same schedule."""
        before = {id(p) for p in self.parameters() if p.requires_grad}
        self.set_phase(phase)
        optimizer = self.trainer.optimizers[0]
        scheduler = self.trainer.lr_scheduler_configs[0].scheduler
        named = {id(p): (part, n) for part, n, p in self._all_named()}
        set_base_lrs(optimizer, scheduler, [  # a strategy may change a group's rate between phases
            self.strategy.lr(*named[id(g["params"][0])], self.optim_cfg, phase) for g in optimizer.param_groups])
        new = [(part, n, p) for part, n, p in self._all_named() if p.requires_grad and id(p) not in before]
        add_param_groups(optimizer, scheduler, param_groups(new, self.strategy, self.optim_cfg, phase))

    def _keep_eval(self) -> None:
        # Flag by flag, not .eval(): that would recurse into trainable layers below an ancestor.
        # Every module counts, not only leaves: attention blocks apply dropout functionally.
        for module in self._eval_modules:
            module.training = False

    def train(self, mode: bool = True):
        """Lightning calls ``.train()`` every epoch: frozen parts must stay in eval (no dropout)."""
        super().train(mode)
        if mode:
            self._keep_eval()
        return self

    def _all_named(self):
        """(part, name within the part, parameter) of every parameter, head first."""
        parts = [("head", self.head), ("mixer", self.mixer), ("encoder", self._base[0])]
        return [(part, n, p) for part, module in parts if module is not None for n, p in module.named_parameters()]

    # -- forward -------------------------------------------------------------
    def word_features(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        if "features" in batch and ("input_ids" not in batch or self.strategy.static(self.phase)):
            words = batch["features"]  # a frozen encoder's cached output (seqexp.models.feature_cache)
        else:
            with torch.set_grad_enabled(self.encoder_trains and torch.is_grad_enabled()):
                hidden = encoder_states(self.encoder, batch["input_ids"], batch["attention_mask"],
                                        self.strategy.hidden)
            words = pool_words(hidden, batch["word_starts"], batch["word_ends"], self.alignment)
        return self.mixer(words) if self.mixer is not None else words

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.head(self.word_features(batch), batch["word_mask"])

    # -- training ------------------------------------------------------------
    def training_step(self, batch, batch_idx):
        emissions = self(batch)
        loss = self.head.loss(emissions, batch["labels"], batch["word_mask"])
        value = float(loss.detach())
        if not math.isfinite(value):
            raise NonFiniteLossError(
                f"training loss is {value} at epoch {self.current_epoch}, step {self.global_step}; "
                "lower `optim.lr`/`optim.encoder_lr` or check the data"
            )
        self._loss_sum += value * len(batch["labels"])
        self._loss_count += len(batch["labels"])
        return loss

    def on_train_epoch_start(self) -> None:
        self._loss_sum, self._loss_count = 0.0, 0
        self._epoch_started = time.perf_counter()

    def on_train_batch_start(self, batch, batch_idx) -> None:
        if self.first_step_at is None:
            self.first_step_at = time.time()  # wall clock: compared with the process's start

    # A run resumed mid-epoch (seqexp.training.checkpoints) reports the whole epoch's train_loss.
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # Several processes: the sums over every rank's windows (every rank saves; rank 0 writes the file).
        checkpoint["train_loss_sum"] = self._epoch_loss()
        # The dev scores these weights earned: a best-dev checkpoint says what it was chosen for.
        dev = self.results.get("dev", {})
        checkpoint["dev_result"] = {k: v for k, v in dev.items() if isinstance(v, float)}
        checkpoint["seqexp_phase"] = self.phase
        state = checkpoint["state_dict"]
        for name in self.never_trained:
            state.pop(name, None)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        """Called before the weights load, and on resume before the optimizer is built: the phase the
        checkpoint was saved in decides the trainable set, the optimizer's groups and the features used."""
        self.set_phase(int(checkpoint.get("seqexp_phase", 0)))
        # The saved sums are every rank's: rank 0 carries them on, the other ranks count afresh.
        self._loss_sum, self._loss_count = checkpoint.get("train_loss_sum", [0.0, 0]) \
            if self.global_rank == 0 else (0.0, 0)
        self.loaded = {"epoch": int(checkpoint["epoch"]), "dev": dict(checkpoint.get("dev_result", {}))}
        self._epoch_started = time.perf_counter()

    def _epoch_loss(self) -> list:
        """[sum, count] of this epoch's per-window train loss over every rank's windows (one process:
        its own). A collective under DDP: every rank calls it at the same point."""
        if self._trainer is None or self.trainer.world_size == 1:
            return [self._loss_sum, self._loss_count]
        total = self.trainer.strategy.reduce(
            torch.tensor([self._loss_sum, float(self._loss_count)], dtype=torch.float64, device=self.device),
            reduce_op="sum")
        return [float(total[0]), int(total[1])]

    def on_train_epoch_end(self) -> None:
        loss_sum, count = self._epoch_loss()
        if count:
            loss = loss_sum / count
            self._emit({"train_loss": loss}, self.current_epoch)
            dev = self.results.get("dev", {})
            val = f"  val_f1 {dev['f1']:.4f}" if dev.get("epoch") == self.current_epoch else ""
            log.info("epoch %d/%d: train_loss %.4f%s  (%.1fs)", self.current_epoch + 1,
                     self.trainer.max_epochs, loss, val, time.perf_counter() - self._epoch_started)

    # -- evaluation ----------------------------------------------------------
    def _start_eval(self, split: str) -> None:
        self._pred = [np.full(len(g), -1, dtype=np.int64) for g in self.gold[split]]
        self._eval_loss = [0.0, 0]

    def _eval_step(self, batch) -> None:
        emissions = self(batch)
        loss = self.head.loss(emissions, batch["labels"], batch["word_mask"])
        self._eval_loss[0] += float(loss) * len(batch["labels"])
        self._eval_loss[1] += len(batch["labels"])
        decoded = self.head.decode(emissions, batch["word_mask"]).cpu().numpy()
        score = batch["score_mask"].cpu().numpy()
        for row, (sent, first) in enumerate(zip(batch["sentence"].tolist(), batch["first_word"].tolist())):
            cols = np.flatnonzero(score[row])
            self._pred[sent][first + cols] = decoded[row, cols]

    def _gather_ranks(self, split: str) -> None:
        """Several processes: each predicted its share of the windows; every rank gets the union.
        A word predicted by two ranks (a window served twice) is an error, as is one by none."""
        sizes = [len(p) for p in self._pred]
        mine = torch.from_numpy(np.concatenate(self._pred) if sizes else np.zeros(0, dtype=np.int64))
        every = self.all_gather(mine.to(self.device)).cpu()  # [ranks, words of the split]
        twice = int(((every >= 0).sum(0) > 1).sum())
        if twice:
            raise RuntimeError(f"{twice} words of the {split} split were predicted by more than one process")
        merged = every.max(0).values.numpy()
        bounds = np.cumsum([0, *sizes])
        self._pred = [merged[bounds[i] : bounds[i + 1]] for i in range(len(sizes))]
        loss = self.all_gather(torch.tensor(self._eval_loss, dtype=torch.float64, device=self.device)).cpu()
        self._eval_loss = loss.sum(0).tolist()

    def _finish_eval(self, split: str) -> dict:
        ranks = self.trainer.world_size if self._trainer is not None else 1
        if ranks > 1:
            self._gather_ranks(split)
        missing = sum(int((p < 0).sum()) for p in self._pred)
        if missing:
            raise RuntimeError(f"{missing} words of the {split} split got no prediction")
        names = np.asarray(self.labels, dtype=object)
        pred = [names[p].tolist() for p in self._pred]
        if ranks == 1 or self.global_rank == 0:  # scored once; the other ranks get rank 0's scores
            result = evaluate(self.gold[split], pred, self.scoring_scheme)
            result["loss"] = self._eval_loss[0] / max(1, self._eval_loss[1])
        else:
            result = None
        if ranks > 1:  # selection and early stopping must decide the same on every rank
            result = self.trainer.strategy.broadcast(result, src=0)
        self.results[split] = result
        self.predictions[split] = pred
        self._pred = None
        return result

    def on_validation_epoch_start(self) -> None:
        self._start_eval("dev")

    def validation_step(self, batch, batch_idx) -> None:
        self._eval_step(batch)

    def on_validation_epoch_end(self) -> None:
        result = self._finish_eval("dev")
        scalars = {f"val_{k}": v for k, v in result.items() if isinstance(v, float)}
        result["epoch"] = self.current_epoch
        self.log("val_f1", result["f1"], prog_bar=True)
        for key in ("strict_f1", "accuracy"):  # what trainer.monitor may select on
            if key in result:
                self.log(f"val_{key}", result[key])
        self._emit(scalars, self.current_epoch)

    def on_test_epoch_start(self) -> None:
        self._start_eval("test")

    def test_step(self, batch, batch_idx) -> None:
        self._eval_step(batch)

    def on_test_epoch_end(self) -> None:
        self._finish_eval("test")

    def _emit(self, metrics: dict[str, float], step: int) -> None:
        if self.metric_sink is not None and not self.trainer.sanity_checking:
            self.metric_sink(metrics, step)

    # -- optimisation --------------------------------------------------------
    def configure_optimizers(self):
        mixed = "mixed" in str(self.trainer.precision)
        # Groups phase by phase, in the order they joined: a resumed run rebuilds those of an uninterrupted one.
        groups, seen = [], set()
        for phase in range(self.phase + 1):
            trains = set(self.strategy.trainable(self._base[0], phase))
            named = [(part, n, p) for part, n, p in self._all_named()
                     if (part != "encoder" or n in trains) and id(p) not in seen]
            seen |= {id(p) for _, _, p in named}
            groups += param_groups(named, self.strategy, self.optim_cfg, self.phase)
        optimizer = build_optimizer(groups, self.optim_cfg, fused=not mixed)
        steps = int(self.trainer.estimated_stepping_batches)
        scheduler = build_scheduler(optimizer, self.scheduler_cfg, steps)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
