"""Batches of subword windows for the Tagger: dynamic padding, length-grouped order.

Training windows never overlap (every word in a window is a training word);
evaluation windows overlap so that each word is predicted with context on both
sides (see ``seqexp.data.encoding``). Evaluation batches are sorted by length.
"""

from __future__ import annotations

import functools
import logging
import random
from collections.abc import Iterator, Sequence
from itertools import accumulate, chain

import lightning.pytorch as L
import torch
from torch.nn.utils.rnn import pad_sequence
from torch.utils.data import DataLoader, Sampler

from seqexp.data import memo
from seqexp.data.encoding import IGNORE, Window, count_split_sentences, encode_split
from seqexp.data.sentences import Sentence

log = logging.getLogger(__name__)


def label_vocabulary(train: Sequence[Sentence]) -> list[str]:
    """Labels seen in training, ``O`` first when present, the rest sorted (stable ids)."""
    labels = {tag for s in train for tag in s.tags}
    return (["O"] if "O" in labels else []) + sorted(labels - {"O"})


class LengthGroupedBatches(Sampler[list[int]]):
    """Shuffled batches of similar-length windows; each window exactly once per epoch.

    Windows are shuffled, cut into pools of ``pool_factor`` batches (a last pool of
    less than half that joins the one before it), sorted by length inside each
    pool, cut into batches, and the batches are shuffled.
    The order depends only on ``seed`` and the epoch (counted by ``__iter__``).
    ``resume_at`` makes the next ``__iter__`` continue a checkpointed epoch.

    Several processes (DDP: ``num_replicas`` > 1, this one ``rank``): training batches are the
    ``num_replicas x batch_size`` batches one process would make, each split into ``num_replicas``
    parts (windows ``rank::num_replicas`` of the length-sorted batch), so every window trains once
    per epoch across the ranks and every rank takes the same number of steps; a last batch with
    fewer windows than ranks joins the one before it. Evaluation (``shuffle=False``): the
    length-sorted windows are dealt out to the ranks (``rank::num_replicas``) and batched per rank,
    so every window is predicted by exactly one rank.
    """

    def __init__(self, lengths: Sequence[int], batch_size: int, seed: int, *,
                 grouped: bool = True, shuffle: bool = True, pool_factor: int = 50,
                 num_replicas: int = 1, rank: int = 0):
        self.lengths = list(lengths)
        self.batch_size = batch_size
        self.seed = seed
        self.grouped = grouped
        self.shuffle = shuffle
        self.num_replicas = num_replicas
        self.rank = rank
        self.global_batch = batch_size * (num_replicas if shuffle else 1)
        self.pool = self.global_batch * pool_factor
        self.epoch = 0
        self._skip = 0  # batches of the next epoch already trained before a checkpoint

    def resume_at(self, epoch: int, batches_done: int) -> None:
        """The next ``__iter__`` yields epoch ``epoch`` without its first ``batches_done`` batches."""
        if batches_done >= len(self):  # the epoch was complete: the next one starts
            epoch, batches_done = epoch + 1, 0
        self.epoch, self._skip = epoch, batches_done

    def __len__(self) -> int:
        if not self.shuffle:
            mine = len(range(self.rank, len(self.lengths), self.num_replicas))
            return (mine + self.batch_size - 1) // self.batch_size
        n = (len(self.lengths) + self.global_batch - 1) // self.global_batch
        if n > 1 and len(self.lengths) - (n - 1) * self.global_batch < self.num_replicas:
            n -= 1  # the last batch joins the one before
        return n

    def __iter__(self) -> Iterator[list[int]]:
        rng = random.Random(self.seed * 100_003 + self.epoch)
        self.epoch += 1
        skip, self._skip = self._skip, 0
        order = list(range(len(self.lengths)))
        if not self.shuffle:
            order.sort(key=lambda i: -self.lengths[i])
            order = order[self.rank :: self.num_replicas]
            yield from [order[i : i + self.batch_size] for i in range(0, len(order), self.batch_size)][skip:]
            return
        rng.shuffle(order)
        if self.grouped:
            pools = [order[i : i + self.pool] for i in range(0, len(order), self.pool)]
            if len(pools) > 1 and 2 * len(pools[-1]) < self.pool:  # a short remainder would make badly padded
                remainder = pools.pop()  # batches of its own: it joins the pool before it (2,000 MiniLM
                pools[-1] += remainder  # windows of CoNLL-2003 at batch 32: 3.5% of tokens padding, not 6.8%)
            order = [i for pool in pools for i in sorted(pool, key=lambda j: -self.lengths[j])]
        batches = [order[i : i + self.global_batch] for i in range(0, len(order), self.global_batch)]
        rng.shuffle(batches)
        if self.num_replicas > 1:
            short = [k for k, b in enumerate(batches) if len(b) < self.num_replicas]
            if short and len(batches) > 1:  # at most one: the last cut; it joins a neighbour
                k = short[0]
                batches[k - 1 if k else 1].extend(batches.pop(k))
            if len(order) < self.num_replicas:
                raise ValueError(f"{len(order)} training windows cannot be shared by {self.num_replicas} processes")
            batches = [sorted(b, key=lambda j: -self.lengths[j])[self.rank :: self.num_replicas] for b in batches]
        yield from batches[skip:]


