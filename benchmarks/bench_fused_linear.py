"""Peak memory and time of the output layer + GRPO loss + backward: materialised logits vs the fused path.

  materialised: logits = hidden @ weight.T ([T, V] fp32), r1hpc.algo.grpo_loss (chunked torch
                path), backward through both (the logit gradient is another [T, V])
  fused:        r1hpc.algo.fused_linear_grpo_loss (tiles recomputed in backward)

Each variant runs in its own subprocess: inputs are built, the process's resident set is read
(VmRSS), the kernel's high-water mark is reset (``/proc/self/clear_refs``), then one loss +
backward runs and its peak resident set (VmHWM) is read. Peak extra memory = VmHWM - VmRSS before,
measured, not estimated; it includes the gradients of hidden and weight (both variants make them).

  python benchmarks/bench_fused_linear.py                 # SmolLM2-135M's shape, T = 8192, CPU
  python benchmarks/bench_fused_linear.py --smoke         # tiny shape, only checks the plumbing
Writes benchmarks/results/fused_linear_cpu.json (the device and the thread count named).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
KW = dict(temperature=0.9, eps_low=0.2, eps_high=0.28, beta=0.001, kl_kind="k3", entropy_coef=0.0)


def _status_kib(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def run_variant(variant: str, t: int, h: int, v: int, threads: int) -> dict:
    """One loss + backward of ``variant`` in this process; returns time and peak extra memory."""
    import torch

    from r1hpc.algo import GRPOLossParams, aggregation_weights, fused_linear_grpo_loss, grpo_loss

    torch.set_num_threads(threads)
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(t, h, generator=g).requires_grad_()
    weight = (torch.randn(v, h, generator=g) / h**0.5).requires_grad_()
    target = torch.randint(0, v, (t,), generator=g)
    lp = -torch.rand(t, generator=g) * 5
    per_token = dict(old_logp=lp + 0.1 * torch.randn(t, generator=g), advantages=torch.randn(t, generator=g),
                     weights=aggregation_weights(torch.ones(8, t // 8, dtype=torch.bool), "token-mean").flatten())
    ref = lp + 0.1 * torch.randn(t, generator=g)
    rss_before = _status_kib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    start = time.perf_counter()
    if variant == "materialised":
        loss, _ = grpo_loss(hidden @ weight.T, target, per_token["old_logp"], per_token["advantages"],
                            per_token["weights"], GRPOLossParams(impl="torch", **KW), ref_logp=ref)
    else:
        loss, _ = fused_linear_grpo_loss(hidden, weight, target, per_token["old_logp"], per_token["advantages"],
                                         per_token["weights"], GRPOLossParams(**KW), ref_logp=ref)
    loss.backward()
    seconds = time.perf_counter() - start
    peak = _status_kib("VmHWM")
    return {"seconds": seconds, "peak_extra_mib": (peak - rss_before) / 1024, "loss": float(loss),
            "grad_weight_norm": float(weight.grad.norm()), "grad_hidden_norm": float(hidden.grad.norm())}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tokens", type=int, default=8192)
    p.add_argument("--hidden", type=int, default=576)
    p.add_argument("--vocab", type=int, default=49152)
    p.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    p.add_argument("--smoke", action="store_true", help="T=256, H=64, V=1000; printed, not written")
    p.add_argument("--variant", help=argparse.SUPPRESS)  # internal: run one variant and print JSON
    a = p.parse_args()
    if a.smoke:
        a.tokens, a.hidden, a.vocab = 256, 64, 1000
    if a.variant:
        print(json.dumps(run_variant(a.variant, a.tokens, a.hidden, a.vocab, a.threads)))
        return
    results = {}
    for variant in ("materialised", "fused"):
        cmd = [sys.executable, __file__, "--variant", variant, "--tokens", str(a.tokens), "--hidden", str(a.hidden),
               "--vocab", str(a.vocab), "--threads", str(a.threads)]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True,
                             env=dict(os.environ, OMP_NUM_THREADS=str(a.threads)))
        results[variant] = json.loads(out.stdout.strip().splitlines()[-1])
        print(variant, results[variant], flush=True)
    m, f = results["materialised"], results["fused"]
    report = {
        "device": f"CPU ({platform.machine()}, {os.cpu_count()} cores)",
        "torch_threads": a.threads,
        "shape": {"tokens": a.tokens, "hidden": a.hidden, "vocab": a.vocab, "dtype": "fp32"},
        "loss_options": KW,
        "method": "one loss+backward per variant in its own subprocess; peak extra = VmHWM - VmRSS before "
                  "(/proc/self/clear_refs reset); includes grad_hidden and grad_weight",
        "results": results,
        "fused_vs_materialised": {"peak_extra_memory_ratio": f["peak_extra_mib"] / m["peak_extra_mib"],
                                  "time_ratio": f["seconds"] / m["seconds"],
                                  "loss_rel_diff": abs(f["loss"] - m["loss"]) / abs(m["loss"])},
        "targets": {"peak_extra_memory_ratio": "<= 0.10", "time_ratio": "<= 1.3"},
    }
    print(json.dumps(report["fused_vs_materialised"], indent=2))
    if not a.smoke:
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / "fused_linear_cpu.json").write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
