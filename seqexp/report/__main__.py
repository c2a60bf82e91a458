"""``python -m seqexp.report <experiment name | sweep id>``: write the comparison report.

Exit status 0 on success, 2 for anything the user fixes (unknown experiment or
sweep, missing store), with one line on stderr saying what exists instead.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from seqexp.report.build import build_report, default_out_dir
from seqexp.report.collect import ReportError


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m seqexp.report",
        description="Compare fine-tuning strategies from the runs of one sweep or experiment in MLflow.",
    )
    p.add_argument("target", help="a sweep id (tag seqexp.sweep_id) or an MLflow experiment name")
    p.add_argument("--uri", default="sqlite:///mlruns.db",
                   help="MLflow tracking URI (default: sqlite:///mlruns.db, relative to the current directory)")
    p.add_argument("--out", type=Path, default=None, help="output folder (default: reports/<target>/)")
    p.add_argument("--bootstrap", type=int, default=1000,
                   help="resamples of the paired sentence bootstrap and of ASO's bootstrap; 0 skips the "
                        "significance tests (default: 1000)")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the resampling (sentence bootstrap and ASO; default: 0)")
    p.add_argument("--tuned", default="", metavar="KEY1,KEY2",
                   help="comma-separated config keys that are tuned hyperparameters (e.g. optim.lr,head.dropout), "
                        "besides those in the runs' seqexp.tuned tags: each cell keeps the candidate with the best "
                        "mean dev F1 over seeds, and only it is reported")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = args.out if args.out is not None else default_out_dir(args.target)
    try:
        md = build_report(args.uri, args.target, out, bootstrap=args.bootstrap, seed=args.seed,
                          tuned=[k.strip() for k in args.tuned.split(",") if k.strip()])
    except ReportError as exc:
        print(f"seqexp.report: error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {md} and {md.with_name('report.html')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
