"""The fused output layer in Triton: ``hidden @ weight.T`` reduced tile by tile to the per-token
shard stats ``(m, s, q, x_t)`` of :mod:`r1hpc.algo.vocab_parallel` (forward) and to ``grad_hidden``
and ``grad_weight`` (backward), never a logits tile in global memory.

Forward: one program owns BLOCK_T tokens. For each BLOCK_V tile of the real vocabulary it
accumulates the logit tile ``[BLOCK_T, BLOCK_V]`` over the hidden size in BLOCK_H steps with
``tl.dot`` (bf16 or fp32 inputs, fp32 accumulation, no TF32 downgrade), scales it by
``1 / temperature``, picks the target logit out of the tile, and folds the tile into a running max
``m``, ``s = sum exp(z - m)`` and ``qc = sum exp(z - m) (z - m)`` (centred on the running max, as
the torch path does, so the entropy keeps its precision). It writes 16 bytes per token.

Backward (the softmax part; the one-hot target term is a row update in torch): each tile is
recomputed from the saved ``lse`` and ``E_p[z]`` into ``G = -(g_lp + g_ent (z - E_p[z])) p / T``,
then one kernel over token blocks adds ``G W_tile`` to its rows of ``grad_hidden`` and one over
vocabulary tiles adds ``G^T h`` to its rows of ``grad_weight``; each program owns what it writes,
so there are no atomics. Those two matmuls take G in fp32 (fp32 FMA, not bf16 tensor cores), as the
torch recompute does. Columns at or past ``n_real`` (megatron's vocabulary padding) are never read
and their gradient rows stay zero.
"""
from __future__ import annotations

import os
from typing import Optional

import torch
import triton
import triton.language as tl
from torch import Tensor

from r1hpc.algo.vocab_parallel import EMPTY_STATS
from r1hpc.triton_kernels.grpo_loss import _on_device

#: Tile sizes (upper bounds; smaller when the problem is). Tests lower them to cross tile edges.
MAX_BLOCK_T = 64
MAX_BLOCK_V = 128
MAX_BLOCK_H = 64
#: tl.dot needs every tile dimension >= 16.
MIN_BLOCK = 16


@triton.jit
def _z_tile(h_rows, row_ok, w_ptr, cols, col_ok, stride_w, H, inv_temp,
            BLOCK_T: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_H: tl.constexpr, UPCAST: tl.constexpr):
    """The fp32 logit tile ``h[rows] @ w[cols].T * inv_temp``, accumulated over H in BLOCK_H steps."""
    ks = tl.arange(0, BLOCK_H)
    w_rows = w_ptr + cols.to(tl.int64)[:, None] * stride_w
    acc = tl.zeros((BLOCK_T, BLOCK_V), tl.float32)
    for k0 in range(0, H, BLOCK_H):
        k = k0 + ks
        h = tl.load(h_rows + k[None, :], mask=row_ok[:, None] & (k[None, :] < H), other=0.0)
        w = tl.load(w_rows + k[None, :], mask=col_ok[:, None] & (k[None, :] < H), other=0.0)
        if UPCAST:  # mixed dtypes, or the interpreter (whose tl.dot multiplies bf16 bit patterns)
            h = h.to(tl.float32)
            w = w.to(tl.float32)
        if h.dtype == tl.float32:  # fp32 weights stay fp32 (no TF32 rounding)
            acc = tl.dot(h, tl.trans(w), acc, input_precision="ieee")
        else:  # bf16 / fp16 tensor cores, fp32 accumulation
            acc = tl.dot(h, tl.trans(w), acc)
    return acc * inv_temp


