"""Benchmark the GRPO loss: forward and forward+backward time, peak memory, achieved bandwidth.

Implementations: the eager fp32 reference (r1hpc.algo.grpo_token_loss_reference, the same function
the tests use), torch.compile of it, Liger-Kernel's Triton GRPO loss when installed, our chunked
torch path and our fused Triton kernel (r1hpc.algo.grpo_loss).

Bytes-moved model (bf16 logits [T, V], e = 2 bytes; per-token vectors are O(T) and ignored):
  forward          reads the logits once                        -> e*T*V
  forward+backward forward read + backward re-read + grad write -> 3*e*T*V
This is the minimum any implementation must move, so "achieved GB/s" = model bytes / time is
comparable across implementations, and "roofline" = achieved / the device's peak HBM bandwidth.

  python benchmarks/bench_grpo_loss.py            # real shapes, needs a CUDA GPU
  python benchmarks/bench_grpo_loss.py --smoke    # tiny CPU run that only checks the plumbing
Results go to benchmarks/results/grpo_loss_<device>.json with the device named.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import re
import statistics
import time
from pathlib import Path

import torch

from r1hpc.algo import GRPOLossParams, aggregation_weights, grpo_loss, grpo_token_loss_reference
from r1hpc.algo.vocab_parallel import logp_entropy

RESULTS = Path(__file__).resolve().parent / "results"
#: Peak HBM bandwidth (bytes/s) from vendor data sheets; first substring match wins.
PEAK_HBM = [("H200", 4.8e12), ("H100 NVL", 3.9e12), ("H100 PCIe", 2.0e12), ("H100", 3.35e12),
            ("H800", 3.35e12), ("A100", 2.0e12)]
KW = dict(temperature=0.9, eps_low=0.2, eps_high=0.28, beta=0.001, kl_kind="k3")
PARAMS = GRPOLossParams(**KW)


def make_inputs(t: int, v: int, device: str) -> dict:
    g = torch.Generator(device=device).manual_seed(0)
    logits = torch.randn(t, v, device=device, dtype=torch.bfloat16, generator=g) * 3
    target = torch.randint(0, v, (t,), device=device, generator=g)
    with torch.no_grad():
        logp, _ = logp_entropy(logits, target, torch.ones(t, dtype=torch.bool, device=device),
                               temperature=KW["temperature"])
    length = 512 if t >= 512 else t
    mask = torch.rand(t // length, length, device=device, generator=g) < 0.9
    noise = lambda: 0.3 * torch.randn(t, device=device, generator=g)  # noqa: E731
    return dict(logits=logits, target=target, old_logp=logp + noise(), ref_logp=logp + noise(),
                advantages=torch.randn(t // length, device=device, generator=g).repeat_interleave(length),
                weights=aggregation_weights(mask, "token-mean").flatten(), mask=mask)


def reference_loss(logits, target, old_logp, ref_logp, advantages, weights):
    tok = grpo_token_loss_reference(logits, target, old_logp, ref_logp, advantages, PARAMS)
    return (tok["loss"] * weights).sum()


def impls(device: str) -> dict:
    """name -> (prepare(inp) -> logits in the layout it takes, call(inp, logits) -> scalar loss),
    or a string saying why the implementation is absent."""
    compiled = torch.compile(reference_loss)
    flat = lambda inp: inp["logits"]  # noqa: E731
    out = {
        "eager_reference": (flat, lambda inp, x: reference_loss(x, *_args(inp))),
        "compiled_reference": (flat, lambda inp, x: compiled(x, *_args(inp))),
        "ours_torch": (flat, lambda inp, x: _ours(inp, x, "torch")),
    }
    if device == "cuda" or os.environ.get("TRITON_INTERPRET") == "1":
        out["ours_triton"] = (flat, lambda inp, x: _ours(inp, x, "triton"))
    else:
        out["ours_triton"] = "needs CUDA (or TRITON_INTERPRET=1)"
    try:
        from liger_kernel.transformers.grpo_loss import triton_grpo_loss
    except ImportError:
        out["liger_kernel"] = "liger-kernel not installed"
    else:
        out["liger_kernel"] = (_liger_logits, lambda inp, x: _liger(triton_grpo_loss, inp, x))
    return out


def _args(inp):
    return inp["target"], inp["old_logp"], inp["ref_logp"], inp["advantages"], inp["weights"]


def _ours(inp, x, impl):
    return grpo_loss(x, inp["target"], inp["old_logp"], inp["advantages"], inp["weights"],
                     dataclasses.replace(PARAMS, impl=impl), ref_logp=inp["ref_logp"])[0]


def _liger_logits(inp):
    """Liger takes logits [B, L+1, V] and drops the last position; built once, outside the timing."""
    b, length = inp["mask"].shape
    x = inp["logits"].view(b, length, -1)
    return torch.cat([x, x.new_zeros(b, 1, x.shape[-1])], dim=1)


def _liger(fn, inp, x):
    """Liger's per-token loss on [B, L] inputs (advantages per response), reduced with our weights.
    Runs with its default in-place gradient (written over the logits)."""
    b, length = inp["mask"].shape
    view = lambda k: inp[k].view(b, length)  # noqa: E731
    out = fn(x, view("old_logp"), view("ref_logp"), view("target"), view("advantages")[:, 0], inp["mask"],
             temperature=KW["temperature"], beta=KW["beta"], eps_low=KW["eps_low"], eps_high=KW["eps_high"])
    loss = out[0] if isinstance(out, tuple) else out
    return loss if loss.dim() == 0 else (loss * view("weights")).sum()


def _sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def _time(fn, device, iters, warmup) -> float:
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _peak_bytes(fn, device):
    if device != "cuda":
        return None  # CPU allocations are not tracked by torch
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - base


def measure(name, impl, inp, device, iters, warmup, peak_hbm) -> dict:
    t, v = inp["logits"].shape
    elem = inp["logits"].element_size()
    prepare, fn = impl
    x = prepare(inp).detach().requires_grad_()

    def fwd():
        with torch.no_grad():
            fn(inp, x)

    def fwd_bwd():
        x.grad = None
        fn(inp, x).backward()

    row = {"impl": name, "T": t, "V": v, "dtype": str(inp["logits"].dtype).replace("torch.", "")}
    for phase, call, nbytes in (("fwd", fwd, elem * t * v), ("fwd_bwd", fwd_bwd, 3 * elem * t * v)):
        try:
            sec = _time(call, device, iters, warmup)
            peak = _peak_bytes(call, device)
        except torch.cuda.OutOfMemoryError:
            row[phase] = {"error": "out of memory"}
            torch.cuda.empty_cache()
            continue
        except Exception as e:  # noqa: BLE001 - one failing implementation must not end the run
            row[phase] = {"error": f"{type(e).__name__}: {str(e)[:300]}"}
            continue
        gbps = nbytes / sec / 1e9
        row[phase] = {"ms": sec * 1e3, "model_bytes": nbytes, "achieved_GBps": gbps,
                      "roofline_share": gbps * 1e9 / peak_hbm if peak_hbm else None,
                      "peak_extra_mem_GiB": peak / 2**30 if peak is not None else None}
    return row


def device_name(device: str) -> str:
    return torch.cuda.get_device_name() if device == "cuda" else f"cpu ({platform.processor() or platform.machine()})"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke", action="store_true", help="tiny shapes on CPU: checks the script, not speed")
    p.add_argument("--T", type=int, nargs="+", default=[4096, 16384])
    p.add_argument("--V", type=int, nargs="+", default=[32768, 152064])
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--impls", nargs="+", default=None, help="subset of implementations to run")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args()
    device = "cuda" if torch.cuda.is_available() and not args.smoke else "cpu"
    if device == "cpu" and not args.smoke:
        p.error("no CUDA device: real figures need a GPU; use --smoke for the CPU plumbing check")
    shapes = [(64, 512)] if args.smoke else [(t, v) for t in args.T for v in args.V]
    iters, warmup = (1, 1) if args.smoke else (args.iters, 3)
    name = device_name(device)
    peak_hbm = next((bw for key, bw in PEAK_HBM if key in name), None) if device == "cuda" else None
    rows = []
    for t, v in shapes:
        inp = make_inputs(t, v, device)
        for impl, fn in impls(device).items():
            if args.impls and impl not in args.impls:
                continue
            if isinstance(fn, str):
                rows.append({"impl": impl, "T": t, "V": v, "skipped": fn})
            else:
                rows.append(measure(impl, fn, inp, device, iters, warmup, peak_hbm))
            print(json.dumps(rows[-1]))
        del inp
    slug = re.sub(r"[^A-Za-z0-9]+", "_", name).strip("_").lower()
    out = args.out or RESULTS / f"grpo_loss_{slug}{'_smoke' if args.smoke else ''}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "benchmark": "grpo_loss", "device": name, "smoke": args.smoke,
        "note": "CPU smoke run: checks the script only; real figures need a GPU" if args.smoke else "",
        "peak_hbm_Bps": peak_hbm, "torch": torch.__version__, "config": KW,
        "bytes_model": {"fwd": "e*T*V (one read of the logits)",
                        "fwd_bwd": "3*e*T*V (fwd read, bwd re-read, bwd grad write)"},
        "results": rows,
    }, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
