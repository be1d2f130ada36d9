"""Decode attention over a paged KV cache on a CPU (``r1hpc.model.paged_attention``, what megatron's
dynamic engine calls in place of flash-attn): the compiled kernel ``r1hpc._cpu_attention`` against the
torch path (gather each request's blocks, mask, SDPA) and against SDPA on a contiguous, already padded
cache (what a static-batch KV cache hands to attention: no gather at all).

SmolLM2-135M's attention (9 query heads sharing 3 KV heads of 64), 16-token blocks, one decode query
per request, requests with 32-160 keys scattered over a shuffled pool. Each timing runs 30 distinct
layer caches, as a decode step does, so the KV history comes from memory. Roofline: decode attention
must read every key and value once, so GB/s is KV bytes over time, against the copy bandwidth
measured in the same run.

Prefill rows (several queries per request) always take the torch path: timed at 16-, 64- and 256-token
blocks for one layer, against SDPA on the same prompts contiguous and padded.

    python benchmarks/bench_paged_attention.py --out benchmarks/results/paged_attention_smollm2_xeon_noamx_cpu.json
"""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import torch
import torch.nn.functional as F

from bench_cpu_linear import seconds  # this script's own folder is on sys.path
from r1hpc.model import paged_attention as paged

HQ, HK, DIM, BLOCK, LAYERS = 9, 3, 64, 16, 30


def copy_bandwidth(repeats: int) -> float:
    """GB/s of a 256 MB clone (read + write), the memory roofline of this machine."""
    x = torch.ones(64 * 1024 * 1024)
    return 2 * x.numel() * 4 / seconds(lambda: x.clone(), repeats) / 1e9


def decode_rows(repeats: int) -> dict:
    """One decode query per request: the compiled kernel, the torch path, SDPA on a contiguous cache."""
    results = {}
    for requests, (low, high) in ((16, (32, 160)), (16, (400, 600)), (4, (32, 160))):
        g = torch.Generator().manual_seed(requests + low)
        k_lens = torch.randint(low, high + 1, (requests,), generator=g, dtype=torch.int32)
        max_blocks = math.ceil(high / BLOCK)
        pool = requests * max_blocks + 1
        table = torch.randperm(pool, generator=g)[:requests * max_blocks].reshape(requests, max_blocks).int()
        layers = [(torch.randn(pool, BLOCK, HK, DIM, generator=g), torch.randn(pool, BLOCK, HK, DIM, generator=g))
                  for _ in range(LAYERS)]
        q = torch.randn(requests, 1, HQ, DIM, generator=g)
        cu = torch.arange(requests + 1, dtype=torch.int32)
        # the static-batch layout: each request's keys contiguous, padded to the longest, [r, Hk, S, D]
        longest = int(k_lens.max())
        contiguous = [(torch.randn(requests, HK, longest, DIM, generator=g), torch.randn(requests, HK, longest, DIM, generator=g))
                      for _ in range(LAYERS)]
        mask = (torch.arange(longest)[None] < k_lens[:, None].long())[:, None, None, :]
        queries = q.transpose(1, 2).reshape(requests, HQ, 1, DIM)

        def compiled():
            for k, v in layers:
                paged.paged_attention(q, k, v, cu, k_lens, table, DIM ** -0.5)

        def torch_path():
            kernel, paged.compiled_decode = paged.compiled_decode, lambda: None
            try:
                compiled()
            finally:
                paged.compiled_decode = kernel

        def sdpa_contiguous():
            for k, v in contiguous:
                F.scaled_dot_product_attention(queries, k, v, attn_mask=mask, enable_gqa=True)

        kv_gb = int(k_lens.sum()) * HK * DIM * 4 * 2 / 1e9
        row = {}
        for name, fn in (("compiled", compiled), ("torch_gather_sdpa", torch_path), ("sdpa_contiguous", sdpa_contiguous)):
            per_layer = seconds(fn, repeats) / LAYERS
            row[f"{name}_us"] = round(per_layer * 1e6, 1)
            row[f"{name}_GB_per_s"] = round(kv_gb / per_layer, 2)
        row["compiled_speedup_over_torch"] = round(row["torch_gather_sdpa_us"] / row["compiled_us"], 2)
        row["compiled_over_sdpa_contiguous"] = round(row["sdpa_contiguous_us"] / row["compiled_us"], 2)
        key = f"requests{requests}/keys{low}-{high}"
        results[key] = row
        print(key, row, flush=True)
    return results


def prefill_rows(repeats: int) -> dict:
    """A first prefill of 16 prompts of 32-160 tokens through the torch path (gather, mask, SDPA) at
    several block sizes, against SDPA on the same keys contiguous and padded (a static batch's
    prefill). Its keys are cut at the longest prompt, not at a block multiple, so a large block
    costs the gather, not the attention."""
    g = torch.Generator().manual_seed(7)
    lens = torch.randint(32, 161, (16,), generator=g, dtype=torch.int32)
    cu = torch.cat([torch.zeros(1, dtype=torch.int32), lens.cumsum(0, dtype=torch.int32)])
    q = torch.randn(int(lens.sum()), 1, HQ, DIM, generator=g)
    longest = int(lens.max())
    padded_q, padded_kv = (torch.randn(16, h, longest, DIM, generator=g) for h in (HQ, HK))
    causal = torch.ones(longest, longest, dtype=torch.bool).tril()
    results = {"sdpa_contiguous_us": round(seconds(lambda: F.scaled_dot_product_attention(
        padded_q, padded_kv, padded_kv, attn_mask=causal, enable_gqa=True), repeats) * 1e6, 1)}
    for block in (16, 64, 256):
        blocks = math.ceil(longest / block)
        table = torch.randperm(16 * blocks + 1, generator=g)[:16 * blocks].reshape(16, blocks).int()
        k, v = (torch.randn(16 * blocks + 1, block, HK, DIM, generator=g) for _ in range(2))
        results[f"torch_path_block{block}_us"] = round(seconds(
            lambda: paged.paged_attention(q, k, v, cu, lens, table, DIM ** -0.5), repeats) * 1e6, 1)
    print("prefill", results, flush=True)
    return results


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--out")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    from r1hpc.eval.benchmarks import describe_device

    assert paged.compiled_decode() is not None, "r1hpc._cpu_attention is not built (pip install --no-build-isolation)"
    results = decode_rows(args.repeats)
    prefill = prefill_rows(args.repeats)
    bandwidth = copy_bandwidth(args.repeats)
    print(f"copy bandwidth {bandwidth:.1f} GB/s (read + write)")
    out = {"what": "decode attention over a paged fp32 KV cache, SmolLM2-135M heads (9 q / 3 kv x 64), 16-token "
                   "blocks, 30 layer caches cold: r1hpc._cpu_attention vs gather + mask + SDPA vs SDPA on a "
                   "contiguous padded cache; GB/s = KV bytes read / time. prefill: one layer, 16 prompts of "
                   "32-160 tokens, the torch path at 16/64/256-token blocks vs SDPA on contiguous padded keys",
           **describe_device(), "threads": args.threads, "copy_GB_per_s": round(bandwidth, 1), "results": results,
           "prefill": prefill}
    if args.out:
        Path(args.out).write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
