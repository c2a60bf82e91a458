"""The reference recipe for ``benchmarks/bench.py``: token classification the way the
Hugging Face example (``run_ner.py``) does it.

* ``transformers.Trainer`` + ``TrainingArguments``; no eval during training, no
  checkpoints, ``report_to="none"``;
* tokenization with ``is_split_into_words=True, truncation=True, max_length=512``:
  words past 512 subwords are dropped (the example's behaviour);
* labels on the first subword of each word, ``-100`` on the other subwords and on
  special tokens (the example's default ``label_all_tokens=False``);
* ``DataCollatorForTokenClassification`` dynamic padding, random batches;
* ``AutoModelForTokenClassification`` with the encoder's own dropout + linear classifier;
* test scoring: the first subword's prediction is the word's; seqeval (default
  mode) over every test word. A word with no subword in the truncated input gets
  no prediction: it is counted as *missing* and scored as ``O``.

Only measurement hooks are added (a step/epoch timer callback and a collator
wrapper that counts real tokens); they run outside the timed step.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def read_corpus(data_dir: Path, train_sentences: int):
    """eng.train (first N sentences) and eng.testb, read with seqexp's CoNLL reader."""
    from seqexp.data.readers import read_conll

    train = read_conll(Path(data_dir) / "eng.train", word_col=0, tag_col=3)[:train_sentences]
    test = read_conll(Path(data_dir) / "eng.testb", word_col=0, tag_col=3)
    return train, test


def label_list(train) -> list[str]:
    labels = {t for s in train for t in s.tags}
    return (["O"] if "O" in labels else []) + sorted(labels - {"O"})


def tokenize(sentences, tokenizer, label2id: dict[str, int], max_length: int = 512):
    """Features as run_ner.py's ``tokenize_and_align_labels`` makes them, plus each row's word ids."""
    enc = tokenizer([list(s.words) for s in sentences], is_split_into_words=True,
                    truncation=True, max_length=max_length)
    features, word_ids = [], []
    for i, sentence in enumerate(sentences):
        ids = enc.word_ids(i)
        labels, previous = [], None
        for w in ids:
            if w is None:
                labels.append(-100)
            elif w != previous:
                labels.append(label2id.get(sentence.tags[w], -100))
            else:
                labels.append(-100)
            previous = w
        row = {k: enc[k][i] for k in enc.keys()}
        row["labels"] = labels
        features.append(row)
        word_ids.append(ids)
    return features, word_ids


def speed_settings(workers: int) -> dict:
    """HF's own speed settings, as ``TrainingArguments``: length-grouped batches (less padding; the option is
    ``train_sampling_strategy`` in transformers 5, ``group_by_length`` in 4.x), the fused AdamW kernel, and
    ``workers`` data-loading processes (bench.py measures which count is best here)."""
    import dataclasses

    from transformers import TrainingArguments

    fields = {f.name for f in dataclasses.fields(TrainingArguments)}
    grouped = ({"train_sampling_strategy": "group_by_length"} if "train_sampling_strategy" in fields
               else {"group_by_length": True})
    return {**grouped, "optim": "adamw_torch_fused", "dataloader_num_workers": workers}


class CountingCollator:
    """Wraps the collator; while ``active``, counts real (attention-mask) tokens and sum(len^2)."""

    def __init__(self, inner):
        self.inner = inner
        self.active = False
        self.tokens = 0
        self.sq = 0
        self.batches = 0

    def __call__(self, features):
        batch = self.inner(features)
        if self.active and "attention_mask" in batch:
            lens = batch["attention_mask"].sum(1)
            self.tokens += int(lens.sum())
            self.sq += int((lens * lens).sum())
            self.batches += 1
        return batch


def make_callback(counter: CountingCollator):
    from transformers import TrainerCallback

    class Timer(TrainerCallback):
        """Sums on_step_begin..on_step_end (training steps only) and per-epoch wall time."""

        def __init__(self):
            self.step_s = 0.0
            self.steps = 0
            self.epochs: list[dict] = []
            self._t = 0.0
            self._e = 0.0

        def on_train_begin(self, args, state, control, **kw):
            counter.active = True

        def on_train_end(self, args, state, control, **kw):
            counter.active = False

        def on_epoch_begin(self, args, state, control, **kw):
            _sync()
            self._e = time.perf_counter()
            if not self.epochs:
                self.first_start = self._e

        def on_epoch_end(self, args, state, control, **kw):
            _sync()
            now = time.perf_counter()
            self.epochs.append({"train_s": now - self._e, "wall_s": now - self._e, "dev_eval_s": 0.0, "end": now})

        def on_step_begin(self, args, state, control, **kw):
            _sync()
            self._t = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            _sync()
            self.step_s += time.perf_counter() - self._t
            self.steps += 1

    return Timer()


