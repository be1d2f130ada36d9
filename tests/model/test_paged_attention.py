"""The CPU paged attention (the stand-in for flash-attn in megatron's dynamic engine), torch path and
compiled decode kernel, against causal attention computed in float64 directly on each request's
contiguous keys and values."""
from __future__ import annotations

import math

import pytest
import torch

from r1hpc.model import paged_attention as paged
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


@pytest.fixture(params=["torch", "compiled"])
def decode_path(request, monkeypatch):
    """Decode rows through the torch path, or through the compiled kernel (which the install builds)."""
    if request.param == "torch":
        monkeypatch.setattr(paged, "compiled_decode", lambda: None)
    else:
        assert paged.compiled_decode() is not None, "r1hpc._cpu_attention is not built (pip install --no-build-isolation)"
    return request.param


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
    ([1, 1], [3, 8], 4, 2, 2),  # decode only, padding tokens after
    ([1, 1, 0], [3, 8, 0], 4, 2, 1),  # decode only, a padding request (no query, no key; TP rounding)
    ([7, 1, 3, 1], [7, 12, 10, 4], 4, 2, 3),  # prefills (one a later chunk) mixed with decodes, GQA, padding
    ([13], [13], 6, 1, 1),  # one prefill spanning several blocks, multi-query
], ids=["decode", "decode-padded", "decode-padding-request", "mixed-gqa-padded", "prefill-mqa"])
@pytest.mark.parametrize("told", [False, True], ids=["step-kind-found", "step-kind-told"])
def test_paged_attention_equals_direct_causal_attention(q_lens, k_lens, hq, hk, pad, decode_path, told):
    """``told``: the engine says whether the step is decode-only (as megatron's does), else the
    function finds each request's kind from the query offsets."""
    d, scale = 8, 8 ** -0.5
    q, k_cache, v_cache, cu, k_lens_t, table, seqs = _paged_batch(q_lens, k_lens, hq, hk, d, pad, seed=len(q_lens))
    out = paged_attention(q, k_cache, v_cache, cu, k_lens_t, table, scale,
                          decode_only=told and max(q_lens) == 1)
    assert out.shape == q.shape and torch.isfinite(out).all()
    for r, (lq, (k, v)) in enumerate(zip(q_lens, seqs)):
        rows = slice(int(cu[r]), int(cu[r + 1]))
        expected = _direct(q[rows, 0], k, v, scale)
        torch.testing.assert_close(out[rows, 0].double(), expected, atol=1e-5, rtol=1e-5)
    assert (out[int(cu[-1]):] == 0).all()  # padding tokens attend to nothing


@pytest.mark.parametrize("hq,hk,d", [(9, 3, 64), (8, 2, 128), (4, 4, 12), (6, 1, 5)],
                         ids=["smollm2-gqa", "gqa-dim128", "mha-odd-dim", "mqa-tiny-dim"])
def test_compiled_decode_reads_blocks_in_place_like_direct_attention(hq, hk, d):
    """Decode rows of many lengths (one key, a block's worth, many blocks) over a shuffled pool whose
    unused slots hold NaN; head dims 64 and 128 take the kernel's fixed-size instances, 12 and 5 its
    generic one (a dim that is not a multiple of the vector width)."""
    kernel = paged.compiled_decode()
    assert kernel is not None, "r1hpc._cpu_attention is not built (pip install --no-build-isolation)"
    k_lens, scale = [1, 4, 5, 37, 64, 2], d ** -0.5
    q, k_cache, v_cache, _, k_lens_t, table, seqs = _paged_batch([1] * len(k_lens), k_lens, hq, hk, d, 0, seed=7)
    out = kernel.paged_decode(q[:, 0], k_cache, v_cache, k_lens_t, table, scale)
    for r, (k, v) in enumerate(seqs):
        torch.testing.assert_close(out[r].double(), _direct(q[r:r + 1, 0], k, v, scale)[0], atol=2e-6, rtol=1e-5)


def test_compiled_decode_refuses_a_block_outside_the_pool():
    kernel = paged.compiled_decode()
    q, k_cache, v_cache, _, k_lens, table, _ = _paged_batch([1, 1], [3, 9], 2, 2, 8, 0, seed=3)
    table[1, 2] = k_cache.shape[0]  # the third block of a 9-key request (block size 4) is read
    with pytest.raises(RuntimeError, match=f"request 1 names block {k_cache.shape[0]} of a cache of"):
        kernel.paged_decode(q[:, 0], k_cache, v_cache, k_lens, table, 0.5)
    table[1, 2], k_lens[0] = 0, table.shape[1] * BLOCK + 1
    with pytest.raises(RuntimeError, match="request 0 has .* keys; its block table holds"):
        kernel.paged_decode(q[:, 0], k_cache, v_cache, k_lens, table, 0.5)


def test_strided_caches_take_the_torch_path(monkeypatch):
    """A cache whose blocks are not contiguous (a view) cannot be read in place: the torch path attends."""
    q, k_cache, v_cache, cu, k_lens, table, seqs = _paged_batch([1, 1], [6, 3], 4, 2, 8, 0, seed=5)
    wide_k, wide_v = torch.cat([k_cache, k_cache], -1)[..., :8], torch.cat([v_cache, v_cache], -1)[..., :8]
    assert not wide_k[0].is_contiguous()
    monkeypatch.setattr(paged, "_attend_rows", _counting(paged._attend_rows, calls := []))
    out = paged_attention(q, wide_k, wide_v, cu, k_lens, table, 8 ** -0.5)
    assert len(calls) == 1
    for r, (k, v) in enumerate(seqs):
        torch.testing.assert_close(out[r, 0].double(), _direct(q[r:r + 1, 0], k, v, 8 ** -0.5)[0], atol=1e-5, rtol=1e-5)


def _counting(fn, calls):
    def wrapper(*args, **kwargs):
        calls.append(1)
        return fn(*args, **kwargs)
    return wrapper
