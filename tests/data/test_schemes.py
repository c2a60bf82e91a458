"""Scheme conversion: IOB1/IOB2 -> IOB2, IOBES/BIOES/BMES -> IOBES, checked against seqeval itself."""

from __future__ import annotations

import random
import warnings
from pathlib import Path

import pytest
from seqeval.metrics.sequence_labeling import get_entities
from seqeval.scheme import IOB2, IOBES, Entities

from seqexp.data.readers import read_conll
from seqexp.data.schemes import (
    SCHEMES,
    Repairs,
    canonical_scheme,
    first_bad_tag,
    is_chunk_tag,
    normalize,
    scoring_scheme,
    tag_problem,
    validate_scheme_name,
)
from seqexp.data.sentences import DataFormatError


def strict_entities(tags: list[str], scheme: str) -> list[tuple[str, int, int]]:
    """Entities as seqeval's strict mode reads them, in get_entities' (type, first, last) form."""
    entities = Entities([tags], IOB2 if scheme == "IOB2" else IOBES).entities[0]
    return sorted((e.tag, e.start, e.end - 1) for e in entities)


def test_iob1_to_iob2() -> None:
    iob1 = ["I-PER", "I-PER", "O", "I-LOC", "B-LOC", "I-LOC", "I-ORG", "O", "I-MISC"]
    iob2 = ["B-PER", "I-PER", "O", "B-LOC", "B-LOC", "I-LOC", "B-ORG", "O", "B-MISC"]
    assert normalize(iob1, "IOB1") == iob2
    assert normalize(iob2, "IOB1") == iob2  # idempotent on valid IOB2
    assert normalize(iob2, "IOB2", strict=True) == iob2


IOB1_FILE = """-DOCSTART- -X- -X- O

EU NNP I-NP I-ORG
rejects VBZ I-VP O
German JJ I-NP I-MISC
call NN I-NP O

Peter NNP I-NP I-PER
Blackburn NNP I-NP I-PER
Smith NNP B-NP B-PER

-DOCSTART- -X- -X- O

BRUSSELS NNP I-NP I-LOC
"""


def test_iob1_file_gives_the_iob2_files_entities(tmp_path: Path) -> None:
    """An IOB1 copy with -DOCSTART- lines, read and converted, equals the IOB2 copy."""
    iob1_path = tmp_path / "iob1.txt"
    iob1_path.write_text(IOB1_FILE)
    iob2_text = "\n".join(line for line in IOB1_FILE.split("\n")[2:] if not line.startswith("-DOCSTART-"))
    iob2_text = (iob2_text.replace("I-ORG", "B-ORG").replace("I-MISC", "B-MISC").replace("I-LOC", "B-LOC")
                 .replace("Peter NNP I-NP I-PER", "Peter NNP I-NP B-PER"))
    (tmp_path / "iob2.txt").write_text(iob2_text)
    iob1 = read_conll(iob1_path, tag_col=3)
    iob2 = read_conll(tmp_path / "iob2.txt", tag_col=3)
    assert len(iob1) == len(iob2) == 3
    converted = [normalize(s.tags, "IOB1", origin=s.origin) for s in iob1]
    assert converted == [list(s.tags) for s in iob2]
    for old, new in zip(iob1, converted):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            assert sorted(get_entities(list(old.tags))) == sorted(get_entities(new)) == strict_entities(new, "IOB2")
    assert get_entities(converted[1]) == [("PER", 0, 1), ("PER", 2, 2)]


def test_iobes_and_bioes_alias() -> None:
    tags = ["S-PER", "O", "B-LOC", "I-LOC", "E-LOC"]
    assert normalize(tags, "IOBES", strict=True) == tags
    assert normalize(tags, "bioes", strict=True) == tags
    assert scoring_scheme("BIOES") == scoring_scheme("IOBES") == "IOBES"


def test_bmes_to_iobes() -> None:
    assert normalize(["B-PER", "M-PER", "E-PER", "O", "S-LOC"], "BMES", strict=True) == [
        "B-PER", "I-PER", "E-PER", "O", "S-LOC"]
    # word segmentation: bare prefixes, no type
    assert normalize(["B", "M", "E", "S", "B", "E"], "BMES", strict=True) == ["B", "I", "E", "S", "B", "E"]
    assert normalize(["M", "E"], "BMES") == ["B", "E"]  # repaired as seqeval reads it
    assert scoring_scheme("BMES") == "IOBES"


