"""Self-attention whose static-batching KV cache holds keys with RoPE already applied.

megatron's static inference path (``StaticInferenceContext``, what r1hpc's rollout loop decodes
with) stores each key as it came out of the QKV projection and then applies RoPE to the whole cached
history, ``key[:sequence_end]``, in every layer at every decode step: the rotation work per token
grows with the length decoded so far (about a tenth of a SmolLM2 decode step at 100 tokens on a
CPU). megatron's flash-decoding mode stores rotated keys instead, but it needs flash-attn and
ignores the attention mask, which r1hpc's left-padded batches need.

Here each key is rotated once, when it is stored: after megatron has written the new keys into the
cache, they are rotated in place at their positions, and the attention is told its keys need no
rotation. RoPE acts on each position separately, so the cache then holds, bit for bit, what
megatron's path computes at every step. The step's cos/sin tables are made once and shared by the
queries and keys of every layer (:mod:`r1hpc.model.rope`, megatron's unfused formula).

Without autograd on a CPU, a plain self-attention (no flash decoding, output gate, packed sequences,
attention bias, offloading, context parallelism, FP8 or fused RoPE) runs its inference forward as the
steps megatron's forward takes for it, without the branches, NVTX ranges and offload contexts around
them (:meth:`RotatedKeyCacheSelfAttention.forward`): the static cache's, and the dynamic engine's
paged one where r1hpc runs that engine on a CPU (megatron-core 0.16). Anything else (training, GPUs,
the features above) runs megatron's code unchanged.
"""
from __future__ import annotations

import torch
from megatron.core.models.common.embeddings.rope_utils import apply_rotary_pos_emb
from megatron.core.models.common.embeddings.yarn_rotary_pos_embedding import _yarn_get_concentration_factor_from_config
from megatron.core.transformer.attention import SelfAttention

from r1hpc.model import mcore_compat
from r1hpc.model.decided_once import decided_once
from r1hpc.model.rope import rope_table, rotate, unfused_bshd


