"""Core attention of the local layer spec (no Transformer Engine: CPUs, CI) through torch's
``scaled_dot_product_attention``.

megatron's own ``DotProductAttention`` copies every key and value ``num_heads / num_query_groups``
times for grouped-query attention (``repeat_interleave`` over the whole KV cache, each layer, each
decode step), then runs baddbmm, a masked softmax and bmm. SDPA reads the groups as they are
(``enable_gqa``) and runs one fused kernel (flash attention on a CPU), as transformers' Llama does.
The result is megatron's: the same scale (``apply_query_key_layer_scaling`` folded back in) and the
same mask convention (``True`` = masked out). Masked positions take a large negative score rather
than ``-inf`` so that a row with every key masked (a left-padding query in a batched prefill) stays
finite, as megatron's ``-10000`` fill keeps it; no real token attends to such a row.

On a CPU, attention with autograd in bf16 runs in fp32 (:func:`_compute_dtype`): torch's CPU flash
attention backward is about twice as slow in bf16 as in fp32 (8 sequences, 9 heads, 156 tokens,
forward and backward: 21 vs 11 ms on a Xeon), and fp32 is the more precise of the two; the context
is handed back in bf16. Forwards without autograd (rollouts) stay in bf16, where the kernel is the faster one.

Rows of the shared-prefix layout (``grpo.shared_prefix``) go through
:func:`r1hpc.model.shared_prefix_attention.shared_prefix_attention` instead of one masked call.

Cases SDPA does not express exactly fall back to megatron's forward: attention dropout while
training (megatron draws it from its model-parallel RNG streams), softmax offsets, sliding windows,
packed sequences, attention bias, and a causal mask that is not square.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from megatron.core.transformer.dot_product_attention import DotProductAttention
from megatron.core.transformer.enums import AttnMaskType

from r1hpc.model.shared_prefix_attention import active_index, shared_prefix_attention

#: Score given to masked-out keys: exp(-1e4 - max) is 0 in fp32 and bf16, and a fully masked row stays finite.
MASKED_SCORE = -1e4


def _compute_dtype(query: torch.Tensor) -> torch.dtype:
    """The dtype SDPA runs in: fp32 for bf16 attention with autograd on a CPU, else the query's."""
    if query.dtype == torch.bfloat16 and query.device.type == "cpu" and torch.is_grad_enabled():
        return torch.float32
    return query.dtype


class SdpaDotProductAttention(DotProductAttention):
    """``DotProductAttention`` with the forward through ``F.scaled_dot_product_attention``."""

    def forward(self, query, key, value, attention_mask: Optional[torch.Tensor],
                attn_mask_type: Optional[AttnMaskType] = None, attention_bias=None, packed_seq_params=None,
                **kwargs):
        """query [sq, b, np, hn], key/value [sk, b, ng, hn], attention_mask bool [b|1, 1, sq, sk]
        (True = masked) or None (causal for this layer's causal mask type) -> context [sq, b, np * hn].
        ``attn_mask_type`` is not read, as in megatron's forward."""
        sq, sk = query.shape[0], key.shape[0]
        # as megatron's softmax: its own mask type decides; one query row (a decode step) needs no mask
        causal_default = attention_mask is None and self.attn_mask_type == AttnMaskType.causal and sq > 1
        if (attention_bias is not None or packed_seq_params is not None or kwargs or self.softmax_offset is not None
                or self.scale_mask_softmax.window_size is not None
                or (self.training and self.attention_dropout.p > 0) or (causal_default and sq != sk)):
            return super().forward(query, key, value, attention_mask, attn_mask_type=attn_mask_type,
                                   attention_bias=attention_bias, packed_seq_params=packed_seq_params, **kwargs)
        scale = self.softmax_scale * (self.scale_mask_softmax.scale or 1.0)
        dtype = _compute_dtype(query)
        q, k, v = (t.permute(1, 2, 0, 3).to(dtype) for t in (query, key, value))  # [b, heads, s, hn]
        index = active_index(sq, query.shape[1]) if sq == sk else None
        if index is not None:  # shared-prefix rows: each prompt once, each response over it and itself
            context = shared_prefix_attention(q, k, v, index, scale)
        else:
            bias = None
            if attention_mask is not None:
                bias = torch.zeros(attention_mask.shape, dtype=dtype, device=query.device)
                bias.masked_fill_(attention_mask, MASKED_SCORE)
            context = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, is_causal=causal_default, scale=scale,
                                                     enable_gqa=k.shape[1] != q.shape[1])
        return context.to(query.dtype).permute(2, 0, 1, 3).reshape(sq, query.shape[1], self.hidden_size_per_partition)