class Collator:
    """Pads the windows of a batch (given by index) into the tensors ``Tagger.forward`` takes.

    With precomputed word features (a frozen encoder's, see ``seqexp.models.feature_cache``)
    the batch carries them as ``features`` [B, W, H] instead of the encoder's inputs, and the
    Tagger skips the encoder. ``features`` may be a function that computes them: it is called
    at the first batch, so creating a loader costs nothing (Lightning creates the dev loader
    when fitting starts; the dev split is then encoded by the first dev evaluation, not
    before training).

    Every window's lists are packed once, at the first batch, into one flat tensor per field
    (once per process and window list: later jobs of a sweep reuse it, ``memo.packed``); a
    batch then pads views of them. Building small tensors window by window cost 5 ms a
    batch on CPU, as much as a head-only training step itself.
    """

    def __init__(self, pad_id: int, windows: Sequence[Window], features=None, with_inputs: bool = False):
        self.pad_id = pad_id
        self.windows = windows
        self.features = features
        self.with_inputs = with_inputs or features is None  # both: a strategy whose encoder trains later
        self._packed: _PackedWindows | None = None

    def __call__(self, indices: Sequence[int]) -> dict[str, torch.Tensor]:
        if self._packed is None:
            self._packed = memo.packed(self.windows, _PackedWindows)
        if callable(self.features):
            self.features = self.features()
        packed, idx = self._packed, torch.tensor(indices)
        words = packed.words[idx]
        word_positions = torch.arange(int(words.max()))[None, :]
        batch = {
            "labels": packed.pad("labels", indices, IGNORE),
            "word_mask": word_positions < words[:, None],
            "score_mask": (word_positions >= packed.score_start[idx][:, None])
                          & (word_positions < packed.score_end[idx][:, None]),
            "sentence": packed.sentence[idx],
            "first_word": packed.first_word[idx],
        }
        if self.with_inputs:
            input_ids = packed.pad("input_ids", indices, self.pad_id)
            batch["input_ids"] = input_ids
            batch["attention_mask"] = (torch.arange(input_ids.size(1))[None, :] < packed.tokens[idx][:, None]).long()
            batch["word_starts"] = packed.pad("word_starts", indices, 0)
            batch["word_ends"] = packed.pad("word_ends", indices, 1)
        if self.features is not None:
            features = pad_sequence([self.features.window(i) for i in indices], batch_first=True)
            batch["features"] = features.float() if features.dtype in (torch.float16, torch.bfloat16) else features
        return batch


class _PackedWindows:
    """The windows' per-subword and per-word lists, concatenated into one tensor per field."""

    LISTS = ("input_ids", "word_starts", "word_ends", "labels")

    def __init__(self, windows: Sequence[Window]):
        def ints(values) -> torch.Tensor:
            return torch.tensor(list(values), dtype=torch.long)

        self.tokens = ints(len(w.input_ids) for w in windows)
        self.words = ints(len(w.word_starts) for w in windows)
        self.score_start = ints(w.score_start for w in windows)
        self.score_end = ints(w.score_end for w in windows)
        self.sentence = ints(w.sentence for w in windows)
        self.first_word = ints(w.first_word for w in windows)
        self.flat = {name: ints(chain.from_iterable(getattr(w, name) for w in windows)) for name in self.LISTS}
        self.bounds = {
            "input_ids": [0, *accumulate(len(w.input_ids) for w in windows)],
            "word": [0, *accumulate(len(w.word_starts) for w in windows)],
        }

    def pad(self, name: str, indices: Sequence[int], value: int) -> torch.Tensor:
        flat, bounds = self.flat[name], self.bounds["input_ids" if name == "input_ids" else "word"]
        return pad_sequence([flat[bounds[i] : bounds[i + 1]] for i in indices], batch_first=True,
                            padding_value=value)


