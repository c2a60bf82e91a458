"""Does ``trainer.host_mmap_threshold_mib`` change the jobs that run after it in the same sweep process?

    .venv/bin/python benchmarks/mmap_later_jobs.py --repeats 2   # on a quiet machine, about 5 minutes a round

``mallopt(M_MMAP_THRESHOLD)`` turns glibc's dynamic threshold off for the rest of the process; at fit end
seqexp sets it to 32 MiB (the most the dynamic one reaches), so what follows an encoder job in a sweep process
runs with a fixed threshold. This measures that, as a sweep runs it (one process, jobs one after another):

- job A: full fine-tuning of MiniLM (2,000 CoNLL-2003 sentences, 1 epoch, batch 32, no dev evaluation), then its
  test (the whole test set): the threshold set while it fits;
- job B: head-only MiniLM after it (its feature cache built from scratch: the encoder over every split, then
  3 epochs and the test): the later job, which sets nothing.

in three processes: A with the default threshold (1 MiB) then B; A with ``null`` (glibc's own) then B; B alone
(a fresh process). Per job: wall time of each part and the job's own peak RSS (VmHWM, reset before each job
through /proc/self/clear_refs). Writes ``benchmarks/results/<date>-mmap-later-jobs.{json,md}``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))


def reset_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := current RSS (Linux >= 4.0)


def job(overrides: list[str], cache: str) -> dict:
    from bench import peak_rss_mib
    from seqexp.pipeline import build, make_trainer
    from tests.conftest import compose

    cfg = compose([*overrides, f"cache_dir={cache}"])
    reset_peak()
    t0 = time.perf_counter()
    built = build(cfg)
    t1 = time.perf_counter()
    trainer = make_trainer(cfg, strategy=built.tagger.strategy)
    trainer.fit(built.tagger, datamodule=built.datamodule)
    t2 = time.perf_counter()
    trainer.test(built.tagger, datamodule=built.datamodule, verbose=False)
    t3 = time.perf_counter()
    return {"build_s": t1 - t0, "fit_s": t2 - t1, "test_s": t3 - t2, "peak_rss_mib": peak_rss_mib()}


def child(mode: str, data: str, train: int) -> dict:
    from seqexp.run import quiet_libraries

    quiet_libraries()
    common = ["model=minilm", f"dataset.data_dir={data}", f"dataset.max_train_sentences={train}", "optim=adam",
              "trainer.val_every_n_epochs=0", "trainer.early_stopping=false"]
    out = {"mode": mode}
    with tempfile.TemporaryDirectory() as a_cache, tempfile.TemporaryDirectory() as b_cache:  # nothing shared
        if mode != "B alone":
            out["A"] = job([*common, "freeze=unfreeze", "trainer.max_epochs=1",
                            f"trainer.host_mmap_threshold_mib={mode}"], a_cache)
        out["B"] = job([*common, "freeze=last", "trainer.max_epochs=3"], b_cache)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "conll2003"))
    ap.add_argument("--train", type=int, default=2000)
    ap.add_argument("--repeats", type=int, default=1, help="rounds of the three processes, interleaved")
    ap.add_argument("--child", default=None)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.data, args.train)))
        return
    from bench import quiet_check, save_results

    others = quiet_check()
    rows = []
    for mode in ("1", "null", "B alone") * args.repeats:
        proc = subprocess.run([sys.executable, __file__, "--child", mode, "--data", args.data,
                               "--train", str(args.train)], capture_output=True, text=True)
        if proc.returncode:
            raise SystemExit(f"{mode} failed:\n{proc.stderr[-3000:]}")
        rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        print(rows[-1], flush=True)
    out, meta = save_results("mmap-later-jobs", {"train_sentences": args.train, "others_cpu_share_before": others,
                                                 "rows": rows})
    day = dt.date.today().isoformat()
    lines = [f"# The mmap threshold and the jobs after it ({day}; `{meta['command']}`)", "",
             f"One process per row, jobs one after another as in a sweep process. A: MiniLM full fine-tuning, "
             f"{args.train} CoNLL-2003 sentences, 1 epoch, then its test. B: head-only MiniLM after it, its "
             f"feature cache built from scratch, 3 epochs, then its test. Other processes used {100 * others:.0f}% "
             "of the CPUs just before. In the B-alone row, B's build also reads and tokenizes the corpus (about "
             "1.3 s), which the other rows' B reuses from A, as the jobs of a sweep process do (seqexp/data/memo.py).",
             "",
             "| `host_mmap_threshold_mib` of A | A fit | A test | A peak RSS | B build (cache) | B fit | B test "
             "| B peak RSS |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        a = r.get("A")
        cells = ([f"{a['fit_s']:.1f} s", f"{a['test_s']:.1f} s", f"{a['peak_rss_mib']:.0f} MiB"] if a
                 else ["–", "–", "–"])
        b = r["B"]
        lines.append(f"| {r['mode']} | " + " | ".join(cells) + f" | {b['build_s']:.1f} s | {b['fit_s']:.1f} s "
                     f"| {b['test_s']:.1f} s | {b['peak_rss_mib']:.0f} MiB |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
