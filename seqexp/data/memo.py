"""Read splits and subword windows, kept for the next job of the same process.

Hydra's basic launcher runs every job of a sweep in one process, and joblib
workers run several jobs each; most jobs of a grid read the same corpus with the
same tokenizer. Reading CoNLL-2003 (0.6 s) and tokenizing it (0.7 s) then
happens once per process instead of once per job. The keys are what the
results depend on: the resolved dataset config and the size and mtime of every
file under its ``data_dir``; for windows, the very sentence list, the
tokenizer's full serialized definition, the label map, ``max_length`` and
whether windows overlap. (A disk cache across processes was measured not to pay:
loading pickled windows costs about what tokenizing them does.)

Head-only jobs never change the encoder, so the next such job of the process
takes the same one (``encoder``), and the weight hashes of unchanged tensors are
not computed again (``digest``): in a sweep of later head-only MiniLM jobs that
is 70 ms of loading and twice 60 ms of hashing a job. "Unchanged" is checked,
not assumed: the very same tensor objects, and their version counters, which
every in-place write bumps (an optimizer step, ``copy_``, ``load_state_dict``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import weakref
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

_SPLITS: OrderedDict[str, dict] = OrderedDict()
_WINDOWS: OrderedDict[tuple, tuple[Sequence, list]] = OrderedDict()
_PACKED: OrderedDict[int, tuple[Sequence, Any]] = OrderedDict()
_ENCODERS: dict[tuple, tuple[list, str, tuple]] = {}
_DIGESTS: OrderedDict[tuple, tuple[list, str]] = OrderedDict()
_MAX_SPLITS, _MAX_WINDOWS, _MAX_DIGESTS = 2, 12, 8


def _remember(store: OrderedDict, key, value, limit: int):
    store[key] = value
    store.move_to_end(key)
    while len(store) > limit:
        store.popitem(last=False)
    return value


def _of_object(store: OrderedDict, key: tuple | int, obj: Any, make: Callable[[], Any]) -> Any:
    """``make()``, or what ``store`` keeps under ``key`` (which holds ``id(obj)``) for this very object:
    the entry keeps ``obj`` alive, so an equal id is the same object, not a recycled one."""
    hit = store.get(key)
    if hit is not None and hit[0] is obj:
        store.move_to_end(key)
        return hit[1]
    return _remember(store, key, (obj, make()), _MAX_WINDOWS)[1]


def _files_signature(folder: Path) -> list[tuple[str, int, int]]:
    found = []
    for root, _, files in os.walk(folder):
        for name in files:
            path = os.path.join(root, name)
            try:
                st = os.stat(path)
            except OSError:
                continue
            found.append((path, st.st_size, st.st_mtime_ns))
    return sorted(found)


def splits(dataset_cfg: Mapping[str, Any], cache_dir: Path, load: Callable[[], dict]) -> dict:
    """``load()``'s splits, or the ones an earlier job of this process loaded with the same inputs."""
    from omegaconf import DictConfig, OmegaConf

    cfg = OmegaConf.to_container(dataset_cfg, resolve=True) if isinstance(dataset_cfg, DictConfig) else dict(dataset_cfg)
    data_dir = cfg.get("data_dir")
    files = _files_signature(Path(str(data_dir)).expanduser()) if data_dir else []
    key = hashlib.sha256(json.dumps([cfg, str(cache_dir), files], sort_keys=True, default=str).encode()).hexdigest()
    if key in _SPLITS:
        log.info("%s: reusing the splits an earlier job of this process read", cfg.get("name"))
        _SPLITS.move_to_end(key)
        return dict(_SPLITS[key])  # the same sentence lists (so their windows are reused too)
    return dict(_remember(_SPLITS, key, load(), _MAX_SPLITS))


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """Everything that decides how the tokenizer splits words: its full serialized definition."""
    h = hashlib.sha256(type(tokenizer).__name__.encode())
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        h.update(backend.to_str().encode())
    else:
        h.update(json.dumps(sorted(tokenizer.get_vocab().items())).encode())
    h.update(json.dumps(getattr(tokenizer, "init_kwargs", {}), sort_keys=True, default=str).encode())
    return h.hexdigest()


