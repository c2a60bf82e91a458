"""Word-aligned subword windows, checked with real tokenizers on real text.

Tokenizers: the three tiny families built from CoNLL-2003 train (WordPiece,
byte-level BPE, sentencepiece unigram) and the real MiniLM WordPiece (uncased).
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from seqexp.data.encoding import IGNORE, Window, count_split_sentences, encode_split, special_tokens
from seqexp.data.readers import read_conll
from seqexp.data.sentences import Sentence
from seqexp.models.encoders import load_encoder
from tests.conftest import REPO, shared_corpus

TOKENIZERS = ("tiny-bert", "tiny-roberta", "tiny-albert", "minilm")
CACHE = Path(os.environ.get("SEQEXP_CACHE", REPO / ".cache" / "seqexp-test"))
ZWSP = "\u200b"
# Punctuation, digits, accents, emoji, a zero-width char (alone and inside a word), quotes.
EXOTIC = ("Zürich", "café", "naïve", "Ångström", "Straße", "Müller-Lüdenscheidt", "3.14", "1,000,000",
          "U.S.", "(", "don't", "e-mail", "O'Neill", "#hashtag", "@user", "http://x.y/z?q=1", "``", "''",
          "😀", "a😀b", ZWSP, f"zero{ZWSP}width", "naïve", "東京", "—", "€5")


@pytest.fixture(scope="module")
def train() -> list[Sentence]:
    return read_conll(shared_corpus("conll2003") / "eng.train", word_col=0, tag_col=3)


@pytest.fixture(scope="module")
def dev() -> list[Sentence]:
    return read_conll(shared_corpus("conll2003") / "eng.testa", word_col=0, tag_col=3)


@pytest.fixture(scope="module")
def labels(train) -> dict[str, int]:
    return {tag: i for i, tag in enumerate(sorted({t for s in train for t in s.tags}))}


@pytest.fixture(scope="module")
def toks(train):
    """The tokenizers as runs get them (built once per checkout in the shared test cache)."""
    out = {}
    for name in TOKENIZERS:
        cfg = OmegaConf.load(REPO / "conf" / "model" / f"{name}.yaml")
        out[name] = load_encoder(cfg, train, CACHE).tokenizer
    return out


def sentence(words, tag="O") -> Sentence:
    return Sentence(tuple(words), tuple(tag for _ in words), "test:1")


def is_byte_level(tok) -> bool:
    return '"ByteLevel"' in tok.backend_tokenizer.pre_tokenizer.__getstate__().decode()


def pieces(tok, ids: list[int]) -> list[str | None]:
    """Surface text of a word's subwords, markers (##, Ġ, ▁) removed; None stands for unk."""
    if is_byte_level(tok):
        return ["".join(tok.convert_tokens_to_string(tok.convert_ids_to_tokens(ids)).split())]
    out: list[str | None] = []
    for i, token in zip(ids, tok.convert_ids_to_tokens(ids)):
        if i == tok.unk_token_id:
            out.append(None)
        else:
            out.append(token.removeprefix("##").replace("▁", ""))
    return out


def expected_surface(tok, word: str) -> str:
    """The word as this tokenizer's own normalizer sees it (case-folded for uncased MiniLM)."""
    normalizer = tok.backend_tokenizer.normalizer
    text = normalizer.normalize_str(word) if normalizer is not None else word
    return "".join(text.split())


def vocab_chars(tok) -> set[str]:
    return {c for t in tok.get_vocab() for c in t.removeprefix("##").replace("▁", "")}


def assert_word_round_trips(tok, word: str, ids: list[int], known: set[str]) -> None:
    expected = expected_surface(tok, word)
    if expected == "":  # the tokenizer drops it entirely: it must still get a position
        assert ids == [tok.unk_token_id], (word, ids)
        return
    parts = pieces(tok, ids)
    if None not in parts:
        assert "".join(parts) == expected, (word, tok.convert_ids_to_tokens(ids))
        return
    pattern = "".join("(.+?)" if p is None else re.escape(p) for p in parts)
    match = re.fullmatch(pattern, expected)
    assert match, (word, tok.convert_ids_to_tokens(ids))
    for unknown in match.groups():  # unk only where a character is truly unknown to the vocabulary
        assert any(c not in known for c in unknown), (word, unknown, tok.convert_ids_to_tokens(ids))


