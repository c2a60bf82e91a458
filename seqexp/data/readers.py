"""Readers for CoNLL column files and CoNLL-U, the formats every corpus here ships in.

Rules that hold for both readers, because silent data loss is the worst bug a
benchmark can have:

* every non-blank line that is not a comment (CoNLL-U) or a ``-DOCSTART-``
  line becomes a word, or raises :class:`DataFormatError`;
* every error message starts with ``path:line:`` and says how to fix it;
* bytes are decoded once per file, and a decoding error is mapped back to its
  line, with the likely encoding (cp1252 where the bytes fit it, latin-1 only
  where they do not); UTF-16/UTF-32 are recognised by their byte-order mark and
  a UTF-8 BOM is dropped, because editors on Windows add them; NUL bytes are an
  error (naming UTF-16/32 without a mark when they fall where it puts them);
  CRLF and a lone CR end a line like LF;
* gzip files are unpacked (by their magic bytes, whatever the name); zip, bzip2,
  xz, zstd and 7-Zip files are named as what they are;
* with a ``scheme``, every tag must parse in it (``B-`` or ``X-PER`` is an error
  at its line, not a crash at the first scoring);
* a tag holding whitespace (or, with ``separator=space``, a word holding a tab)
  means tabs and spaces were mixed as separators, and is an error.

The hot paths avoid a Python-level loop per line (MSRA has 2.2M lines): the
file is split with C-level ``str`` methods and sentence boundaries are found
with numpy. A per-line path is kept for irregular files and error messages.
"""

from __future__ import annotations

import codecs
import gc
import gzip
import re
import zlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from itertools import compress, repeat
from operator import methodcaller
from pathlib import Path

import numpy as np

from seqexp.errors import DataFileMissingError  # noqa: F401  (defined with every user error)
from seqexp.data.schemes import first_bad_tag
from seqexp.data.sentences import DataFormatError, Sentence

__all__ = [
    "SEPARATORS",
    "UD_FIELDS",
    "DataFileMissingError",
    "first_token_line",
    "read_conll",
    "read_conllu",
    "read_text",
]

SEPARATORS = ("auto", "space", "tab")
# CoNLL-U field name -> 0-based column of the tag-like fields a tagger can learn.
UD_FIELDS = {"upos": 3, "xpos": 4}
DOCSTART = "-DOCSTART-"

_BOMS = (  # UTF-32-LE first: its mark starts with the UTF-16-LE one
    (codecs.BOM_UTF32_LE, "utf-32-le"),
    (codecs.BOM_UTF32_BE, "utf-32-be"),
    (codecs.BOM_UTF8, "utf-8"),
    (codecs.BOM_UTF16_LE, "utf-16-le"),
    (codecs.BOM_UTF16_BE, "utf-16-be"),
)
_UD_SKIPPED_ID = re.compile(r"\d+-\d+|\d+\.\d+")


def _wide(encoding: str) -> bool:
    """True for UTF-16/UTF-32, where NUL bytes are normal."""
    try:
        return codecs.lookup(encoding).name.startswith(("utf-16", "utf-32"))
    except LookupError:
        return False  # the decode below reports the unknown name


def _codec(encoding: str) -> str:
    try:
        return codecs.lookup(encoding).name
    except LookupError:
        return encoding


# Compressed or archive formats, by their magic bytes: (signature, name, how to get the text out).
_MAGIC = (
    (b"PK\x03\x04", "a zip archive", "`unzip` it"),
    (b"PK\x05\x06", "an (empty) zip archive", "`unzip` it"),
    (b"\xfd7zXZ\x00", "xz-compressed", "`unxz` it"),
    (b"\x28\xb5\x2f\xfd", "zstd-compressed", "`unzstd` it"),
    (b"7z\xbc\xaf\x27\x1c", "a 7-Zip archive", "`7z x` it"),
)
_GZIP = b"\x1f\x8b"
_BZIP2 = re.compile(rb"BZh[1-9]1AY&SY")


