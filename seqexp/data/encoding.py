"""Subword windows aligned to words: what the encoder sees, and which word each state is.

Every sentence becomes one or more ``Window``s of at most ``max_length`` subwords
(special tokens included). Words are never split across windows and never lost:

* a word that the tokenizer turns into nothing (a lone zero-width or control
  character) gets ``[unk_token_id]``, so it still has a position and a prediction;
* a word longer than a whole window keeps its first subwords that fit (the
  prediction is read from them anyway);
* the scored spans ``[score_start, score_end)`` of a sentence's windows tile its
  words exactly once, in order.

``overlap=False`` (training) packs words greedily into disjoint windows and
scores everything. ``overlap=True`` (evaluation) slides windows forward by about
half a window (like the stride of Hugging Face's question-answering pipeline) and
lets each word be predicted by the window where it has the most context on both
sides, so no word is judged at the very edge of a cut when avoidable. A sentence
that fits (the vast majority) always gets exactly one window, fully scored.

Indices: ``first_word`` is the sentence index of the window's first word;
``word_starts``/``word_ends``/``labels`` and ``score_start``/``score_end`` are
relative to the window (``labels`` covers every word of the window, scored or not).
"""

from __future__ import annotations

import gc
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from itertools import accumulate
from typing import Any

from seqexp.data.sentences import Sentence

IGNORE = -100  # label id of a word whose gold tag is not in the label map (CrossEntropyLoss' ignore_index)


@dataclass(slots=True)
class Window:
    """One encoder input: a run of whole words from one sentence, with special tokens."""

    sentence: int  # index of the sentence in its split
    first_word: int  # index in the sentence of this window's first word
    input_ids: list[int]  # special tokens included
    word_starts: list[int]  # per word in the window: position in input_ids of its first subword
    word_ends: list[int]  # per word: position just after its last subword (> word_starts[i])
    score_start: int  # window words [score_start, score_end) are the ones this window predicts
    score_end: int
    labels: list[int]  # per window word, IGNORE where the gold tag is not in the label map


def special_tokens(tokenizer: Any) -> tuple[list[int], list[int]]:
    """The ids the tokenizer puts before and after a single sequence ([CLS]/[SEP], <s>/</s>, ...).

    Read off a real encoding, so whatever template the tokenizer's post-processor
    has is respected.
    """
    encoding = tokenizer(["a"], is_split_into_words=True, add_special_tokens=True)
    ids, word_ids = encoding["input_ids"], encoding.word_ids()
    inside = [i for i, w in enumerate(word_ids) if w is not None]
    if not inside:
        raise ValueError("tokenizer produced no subword for the probe word 'a'")
    return list(ids[: inside[0]]), list(ids[inside[-1] + 1 :])


def encode_split(
    sentences: Sequence[Sentence],
    tokenizer: Any,
    label_to_id: dict[str, int],
    max_length: int,
    *,
    overlap: bool,
) -> list[Window]:
    """Tokenize a split in one batched call and cut it into word-aligned windows.

    Sentences without words get no window.
    """
    prefix, suffix = special_tokens(tokenizer)
    budget = max_length - len(prefix) - len(suffix)
    if budget < 1:
        raise ValueError(
            f"max_length={max_length} leaves no room for words next to {len(prefix) + len(suffix)} special tokens"
        )
    unk = tokenizer.unk_token_id
    if unk is None:
        unk = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    indices = [i for i, s in enumerate(sentences) if len(s.words)]
    if not indices:
        return []
    # The backend's batch call is what `tokenizer(..., is_split_into_words=True)` runs,
    # minus a per-sentence conversion that costs a third of the time on a large split.
    backend = tokenizer.backend_tokenizer
    if backend.truncation is not None:
        backend.no_truncation()
    if backend.padding is not None:
        backend.no_padding()
    windows: list[Window] = []
    # Hundreds of thousands of small lists and encodings, none of which can form a
    # cycle: the cyclic GC would only rescan them again and again (a third of the time).
    gc_enabled = gc.isenabled()
    gc.disable()
    try:
        encodings = backend.encode_batch(
            [list(sentences[i].words) for i in indices], is_pretokenized=True, add_special_tokens=False
        )
        for index, encoding in zip(indices, encodings):
            sentence = sentences[index]
            labels = [label_to_id.get(tag, IGNORE) for tag in sentence.tags]
            ids, word_ids = encoding.ids, encoding.word_ids
            n = len(sentence.words)
            if len(ids) <= budget and None not in word_ids:
                lengths = [0] * n
                for word in word_ids:
                    lengths[word] += 1
                if 0 not in lengths:
                    # Fast path (nearly every sentence): one window, subwords already in word order.
                    windows.append(_single_window(index, ids, lengths, labels, prefix, suffix))
                    continue
            pieces = _word_pieces(ids, word_ids, n, unk, budget)
            lengths = [len(p) for p in pieces]
            if sum(lengths) <= budget:
                spans = [(0, n, 0, n)]
            elif overlap:
                spans = _overlapping_spans(lengths, budget)
            else:
                spans = _disjoint_spans(lengths, budget)
            for start, end, score_start, score_end in spans:
                windows.append(_window(index, start, end, score_start, score_end, pieces, labels, prefix, suffix))
    finally:
        if gc_enabled:
            gc.enable()
    return windows


