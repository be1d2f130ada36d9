"""The CPU patches megatron-core's dynamic inference engine needs (continuous batching, paged KV cache).

Applied by :func:`r1hpc.model.cpu_compat.apply` with its ``_patch`` (so each lands in ``PATCHES`` with
its reason), only without CUDA and only on a megatron-core series whose engine they were written
for (``Series.dynamic_engine_cpu``). The engine's GPU-only pieces are flash-attn kernels, a Triton
KV-append kernel, nvtx ranges, CUDA timing events and pinned host buffers; each has a CPU stand-in
(torch code, and for decode attention the compiled kernel in ``csrc/paged_attention_cpu.cpp``).
"""
from __future__ import annotations

import functools
import time
from typing import Any, Callable

import torch
from torch.overrides import TorchFunctionMode

from r1hpc.model.paged_attention import paged_attention


class PerfCounterEvent:
    """Stand-in for ``torch.cuda.Event(enable_timing=True)``: records the host clock (CPU work is synchronous)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.at = 0.0

    def record(self, *args: Any, **kwargs: Any) -> None:
        self.at = time.perf_counter()

    def synchronize(self) -> None:
        pass

    def query(self) -> bool:
        return True

    def elapsed_time(self, end: "PerfCounterEvent") -> float:
        return (end.at - self.at) * 1e3  # milliseconds, as CUDA events report


class _NoPinMemory(TorchFunctionMode):
    """Drops ``pin_memory=True`` (page-locked host memory needs a CUDA driver)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        kwargs.pop("pin_memory", None)
        return func(*args, **kwargs)


def _without_pin_memory(fn: Callable) -> Callable:
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with _NoPinMemory():
            return fn(*args, **kwargs)

    return wrapper


def flash_decode_and_prefill_torch(self, q, k, v, max_seqlen_q, max_seqlen_k, cu_seqlens_q, cu_seqlens_k,
                                   seqlens_k, block_table, is_decode_only) -> torch.Tensor:
    """``Attention.flash_decode_and_prefill`` without flash-attn: :func:`paged_attention` (same shapes)."""
    scale = getattr(self, "softmax_scale", None) or q.shape[-1] ** -0.5
    return paged_attention(q, k, v, cu_seqlens_q, seqlens_k, block_table, scale, decode_only=is_decode_only)


def append_key_value_cache_torch(*, layer_number: int, key: torch.Tensor, value: torch.Tensor,
                                 memory_buffer: torch.Tensor, padded_active_token_count: int,
                                 token_to_block_idx: torch.Tensor,
                                 token_to_local_position_within_kv_block: torch.Tensor) -> None:
    """The Triton KV-append kernel's job in torch: write the step's keys and values [T, 1, Hk, D] into
    their (block, position) slots of ``memory_buffer`` [2, layers, blocks, block_size, Hk, D].
    One ``index_copy_`` per cache on flat slot ids; megatron's own fallback indexes by two index
    tensors, a general advanced-indexing write several times slower at decode sizes."""
    n = padded_active_token_count
    slots = kv_cache_slots(memory_buffer, token_to_block_idx[:n], token_to_local_position_within_kv_block[:n])
    write_key_value(memory_buffer, layer_number, slots, key[:n], value[:n])


def kv_cache_slots(memory_buffer: torch.Tensor, block_idx: torch.Tensor, position_in_block: torch.Tensor) -> torch.Tensor:
    """Flat slot ids (block * block_size + position) of tokens in ``memory_buffer``'s caches. Block -1 (the
    padding tokens' dummy block) is the last block, as in megatron's fallback."""
    blocks, block_size = memory_buffer.shape[2], memory_buffer.shape[3]
    return (block_idx.long() * block_size + position_in_block.long()).remainder(blocks * block_size)


def write_key_value(memory_buffer: torch.Tensor, layer_number: int, slots: torch.Tensor, key: torch.Tensor,
                    value: torch.Tensor) -> None:
    """Keys and values [T, 1, Hk, D] into layer ``layer_number``'s caches at flat ``slots`` [T]."""
    for cache, new in zip(memory_buffer[:, layer_number], (key, value)):
        cache.view(-1, *cache.shape[2:]).index_copy_(0, slots, new.squeeze(1))


def apply(patch: Callable[..., None]) -> None:
    """Patch the dynamic engine's GPU-only calls; ``patch(owner, name, new, why)`` records each."""
    from megatron.core.inference.contexts import dynamic_context
    from megatron.core.inference.engines import dynamic_engine
    from megatron.core.inference.text_generation_controllers import text_generation_controller as tgc
    from megatron.core.transformer import attention

    patch(attention.Attention, "flash_decode_and_prefill", flash_decode_and_prefill_torch,
          "dynamic inference attends over the paged KV cache with flash-attn kernels; r1hpc.model.paged_attention "
          "reads decode rows' blocks in place (the compiled r1hpc._cpu_attention) and gathers prefill rows' for SDPA")
    patch(attention, "is_fa_min_version", lambda *a, **k: True,
          "the dynamic engine asserts a flash-attn version (importing flash_attn); the CPU stand-in needs none")
    patch(dynamic_context, "triton_append_key_value_cache", append_key_value_cache_torch,
          "the Triton KV-append kernel needs a GPU; a torch index_copy_ on flat slot ids writes the step's keys "
          "and values (megatron's own fallback, advanced indexing by block and position, is slower)")
    patch(dynamic_engine, "range_push", lambda *a, **k: None, "nvtx profiling ranges need CUDA")
    patch(dynamic_engine, "range_pop", lambda *a, **k: None, "nvtx profiling ranges need CUDA")
    patch(torch.cuda, "Event", PerfCounterEvent,
          "the dynamic engine times each step with CUDA events; a perf_counter timer on CPU")
    controller = tgc.TextGenerationController
    patch(controller, "_init_dynamic_sampling_tensors", _without_pin_memory(controller._init_dynamic_sampling_tensors),
          "allocates pinned host buffers for sampling metadata (pin_memory needs CUDA)")
