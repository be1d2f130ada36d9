"""The CPU stand-ins for the dynamic engine's GPU-only kernels, against what they replace."""
from __future__ import annotations

import torch

from r1hpc.model.cpu_inference import append_key_value_cache_torch


def test_kv_append_writes_the_slots_megatrons_indexing_fallback_writes():
    """Tokens scattered over blocks and positions, the last two padding tokens on the dummy block -1:
    the flat-slot index_copy_ leaves the buffer bit for bit as megatron's advanced-indexing write."""
    g = torch.Generator().manual_seed(0)
    layers, blocks, block_size, heads, dim, layer = 3, 6, 4, 2, 5, 1
    buffer = torch.randn(2, layers, blocks, block_size, heads, dim, generator=g)
    block_idx = torch.tensor([4, 0, 0, 2, 5, -1, -1], dtype=torch.int32)
    position = torch.tensor([3, 0, 1, 2, 0, 0, 0], dtype=torch.int32)
    key, value = torch.randn(7, 1, heads, dim, generator=g), torch.randn(7, 1, heads, dim, generator=g)
    n = 6  # the last token is past the step's padded count: written by neither
    expected = buffer.clone()
    expected[0, layer, block_idx[:n], position[:n]] = key[:n].squeeze(1)  # megatron's fallback, verbatim indexing
    expected[1, layer, block_idx[:n], position[:n]] = value[:n].squeeze(1)
    append_key_value_cache_torch(layer_number=layer, key=key, value=value, memory_buffer=buffer,
                                 padded_active_token_count=n, token_to_block_idx=block_idx,
                                 token_to_local_position_within_kv_block=position)
    assert torch.equal(buffer, expected)
