"""Fused GRPO loss in Triton: log-prob gather + clipped ratio + KL + entropy, forward and backward.

Design (bytes for bf16 logits [T, V]; docs/algorithms.md has the full argument):
- forward, one program per token row: ONE pass over the vocabulary in chunks of BLOCK_V keeps an
  online (max m, sum exp s, sum exp*z q) plus the target logit -> reads 2TV bytes, writes only
  O(T) fp32 per-token results (loss, logp, entropy, kl, ratio, clip flags, dL/dlogp, lse, E[z]).
  With one TP rank the per-token epilogue (ratio, clip, KL, entropy) runs in the same program;
  with a vocab-sharded TP group the kernel writes the four shard stats, one all-gather of
  [TP, T, 4] merges them, and a tiny epilogue kernel over [T] finishes.
- backward: re-reads the logits once (2TV) and writes the gradient once in the logits dtype
  (2TV), from lse and E[z] saved by the forward. No fp32 [T, V] tensor exists at any point.
Tokens with weight 0 run no vocabulary loop in forward and read no logits in backward (their
gradient row is written as zeros).
"""
from __future__ import annotations

import contextlib
from typing import Optional

import torch
import torch.distributed as dist
import triton
import triton.language as tl
from torch import Tensor
from torch.autograd.function import once_differentiable

from r1hpc.algo.kl import K3_LOG_RATIO_CLAMP
from r1hpc.algo.objective import LOG_RATIO_CLAMP
from r1hpc.algo.params import GRPOLossParams
from r1hpc.algo.vocab_parallel import combine_shard_stats, tp_world_size

# Rows of the fp32 [N_OUT, T] per-token output buffer.
ROW_LOSS: tl.constexpr = tl.constexpr(0)
ROW_LOGP: tl.constexpr = tl.constexpr(1)
ROW_ENTROPY: tl.constexpr = tl.constexpr(2)
ROW_KL: tl.constexpr = tl.constexpr(3)
ROW_RATIO: tl.constexpr = tl.constexpr(4)
ROW_CLIP: tl.constexpr = tl.constexpr(5)  # bit flags: 1 low, 2 high, 4 dual
ROW_DLOGP: tl.constexpr = tl.constexpr(6)  # weight * dloss/dlogp
ROW_LSE: tl.constexpr = tl.constexpr(7)
ROW_MEANZ: tl.constexpr = tl.constexpr(8)  # E_p[z], z = logits / temperature
N_OUT = 9
KL_KINDS = {"k1": 1, "k2": 2, "k3": 3}
LR_CLAMP: tl.constexpr = tl.constexpr(LOG_RATIO_CLAMP)
K3_CLAMP: tl.constexpr = tl.constexpr(K3_LOG_RATIO_CLAMP)


@triton.jit
def _kl_and_grad(logp, ref, KL_KIND: tl.constexpr):
    """Per-token KL estimate and its derivative in logp; same formulas as r1hpc.algo.kl."""
    if KL_KIND == 1:
        kl = logp - ref
        dkl = tl.full(kl.shape, 1.0, tl.float32)
    elif KL_KIND == 2:
        kl = 0.5 * (logp - ref) * (logp - ref)
        dkl = logp - ref
    else:
        lr_ref_raw = ref - logp
        lr_ref = tl.minimum(tl.maximum(lr_ref_raw, -K3_CLAMP), K3_CLAMP)
        kl = tl.exp(lr_ref) - lr_ref - 1.0
        inside = (lr_ref_raw >= -K3_CLAMP) & (lr_ref_raw <= K3_CLAMP)
        dkl = tl.where(inside, 1.0 - tl.exp(lr_ref), 0.0)
    return kl, dkl