class TaggingDataModule(L.LightningDataModule):
    """Encodes the splits once and serves padded window batches."""

    def __init__(self, splits: dict[str, list[Sentence]], tokenizer, labels: list[str],
                 max_length: int, *, batch_size: int, eval_batch_size: int,
                 length_grouped: bool = True, seed: int = 0, num_workers: int = 0):
        super().__init__()
        self.splits = splits
        self.tokenizer = tokenizer
        self.labels = labels
        self.label_to_id = {label: i for i, label in enumerate(labels)}
        self.max_length = max_length
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.length_grouped = length_grouped
        self.seed = seed
        self.num_workers = num_workers
        self.windows: dict[str, list[Window]] = {}
        self.features: dict[str, object] = {}
        self.with_inputs: set[str] = set()  # splits served with both features and encoder inputs
        self.split_counts: dict[str, int] = {}
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self._resume_train: tuple[int, int] | None = None  # (epoch, batches done) from a checkpoint

    def state_dict(self) -> dict:
        """Where training stands inside its epoch; Lightning stores it in every checkpoint."""
        trainer = self.trainer
        if trainer is None:
            return {}
        progress = trainer.fit_loop.epoch_loop.batch_progress.current
        return {"train_epoch": trainer.current_epoch, "train_batches_done": progress.processed}

    def load_state_dict(self, state: dict) -> None:
        """The next train loader continues that epoch after its trained batches (Lightning restores the
        model, optimizer and loop counters; our batch sampler is not a stateful loader it knows)."""
        if state:
            self._resume_train = (state["train_epoch"], state["train_batches_done"])

    def setup(self, stage: str | None = None) -> None:
        for name, sentences in self.splits.items():
            if name in self.windows:
                continue
            overlap = name != "train"
            windows = memo.windows(sentences, self.tokenizer, self.label_to_id, self.max_length, overlap,
                                   lambda: encode_split(sentences, self.tokenizer, self.label_to_id,
                                                        self.max_length, overlap=overlap))
            self.windows[name] = windows
            self.split_counts[name] = count_split_sentences(windows)
            if self.split_counts[name]:
                log.info("%s: %d sentences longer than %d subwords were split into windows",
                         name, self.split_counts[name], self.max_length)

    def use_features(self, split: str, provider, with_inputs: bool = False) -> None:
        """Serve this split's batches with a frozen encoder's word features.

        ``provider()`` computes or loads them; it is called when the split is first
        needed, so e.g. the test split is encoded only when testing starts.
        ``with_inputs``: the batches also carry the encoder's inputs, for a strategy whose
        encoder is frozen only in some phases (the Tagger picks what the phase allows).
        """
        self.features[split] = provider
        if with_inputs:
            self.with_inputs.add(split)

    def split_features(self, split: str):
        provider = self.features.get(split)
        if callable(provider):
            self.features[split] = provider = provider()
        return provider

    def gold(self, split: str) -> list[list[str]]:
        return [list(s.tags) for s in self.splits[split]]

    def prepare_data(self) -> None:
        """Several processes (DDP): Lightning calls this on rank 0 alone while the others wait at a
        barrier, so a frozen encoder's features are computed (and written to the feature cache) once;
        the other ranks load the file when their first batch needs it. One process: nothing to do
        (features are computed at the first batch that needs them)."""
        trainer = self.trainer
        if trainer is None or trainer.world_size == 1:
            return
        for split in ("test",) if trainer.testing else ("train", "dev"):
            if split in self.features:
                self.split_features(split)

    def _ranks(self) -> tuple[int, int]:
        """(processes, this one's rank) of the trainer this datamodule serves."""
        trainer = self.trainer
        return (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)

    def _loader(self, split: str, train: bool) -> DataLoader:
        windows = self.windows[split]
        replicas, rank = self._ranks()
        sampler = LengthGroupedBatches(
            [len(w.input_ids) for w in windows],
            self.batch_size if train else self.eval_batch_size,
            self.seed, grouped=self.length_grouped, shuffle=train, num_replicas=replicas, rank=rank,
        )
        features = functools.partial(self.split_features, split) if split in self.features else None
        if features is not None and self.num_workers:
            features = features()  # once, here: not once per worker process
        collate = Collator(self.pad_id, windows, features, with_inputs=split in self.with_inputs)
        # Its own generator: creating an iterator then never draws from torch's global RNG, which
        # dropout alone uses, so a resumed run draws the same dropout masks as an uninterrupted one.
        return DataLoader(range(len(windows)), batch_sampler=sampler, collate_fn=collate,
                          num_workers=self.num_workers, generator=torch.Generator().manual_seed(self.seed))

    def train_dataloader(self) -> DataLoader:
        loader = self._loader("train", train=True)
        if self._resume_train is not None:
            loader.batch_sampler.resume_at(*self._resume_train)
            self._resume_train = None
        return loader

    def val_dataloader(self) -> DataLoader:
        return self._loader("dev", train=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", train=False)
