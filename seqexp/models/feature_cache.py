"""Frozen-encoder feature cache: with ``freeze=last`` the encoder runs once per dataset.

A frozen encoder in eval mode maps each window to fixed word vectors, so every
head-only run of a sweep can share them. Features are computed in one canonical
way -- windows sorted by length (then index) and cut into fixed-size batches,
as evaluation does -- and stored in the compute dtype, so the cache gives
bit-identical vectors to recomputing them without it (``compute_features``).
Running one window alone (``recompute_window``) agrees to float rounding only:
CPU matrix kernels may sum in another order for another batch shape.

``layers="all"`` (``freeze=scalar_mix``) keeps every hidden layer's word vectors,
``[words, L + 1, H]``, in float16 unless told otherwise: (L + 1) x H x 2 bytes per word.

The cache is keyed by everything that changes the vectors: the encoder's
weights (hashed), the windows' token ids and word spans, the word pooling,
the dtype, the batch size (other batch shapes round differently) and the layers kept. It lives
in memory for the jobs of one process and on disk under
``<cache_dir>/features/`` for other processes; files are written to a temporary
name and renamed, so concurrent writers never leave a torn file.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from seqexp.data import memo
from seqexp.data.encoding import Window
from seqexp.disk import guarded_write
from seqexp.models.tagger import encoder_states, pool_words

log = logging.getLogger(__name__)

FORMAT = 3  # bump when the way features are computed changes
_MEMORY: dict[str, "WindowFeatures"] = {}  # the jobs of one process (Hydra's basic launcher) share these
_MEMORY_ENTRIES = 8


@dataclass
class WindowFeatures:
    """Word vectors of every window, concatenated: window i owns rows offsets[i]:offsets[i+1]."""

    vectors: torch.Tensor  # [total words, hidden], or [total words, layers + 1, hidden] (layers="all")
    offsets: torch.Tensor  # [windows + 1]
    _bounds: list[int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self._bounds = self.offsets.tolist()  # slicing with Python ints: 5x faster than with 0-d tensors

    def window(self, i: int) -> torch.Tensor:
        return self.vectors[self._bounds[i] : self._bounds[i + 1]]

    @property
    def nbytes(self) -> int:
        return self.vectors.element_size() * self.vectors.nelement()


def encoder_fingerprint(encoder: nn.Module) -> str:
    """Hash of the encoder's class, config and every weight and buffer, byte for byte (computed once
    for the same unchanged tensors: ``seqexp.data.memo.digest``)."""
    config = getattr(encoder, "config", None)
    head = type(encoder).__name__ + (config.to_json_string(use_diff=False) if config is not None else "")
    named = list(encoder.state_dict(keep_vars=True).items())
    return memo.tensor_digest(f"encoder_fingerprint|{head}", named, lambda name, _: name, head=head)


def windows_fingerprint(windows: Sequence[Window]) -> str:
    h = hashlib.sha256()
    for w in windows:
        h.update(np.asarray(w.input_ids, dtype=np.int64).tobytes())
        h.update(np.asarray(w.word_starts + w.word_ends, dtype=np.int64).tobytes())
        h.update(b"|")
    return h.hexdigest()[:20]


def _encode(encoder: nn.Module, ids: torch.Tensor, mask: torch.Tensor, starts: torch.Tensor,
            ends: torch.Tensor, alignment: str, layers: str = "last") -> torch.Tensor:
    return pool_words(encoder_states(encoder, ids, mask, layers), starts, ends, alignment)


@torch.no_grad()
def recompute_window(encoder: nn.Module, window: Window, alignment: str, layers: str = "last") -> torch.Tensor:
    """The reference: one window through the frozen encoder (in eval mode), alone and unpadded."""
    device = next(encoder.parameters()).device
    ids = torch.tensor([window.input_ids], device=device)
    starts = torch.tensor([window.word_starts], device=device)
    ends = torch.tensor([window.word_ends], device=device)
    return _encode(encoder, ids, torch.ones_like(ids), starts, ends, alignment, layers)[0].cpu()


@torch.no_grad()
def compute_features(encoder: nn.Module, windows: Sequence[Window], alignment: str,
                     batch_size: int = 64, layers: str = "last", storage: torch.dtype | None = None) -> WindowFeatures:
    """Word vectors of every window, in the canonical (length-sorted, fixed-size) batches.

    ``layers="all"``: every hidden layer's (embeddings first), ``[words, L + 1, H]``. ``storage``: the
    dtype they are kept in (rounded batch by batch, so the compute dtype's copy never exists whole)."""
    if any(p.requires_grad for p in encoder.parameters()):
        raise RuntimeError("the feature cache is for a frozen encoder (freeze=last)")
    modes = {m: m.training for m in encoder.modules()}
    encoder.eval()
    try:
        return _compute(encoder, windows, alignment, batch_size, layers, storage)
    finally:
        for module, mode in modes.items():
            module.training = mode


def _compute(encoder: nn.Module, windows: Sequence[Window], alignment: str, batch_size: int,
             layers: str, storage: torch.dtype | None) -> WindowFeatures:
    device = next(encoder.parameters()).device
    order = sorted(range(len(windows)), key=lambda i: (len(windows[i].input_ids), i))
    counts = torch.tensor([0] + [len(w.word_starts) for w in windows])
    offsets = counts.cumsum(0)
    config = getattr(encoder, "config", None)
    hidden = getattr(config, "hidden_size", None)
    shape = (hidden,) if layers == "last" else (getattr(config, "num_hidden_layers", -1) + 1, hidden)
    vectors: torch.Tensor | None = None
    for k in range(0, len(order), batch_size):
        chunk = order[k : k + batch_size]
        tokens = max(len(windows[i].input_ids) for i in chunk)
        words = max(len(windows[i].word_starts) for i in chunk)
        ids = torch.zeros((len(chunk), tokens), dtype=torch.long)
        mask = torch.zeros((len(chunk), tokens), dtype=torch.long)
        starts = torch.zeros((len(chunk), words), dtype=torch.long)
        ends = torch.ones((len(chunk), words), dtype=torch.long)
        for row, i in enumerate(chunk):
            w = windows[i]
            ids[row, : len(w.input_ids)] = torch.tensor(w.input_ids)
            mask[row, : len(w.input_ids)] = 1
            starts[row, : len(w.word_starts)] = torch.tensor(w.word_starts)
            ends[row, : len(w.word_ends)] = torch.tensor(w.word_ends)
        out = _encode(encoder, ids.to(device), mask.to(device), starts.to(device), ends.to(device),
                      alignment, layers).cpu()
        if vectors is None:
            vectors = torch.empty((int(offsets[-1]), *out.shape[2:]), dtype=storage or out.dtype)
        for row, i in enumerate(chunk):
            vectors[offsets[i] : offsets[i + 1]] = out[row, : counts[i + 1]]
    if vectors is None:
        vectors = torch.empty((0, *(s or 0 for s in shape)), dtype=storage or torch.get_default_dtype())
    return WindowFeatures(vectors, offsets)


def _remember(key: str, features: WindowFeatures) -> WindowFeatures:
    _MEMORY[key] = features
    while len(_MEMORY) > _MEMORY_ENTRIES:
        _MEMORY.pop(next(iter(_MEMORY)))
    return features


STORAGE = {None: None, "float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def cached_features(encoder: nn.Module, windows: Sequence[Window], alignment: str, cache_dir: Path,
                    encoder_fp: str, batch_size: int = 64, storage: str | None = None,
                    layers: str = "last") -> WindowFeatures:
    """Features from memory, else from disk, else computed and stored (atomically).

    ``storage`` ``float16``/``bfloat16`` keeps them compact (half the memory and disk);
    computed in the encoder's dtype, then rounded. ``None`` stores the compute dtype:
    bit-identical to running the encoder -- except with ``layers="all"`` (every hidden layer,
    ``freeze=scalar_mix``: L + 1 times the size), where ``None`` means float16.
    """
    dtype = next(encoder.parameters()).dtype
    stored = STORAGE[storage] or (torch.float16 if layers == "all" else dtype)
    kept = f"{dtype}" if stored == dtype else f"{dtype}->{stored}"
    key = hashlib.sha256(
        f"{FORMAT}|{encoder_fp}|{windows_fingerprint(windows)}|{alignment}|{kept}|{batch_size}"
        f"{'' if layers == 'last' else '|' + layers}".encode()
    ).hexdigest()[:24]
    if key in _MEMORY:
        return _MEMORY[key]
    path = Path(cache_dir).expanduser() / "features" / f"{key}.pt"
    if path.exists():
        try:
            data = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
            features = WindowFeatures(data["vectors"], data["offsets"])
            if len(features.offsets) == len(windows) + 1:
                log.info("feature cache: loaded %s (%.1f MB)", path.name, features.nbytes / 2**20)
                return _remember(key, features)
        except Exception as exc:  # a damaged file is recomputed, never trusted
            log.warning("feature cache: ignoring unreadable %s (%s)", path, exc)
    started = time.perf_counter()
    features = compute_features(encoder, windows, alignment, batch_size, layers, stored)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{key}-", suffix=".tmp")
    os.close(fd)
    try:
        with guarded_write(Path(tmp), path, "feature cache file", fix="set `cache_dir` to a folder on another "
                           "disk (or `trainer.feature_cache=false`: encode in every epoch)"):
            # An open file, not a path: on a failed write it is closed here, so removing it frees the
            # space (torch's own writer keeps its file open as long as the exception lives).
            with open(tmp, "wb") as f:
                torch.save({"vectors": features.vectors, "offsets": features.offsets}, f)
            os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    log.info("feature cache: encoded %d windows in %.1fs -> %s (%.1f MB)", len(windows),
             time.perf_counter() - started, path.name, features.nbytes / 2**20)
    return _remember(key, features)
