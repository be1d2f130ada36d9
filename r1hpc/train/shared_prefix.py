"""``grpo.shared_prefix``: a group's prompt runs through the model once per micro-batch, not once per
response.

A group's responses share their prompt token for token, so with one row per response (``pack_rows``)
the prompt's forward and backward run G times over the same tokens: with GSM8K's ~100-token chat
prompts and 64-token responses, more than half of the update's tokens. The shared layout gives each run
of consecutive rows with the same prompt one row, ``[prompt | response 1 | ... | response k]``, where
each response attends to the prompt and, causally, to itself
(:mod:`r1hpc.model.shared_prefix_attention`) and its positions continue the prompt's (RoPE is read at
those positions, not at the row's). The prompt's last hidden state predicts every response's first
token, and autograd sums its k gradients, as it sums the k copies' gradients with a row each: the same
objective and gradients, up to fp32 summation order.

Everything outside the forward keeps the one-row-per-response shape: the layout maps the model's output
back to those rows (:meth:`SharedPrefixLayout.pick`).
"""
from __future__ import annotations

import contextlib
import dataclasses
from typing import Iterator, Optional

import torch
from torch import Tensor

from r1hpc.config import ConfigError
from r1hpc.device import HOST
from r1hpc.model.provider import unwrap
from r1hpc.model.shared_prefix_attention import PrefixAttentionIndex, prefix_attention_active
from r1hpc.train.batching import round_up


def check_shared_prefix_supported(engine) -> None:
    """What the layout needs of the policy's model (a ConfigError naming the setting otherwise):
    attention that honours its mask (Transformer Engine's causal attention ignores one), one pipeline
    stage and one context-parallel rank (the rows' shapes vary per micro-batch; RoPE is read per
    position), no activation recompute (it reruns the forward outside the layout's context), standard
    attention (no MLA)."""
    from r1hpc.model.provider import select_transformer_impl

    config = engine.config
    problems = [
        (select_transformer_impl(engine.model_cfg) == "transformer_engine", "model.transformer_impl=local"),
        (config.pipeline_model_parallel_size > 1, "parallel.pipeline_model_parallel_size=1"),
        (config.context_parallel_size > 1, "parallel.context_parallel_size=1"),
        (config.recompute_granularity is not None, "no activation recompute"),
        (getattr(config, "multi_latent_attention", False), "a model without multi-latent attention"),
    ]
    for bad, need in problems:
        if bad:
            raise ConfigError(f"grpo.shared_prefix needs {need} (or set grpo.shared_prefix=false)")


@dataclasses.dataclass
class SharedPrefixLayout:
    """One micro-batch's rows in the shared layout (``c`` rows of ``W`` positions) and its map to and
    from the micro-batch's ``b`` rows of ``L`` positions; the engine moves it to the device with the
    micro-batch's tensors (r1hpc.device.to_device)."""

    tokens: Tensor          # [c, W]
    positions: Tensor       # [c, W] each token's position in its own prompt + response
    attention_mask: Tensor  # [c, 1, W, W] True = masked: for attention that does not read ``attention``
    source: Tensor          # [c, W] the flat [b * L] position each one copies; -1: padding
    gather: Tensor          # [b, L] the flat [c * W] position whose output predicts it; -1: none
    attention: PrefixAttentionIndex

    @staticmethod
    def of(mb: dict) -> Optional["SharedPrefixLayout"]:
        """The layout a micro-batch carries, or None (rows as they are)."""
        return mb.get("shared_prefix")

    def model_inputs(self) -> tuple[Tensor, Tensor, Tensor]:
        return self.tokens, self.positions, self.attention_mask

    def rows_of(self, t: Tensor, fill) -> Tensor:
        """A per-position tensor of the micro-batch's rows ([b, L, ...]) laid out as ``[c, W, ...]``."""
        out = t.flatten(0, 1)[self.source.clamp(min=0)]
        pad = (self.source < 0).view(*self.source.shape, *(1,) * (t.dim() - 2))
        return out.masked_fill(pad, fill)

    def pick(self, output: Tensor, selected: Tensor) -> Tensor:
        """The model's ``[c, W, ...]`` output at the ``selected`` ([b, L] bool) positions of the
        micro-batch's rows, in ``output[selected]`` order for rows laid out one per response."""
        return output.reshape(-1, *output.shape[2:])[self.gather[selected]]


def _response_span(mask_row: Tensor) -> Optional[tuple[int, int]]:
    """(prompt length, fed length) of a row whose response mask is the contiguous [p - 1, n)."""
    hits = mask_row.nonzero()
    if len(hits) == 0:
        return None
    return int(hits[0]) + 1, int(hits[-1]) + 1


def _runs(tokens: Tensor, response_mask: Tensor) -> list[tuple[int, list[tuple[int, int]]]]:
    """Runs of consecutive rows with the same prompt: (prompt length, [(row, fed length)])."""
    runs: list[tuple[int, list]] = []
    for i in range(tokens.shape[0]):
        span = _response_span(response_mask[i])
        if span is None:  # nothing to predict: the row is left out
            continue
        p, n = span
        if runs and runs[-1][0] == p and torch.equal(tokens[runs[-1][1][0][0], :p], tokens[i, :p]):
            runs[-1][1].append((i, n))
        else:
            runs.append((p, [(i, n)]))
    return runs


