"""The compiled sampler (csrc/, docs/kernels.md) and the choice between it and the torch reference.

Same contract as :func:`r1hpc.rollout.sampling.sample_tokens` (temperature, top-k, top-p; the
log-prob and entropy of the temperature distribution before truncation), but the draw comes from a
counter-based Philox stream keyed by (seed, request id, decode step): a request's tokens depend on
its own logits and ids only, never on its batch neighbours, the batch order or the batch size.
CPU tensors go to ``r1hpc._cpu_sampling``, CUDA tensors to ``r1hpc._C``; both are built by
``pip install --no-build-isolation`` (setup.py), and the torch path stays available everywhere.
"""
from __future__ import annotations

import functools
from types import ModuleType
from typing import Optional

import torch

from r1hpc.config import ConfigError
from r1hpc.extensions import CPU_SAMPLING_EXTENSION, CUDA_EXTENSION, import_extension

SAMPLERS = ("auto", "torch", "native")
EXTENSIONS = {"cpu": CPU_SAMPLING_EXTENSION, "cuda": CUDA_EXTENSION}
LOGIT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
MAX_VOCAB = 1 << 23  # fixed-point masses of a row must fit in 64 bits (csrc/sampler_common.h)


@functools.cache
def _load(device_type: str) -> tuple[Optional[ModuleType], str]:
    """(module, its name) or (None, why not)."""
    name = EXTENSIONS.get(device_type)
    if name is None:
        return None, f"there is no compiled sampler for {device_type!r} tensors"
    module, why = import_extension(name)
    return (module, name) if module is not None else (None, why)


def resolve_sampler(choice: str, device_type: str) -> str:
    """What ``rollout.sampler = choice`` means for logits on ``device_type``: 'torch' or 'native'.
    'auto' takes the compiled sampler when it is built; 'native' without it is a ConfigError."""
    if choice not in SAMPLERS:
        raise ConfigError(f"key 'sampler' must be one of {', '.join(SAMPLERS)}; got {choice!r}")
    if choice == "torch":
        return "torch"
    module, why = _load(device_type)
    if module is not None:
        return "native"
    if choice == "native":
        raise ConfigError(f"key 'sampler' is 'native' but {why}; build it with `pip install --no-build-isolation "
                          "-e .` after torch (scripts/setup_env.sh does), or set rollout.sampler to auto or torch")
    return "torch"


def local_device_type() -> str:
    """The device a rollout on this machine samples on."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def describe(choice: str = "auto") -> str:
    """One line for ``r1hpc info``: which path ``rollout.sampler = choice`` takes on this machine."""
    device_type = local_device_type()
    if resolve_sampler(choice, device_type) == "native":
        return f"native ({EXTENSIONS[device_type]}, {device_type}) for rollout.sampler={choice}"
    return f"torch (r1hpc.rollout.sampling) for rollout.sampler={choice}; compiled: {_load(device_type)[1]}"


def seed_from(generator: Optional[torch.Generator]) -> int:
    """A 63-bit Philox key drawn from the caller's generator (identically seeded on every TP rank)."""
    device = generator.device if generator is not None else "cpu"
    return int(torch.randint(0, 2**63 - 1, (), generator=generator, device=device))


def sample_tokens_native(logits: torch.Tensor, *, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
                         seed: int, request_ids: torch.Tensor, step: int
                         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """logits [B, V] (fp32/bf16/fp16) -> (tokens [B] int64, logprobs [B] fp32, entropies [B] fp32).

    ``request_ids`` [B] int64 and ``step`` select each row's Philox counter; temperature 0 is greedy."""
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2:
        raise ValueError(f"logits must be a [batch, vocab] tensor, got shape {tuple(getattr(logits, 'shape', ()))}")
    if logits.dtype not in LOGIT_DTYPES:
        raise TypeError(f"logits must be float32, bfloat16 or float16, got {logits.dtype}")
    if not 1 <= logits.shape[1] < MAX_VOCAB:
        raise ValueError(f"vocab size must be in [1, 2^23), got {logits.shape[1]}")
    if not temperature >= 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 0:
        raise ValueError(f"top_k must be an int >= 0, got {top_k!r}")
    if not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    if not 0 <= step < 2**32:
        raise ValueError(f"step must be in [0, 2^32), got {step}")
    if not 0 <= seed < 2**64:
        raise ValueError(f"seed must be in [0, 2^64), got {seed}")
    request_ids = torch.as_tensor(request_ids, dtype=torch.long, device=logits.device)
    if request_ids.shape != (logits.shape[0],):
        raise ValueError(f"request_ids must have shape [{logits.shape[0]}], got {tuple(request_ids.shape)}")
    module, why = _load(logits.device.type)
    if module is None:
        raise RuntimeError(f"the compiled sampler is not available: {why}")
    if logits.stride(1) != 1:
        logits = logits.contiguous()
    signed_seed = seed - 2**64 if seed >= 2**63 else seed  # the extension takes an int64 and reads its bits
    tokens, logps, entropies = module.sample(logits, float(temperature), top_k, float(top_p), signed_seed,
                                             request_ids, int(step))
    return tokens, logps, entropies
