"""Where a full fine-tuning step's time goes: torch.profiler over seqexp's own training steps.

    .venv/bin/python benchmarks/profile_full.py      # on a quiet machine, about 2 minutes

MiniLM, ``freeze=unfreeze``, the bench's settings (AdamW, lr 1e-4, batch 32, linear schedule without warm-up,
CoNLL-2003's first ``--steps`` x 32 training sentences, no dev evaluation). Steps ``--warmup`` and later are
profiled on the CPU. Each aten operator's *self* time goes to one category (matrix products, softmax, layer
norm, GELU, dropout, the optimizer's kernels, other elementwise and copy operators); what the profiler sees
outside operators is Python and Lightning overhead. Data loading is the wall time between one step's end and
the next one's start. The fp32 matmul rate is measured first, as bench.py does.

Writes ``benchmarks/results/<date>-profile-full.{json,md}``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

import bench  # noqa: E402

CATEGORIES = (  # first match wins: (category, substrings of the aten operator's name)
    ("optimizer (fused AdamW, foreach kernels, grad clipping norms)", ("_fused_adam", "_foreach", "linalg_vector_norm")),
    ("matrix products (mm, addmm, bmm)", ("::mm", "::addmm", "::bmm", "::baddbmm")),
    ("softmax (forward and backward)", ("softmax",)),
    ("layer norm (forward and backward)", ("layer_norm",)),
    ("GELU (forward and backward)", ("gelu",)),
    ("dropout (masks and scaling)", ("dropout", "bernoulli", "random_")),
    ("embedding lookup and its gradient", ("embedding",)),
    ("loss (log-softmax, NLL)", ("log_softmax", "nll_loss")),
)
OTHER = "other operators (elementwise, copies, reshapes, reductions)"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "conll2003")
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--warmup", type=int, default=8)
    p.add_argument("--force", action="store_true")
    args = p.parse_args()
    share = bench.quiet_check()
    if share > bench.QUIET_LIMIT and not args.force:
        sys.exit(f"profile: the machine is not quiet ({share:.0%} of the CPUs used by others); rerun, or --force")
    peak = bench.side_matmul({})["fp32_matmul_flops"]

    import tempfile

    import torch
    from lightning.pytorch import Callback

    import seqexp.strategies  # noqa: F401
    from seqexp.pipeline import build, make_trainer
    from seqexp.run import quiet_libraries

    quiet_libraries()
    tmp = tempfile.mkdtemp(prefix="seqexp-profile-")
    spec = {"data": str(args.data.resolve()), "train": args.steps * 32, "epochs": 1, "head_epochs": 1, "lr": 1e-4,
            "head_lr": 1e-3, "batch_size": 32, "eval_batch_size": 64, "seed": 1, "tmp": tmp}
    cfg = bench.compose(bench.seqexp_overrides(spec, head_only=False, extra=["trainer.val_every_n_epochs=0"]))

    class Profiled(Callback):
        def __init__(self):
            self.prof, self.step_s, self.data_s, self.tokens, self.sq, self.steps = None, 0.0, 0.0, 0, 0, 0
            self._t = self._end = None

        def on_train_batch_start(self, trainer, module, batch, idx):
            now = time.perf_counter()
            if idx == args.warmup:
                self.prof = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU])
                self.prof.__enter__()
            elif idx > args.warmup and self._end is not None:
                self.data_s += now - self._end
            self._t = time.perf_counter()

        def on_train_batch_end(self, trainer, module, outputs, batch, idx):
            if idx >= args.warmup:
                self._end = time.perf_counter()
                self.step_s += self._end - self._t
                lens = batch["attention_mask"].sum(1) if "attention_mask" in batch else None
                if lens is not None:
                    self.tokens += int(lens.sum())
                    self.sq += int((lens * lens).sum())
                self.steps += 1

        def on_train_epoch_end(self, trainer, module):
            if self.prof is not None:
                self.prof.__exit__(None, None, None)

    cb = Profiled()
    built = build(cfg)
    trainer = make_trainer(cfg, callbacks=[cb])
    trainer.fit(built.tagger, datamodule=built.datamodule)
    events = cb.prof.key_averages()
    by_cat: dict[str, float] = {}
    top: list[tuple[str, float]] = []
    for e in events:
        if not e.key.startswith("aten::"):
            continue
        self_s = e.self_cpu_time_total / 1e6
        cat = next((c for c, keys in CATEGORIES if any(k in e.key for k in keys)), OTHER)
        by_cat[cat] = by_cat.get(cat, 0.0) + self_s
        top.append((e.key, self_s))
    ops_s = sum(by_cat.values())
    by_cat["outside operators (Python, Lightning, autograd bookkeeping)"] = max(0.0, cb.step_s - ops_s)
    encoder = built.tagger.encoder
    ecfg = encoder.config
    non_embed = sum(p.numel() for n, p in encoder.named_parameters() if "embeddings" not in n)
    non_embed += sum(p.numel() for p in built.tagger.head.parameters())
    flops = bench.model_flops({"non_embedding_params": non_embed, "real_tokens": cb.tokens, "sum_len_sq": cb.sq,
                               "layers": ecfg.num_hidden_layers, "hidden": ecfg.hidden_size})
    mm = by_cat.get("matrix products (mm, addmm, bmm)", 0.0)
    result = {"steps_profiled": cb.steps, "step_s": cb.step_s, "data_s_between_steps": cb.data_s,
              "real_tokens": cb.tokens, "fp32_matmul_flops": peak, "model_flops": flops,
              "mfu_vs_fp32_matmul": flops / cb.step_s / peak, "matmul_only_rate_vs_peak": flops / mm / peak if mm else None,
              "seconds_by_category": by_cat, "top_ops_self_s": sorted(top, key=lambda x: -x[1])[:15],
              "torch_threads": torch.get_num_threads(), "quiet_before": share, "git_commit": bench.git_commit(),
              "overrides": list(cfg_overrides(cfg))}
    out, meta = bench.save_results("profile-full", result)
    wall = cb.step_s + cb.data_s
    lines = [f"# Where a full fine-tuning step's time goes (`benchmarks/profile_full.py {' '.join(sys.argv[1:])}`)", "",
             f"MiniLM, freeze=unfreeze, AdamW, batch 32, {cb.steps} steps profiled (after {args.warmup}), "
             f"{torch.get_num_threads()} torch threads; others used {share:.1%} of the CPUs before.", "",
             f"Model FLOP/s over the profiled steps: **{result['mfu_vs_fp32_matmul']:.1%}** of the fp32 matmul rate "
             f"measured first ({peak / 1e9:.1f} GFLOP/s). If the matrix products alone had taken the steps' time, "
             + (f"{result['matmul_only_rate_vs_peak']:.0%}" if mm else "n/a")
             + " (the model's FLOPs are nearly all in them).", "",
             "| where | seconds | share of step time |", "|---|---:|---:|"]
    lines += [f"| {k} | {v:.2f} | {v / cb.step_s:.1%} |" for k, v in sorted(by_cat.items(), key=lambda x: -x[1])]
    lines += [f"| (outside the steps) data loading between steps | {cb.data_s:.2f} | {cb.data_s / wall:.1%} of wall |", "",
              "Top operators by self time: " + ", ".join(f"`{k}` {v:.2f} s" for k, v in result["top_ops_self_s"][:10]), ""]
    out.with_suffix(".md").write_text("\n".join(lines))
    print("\n".join(lines))


def cfg_overrides(cfg):
    from seqexp.tracking import flatten

    flat = flatten(cfg)
    return [f"{k}={flat[k]}" for k in ("model.name", "freeze.strategy", "optim.name", "trainer.batch_size") if k in flat]


if __name__ == "__main__":
    main()