def assert_windows_tile(windows: list[Window], sentences: list[Sentence], tok, max_length: int,
                        labels: dict[str, int], *, overlap: bool) -> None:
    """Every invariant a window list promises, for every sentence."""
    prefix, suffix = special_tokens(tok)
    by_sentence: dict[int, list[Window]] = {}
    for w in windows:
        by_sentence.setdefault(w.sentence, []).append(w)
    assert sorted(by_sentence) == [i for i, s in enumerate(sentences) if len(s)]
    for index, group in by_sentence.items():
        s = sentences[index]
        scored = []
        for w in group:
            n = len(w.word_starts)
            assert len(w.input_ids) <= max_length
            assert w.input_ids[: len(prefix)] == prefix and w.input_ids[len(w.input_ids) - len(suffix):] == suffix
            inner = w.input_ids[len(prefix): len(w.input_ids) - len(suffix)]
            assert not set(inner) & set(prefix + suffix), "special token inside a window"
            assert len(w.word_ends) == len(w.labels) == n >= 1
            assert w.word_starts[0] == len(prefix) and w.word_ends[-1] == len(w.input_ids) - len(suffix)
            assert all(e > b for b, e in zip(w.word_starts, w.word_ends))
            assert w.word_starts[1:] == w.word_ends[:-1], "words must be contiguous"
            assert w.labels == [labels.get(t, IGNORE) for t in s.tags[w.first_word: w.first_word + n]]
            assert 0 <= w.score_start < w.score_end <= n
            scored += range(w.first_word + w.score_start, w.first_word + w.score_end)
            if not overlap:
                assert (w.score_start, w.score_end) == (0, n)
        assert scored == list(range(len(s))), "scored spans must tile the sentence once, in order"
        for a, b in zip(group, group[1:]):
            a_end = a.first_word + len(a.word_starts)
            if overlap:  # no gap, moving forward (a word filling a whole window can't be overlapped)
                assert a.first_word < b.first_word <= a_end
            else:
                assert b.first_word == a_end, "training windows are disjoint"
        if overlap and len(group) > 1:
            assert_most_context(group)


def assert_most_context(group: list[Window]) -> None:
    """Each word is scored where its smaller side of context (in subwords) is largest."""
    def context(w: Window, word: int) -> int:
        i = word - w.first_word
        return min(w.word_starts[i] - w.word_starts[0], w.word_ends[-1] - w.word_ends[i])

    for w in group:
        for word in range(w.first_word + w.score_start, w.first_word + w.score_end):
            best = max(context(o, word) for o in group if o.first_word <= word < o.first_word + len(o.word_starts))
            assert context(w, word) == best
    for a, b in zip(group, group[1:]):
        shared = a.first_word + len(a.word_starts) - b.first_word
        if shared >= 1:
            assert b.score_start > 0, "a later window keeps unscored left context"
        if shared >= 2:
            assert a.score_end < len(a.word_starts), "an earlier window keeps unscored right context"


@pytest.mark.parametrize("name", TOKENIZERS)
def test_subwords_of_each_word_give_back_the_word(toks, dev, labels, name):
    tok = toks[name]
    sentences = dev + [sentence(EXOTIC)]
    windows = encode_split(sentences, tok, labels, 512, overlap=False)
    assert len(windows) == len(sentences)  # short sentences: one window each
    known = vocab_chars(tok)
    for w in windows:
        words = sentences[w.sentence].words
        for i, (b, e) in enumerate(zip(w.word_starts, w.word_ends)):
            assert_word_round_trips(tok, words[w.first_word + i], w.input_ids[b:e], known)
    assert_windows_tile(windows, sentences, tok, 512, labels, overlap=False)


@pytest.mark.parametrize("name", TOKENIZERS)
def test_case_handling(toks, name):
    folded = expected_surface(toks[name], "EU")
    assert folded == ("eu" if name == "minilm" else "EU")


@pytest.mark.parametrize("name", TOKENIZERS)
def test_windows_equal_the_tokenizers_own_encoding(toks, dev, labels, name):
    """The batched backend call gives exactly what `tokenizer(words, is_split_into_words=True)` gives."""
    tok = toks[name]
    sample = dev[:400]
    windows = encode_split(sample, tok, labels, 512, overlap=True)
    for w in windows:
        enc = tok(list(sample[w.sentence].words), is_split_into_words=True)
        assert w.input_ids == enc["input_ids"]
        word_ids = enc.word_ids()
        assert w.word_starts == [word_ids.index(i) for i in range(len(w.word_starts))]


def test_roberta_needs_add_prefix_space(toks):
    from transformers import RobertaTokenizer

    tok = toks["tiny-roberta"]
    plain = RobertaTokenizer.from_pretrained(tok.name_or_path, add_prefix_space=False)
    words = ["EU", "rejects", "German", "call", "to", "boycott", "British", "lamb", "."]
    with_flag = tok(words, is_split_into_words=True, add_special_tokens=False)
    without = plain(words, is_split_into_words=True, add_special_tokens=False)
    first = lambda enc, i: enc["input_ids"][enc.word_ids().index(i)]  # noqa: E731
    for i in range(len(words) - 1):  # "." is not word-initial in running text either way
        assert first(with_flag, i) != first(without, i), words[i]
    assert tok.convert_ids_to_tokens([first(with_flag, 2)]) == ["ĠGerman"]
    joined = plain(" " + " ".join(words), add_special_tokens=False)
    assert with_flag["input_ids"] == joined["input_ids"]


def hundred_words(train) -> Sentence:
    words, tags = [], []
    for s in train:
        words += s.words
        tags += s.tags
        if len(words) >= 100:
            break
    return Sentence(tuple(words[:100]), tuple(tags[:100]), "test:1")


