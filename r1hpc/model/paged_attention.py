"""Attention over a paged KV cache in plain torch: what flash-attn's varlen / ``flash_attn_with_kvcache``
kernels compute for megatron's dynamic inference engine, for machines without them (CPUs).

The engine hands over the step's queries flattened across requests (``cu_seqlens_q`` marks where each
request's queries start), one KV cache per layer as ``[blocks, block_size, kv_heads, head_dim]``, and
per request its key count and its block ids. Each request's keys are gathered from its blocks; its
queries are the *last* ``q_len`` positions of its sequence (a prefill chunk or one decode token), so
the causal mask is aligned to the end. Decode rows (one query) and prefill rows are attended in two
batched ``scaled_dot_product_attention`` calls, padded only to the longest row of their kind.

Decode rows of float32 caches go to the compiled kernel ``r1hpc._cpu_attention`` (csrc/) where it is
built: it reads each request's keys and values in place from their blocks, where the torch path copies
the whole history, masks the copy and attends (three passes over the KV history per layer per step).
"""
from __future__ import annotations

import math
from types import ModuleType
from typing import Optional

import torch
import torch.nn.functional as F

from r1hpc.extensions import CPU_ATTENTION_EXTENSION, import_extension


def compiled_decode() -> Optional[ModuleType]:
    """The compiled CPU decode kernel, or None where setup.py did not build it."""
    return import_extension(CPU_ATTENTION_EXTENSION)[0]


def paged_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, cu_seqlens_q: torch.Tensor,
                    seqlens_k: torch.Tensor, block_table: torch.Tensor, scale: float,
                    decode_only: bool = False) -> torch.Tensor:
    """q [T, 1, Hq, D] (tokens of all requests, padding after the last) -> output of the same shape.

    ``cu_seqlens_q`` [R + 1] and ``seqlens_k`` [R]: query offsets and key counts per request (the key
    count includes this step's tokens, already appended); ``block_table`` [R, max_blocks] the KV block
    ids (-1 past the end). Padding tokens get zeros. ``decode_only``: no request has more than one
    query (the engine knows; then only padding is left to rule out, not each request's kind)."""
    flat = q.reshape(q.shape[0], q.shape[-2], q.shape[-1])
    kernel = compiled_decode() if _in_place_readable(flat, k_cache, v_cache) else None
    if decode_only and kernel is not None and seqlens_k.shape[0] == flat.shape[0] == int(cu_seqlens_q[-1]):
        # as many queries as tokens and requests: no padding token or padding request, query r is token r
        return kernel.paged_decode(flat, k_cache, v_cache, seqlens_k, block_table, scale).reshape(q.shape)
    q_lens = (cu_seqlens_q[1:] - cu_seqlens_q[:-1]).long()
    out = torch.zeros_like(flat)
    decode, prefill = (q_lens == 1).nonzero().squeeze(1), (q_lens > 1).nonzero().squeeze(1)
    if decode.numel() and kernel is not None:
        starts = cu_seqlens_q[:-1][decode].long()
        out[starts] = kernel.paged_decode(flat[starts], k_cache, v_cache, seqlens_k[decode], block_table[decode], scale)
    for rows in (prefill,) if kernel is not None else (decode, prefill):
        if rows.numel():
            _attend_rows(flat, out, k_cache, v_cache, cu_seqlens_q[:-1][rows].long(), q_lens[rows],
                         seqlens_k[rows].long(), block_table[rows], scale)
    return out.reshape(q.shape)


def _in_place_readable(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor) -> bool:
    """What the compiled decode kernel takes: float32 CPU tensors, each cache block contiguous."""
    return all(t.device.type == "cpu" and t.dtype == torch.float32 for t in (q, k_cache, v_cache)) and all(
        c[0].is_contiguous() for c in (k_cache, v_cache))


def _attend_rows(flat, out, k_cache, v_cache, starts, q_lens, k_lens, block_table, scale) -> None:
    """Requests whose queries start at ``starts`` in ``flat``: gather their KV blocks, attend, write ``out``."""
    block = k_cache.shape[1]
    longest_q, longest_k = int(q_lens.max()), int(k_lens.max())
    blocks = block_table[:, :math.ceil(longest_k / block)].long().clamp(min=0)  # -1 (unused) -> any block, masked
    # keys past a request's length are stale or never written (NaN bits would poison even masked scores)
    in_use = (torch.arange(longest_k, device=flat.device)[None] < k_lens[:, None])[:, None, :, None]
    keys = _gather(k_cache, blocks)[:, :, :longest_k].where(in_use, 0.0)  # [r, kv_heads, longest_k, D]
    values = _gather(v_cache, blocks)[:, :, :longest_k].where(in_use, 0.0)
    offsets = torch.arange(longest_q, device=flat.device)
    valid = offsets[None] < q_lens[:, None]  # [r, Lq]
    token = torch.where(valid, starts[:, None] + offsets[None], 0)
    queries = flat[token].transpose(1, 2)  # [r, Hq, Lq, D]
    q_pos = (k_lens - q_lens)[:, None] + offsets[None]  # each query's position in its sequence
    mask = torch.arange(keys.shape[2], device=flat.device)[None, None] <= q_pos[:, :, None]  # True = attend
    attended = F.scaled_dot_product_attention(queries, keys, values, attn_mask=mask[:, None], scale=scale,
                                              enable_gqa=queries.shape[1] != keys.shape[1])
    out[token[valid]] = attended.transpose(1, 2)[valid]


def _gather(cache: torch.Tensor, blocks: torch.Tensor) -> torch.Tensor:
    """[blocks, block_size, H, D] cache, [r, n] block ids -> [r, H, n * block_size, D]."""
    r, n = blocks.shape
    return cache[blocks].reshape(r, n * cache.shape[1], cache.shape[2], cache.shape[3]).transpose(1, 2)
