"""Tiny encoders built here: a tokenizer trained on the training words + a random model.

They make every code path runnable offline and in seconds, with each architecture's
real tokenizer family, so that alignment bugs show up without downloading BERT:

``wordpiece``  BERT's cased WordPiece (``##`` continuations), as bert-base-cased;
``bpe``        RoBERTa's byte-level BPE with ``add_prefix_space=True`` and
               roberta-base's special-token ids (``<s>``=0, ``<pad>``=1, ...);
``unigram``    ALBERT's sentencepiece-style unigram with the ``▁`` metaspace,
               ``<pad>``=0 ``<unk>``=1 ``[CLS]``=2 ``[SEP]``=3 ``[MASK]``=4 as albert-base-v2.
               Unlike albert-base-v2 it keeps case and accents: the model is
               random, and case is the strongest cue a tiny NER model can learn.

Training is deterministic (same words, same tokenizer on every machine): WordPiece
and BPE through ``train_new_from_iterator`` on a template of the real transformers
class, unigram through sentencepiece with a fixed thread count. The result is
always an instance of the family's transformers class, so the saved
``tokenizer.json`` has exactly the pipeline that class rebuilds when it loads the
directory again (transformers 5 rebuilds it from the vocabulary and ignores the
file's normalizer and pre-tokenizer).

Built encoders are cached under ``<cache_dir>/encoders/<fingerprint>/`` (the
``save_pretrained`` files of tokenizer and model plus ``seqexp-tiny.json`` with
the recipe). The fingerprint hashes the recipe and the training words, so a sweep
builds each tiny encoder once. A build goes to a temporary sibling directory that
is renamed into place, so two processes racing never see a half-written one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from seqexp.data.sentences import Sentence

log = logging.getLogger(__name__)

TINY_FORMAT = 2  # bump when a change here makes older cached builds wrong
ARCHS = ("bert", "roberta", "albert")
TOKENIZERS = ("wordpiece", "bpe", "unigram")
MAX_POSITIONS = 512  # usable positions, as in the base models
ALBERT_EMBEDDING_SIZE = 64
MARKER = "seqexp-tiny.json"
_SPM_THREADS = 4  # fixed: sentencepiece's result depends on it, not on the machine's cores

# Characters every WordPiece/unigram vocabulary gets even when the training words
# lack them (printable ASCII, Latin-1, Latin Extended-A/B, common punctuation and
# currency), so an accented name in dev/test is not a whole-word [UNK].
_ALPHABET = sorted(
    {chr(c) for c in range(0x21, 0x7F)}
    | {chr(c) for c in range(0xA1, 0x250) if chr(c).isprintable() and not chr(c).isspace()}
    | {chr(c) for c in range(0x2010, 0x2027)}
    | {"€", "£", "¥", "™"}
)


def _get(cfg: Any, key: str, default: Any = None) -> Any:
    value = cfg.get(key, default) if hasattr(cfg, "get") else getattr(cfg, key, default)
    return default if value is None else value


def _recipe(model_cfg: Any) -> dict[str, Any]:
    """The tiny-encoder settings, validated, as plain values."""
    recipe: dict[str, Any] = {"arch": _get(model_cfg, "arch"), "tokenizer": _get(model_cfg, "tokenizer")}
    if recipe["arch"] not in ARCHS:
        raise ValueError(f"`model.arch`: tiny encoders are one of {', '.join(ARCHS)}, got {recipe['arch']!r}")
    if recipe["tokenizer"] not in TOKENIZERS:
        raise ValueError(
            f"`model.tokenizer`: tiny tokenizers are one of {', '.join(TOKENIZERS)}, got {recipe['tokenizer']!r}"
        )
    for key in ("vocab_size", "hidden_size", "num_layers", "num_heads", "intermediate_size"):
        value = _get(model_cfg, key)
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise ValueError(f"`model.{key}`: a tiny encoder needs a positive whole number, got {value!r}")
        recipe[key] = value
    if recipe["hidden_size"] % recipe["num_heads"]:
        raise ValueError(
            f"`model.hidden_size` ({recipe['hidden_size']}) must be a multiple of "
            f"`model.num_heads` ({recipe['num_heads']})"
        )
    recipe["init_seed"] = int(_get(model_cfg, "init_seed", 0))
    return recipe


def words_hash(sentences: Sequence[Sentence]) -> str:
    """Hash of the training words, in order (tags don't change the tokenizer)."""
    digest = hashlib.sha256()
    for sentence in sentences:
        digest.update("\x1f".join(sentence.words).encode("utf-8", "surrogatepass"))
        digest.update(b"\x1e")
    return digest.hexdigest()


def tiny_fingerprint(model_cfg: Any, sentences: Sequence[Sentence]) -> str:
    """Cache key: recipe + training words + format version, e.g. ``tiny-bert-0123abcd4567ef89``."""
    recipe = _recipe(model_cfg)
    key = dict(recipe, format=TINY_FORMAT, max_positions=MAX_POSITIONS, words=words_hash(sentences))
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()
    return f"tiny-{recipe['arch']}-{digest[:16]}"


def _template(kind: str) -> Any:
    """An empty tokenizer of the family's transformers class, carrying its pipeline and specials."""
    from transformers import AlbertTokenizer, BertTokenizer, RobertaTokenizer

    if kind == "wordpiece":
        return BertTokenizer(do_lower_case=False)
    if kind == "bpe":
        specials = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3, "<mask>": 4}
        return RobertaTokenizer(vocab=specials, merges=[], add_prefix_space=True)
    if kind == "unigram":
        return AlbertTokenizer(do_lower_case=False, keep_accents=True)
    raise ValueError(f"unknown tokenizer kind {kind!r}; choose one of {', '.join(TOKENIZERS)}")


