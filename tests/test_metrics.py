"""Metrics against values worked out by hand, and against seqeval itself."""

from __future__ import annotations

import random
import subprocess
import sys
import time
import warnings

import pytest
from seqeval.metrics import classification_report, f1_score, precision_score, recall_score
from seqeval.scheme import IOB2

from seqexp.metrics import default_entities, evaluate, format_report
from tests.conftest import REPO


def test_iob2_by_hand():
    gold = [["B-PER", "I-PER", "O", "B-LOC"], ["B-ORG", "O", "B-PER"]]
    pred = [["B-PER", "I-PER", "O", "B-ORG"], ["B-ORG", "O", "O"]]
    # gold entities: PER s0[0-1], LOC s0[3], ORG s1[0], PER s1[2]   -> 4
    # pred entities: PER s0[0-1], ORG s0[3], ORG s1[0]              -> 3
    # TP: PER s0[0-1], ORG s1[0] -> 2;  P = 2/3, R = 2/4, F1 = 2PR/(P+R) = 4/7
    # words: 7; wrong: s0[3] (LOC/ORG), s1[2] (PER/O) -> accuracy 5/7
    # per type: LOC tp0 pred0 gold1 -> 0,0,0; ORG tp1 pred2 gold1 -> 1/2,1,2/3;
    #           PER tp1 pred1 gold2 -> 1,1/2,2/3. All sequences valid: strict == default.
    r = evaluate(gold, pred, "IOB2")
    assert r["accuracy"] == pytest.approx(5 / 7)
    assert (r["precision"], r["recall"], r["f1"]) == pytest.approx((2 / 3, 1 / 2, 4 / 7))
    assert (r["strict_precision"], r["strict_recall"], r["strict_f1"]) == pytest.approx((2 / 3, 1 / 2, 4 / 7))
    assert r["per_type"] == {
        "LOC": {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1},
        "ORG": {"precision": 0.5, "recall": 1.0, "f1": pytest.approx(2 / 3), "support": 1},
        "PER": {"precision": 1.0, "recall": 0.5, "f1": pytest.approx(2 / 3), "support": 2},
    }
    assert "micro_f1" not in r


def test_iob2_default_and_strict_differ_on_invalid_predictions():
    gold = [["O", "B-PER", "I-PER", "O", "B-LOC", "I-LOC"], ["B-ORG"]]
    pred = [["O", "I-PER", "I-PER", "O", "B-LOC", "I-ORG"], ["B-ORG"]]
    # default (lenient): pred "I-PER I-PER" after O opens PER[1-2]; "B-LOC I-ORG" is LOC[4] + ORG[5]
    #   gold: PER[1-2], LOC[4-5], ORG s1[0] -> 3; pred: PER[1-2], LOC[4], ORG[5], ORG s1[0] -> 4
    #   TP: PER[1-2], ORG s1 -> 2;  P = 2/4, R = 2/3, F1 = 4/7
    # strict IOB2: a chunk must open with B-, so no PER; "B-LOC I-ORG" gives LOC[4] only
    #   pred: LOC[4], ORG s1 -> 2; TP: ORG s1 -> 1;  P = 1/2, R = 1/3, F1 = 2/5
    # words 7, wrong: s0[1] (B-PER/I-PER), s0[5] (I-LOC/I-ORG) -> accuracy 5/7
    r = evaluate(gold, pred, "IOB2")
    assert (r["precision"], r["recall"], r["f1"]) == pytest.approx((1 / 2, 2 / 3, 4 / 7))
    assert (r["strict_precision"], r["strict_recall"], r["strict_f1"]) == pytest.approx((1 / 2, 1 / 3, 2 / 5))
    assert r["accuracy"] == pytest.approx(5 / 7)
    # per_type is default mode: ORG tp1 pred2 gold1, PER tp1 pred1 gold1, LOC tp0 pred1 gold1
    assert r["per_type"]["ORG"] == {"precision": 0.5, "recall": 1.0, "f1": pytest.approx(2 / 3), "support": 1}
    assert r["per_type"]["PER"] == {"precision": 1.0, "recall": 1.0, "f1": 1.0, "support": 1}
    assert r["per_type"]["LOC"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}


