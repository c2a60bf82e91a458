"""GPU checks of the trainer options (bf16 autocast, torch.compile) and GPU throughput.

    python benchmarks/gpu_check.py --data DIR --out results.json

1. End to end on the GPU: the real seqexp config composed by Hydra, a tiny-bert
   Tagger trained and tested with ``trainer.precision=bf16-mixed`` and
   ``trainer.compile=true`` (and the fp32 baseline), checking that every test
   word gets a prediction.
2. Throughput of full fine-tuning (forward + backward + AdamW step) on
   CoNLL-like batches for a MiniLM-sized (6 x 384) and a bert-base-sized
   (12 x 768) encoder, fp32 vs bf16 autocast, eager vs compiled. Reports real
   (non-pad) tokens/s and model FLOP/s utilisation: 6 x non-embedding params
   per token plus attention (6 x 2 x layers x seq x hidden per token for the
   QK^T and AV products), against this GPU's measured dense bf16 matmul rate.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def matmul_peak(dtype=torch.bfloat16, n=8192, reps=10) -> float:
    a = torch.randn(n, n, device="cuda", dtype=dtype)
    b = torch.randn(n, n, device="cuda", dtype=dtype)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    torch.cuda.synchronize()
    return 2 * n**3 * reps / (time.perf_counter() - t)


def conll_lengths(data: Path) -> list[int]:
    text = (data / "eng.train").read_text()
    return [len(b.splitlines()) for b in text.split("\n\n") if b.strip()]


def throughput(hidden: int, layers: int, heads: int, lengths: list[int], *, bf16: bool, compile: bool,
               batch_size: int = 64, steps: int = 60, warmup: int = 15) -> dict:
    from transformers import BertConfig, BertModel

    from seqexp.models.heads import LinearHead

    cfg = BertConfig(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                     intermediate_size=4 * hidden, vocab_size=30522)
    model = BertModel(cfg, add_pooling_layer=False).cuda().train()
    head = LinearHead(hidden, 9).cuda()
    params = list(model.parameters()) + list(head.parameters())
    opt = torch.optim.AdamW(params, lr=5e-5, fused=True)
    non_embed = sum(p.numel() for n, p in model.named_parameters() if "embeddings" not in n)
    torch._dynamo.reset()
    fwd = torch.compile(model, dynamic=True) if compile else model
    rng = random.Random(0)
    # CoNLL sentences: about 1.45 subwords per word plus [CLS]/[SEP]; length-grouped batches.
    subword_lengths = sorted(min(512, int(n * 1.45) + 2) for n in lengths)
    batches = []
    for _ in range(steps + warmup):
        i = rng.randrange(0, len(subword_lengths) - batch_size)
        batches.append(subword_lengths[i : i + batch_size])
    real = 0
    flops = 0.0
    torch.cuda.synchronize()
    for step, lens in enumerate(batches):
        if step == warmup:
            torch.cuda.synchronize()
            started = time.perf_counter()
            real, flops = 0, 0.0
        t = -(-max(lens) // 16) * 16  # pad to a multiple of 16: few distinct shapes
        ids = torch.randint(1000, 30000, (len(lens), t), device="cuda")
        mask = (torch.arange(t, device="cuda")[None, :] < torch.tensor(lens, device="cuda")[:, None]).long()
        labels = torch.randint(0, 9, (len(lens), t), device="cuda")
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16):
            hidden_states = fwd(input_ids=ids, attention_mask=mask).last_hidden_state
            emissions = head(hidden_states)
        loss = head.loss(emissions.float(), labels, mask.bool())
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        n = sum(lens)
        real += n
        flops += 6 * non_embed * n + 12 * layers * hidden * sum(x * x for x in lens)
    torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    return {"hidden": hidden, "layers": layers, "bf16": bf16, "compile": compile,
            "real_tokens_per_s": real / seconds, "model_flops_per_s": flops / seconds,
            "peak_mem_gib": torch.cuda.max_memory_allocated() / 2**30}


def end_to_end(data: Path, precision: str, compile: bool) -> dict:
    from seqexp.pipeline import build, make_trainer
    from tests.conftest import compose

    cfg = compose(["model=tiny-bert", f"dataset.data_dir={data}", "trainer.max_epochs=2",
                   "trainer.accelerator=gpu", f"trainer.precision={precision}", f"trainer.compile={compile}"])
    built = build(cfg)
    trainer = make_trainer(cfg)
    t = time.perf_counter()
    trainer.fit(built.tagger, datamodule=built.datamodule)
    trainer.test(built.tagger, datamodule=built.datamodule, verbose=False)
    result = built.tagger.results["test"]
    gold, pred = built.datamodule.gold("test"), built.tagger.predictions["test"]
    assert [len(p) for p in pred] == [len(g) for g in gold], "a test word got no prediction"
    return {"precision": precision, "compile": compile, "test_f1": result["f1"],
            "test_accuracy": result["accuracy"], "seconds": time.perf_counter() - t}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", type=Path, required=True, help="folder with eng.train/eng.testa/eng.testb")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--skip-e2e", action="store_true")
    args = parser.parse_args()
    report: dict = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__}
    report["bf16_matmul_peak_flops"] = peak = matmul_peak()
    print(f"{report['gpu']}: dense bf16 matmul {peak / 1e12:.0f} TFLOP/s", flush=True)
    report["end_to_end"] = []
    for precision, compile in () if args.skip_e2e else (("32-true", False), ("bf16-mixed", False), ("bf16-mixed", True)):
        row = end_to_end(args.data, precision, compile)
        report["end_to_end"].append(row)
        print("end to end", row, flush=True)
        args.out.write_text(json.dumps(report, indent=2))
    lengths = conll_lengths(args.data)
    report["throughput"] = []
    for hidden, layers, heads in ((384, 6, 12), (768, 12, 12)):
        for bf16, compile in ((False, False), (True, False), (True, True)):
            row = throughput(hidden, layers, heads, lengths, bf16=bf16, compile=compile)
            row["mfu_vs_measured_bf16_peak"] = row["model_flops_per_s"] / peak
            report["throughput"].append(row)
            print("throughput", {k: (round(v, 3) if isinstance(v, float) else v) for k, v in row.items()},
                  flush=True)
            args.out.write_text(json.dumps(report, indent=2))
    args.out.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
