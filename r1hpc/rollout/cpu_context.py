"""megatron's dynamic inference context on a CPU, where a decode step of a small model is mostly the
engine's own per-step bookkeeping: what of it serves only CUDA graphs is skipped here, and what every
layer recomputes is done once a step, with results equal to megatron's (the same tensors are read).
"""
from __future__ import annotations

import torch
from megatron.core.inference.contexts import DynamicInferenceContext
from megatron.core.inference.contexts.attention_context.mha_metadata import NonGraphedMHAMetadata

from r1hpc.model.cpu_inference import kv_cache_slots, write_key_value
from r1hpc.model.rope import rope_table, rotate, unfused_bshd


class UnpaddedMHAMetadata(NonGraphedMHAMetadata):
    """The attention's per-step metadata (query/KV lengths, their prefix sums, block table) as views of
    the context's request tensors and two prefix sums, when the step has no padding requests (a CPU
    step at TP 1 never has); megatron copies each into a padded buffer, five copy-and-pad calls a step."""

    def update(self, request_query_lengths, request_kv_length_offsets, request_to_kv_block_ids,
               batch_dimensions, padded_batch_dimensions):
        if padded_batch_dimensions.req_count != batch_dimensions.req_count:
            return super().update(request_query_lengths, request_kv_length_offsets, request_to_kv_block_ids,
                                  batch_dimensions, padded_batch_dimensions)
        kv_lengths = request_kv_length_offsets + request_query_lengths
        prefix = torch.zeros(2, len(kv_lengths) + 1, dtype=torch.int32, device=kv_lengths.device)
        torch.cumsum(request_query_lengths, 0, out=prefix[0, 1:])
        torch.cumsum(kv_lengths, 0, out=prefix[1, 1:])
        longest_q, longest_k = (int(t.max()) if len(t) else 1 for t in (request_query_lengths, kv_lengths))
        self.state_data = {
            "query_lengths": request_query_lengths, "cu_query_seq_lengths": prefix[0],
            "cu_kv_seq_lengths": prefix[1], "kv_seq_lengths": kv_lengths, "block_table": request_to_kv_block_ids,
            "max_seqlen_q": longest_q, "max_seqlen_k": longest_k,  # as megatron's metadata without CUDA graphs
        }

    def reset(self):
        self.state_data = {}  # update() rebuilds every entry; its buffers need no clearing


class UnpaddedContext(DynamicInferenceContext):
    """The engine's context on a CPU. Forward passes of exactly the active tokens (rounded to the TP
    size) instead of a multiple of 64: that padding serves CUDA graphs; on a CPU it is only extra work.
    The attention metadata is built without padded copies (:class:`UnpaddedMHAMetadata`), and only it is
    reset between steps (the CUDA-graph metadata is never used here). Per forward pass, once for every
    layer: the KV cache slots of the step's tokens, and RoPE's cos/sin tables at the step's positions
    (megatron recomputes them in each layer for the queries and again for the keys); the rotation
    itself is megatron's unfused formula, so the results are bit for bit the same."""

    TOKEN_ROUNDER = 1

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._rope_tables: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}
        self._kv_slots: torch.Tensor | None = None
        padded = self.non_graph_attn_metadata["mha_metadata"]
        self.non_graph_attn_metadata["mha_metadata"] = UnpaddedMHAMetadata(
            block_count_total=padded.max_blocks, max_kv_block_count=padded.max_kv_blocks,
            max_requests=padded.max_bs, block_size_tokens=self.block_size_tokens, max_seqlen=padded.max_seqlen)

    def reset_attention_state(self) -> None:
        self.non_graph_attn_metadata["mha_metadata"].reset()
        self.active_attn_metadata = None
        if self.is_hybrid_model:
            self.mamba_metadata.reset_varlen_metadata()

    def initialize_attention_state(self, **kwargs) -> None:
        super().initialize_attention_state(**kwargs)  # once per forward pass: new positions
        self._rope_tables.clear()
        self._kv_slots = None

    def append_key_value_cache(self, layer_number: int, key: torch.Tensor, value: torch.Tensor) -> None:
        if self.cache_mla_latent:
            return super().append_key_value_cache(layer_number, key, value)
        n = self.padded_active_token_count
        if self._kv_slots is None:
            self._kv_slots = kv_cache_slots(self.memory_buffer, self.token_to_block_idx[:n],
                                            self.token_to_local_position_within_kv_block[:n])
        write_key_value(self.memory_buffer, self.layer_map[layer_number - 1], self._kv_slots, key[:n], value[:n])

    def apply_rotary_emb_query(self, query, query_emb, config, cu_seqlens_q, cp_group, mscale: float = 1.0):
        if cu_seqlens_q is not None or not unfused_bshd(config):
            return super().apply_rotary_emb_query(query, query_emb, config, cu_seqlens_q, cp_group, mscale)
        n = self.padded_active_token_count
        query[:n] = self._rotate(query[:n], query_emb, self.token_to_pos_ids[:n], config, mscale)
        return query

    def apply_rotary_emb_key(self, key, key_emb, config, cp_group, mscale: float = 1.0):
        if not unfused_bshd(config):
            return super().apply_rotary_emb_key(key, key_emb, config, cp_group, mscale)
        n = self.padded_active_token_count
        rotated = self._rotate(key[:n], key_emb, self.token_to_position_in_request[:n], config, mscale)
        if self.is_decode_only():  # as megatron: a decode step's keys are returned, a prefill's written back
            return rotated
        key[:n] = rotated
        return key

    def _rotate(self, t: torch.Tensor, emb: torch.Tensor, positions: torch.Tensor, config, mscale: float):
        """megatron's ``_apply_rotary_pos_emb_bshd`` with the step's cos/sin tables cached."""
        table = (emb.data_ptr(), positions.data_ptr(), mscale, t.dtype)
        if table not in self._rope_tables:
            self._rope_tables[table] = rope_table(emb[positions], mscale, t.dtype)
        return rotate(t, *self._rope_tables[table], config.rotary_interleaved)
