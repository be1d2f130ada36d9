"""megatron's unfused rotary embedding with its cos/sin tables computed once per inference step.

megatron's ``_apply_rotary_pos_emb_bshd`` computes ``cos`` and ``sin`` of the frequencies on every
call: twice per layer per decode step (queries and keys), the same tables each time. Both r1hpc
inference paths (the static KV cache's self-attention and the dynamic engine's CPU context) make the
tables once per step and rotate with :func:`rotate`, megatron's formula term for term, so the results
are bit for bit megatron's (``tests/model/test_rope.py``).
"""
from __future__ import annotations

import torch
from megatron.core.models.common.embeddings.rope_utils import _rotate_half


def unfused_bshd(config) -> bool:
    """Whether megatron rotates with its unfused formula: no Transformer Engine fusion, no MLA."""
    return not config.apply_rope_fusion and not config.multi_latent_attention


def rope_table(freqs: torch.Tensor, mscale: float, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """The cos and sin tables megatron derives from ``freqs`` for a tensor of ``dtype``."""
    return (torch.cos(freqs) * mscale).to(dtype), (torch.sin(freqs) * mscale).to(dtype)


def rotate(t: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, interleaved: bool) -> torch.Tensor:
    """``_apply_rotary_pos_emb_bshd`` (without MLA) of ``t`` given its tables; a rotary dimension
    narrower than ``t``'s heads leaves the rest as it is."""
    width = cos.shape[-1]
    if width == t.shape[-1]:
        return (t * cos) + (_rotate_half(t, interleaved) * sin)
    rotated, passed = t[..., :width], t[..., width:]
    return torch.cat(((rotated * cos) + (_rotate_half(rotated, interleaved) * sin), passed), dim=-1)
