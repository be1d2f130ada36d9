"""Build the policy as a megatron-core ``GPTModel`` from :class:`ModelConfig` and :class:`ParallelConfig`.

Layer implementation: Transformer Engine's spec when ``transformer_engine`` imports (needed for
FP8 and the fast fused kernels on Hopper), megatron's local spec otherwise (CPU, CI). The local
spec gets our sequence-parallel-capable RMSNorm, because megatron's torch-norm wrapper refuses SP.
"""
from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
from typing import Optional

import torch

from r1hpc.config import ConfigError
from r1hpc.distributed import ParallelConfig, sequence_parallel_enabled
from r1hpc.model.config import ModelConfig
from r1hpc.model.norm import RMSNorm


def transformer_engine_available() -> bool:
    if importlib.util.find_spec("transformer_engine") is None:
        return False
    try:
        import transformer_engine.pytorch  # noqa: F401
    except Exception:  # TE imports but cannot load its CUDA libraries (CPU machine)
        return False
    return True


def _fp8_needs_te(model: ModelConfig) -> ConfigError:
    return ConfigError(f"model.fp8 = {model.fp8!r} needs Transformer Engine with CUDA; it is not importable "
                       "here. FP8 is never silently dropped: remove model.fp8 or run on a Hopper node")


def select_transformer_impl(model: ModelConfig, te_available: Optional[bool] = None) -> str:
    """'transformer_engine' or 'local', as the config asks and the machine allows."""
    te = transformer_engine_available() if te_available is None else te_available
    if model.transformer_impl == "transformer_engine" and not te:
        raise ConfigError("model.transformer_impl is 'transformer_engine' but transformer_engine cannot be "
                          "imported here (install r1hpc[gpu] on a CUDA node)")
    if model.fp8 is not None and model.transformer_impl == "local":
        raise ConfigError(f"model.fp8 = {model.fp8!r} needs Transformer Engine layers, but model.transformer_impl "
                          "is 'local'; set it to 'auto' or 'transformer_engine'")
    if model.fp8 is not None and not te:
        raise _fp8_needs_te(model)
    if model.transformer_impl == "auto":
        return "transformer_engine" if te else "local"
    return model.transformer_impl


# Per FP8 recipe: the oldest Transformer Engine with it (megatron-core's fp8_utils) and the lowest
# GPU compute capability (FP8 tensor cores: Hopper; MXFP8 block scaling: Blackwell).
FP8_RECIPE_MIN_TE = {"delayed": "1.0", "tensorwise": "2.2.0.dev0", "blockwise": "2.3.0.dev0", "mxfp8": "2.1.0"}
FP8_RECIPE_MIN_CAPABILITY = {"delayed": (9, 0), "tensorwise": (9, 0), "blockwise": (9, 0), "mxfp8": (10, 0)}


def fp8_environment() -> tuple[Optional[str], Optional[tuple[int, int]]]:
    """(Transformer Engine version or None when it cannot be imported, compute capability of the
    current CUDA device or None without CUDA): what :func:`check_fp8_support` judges."""
    from megatron.core.utils import get_te_version

    te_version = str(get_te_version()) if transformer_engine_available() else None
    capability = tuple(torch.cuda.get_device_capability()) if torch.cuda.is_available() else None
    return te_version, capability


def check_fp8_support(model: ModelConfig, te_version: Optional[str], capability: Optional[tuple[int, int]]) -> None:
    """Refuse, naming the key, an FP8 setting this machine cannot run; never fall back to bf16."""
    from packaging.version import Version

    if model.fp8 is None:
        return
    recipe = model.fp8_recipe
    if te_version is None:
        raise _fp8_needs_te(model)
    need_cc = FP8_RECIPE_MIN_CAPABILITY[recipe]
    if capability is None or tuple(capability) < need_cc:
        found = "no CUDA device" if capability is None else f"compute capability {capability[0]}.{capability[1]}"
        raise ConfigError(f"model.fp8 = {model.fp8!r} with model.fp8_recipe = {recipe!r} needs a GPU of compute "
                          f"capability >= {need_cc[0]}.{need_cc[1]} ({'Blackwell' if need_cc >= (10, 0) else 'Hopper'})"
                          f", found {found}. FP8 is never silently dropped: remove model.fp8")
    if Version(te_version) < Version(FP8_RECIPE_MIN_TE[recipe]):
        raise ConfigError(f"model.fp8_recipe = {recipe!r} needs Transformer Engine >= {FP8_RECIPE_MIN_TE[recipe]}, "
                          f"found {te_version}; choose another model.fp8_recipe ('delayed' works with any)")


