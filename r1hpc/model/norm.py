"""RMSNorm for the local (no Transformer Engine) layer spec that also works with sequence parallelism.

megatron's torch-norm wrapper refuses sequence parallelism, yet megatron requires SP for MoE with
TP > 1. With SP each TP rank normalises its own slice of the sequence with a replicated weight, so
the weight's gradient is partial per rank; marking it ``sequence_parallel`` makes megatron's
``finalize_model_grads`` all-reduce it over the TP group, exactly as Transformer Engine's norm does.
"""
from __future__ import annotations

import torch


class RMSNorm(torch.nn.Module):
    def __init__(self, config, hidden_size: int, eps: float = 1e-5, **unused) -> None:
        super().__init__()
        self.eps = eps
        dtype = getattr(config, "params_dtype", torch.float32)
        # built on the host like megatron's CPU-initialised layers; build_model moves the module
        self.weight = torch.nn.Parameter(torch.ones(hidden_size, dtype=dtype, device="cpu"))
        setattr(self.weight, "sequence_parallel", bool(getattr(config, "sequence_parallel", False)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        normed = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return normed.to(x.dtype) * self.weight
