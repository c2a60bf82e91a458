"""Cost of each fine-tuning strategy, relative to full fine-tuning (the README's strategy table).

    .venv/bin/python benchmarks/strategies.py                       # every conf/freeze strategy
    .venv/bin/python benchmarks/strategies.py --only unfreeze,lora  # a subset (unfreeze is always measured)

MiniLM (all-MiniLM-L6-v2), the first 2,000 CoNLL-2003 training sentences, batch 32, Adam, no dev
evaluation, each strategy in its own child process, one after another. Per strategy: trained and total
parameters, the wall time of each epoch (``on_train_epoch_start`` -> ``on_train_epoch_end``; features a
frozen encoder serves from the cache are warm: the cache is built by an untimed pass first), and the
child's peak RSS (VmHWM). Ratios are to ``unfreeze``'s epoch, measured in the same run. One epoch, but
two for the multi-phase strategies, whose phase changes at epoch 2 (``lp_ft``: ``probe_epochs=1``;
``gradual``: the top block joins at epoch 2): epoch 1 is their first phase, epoch 2 their second.

Writes ``benchmarks/results/<date>-strategies.{json,md}``. Run it on a quiet machine.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

PHASE_AT_EPOCH_2 = {"lp_ft": ["freeze.probe_epochs=1"], "gradual": ["freeze.every_n_epochs=1"]}


def child(strategy: str, data: str, train: int, cache: str) -> dict:
    import lightning.pytorch as L

    from bench import peak_rss_mib
    from seqexp.pipeline import build, make_trainer
    from seqexp.run import quiet_libraries
    from tests.conftest import compose

    quiet_libraries()
    cfg = compose([f"freeze={strategy}", "model=minilm", f"dataset.data_dir={data}",
                   f"dataset.max_train_sentences={train}", "optim=adam",
                   f"trainer.max_epochs={2 if strategy in PHASE_AT_EPOCH_2 else 1}",
                   "trainer.val_every_n_epochs=0", "trainer.early_stopping=false", f"cache_dir={cache}",
                   "trainer.host_mmap_threshold_mib=null", *PHASE_AT_EPOCH_2.get(strategy, [])])

    class EpochTimer(L.Callback):
        def __init__(self):
            self.seconds = []

        def on_train_epoch_start(self, trainer, pl_module):
            self.started = time.perf_counter()

        def on_train_epoch_end(self, trainer, pl_module):
            self.seconds.append(time.perf_counter() - self.started)

    built = build(cfg)
    if built.datamodule.features:  # warm the feature cache outside the timed epochs
        for split in list(built.datamodule.features):
            built.datamodule.split_features(split)
    timer = EpochTimer()
    strategy_obj = built.tagger.strategy
    trainer = make_trainer(cfg, callbacks=[timer], strategy=strategy_obj)
    trainer.fit(built.tagger, datamodule=built.datamodule)
    trained, total = built.tagger.parameter_counts()
    return {"strategy": strategy, "trained_params": trained, "total_params": total,
            "epoch_s": timer.seconds, "peak_rss_mib": peak_rss_mib(), "phases": strategy_obj.phases}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "conll2003"))
    ap.add_argument("--train", type=int, default=2000)
    ap.add_argument("--only", default=None)
    ap.add_argument("--cache", default=str(REPO / ".cache" / "bench-strategies"))
    ap.add_argument("--child", default=None)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.data, args.train, args.cache)))
        return
    from bench import quiet_check, save_results

    names = sorted(p.stem for p in (REPO / "conf" / "freeze").glob("*.yaml"))
    if args.only:
        names = sorted(set(args.only.split(",")) | {"unfreeze"})
    others = quiet_check()
    rows = []
    for name in names:
        proc = subprocess.run([sys.executable, __file__, "--child", name, "--data", args.data, "--train",
                               str(args.train), "--cache", args.cache], capture_output=True, text=True)
        if proc.returncode:
            raise SystemExit(f"{name} failed:\n{proc.stderr[-3000:]}")
        rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        print(rows[-1], flush=True)
    ref = next(r for r in rows if r["strategy"] == "unfreeze")
    for r in rows:
        r["epoch_ratio"] = [s / ref["epoch_s"][0] for s in r["epoch_s"]]
        r["rss_ratio"] = r["peak_rss_mib"] / ref["peak_rss_mib"]
    out, meta = save_results("strategies", {"train_sentences": args.train, "others_cpu_share_before": others,
                                            "rows": rows})
    day = dt.date.today().isoformat()
    lines = [f"# Strategy costs ({day}; `{meta['command']}`)", "",
             f"MiniLM, {args.train} CoNLL-2003 sentences, batch 32, Adam; ratios to `unfreeze`'s epoch and peak RSS "
             f"in the same run. Other processes used {100 * others:.0f}% of the CPUs just before.", "",
             "| strategy | trained params | of total | time per epoch | peak RSS |", "|---|---|---|---|---|"]
    for r in rows:
        epochs = " then ".join(f"{x:.2f}×" for x in r["epoch_ratio"])
        lines.append(f"| `{r['strategy']}` | {r['trained_params']:,} | {100 * r['trained_params'] / r['total_params']:.2f}% "
                     f"| {epochs} | {r['rss_ratio']:.2f}× |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