def test_iobes_by_hand():
    gold = [["S-PER", "O", "B-LOC", "I-LOC", "E-LOC"], ["B-ORG", "E-ORG"]]
    pred = [["S-PER", "O", "B-LOC", "E-LOC", "O"], ["B-ORG", "I-ORG"]]
    # default: gold PER[0], LOC[2-4], ORG s1[0-1]; pred PER[0], LOC[2-3], ORG s1[0-1] (unclosed but
    #   the lenient mode closes it at the sentence end). TP 2 of 3/3 -> P = R = F1 = 2/3
    # strict IOBES: "B-ORG I-ORG" never reaches E- -> no entity. pred: PER[0], LOC[2-3] -> 2;
    #   TP: PER -> 1;  P = 1/2, R = 1/3, F1 = 2/5
    # words 7, wrong: s0[3], s0[4], s1[1] -> accuracy 4/7
    r = evaluate(gold, pred, "IOBES")
    assert (r["precision"], r["recall"], r["f1"]) == pytest.approx((2 / 3, 2 / 3, 2 / 3))
    assert (r["strict_precision"], r["strict_recall"], r["strict_f1"]) == pytest.approx((1 / 2, 1 / 3, 2 / 5))
    assert r["accuracy"] == pytest.approx(4 / 7)
    assert r["per_type"]["LOC"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}
    assert r["per_type"]["ORG"]["f1"] == 1.0


