"""Core attention of the shared-prefix layout (``grpo.shared_prefix``, r1hpc.train.shared_prefix):
each row holds a prompt and several responses to it, each response attending to the prompt and,
causally, to itself.

A dense ``[W, W]`` mask over such a row scores ``(P + k R)^2`` query-key pairs, most of them masked.
Here two SDPA calls cover a whole micro-batch: every prompt causally over itself (``[rows, P]``
queries), and every response over its prompt's keys and its own (``[responses, R]`` queries against
``P + R`` keys): what one row per response costs, less the repeated prompts, padded to the longest
prompt and response. Queries, keys and values are gathered by index and the contexts written back
by index, so autograd carries the gradients through both. The index reaches the attention through a
context variable set around the model's forward (autograd keeps what backward needs); calls whose
shape does not match the active layout, and every forward outside one, take the ordinary path with
the dense mask the layout also passes.
"""
from __future__ import annotations

import contextlib
import dataclasses
from contextvars import ContextVar
from typing import Iterator, Optional

import torch
import torch.nn.functional as F
from torch import Tensor


@dataclasses.dataclass
class PrefixAttentionIndex:
    """Positions in the layout's flattened ``[rows * width]`` sequence (padding entries point at a
    real position and are masked or dropped)."""

    rows: int
    width: int
    prompts: Tensor          # [c, Pmax] each row's prompt
    prompt_keep: Tensor      # [c, 1, Pmax, Pmax] bool, True = may attend (causal; padding sees itself)
    responses: Tensor        # [N, Rmax] each response's fed tokens
    response_keys: Tensor    # [N, Pmax + Rmax] its prompt's positions, then its own
    response_keep: Tensor    # [N, 1, Rmax, Pmax + Rmax] bool
    out_positions: Tensor    # [n] every real position once
    out_contexts: Tensor     # [n] where its context is in cat(prompt contexts [c * Pmax], response ones [N * Rmax])


_ACTIVE: ContextVar[Optional[PrefixAttentionIndex]] = ContextVar("r1hpc_shared_prefix", default=None)


@contextlib.contextmanager
def prefix_attention_active(index: PrefixAttentionIndex) -> Iterator[None]:
    """Attention calls inside over ``index.rows`` rows of ``index.width`` positions follow ``index``."""
    token = _ACTIVE.set(index)
    try:
        yield
    finally:
        _ACTIVE.reset(token)


def active_index(seq_len: int, batch: int) -> Optional[PrefixAttentionIndex]:
    """The active layout's index when an attention call of this shape belongs to it, else None."""
    index = _ACTIVE.get()
    if index is None or index.width != seq_len or index.rows != batch:
        return None
    return index


def shared_prefix_attention(q: Tensor, k: Tensor, v: Tensor, index: PrefixAttentionIndex, scale: float) -> Tensor:
    """q [b, hq, W, d], k / v [b, hk, W, d] (``hq`` a multiple of ``hk``) -> context [b, hq, W, d];
    padding positions get a zero context."""
    b, hq, W, d = q.shape
    flat_q, flat_k, flat_v = (t.transpose(1, 2).reshape(b * W, t.shape[1], d) for t in (q, k, v))

    def gathered(flat: Tensor, at: Tensor) -> Tensor:  # [n, m] positions -> [n, heads, m, d]
        return flat[at].transpose(1, 2)

    gqa = k.shape[1] != hq
    prompts = F.scaled_dot_product_attention(
        gathered(flat_q, index.prompts), gathered(flat_k, index.prompts), gathered(flat_v, index.prompts),
        attn_mask=index.prompt_keep, scale=scale, enable_gqa=gqa)
    responses = F.scaled_dot_product_attention(
        gathered(flat_q, index.responses), gathered(flat_k, index.response_keys),
        gathered(flat_v, index.response_keys), attn_mask=index.response_keep, scale=scale, enable_gqa=gqa)
    contexts = torch.cat([prompts.transpose(1, 2).reshape(-1, hq, d), responses.transpose(1, 2).reshape(-1, hq, d)])
    out = q.new_zeros(b * W, hq, d).index_copy(0, index.out_positions, contexts[index.out_contexts])
    return out.view(b, W, hq, d).transpose(1, 2)