def _not_text(path: Path, data: bytes) -> None:
    """Name a compressed file or an archive as what it is, instead of misreading its bytes."""
    what = next(((name, fix) for magic, name, fix in _MAGIC if data.startswith(magic)), None)
    if what is None and _BZIP2.match(data):
        what = ("bzip2-compressed", "`bunzip2` it")
    if what is not None:
        raise DataFormatError(
            f"{path}:1: the file is {what[0]}, not a text file; {what[1]} and point `dataset.files.<split>` "
            f"at the file inside (gzip files are read as they are)"
        )


def _gunzip(path: Path, data: bytes) -> bytes:
    try:
        return gzip.decompress(data)
    except (OSError, EOFError, zlib.error) as err:
        raise DataFormatError(f"{path}:1: gzip-compressed but damaged or truncated ({err}); "
                              f"check it with `gzip -t {path}`") from None


def _utf16_like(data: bytes) -> str | None:
    """The codec whose NUL pattern ``data`` has (ASCII in UTF-16/32 is a NUL beside every letter)."""
    sample = data[: 1 << 16]
    sample = sample[: len(sample) - len(sample) % 4]
    if len(sample) < 4:
        return None
    zeros = [sample[k::4].count(0) / (len(sample) // 4) for k in range(4)]
    if zeros[2] > 0.9 and zeros[3] > 0.9 and zeros[0] < 0.1:
        return "utf-32-le"
    if zeros[0] > 0.9 and zeros[1] > 0.9 and zeros[3] < 0.1:
        return "utf-32-be"
    if min(zeros[1], zeros[3]) >= 0.25 and max(zeros[0], zeros[2]) <= 0.02:
        return "utf-16-le"
    if min(zeros[0], zeros[2]) >= 0.25 and max(zeros[1], zeros[3]) <= 0.02:
        return "utf-16-be"
    return None


def _nul_check(path: Path, data: bytes, encoding: str, declared: str) -> None:
    """NUL bytes in a file read with a byte codec: UTF-16/32 without a byte-order mark when the
    NULs fall where that codec puts them (it would decode silently into garbage words), else a
    stray NUL at its line."""
    nul = data.find(b"\x00")
    if nul < 0 or _wide(encoding):
        return
    line = data.count(b"\n", 0, nul) + 1
    wide = _utf16_like(data)
    if wide is not None:
        raise DataFormatError(
            f"{path}:{line}: NUL byte(s) in a file read as {encoding} (`dataset.encoding`={declared}); "
            f"it looks like {wide.upper()} without a byte-order mark: set `dataset.encoding={wide}`, "
            f"or re-encode it (`iconv -f {wide} -t utf-8`)"
        )
    column = nul - (data.rfind(b"\n", 0, nul) + 1) + 1
    raise DataFormatError(
        f"{path}:{line}: NUL byte at byte column {column}: a text file has none; the file is binary or "
        f"damaged there: remove the NUL bytes (`tr -d '\\000'`) or restore the file"
    )


def _decode_hint(data: bytes, err: UnicodeDecodeError, encoding: str) -> str:
    """How to read bytes that are not ``encoding``: Windows-1252 when they decode as it (smart
    quotes, 0x80-0x9F), latin-1 only when they do not (latin-1 decodes anything, into C1 controls)."""
    bad = data[err.start : err.end]
    if _codec(encoding) != "cp1252":
        try:
            data.decode("cp1252")
        except UnicodeDecodeError as cp_err:
            undefined = data[cp_err.start : cp_err.start + 1]
            return (f"it is not Windows-1252 either ({undefined!r} is undefined there); if it is latin-1 "
                    f"(ISO-8859-1) set `dataset.encoding=latin-1` (or `iconv -f latin-1 -t utf-8`), otherwise "
                    f"set `dataset.encoding` to the file's real encoding")
        shown = bad.decode("cp1252")
        return (f"the file decodes as Windows-1252 (where {bad!r} is {shown!r}): set `dataset.encoding=cp1252`, "
                f"or re-encode it (`iconv -f cp1252 -t utf-8`)")
    return ("re-encode the file (e.g. `iconv -f latin-1 -t utf-8`) or set `dataset.encoding` to the file's "
            "real encoding")


_C1 = re.compile("[\x80-\x9f]")


def _c1_check(path: Path, data: bytes, text: str, encoding: str, declared: str) -> None:
    """latin-1 decodes every byte, so a Windows-1252 file read as latin-1 gives words with C1
    control characters (U+0093 for a smart quote): reject it when the bytes fit Windows-1252."""
    if _codec(encoding) != "iso8859-1":
        return
    found = _C1.search(text)
    if found is None:
        return
    try:
        data.decode("cp1252")
    except UnicodeDecodeError:
        return  # bytes Windows-1252 leaves undefined: maybe really latin-1 with controls
    i = found.start()  # one byte per character
    line, column = text.count("\n", 0, i) + 1, i - (text.rfind("\n", 0, i) + 1) + 1
    char = data[i : i + 1]
    raise DataFormatError(
        f"{path}:{line}: byte {char!r} at byte column {column} is the control character U+{ord(found.group()):04X} "
        f"in {encoding} (`dataset.encoding`={declared}), which no text uses; the file decodes as Windows-1252 "
        f"(where it is {char.decode('cp1252')!r}): set `dataset.encoding=cp1252`"
    )


def _raw(path: Path, data: bytes, encoding: str) -> tuple[bytes, str]:
    """The file's text bytes and their codec: gzip unpacked, archives named, a byte-order mark
    picking the codec (and removed), NUL bytes checked."""
    if data.startswith(_GZIP):
        data = _gunzip(path, data)
    _not_text(path, data)
    declared = encoding
    for bom, bom_encoding in _BOMS:
        if data.startswith(bom):
            data, encoding = data[len(bom) :], bom_encoding
            break
    _nul_check(path, data, encoding, declared)
    return data, encoding


def read_text(path: str | Path, encoding: str = "utf-8") -> str:
    """Decode a whole file: gzip is unpacked (by its magic bytes, whatever the name), other
    archives are named; CRLF and lone CR become LF; a byte-order mark picks the codec and is
    removed; NUL bytes and undecodable bytes are errors at their line with the likely encoding."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise DataFileMissingError(
            f"{path}:1: no such file (absolute path {path.absolute()}); set `dataset.data_dir` to the folder "
            f"that holds it and `dataset.files.<split>` to its name"
        ) from None
    except IsADirectoryError:
        raise DataFileMissingError(
            f"{path}:1: is a folder, not a data file; `dataset.files.<split>` must name a file in `dataset.data_dir`"
        ) from None
    declared = encoding
    data, encoding = _raw(path, data, encoding)
    if not data or data.isspace():
        raise DataFormatError(f"{path}:1: file is empty; point `dataset.files.<split>` at a file with sentences")
    try:
        text = data.decode(encoding)
    except UnicodeDecodeError as err:
        line = data[: err.start].decode(encoding, errors="replace").count("\n") + 1
        column = err.start - (data.rfind(b"\n", 0, err.start) + 1) + 1
        raise DataFormatError(
            f"{path}:{line}: byte(s) {data[err.start : err.end]!r} at byte column {column} are not valid "
            f"{encoding} (`dataset.encoding`={declared}); {_decode_hint(data, err, encoding)}"
        ) from None
    except LookupError:
        raise DataFormatError(
            f"{path}:1: unknown encoding {encoding!r}; set `dataset.encoding` to a Python codec name such as utf-8"
        ) from None
    _c1_check(path, data, text, encoding, declared)
    # Universal newlines, as Python's text mode: CRLF (Windows) and a lone CR (classic Mac).
    return text.replace("\r\n", "\n").replace("\r", "\n") if "\r" in text else text


def _split_lines(text: str) -> list[str]:
    """Lines without their ends; lines of only whitespace become empty (WNUT-17 separates
    sentences with lines holding one tab). Splits on LF only: ``str.splitlines`` would also
    split inside tweets on U+2028 and shift every later line number."""
    lines = text.split("\n")
    if any(map(str.isspace, lines)):
        for i in compress(range(len(lines)), map(str.isspace, lines)):
            lines[i] = ""
    return lines


@contextmanager
def _gc_paused() -> Iterator[None]:
    """Pause the cyclic GC while building millions of strings: it would rescan the huge lists
    over and over (half the reading time on MSRA) and they hold no cycles."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def first_token_line(
    path: str | Path, *, encoding: str = "utf-8", skip: tuple[str, ...] = ()
) -> tuple[int, str] | None:
    """(line number, text) of the first non-blank line not starting with ``skip``, from the
    file's first 64 KiB (unpacked, for gzip): lets config validation check columns without
    reading the corpus. Archives and NUL bytes raise the reader's errors, not a column error."""
    path = Path(path)
    with path.open("rb") as handle:
        head = handle.read(65536)
    if head.startswith(_GZIP):
        try:
            with gzip.open(path, "rb") as handle:
                head = handle.read(65536)
        except (OSError, EOFError, zlib.error):
            return None  # the reader names the damage
    head, encoding = _raw(path, head, encoding)
    try:
        text = head.decode(encoding, errors="replace")
    except LookupError:
        return None
    for number, line in enumerate(text.replace("\r\n", "\n").replace("\r", "\n").split("\n"), 1):
        if line.strip() and not line.startswith(skip):
            return number, line
    return None


def _fields_flat(data: list[str], separator: str, text: str) -> tuple[list[str], int] | None:
    """All fields of all lines in one flat list, and the column count, when every line has the
    same number of single-character separators; None when the per-line path is needed."""
    if separator == "tab" or (separator == "auto" and "\t" in text):
        sep = "\t"
        if " \t" in text or "\t " in text or " \n" in text or "\n " in text or text[0] == " " or text[-1] == " ":
            return None  # spaces around fields: strip them per line
    else:
        sep = " "
        if "  " in text or " \n" in text or "\n " in text or text[0] == " " or text[-1] == " ":
            return None  # runs of spaces
    counts = set(map(str.count, data, repeat(sep)))
    if len(counts) != 1 or (separator == "auto" and sep == "\t" and 0 in counts):
        return None
    return sep.join(data).split(sep), counts.pop() + 1


def _fields_per_line(data: list[str], separator: str) -> list[list[str]]:
    """Split each line: on tabs (fields stripped of spaces) or on runs of spaces."""
    if separator == "tab":
        return [[f.strip(" ") for f in line.split("\t")] for line in data]
    if separator == "space":
        return [[f for f in line.split(" ") if f] for line in data]
    return [
        [f.strip(" ") for f in line.split("\t")] if "\t" in line else [f for f in line.split(" ") if f]
        for line in data
    ]


def _column_index(col: int, ncols: int) -> int | None:
    """Resolve a possibly negative column index; None if out of range."""
    index = col + ncols if col < 0 else col
    return index if 0 <= index < ncols else None


def _group(path: Path, blank: np.ndarray, rows: np.ndarray, words: list[str], tags: list[str]) -> list[Sentence]:
    """Cut the kept lines (``rows``) into sentences: a new sentence starts after each blank line.

    Skipped lines that are not blank (CoNLL-U comments, ranges) do not break a sentence.
    """
    starts = ~blank & np.concatenate(([True], blank[:-1]))
    sentence_id = np.cumsum(starts)[rows]
    cuts = (np.flatnonzero(np.diff(sentence_id)) + 1).tolist()
    begins = [0, *cuts]
    first_lines = (rows[begins] + 1).tolist()
    return [
        Sentence(tuple(words[s:e]), tuple(tags[s:e]), f"{path}:{line}")
        for s, e, line in zip(begins, [*cuts, len(words)], first_lines)
    ]


def _empty_check(
    path: Path, rows: Sequence[int], lines: list[str], words: list[str], tags: list[str],
    hint: str = "", names: tuple[str, str] = ("word", "tag"),
) -> None:
    """Reject an empty word or tag, naming the first line that has one."""
    if "" in words or "" in tags:
        k = min(seq.index("") for seq in (words, tags) if "" in seq)
        what = names[0] if words[k] == "" else names[1]
        raise DataFormatError(
            f"{path}:{rows[k] + 1}: empty {what}{hint if what == names[0] else ''} in {lines[rows[k]]!r}; "
            f"every token line needs a non-empty word and tag (a line of only whitespace is a sentence break)"
        )


def _mixed_separator_check(
    path: Path, rows: Sequence[int], lines: list[str], words: list[str], tags: list[str],
    separator: str, has_tab: bool,
) -> None:
    """Reject what mixing tabs and spaces as separators leaves behind: a tag holding whitespace
    (``word<TAB>POS TAG`` split on the tab) or, with ``separator=space``, a word holding a tab.
    Without a tab in the file, fields come from splitting on spaces: nothing to check."""
    if not has_tab:
        return
    bad = next((tag for tag in set(tags) if any(map(str.isspace, tag))), None)
    k = tags.index(bad) if bad is not None else None
    if k is None and separator == "space":
        k = next((k for k, word in enumerate(words) if "\t" in word), None)
    if k is not None:
        what = f"tag {tags[k]!r}" if bad is not None else f"word {words[k]!r}"
        raise DataFormatError(
            f"{path}:{rows[k] + 1}: {what} contains whitespace: the columns of {lines[rows[k]]!r} mix tabs "
            f"and spaces (`dataset.separator`={separator}); separate the columns of every line the same way: "
            f"all tabs, or all spaces"
        )


def _tag_check(path: Path, rows: Sequence[int], lines: list[str], tags: list[str], scheme: str | None) -> None:
    """Reject a tag the declared scheme cannot parse (``B-``, ``X-PER``, ``b-per``), naming its line:
    accepted, it would train a whole epoch and then break the first scoring."""
    if scheme is None:
        return
    bad = first_bad_tag(tags, scheme)
    if bad is not None:
        k, problem = bad
        raise DataFormatError(f"{path}:{rows[k] + 1}: {problem} (in {lines[rows[k]]!r}, `dataset.scheme`={scheme})")


def read_conll(
    path: str | Path,
    *,
    word_col: int = 0,
    tag_col: int = -1,
    separator: str = "auto",
    docstart: bool = True,
    token_prefix: str | None = None,
    encoding: str = "utf-8",
    scheme: str | None = None,
) -> list[Sentence]:
    """Read a CoNLL column file: one token per line, blank lines between sentences.

    ``word_col``/``tag_col`` may be negative (from the end). ``separator``:
    ``auto`` (tab if the line has one, else runs of spaces), ``space`` or ``tab``.
    With ``docstart``, lines whose first field is ``-DOCSTART-`` are skipped and
    end the sentence. ``token_prefix`` is a regex removed from the start of each
    word (WikiANN's ``en:``). Every token line must have as many columns as the first.
    ``scheme`` (a :mod:`seqexp.data.schemes` name): every tag must parse in it.
    """
    if separator not in SEPARATORS:
        raise ValueError(f"unknown separator {separator!r}; choose one of {', '.join(SEPARATORS)}")
    path = Path(path)
    with _gc_paused():
        return _read_conll(path, word_col, tag_col, separator, docstart, token_prefix, encoding, scheme)


def _read_conll(
    path: Path, word_col: int, tag_col: int, separator: str, docstart: bool, token_prefix: str | None, encoding: str,
    scheme: str | None = None,
) -> list[Sentence]:
    text = read_text(path, encoding)
    lines = _split_lines(text)
    if docstart and DOCSTART in text:
        for i in compress(range(len(lines)), map(methodcaller("startswith", DOCSTART), lines)):
            if lines[i][len(DOCSTART) : len(DOCSTART) + 1] in ("", " ", "\t"):
                lines[i] = ""  # a document break is a sentence break
    blank = np.fromiter(map(len, lines), dtype=np.int64, count=len(lines)) == 0
    rows = np.flatnonzero(~blank)
    if not len(rows):
        raise DataFormatError(
            f"{path}:1: no sentences found in {len(lines)} line(s) (only blank or -DOCSTART- lines); "
            f"point `dataset.files.<split>` at a file with token lines"
        )
    data = list(filter(None, lines))
    flat = _fields_flat(data, separator, text)
    per_line = _fields_per_line(data[:1], separator) if flat else _fields_per_line(data, separator)
    ncols = len(per_line[0])
    first = int(rows[0]) + 1
    wi, ti = _column_index(word_col, ncols), _column_index(tag_col, ncols)
    if wi is None or ti is None:
        which, col = ("word", word_col) if wi is None else ("tag", tag_col)
        raise DataFormatError(
            f"{path}:{first}: line has {ncols} column(s) but `dataset.columns.{which}`={col} needs at least "
            f"{col + 1 if col >= 0 else -col}; set `dataset.columns.{which}` to a column that exists "
            f"(0-based, -1 = last) or check `dataset.separator`={separator}"
        )
    if wi == ti:  # a one-column file with word=0, tag=-1 would silently tag each word with itself
        raise DataFormatError(
            f"{path}:{first}: line has {ncols} column(s), so `dataset.columns.word`={word_col} and "
            f"`dataset.columns.tag`={tag_col} are the same column: the label column is missing; add it, "
            f"or check `dataset.columns` and `dataset.separator`={separator}"
        )
    if flat is not None:
        words, tags = flat[0][wi::ncols], flat[0][ti::ncols]
    else:
        if len(set(map(len, per_line))) > 1:
            k = next(k for k, fields in enumerate(per_line) if len(fields) != ncols)
            raise DataFormatError(
                f"{path}:{rows[k] + 1}: line has {len(per_line[k])} column(s) but line {first} has {ncols}; "
                f"every token line must have the same columns (check `dataset.separator`={separator}: "
                f"a word containing spaces needs tab-separated columns)"
            )
        words, tags = [f[wi] for f in per_line], [f[ti] for f in per_line]
    del flat, per_line
    if token_prefix:
        prefix = re.compile(token_prefix)
        words = [prefix.sub("", word, count=1) for word in words]
    _empty_check(path, rows, lines, words, tags,
                 f" after removing `dataset.token_prefix`={token_prefix!r}" if token_prefix else "")
    _mixed_separator_check(path, rows, lines, words, tags, separator, "\t" in text)
    _tag_check(path, rows, lines, tags, scheme)
    return _group(path, blank, rows, words, tags)


def read_conllu(
    path: str | Path, *, tag_field: str = "upos", encoding: str = "utf-8", scheme: str | None = None
) -> list[Sentence]:
    """Read a CoNLL-U file: 10 tab-separated fields, ``#`` comments, blank lines between sentences.

    Multiword-token ranges (``1-2``) and empty nodes (``1.1``) are skipped: the
    syntactic words listed after a range are the ones that carry tags.
    ``tag_field`` is ``upos`` (column 4) or ``xpos`` (column 5); ``scheme`` as in :func:`read_conll`.
    """
    if tag_field not in UD_FIELDS:
        raise ValueError(f"unknown CoNLL-U tag field {tag_field!r}; choose one of {', '.join(UD_FIELDS)}")
    path = Path(path)
    with _gc_paused():
        lines = _split_lines(read_text(path, encoding))
    blank = np.fromiter(map(len, lines), dtype=np.int64, count=len(lines)) == 0
    rows: list[int] = []
    words: list[str] = []
    tags: list[str] = []
    for i in np.flatnonzero(~blank).tolist():
        line = lines[i]
        if line[0] == "#":
            continue
        fields = line.split("\t")
        if len(fields) != 10:
            raise DataFormatError(
                f"{path}:{i + 1}: CoNLL-U line has {len(fields)} tab-separated field(s), needs 10; "
                f"if this is a plain column file set `dataset.format=conll`"
            )
        if not fields[0].isdigit():
            if _UD_SKIPPED_ID.fullmatch(fields[0]):
                continue  # multiword range or empty node: not a syntactic word
            raise DataFormatError(
                f"{path}:{i + 1}: token ID {fields[0]!r} is not a number, a range (1-2) or an empty node (1.1)"
            )
        rows.append(i)
        words.append(fields[1])
        tags.append(fields[UD_FIELDS[tag_field]])
    if not rows:
        raise DataFormatError(f"{path}:1: no sentences found (only comments or blank lines)")
    _empty_check(path, rows, lines, words, tags, names=("FORM", tag_field))
    _tag_check(path, rows, lines, tags, scheme)
    return _group(path, blank, np.asarray(rows), words, tags)
