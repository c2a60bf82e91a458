"""Full fine-tuning with the opt-in speed settings, against the defaults and against ref-best, side by side.

    .venv/bin/python benchmarks/precision.py --repeats 3      # on a quiet machine, about 15 minutes

bench.py's P1 job (MiniLM, the first 2,000 CoNLL-2003 training sentences, 1 epoch, AdamW lr 1e-4, batch 32, no dev
evaluation, then the whole test set), each side in its own process, the sides in alternating order round by round:

- ``seqexp-full``: the defaults (fp32, eager);
- ``seqexp-full-bf16``: ``trainer.precision=bf16-mixed`` (bf16 autocast; on a CPU with AVX512-BF16 or AMX the
  matrix products run in bf16, with fp32 weights and optimizer);
- ``seqexp-full-compile``: ``trainer.compile=true`` (torch.compile, inductor);
- ``ref-best-full-w<N>``: bench.py's ref-best (HF Trainer, length-grouped batches, fused AdamW, N loader workers);
- ``ref-best-full-bf16``: the same with ``bf16=True``, HF's own bf16 autocast.

Real (non-pad) tokens per second over the training steps, median over rounds; the same over the steps after the
first ``--settle`` (torch.compile compiles in the first steps, and again at the first few new batch shapes); each
side's test F1 (one seed: a sign of a broken side, not evidence about precision, which needs seeds). Neither
setting is a default: both change what a run computes (bf16 rounds every matrix product's inputs) or its start-up.

Writes ``benchmarks/results/<date>-precision.{json,md}``.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

import bench  # noqa: E402


def rate(result: dict, settle: int = 0) -> float | None:
    """Real tokens per second over the training steps from step ``settle`` on."""
    if "error" in result:
        return None
    if settle == 0:
        return result["real_tokens"] / result["train_step_s"]
    steps = result.get("per_step", [])[settle:]
    return sum(n for _, n in steps) / sum(s for s, _ in steps) if steps else None


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "conll2003")
    p.add_argument("--train", type=int, default=2000, help="first N training sentences")
    p.add_argument("--repeats", type=int, default=3, help="rounds of every side")
    p.add_argument("--ref-workers", type=int, default=1, choices=bench.REF_BEST_WORKERS,
                   help="ref-best's dataloader_num_workers (the fastest in bench.py's last run: 1)")
    p.add_argument("--settle", type=int, default=10, help="steps left out of the settled rate")
    p.add_argument("--force", action="store_true", help="go on even if the machine is not quiet")
    args = p.parse_args()
    if not (args.data / "eng.train").is_file():
        sys.exit(f"precision: no CoNLL-2003 at {args.data}; pass --data")
    share = bench.quiet_check()
    if share > bench.QUIET_LIMIT and not args.force:
        sys.exit(f"precision: the machine is not quiet ({share:.0%} of the CPUs used by others); rerun, or --force")

    ref = f"ref-best-full-w{args.ref_workers}"
    sides = ("seqexp-full", "seqexp-full-bf16", "seqexp-full-compile", ref, "ref-best-full-bf16")
    tmp = Path(tempfile.mkdtemp(prefix="seqexp-precision-"))
    spec = {"data": str(args.data.resolve()), "train": args.train, "epochs": 1, "head_epochs": 1, "lr": 1e-4,
            "head_lr": 1e-3, "batch_size": 32, "eval_batch_size": 64, "seed": 1, "tmp": str(tmp),
            "ref_workers": args.ref_workers}
    runs: dict[str, list[dict]] = {s: [] for s in sides}
    for r in range(args.repeats):
        for side in sides if r % 2 == 0 else sides[::-1]:
            runs[side].append(bench.run_child(side, spec, tmp))

    def med(side: str, settle: int = 0) -> float | None:
        xs = [x for x in (rate(res, settle) for res in runs[side]) if x is not None]
        return bench.median(xs) if xs else None

    def f1(side: str) -> str:
        xs = [res["test"]["f1"] for res in runs[side] if "test" in res]
        return f"{100 * bench.median(xs):.2f}" if xs else "failed"

    names = {"seqexp-full": "seqexp, defaults (fp32)", "seqexp-full-bf16": "seqexp, `trainer.precision=bf16-mixed`",
             "seqexp-full-compile": "seqexp, `trainer.compile=true`",
             ref: f"ref-best (fp32, dataloader_num_workers={args.ref_workers})",
             "ref-best-full-bf16": "ref-best with `bf16=True`"}
    lines = [f"# Full fine-tuning with the opt-in speed settings — {bench.dt.date.today().isoformat()}", "",
             "Command: `python " + shlex.join(["benchmarks/precision.py", *sys.argv[1:]]) + "`", "",
             f"bench.py's P1 job: MiniLM, the first {args.train} CoNLL-2003 training sentences, 1 epoch, lr 1e-4, "
             f"batch 32, no dev evaluation; {args.repeats} rounds, alternating order; others used {share:.1%} of "
             "the CPUs before. Rates are medians over rounds of real (non-pad) tokens per second in training steps.",
             "", f"| side | tokens/s | tokens/s after step {args.settle} | ÷ ref-best fp32 | test F1 (1 seed) |",
             "|---|---:|---:|---:|---:|"]
    base = med(ref)
    for side in sides:
        a, b = med(side), med(side, args.settle)
        lines.append(f"| {names[side]} | {a or float('nan'):.0f} | {b or float('nan'):.0f} | "
                     f"{bench.ratio(a, base) or float('nan'):.2f}× | {f1(side)} |")
    ratios = {
        "seqexp bf16 ÷ ref-best bf16": bench.ratio(med("seqexp-full-bf16"), med("ref-best-full-bf16")),
        "seqexp bf16 ÷ seqexp fp32": bench.ratio(med("seqexp-full-bf16"), med("seqexp-full")),
        "ref-best bf16 ÷ ref-best fp32": bench.ratio(med("ref-best-full-bf16"), base),
        "seqexp compile ÷ eager, whole epoch": bench.ratio(med("seqexp-full-compile"), med("seqexp-full")),
        f"seqexp compile ÷ eager, after step {args.settle}": bench.ratio(med("seqexp-full-compile", args.settle),
                                                                         med("seqexp-full", args.settle)),
    }
    lines += ["", "| ratio | value |", "|---|---:|"]
    lines += [f"| {k} | {v:.2f}× |" if v is not None else f"| {k} | n/a |" for k, v in ratios.items()]
    errors = {s: [x["error"] for x in runs[s] if "error" in x] for s in sides}
    lines += [""] + [f"- {s} failed: {', '.join(e)}" for s, e in errors.items() if e]
    out, _ = bench.save_results("precision", {"spec": spec, "quiet_before": share, "git_commit": bench.git_commit(),
                                               "ratios": ratios, "runs": runs})
    out.with_suffix(".md").write_text("\n".join(lines).rstrip() + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
