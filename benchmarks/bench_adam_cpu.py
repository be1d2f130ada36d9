"""One Adam step on a CPU over SmolLM2-135M's parameter shapes: torch's AdamW tensor by tensor (its CPU
default, what megatron-core's optimizer ran on a CPU before r1hpc's engine switched it), for-each, and
the fused kernel the engine now uses (``r1hpc.train.engine``). Roofline: a step must read the weight,
its gradient and both moments and write the weight and both moments, 28 bytes a parameter in fp32;
each variant's GB/s is that over its time, beside the bandwidth an in-place add of the same size sees.

    python benchmarks/bench_adam_cpu.py --out benchmarks/results/adam_smollm2_cpu.json
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

# SmolLM2-135M: tied embedding, 30 layers of qkv (960 x 576), proj, fc1 (gate + up), fc2, two norms; final norm
SHAPES = [(49152, 576)] + [(960, 576), (576, 576), (3072, 576), (576, 1536), (576,), (576,)] * 30 + [(576,)]
BYTES_PER_PARAM = 7 * 4


def step_seconds(kind: str, repeats: int) -> float:
    g = torch.Generator().manual_seed(0)
    params = [torch.nn.Parameter(0.02 * torch.randn(s, generator=g)) for s in SHAPES]
    for p in params:
        p.grad = 1e-3 * torch.randn(p.shape, generator=g)
    opt = torch.optim.AdamW(params, lr=1e-6, betas=(0.9, 0.95), weight_decay=0.0,
                            **{"single-tensor": {"foreach": False}, "foreach": {"foreach": True},
                               "fused": {"fused": True}}[kind])
    opt.step()  # moments allocated
    return best_seconds(opt.step, repeats)


def best_seconds(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def stream_gb_per_s(numel: int, repeats: int) -> float:
    """This machine's memory bandwidth as an in-place add of two fp32 tensors of ``numel`` sees it (3 streams)."""
    a, b = torch.randn(numel), torch.randn(numel)
    return 3 * 4 * numel / best_seconds(lambda: a.add_(b), repeats) / 1e9


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--out")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    from r1hpc.eval.benchmarks import describe_device

    n = sum(torch.Size(s).numel() for s in SHAPES)
    results = {}
    for kind in ("single-tensor", "foreach", "fused"):
        s = step_seconds(kind, args.repeats)
        results[kind] = {"seconds": round(s, 4), "GB_per_s": round(n * BYTES_PER_PARAM / s / 1e9, 2)}
        print(kind, results[kind], flush=True)
    stream = stream_gb_per_s(n, args.repeats)
    for r in results.values():
        r["of_stream_bandwidth"] = round(r["GB_per_s"] / stream, 2)
    out = {"what": f"one AdamW step over SmolLM2-135M's {n / 1e6:.1f}M fp32 parameters, best of {args.repeats}",
           **describe_device(), "threads": args.threads, "bytes_per_param_min": BYTES_PER_PARAM,
           "stream_add_GB_per_s": round(stream, 1), "results": results,
           "fused_speedup_over_single_tensor": round(results["single-tensor"]["seconds"] / results["fused"]["seconds"], 2)}
    print(json.dumps(out, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
