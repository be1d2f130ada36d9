"""The output layer fused with the GRPO loss and the log-prob passes: logits are never materialised.

``z = hidden @ weight.T / temperature`` is computed one tile (a chunk of tokens x a tile of this
rank's vocabulary shard) at a time and reduced at once to the four per-token stats of
:mod:`r1hpc.algo.vocab_parallel` ``(m, s, q, x_t)`` with an online log-sum-exp; the target logit is
one dot product per token. The shards merge with the same single all-gather of per-token stats as
the materialised path, and the per-token objective after it is :func:`token_objective` itself.
Backward recomputes each tile from ``lse`` and ``E_p[z]`` and accumulates ``grad_hidden`` and
``grad_weight`` with two matmuls per tile. Inputs of any float dtype are computed in fp32 (tiles
are upcast), so the largest transient is one fp32 tile pair of at most :data:`TILE_BYTES` each. On a
CPU, the logit tiles of bf16 hidden states and weights (exact in fp32) are multiplied on the CPU's bf16
units with fp32 accumulation (:func:`_bf16_operand_products`): same operands, same fp32 sums.

``impl``: 'torch' runs the tiles here; 'triton' runs the forward stats and the softmax part of the
backward as the kernels of :mod:`r1hpc.triton_kernels.fused_linear` (logit tiles stay on chip); the
vocab-parallel merge, the objective and the one-hot target term of the backward are this module's
either way. 'auto' follows :func:`r1hpc.algo.params.resolve_impl` (Triton on CUDA,
``$R1HPC_GRPO_LOSS_IMPL`` overrides).
"""
from __future__ import annotations

import contextlib
from typing import Iterator, Optional

import torch
import torch.distributed as dist
from torch import Tensor
from torch.autograd.function import once_differentiable

from r1hpc.algo.loss import loss_metrics
from r1hpc.algo.objective import token_objective
from r1hpc.algo.params import GRPOLossParams, Impl, resolve_impl
from r1hpc.algo.vocab_parallel import EMPTY_STATS, combine_shard_stats, stats_to_logp_entropy

#: Vocabulary columns per tile (fewer when the shard is smaller).
VOCAB_TILE = 8192
#: Upper bound on one fp32 [tokens, vocab tile] buffer; a tile step holds two of them.
TILE_BYTES = 16 * 2**20


def _real_columns(v_local: int, vocab_start: int, vocab_size: Optional[int]) -> int:
    """How many leading columns of this shard are real vocabulary (the rest is megatron's padding)."""
    if vocab_size is None:
        return v_local
    return max(0, min(v_local, vocab_size - vocab_start))