@pytest.mark.parametrize("overlap", [False, True])
@pytest.mark.parametrize("name", TOKENIZERS)
def test_long_sentence_is_split_on_word_boundaries(toks, train, labels, name, overlap):
    tok = toks[name]
    long = hundred_words(train)
    sentences = [sentence(["Short", "one", "."]), long, sentence(["Another", "."])]
    windows = encode_split(sentences, tok, labels, 16, overlap=overlap)
    assert_windows_tile(windows, sentences, tok, 16, labels, overlap=overlap)
    assert [len([w for w in windows if w.sentence == i]) > 1 for i in range(3)] == [False, True, False]
    assert count_split_sentences(windows) == 1
    parts = [w for w in windows if w.sentence == 1]
    for a, b in zip(parts, parts[1:]):
        shared = a.first_word + len(a.word_starts) - b.first_word
        assert shared > 0 if overlap else shared == 0


@pytest.mark.parametrize("name", TOKENIZERS)
def test_real_long_conll_sentences(toks, train, labels, name):
    tok = toks[name]
    longest = [s for s in train if len(s) >= 40]
    assert longest
    for overlap in (False, True):
        windows = encode_split(longest, tok, labels, 32, overlap=overlap)
        assert_windows_tile(windows, longest, tok, 32, labels, overlap=overlap)
        assert count_split_sentences(windows) == len(longest)


def test_real_sentence_longer_than_512(toks):
    """MSRA has Chinese sentences of thousands of characters (one character per word)."""
    msra = read_conll(shared_corpus("msra_ner") / "msra_test_bio", word_col=0, tag_col=-1)
    long = sorted(msra, key=len)[-3:]
    assert len(long[-1]) > 2000
    labels = {t: i for i, t in enumerate(sorted({t for s in msra for t in s.tags}))}
    tok = toks["minilm"]
    for overlap in (False, True):
        windows = encode_split(long, tok, labels, 512, overlap=overlap)
        assert_windows_tile(windows, long, tok, 512, labels, overlap=overlap)
        assert count_split_sentences(windows) >= 1
        assert max(len(w.input_ids) for w in windows) == 512 or not overlap


@pytest.mark.parametrize("name", TOKENIZERS)
def test_word_without_subwords_gets_unk(toks, labels, name):
    tok = toks[name]
    sentences = [sentence(["a", ZWSP, "b"]), sentence([ZWSP]), sentence(["", "x"])]
    windows = encode_split(sentences, tok, labels, 512, overlap=False)
    assert [len(w.word_starts) for w in windows] == [3, 1, 2]
    assert_windows_tile(windows, sentences, tok, 512, labels, overlap=False)
    empty = windows[2]
    assert empty.input_ids[empty.word_starts[0]: empty.word_ends[0]] == [tok.unk_token_id]


@pytest.mark.parametrize("overlap", [False, True])
@pytest.mark.parametrize("name", TOKENIZERS)
def test_word_longer_than_a_window_is_cut_not_lost(toks, labels, name, overlap):
    tok = toks[name]
    giant = "Pneumonoultramicroscopicsilicovolcanoconiosis" * 2  # < 100 chars: WordPiece's whole-word-unk limit
    sentences = [sentence(["x", giant, "y", giant])]
    windows = encode_split(sentences, tok, labels, 8, overlap=overlap)
    assert_windows_tile(windows, sentences, tok, 8, labels, overlap=overlap)
    budget = 8 - sum(map(len, special_tokens(tok)))
    full = tok([giant], is_split_into_words=True, add_special_tokens=False)["input_ids"]
    assert len(full) > budget
    for w in windows:
        for i in range(len(w.word_starts)):
            if w.first_word + i in (1, 3):
                assert w.input_ids[w.word_starts[i]: w.word_ends[i]] == full[:budget]


def test_labels_unknown_tags_and_empty_sentences(toks):
    tok = toks["tiny-bert"]
    sentences = [
        Sentence(("EU", "rejects"), ("B-ORG", "B-NEW"), "t:1"),
        Sentence((), (), "t:4"),
        Sentence(("Peter",), ("B-PER",), "t:6"),
    ]
    windows = encode_split(sentences, tok, {"O": 0, "B-ORG": 1, "B-PER": 2}, 512, overlap=True)
    assert [w.sentence for w in windows] == [0, 2]
    assert windows[0].labels == [1, IGNORE] and windows[1].labels == [2]
    assert encode_split([], tok, {"O": 0}, 512, overlap=False) == []


def test_max_length_must_leave_room(toks):
    with pytest.raises(ValueError, match="max_length"):
        encode_split([sentence(["a"])], toks["tiny-bert"], {"O": 0}, 2, overlap=False)


def test_encoding_conll_train_is_fast(toks, train, labels):
    tok = toks["tiny-bert"]
    t0 = time.perf_counter()
    windows = encode_split(train, tok, labels, 512, overlap=False)
    seconds = time.perf_counter() - t0
    print(f"encoded {len(train)} sentences into {len(windows)} windows in {seconds:.2f}s")
    assert len(windows) == len(train) and count_split_sentences(windows) == 0
    assert seconds < 15
