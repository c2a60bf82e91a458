"""``python -m seqexp.report <experiment name | sweep id>``: write the comparison report.

Exit status 0 on success, 2 for anything the user fixes (unknown experiment or
sweep, missing store), with one line on stderr saying what exists instead.
"""

from __future__ import annotations

import argparse
import os
import shlex
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
    p.add_argument("--uri", default=os.environ.get("MLFLOW_TRACKING_URI", "sqlite:///mlruns.db"),
                   help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///mlruns.db, relative "
                        "to the current directory)")
    p.add_argument("--ui-url", default=None, metavar="URL",
                   help="the MLflow UI the report's run ids link to (default: the server of --uri, or "
                        "http://127.0.0.1:5000, where `make ui` serves a sqlite store)")
    p.add_argument("--no-attach", dest="attach", action="store_false",
                   help="do not attach the report to the sweeps' parent runs (artifact folder report/)")
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
    p.add_argument("--picks", action="store_true",
                   help="write no report: print the command-line overrides of each cell's pick (without seed=), one "
                        "line per cell, e.g. to run the picks of a study tuned on one seed on the other seeds")
    p.add_argument("--beyond-edges", action="store_true",
                   help="write no report: for each cell whose pick is the largest or smallest of 3 or more numeric "
                        "candidates, print the overrides of one more candidate past that end (the grid's ratio "
                        "continued) on the selection seeds, one line per cell")
    p.add_argument("--budget-factor", type=float, default=None, metavar="F",
                   help="with --picks: each pick's epoch budget (max_epochs) times F, e.g. 2 for the budget check "
                        "(rerun the picks with every budget doubled: does a verdict change?)")
    args = p.parse_args(argv)
    if args.budget_factor is not None and (not args.picks or args.beyond_edges):
        p.error("--budget-factor goes with --picks (and not with --beyond-edges)")
    if args.budget_factor is not None and not args.budget_factor > 0:
        p.error(f"--budget-factor must be a positive number, not {args.budget_factor:g}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    tuned = [k.strip() for k in args.tuned.split(",") if k.strip()]
    if args.picks or args.beyond_edges:
        return print_picks(args.uri, args.target, tuned, edges=args.beyond_edges, budget_factor=args.budget_factor)
    out = args.out if args.out is not None else default_out_dir(args.target)
    try:
        md = build_report(args.uri, args.target, out, bootstrap=args.bootstrap, seed=args.seed,
                          tuned=tuned, ui_url=args.ui_url)
    except ReportError as exc:
        print(f"seqexp.report: error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {md} and {md.with_name('report.html')}")
    if args.attach:
        for run_id in attach_to_parents(args.uri, args.target, md.parent):
            print(f"attached it to parent run {run_id} (artifacts: report/)")
    return 0


def print_picks(uri: str, target: str, tuned: list[str], edges: bool = False,
                budget_factor: float | None = None) -> int:
    """One line per cell on stdout, shell-quoted: the overrides of its pick's run on a selection seed (without
    ``seed=``), with ``budget_factor`` its epoch budget scaled, or with ``edges`` those of one more candidate
    past the end of the grid where the pick lies (only for such cells)."""
    from seqexp.report.aggregate import beyond_edge, pick_overrides, scaled_budget
    from seqexp.report.build import collect_report

    try:
        grid = collect_report(uri, target, bootstrap=0, tuned=tuned).grid
    except ReportError as exc:
        print(f"seqexp.report: error: {exc}", file=sys.stderr)
        return 2
    for cell in grid.cells:
        if edges:
            overrides = beyond_edge(cell)
        elif budget_factor is not None:
            overrides = scaled_budget(cell, budget_factor)
        else:
            overrides = pick_overrides(cell)
        if overrides is not None:
            print(" ".join(shlex.quote(o) for o in overrides))
        elif not edges:
            print(f"seqexp.report: {cell.label}: no pick with recorded overrides ({cell.reason or 'no tag'})",
                  file=sys.stderr)
    return 0


def attach_to_parents(uri: str, target: str, folder: Path) -> list[str]:
    """The report's files as artifacts ``report/`` of each sweep (parent run) it covers."""
    from seqexp.report.collect import open_client, resolve_uri, select_runs

    uri = resolve_uri(uri)
    client = open_client(uri)
    parents = select_runs(client, uri, target).parents
    for parent in parents:
        client.log_artifacts(parent.run_id, str(folder), "report")
    return [p.run_id for p in parents]


if __name__ == "__main__":
    sys.exit(main())
