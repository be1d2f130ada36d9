"""Decoding's skinny matrix multiplies on a CPU, in the layout the CPU BLAS runs fast.

A decode step multiplies a few rows of activations by every weight: ``x @ W.T`` with ``x`` of a few
rows. On AMD CPUs torch's CPU BLAS (MKL in the x86 wheels, which takes other kernels on CPUs that
are not Intel's) runs that transposed-weight product far below the memory bandwidth, and the same
product as ``(W @ x.T).T`` much faster: on a 2-core AMD EPYC, SmolLM2-135M's shapes with the weights
cold in cache as a decode step reads them, 1.3-4.9x at 2-8 rows, about even from 12 rows on
(``benchmarks/bench_cpu_linear.py``); a SmolLM2 decode step of 4 rows went from 111 to 58 ms. On a
2-core Intel Xeon the weight-major product is the slower one (0.36-0.8x at 2-8 rows), so the path is
taken on AMD CPUs only (:func:`weight_major_pays_off`).
Only forwards without autograd take this path (rollouts, evaluation, the log-prob passes of frozen
models); training's forward and backward keep megatron's own code, so gradients are unchanged.
Applied by :func:`r1hpc.model.cpu_compat.apply` on CPU-only hosts.
"""
from __future__ import annotations

import functools
from typing import Callable

import torch

#: Rows (tokens of all sequences together) up to which the weight-major product is used.
SKINNY_ROWS = 8


def weight_major_pays_off(cpuinfo: str | None = None) -> bool:
    """Whether this CPU is one where the weight-major product was measured faster: an AMD one
    (``vendor_id`` in ``/proc/cpuinfo``, or the given text). Intel CPUs and unknown ones keep ``x @ W.T``."""
    if cpuinfo is None:
        try:
            with open("/proc/cpuinfo") as f:
                cpuinfo = f.read(4096)
        except OSError:
            return False
    vendors = [line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if line.startswith("vendor_id")]
    return vendors[:1] == ["AuthenticAMD"]


def skinny_matmul(input: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``input @ weight.T`` for ``input`` [..., in] and ``weight`` [out, in], as ``(weight @ x.T).T`` with
    ``x`` row-major. The result is made row-major too (a copy of a few rows): a column-major one would
    reach the next layer as a row-major ``x.T``, the slow layout again."""
    rows = input.numel() // input.shape[-1]
    x = input.reshape(rows, input.shape[-1]).contiguous()
    return torch.matmul(weight, x.t()).t().contiguous().view(*input.shape[:-1], weight.shape[0])


def weight_major_when_skinny(linear: Callable) -> Callable:
    """Wrap megatron's ``linear_with_frozen_weight`` or ``linear_with_grad_accumulation_and_async_allreduce``:
    without autograd, without sequence parallelism (whose input must be all-gathered first) and with
    2 to :data:`SKINNY_ROWS` rows, compute the product weight-major; otherwise call megatron's."""

    @functools.wraps(linear)
    def wrapper(input, weight, bias=None, *args, **kwargs):
        rows = input.numel() // max(input.shape[-1], 1)
        if (torch.is_grad_enabled() or args or kwargs.get("sequence_parallel") or input.device.type != "cpu"
                or not 2 <= rows <= SKINNY_ROWS):
            return linear(input, weight, bias, *args, **kwargs)
        output = skinny_matmul(input, weight)
        return output + bias if bias is not None else output

    return wrapper