def test_pos_macro_by_hand():
    gold = [["DET", "NOUN", "VERB"], ["NOUN", "VERB"]]
    pred = [["DET", "VERB", "VERB"], ["NOUN", "ADJ"]]
    # tag   tp  pred  gold   P     R     F1
    # ADJ   0   1     0      0     0     0     (0/0 recall -> 0)
    # DET   1   1     1      1     1     1
    # NOUN  1   1     2      1     1/2   2/3
    # VERB  1   2     2      1/2   1/2   1/2
    # macro P = 2.5/4 = 0.625, R = 2/4 = 0.5, F1 = (1 + 2/3 + 1/2)/4 = 13/24; accuracy 3/5
    r = evaluate(gold, pred, None)
    assert (r["precision"], r["recall"], r["f1"]) == pytest.approx((0.625, 0.5, 13 / 24))
    assert r["accuracy"] == pytest.approx(3 / 5)
    assert r["micro_f1"] == r["accuracy"]
    assert r["per_type"]["ADJ"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    assert r["per_type"]["NOUN"] == {"precision": 1.0, "recall": 0.5, "f1": pytest.approx(2 / 3), "support": 2}
    assert "strict_f1" not in r
    # A gold tag never predicted: precision 0 (not undefined), and it enters the macro mean.
    r = evaluate(gold + [["PRON"]], pred + [["NOUN"]], None)
    assert r["per_type"]["PRON"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}
    # NOUN now tp1 pred2 gold2 -> 1/2, 1/2, 1/2; macro over 5 tags: P = R = F1 = 2/5
    assert (r["precision"], r["recall"], r["f1"]) == pytest.approx((0.4, 0.4, 0.4))


def test_length_mismatch_names_the_sentence():
    with pytest.raises(ValueError, match="sentence 1"):
        evaluate([["O"], ["O", "O"]], [["O"], ["O"]], "IOB2")
    with pytest.raises(ValueError, match="sentence 0"):
        evaluate([["NN"]], [["NN", "NN"]], None)
    with pytest.raises(ValueError, match="2 sentences"):
        evaluate([["O"], ["O"]], [["O"]], None)


def test_bad_scheme_or_tags_are_rejected():
    with pytest.raises(ValueError, match="scheme"):
        evaluate([["O"]], [["O"]], "BILOU")
    with pytest.raises(ValueError, match="'S-PER'"):
        evaluate([["S-PER"]], [["O"]], "IOB2")
    with pytest.raises(ValueError, match="pred sentence 0"):
        evaluate([["O"]], [["PER"]], "IOB2")


def test_types_are_plain_python_and_empty_input_is_zero():
    r = evaluate([["B-PER", "O"]], [["I-PER", "O"]], "IOB2")
    for key, value in r.items():
        if key == "per_type":
            for scores in value.values():
                assert {type(scores[k]) for k in ("precision", "recall", "f1")} == {float}
                assert type(scores["support"]) is int
        else:
            assert type(value) is float, key
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no seqeval "ill-defined" warnings either
        empty = evaluate([], [], "IOB2")
        assert empty["f1"] == empty["strict_f1"] == empty["accuracy"] == 0.0
        assert empty["per_type"] == {}
        assert evaluate([["O", "O"]], [["O", "O"]], "IOBES")["f1"] == 0.0


def test_agrees_with_seqeval_on_random_invalid_predictions():
    rng = random.Random(0)
    tags = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC", "B-MISC", "I-MISC"]
    gold, pred = [], []
    for _ in range(200):
        n = rng.randint(1, 12)
        gold.append([rng.choice(tags) for _ in range(n)])
        pred.append([rng.choice(tags) for _ in range(n)])
    r = evaluate(gold, pred, "IOB2")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert r["precision"] == pytest.approx(precision_score(gold, pred))
        assert r["recall"] == pytest.approx(recall_score(gold, pred))
        assert r["f1"] == pytest.approx(f1_score(gold, pred))
        assert r["strict_f1"] == pytest.approx(f1_score(gold, pred, mode="strict", scheme=IOB2))
        assert r["strict_precision"] == pytest.approx(precision_score(gold, pred, mode="strict", scheme=IOB2))
        report = classification_report(gold, pred, output_dict=True)
    for type_, scores in r["per_type"].items():
        assert scores["precision"] == pytest.approx(report[type_]["precision"])
        assert scores["recall"] == pytest.approx(report[type_]["recall"])
        assert scores["f1"] == pytest.approx(report[type_]["f1-score"])
        assert scores["support"] == report[type_]["support"]


def test_default_chunks_are_seqevals(conll2003_dir):
    """seqexp restates seqeval's default chunk rules (to keep scikit-learn out of every run): the same chunks."""
    from seqeval.metrics.sequence_labeling import get_entities

    rng = random.Random(1)
    for tags in (["O", "B-PER", "I-PER", "B-LOC", "I-LOC"],
                 ["O", "B-PER", "I-PER", "E-PER", "S-PER", "B-LOC", "I-LOC", "E-LOC", "S-LOC"]):
        for _ in range(300):
            sentences = [[rng.choice(tags) for _ in range(rng.randint(0, 9))] for _ in range(rng.randint(1, 4))]
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                assert list(default_entities(sentences)) == get_entities(sentences), sentences
    gold = _read_column(conll2003_dir / "eng.testb", -1)
    assert list(default_entities(gold)) == get_entities(gold)


def test_a_run_does_not_import_scikit_learn():
    code = ("import sys, seqexp.run, seqexp.models.tagger, seqexp.tracking, seqexp.sweep, mlflow, transformers; "
            "assert 'sklearn' not in sys.modules, 'sklearn imported'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


def test_format_report_lists_every_type():
    text = format_report(evaluate([["B-PER", "O", "B-LOC"]], [["B-PER", "O", "O"]], "IOB2"))
    assert "PER" in text and "LOC" in text and "strict micro" in text and "accuracy" in text
    text = format_report(evaluate([["NN", "VB"]], [["NN", "NN"]], None))
    assert "NN" in text and "VB" in text and "macro" in text


def _read_column(path, column):
    sentences, current = [], []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            current.append(line.split()[column])
        elif current:
            sentences.append(current)
            current = []
    if current:
        sentences.append(current)
    return sentences


def test_conll2003_test_set_is_fast(conll2003_dir):
    gold = _read_column(conll2003_dir / "eng.testb", -1)
    assert len(gold) == 3453
    labels = sorted({t for s in gold for t in s})
    rng = random.Random(1)
    pred = [[t if rng.random() < 0.9 else rng.choice(labels) for t in s] for s in gold]
    elapsed = []  # the best of three: under make test's two workers one call once took 2.004 s (alone: 0.06-0.2 s)
    for _ in range(3):
        start = time.perf_counter()
        r = evaluate(gold, pred, "IOB2")
        elapsed.append(time.perf_counter() - start)
    assert min(elapsed) < 2.0, f"evaluate took {min(elapsed):.2f}s at best of 3"
    assert 0.0 < r["f1"] < r["strict_f1"] < 1.0  # random noise opens many I- chunks
    assert evaluate(gold, gold, "IOB2")["strict_f1"] == 1.0
