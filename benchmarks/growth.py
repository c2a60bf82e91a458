"""How cost grows: sweep wall time against head-only jobs, and full fine-tuning time against training sentences.

    .venv/bin/python benchmarks/growth.py      # on a quiet machine, about 20 minutes

1. **Jobs.** ``python -m seqexp.run -m model=minilm freeze=last seed=1..N`` for N = 1, 2, 4, 8, 16 (the first
   2,000 CoNLL-2003 training sentences, 3 epochs, batch 32, no dev evaluation), each sweep a fresh process
   with a fresh MLflow store and feature cache, timed whole (interpreter start to exit). The first job
   encodes every split; later jobs reuse the features. One uncounted warm-up sweep first, then ``--repeats``
   rounds of the curve (default 3), each N's median. Target: after the first job, each added job costs at
   most 5% of the first (the fitted slope over the one-job sweep's wall time).
2. **Sentences.** Full fine-tuning (``freeze=unfreeze``, 1 epoch, no dev evaluation) on the first 500, 1,000,
   2,000 and 4,000 sentences, in one sweep process; each run's ``train_time_s`` (the fit) from MLflow.
   Target: linear growth (R² of the straight-line fit).

Writes ``benchmarks/results/<date>-growth.{json,md,png}``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

JOBS = (1, 2, 4, 8, 16)
SENTENCES = (500, 1000, 2000, 4000)


def sweep(folder: Path, overrides: list[str]) -> tuple[float, list[dict], str]:
    """Run one sweep process; its wall time, its job runs' params and metrics, and the command."""
    from mlflow import MlflowClient

    folder.mkdir(parents=True)
    uri = f"sqlite:///{folder / 'mlruns.db'}"
    cmd = [sys.executable, "-m", "seqexp.run", "-m", *overrides, f"tracking.uri={uri}", "tracking.experiment=growth",
           f"cache_dir={folder / 'cache'}", f"hydra.sweep.dir={folder / 'multirun'}"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=folder, env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True,
                          text=True)
    wall = time.perf_counter() - t0
    if proc.returncode:
        raise SystemExit(f"{shlex.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("growth")
    runs = [{"params": r.data.params, "metrics": r.data.metrics}
            for r in client.search_runs([exp.experiment_id]) if r.data.tags.get("seqexp.role") == "job"]
    return wall, runs, shlex.join(cmd[1:])


def fit_line(xs, ys) -> dict:
    import numpy as np

    slope, intercept = np.polyfit(xs, ys, 1)
    pred = slope * np.asarray(xs) + intercept
    ss_res = float(((np.asarray(ys) - pred) ** 2).sum())
    ss_tot = float(((np.asarray(ys) - np.mean(ys)) ** 2).sum())
    return {"slope": float(slope), "intercept": float(intercept), "r2": 1 - ss_res / ss_tot if ss_tot else 1.0}


def main() -> None:
    from bench import quiet_check, save_results

    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "conll2003"))
    ap.add_argument("--train", type=int, default=2000, help="training sentences of the jobs curve")
    ap.add_argument("--repeats", type=int, default=3,
                    help="rounds of the jobs curve; each N's wall time is the median of its rounds")
    args = ap.parse_args()
    data = [f"dataset.data_dir={args.data}", "model=minilm", "trainer.val_every_n_epochs=0",
            "trainer.early_stopping=false", "trainer.batch_size=32", "optim=adam"]
    others = quiet_check()
    jobs, sentences = [], []
    head_only = [*data, "freeze=last", "trainer.max_epochs=3", f"dataset.max_train_sentences={args.train}"]
    with tempfile.TemporaryDirectory() as tmp:
        # Not counted: the first process of a benchmark ran 10-15% slower than the same sweep later on
        # (34.0 s for one job, then 30.2 s for two, on 2026-12-07), which would flatter the slope's ratio.
        sweep(Path(tmp) / "warm-up", [*head_only, "seed=1"])
        walls: dict[int, list[float]] = {n: [] for n in JOBS}
        commands: dict[int, str] = {}
        for r in range(args.repeats):
            for n in JOBS:
                wall, runs, cmd = sweep(Path(tmp) / f"jobs-{n}-{r}", [*head_only,
                                                                     "seed=" + ",".join(map(str, range(1, n + 1)))])
                assert len(runs) == n, (n, len(runs))
                walls[n].append(wall)
                commands[n] = cmd
                print({"round": r, "jobs": n, "wall_s": wall}, flush=True)
        for n in JOBS:
            jobs.append({"jobs": n, "wall_s": statistics.median(walls[n]), "rounds_s": walls[n],
                         "command": commands[n]})
        wall, runs, cmd = sweep(Path(tmp) / "sentences", [*data, "freeze=unfreeze", "trainer.max_epochs=1",
                                                          "dataset.max_train_sentences="
                                                          + ",".join(map(str, SENTENCES))])
        for r in sorted(runs, key=lambda r: int(r["params"]["dataset.max_train_sentences"])):
            sentences.append({"sentences": int(r["params"]["dataset.max_train_sentences"]),
                              "train_time_s": r["metrics"]["train_time_s"]})
            print(sentences[-1], flush=True)
        sentences_cmd = cmd
    first = jobs[0]["wall_s"]
    jobs_fit = fit_line([j["jobs"] for j in jobs], [j["wall_s"] for j in jobs])
    jobs_fit["added_job_over_first"] = jobs_fit["slope"] / first
    sent_fit = fit_line([s["sentences"] for s in sentences], [s["train_time_s"] for s in sentences])
    ok_jobs = jobs_fit["added_job_over_first"] <= 0.05
    ok_sent = sent_fit["r2"] >= 0.99

    out, meta = save_results("growth", {"others_cpu_share_before": others, "jobs": jobs, "jobs_fit": jobs_fit,
                                        "sentences": sentences, "sentences_command": sentences_cmd,
                                        "sentences_fit": sent_fit})
    day = dt.date.today().isoformat()
    plot(jobs, jobs_fit, sentences, sent_fit, out.with_suffix(".png"))
    lines = [f"# How cost grows ({day}; `{meta['command']}`)", "",
             f"MiniLM, CoNLL-2003, batch 32, Adam, no dev evaluation, 2 CPUs. Other processes used {100 * others:.0f}% "
             "of the CPUs just before. Plot: "
             f"[{out.with_suffix('.png').name}]({out.with_suffix('.png').name}).", "",
             f"## Sweep wall time against head-only jobs ({args.train} sentences, 3 epochs, a fresh process, store and "
             f"feature cache each; median of {args.repeats} rounds after one uncounted warm-up sweep)", "",
             "| jobs | wall time | per job | rounds |", "|---:|---:|---:|---|"]
    lines += [f"| {j['jobs']} | {j['wall_s']:.1f} s | {j['wall_s'] / j['jobs']:.1f} s | "
              f"{', '.join(f'{w:.1f}' for w in j['rounds_s'])} |" for j in jobs]
    lines += ["", f"Fit: {jobs_fit['intercept']:.1f} s + {jobs_fit['slope']:.2f} s per job (R² {jobs_fit['r2']:.3f}). "
              f"Each added job costs {100 * jobs_fit['added_job_over_first']:.1f}% of the one-job sweep "
              f"({first:.1f} s): target ≤ 5%, **{'PASS' if ok_jobs else 'FAIL'}**.", "",
              "## Full fine-tuning time against training sentences (1 epoch, `train_time_s`)", "",
              "| sentences | fit time | per 1,000 sentences |", "|---:|---:|---:|"]
    lines += [f"| {s['sentences']:,} | {s['train_time_s']:.1f} s | {1000 * s['train_time_s'] / s['sentences']:.1f} s |"
              for s in sentences]
    lines += ["", f"Fit: {sent_fit['intercept']:.1f} s + {1000 * sent_fit['slope']:.2f} s per 1,000 sentences "
              f"(R² {sent_fit['r2']:.4f}): target linear (R² ≥ 0.99), **{'PASS' if ok_sent else 'FAIL'}**."]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def plot(jobs, jobs_fit, sentences, sent_fit, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    xs = [j["jobs"] for j in jobs]
    a.plot(xs, [j["wall_s"] for j in jobs], "o", label="measured")
    a.plot(xs, [jobs_fit["intercept"] + jobs_fit["slope"] * x for x in xs], "-",
           label=f"{jobs_fit['intercept']:.0f} s + {jobs_fit['slope']:.2f} s/job")
    a.set(xlabel="head-only jobs in the sweep", ylabel="sweep wall time (s)", title="Sweep: head-only jobs",
          ylim=(0, None))
    a.legend()
    xs = [s["sentences"] for s in sentences]
    b.plot(xs, [s["train_time_s"] for s in sentences], "o", label="measured")
    b.plot(xs, [sent_fit["intercept"] + sent_fit["slope"] * x for x in xs], "-",
           label=f"{1000 * sent_fit['slope']:.1f} s per 1,000 sentences (R² {sent_fit['r2']:.3f})")
    b.set(xlabel="training sentences", ylabel="fit time, 1 epoch (s)", title="Full fine-tuning", ylim=(0, None))
    b.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)


if __name__ == "__main__":
    main()
