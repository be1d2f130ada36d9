"""r1hpc's RoPE with per-step tables (r1hpc.model.rope) equals megatron's unfused formula bit for bit:
half-split and interleaved, a rotary dimension narrower than the heads, a YaRN scale, strided views
as megatron's QKV split hands them over, fp32 and bf16."""
from __future__ import annotations

import pytest
import torch
from megatron.core.models.common.embeddings.rope_utils import _apply_rotary_pos_emb_bshd

from r1hpc.model.rope import rope_table, rotate


@pytest.mark.parametrize("interleaved,rotary_dim,mscale,dtype", [
    (False, 16, 1.0, torch.float32), (True, 8, 1.3, torch.float32), (False, 16, 1.0, torch.bfloat16)],
    ids=["half-split", "interleaved-partial-yarn-scale", "bf16"])
def test_rotate_with_a_shared_table_equals_megatron(interleaved, rotary_dim, mscale, dtype):
    g = torch.Generator().manual_seed(0)
    freqs = (torch.randn(5, 1, 1, rotary_dim, generator=g) * 10)
    queries = torch.randn(5, 2, 6, 16, generator=g).to(dtype)
    keys = torch.randn(5, 2, 12, 16, generator=g).to(dtype)[:, :, ::4]  # a view into a wider projection
    table = rope_table(freqs, mscale, dtype)
    for t in (queries, keys):
        want = _apply_rotary_pos_emb_bshd(t, freqs, rotary_interleaved=interleaved, mscale=mscale)
        assert torch.equal(rotate(t, *table, interleaved), want)
