"""Attention jumps: does attention move to distant earlier tokens right after a reflection marker?

The real policy is run forward on a few responses with hooks on every layer's core attention
(megatron's ``DotProductAttention`` or Transformer Engine's, both called with rotary-embedded
query/key of shape [seq, batch, heads, dim]). The hook recomputes softmax(QK^T * scale) under the
causal mask from the captured query and key, and keeps only, per query, the attention mass on
keys at least ``distance`` tokens back. Under tensor parallelism each rank sees its own heads;
the caller sums over ranks, so every head of every layer counts.
"""
from __future__ import annotations

import contextlib
import math
from typing import Iterator, Sequence

import torch


def causal_probs(query: torch.Tensor, key: torch.Tensor, scale: float | None = None) -> torch.Tensor:
    """Attention probabilities [batch, heads, seq, seq] from query [s, b, h, d] and key [s, b, g, d]
    (g key heads shared by h/g query heads each), in fp32."""
    q = query.float().permute(1, 2, 0, 3)  # b h s d
    k = key.float().permute(1, 2, 0, 3)
    if k.shape[1] != q.shape[1]:
        k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
    scores = q @ k.transpose(-1, -2) * (scale if scale is not None else 1.0 / math.sqrt(q.shape[-1]))
    s = q.shape[2]
    future = torch.triu(torch.ones(s, s, dtype=torch.bool, device=q.device), diagonal=1)
    return torch.softmax(scores.masked_fill(future, float("-inf")), dim=-1)


def distant_mass(probs: torch.Tensor, distance: int) -> torch.Tensor:
    """Per query, the attention mass on keys at least ``distance`` positions earlier: [..., seq]."""
    s = probs.shape[-1]
    pos = torch.arange(s, device=probs.device)
    far = pos[None, :] <= pos[:, None] - distance  # [query, key]
    return (probs * far).sum(-1)


def jump_windows(mass: torch.Tensor, positions: Sequence[int], window: int) -> list[tuple[float, float]]:
    """For each marker position: mean distant mass (over heads and the ``window`` queries) before
    the marker and from the marker on. ``mass`` is [heads, seq] for one row. Markers without a full
    window on both sides are skipped, so the two means always average the same number of queries."""
    out = []
    s = mass.shape[-1]
    for p in positions:
        if p - window < 0 or p + window > s:
            continue
        out.append((float(mass[:, p - window:p].mean()), float(mass[:, p:p + window].mean())))
    return out


def _core_attention_modules(model: torch.nn.Module) -> list[torch.nn.Module]:
    mods = [m for name, m in model.named_modules() if name.endswith("core_attention")]
    if not mods:
        raise RuntimeError("no core_attention modules found in the model (not a megatron-core GPT model?)")
    return mods


@contextlib.contextmanager
def capture_distant_mass(model: torch.nn.Module, distance: int) -> Iterator[list[torch.Tensor]]:
    """Within the block, each forward through the model appends, per layer, the distant mass
    [batch, local heads, seq] of that layer's attention."""
    captured: list[torch.Tensor] = []

    def hook(module, args, kwargs, output):
        query = args[0] if args else kwargs["query"]
        key = args[1] if len(args) > 1 else kwargs["key"]
        scale = getattr(module.config, "softmax_scale", None)
        captured.append(distant_mass(causal_probs(query.detach(), key.detach(), scale), distance).cpu())

    handles = [m.register_forward_hook(hook, with_kwargs=True) for m in _core_attention_modules(model)]
    try:
        yield captured
    finally:
        for h in handles:
            h.remove()


@torch.no_grad()
def attention_jump_sums(model: torch.nn.Module, sequences: Sequence[Sequence[int]],
                        positions: Sequence[Sequence[int]], *, window: int, distance: int,
                        pad_id: int) -> tuple[float, float, int]:
    """Run ``model`` once over ``sequences`` (prompt + response ids, right-padded: under the causal
    mask padding never reaches a real position) and sum, over layers and marker positions
    (``positions``: indices into each sequence), the before/after distant-mass means of this rank's
    heads. Returns (sum before, sum after, number of (layer, marker) windows)."""
    from r1hpc.model.provider import causal_attention_mask, sequence_parallel_off
    from r1hpc.train.lm_loss import position_ids

    device = next(model.parameters()).device
    width = max(len(s) for s in sequences)
    tokens = torch.full((len(sequences), width), pad_id, dtype=torch.long, device=device)
    for i, s in enumerate(sequences):
        tokens[i, :len(s)] = torch.tensor(list(s), device=device)
    was_training = model.training
    model.eval()
    try:
        with sequence_parallel_off(model), capture_distant_mass(model, distance) as layers:
            model(tokens, position_ids(tokens), causal_attention_mask(width, device))
    finally:
        model.train(was_training)
    before = after = 0.0
    n = 0
    for mass in layers:
        for row, pos in enumerate(positions):
            for b, a in jump_windows(mass[row], pos, window):
                before, after, n = before + b, after + a, n + 1
    return before, after, n