def predict_words(trainer, features, word_ids, sentences, id2label) -> tuple[list[list[str]], int]:
    """Word-level predictions (first subword) and the number of test words left without one."""
    out = trainer.predict(features)
    logits = out.predictions
    pred_words, missing = [], 0
    for i, sentence in enumerate(sentences):
        ids = word_ids[i]
        row = np.asarray(logits[i][: len(ids)]).argmax(-1)
        words: list[str | None] = [None] * len(sentence.words)
        for pos, w in enumerate(ids):
            if w is not None and words[w] is None:
                words[w] = id2label[int(row[pos])]
        missing += sum(p is None for p in words)
        pred_words.append([p if p is not None else "O" for p in words])
    return pred_words, missing


def score(gold, pred) -> dict:
    from seqeval.metrics import accuracy_score, f1_score, precision_score, recall_score

    gold = [list(g) for g in gold]
    return {"f1": float(f1_score(gold, pred)), "precision": float(precision_score(gold, pred)),
            "recall": float(recall_score(gold, pred)), "accuracy": float(accuracy_score(gold, pred))}


def run(model_path: str, train, test, *, labels: list[str], tokenizer, train_features, test_features,
        test_word_ids, lr: float, batch_size: int, eval_batch_size: int, epochs: int, seed: int,
        weight_decay: float, warmup: float, head_only: bool, out_dir: Path, optimizer: dict | None = None,
        t_setup: float | None = None, speed: dict | None = None) -> dict:
    """One reference run: load, (freeze the encoder,) train, predict test. Returns timings and scores.

    ``optimizer``: None -> TrainingArguments' default optimizer (AdamW); or a seqexp ``optim``
    config (``name`` adam|adamw|sgd, ``lr``, ``momentum``, ...) built by hand on the trainable
    parameters and passed as ``Trainer(optimizers=(opt, None))`` (the Trainer still builds the
    linear schedule).

    ``speed``: more ``TrainingArguments`` (``speed_settings()``: HF's own speed settings, bench.py's
    ``ref-best``); None keeps the defaults.
    """
    from transformers import (AutoModelForTokenClassification, DataCollatorForTokenClassification, Trainer,
                              TrainingArguments, set_seed)

    t_model = time.perf_counter()
    t0 = t_model if t_setup is None else t_setup
    id2label = dict(enumerate(labels))
    label2id = {v: k for k, v in id2label.items()}
    set_seed(seed)
    model = AutoModelForTokenClassification.from_pretrained(
        model_path, num_labels=len(labels), id2label=id2label, label2id=label2id)
    if head_only:
        for p in model.base_model.parameters():
            p.requires_grad = False
    args = TrainingArguments(
        output_dir=str(out_dir), per_device_train_batch_size=batch_size,
        per_device_eval_batch_size=eval_batch_size, num_train_epochs=epochs, learning_rate=lr,
        weight_decay=weight_decay, lr_scheduler_type="linear", warmup_steps=warmup, seed=seed,
        eval_strategy="no", save_strategy="no", logging_strategy="no", report_to="none",
        disable_tqdm=True, **(speed or {}),
    )
    counter = CountingCollator(DataCollatorForTokenClassification(tokenizer))
    timer = make_callback(counter)
    optimizers = (None, None)
    if optimizer is not None:
        o = optimizer
        encoder = {id(p) for p in model.base_model.parameters()}
        trained = [p for p in model.parameters() if p.requires_grad]
        # the encoder at encoder_lr where the optim config has one (seqexp's split), the classifier at lr
        params = ([{"params": [p for p in trained if id(p) in encoder], "lr": o["encoder_lr"]},
                   {"params": [p for p in trained if id(p) not in encoder]}]
                  if o.get("encoder_lr") is not None and not head_only else trained)
        if o["name"] == "sgd":
            opt = torch.optim.SGD(params, lr=o["lr"], momentum=o["momentum"], nesterov=o["nesterov"],
                                  weight_decay=o["weight_decay"])
        else:
            cls = torch.optim.AdamW if o["name"] == "adamw" else torch.optim.Adam
            opt = cls(params, lr=o["lr"], betas=tuple(o["betas"]), eps=o["eps"], weight_decay=o["weight_decay"])
        optimizers = (opt, None)
    trainer = Trainer(model=model, args=args, train_dataset=train_features, data_collator=counter,
                      callbacks=[timer], optimizers=optimizers)
    _sync()
    t_fit = time.perf_counter()
    trainer.train()
    _sync()
    fit_s = time.perf_counter() - t_fit
    t_test = time.perf_counter()
    pred, missing = predict_words(trainer, test_features, test_word_ids, test, id2label)
    test_s = time.perf_counter() - t_test
    scores = score([s.tags for s in test], pred)
    tokens, sq = counter.tokens, counter.sq
    if args.dataloader_num_workers:  # the collator ran in the workers: every example once per epoch
        lengths = [len(f["input_ids"]) for f in train_features]
        tokens, sq = len(timer.epochs) * sum(lengths), len(timer.epochs) * sum(n * n for n in lengths)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    non_embed = sum(p.numel() for n, p in model.named_parameters() if "embeddings" not in n)
    cfg = model.config
    epochs_rec = timer.epochs
    first_incl = (epochs_rec[0]["end"] - t0) if epochs_rec else None
    breakdown = {"model_load_and_trainer_s": t_fit - t_model}
    if t_setup is not None:
        breakdown["read_and_tokenize_s"] = t_model - t_setup
    if epochs_rec:
        breakdown["train_start_to_first_epoch_s"] = timer.first_start - t_fit
    return {
        "test": scores, "test_words": sum(len(s.words) for s in test), "missing_test_words": missing,
        "train_step_s": timer.step_s, "train_steps": timer.steps, "real_tokens": tokens,
        "sum_len_sq": sq, "fit_s": fit_s, "test_s": test_s,
        "epochs": [{k: v for k, v in e.items() if k != "end"} for e in epochs_rec],
        "first_epoch_incl_setup_s": first_incl, "setup_breakdown": breakdown,
        "trainable_params": trainable, "non_embedding_params": non_embed,
        "layers": cfg.num_hidden_layers, "hidden": cfg.hidden_size,
    }