@pytest.mark.parametrize(("tags", "scheme", "word"), [
    (["B-LOC", "I-PER"], "IOB2", 2),
    (["O", "I-PER"], "IOB2", 2),
    (["I-PER"], "IOB2", 1),
    (["O", "E-X"], "IOBES", 2),
    (["B-X", "O"], "IOBES", 1),
    (["B-X", "I-X"], "IOBES", 2),
    (["B-X", "B-X", "E-X"], "BMES", 1),
])
def test_strict_rejects_invalid_sequences(tags: list[str], scheme: str, word: int) -> None:
    with pytest.raises(DataFormatError) as err:
        normalize(tags, scheme, origin="corpus.txt:17", strict=True)
    message = str(err.value)
    assert message.startswith("corpus.txt:17: ") and f"word {word} " in message
    assert "dataset.strict=false" in message


def test_lenient_repairs_as_seqeval_default_reads_and_counts() -> None:
    repairs = Repairs()
    tags = ["O", "I-PER", "I-PER", "B-LOC", "I-ORG"]
    out = normalize(tags, "IOB2", origin="f:3", repairs=repairs)
    assert out == ["O", "B-PER", "I-PER", "B-LOC", "B-ORG"]
    assert (repairs.sentences, repairs.tags, repairs.first_origin) == (1, 2, "f:3")
    normalize(["B-X", "I-X"], "IOB2", origin="f:9", repairs=repairs)
    assert (repairs.sentences, repairs.tags, repairs.first_origin) == (1, 2, "f:3")
    out = normalize(["B-X", "I-X", "O", "E-Y"], "IOBES", origin="f:5", repairs=repairs)
    assert out == ["B-X", "E-X", "O", "S-Y"]
    assert (repairs.sentences, repairs.tags) == (2, 4)


@pytest.mark.parametrize(("scheme", "prefixes"), [("IOB1", "IB"), ("IOB2", "IB"), ("IOBES", "IBES"), ("BMES", "BMES")])
def test_agrees_with_seqeval_on_random_sequences(scheme: str, prefixes: str) -> None:
    """Output entities (seqeval strict) == input entities (seqeval default); valid input is unchanged."""
    rng = random.Random(13)
    vocabulary = ["O"] + [f"{p}-{t}" for p in prefixes for t in ("X", "Y")]
    target = scoring_scheme(scheme)
    for _ in range(3000):
        tags = [rng.choice(vocabulary) for _ in range(rng.randint(1, 7))]
        as_read = [t.replace("M-", "I-") for t in tags]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            expected = get_entities(as_read)
        out = normalize(tags, scheme)
        assert sorted(get_entities(out)) == strict_entities(out, target) == sorted(expected), tags
        assert normalize(out, target, strict=True) == out
        if scheme != "IOB1":
            try:
                normalize(tags, scheme, strict=True)
                valid = True
            except DataFormatError:
                valid = False
            assert valid == (out == as_read), tags


def test_wrong_prefix_for_scheme_suggests_a_scheme() -> None:
    with pytest.raises(DataFormatError, match=r"^f:1: word 2: tag 'E-PER' is not a IOB2 tag.*IOBES"):
        normalize(["B-PER", "E-PER"], "IOB2", origin="f:1")
    with pytest.raises(DataFormatError, match="dataset.scheme=none"):
        normalize(["NN", "VB"], "IOB2", origin="f:1")


def test_none_passes_tags_through() -> None:
    assert normalize(["NN", "I-X"], None) == ["NN", "I-X"]
    assert normalize(["NN"], "none") == ["NN"]
    assert scoring_scheme(None) is scoring_scheme("none") is None
    assert scoring_scheme("IOB1") == scoring_scheme("iob2") == "IOB2"


def test_scheme_names() -> None:
    assert canonical_scheme("iobes") == "IOBES" and canonical_scheme(None) == "none"
    for name in SCHEMES:
        validate_scheme_name(name)
    with pytest.raises(ValueError, match="IOB1, IOB2, IOBES, BIOES, BMES, none"):
        validate_scheme_name("BILOU")


def test_parsable_tags_are_what_seqeval_reads_with_a_type() -> None:
    """`is_chunk_tag` accepts P-TYPE and bare prefixes (seqeval's type '_'), and nothing seqeval misreads."""
    for tag in ("O", "B-PER", "I-PER-X", "B", "I"):
        assert is_chunk_tag(tag, frozenset("IOB")), tag
    for tag in ("B-", "I-", "-PER", "X-PER", "b-per", "o", "BPER", "O-PER", "", "-"):
        assert not is_chunk_tag(tag, frozenset("IOB")), tag
        assert tag_problem(tag, "IOB2") is not None and tag_problem(tag, "none") is None
    with pytest.raises(DataFormatError, match=r"^f:3: word 2: tag 'B-' is not a IOB2 tag: its type is missing"):
        normalize(["O", "B-", "I-X"], "IOB2", origin="f:3")
    assert first_bad_tag(["O", "B-X", "b-x", "B-", "b-x"], "IOB2")[0] == 2
    assert first_bad_tag(["O", "B-X"], "IOB2") is None and first_bad_tag(["B-"], None) is None
