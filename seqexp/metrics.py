"""Word-level evaluation of tag sequences: entity scores (seqeval) or per-tag scores (POS).

One function, :func:`evaluate`, serves every task so that all runs of a sweep
log the same keys:

* always ``accuracy``: correct words / all words;
* with a chunk ``scheme`` ("IOB2" or "IOBES", NER and chunking): seqeval's
  micro ``precision``/``recall``/``f1`` in its default (CoNLL-eval-like,
  lenient) mode, the same in ``mode="strict"`` as ``strict_precision``/
  ``strict_recall``/``strict_f1``, and ``per_type`` scores (default mode).
  Both are reported because models emit invalid sequences (a chunk opened
  with ``I-``): the default mode repairs them, the strict mode does not count
  them, and the gap between the two says how much a head relies on the repair;
* without a scheme (``None``, plain token tagging such as POS): ``precision``,
  ``recall`` and ``f1`` are MACRO averages over tags, ``micro_f1`` (equal to
  ``accuracy`` when every word gets exactly one tag) and ``per_type`` per tag.

Zero divisions give 0.0, everywhere and silently: a type/tag that is never
predicted has precision 0, one that never occurs in gold has recall 0 (and
support 0), and its f1 is 0. Macro averages run over the union of gold and
predicted tags, so predicting a tag absent from gold lowers the macro scores.
This is scikit-learn's ``zero_division=0`` convention, and seqeval's.

Entities are extracted once per mode with seqeval's own extractors and counted
here, instead of calling seqeval's scoring functions once per number (each of
which extracts again); this keeps CoNLL-2003 test under half a second.
"""

from __future__ import annotations

import functools
from collections import Counter
from collections.abc import Sequence
from typing import Any

from seqeval.scheme import IOB2, IOBES, Token, Tokens

from seqexp.data.schemes import is_chunk_tag

SCHEMES: dict[str, type[Token]] = {"IOB2": IOB2, "IOBES": IOBES}
_PREFIXES: dict[str, frozenset[str]] = {"IOB2": frozenset("BI"), "IOBES": frozenset("BIES")}


def evaluate(
    gold: Sequence[Sequence[str]], pred: Sequence[Sequence[str]], scheme: str | None
) -> dict[str, Any]:
    """Score ``pred`` against ``gold`` (word-level tag strings, same shapes).

    Raises ``ValueError`` if the numbers of sentences differ, naming the index
    of the first sentence whose lengths differ (never truncates), for an
    unknown ``scheme``, or for a tag that does not belong to the scheme (for
    example ``S-PER`` under IOB2 or a bare ``PER``: that is a label-set or
    config error, not an invalid *sequence*; invalid sequences are scored).
    """
    _check_shapes(gold, pred)
    n_words = sum(len(s) for s in gold)
    correct = sum(g == p for gs, ps in zip(gold, pred) for g, p in zip(gs, ps))
    result: dict[str, Any] = {"accuracy": _div(correct, n_words)}
    if scheme is None:
        result.update(_tag_scores(gold, pred))
        result["micro_f1"] = result["accuracy"]
        return result

    key = scheme.upper()
    if key not in SCHEMES:
        raise ValueError(f"unknown tagging scheme {scheme!r}; expected one of {sorted(SCHEMES)} or None")
    _check_tags(gold, key, "gold")
    _check_tags(pred, key, "pred")
    gold_l = [list(s) for s in gold]
    pred_l = [list(s) for s in pred]

    # Default mode: seqeval's chunks of the sentences joined with an "O" between
    # them, exactly as seqeval's f1_score does.
    default_gold = _by_type(default_entities(gold_l))
    default_pred = _by_type(default_entities(pred_l))
    per_type = _per_type(default_gold, default_pred)
    p, r, f = _micro(default_gold, default_pred)
    result.update(precision=p, recall=r, f1=f)

    scheme_cls = SCHEMES[key]
    strict_gold = _by_type(_strict_entities(gold_l, scheme_cls))
    strict_pred = _by_type(_strict_entities(pred_l, scheme_cls))
    p, r, f = _micro(strict_gold, strict_pred)
    result.update(strict_precision=p, strict_recall=r, strict_f1=f, per_type=per_type)
    return result


def format_report(result: dict[str, Any]) -> str:
    """A fixed-width per-type table plus the summary scores, for an MLflow text artifact."""
    per_type: dict[str, dict[str, Any]] = result.get("per_type", {})
    name_w = max([len("type"), len("strict micro"), *(len(t) for t in per_type)])
    head = f"{'type':<{name_w}}  {'precision':>9}  {'recall':>9}  {'f1':>9}  {'support':>8}"
    lines = [head, "-" * len(head)]

    def row(name: str, p: float, r: float, f: float, support: str = "") -> str:
        return f"{name:<{name_w}}  {p:>9.4f}  {r:>9.4f}  {f:>9.4f}  {support:>8}"

    for name, s in per_type.items():
        lines.append(row(name, s["precision"], s["recall"], s["f1"], str(s["support"])))
    lines.append("-" * len(head))
    total = str(sum(int(s["support"]) for s in per_type.values()))
    if "strict_f1" in result:
        lines.append(row("micro", result["precision"], result["recall"], result["f1"], total))
        lines.append(row("strict micro", result["strict_precision"], result["strict_recall"],
                         result["strict_f1"], total))
    elif "f1" in result:
        lines.append(row("macro", result["precision"], result["recall"], result["f1"], total))
    lines.append(f"{'accuracy':<{name_w}}  {result['accuracy']:>9.4f}")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------- helpers