def main(argv=None) -> None:
    """One reference run in its own process, as a user of ``run_ner.py`` runs each job of a grid:

        python benchmarks/reference_hf.py MODEL_DIR --data DIR --train N --epochs E --optim-json '{...}'
                                          [--head-only] [--out result.json]
    """
    import argparse
    import json

    p = argparse.ArgumentParser(description=main.__doc__)
    p.add_argument("model", help="a save_pretrained folder (encoder and tokenizer)")
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--train", type=int, required=True)
    p.add_argument("--epochs", type=int, required=True)
    p.add_argument("--optim-json", required=True, help="seqexp's optim config with the run's effective LRs")
    p.add_argument("--warmup", type=float, default=0.0)
    p.add_argument("--head-only", action="store_true")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--eval-batch-size", type=int, default=64)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    t_setup = time.perf_counter()
    from transformers import AutoConfig, AutoTokenizer

    train, test = read_corpus(args.data, args.train)
    labels = label_list(train)
    label2id = {v: k for k, v in enumerate(labels)}
    # run_ner.py: RoBERTa-style byte-level BPE needs add_prefix_space=True for pre-split words
    arch = AutoConfig.from_pretrained(args.model).model_type
    tokenizer = AutoTokenizer.from_pretrained(args.model, **({"add_prefix_space": True}
                                                            if arch in ("roberta", "gpt2", "bloom") else {}))
    train_features, _ = tokenize(train, tokenizer, label2id)
    test_features, test_word_ids = tokenize(test, tokenizer, label2id)
    optimizer = json.loads(args.optim_json)
    out_dir = Path(args.out.parent if args.out else ".") / "hf-out"
    result = run(args.model, train, test, labels=labels, tokenizer=tokenizer, train_features=train_features,
                 test_features=test_features, test_word_ids=test_word_ids, lr=optimizer["lr"],
                 batch_size=args.batch_size, eval_batch_size=args.eval_batch_size, epochs=args.epochs,
                 seed=args.seed, weight_decay=float(optimizer["weight_decay"]), warmup=args.warmup,
                 head_only=args.head_only, out_dir=out_dir, optimizer=optimizer, t_setup=t_setup)
    if args.out:
        args.out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # seqexp's CoNLL reader
    main()