@triton.jit
def _fused_linear_stats_kernel(h_ptr, w_ptr, target_ptr, stats_ptr, T, H, n_real, stride_h, stride_w, inv_temp,
                               BLOCK_T: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_H: tl.constexpr,
                               UPCAST: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
    row_ok = rows < T
    h_rows = h_ptr + rows.to(tl.int64)[:, None] * stride_h
    target = tl.load(target_ptr + rows, mask=row_ok, other=-1)  # -1: the target is on another shard
    m = tl.full((BLOCK_T,), -float("inf"), tl.float32)
    s = tl.zeros((BLOCK_T,), tl.float32)
    qc = tl.zeros((BLOCK_T,), tl.float32)
    x_t = tl.zeros((BLOCK_T,), tl.float32)
    for v0 in range(0, n_real, BLOCK_V):
        cols = v0 + tl.arange(0, BLOCK_V)
        col_ok = cols < n_real
        z = _z_tile(h_rows, row_ok, w_ptr, cols, col_ok, stride_w, H, inv_temp, BLOCK_T, BLOCK_V, BLOCK_H, UPCAST)
        x_t += tl.sum(tl.where(cols[None, :] == target[:, None], z, 0.0), axis=1)
        m_new = tl.maximum(m, tl.max(tl.where(col_ok[None, :], z, -float("inf")), axis=1))
        zc = tl.where(col_ok[None, :], z - m_new[:, None], 0.0)
        e = tl.where(col_ok[None, :], tl.exp(zc), 0.0)
        scale = tl.exp(m - m_new)  # 0 on the first tile (m = -inf, s = 0)
        shift = (tl.where(s > 0, m, m_new) - m_new) * s  # 0 on the first tile, never -inf * 0
        qc = scale * (qc + shift) + tl.sum(e * zc, axis=1)
        s = s * scale + tl.sum(e, axis=1)
        m = m_new
    q = qc + tl.where(s > 0, m, 0.0) * s  # a shard with no real column: m = -inf, s = q = 0
    tl.store(stats_ptr + 4 * rows + 0, m, mask=row_ok)
    tl.store(stats_ptr + 4 * rows + 1, s, mask=row_ok)
    tl.store(stats_ptr + 4 * rows + 2, q, mask=row_ok)
    tl.store(stats_ptr + 4 * rows + 3, x_t, mask=row_ok)


@triton.jit
def _softmax_grad_tile(z, rows, row_ok, col_ok, g_lp_ptr, g_ent_ptr, lse_ptr, mean_z_ptr, inv_temp):
    """``G = -(g_lp + g_ent (z - E_p[z])) p / temperature`` for a recomputed tile (0 outside it)."""
    g_lp = tl.load(g_lp_ptr + rows, mask=row_ok, other=0.0)
    g_ent = tl.load(g_ent_ptr + rows, mask=row_ok, other=0.0)
    lse = tl.load(lse_ptr + rows, mask=row_ok, other=0.0)
    mean_z = tl.load(mean_z_ptr + rows, mask=row_ok, other=0.0)
    p = tl.exp(z - lse[:, None])
    g = -(g_lp[:, None] + g_ent[:, None] * (z - mean_z[:, None])) * p * inv_temp
    return tl.where(row_ok[:, None] & col_ok[None, :], g, 0.0)


@triton.jit
def _grad_hidden_kernel(h_ptr, w_ptr, gh_ptr, g_lp_ptr, g_ent_ptr, lse_ptr, mean_z_ptr, T, H, n_real,
                        stride_h, stride_w, inv_temp, BLOCK_T: tl.constexpr, BLOCK_V: tl.constexpr,
                        BLOCK_H: tl.constexpr, UPCAST: tl.constexpr):
    """grad_h[rows] += G W for every vocabulary tile; the program owns its rows of the fp32 grad_h."""
    rows = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
    row_ok = rows < T
    h_rows = h_ptr + rows.to(tl.int64)[:, None] * stride_h
    gh_rows = gh_ptr + rows.to(tl.int64)[:, None] * H
    ks = tl.arange(0, BLOCK_H)
    for v0 in range(0, n_real, BLOCK_V):
        cols = v0 + tl.arange(0, BLOCK_V)
        col_ok = cols < n_real
        z = _z_tile(h_rows, row_ok, w_ptr, cols, col_ok, stride_w, H, inv_temp, BLOCK_T, BLOCK_V, BLOCK_H, UPCAST)
        g = _softmax_grad_tile(z, rows, row_ok, col_ok, g_lp_ptr, g_ent_ptr, lse_ptr, mean_z_ptr, inv_temp)
        w_rows = w_ptr + cols.to(tl.int64)[:, None] * stride_w
        for k0 in range(0, H, BLOCK_H):
            k = k0 + ks
            k_ok = k[None, :] < H
            w = tl.load(w_rows + k[None, :], mask=col_ok[:, None] & k_ok, other=0.0).to(tl.float32)
            gh = tl.load(gh_rows + k[None, :], mask=row_ok[:, None] & k_ok, other=0.0)
            gh = tl.dot(g, w, gh, input_precision="ieee")
            tl.store(gh_rows + k[None, :], gh, mask=row_ok[:, None] & k_ok)


@triton.jit
def _grad_weight_kernel(h_ptr, w_ptr, gw_ptr, g_lp_ptr, g_ent_ptr, lse_ptr, mean_z_ptr, T, H, n_real,
                        stride_h, stride_w, inv_temp, BLOCK_T: tl.constexpr, BLOCK_V: tl.constexpr,
                        BLOCK_H: tl.constexpr, UPCAST: tl.constexpr):
    """grad_w[cols] += G^T h for every token block; the program owns its vocabulary rows of grad_w."""
    cols = tl.program_id(0) * BLOCK_V + tl.arange(0, BLOCK_V)
    col_ok = cols < n_real
    gw_rows = gw_ptr + cols.to(tl.int64)[:, None] * H
    ks = tl.arange(0, BLOCK_H)
    for t0 in range(0, T, BLOCK_T):
        rows = t0 + tl.arange(0, BLOCK_T)
        row_ok = rows < T
        h_rows = h_ptr + rows.to(tl.int64)[:, None] * stride_h
        z = _z_tile(h_rows, row_ok, w_ptr, cols, col_ok, stride_w, H, inv_temp, BLOCK_T, BLOCK_V, BLOCK_H, UPCAST)
        g = _softmax_grad_tile(z, rows, row_ok, col_ok, g_lp_ptr, g_ent_ptr, lse_ptr, mean_z_ptr, inv_temp)
        for k0 in range(0, H, BLOCK_H):
            k = k0 + ks
            k_ok = k[None, :] < H
            h = tl.load(h_rows + k[None, :], mask=row_ok[:, None] & k_ok, other=0.0).to(tl.float32)
            gw = tl.load(gw_rows + k[None, :], mask=col_ok[:, None] & k_ok, other=0.0)
            gw = tl.dot(tl.trans(g), h, gw, input_precision="ieee")
            tl.store(gw_rows + k[None, :], gw, mask=col_ok[:, None] & k_ok)


def _interpreted() -> bool:
    """Under TRITON_INTERPRET=1 tl.dot runs np.matmul on bf16 stored as uint16 (wrong), so tiles are
    upcast to fp32 first: the same exact products and fp32 sums as the bf16 MMA on the GPU."""
    return os.environ.get("TRITON_INTERPRET") == "1"


def _block(n: int, cap: int) -> int:
    return max(MIN_BLOCK, min(cap, triton.next_power_of_2(max(1, n))))


def fused_linear_shard_stats(hidden: Tensor, weight: Tensor, local: Tensor, owned: Tensor, active: Tensor,
                             inv_temp: float, n_real: int) -> Tensor:
    """This shard's fp32 ``[T, 4]`` stats (m, s, q, x_t) of ``hidden @ weight[:n_real].T * inv_temp``;
    same contract as ``r1hpc.algo.fused_linear._shard_stats``: ``local`` is the target's column in
    this shard where ``owned``, and tokens that are not ``active`` get EMPTY_STATS without compute."""
    stats = hidden.new_tensor(EMPTY_STATS, dtype=torch.float32).repeat(hidden.shape[0], 1)
    rows = torch.nonzero(active).squeeze(1)
    t, h_size = len(rows), hidden.shape[1]
    if t == 0:
        return stats
    h = hidden[rows].contiguous()
    w = weight if weight.stride(1) == 1 else weight.contiguous()
    target = torch.where(owned, local, -1)[rows].to(torch.int32).contiguous()
    out = torch.empty(t, 4, dtype=torch.float32, device=hidden.device)
    block_t = _block(t, MAX_BLOCK_T)
    with _on_device(hidden):
        _fused_linear_stats_kernel[(triton.cdiv(t, block_t),)](
            h, w, target, out, t, h_size, n_real, h.stride(0), w.stride(0), float(inv_temp),
            BLOCK_T=block_t, BLOCK_V=_block(n_real, MAX_BLOCK_V), BLOCK_H=_block(h_size, MAX_BLOCK_H),
            UPCAST=h.dtype != w.dtype or _interpreted(), num_warps=4)
    stats[rows] = out
    return stats


def fused_linear_softmax_grads(hidden: Tensor, weight: Tensor, active: Tensor, g_lp: Tensor, g_ent: Tensor,
                               lse: Tensor, mean_z: Tensor, inv_temp: float, n_real: int,
                               grad_h: Optional[Tensor], grad_w: Optional[Tensor]) -> None:
    """The softmax part of the backward, same contract as ``r1hpc.algo.fused_linear._softmax_grads``:
    adds ``G W`` to the fp32 ``grad_h`` and ``G^T h`` to the fp32 ``grad_w`` (either may be None),
    recomputing the logit tiles. Two kernels (each owns the rows it writes, so no atomics), each
    recomputing the tiles: 4 + 4 matmul FLOPs per logit where the torch recompute does 2 + 2 + 2."""
    rows = torch.nonzero(active).squeeze(1)
    t, h_size = len(rows), hidden.shape[1]
    if t == 0 or n_real == 0 or (grad_h is None and grad_w is None):
        return
    h = hidden[rows].contiguous()
    w = weight if weight.stride(1) == 1 else weight.contiguous()
    per_token = [x[rows].float().contiguous() for x in (g_lp, g_ent, lse, mean_z)]
    block_t, block_v, block_h = _block(t, MAX_BLOCK_T), _block(n_real, MAX_BLOCK_V), _block(h_size, MAX_BLOCK_H)
    common = dict(BLOCK_T=block_t, BLOCK_V=block_v, BLOCK_H=block_h, UPCAST=h.dtype != w.dtype or _interpreted(),
                  num_warps=4)
    args = (t, h_size, n_real, h.stride(0), w.stride(0), float(inv_temp))
    with _on_device(hidden):
        if grad_h is not None:
            gh = torch.zeros(t, h_size, dtype=torch.float32, device=hidden.device)
            _grad_hidden_kernel[(triton.cdiv(t, block_t),)](h, w, gh, *per_token, *args, **common)
            grad_h[rows] += gh
        if grad_w is not None:
            _grad_weight_kernel[(triton.cdiv(n_real, block_v),)](h, w, grad_w, *per_token, *args, **common)
