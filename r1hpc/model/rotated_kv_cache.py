"""Self-attention whose static-batching KV cache holds keys with RoPE already applied.

megatron's static inference path (``StaticInferenceContext``, what r1hpc's rollout loop decodes
with) stores each key as it came out of the QKV projection and then applies RoPE to the whole cached
history, ``key[:sequence_end]``, in every layer at every decode step: the rotation work per token
grows with the length decoded so far (about a tenth of a SmolLM2 decode step at 100 tokens on a
CPU). megatron's flash-decoding mode stores rotated keys instead, but it needs flash-attn and
ignores the attention mask, which r1hpc's left-padded batches need.

Here each key is rotated once, when it is stored: after megatron has written the new keys into the
cache, they are rotated in place with megatron's own ``apply_rotary_pos_emb`` at their positions,
and the attention is told its keys need no rotation. RoPE acts on each position separately, so the
cache then holds, bit for bit, what megatron's path computes at every step. Anything else (training,
the dynamic engine's paged cache, flash decoding, no RoPE) runs megatron's code unchanged.
"""
from __future__ import annotations

from megatron.core.models.common.embeddings.rope_utils import apply_rotary_pos_emb
from megatron.core.models.common.embeddings.yarn_rotary_pos_embedding import _yarn_get_concentration_factor_from_config
from megatron.core.transformer.attention import SelfAttention


class RotatedKeyCacheSelfAttention(SelfAttention):
    """``SelfAttention`` that rotates keys when they enter a static KV cache, not at every step."""

    def _adjust_key_value_for_inference(self, inference_context, query, key, value, rotary_pos_emb, *args, **kwargs):
        static = inference_context is not None and inference_context.is_static_batching()
        start = inference_context.sequence_len_offset if static else None  # where the new keys go
        query, key, value, rotary_pos_emb, mask_type, block_table = super()._adjust_key_value_for_inference(
            inference_context, query, key, value, rotary_pos_emb, *args, **kwargs)
        if not static or rotary_pos_emb is None or rotary_pos_emb[1] is None or self.config.flash_decode:
            return query, key, value, rotary_pos_emb, mask_type, block_table
        q_pos_emb, k_pos_emb = rotary_pos_emb  # k_pos_emb covers the cache up to the new keys' end
        stored = key[start:]  # the new keys, just written to the cache; key is the cache up to them
        stored.copy_(apply_rotary_pos_emb(stored, k_pos_emb[start:], config=self.config,
                                          mscale=_yarn_get_concentration_factor_from_config(self.config),
                                          cp_group=self.pg_collection.cp))
        return query, key, value, (q_pos_emb, None), mask_type, block_table