@triton.jit
def _epilogue(out_ptr, T, offs, mask, m, s, q, x_t, w, old_ptr, adv_ptr, ref_ptr, tis_ptr,
              eps_low, eps_high, dual_c, beta, ent_coef,
              HAS_REF: tl.constexpr, HAS_TIS: tl.constexpr, HAS_DUAL: tl.constexpr, KL_KIND: tl.constexpr):
    """Per-token objective from merged stats; same formulas as r1hpc.algo.objective."""
    active = w != 0
    old = tl.load(old_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    adv = tl.load(adv_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    lse = m + tl.log(s)
    mean_z = q / s
    logp = x_t - lse
    entropy = lse - mean_z
    lr_raw = logp - old
    lr = tl.where(active, tl.minimum(tl.maximum(lr_raw, -LR_CLAMP), LR_CLAMP), 0.0)
    ratio = tl.exp(lr)
    dratio = tl.where(active & (lr_raw >= -LR_CLAMP) & (lr_raw <= LR_CLAMP), ratio, 0.0)
    clipped = tl.minimum(tl.maximum(ratio, 1.0 - eps_low), 1.0 + eps_high)
    pg = tl.maximum(-adv * ratio, -adv * clipped)
    clip_high = active & (adv > 0) & (ratio > 1.0 + eps_high)
    clip_low = active & (adv < 0) & (ratio < 1.0 - eps_low)
    dpg = tl.where(clip_high | clip_low, 0.0, -adv * dratio)
    flags = clip_low.to(tl.float32) + 2.0 * clip_high.to(tl.float32)
    if HAS_DUAL:
        cap = -adv * dual_c
        dual = active & (adv < 0) & (pg > cap)
        pg = tl.where(dual, cap, pg)
        dpg = tl.where(dual, 0.0, dpg)
        flags += 4.0 * dual.to(tl.float32)
    if HAS_TIS:
        tis = tl.load(tis_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        pg = pg * tis
        dpg = dpg * tis
    loss = pg - ent_coef * entropy
    dlogp = dpg
    kl = tl.zeros_like(loss)
    if HAS_REF:
        ref = tl.load(ref_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        kl, dkl = _kl_and_grad(logp, ref, KL_KIND)
        kl = tl.where(active, kl, 0.0)
        loss += beta * kl
        dlogp += beta * dkl
    loss = tl.where(active, loss, 0.0)
    dlogp = tl.where(active, w * dlogp, 0.0)
    tl.store(out_ptr + ROW_LOSS * T + offs, loss, mask=mask)
    tl.store(out_ptr + ROW_LOGP * T + offs, logp, mask=mask)
    tl.store(out_ptr + ROW_ENTROPY * T + offs, entropy, mask=mask)
    tl.store(out_ptr + ROW_KL * T + offs, kl, mask=mask)
    tl.store(out_ptr + ROW_RATIO * T + offs, ratio, mask=mask)
    tl.store(out_ptr + ROW_CLIP * T + offs, flags, mask=mask)
    tl.store(out_ptr + ROW_DLOGP * T + offs, dlogp, mask=mask)
    tl.store(out_ptr + ROW_LSE * T + offs, lse, mask=mask)
    tl.store(out_ptr + ROW_MEANZ * T + offs, mean_z, mask=mask)


@triton.jit
def _grpo_fwd_kernel(logits_ptr, stride, target_ptr, w_ptr, stats_ptr, out_ptr,
                     old_ptr, adv_ptr, ref_ptr, tis_ptr,
                     T, V, vocab_start, inv_temp, eps_low, eps_high, dual_c, beta, ent_coef,
                     FUSE_EPILOGUE: tl.constexpr, HAS_REF: tl.constexpr, HAS_TIS: tl.constexpr,
                     HAS_DUAL: tl.constexpr, KL_KIND: tl.constexpr, BLOCK_V: tl.constexpr):
    t = tl.program_id(0)
    row = logits_ptr + t.to(tl.int64) * stride
    w = tl.load(w_ptr + t).to(tl.float32)
    active = w != 0
    cols = tl.arange(0, BLOCK_V)
    m = -float("inf")
    s = 0.0
    q = 0.0
    v_end = tl.where(active, V, 0)  # weight-0 tokens skip the vocabulary loop entirely
    for off in range(0, v_end, BLOCK_V):
        inb = off + cols < V
        z = tl.load(row + off + cols, mask=inb, other=-float("inf")).to(tl.float32) * inv_temp
        m_new = tl.maximum(m, tl.max(z, axis=0))
        scale = tl.exp(m - m_new)
        e = tl.exp(z - m_new)
        s = s * scale + tl.sum(e, axis=0)
        q = q * scale + tl.sum(e * tl.where(inb, z, 0.0), axis=0)
        m = m_new
    local = tl.load(target_ptr + t).to(tl.int64) - vocab_start
    owned = active & (local >= 0) & (local < V)
    x_t = tl.load(row + local, mask=owned, other=0.0).to(tl.float32) * inv_temp
    m = tl.where(active, m, 0.0)  # finite placeholder stats for skipped tokens
    s = tl.where(active, s, 1.0)
    q = tl.where(active, q, 0.0)
    if FUSE_EPILOGUE:
        _epilogue(out_ptr, T, t, t < T, m, s, q, x_t, w, old_ptr, adv_ptr, ref_ptr, tis_ptr,
                  eps_low, eps_high, dual_c, beta, ent_coef, HAS_REF, HAS_TIS, HAS_DUAL, KL_KIND)
    else:
        tl.store(stats_ptr + 4 * t + 0, m)
        tl.store(stats_ptr + 4 * t + 1, s)
        tl.store(stats_ptr + 4 * t + 2, q)
        tl.store(stats_ptr + 4 * t + 3, x_t)


@triton.jit
def _grpo_epilogue_kernel(stats_ptr, w_ptr, out_ptr, old_ptr, adv_ptr, ref_ptr, tis_ptr,
                          T, eps_low, eps_high, dual_c, beta, ent_coef,
                          HAS_REF: tl.constexpr, HAS_TIS: tl.constexpr, HAS_DUAL: tl.constexpr,
                          KL_KIND: tl.constexpr, BLOCK_T: tl.constexpr):
    offs = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
    mask = offs < T
    m = tl.load(stats_ptr + 4 * offs + 0, mask=mask, other=0.0)
    s = tl.load(stats_ptr + 4 * offs + 1, mask=mask, other=1.0)
    q = tl.load(stats_ptr + 4 * offs + 2, mask=mask, other=0.0)
    x_t = tl.load(stats_ptr + 4 * offs + 3, mask=mask, other=0.0)
    w = tl.load(w_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    _epilogue(out_ptr, T, offs, mask, m, s, q, x_t, w, old_ptr, adv_ptr, ref_ptr, tis_ptr,
              eps_low, eps_high, dual_c, beta, ent_coef, HAS_REF, HAS_TIS, HAS_DUAL, KL_KIND)


@triton.jit
def _grpo_bwd_kernel(logits_ptr, stride, grad_ptr, grad_stride, target_ptr, w_ptr, out_ptr, grad_loss_ptr,
                     T, V, vocab_start, inv_temp, ent_coef,
                     HAS_ENTROPY_GRAD: tl.constexpr, BLOCK_V: tl.constexpr):
    """dL/dz_j = a (onehot_j - p_j) + b p_j (z_j - E_p[z]), then / temperature, with
    a = g w dL/dlogp and b = g w entropy_coef (g = upstream scalar gradient)."""
    t = tl.program_id(0)
    row = logits_ptr + t.to(tl.int64) * stride
    grad_row = grad_ptr + t.to(tl.int64) * grad_stride
    g_up = tl.load(grad_loss_ptr).to(tl.float32)
    w = tl.load(w_ptr + t).to(tl.float32)
    active = w != 0
    a = tl.load(out_ptr + ROW_DLOGP * T + t) * g_up
    b = w * ent_coef * g_up
    lse = tl.load(out_ptr + ROW_LSE * T + t)
    mean_z = tl.load(out_ptr + ROW_MEANZ * T + t)
    local = tl.load(target_ptr + t).to(tl.int64) - vocab_start
    v_read = tl.where(active, V, 0)  # weight-0 tokens read nothing, their row gets zeros
    cols = tl.arange(0, BLOCK_V)
    for off in range(0, V, BLOCK_V):
        c = off + cols
        z = tl.load(row + c, mask=c < v_read, other=0.0).to(tl.float32) * inv_temp
        p = tl.exp(z - lse)
        g = -a * p
        if HAS_ENTROPY_GRAD:
            g += b * p * (z - mean_z)
        g = tl.where(c == local, g + a, g)
        g = tl.where(active, g * inv_temp, 0.0)
        tl.store(grad_row + c, g.to(grad_ptr.dtype.element_ty), mask=c < V)


#: Vocabulary chunk per loop step (8 KiB of bf16 per load); tests lower it to cover many chunks.
MAX_BLOCK_V = 4096


def _block_v(v: int) -> int:
    return min(MAX_BLOCK_V, triton.next_power_of_2(v))


def _on_device(x: Tensor):
    """Triton launches on the current CUDA device; make it the tensor's (a no-op on CPU)."""
    return torch.cuda.device(x.device) if x.is_cuda else contextlib.nullcontext()


def shard_stats(logits: Tensor, target: Tensor, weights: Tensor, temperature: float, vocab_start: int) -> Tensor:
    """This rank's per-token ``[T, 4]`` stats (m, s, q, x_t) in one pass over the logits, for
    forward-only uses (old/ref log-probs); merge them with ``combine_shard_stats``."""
    if logits.stride(1) != 1:
        logits = logits.contiguous()
    t, v = logits.shape
    stats = torch.empty(t, 4, dtype=torch.float32, device=logits.device)
    if t > 0:
        dummy = stats  # per-token objective inputs are not read without FUSE_EPILOGUE
        with _on_device(logits):
            _grpo_fwd_kernel[(t,)](
                logits, logits.stride(0), target.contiguous(), weights.float().contiguous(), stats, dummy,
                dummy, dummy, dummy, dummy, t, v, vocab_start, 1.0 / temperature, 0.0, 0.0, 0.0, 0.0, 0.0,
                FUSE_EPILOGUE=False, HAS_REF=False, HAS_TIS=False, HAS_DUAL=False, KL_KIND=3,
                BLOCK_V=_block_v(v), num_warps=8)
    return stats


class _TritonGRPOLoss(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, target, old_logp, advantages, weights, ref_logp, tis_weight,
                params, tp_group, vocab_start):
        temperature = float(params.temperature)
        if logits.stride(1) != 1:
            logits = logits.contiguous()
        t, v = logits.shape
        target, weights = target.contiguous(), weights.float().contiguous()
        old_logp, advantages = old_logp.float().contiguous(), advantages.float().contiguous()
        ref = old_logp if ref_logp is None else ref_logp.float().contiguous()
        tis = old_logp if tis_weight is None else tis_weight.float().contiguous()
        out = torch.empty(N_OUT, t, dtype=torch.float32, device=logits.device)
        flags = dict(HAS_REF=ref_logp is not None, HAS_TIS=tis_weight is not None,
                     HAS_DUAL=params.dual_clip_c is not None, KL_KIND=KL_KINDS[params.kl_kind])
        scalars = (float(params.eps_low), float(params.eps_high), float(params.dual_clip_c or 0.0),
                   float(params.beta), float(params.entropy_coef))
        if t > 0 and tp_world_size(tp_group) == 1:  # one pass: stats and epilogue in the same program
            _grpo_fwd_kernel[(t,)](
                logits, logits.stride(0), target, weights, out, out, old_logp, advantages, ref, tis,
                t, v, vocab_start, 1.0 / temperature, *scalars, FUSE_EPILOGUE=True,
                BLOCK_V=_block_v(v), num_warps=8, **flags)
        elif t > 0:  # vocab-parallel: shard stats, one all-gather, then the epilogue over [T]
            stats = combine_shard_stats(shard_stats(logits, target, weights, temperature, vocab_start), tp_group)
            block_t = min(1024, triton.next_power_of_2(t))
            _grpo_epilogue_kernel[(triton.cdiv(t, block_t),)](
                stats, weights, out, old_logp, advantages, ref, tis, t, *scalars, BLOCK_T=block_t, **flags)
        ctx.save_for_backward(logits, target, weights, out)
        ctx.args = (vocab_start, 1.0 / temperature, float(params.entropy_coef))
        ctx.mark_non_differentiable(out)
        return (out[ROW_LOSS.value] * weights).sum(), out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_loss, _grad_out):
        logits, target, weights, out = ctx.saved_tensors
        vocab_start, inv_temp, ent_coef = ctx.args
        t, v = logits.shape
        grad = torch.empty_like(logits)
        if t > 0:
            with _on_device(logits):
                _grpo_bwd_kernel[(t,)](
                    logits, logits.stride(0), grad, grad.stride(0), target, weights, out,
                    grad_loss.float().contiguous(), t, v, vocab_start, inv_temp, ent_coef,
                    HAS_ENTROPY_GRAD=ent_coef != 0.0, BLOCK_V=_block_v(v), num_warps=8)
        return grad, None, None, None, None, None, None, None, None, None


def triton_grpo_loss(
    logits: Tensor,
    target: Tensor,
    old_logp: Tensor,
    advantages: Tensor,
    weights: Tensor,
    params: GRPOLossParams = GRPOLossParams(),
    *,
    ref_logp: Optional[Tensor] = None,
    tis_weight: Optional[Tensor] = None,
    tp_group: Optional[dist.ProcessGroup] = None,
    vocab_start_index: int = 0,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Scalar weighted loss (autograd to ``logits``) and per-token results with the keys of
    :func:`r1hpc.algo.objective.token_objective`. Arguments as :func:`r1hpc.algo.grpo_loss`
    (``params.impl`` is not read: this is the Triton implementation)."""
    with _on_device(logits):
        loss, out = _TritonGRPOLoss.apply(
            logits, target, old_logp, advantages, weights, ref_logp, tis_weight,
            params, tp_group, int(vocab_start_index))
    flags = out[ROW_CLIP.value].to(torch.int32)
    return loss, {
        "loss": out[ROW_LOSS.value],
        "logp": out[ROW_LOGP.value],
        "entropy": out[ROW_ENTROPY.value],
        "kl": out[ROW_KL.value],
        "ratio": out[ROW_RATIO.value],
        "is_clipped_low": (flags & 1) != 0,
        "is_clipped_high": (flags & 2) != 0,
        "is_clipped_dual": (flags & 4) != 0,
    }