def count_split_sentences(windows: Iterable[Window]) -> int:
    """How many sentences needed more than one window (worth logging: they lose context)."""
    return sum(1 for n in Counter(w.sentence for w in windows).values() if n > 1)


def _word_pieces(
    ids: Sequence[int], word_ids: Sequence[int | None], n_words: int, unk: int, budget: int
) -> list[list[int]]:
    """Group a sentence's subword ids by word; empty words get [unk], long ones are cut to ``budget``."""
    pieces: list[list[int]] = [[] for _ in range(n_words)]
    for token, word in zip(ids, word_ids):
        if word is not None:
            pieces[word].append(token)
    for i, p in enumerate(pieces):
        if not p:
            pieces[i] = [unk]
        elif len(p) > budget:
            pieces[i] = p[:budget]
    return pieces


def _single_window(sentence: int, ids: list[int], lengths: list[int], labels: list[int],
                   prefix: list[int], suffix: list[int]) -> Window:
    offsets = list(accumulate(lengths, initial=len(prefix)))
    return Window(sentence, 0, [*prefix, *ids, *suffix], offsets[:-1], offsets[1:], 0, len(lengths), labels)


def _window(sentence: int, start: int, end: int, score_start: int, score_end: int,
            pieces: list[list[int]], labels: list[int], prefix: list[int], suffix: list[int]) -> Window:
    input_ids = list(prefix)
    starts: list[int] = []
    ends: list[int] = []
    for p in pieces[start:end]:
        starts.append(len(input_ids))
        input_ids.extend(p)
        ends.append(len(input_ids))
    input_ids.extend(suffix)
    return Window(sentence, start, input_ids, starts, ends, score_start - start, score_end - start, labels[start:end])


def _disjoint_spans(lengths: list[int], budget: int) -> list[tuple[int, int, int, int]]:
    """Greedy packing into non-overlapping windows, everything scored: (start, end, start, end)."""
    spans = []
    start, used = 0, 0
    for i, n in enumerate(lengths):
        if used + n > budget:
            spans.append((start, i, start, i))
            start, used = i, 0
        used += n
    spans.append((start, len(lengths), start, len(lengths)))
    return spans


def _overlapping_spans(lengths: list[int], budget: int) -> list[tuple[int, int, int, int]]:
    """Windows advancing ~half a window, each word scored where it has most context.

    Returns (start, end, score_start, score_end) in sentence word indices.
    """
    n = len(lengths)
    cum = [0, *accumulate(lengths)]  # cum[i] = subwords before word i
    windows: list[tuple[int, int]] = []
    start = 0
    while True:
        end = start
        while end < n and cum[end + 1] - cum[start] <= budget:
            end += 1
        windows.append((start, end))
        if end >= n:
            break
        # Next start: first word at least half a window further, never past this
        # window's end (no gaps) and always at least one word further (progress).
        target = cum[start] + budget // 2
        nxt = start + 1
        while nxt < end and cum[nxt] < target:
            nxt += 1
        start = nxt
    # Cut between consecutive windows a and b at the first word whose left context
    # in b exceeds its right context in a (both measured in subwords).
    cuts = [0]
    for (a_start, a_end), (b_start, _) in zip(windows, windows[1:]):
        cut = b_start
        while cut < a_end and cum[cut] - cum[b_start] <= cum[a_end] - cum[cut + 1]:
            cut += 1
        cuts.append(max(cut, cuts[-1]))  # stay monotone so the spans tile
    cuts.append(n)
    return [
        (start, end, cuts[i], cuts[i + 1])
        for i, (start, end) in enumerate(windows)
        if cuts[i] < cuts[i + 1]
    ]