def windows(sentences: Sequence, tokenizer: Any, label_to_id: Mapping[str, int], max_length: int,
            overlap: bool, encode: Callable[[], list]) -> list:
    """``encode()``'s windows, or those of an earlier job for this sentence list and tokenizer."""
    key = (id(sentences), tokenizer_fingerprint(tokenizer), tuple(label_to_id.items()), max_length, overlap)
    return _of_object(_WINDOWS, key, sentences, encode)


def packed(windows: Sequence, pack: Callable[[Sequence], Any]) -> Any:
    """``pack(windows)``, or what an earlier job packed from this very window list (``windows()`` hands every job
    of the process the same list). Packing CoNLL-2003's windows for a collator took 40 ms a job."""
    return _of_object(_PACKED, id(windows), windows, lambda: pack(windows))


def _versions(tensors: Sequence) -> list[tuple[weakref.ref, int]]:
    return [(weakref.ref(t), t._version) for t in tensors]


def _unchanged(saved: list[tuple[weakref.ref, int]], tensors: Sequence) -> bool:
    """The very same tensor objects, none written in place since ``saved`` was taken."""
    return len(saved) == len(tensors) and all(ref() is t and version == t._version
                                              for (ref, version), t in zip(saved, tensors))


def encoder(files: Path, load: Callable[[], tuple[Any, Any]]) -> tuple[Any, Any]:
    """``load()``'s (tokenizer, model), or those an earlier job of this process loaded from the same
    ``files`` (a folder, with the size and mtime of each file in it), provided that job left every
    weight, buffer and config value as loaded. The model comes back as ``load()`` returns one: in
    train mode, every parameter requiring grad. Only one encoder is kept."""
    key = (str(files), tuple(_files_signature(Path(files))))
    hit = _ENCODERS.get(key)
    if hit is not None:
        saved, config, (tokenizer, model) = hit
        tensors = list(model.state_dict(keep_vars=True).values())
        if _unchanged(saved, tensors) and config == model.config.to_json_string():
            log.info("%s: reusing the unchanged encoder an earlier job of this process loaded", files)
            model.train()
            model.requires_grad_(True)
            return tokenizer, model
        log.info("%s: the encoder an earlier job loaded was changed; loading it again", files)
    forget_encoders()
    tokenizer, model = load()
    _ENCODERS[key] = (_versions(list(model.state_dict(keep_vars=True).values())), model.config.to_json_string(),
                      (tokenizer, model))
    return tokenizer, model


def forget_encoders() -> None:
    """Let go of the kept encoder (before loading one that will change: two in memory would raise the peak)."""
    _ENCODERS.clear()


def tensor_digest(kind: str, named: Sequence[tuple[str, Any]], label: Callable[[str, Any], str], head: str = "") -> str:
    """sha256 (20 hex digits) of ``head``, then of each named tensor's ``label(name, tensor)`` and its bytes (the
    buffer itself: no copy); through ``digest``, so computed once for the same unchanged tensors."""

    def compute() -> str:
        import torch

        h = hashlib.sha256(head.encode())
        for name, tensor in named:
            tensor = tensor.detach().cpu().contiguous()
            h.update(label(name, tensor).encode())
            h.update(tensor.view(torch.uint8).numpy())
        return h.hexdigest()[:20]

    return digest(kind, named, compute)


def digest(kind: str, named: Sequence[tuple[str, Any]], compute: Callable[[], str]) -> str:
    """``compute()``, a hash of these named tensors, or its value for the very same tensor objects,
    unchanged since (see ``_unchanged``), earlier in this process. ``kind`` names the hash function,
    and with the names it is the key: anything else ``compute`` hashes must be in ``kind``."""
    key = (kind, tuple(name for name, _ in named))
    tensors = [t for _, t in named]
    hit = _DIGESTS.get(key)
    if hit is not None and _unchanged(hit[0], tensors):
        _DIGESTS.move_to_end(key)
        return hit[1]
    return _remember(_DIGESTS, key, (_versions(tensors), compute()), _MAX_DIGESTS)[1]