def train_tokenizer(kind: str, sentences: Sequence[Sentence], vocab_size: int) -> Any:
    """Train a fast tokenizer of family ``kind`` on the sentences' words, deterministically.

    A few seconds on CoNLL-2003 train. The same words always give the same
    tokenizer, so a fingerprint names one encoder on every machine.
    """
    if not sentences:
        raise ValueError("cannot train a tokenizer on zero sentences")
    template = _template(kind)
    normalize = template.backend_tokenizer.normalizer
    texts = [" ".join(sentence.words) for sentence in sentences]
    if kind == "unigram":
        return _train_unigram(template, [normalize.normalize_str(t) for t in texts], vocab_size)
    if kind == "bpe":
        return template.train_new_from_iterator(texts, vocab_size=vocab_size)
    return _train_wordpiece(template, texts, vocab_size)


def _train_wordpiece(template: Any, texts: list[str], vocab_size: int) -> Any:
    """WordPiece with every ``##c`` continuation made up front.

    The tokenizers trainer creates ``##c`` pieces lazily in hash-map order, which
    makes its vocabulary differ from run to run (huggingface/tokenizers#1794);
    handed in first, they get fixed ids and the training is deterministic. They
    also mean a word with an unusual character inside is not a whole-word [UNK].
    """
    from transformers import AddedToken, BertTokenizer

    seen = {c for text in texts for c in text if c.isprintable() and not c.isspace()}
    chars = sorted(seen | set(_ALPHABET))
    continuations = [AddedToken("##" + c, special=True) for c in chars]
    trained = template.train_new_from_iterator(
        texts, vocab_size=vocab_size, initial_alphabet=chars, new_special_tokens=continuations
    )
    # Rebuilt from the bare vocabulary, the `##c` entries are ordinary word pieces.
    return BertTokenizer(vocab=trained.get_vocab(), do_lower_case=False)