class RotatedKeyCacheSelfAttention(SelfAttention):
    """``SelfAttention`` that rotates keys when they enter a static KV cache, not at every step."""

    def forward(self, hidden_states, attention_mask, key_value_states=None, inference_context=None,
                rotary_pos_emb=None, rotary_pos_cos=None, rotary_pos_sin=None, rotary_pos_cos_sin=None,
                attention_bias=None, packed_seq_params=None, sequence_len_offset=None, **kwargs):
        if (kwargs or key_value_states is not None or attention_bias is not None or packed_seq_params is not None
                or rotary_pos_cos is not None or rotary_pos_sin is not None or rotary_pos_cos_sin is not None
                or not self._plain_inference_step(hidden_states, inference_context)):
            return super().forward(hidden_states, attention_mask, key_value_states, inference_context, rotary_pos_emb,
                                   rotary_pos_cos, rotary_pos_sin, rotary_pos_cos_sin, attention_bias,
                                   packed_seq_params, sequence_len_offset, **kwargs)
        if rotary_pos_emb is not None and not isinstance(rotary_pos_emb, tuple):
            rotary_pos_emb = (rotary_pos_emb,) * 2
        query, key, value = self.get_query_key_value_tensors(hidden_states, None, split_qkv=True, output_gate=False)
        query, key, value, rotary_pos_emb, mask_type, block_table = self._adjust_key_value_for_inference(
            inference_context, query, key, value, rotary_pos_emb, None, None, None, sequence_len_offset)
        q_pos_emb, k_pos_emb = rotary_pos_emb if rotary_pos_emb is not None else (None, None)
        static = inference_context.is_static_batching()
        if q_pos_emb is not None and static:
            query = self._rotate(query, q_pos_emb, inference_context)
        elif q_pos_emb is not None:
            query = inference_context.apply_rotary_emb_query(query, q_pos_emb, self.config, None, self.pg_collection.cp)
        if k_pos_emb is not None:  # both caches rotate keys as they store them: megatron's path when they did not
            key = self._rotate(key, k_pos_emb, inference_context)
        if static:
            context = self.core_attention(query, key, value, attention_mask, attn_mask_type=mask_type,
                                          attention_bias=None, packed_seq_params=None)
        else:
            context = self._paged_attention(query, key, value, block_table, inference_context)
        return self.linear_proj(context)

    def _plain_inference_step(self, hidden_states, inference_context) -> bool:
        """Whether this call is a forward without autograd on a CPU through a static cache, or the dynamic
        engine's paged one where r1hpc runs it (megatron-core 0.16), by a layer with nothing beyond
        self-attention with unfused RoPE."""
        if (torch.is_grad_enabled() or self.training or hidden_states.device.type != "cpu"
                or inference_context is None):
            return False
        static, paged = decided_once(self, "_r1hpc_plain_attention", RotatedKeyCacheSelfAttention._plain_forms)
        if inference_context.is_static_batching():
            return static
        return paged and not inference_context.use_flashinfer_fused_rope

    def _plain_forms(self) -> tuple[bool, bool]:
        """(static, paged): whether this layer's config allows the direct forward through each cache."""
        cfg = self.config
        static = (not cfg.flash_decode and not cfg.attention_output_gate and not cfg.no_rope_freq
                  and not cfg.fused_single_qkv_rope and unfused_bshd(cfg) and self.pg_collection.cp.size() == 1
                  and not cfg.fp8 and not getattr(cfg, "fp4", None) and not getattr(cfg, "cache_mla_latents", False)
                  and not getattr(self, "offload_qkv_linear", False) and not getattr(self, "offload_attn_proj", False))
        return static, static and mcore_compat.features().dynamic_engine_cpu

    def _paged_attention(self, query, key, value, block_table, inference_context) -> torch.Tensor:
        """The dynamic engine's attention over its paged cache, as megatron's forward calls it."""
        cu_query_lengths, max_query = inference_context.cu_query_lengths()
        cu_kv_lengths, kv_lengths, max_kv = inference_context.cu_kv_lengths()
        out = self.flash_decode_and_prefill(query, key, value, max_query, max_kv, cu_query_lengths, cu_kv_lengths,
                                            kv_lengths, block_table, inference_context.is_decode_only())
        return out.reshape(out.shape[0], out.shape[1], -1)  # megatron's rearrange 's b h d -> s b (h d)'

    def _rotate(self, t: torch.Tensor, freqs: torch.Tensor, inference_context) -> torch.Tensor:
        """``t`` rotated by ``freqs`` as megatron's unfused RoPE does, with the cos/sin tables of the
        step's frequency slice kept on the context: every layer's queries and new keys share them."""
        mscale = _yarn_get_concentration_factor_from_config(self.config)
        key = (freqs.data_ptr(), freqs.shape, freqs.stride(), mscale, t.dtype)
        cached = inference_context.__dict__.get("_r1hpc_rope_table")
        if cached is None or cached[0] != key:
            # the frequencies are held with their tables, so no other tensor can take their address
            cached = inference_context._r1hpc_rope_table = (key, freqs, *rope_table(freqs, mscale, t.dtype))
        return rotate(t, cached[2], cached[3], self.config.rotary_interleaved)

    def _adjust_key_value_for_inference(self, inference_context, query, key, value, rotary_pos_emb, *args, **kwargs):
        static = inference_context is not None and inference_context.is_static_batching()
        start = inference_context.sequence_len_offset if static else None  # where the new keys go
        query, key, value, rotary_pos_emb, mask_type, block_table = super()._adjust_key_value_for_inference(
            inference_context, query, key, value, rotary_pos_emb, *args, **kwargs)
        if not static or rotary_pos_emb is None or rotary_pos_emb[1] is None or self.config.flash_decode:
            return query, key, value, rotary_pos_emb, mask_type, block_table
        q_pos_emb, k_pos_emb = rotary_pos_emb  # k_pos_emb covers the cache up to the new keys' end
        stored = key[start:]  # the new keys, just written to the cache; key is the cache up to them
        if unfused_bshd(self.config) and self.pg_collection.cp.size() == 1:
            rotated = self._rotate(stored, k_pos_emb[start:], inference_context)
        else:
            rotated = apply_rotary_pos_emb(stored, k_pos_emb[start:], config=self.config,
                                           mscale=_yarn_get_concentration_factor_from_config(self.config),
                                           cp_group=self.pg_collection.cp)
        stored.copy_(rotated)
        return query, key, value, (q_pos_emb, None), mask_type, block_table
