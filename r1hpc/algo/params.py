"""The GRPO loss's scalar settings as one value, so the four functions that compute the loss (the fp32
reference, the chunked torch path, the Triton kernel, the fused output layer) take the same object
instead of the same eight keywords, and :meth:`r1hpc.algo.AlgoConfig.loss_params` builds it once."""
from __future__ import annotations

import dataclasses
import os
from typing import Literal, Optional

from torch import Tensor

from r1hpc.algo.kl import KLKind

Impl = Literal["auto", "triton", "torch"]
IMPL_ENV = "R1HPC_GRPO_LOSS_IMPL"


@dataclasses.dataclass(frozen=True)
class GRPOLossParams:
    """Per-token loss ``tis * pg + beta * kl - entropy_coef * entropy`` on log-probs of
    ``softmax(logits / temperature)``; ``pg`` is the clipped surrogate with ratio clip
    ``[1 - eps_low, 1 + eps_high]`` and, with ``dual_clip_c``, dual clip for negative advantages.
    ``impl`` picks the kernels ('auto': Triton on CUDA, ``$R1HPC_GRPO_LOSS_IMPL`` overrides).
    The defaults are plain PPO clipping without KL or entropy terms."""

    temperature: float = 1.0
    eps_low: float = 0.2
    eps_high: float = 0.2
    dual_clip_c: Optional[float] = None
    beta: float = 0.0
    kl_kind: KLKind = "k3"
    entropy_coef: float = 0.0
    impl: Impl = "auto"


def resolve_impl(impl: Impl, logits: Tensor) -> str:
    """Explicit 'triton'/'torch' wins; 'auto' follows $R1HPC_GRPO_LOSS_IMPL, else Triton on CUDA."""
    if impl == "auto":
        impl = os.environ.get(IMPL_ENV, "") or ("triton" if logits.is_cuda else "torch")
    if impl not in ("triton", "torch"):
        raise ValueError(f"grpo_loss impl must be 'auto', 'triton' or 'torch', got {impl!r}")
    if impl == "triton" and not logits.is_cuda and os.environ.get("TRITON_INTERPRET") != "1":
        raise ValueError("grpo_loss impl='triton' needs CUDA tensors (or TRITON_INTERPRET=1 set before "
                         f"the kernels are imported); use impl='torch' on {logits.device}")
    return impl
