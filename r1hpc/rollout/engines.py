"""The rollout engine a run asked for (``rollout.engine``): r1hpc's static decoding loop or megatron's
dynamic engine. Both take the same arguments and return the same :class:`Sample` objects, so every
caller (trainer, rollout workers, ``r1hpc rollout``) picks one here and is otherwise unchanged."""
from __future__ import annotations

from typing import Optional, Sequence

import torch

from r1hpc.config import ConfigError
from r1hpc.rollout.generate import Sample, generate


def generate_with(engine: str, model: torch.nn.Module, prompts: Sequence[Sequence[int]], *,
                  kv_cache_gb: Optional[float] = None, kv_block_tokens: Optional[int] = None,
                  **kwargs) -> list[Sample]:
    """``generate(model, prompts, **kwargs)`` on ``engine`` ('static' or 'dynamic'); ``kv_cache_gb``
    sizes the dynamic engine's KV pool (None: room for every row at full length), in blocks of
    ``kv_block_tokens`` tokens (None: the device's default)."""
    if engine == "static":
        return generate(model, prompts, **kwargs)
    if engine != "dynamic":
        raise ConfigError(f"key 'rollout.engine' must be static or dynamic, got {engine!r}")
    check_dynamic_supported()
    from r1hpc.rollout.dynamic import generate_dynamic

    return generate_dynamic(model, prompts, kv_cache_gb=kv_cache_gb, kv_block_tokens=kv_block_tokens, **kwargs)


def check_dynamic_supported() -> None:
    """The dynamic engine on a GPU attends over its paged KV cache with flash-attn's kernels (2.x or
    3.x), which r1hpc does not install; on a CPU it runs through r1hpc.model.cpu_inference's patches,
    written for one megatron-core series. Where either is missing, say so before the engine is built
    and point at the static engine."""
    from r1hpc.model import mcore_compat

    if torch.cuda.is_available():
        from megatron.core.transformer import attention

        if attention.flash_attn_varlen_func is None and not attention.HAVE_FA3:
            raise ConfigError("rollout.engine=dynamic on a GPU needs flash-attn (2.x, `pip install flash-attn "
                              "--no-build-isolation`, or 3.x): megatron's dynamic engine attends over its paged "
                              "KV cache with its kernels; install it or set rollout.engine=static")
        return
    if mcore_compat.features().dynamic_engine_cpu:
        return
    raise ConfigError(f"rollout.engine=dynamic on a CPU needs megatron-core 0.16.x (installed: "
                      f"{mcore_compat.installed_version()}, whose dynamic engine has no CPU patches here); "
                      "set rollout.engine=static")