def _train_unigram(template: Any, texts: list[str], vocab_size: int) -> Any:
    """Unigram pieces from sentencepiece, served by a fast AlbertTokenizer built from (piece, score) pairs.

    sentencepiece is deterministic for a given thread count (the tokenizers
    UnigramTrainer is not: its scores drift from run to run), hence a fixed count.
    """
    import io

    import sentencepiece as spm
    from transformers import AlbertTokenizer

    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(texts),
        model_writer=model,
        model_type="unigram",
        vocab_size=vocab_size,
        hard_vocab_limit=False,  # a small corpus gets a smaller vocabulary instead of an error
        pad_id=0, unk_id=1, bos_id=2, eos_id=3,  # albert-base-v2's ids
        pad_piece=template.pad_token, unk_piece=template.unk_token,
        bos_piece=template.cls_token, eos_piece=template.sep_token,
        control_symbols=[template.mask_token],
        character_coverage=1.0,
        required_chars="".join(_ALPHABET),
        normalization_rule_name="identity",  # the tokenizer's own normalizer already ran
        max_sentence_length=1 << 20,
        num_threads=_SPM_THREADS,
        minloglevel=2,
    )
    processor = spm.SentencePieceProcessor(model_proto=model.getvalue())
    vocab = [(processor.id_to_piece(i), processor.get_score(i)) for i in range(processor.get_piece_size())]
    return AlbertTokenizer(vocab=vocab, do_lower_case=False, keep_accents=True)


def _build_model(recipe: dict[str, Any], tokenizer: Any) -> Any:
    """A randomly initialised headless encoder; the global RNG is left untouched."""
    from transformers import AlbertConfig, AlbertModel, BertConfig, BertModel, RobertaConfig, RobertaModel

    common = dict(
        vocab_size=len(tokenizer),
        hidden_size=recipe["hidden_size"],
        num_hidden_layers=recipe["num_layers"],
        num_attention_heads=recipe["num_heads"],
        intermediate_size=recipe["intermediate_size"],
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.cls_token_id,
        eos_token_id=tokenizer.sep_token_id,
    )
    arch = recipe["arch"]
    with torch.random.fork_rng(devices=[]):
        # Only the CPU generator: torch.manual_seed would also (lazily) reseed CUDA.
        torch.random.default_generator.manual_seed(recipe["init_seed"])
        if arch == "bert":
            return BertModel(BertConfig(max_position_embeddings=MAX_POSITIONS, **common), add_pooling_layer=False)
        if arch == "roberta":
            # Position ids start at pad_token_id + 1, as in roberta-base (514 = 512 + 2).
            positions = MAX_POSITIONS + tokenizer.pad_token_id + 1
            config = RobertaConfig(max_position_embeddings=positions, type_vocab_size=1, **common)
            return RobertaModel(config, add_pooling_layer=False)
        config = AlbertConfig(
            embedding_size=ALBERT_EMBEDDING_SIZE,
            num_hidden_groups=1,
            inner_group_num=1,
            max_position_embeddings=MAX_POSITIONS,
            **common,
        )
        return AlbertModel(config, add_pooling_layer=False)


def build_tiny(model_cfg: Any, train_sentences: Sequence[Sentence] | None, cache_dir: Path) -> Path:
    """Directory of the tiny encoder ``model_cfg`` describes, building it on first use."""
    if train_sentences is None:
        raise ValueError(
            f"`model={_get(model_cfg, 'name', 'tiny')}` trains its tokenizer on the training sentences, "
            "but none were given (load_encoder(..., train_sentences=None))"
        )
    recipe = _recipe(model_cfg)
    fingerprint = tiny_fingerprint(model_cfg, train_sentences)
    root = Path(cache_dir).expanduser() / "encoders"
    final = root / fingerprint
    if (final / MARKER).is_file():
        return final
    root.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix=f".{fingerprint}.tmp-", dir=root))
    try:
        tokenizer = train_tokenizer(recipe["tokenizer"], train_sentences, recipe["vocab_size"])
        model = _build_model(recipe, tokenizer)
        tokenizer.save_pretrained(tmp)
        model.save_pretrained(tmp)
        seconds = round(time.perf_counter() - started, 2)
        info = dict(recipe, fingerprint=fingerprint, words=words_hash(train_sentences),
                    sentences=len(train_sentences), vocab=len(tokenizer), build_seconds=seconds)
        (tmp / MARKER).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
        os.chmod(tmp, 0o755)  # mkdtemp makes it private; the cache may be shared
        try:
            os.rename(tmp, final)
        except OSError:
            if not (final / MARKER).is_file():  # not a lost race: a real error
                raise
        else:
            log.info("built %s (vocab %d) in %.1fs at %s", fingerprint, len(tokenizer), seconds, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final