def _attention_index(width: int, prompt_len: Tensor, response_row: Tensor, response_at: Tensor,
                     response_len: Tensor) -> PrefixAttentionIndex:
    """The attention's gather/scatter index for rows with these prompt lengths ([c]) and responses
    (row, offset and fed length, [N] each)."""
    c, P, R = len(prompt_len), int(prompt_len.max()), max(1, int(response_len.max()))
    j = torch.arange(P, device=HOST)
    prompts = torch.arange(c, device=HOST)[:, None] * width + j[None]
    prompt_real = j[None] < prompt_len[:, None]
    prompt_keep = (j[None, None] <= j[None, :, None]) & (prompt_real[:, :, None] | (j[None, None] == j[None, :, None]))
    t = torch.arange(R, device=HOST)
    real = t[None] < response_len[:, None]  # [N, R]
    starts = response_row[:, None] * width
    responses = torch.where(real, starts + response_at[:, None] + t[None], starts)
    keys = torch.cat([starts + j[None], responses], dim=1)
    key = torch.arange(P + R, device=HOST)[None, None]
    sees = (key < prompt_len[response_row][:, None, None]) | ((key >= P) & (key - P <= t[None, :, None]))
    keep = torch.where(real[:, :, None], sees, key == P + t[None, :, None])
    contexts = torch.arange(c * P + len(response_len) * R, device=HOST)
    return PrefixAttentionIndex(
        rows=c, width=width, prompts=prompts, prompt_keep=prompt_keep[:, None], responses=responses,
        response_keys=keys, response_keep=keep[:, None],
        out_positions=torch.cat([prompts[prompt_real], responses[real]]),
        out_contexts=torch.cat([contexts[:c * P].view(c, P)[prompt_real], contexts[c * P:].view(-1, R)[real]]))


def shared_prefix_layout(tokens: Tensor, response_mask: Tensor, width_multiple: int = 1) -> Optional[SharedPrefixLayout]:
    """The shared layout of a micro-batch's ``[b, L]`` rows (``response_mask`` marks the contiguous
    positions that predict response tokens, ``pack_rows``'s), or None when no row predicts anything."""
    runs = _runs(tokens, response_mask)
    if not runs:
        return None
    b, L = tokens.shape
    width = round_up(max(p + sum(n - p for _, n in members) for p, members in runs), width_multiple)
    source = torch.full((len(runs), width), -1, dtype=torch.long, device=HOST)
    positions = torch.zeros((len(runs), width), dtype=torch.long, device=HOST)
    segment = torch.full((len(runs), width), -1, dtype=torch.long, device=HOST)
    gather = torch.full((b, L), -1, dtype=torch.long, device=HOST)
    responses = []  # (row, offset, fed length)
    for r, (p, members) in enumerate(runs):
        source[r, :p] = members[0][0] * L + torch.arange(p, device=HOST)
        positions[r, :p] = torch.arange(p, device=HOST)
        segment[r, :p] = 0
        at = p
        for k, (i, n) in enumerate(members, start=1):
            source[r, at:at + n - p] = i * L + torch.arange(p, n, device=HOST)
            positions[r, at:at + n - p] = torch.arange(p, n, device=HOST)
            segment[r, at:at + n - p] = k
            gather[i, p - 1] = r * width + p - 1  # the prompt's last position predicts the first response token
            gather[i, p:n] = r * width + torch.arange(at, at + n - p, device=HOST)
            responses.append((r, at, n - p))
            at += n - p
    key_seg, query_seg = segment[:, None, :], segment[:, :, None]
    mask = torch.ones(width, width, dtype=torch.bool, device=HOST).triu(1) | ~((key_seg == query_seg) | (key_seg == 0))
    row, at, fed = torch.tensor(responses, dtype=torch.long, device=HOST).unbind(1)
    index = _attention_index(width, torch.tensor([p for p, _ in runs], device=HOST), row, at, fed)
    return SharedPrefixLayout(torch.where(source >= 0, tokens.flatten()[source.clamp(min=0)], 0), positions,
                              mask[:, None], source, gather, index)


@contextlib.contextmanager
def _rotary_at(gpt: torch.nn.Module, positions: Tensor) -> Iterator[None]:
    """megatron's rotary table read at ``positions`` ([b, s] -> [s, b, 1, d]) instead of 0..s-1."""
    rope = getattr(gpt, "rotary_pos_emb", None)
    if rope is None:  # learned absolute positions read position_ids themselves
        yield
        return
    table = rope.forward

    def at_positions(_seq_len, *args, **kwargs):
        out = table(int(positions.max()) + 1, *args, **kwargs)
        freqs = out[0] if isinstance(out, tuple) else out  # YaRN returns (freqs, mscale)
        picked = freqs[:, 0, 0][positions.t()][:, :, None]
        return (picked, *out[1:]) if isinstance(out, tuple) else picked

    rope.forward = at_positions
    try:
        yield
    finally:
        del rope.forward


@contextlib.contextmanager
def shared_prefix_forward(model: torch.nn.Module, layout: SharedPrefixLayout) -> Iterator[None]:
    """Around the model's forward on ``layout.model_inputs()``: positions for RoPE, the index for attention."""
    with _rotary_at(unwrap(model), layout.positions), prefix_attention_active(layout.attention):
        yield
