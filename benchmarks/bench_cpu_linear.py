"""Few-row linear layers on a CPU: ``x @ W.T`` (megatron's and transformers' layout) against the two
paths of ``r1hpc.model.cpu_linear``, the weight-major ``(W @ x.T).T`` and oneDNN's product on weights
reordered into its blocked layout, on SmolLM2-135M's weight shapes, rows 1-32.
Each timing runs a list of distinct weights (30 per layer shape, as many as the model has layers; 2
for the output layer) so every weight comes cold from memory, as in a decode step. Roofline: a
product of a few rows must at least read its weight once, so GB/s is weight bytes over time.
Which layout wins depends on the CPU (MKL takes other kernels on AMD than on Intel): name the vendor
in the output file.

    python benchmarks/bench_cpu_linear.py --out benchmarks/results/cpu_linear_smollm2_amd_cpu.json
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from r1hpc.model.cpu_linear import PACKED_ROWS, SKINNY_ROWS, packed_product, skinny_matmul

# SmolLM2-135M: qkv, fc1 (gate + up), fc2, attention proj; the tied output layer
SHAPES = {"qkv": (960, 576, 30), "fc1": (3072, 576, 30), "fc2": (576, 1536, 30), "proj": (576, 576, 30),
          "output": (49152, 576, 2)}
ROWS = (1, 2, 4, 8, 12, 16, 32)


def seconds(fn, repeats: int) -> float:
    fn()
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--out")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    from r1hpc.eval.benchmarks import describe_device

    results = {}
    for name, (out_f, in_f, count) in SHAPES.items():
        weights = [torch.randn(out_f, in_f) for _ in range(count)]
        packed = [torch.ops.mkldnn._reorder_linear_weight(w, None) for w in weights]
        for rows in ROWS:
            x = torch.randn(rows, in_f)
            plain = seconds(lambda: [x @ w.t() for w in weights], args.repeats) / count
            major = seconds(lambda: [skinny_matmul(x, w) for w in weights], args.repeats) / count
            onednn = seconds(lambda: [packed_product(x, p, None, out_f) for p in packed], args.repeats) / count
            gb = out_f * in_f * 4 / 1e9
            results[f"{name}/rows{rows}"] = {"x_WT_ms": round(plain * 1e3, 3), "weight_major_ms": round(major * 1e3, 3),
                                             "packed_ms": round(onednn * 1e3, 3),
                                             "x_WT_GB_per_s": round(gb / plain, 1),
                                             "weight_major_GB_per_s": round(gb / major, 1),
                                             "packed_GB_per_s": round(gb / onednn, 1),
                                             "speedup": round(plain / major, 2),
                                             "packed_speedup": round(plain / onednn, 2)}
            print(name, rows, results[f"{name}/rows{rows}"], flush=True)
    out = {"what": "few-row fp32 linear layers on SmolLM2-135M's shapes, weights cold: x @ W.T vs (W @ x.T).T "
                   "(speedup) vs oneDNN on blocked weights (packed_speedup); r1hpc.model.cpu_linear uses the "
                   f"second for 2-{SKINNY_ROWS} rows on AMD CPUs, the third for {PACKED_ROWS[0]}-{PACKED_ROWS[1]} "
                   "rows on Intel CPUs, without autograd",
           **describe_device(), "threads": args.threads, "results": results}
    if args.out:
        Path(args.out).write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
