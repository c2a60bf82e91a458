"""The per-process memo of read splits and tokenized windows: reused only when every input is the same."""

from __future__ import annotations

import os
import shutil

import torch
from omegaconf import OmegaConf

from seqexp.data import memo
from seqexp.data.encoding import encode_split
from seqexp.data.readers import read_conll
from seqexp.data.sources import load_splits
from seqexp.models.encoders import load_encoder
from tests.conftest import REPO, compose


def _dataset_cfg(data_dir):
    return compose([f"dataset.data_dir={data_dir}"]).dataset


def test_splits_are_reused_until_a_file_changes(mini_conll, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(mini_conll, data)
    cfg = _dataset_cfg(data)
    loads = []

    def load():
        loads.append(1)
        return load_splits(cfg, tmp_path)

    first = memo.splits(cfg, tmp_path, load)
    again = memo.splits(cfg, tmp_path, load)
    assert len(loads) == 1
    assert again == first and again is not first  # a copy of the dict, the same sentence lists
    assert again["train"] is first["train"]

    other = compose([f"dataset.data_dir={data}", "dataset.max_train_sentences=10"]).dataset
    assert len(memo.splits(other, tmp_path, lambda: load_splits(other, tmp_path))["train"]) == 10

    # An edited file (new size and mtime) is read again.
    test = data / "eng.testb"
    test.write_text(test.read_text().split("\n\n", 1)[1])
    os.utime(test, ns=(1, 1))
    fresh = memo.splits(cfg, tmp_path, load)
    assert len(loads) == 2
    assert len(fresh["test"]) == len(first["test"]) - 1


def test_windows_are_reused_only_for_the_same_sentences_tokenizer_and_settings(mini_conll):
    sentences = read_conll(mini_conll / "eng.train", word_col=0, tag_col=3)
    labels = {t: i for i, t in enumerate(sorted({t for s in sentences for t in s.tags}))}
    cache = REPO / ".cache" / "seqexp-test"
    bert = load_encoder(OmegaConf.load(REPO / "conf/model/tiny-bert.yaml"), sentences, cache).tokenizer
    roberta = load_encoder(OmegaConf.load(REPO / "conf/model/tiny-roberta.yaml"), sentences, cache).tokenizer
    calls = []

    def get(s, tok, max_length=64, overlap=False, lab=labels):
        def encode():
            calls.append(1)
            return encode_split(s, tok, lab, max_length, overlap=overlap)

        return memo.windows(s, tok, lab, max_length, overlap, encode)

    first = get(sentences, bert)
    assert get(sentences, bert) is first and len(calls) == 1
    reloaded = load_encoder(OmegaConf.load(REPO / "conf/model/tiny-bert.yaml"), sentences, cache).tokenizer
    assert get(sentences, reloaded) is first and len(calls) == 1  # same definition, another object
    get(sentences, roberta)
    get(sentences, bert, max_length=32)
    get(sentences, bert, overlap=True)
    get(sentences, bert, lab={**labels, "X": len(labels)})
    get(list(sentences), bert)  # equal content, but another list: not assumed to be the same split
    assert len(calls) == 6
    assert get(sentences, bert, max_length=32) == encode_split(sentences, bert, labels, 32, overlap=False)


def test_collators_of_later_jobs_reuse_the_packed_windows_of_the_same_window_list(mini_conll):
    from seqexp.data.datamodule import Collator

    sentences = read_conll(mini_conll / "eng.train", word_col=0, tag_col=3)
    labels = {t: i for i, t in enumerate(sorted({t for s in sentences for t in s.tags}))}
    tok = load_encoder(OmegaConf.load(REPO / "conf/model/tiny-bert.yaml"), sentences,
                       REPO / ".cache" / "seqexp-test").tokenizer
    windows = encode_split(sentences, tok, labels, 64, overlap=False)
    first, later, other = Collator(0, windows), Collator(0, windows), Collator(0, list(windows))
    batches = [c([0, 2, 1]) for c in (first, later, other)]
    assert later._packed is first._packed  # a later job's collator: packed once per window list
    assert other._packed is not first._packed  # equal content, another list: packed on its own
    for name, tensor in batches[0].items():
        assert torch.equal(batches[1][name], tensor) and torch.equal(batches[2][name], tensor), name


def test_a_frozen_job_hands_its_unchanged_encoder_on_only_to_later_frozen_jobs(mini_conll):
    from seqexp.pipeline import build

    def built(freeze: str):
        return build(compose(["model=tiny-bert", f"freeze={freeze}", f"dataset.data_dir={mini_conll}"]))

    memo.forget_encoders()
    first = built("last")
    encoder = first.tagger.encoder
    first.tagger.eval()  # as a job leaves it after testing
    later = built("last")
    assert later.tagger.encoder is encoder
    assert later.tagger.encoder.training is False  # the Tagger's phase 0 (frozen: eval), as after a fresh load
    # A job whose strategy trains the encoder loads its own, and the kept one is let go.
    full = built("unfreeze")
    assert full.tagger.encoder is not encoder
    again = built("last")
    assert again.tagger.encoder is not encoder and again.tagger.encoder is not full.tagger.encoder
    # An encoder written in place (an optimizer step would do it) is not handed on.
    with torch.no_grad():
        next(again.tagger.encoder.parameters()).view(-1)[0] += 1e-3
    assert built("last").tagger.encoder is not again.tagger.encoder


def test_a_kept_encoder_comes_back_as_loaded_and_its_unchanged_weights_are_not_hashed_again(mini_conll):
    from seqexp.models.feature_cache import encoder_fingerprint
    from seqexp.training.checkpoints import frozen_fingerprint

    cfg = OmegaConf.load(REPO / "conf/model/tiny-bert.yaml")
    sentences = read_conll(mini_conll / "eng.train", word_col=0, tag_col=3)
    memo.forget_encoders()
    model = load_encoder(cfg, sentences, REPO / ".cache" / "seqexp-test", unchanged=True).model
    fp, frozen = encoder_fingerprint(model), frozen_fingerprint(model, {"embeddings.word_embeddings.weight"})
    model.eval().requires_grad_(False)
    kept = load_encoder(cfg, sentences, REPO / ".cache" / "seqexp-test", unchanged=True).model
    assert kept is model and kept.training and all(p.requires_grad for p in kept.parameters())
    hashed = []
    word_embeddings = [("embeddings.word_embeddings.weight", kept.embeddings.word_embeddings.weight)]
    assert memo.digest("frozen_fingerprint", word_embeddings, lambda: hashed.append(1) or "computed") == frozen
    assert not hashed
    # Written in place: both hashes see it (and match a fresh computation), and the next job loads afresh.
    with torch.no_grad():
        kept.embeddings.word_embeddings.weight[3, 0] += 1.0
    fresh = load_encoder(cfg, sentences, REPO / ".cache" / "seqexp-test").model
    with torch.no_grad():
        fresh.embeddings.word_embeddings.weight[3, 0] += 1.0
    assert encoder_fingerprint(kept) == encoder_fingerprint(fresh) != fp
    assert frozen_fingerprint(kept, {"embeddings.word_embeddings.weight"}) != frozen
    assert load_encoder(cfg, sentences, REPO / ".cache" / "seqexp-test", unchanged=True).model is not kept


def test_a_later_frozen_job_on_the_kept_encoder_scores_as_one_on_a_fresh_load(mini_conll):
    from seqexp.pipeline import build, make_trainer

    def scores():
        cfg = compose(["model=tiny-bert", "freeze=last", "head=crf", f"dataset.data_dir={mini_conll}",
                       "trainer.max_epochs=2", "seed=3", "trainer.feature_cache=false"])
        built = build(cfg)
        trainer = make_trainer(cfg)
        trainer.fit(built.tagger, datamodule=built.datamodule)
        trainer.test(built.tagger, datamodule=built.datamodule, verbose=False)
        return built.tagger.encoder, built.tagger.results

    memo.forget_encoders()
    encoder, fresh = scores()
    kept, later = scores()
    assert kept is encoder and later == fresh