def _plan(active: Tensor, n_real: int) -> tuple[list[Tensor], list[tuple[int, int]]]:
    """Token chunks (indices of active rows) and vocabulary tiles [v0, v1) of this shard."""
    tile = max(1, min(VOCAB_TILE, n_real))
    rows = torch.nonzero(active).squeeze(1)
    chunks = list(rows.split(max(1, TILE_BYTES // (4 * tile))))
    return chunks, [(v0, min(v0 + tile, n_real)) for v0 in range(0, n_real, tile)]


@contextlib.contextmanager
def _bf16_operand_products(hidden: Tensor, weight: Tensor) -> Iterator[None]:
    """fp32 matrix products inside run on oneDNN's bf16 kernels (AMX / AVX512-BF16, fp32 accumulation)
    when both operands are CPU bf16 tensors upcast to fp32: exact in bf16, so nothing is rounded and
    the logits are those of the fp32 product, 3-4x sooner on a Xeon with AMX. Only the logit tiles
    (products of ``hidden`` and ``weight``) run inside; gradient products, whose fp32 operand would
    be rounded, stay outside."""
    matmul = getattr(torch.backends.mkldnn, "matmul", None)
    if not (hidden.dtype == weight.dtype == torch.bfloat16 and hidden.device.type == "cpu"
            and torch.backends.mkldnn.is_available() and hasattr(matmul, "fp32_precision")):
        yield
        return
    saved = matmul.fp32_precision
    matmul.fp32_precision = "bf16"
    try:
        yield
    finally:
        matmul.fp32_precision = saved


def _owned_target(target: Tensor, vocab_start: int, n_real: int) -> tuple[Tensor, Tensor]:
    local = target.long() - vocab_start
    owned = (local >= 0) & (local < n_real)
    return torch.where(owned, local, 0), owned


def _shard_stats(hidden: Tensor, weight: Tensor, local: Tensor, owned: Tensor, active: Tensor,
                 inv_temp: float, n_real: int) -> Tensor:
    """This shard's fp32 ``[T, 4]`` stats (m, s, q, x_t); weight-0 tokens get EMPTY_STATS."""
    stats = hidden.new_tensor(EMPTY_STATS, dtype=torch.float32).repeat(hidden.shape[0], 1)
    chunks, tiles = _plan(active, n_real)
    for rows in chunks:
        h = hidden[rows].float()
        # running m, s = sum exp(z - m) and qc = sum exp(z - m) (z - m): centred on the running max, so
        # rescaling never adds and subtracts the large m (which would cost the entropy its precision)
        m = torch.full((len(rows),), -float("inf"), device=h.device)
        s, qc = torch.zeros_like(m), torch.zeros_like(m)
        for v0, v1 in tiles:
            with _bf16_operand_products(hidden, weight):
                z = torch.mm(h, weight[v0:v1].float().t()).mul_(inv_temp)
            m_new = torch.maximum(m, z.amax(dim=1))
            z.sub_(m_new[:, None])
            e = torch.exp(z)
            scale = torch.exp(m - m_new)  # 0 on the first tile (m = -inf, s = 0)
            shift = torch.where(s > 0, (m - m_new) * s, 0.0)
            qc = scale * (qc + shift) + torch.linalg.vecdot(e, z)
            s = s * scale + e.sum(dim=1)
            m = m_new
        x_t = (h * weight[local[rows]].float()).sum(dim=1) * inv_temp
        stats[rows] = torch.stack([m, s, qc + m * s, torch.where(owned[rows], x_t, 0.0)], dim=1)
    return stats


class _FusedLinearLogpEntropy(torch.autograd.Function):
    """(logp, entropy) [T] of softmax(hidden @ weight.T / temperature) over the real vocabulary,
    vocab-parallel; backward recomputes the tiles."""

    @staticmethod
    def forward(ctx, hidden, weight, target, active, temperature, vocab_start, n_real, group, kernels):
        shard_stats, ctx.softmax_grads = kernels
        inv_temp = 1.0 / temperature
        local, owned = _owned_target(target, vocab_start, n_real)
        stats = shard_stats(hidden, weight, local, owned, active, inv_temp, n_real)
        logp, entropy, lse, mean_z = stats_to_logp_entropy(combine_shard_stats(stats, group))
        ctx.save_for_backward(hidden, weight, local, owned, active, lse, mean_z)
        ctx.inv_temp, ctx.n_real = inv_temp, n_real
        return logp, entropy

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_logp, grad_entropy):
        hidden, weight, local, owned, active, lse, mean_z = ctx.saved_tensors
        inv_temp = ctx.inv_temp
        want_h, want_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_h = torch.zeros(hidden.shape, dtype=torch.float32, device=hidden.device) if want_h else None
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if want_w else None
        g_lp, g_ent = grad_logp.float(), grad_entropy.float()
        ctx.softmax_grads(hidden, weight, active, g_lp, g_ent, lse, mean_z, inv_temp, ctx.n_real, grad_h, grad_w)
        # the one-hot part of dL/dz: g_lp / temperature at the target column, one row per token,
        # in chunks of at most TILE_BYTES of fp32 rows
        for rows in torch.nonzero(active & owned).squeeze(1).split(max(1, TILE_BYTES // (4 * hidden.shape[1]))):
            a = g_lp[rows, None] * inv_temp
            if want_h:
                grad_h[rows] += a * weight[local[rows]].float()
            if want_w:
                grad_w.index_add_(0, local[rows], a * hidden[rows].float())
        return (None if grad_h is None else grad_h.to(hidden.dtype),
                None if grad_w is None else grad_w.to(weight.dtype), None, None, None, None, None, None, None)


def _softmax_grads(hidden: Tensor, weight: Tensor, active: Tensor, g_lp: Tensor, g_ent: Tensor, lse: Tensor,
                   mean_z: Tensor, inv_temp: float, n_real: int, grad_h: Optional[Tensor],
                   grad_w: Optional[Tensor]) -> None:
    """Adds the softmax part of the gradient, ``G = -(g_lp + g_ent (z - E_p[z])) p / temperature``
    per recomputed tile, to the fp32 ``grad_h += G W_tile`` and ``grad_w[tile] += G^T h`` (either may be
    None: not wanted)."""
    chunks, tiles = _plan(active, n_real)
    for rows in chunks:
        h = hidden[rows].float()
        gh = torch.zeros_like(h) if grad_h is not None else None
        for v0, v1 in tiles:
            w = weight[v0:v1].float()
            with _bf16_operand_products(hidden, weight):
                z = torch.mm(h, w.t()).mul_(inv_temp)
            p = torch.exp(z - lse[rows, None])
            g = z.sub_(mean_z[rows, None]).mul_(g_ent[rows, None]).add_(g_lp[rows, None]).mul_(p).mul_(-inv_temp)
            if gh is not None:
                gh.addmm_(g, w)
            if grad_w is not None:
                grad_w[v0:v1].addmm_(g.t(), h)
        if gh is not None:
            grad_h[rows] = gh


def _logp_entropy(hidden, weight, target, active, temperature, vocab_start_index, vocab_size, tp_group, impl):
    if hidden.dim() != 2 or weight.dim() != 2 or hidden.shape[1] != weight.shape[1]:
        raise ValueError(f"hidden must be [T, H] and weight [V_local, H], got {tuple(hidden.shape)} and "
                         f"{tuple(weight.shape)}")
    kernels = (_shard_stats, _softmax_grads)
    if resolve_impl(impl, hidden) == "triton":
        from r1hpc.triton_kernels.fused_linear import fused_linear_shard_stats, fused_linear_softmax_grads
        kernels = (fused_linear_shard_stats, fused_linear_softmax_grads)
    n_real = _real_columns(weight.shape[0], int(vocab_start_index), vocab_size)
    return _FusedLinearLogpEntropy.apply(hidden, weight, target, active, float(temperature),
                                         int(vocab_start_index), n_real, tp_group, kernels)


def fused_linear_grpo_loss(
    hidden: Tensor,
    weight: Tensor,
    target: Tensor,
    old_logp: Optional[Tensor],
    advantages: Tensor,
    weights: Tensor,
    params: GRPOLossParams = GRPOLossParams(),
    *,
    ref_logp: Optional[Tensor] = None,
    tis_weight: Optional[Tensor] = None,
    tp_group: Optional[dist.ProcessGroup] = None,
    vocab_start_index: int = 0,
    vocab_size: Optional[int] = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """:func:`r1hpc.algo.grpo_loss` of the logits ``hidden [T, H] @ weight [V_local, H].T`` without
    building them; autograd to ``hidden`` and ``weight``. ``vocab_size`` (global, optional): columns
    at ids >= it are padding and are left out of the softmax (their weight rows get zero gradient).
    With ``tp_group`` each rank passes its vocabulary shard of ``weight`` and the same ``hidden``;
    the returned ``grad_hidden`` is this shard's part (sum it over the group, as megatron's
    column-parallel output layer does). Other arguments, the loss and the metrics are grpo_loss's."""
    active = weights != 0
    logp, entropy = _logp_entropy(hidden, weight, target, active, params.temperature, vocab_start_index,
                                  vocab_size, tp_group, params.impl)
    tok = token_objective(logp, entropy, old_logp, advantages, active, params, ref_logp=ref_logp,
                          tis_weight=tis_weight)
    loss = (tok["loss"] * weights.float()).sum()
    return loss, loss_metrics(tok, active)


@torch.no_grad()
def fused_linear_logprobs(
    hidden: Tensor,
    weight: Tensor,
    target: Tensor,
    mask: Optional[Tensor] = None,
    *,
    temperature: float = 1.0,
    tp_group: Optional[dist.ProcessGroup] = None,
    vocab_start_index: int = 0,
    vocab_size: Optional[int] = None,
    impl: Impl = "auto",
) -> tuple[Tensor, Tensor]:
    """Forward-only fp32 ``(logp [T], entropy [T])`` of the logits ``hidden @ weight.T`` at
    ``target``, as :func:`r1hpc.algo.token_logp` (masked tokens skipped and reported as 0)."""
    active = torch.ones_like(target, dtype=torch.bool) if mask is None else mask.bool()
    logp, entropy = _logp_entropy(hidden, weight, target, active, temperature, vocab_start_index, vocab_size,
                                  tp_group, impl)
    return torch.where(active, logp, 0.0), torch.where(active, entropy, 0.0)
