"""Tagging schemes: convert every corpus to the scheme the project trains and scores in.

Corpora come as IOB1 (old CoNLL-2003 copies), IOB2, IOBES/BIOES or BMES
(Chinese). Training and seqeval's strict scoring need one well-formed scheme,
so each sentence is converted once, at load time:

    IOB1, IOB2  -> IOB2        IOBES, BIOES, BMES (M -> I) -> IOBES

Conversion reads chunks exactly the way seqeval's default (lenient) mode reads
them (an ``I-X`` that cannot continue a chunk starts one) and writes them back
canonically, so the converted tags give the same entities in seqeval's strict
mode as the original tags give in its default mode. For IOB2/IOBES/BMES input,
a change means the input was invalid: ``strict=True`` rejects it, otherwise it
is repaired and counted in a :class:`Repairs`. Plain token tagging (POS) uses
scheme ``None``/``"none"``: tags pass through untouched.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from seqexp.data.sentences import DataFormatError

__all__ = [
    "SCHEMES", "Repairs", "canonical_scheme", "first_bad_tag", "is_chunk_tag", "normalize", "scoring_scheme",
    "tag_problem", "validate_scheme_name",
]

# declared name -> (prefixes the input may use, scheme trained and scored in)
_SCHEMES: dict[str, tuple[frozenset[str], str | None]] = {
    "IOB1": (frozenset("IOB"), "IOB2"),
    "IOB2": (frozenset("IOB"), "IOB2"),
    "IOBES": (frozenset("IOBES"), "IOBES"),
    "BIOES": (frozenset("IOBES"), "IOBES"),
    "BMES": (frozenset("BMESO"), "IOBES"),
    "none": (frozenset(), None),
}
SCHEMES: tuple[str, ...] = tuple(_SCHEMES)


@dataclass
class Repairs:
    """How many invalid sentences/tags lenient normalization fixed, and where the first one was."""

    sentences: int = 0
    tags: int = 0
    first_origin: str = ""

    def add(self, changed: int, origin: str) -> None:
        if changed:
            self.sentences += 1
            self.tags += changed
            self.first_origin = self.first_origin or origin


def canonical_scheme(scheme: str | None) -> str:
    """Spelling used internally ("iob2" -> "IOB2", None -> "none"); ValueError for unknown names."""
    if scheme is None or str(scheme).lower() == "none":
        return "none"
    name = str(scheme).upper()
    if name not in _SCHEMES:
        raise ValueError(f"unknown tagging scheme {scheme!r}; choose one of {', '.join(SCHEMES)}")
    return name


def validate_scheme_name(name: str | None) -> None:
    """Raise ValueError naming the known schemes if ``name`` is not one (config validation)."""
    canonical_scheme(name)


def scoring_scheme(scheme: str | None) -> str | None:
    """The scheme tags are in after :func:`normalize`: "IOB2", "IOBES", or None for plain tags."""
    return _SCHEMES[canonical_scheme(scheme)][1]


def is_chunk_tag(tag: str, prefixes: frozenset[str] | str) -> bool:
    """True for ``O``, ``P-TYPE`` and a bare ``P`` (word segmentation), ``P`` one of ``prefixes``.

    The one definition of a parsable chunk tag: the readers, :func:`normalize` and the
    metrics all use it. ``B-`` (a dash and no type), ``-PER``, ``X-PER`` and ``b-per`` are not.
    """
    if tag == "O":
        return True
    return tag[:1] in prefixes and tag[0] != "O" and (len(tag) == 1 or (len(tag) > 2 and tag[1] == "-"))


def tag_problem(tag: str, scheme: str | None) -> str | None:
    """Why ``scheme`` cannot parse ``tag`` ("tag 'B-' is not a IOB2 tag: ..., fix"), or None when it can."""
    name = canonical_scheme(scheme)
    allowed, target = _SCHEMES[name]
    if target is None or is_chunk_tag(tag, allowed):
        return None
    expected = ", ".join(sorted(allowed - {"O"}))
    head, dash, rest = tag.partition("-")
    if dash and len(head) == 1 and head in allowed and head != "O" and not rest:
        why = f"its type is missing after {tag!r} (expected e.g. '{head}-PER')"
    elif dash and not head:
        why = f"it has no prefix before the '-' (expected one of {expected}, e.g. '{expected[0]}{tag}')"
    elif tag.upper() != tag and is_chunk_tag(tag[:1].upper() + tag[1:], allowed):
        why = f"prefixes are upper-case (did you mean {tag[:1].upper() + tag[1:]!r}?)"
    else:
        why = f"expected O or one of {expected} followed by '-TYPE'"
    fits = [other for other, (prefixes, _) in _SCHEMES.items()
            if other != name and prefixes and is_chunk_tag(tag, prefixes)]
    fix = (f"is `dataset.scheme` one of {', '.join(fits)}?" if fits
           else "fix the tag" + ("" if "-" in tag else ", or for plain tags set `dataset.scheme=none`"))
    return f"tag {tag!r} is not a {name} tag: {why}; {fix}"


def first_bad_tag(tags: Sequence[str], scheme: str | None) -> tuple[int, str] | None:
    """(index, problem) of the first tag ``scheme`` cannot parse, or None. Checks distinct tags only."""
    if _SCHEMES[canonical_scheme(scheme)][1] is None:
        return None
    bad = {tag: why for tag in set(tags) if (why := tag_problem(tag, scheme)) is not None}
    if not bad:
        return None
    k = next(k for k, tag in enumerate(tags) if tag in bad)
    return k, bad[tags[k]]


def _split(tag: str, allowed: frozenset[str], scheme: str, origin: str, index: int) -> tuple[str, str]:
    """``"B-PER"`` -> ``("B", "PER")``; bare prefixes (``"B"``, segmentation) get type ``""``."""
    if tag == "O":
        return "O", ""
    if not is_chunk_tag(tag, allowed):
        raise DataFormatError(f"{origin or '<memory>'}: word {index + 1}: {tag_problem(tag, scheme)}")
    prefix = tag[0]
    return ("I" if prefix == "M" else prefix), tag[2:]


def _is_valid(tags: Sequence[str], allowed: frozenset[str], target: str) -> bool:
    """True if the tags are already well-formed in their declared scheme (the common case).

    Checks the distinct tags and distinct tag bigrams only, so a sentence costs a
    couple of C-level set builds instead of a Python loop per token.
    """
    if not all(is_chunk_tag(tag, allowed) for tag in set(tags)):
        return False
    pairs = set(zip(tags, tags[1:]))
    if target == "IOB2":
        return tags[0][0] != "I" and all(t[0] != "I" or (p[0] in "BI" and p[1:] == t[1:]) for p, t in pairs)
    return (
        tags[0][0] in "OBS"
        and tags[-1][0] in "OES"
        and all(
            (t[0] in "IME" and p[1:] == t[1:]) if p[0] in "BIM" else t[0] in "OBS"
            for p, t in pairs
        )
    )


def _chunks(parsed: Sequence[tuple[str, str]]) -> list[tuple[str, int, int]]:
    """Chunks (type, first, last) as seqeval's default mode finds them (its start/end_of_chunk rules)."""
    chunks = []
    prev_prefix, prev_type, begin = "O", "", -1
    for i, (prefix, type_) in enumerate([*parsed, ("O", "")]):
        end = prev_prefix in "ES" or (prev_prefix in "BI" and prefix in "BSO") or (
            prev_prefix != "O" and prev_type != type_
        )
        start = prefix in "BS" or (prev_prefix in "ESO" and prefix in "IE") or (prefix != "O" and prev_type != type_)
        if prev_prefix != "O" and end:
            chunks.append((prev_type, begin, i - 1))
        if start:  # implies prefix != "O"
            begin = i
        prev_prefix, prev_type = prefix, type_
    return chunks