# seqeval's default (conlleval) chunk rules, from ``seqeval.metrics.sequence_labeling``.
# They are restated here because importing that module imports scikit-learn (70 MB
# and a second of start-up in every run); tests/test_metrics.py checks the two agree.
_ENDS = {("B", "B"), ("B", "S"), ("B", "O"), ("I", "B"), ("I", "S"), ("I", "O")}
_STARTS = {("E", "E"), ("E", "I"), ("S", "E"), ("S", "I"), ("O", "E"), ("O", "I")}


def default_entities(sentences: Sequence[Sequence[str]]):
    """``(type, start, end)`` of each chunk, as ``seqeval.metrics.sequence_labeling.get_entities``
    gives them for the nested lists (positions in the sentences joined with an "O" between)."""
    prev_tag, prev_type, begin, i = "O", "", 0, 0
    for sentence in sentences:
        for label in (*sentence, "O"):
            tag, type_ = label[0], label[1:].split("-", maxsplit=1)[-1] or "_"
            if prev_tag in "ES" or (prev_tag, tag) in _ENDS or (prev_tag not in "O." and prev_type != type_):
                yield prev_type, begin, i - 1
            if tag in "BS" or (prev_tag, tag) in _STARTS or (tag not in "O." and prev_type != type_):
                begin = i
            prev_tag, prev_type, i = tag, type_, i + 1

def _div(num: float, den: float) -> float:
    return float(num) / den if den else 0.0


def _f1(p: float, r: float) -> float:
    return 2 * p * r / (p + r) if p + r else 0.0


def _check_shapes(gold: Sequence[Sequence[str]], pred: Sequence[Sequence[str]]) -> None:
    if len(gold) != len(pred):
        raise ValueError(f"gold has {len(gold)} sentences but pred has {len(pred)}")
    for i, (g, p) in enumerate(zip(gold, pred)):
        if len(g) != len(p):
            raise ValueError(f"sentence {i}: gold has {len(g)} tags but pred has {len(p)}")


def _check_tags(sentences: Sequence[Sequence[str]], scheme: str, side: str) -> None:
    allowed = _PREFIXES[scheme]
    seen: set[str] = set()
    for i, sent in enumerate(sentences):
        for tag in sent:
            if tag in seen:
                continue
            if not is_chunk_tag(tag, allowed):
                raise ValueError(f"{side} sentence {i}: tag {tag!r} is not a {scheme} tag")
            seen.add(tag)


def _strict_entities(sentences: list[list[str]], scheme: type[Token]):
    for sent_id, sentence in enumerate(sentences):
        for tag, start, end in _strict_sentence(tuple(sentence), scheme):
            yield tag, sent_id, start, end


@functools.lru_cache(maxsize=1 << 16)
def _strict_sentence(tags: tuple[str, ...], scheme: type[Token]) -> tuple[tuple[str, int, int], ...]:
    """seqeval's strict chunks of one sentence. Cached: a sweep scores the same gold sentences in
    every run, and many predicted sentences repeat (all ``O``, or the gold). Scoring CoNLL-2003 test
    against predictions with 10% of the tags wrong took 0.56 s; from the second run on, 0.21 s."""
    return tuple((e.tag, e.start, e.end) for e in Tokens(list(tags), scheme=scheme).entities)


def _by_type(entities) -> dict[str, set[tuple]]:
    """Group entity tuples ``(type, *position)`` into ``{type: {position, ...}}``."""
    out: dict[str, set[tuple]] = {}
    for type_, *where in entities:
        out.setdefault(type_, set()).add(tuple(where))
    return out


def _micro(gold: dict[str, set], pred: dict[str, set]) -> tuple[float, float, float]:
    tp = sum(len(gold[t] & pred[t]) for t in gold.keys() & pred.keys())
    p = _div(tp, sum(map(len, pred.values())))
    r = _div(tp, sum(map(len, gold.values())))
    return p, r, _f1(p, r)


def _per_type(gold: dict[str, set], pred: dict[str, set]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for t in sorted(gold.keys() | pred.keys()):
        g, p_ = gold.get(t, set()), pred.get(t, set())
        tp = len(g & p_)
        p, r = _div(tp, len(p_)), _div(tp, len(g))
        out[t] = {"precision": p, "recall": r, "f1": _f1(p, r), "support": len(g)}
    return out


def _tag_scores(gold: Sequence[Sequence[str]], pred: Sequence[Sequence[str]]) -> dict[str, Any]:
    """Per-tag and macro-averaged scores for plain token tagging (each word is one instance)."""
    n_gold: Counter[str] = Counter()
    n_pred: Counter[str] = Counter()
    n_tp: Counter[str] = Counter()
    for gs, ps in zip(gold, pred):
        n_gold.update(gs)
        n_pred.update(ps)
        n_tp.update(g for g, p in zip(gs, ps) if g == p)
    per_type: dict[str, dict[str, Any]] = {}
    for t in sorted(n_gold.keys() | n_pred.keys()):
        p, r = _div(n_tp[t], n_pred[t]), _div(n_tp[t], n_gold[t])
        per_type[t] = {"precision": p, "recall": r, "f1": _f1(p, r), "support": n_gold[t]}
    k = len(per_type)
    # Macro f1 is the mean of per-tag f1 (scikit-learn's definition), not the
    # harmonic mean of macro precision and macro recall.
    return {
        "precision": _div(sum(s["precision"] for s in per_type.values()), k),
        "recall": _div(sum(s["recall"] for s in per_type.values()), k),
        "f1": _div(sum(s["f1"] for s in per_type.values()), k),
        "per_type": per_type,
    }