def padded_vocab_size(vocab_size: int, tp: int, multiple: int = 128) -> int:
    """Pad the vocabulary so every TP shard has the same size (megatron's make-vocab-size-divisible-by)."""
    step = multiple * tp
    return ((vocab_size + step - 1) // step) * step


def transformer_config(model: ModelConfig, parallel: ParallelConfig):
    """megatron's TransformerConfig for our ModelConfig (the one place the two vocabularies meet)."""
    from megatron.core.transformer.transformer_config import TransformerConfig

    kwargs = {**_dense_kwargs(model), **_parallel_kwargs(model, parallel)}
    if model.is_moe:
        kwargs.update(_moe_kwargs(model))
    if model.fp8 is not None:
        kwargs.update(_fp8_kwargs(model))
    return TransformerConfig(**kwargs)


def _dense_kwargs(model: ModelConfig) -> dict:
    """The architecture (Llama/Qwen style: RMSNorm, SwiGLU, no linear biases), dtype and init, with
    megatron's CUDA-only fusions off."""
    import torch.nn.functional as F

    dtype = torch.bfloat16 if model.params_dtype == "bf16" else torch.float32
    return dict(
        num_layers=model.num_layers,
        hidden_size=model.hidden_size,
        ffn_hidden_size=model.ffn_hidden_size,
        num_attention_heads=model.num_attention_heads,
        num_query_groups=model.num_query_groups,
        normalization="RMSNorm",
        layernorm_epsilon=model.norm_eps,
        gated_linear_unit=True,
        activation_func=F.silu,
        add_bias_linear=False,
        add_qkv_bias=model.add_qkv_bias,
        bias_activation_fusion=False,
        bias_dropout_fusion=False,
        masked_softmax_fusion=False,
        apply_rope_fusion=False,
        gradient_accumulation_fusion=False,
        persist_layer_norm=False,
        hidden_dropout=model.dropout,
        attention_dropout=model.dropout,
        init_method_std=model.init_method_std,
        params_dtype=dtype,
        bf16=dtype == torch.bfloat16,
        pipeline_dtype=dtype,
        use_cpu_initialization=not torch.cuda.is_available(),
        perform_initialization=True,
    )


def _parallel_kwargs(model: ModelConfig, parallel: ParallelConfig) -> dict:
    return dict(
        tensor_model_parallel_size=parallel.tensor_model_parallel_size,
        pipeline_model_parallel_size=parallel.pipeline_model_parallel_size,
        context_parallel_size=parallel.context_parallel_size,
        expert_model_parallel_size=parallel.expert_model_parallel_size,
        sequence_parallel=sequence_parallel_enabled(parallel, model),
    )


def _moe_kwargs(model: ModelConfig) -> dict:
    return dict(
        num_moe_experts=model.num_moe_experts,
        moe_router_topk=model.moe_router_topk,
        moe_ffn_hidden_size=model.moe_ffn_hidden_size or model.ffn_hidden_size,
        moe_shared_expert_intermediate_size=model.moe_shared_expert_intermediate_size,
        moe_shared_expert_gate=model.moe_shared_expert_gate,
        moe_router_pre_softmax=model.moe_router_pre_softmax,
        moe_aux_loss_coeff=model.moe_aux_loss_coeff,
        moe_router_load_balancing_type="aux_loss",
        moe_token_dispatcher_type=model.moe_token_dispatcher_type,
        moe_grouped_gemm=False,
        moe_permute_fusion=False,
        moe_router_dtype="fp32",
    )


def _fp8_kwargs(model: ModelConfig) -> dict:
    # experts' token counts need no router padding: megatron's SequentialMLP (moe_grouped_gemm
    # off) pads each expert's input with zero rows to the FP8 GEMM alignment itself
    return dict(fp8=model.fp8, fp8_recipe=model.fp8_recipe,
                fp8_amax_history_len=model.fp8_amax_history_len,
                fp8_amax_compute_algo=model.fp8_amax_compute_algo,
                first_last_layers_bf16=model.fp8_bf16_edge_layers > 0,
                num_layers_at_start_in_bf16=model.fp8_bf16_edge_layers,
                num_layers_at_end_in_bf16=model.fp8_bf16_edge_layers)


def layer_spec(model: ModelConfig, impl: str):
    """The per-layer ModuleSpec: TE's, or the local one with SP-capable RMSNorm and SDPA core
    attention (r1hpc.model.sdpa_attention) swapped in; either way self-attention keeps rotated keys in
    the static KV cache (r1hpc.model.rotated_kv_cache)."""
    from megatron.core.models.gpt import gpt_layer_specs

    from r1hpc.model.rotated_kv_cache import RotatedKeyCacheSelfAttention  # imports megatron
    from r1hpc.model.sdpa_attention import SdpaDotProductAttention

    if impl == "transformer_engine":
        spec = gpt_layer_specs.get_gpt_layer_with_transformer_engine_spec(
            num_experts=model.num_moe_experts, moe_grouped_gemm=False, qk_layernorm=False)
        spec.submodules.self_attention.module = RotatedKeyCacheSelfAttention
        return spec
    spec = gpt_layer_specs.get_gpt_layer_local_spec(
        num_experts=model.num_moe_experts, moe_grouped_gemm=False, qk_layernorm=False, normalization="RMSNorm")
    attention = spec.submodules.self_attention
    attention.module = RotatedKeyCacheSelfAttention
    attention.submodules = dataclasses.replace(attention.submodules, core_attention=SdpaDotProductAttention)
    spec.submodules = dataclasses.replace(spec.submodules, input_layernorm=RMSNorm, pre_mlp_layernorm=RMSNorm)
    return spec


def build_model(model: ModelConfig, parallel: ParallelConfig, *, pre_process: Optional[bool] = None,
                post_process: Optional[bool] = None, vp_stage: Optional[int] = None):
    """One pipeline stage of the policy on this rank (parallel state must be initialised)."""
    from megatron.core import parallel_state
    from megatron.core.models.gpt import GPTModel
    from megatron.core.transformer.transformer_block import TransformerBlockSubmodules, get_num_layers_to_build

    if model.vocab_size <= 0:
        raise ConfigError("model.vocab_size is not set (it is normally taken from the tokenizer)")
    impl = select_transformer_impl(model)
    check_fp8_support(model, *fp8_environment())
    cfg = transformer_config(model, parallel)
    spec = layer_spec(model, impl)
    if impl == "local":
        n_layers = get_num_layers_to_build(cfg, vp_stage=vp_stage)
        spec = TransformerBlockSubmodules(layer_specs=[spec] * n_layers, layer_norm=RMSNorm)
    if pre_process is None:
        pre_process = parallel_state.is_pipeline_first_stage()
    if post_process is None:
        post_process = parallel_state.is_pipeline_last_stage()
    gpt = GPTModel(
        config=cfg,
        transformer_layer_spec=spec,
        vocab_size=padded_vocab_size(model.vocab_size, parallel.tensor_model_parallel_size),
        max_sequence_length=model.max_seq_length,
        pre_process=pre_process,
        post_process=post_process,
        parallel_output=True,
        share_embeddings_and_output_weights=model.tie_embeddings,
        position_embedding_type="rope",
        rotary_base=model.rotary_base,
        rope_scaling=model.rope_scaling_factor is not None,
        rope_scaling_factor=model.rope_scaling_factor or 8.0,
    )
    if torch.cuda.is_available():
        gpt = gpt.cuda()
    return gpt


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The bare model inside megatron's DDP / Float16Module wrappers."""
    while hasattr(model, "module"):
        model = model.module
    return model


def causal_attention_mask(seq_len: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """megatron's boolean mask convention: True = masked out. Shape [1, 1, s, s]."""
    return torch.triu(torch.ones(seq_len, seq_len, dtype=torch.bool, device=device), diagonal=1)[None, None]


_SP_FLAGS = ("sequence_parallel", "reduce_scatter_embeddings")


@contextlib.contextmanager
def sequence_parallel_off(model: torch.nn.Module):
    """Run a forward without sequence parallelism (decode steps of one token cannot be split across
    TP ranks). megatron requires SP for MoE+TP only while training; its own inference turns it off
    the same way: the shared config flag plus the flags layers copied from it at init (linears, embedding)."""
    config = model.config
    flagged = [(m, name) for m in model.modules() for name in _SP_FLAGS if getattr(m, name, None) is True]
    saved = config.sequence_parallel
    config.sequence_parallel = False
    for m, name in flagged:
        setattr(m, name, False)
    try:
        yield
    finally:
        config.sequence_parallel = saved
        for m, name in flagged:
            setattr(m, name, True)
