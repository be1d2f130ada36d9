"""The torch paged-attention reference (the CPU stand-in for flash-attn in megatron's dynamic engine)
against causal attention computed directly on each request's contiguous keys and values."""
from __future__ import annotations

import math

import pytest
import torch

from r1hpc.model.paged_attention import paged_attention

BLOCK = 4


def _direct(q, k, v, scale):
    """q [Lq, Hq, D], k/v [Lk, Hk, D]; the queries are the last Lq positions of the sequence."""
    lq, lk, groups = q.shape[0], k.shape[0], q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(groups, 1), v.repeat_interleave(groups, 1)
    scores = torch.einsum("qhd,khd->hqk", q.double(), k.double()) * scale
    allowed = torch.arange(lk)[None] <= (lk - lq + torch.arange(lq))[:, None]
    weights = scores.masked_fill(~allowed, float("-inf")).softmax(-1)
    return torch.einsum("hqk,khd->qhd", weights, v.double())


def _paged_batch(q_lens, k_lens, hq, hk, d, pad_tokens, seed):
    """Random keys/values scattered into shuffled blocks of a cache whose unused slots hold NaN."""
    g = torch.Generator().manual_seed(seed)
    n_blocks = sum(math.ceil(k / BLOCK) for k in k_lens) + 3
    k_cache = torch.full((n_blocks, BLOCK, hk, d), float("nan"))
    v_cache = torch.full((n_blocks, BLOCK, hk, d), float("nan"))
    order = torch.randperm(n_blocks, generator=g).tolist()
    max_blocks = max(math.ceil(k / BLOCK) for k in k_lens) + 1
    table = torch.full((len(k_lens), max_blocks), -1, dtype=torch.int32)
    seqs = []
    for r, lk in enumerate(k_lens):
        k, v = torch.randn(lk, hk, d, generator=g), torch.randn(lk, hk, d, generator=g)
        seqs.append((k, v))
        for b in range(math.ceil(lk / BLOCK)):
            table[r, b] = order.pop()
            n = min(BLOCK, lk - b * BLOCK)
            k_cache[table[r, b], :n], v_cache[table[r, b], :n] = k[b * BLOCK:b * BLOCK + n], v[b * BLOCK:b * BLOCK + n]
    q = torch.randn(sum(q_lens) + pad_tokens, 1, hq, d, generator=g)
    cu = torch.tensor([0, *torch.tensor(q_lens).cumsum(0).tolist()], dtype=torch.int32)
    return q, k_cache, v_cache, cu, torch.tensor(k_lens, dtype=torch.int32), table, seqs


@pytest.mark.parametrize("q_lens,k_lens,hq,hk,pad", [
    ([1, 1, 1], [5, 1, 9], 4, 4, 0),  # decode only
    ([7, 1, 3, 1], [7, 12, 10, 4], 4, 2, 3),  # prefills (one a later chunk) mixed with decodes, GQA, padding
    ([13], [13], 6, 1, 1),  # one prefill spanning several blocks, multi-query
], ids=["decode", "mixed-gqa-padded", "prefill-mqa"])
def test_paged_attention_equals_direct_causal_attention(q_lens, k_lens, hq, hk, pad):
    d, scale = 8, 8 ** -0.5
    q, k_cache, v_cache, cu, k_lens_t, table, seqs = _paged_batch(q_lens, k_lens, hq, hk, d, pad, seed=len(q_lens))
    out = paged_attention(q, k_cache, v_cache, cu, k_lens_t, table, scale)
    assert out.shape == q.shape and torch.isfinite(out).all()
    for r, (lq, (k, v)) in enumerate(zip(q_lens, seqs)):
        rows = slice(int(cu[r]), int(cu[r + 1]))
        expected = _direct(q[rows, 0], k, v, scale)
        torch.testing.assert_close(out[rows, 0].double(), expected, atol=1e-5, rtol=1e-5)
    assert (out[int(cu[-1]):] == 0).all()  # padding tokens attend to nothing