def _write(chunks: list[tuple[str, int, int]], length: int, target: str) -> list[str]:
    """Tags for ``chunks`` in ``target`` ("IOB2" or "IOBES")."""
    out = ["O"] * length
    for type_, first, last in chunks:
        suffix = f"-{type_}" if type_ else ""
        if target == "IOBES" and first == last:
            out[first] = "S" + suffix
            continue
        out[first] = "B" + suffix
        for i in range(first + 1, last + 1):
            out[i] = "I" + suffix
        if target == "IOBES":
            out[last] = "E" + suffix
    return out


def normalize(
    tags: Sequence[str],
    scheme: str | None,
    *,
    origin: str = "",
    strict: bool = False,
    repairs: Repairs | None = None,
) -> list[str]:
    """Convert one sentence's tags to the training/scoring scheme (see the module docstring).

    With ``strict`` and a declared IOB2/IOBES/BIOES/BMES scheme an invalid
    sequence raises :class:`DataFormatError` naming ``origin``; otherwise it is
    repaired as seqeval's default mode reads it and counted in ``repairs``.
    """
    name = canonical_scheme(scheme)
    allowed, target = _SCHEMES[name]
    if target is None:
        return list(tags)
    if not tags or _is_valid(tags, allowed, target):
        return [tag if tag[0] != "M" else f"I{tag[1:]}" for tag in tags] if name == "BMES" else list(tags)
    parsed = [_split(tag, allowed, name, origin, i) for i, tag in enumerate(tags)]
    out = _write(_chunks(parsed), len(tags), target)
    if name == "IOB1":
        return out  # a conversion, not a repair
    mapped = tags if name != "BMES" else [f"I{tag[1:]}" if tag[0] == "M" else tag for tag in tags]
    changed = [i for i, (old, new) in enumerate(zip(mapped, out)) if old != new]
    if changed and strict:
        i = changed[0]
        before = f"after {tags[i - 1]!r}" if i else "at the start of the sentence"
        after = f" before {tags[i + 1]!r}" if i + 1 < len(tags) else " at the end of the sentence"
        raise DataFormatError(
            f"{origin or '<memory>'}: invalid {name} sequence: word {i + 1} has {tags[i]!r} {before}{after}, "
            f"which seqeval would read as {out[i]!r}; fix the tags, or set `dataset.strict=false` to repair them"
        )
    if repairs is not None:
        repairs.add(len(changed), origin)
    return out
