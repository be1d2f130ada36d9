"""The policy architecture: a megatron-core GPT, dense or Mixture-of-Experts."""
from __future__ import annotations

import dataclasses
from typing import Literal, Optional

from r1hpc.config import ConfigError


@dataclasses.dataclass
class ModelConfig:
    """Architecture of the policy (and reference) model.

    Defaults describe a modern decoder: RoPE, SwiGLU, RMSNorm, no biases. ``num_moe_experts``
    turns the MLPs into routed experts (top-k, load-balancing aux loss, optional shared expert).
    ``vocab_size`` 0 means "take it from the tokenizer".
    """

    num_layers: int = 4
    hidden_size: int = 128
    ffn_hidden_size: int = 384
    num_attention_heads: int = 4
    num_query_groups: Optional[int] = None  # GQA; None = one KV head per query head
    vocab_size: int = 0
    max_seq_length: int = 512
    rotary_base: float = 10000
    rope_scaling_factor: Optional[float] = None  # Llama 3.1 style RoPE frequency scaling (None = off)
    norm_eps: float = 1e-5
    tie_embeddings: bool = True
    add_qkv_bias: bool = False  # Qwen2: biases on the Q, K and V projections only
    init_method_std: float = 0.02
    dropout: float = 0.0
    params_dtype: Literal["fp32", "bf16"] = "fp32"
    # Mixture of experts (None = dense).
    num_moe_experts: Optional[int] = None
    moe_router_topk: int = 2
    moe_ffn_hidden_size: Optional[int] = None
    moe_shared_expert_intermediate_size: Optional[int] = None
    moe_shared_expert_gate: bool = False  # Qwen2-MoE: a sigmoid gate scales the shared expert's output
    moe_router_pre_softmax: bool = False  # softmax over all experts, then top-k, no renormalisation
    moe_aux_loss_coeff: float = 1e-2
    moe_token_dispatcher_type: Literal["alltoall", "allgather"] = "alltoall"
    # Implementation: Transformer Engine layers when importable (required for FP8), else local.
    transformer_impl: Literal["auto", "local", "transformer_engine"] = "auto"
    fp8: Optional[Literal["hybrid", "e4m3"]] = None
    fp8_recipe: Literal["delayed", "tensorwise", "blockwise", "mxfp8"] = "delayed"
    # Start from a Hugging Face checkpoint (folder with config.json + safetensors): the architecture
    # keys above are then taken from its config.json (docs/hf_weights.md).
    hf_path: Optional[str] = None

    @property
    def is_moe(self) -> bool:
        return bool(self.num_moe_experts)

    def validate(self) -> None:
        for name in ("num_layers", "hidden_size", "ffn_hidden_size", "num_attention_heads", "max_seq_length"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"key '{name}' must be positive, got {getattr(self, name)}")
        if self.hidden_size % self.num_attention_heads:
            raise ConfigError(
                f"hidden_size ({self.hidden_size}) must be divisible by num_attention_heads ({self.num_attention_heads})")
        groups = self.num_query_groups or self.num_attention_heads
        if self.num_attention_heads % groups:
            raise ConfigError(
                f"num_attention_heads ({self.num_attention_heads}) must be divisible by num_query_groups ({groups})")
        if self.num_moe_experts is not None:
            if self.num_moe_experts < 1:
                raise ConfigError(f"num_moe_experts must be >= 1 or null, got {self.num_moe_experts}")
            if not 1 <= self.moe_router_topk <= self.num_moe_experts:
                raise ConfigError(
                    f"moe_router_topk ({self.moe_router_topk}) must be between 1 and num_moe_experts ({self.num_moe_experts})")
        if self.moe_shared_expert_gate and not self.moe_shared_expert_intermediate_size:
            raise ConfigError("moe_shared_expert_gate needs a shared expert (set moe_shared_expert_intermediate_size)")
        if self.rope_scaling_factor is not None and self.rope_scaling_factor <= 0:
            raise ConfigError(f"rope_scaling_factor must be positive or null, got {self.rope_scaling_factor}")
        if self.fp8 is not None and self.transformer_impl == "local":
            raise ConfigError("fp8 needs transformer_impl 'transformer_engine' or 'auto' (Transformer Engine layers)")
