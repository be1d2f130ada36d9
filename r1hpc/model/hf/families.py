"""The Hugging Face model families we convert: their config.json -> :class:`ModelConfig`, and the
name of every HF tensor for each role a megatron parameter plays.

A *role* names what a tensor is, independent of both naming schemes: ``("qkv_w", layer)``,
``("expert_fc1", layer, expert)``, ``("embed",)``. :mod:`r1hpc.model.hf.layout` maps megatron
parameters to roles and fuses/splits the tensors; this module only knows the HF side.
Every feature a family may use that our megatron model cannot express raises
:class:`UnsupportedHFFeature` naming the config.json key, never a silent approximation.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Callable, Optional

from r1hpc.config import ConfigError
from r1hpc.model.config import ModelConfig


class UnsupportedHFFeature(ConfigError):
    """The HF checkpoint uses something our megatron model cannot represent exactly."""


@dataclasses.dataclass(frozen=True)
class Family:
    model_type: str
    architecture: str  # config.json "architectures" entry written on export
    moe_prefix: Optional[str]  # "block_sparse_moe" (Mixtral) or "mlp" (Qwen2-MoE); None = dense
    expert_names: tuple[str, str, str]  # (gate, up, down) projection names inside one expert
    has_shared_expert: bool = False

    def hf_names(self, role: tuple) -> list[str]:
        """HF tensor names for a role, in the order the fused megatron tensor holds them."""
        kind, *idx = role
        if kind in _TOP:
            return [_TOP[kind]]
        layer = f"model.layers.{idx[0]}."
        if kind.startswith("expert_"):
            gate, up, down = self.expert_names
            e = f"{layer}{self.moe_prefix}.experts.{idx[1]}."
            return [e + gate + ".weight", e + up + ".weight"] if kind == "expert_fc1" else [e + down + ".weight"]
        if kind == "router":
            return [f"{layer}{self.moe_prefix}.gate.weight"]
        return [layer + n for n in _LAYER[kind]]


_TOP = {"embed": "model.embed_tokens.weight", "final_norm": "model.norm.weight", "lm_head": "lm_head.weight"}
_ATTN = "self_attn."
_LAYER = {
    "attn_norm": ["input_layernorm.weight"],
    "qkv_w": [_ATTN + p + "_proj.weight" for p in "qkv"],
    "qkv_b": [_ATTN + p + "_proj.bias" for p in "qkv"],
    "o_w": [_ATTN + "o_proj.weight"],
    "mlp_norm": ["post_attention_layernorm.weight"],
    "fc1": ["mlp.gate_proj.weight", "mlp.up_proj.weight"],
    "fc2": ["mlp.down_proj.weight"],
    "shared_fc1": ["mlp.shared_expert.gate_proj.weight", "mlp.shared_expert.up_proj.weight"],
    "shared_fc2": ["mlp.shared_expert.down_proj.weight"],
    "shared_gate": ["mlp.shared_expert_gate.weight"],
}

FAMILIES = {
    "llama": Family("llama", "LlamaForCausalLM", None, ("gate_proj", "up_proj", "down_proj")),
    "qwen2": Family("qwen2", "Qwen2ForCausalLM", None, ("gate_proj", "up_proj", "down_proj")),
    "mixtral": Family("mixtral", "MixtralForCausalLM", "block_sparse_moe", ("w1", "w3", "w2")),
    "qwen2_moe": Family("qwen2_moe", "Qwen2MoeForCausalLM", "mlp", ("gate_proj", "up_proj", "down_proj"),
                        has_shared_expert=True),
}


def read_hf_config(hf_dir: str | Path) -> dict:
    path = Path(hf_dir) / "config.json"
    if not path.is_file():
        raise ConfigError(f"{path}: no such file (a Hugging Face checkpoint folder holds config.json)")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}:{e.lineno}: not valid JSON ({e.msg})") from None


def family_of(hf_cfg: dict, where: str = "config.json") -> Family:
    mt = hf_cfg.get("model_type")
    if mt not in FAMILIES:
        raise UnsupportedHFFeature(f"{where}: model_type {mt!r} is not supported; supported: {sorted(FAMILIES)}")
    return FAMILIES[mt]


def _rope(hf_cfg: dict, where: str) -> tuple[float, Optional[float]]:
    """(theta, llama3 scaling factor or None). transformers 5 writes ``rope_parameters``, 4.x
    ``rope_theta`` + ``rope_scaling``; read either."""
    params = dict(hf_cfg.get("rope_parameters") or {})
    scaling = hf_cfg.get("rope_scaling") or {}
    theta = params.get("rope_theta", hf_cfg.get("rope_theta", 10000.0))
    kind = params.get("rope_type") or scaling.get("rope_type") or scaling.get("type") or "default"
    if kind == "default":
        return float(theta), None
    src = params if "rope_type" in params else scaling
    # megatron-core implements exactly Llama 3.1's scaling with these constants.
    expected = {"low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}
    if kind == "llama3" and all(float(src.get(k, -1)) == v for k, v in expected.items()):
        return float(theta), float(src["factor"])
    raise UnsupportedHFFeature(f"{where}: RoPE scaling {kind!r} with {src} is not supported (megatron-core "
                               f"implements 'llama3' with {expected} only)")


def _require(hf_cfg: dict, where: str, key: str, ok: Callable[[object], bool], what: str) -> None:
    if key in hf_cfg and not ok(hf_cfg[key]):
        raise UnsupportedHFFeature(f"{where}: {key} = {hf_cfg[key]!r} is not supported ({what})")


def model_config_from_hf(hf_cfg: dict, *, base: Optional[ModelConfig] = None,
                         has_qkv_bias: Optional[bool] = None, where: str = "config.json") -> ModelConfig:
    """Our ModelConfig for an HF config.json. Non-architecture keys (dtype, implementation, MoE
    dispatcher, dropout, max_seq_length: a run setting) are kept from ``base``. ``has_qkv_bias``: whether
    the checkpoint holds q/k/v biases (None: the family's convention)."""
    family = family_of(hf_cfg, where)
    base = base or ModelConfig()
    _require(hf_cfg, where, "hidden_act", lambda v: v == "silu", "only SwiGLU MLPs ('silu')")
    _require(hf_cfg, where, "use_sliding_window", lambda v: not v, "sliding-window attention")
    _require(hf_cfg, where, "mlp_bias", lambda v: not v, "biases on MLP projections")
    if family.model_type == "llama" and hf_cfg.get("attention_bias"):
        raise UnsupportedHFFeature(f"{where}: attention_bias = true is not supported (megatron has no o_proj bias "
                                   "without biases on every linear)")
    if family.model_type == "mixtral":
        _require(hf_cfg, where, "sliding_window", lambda v: v is None, "sliding-window attention")
    heads, hidden = hf_cfg["num_attention_heads"], hf_cfg["hidden_size"]
    if hf_cfg.get("head_dim") not in (None, hidden // heads):
        raise UnsupportedHFFeature(f"{where}: head_dim = {hf_cfg['head_dim']} differs from hidden_size / "
                                   f"num_attention_heads = {hidden // heads}")
    theta, rope_factor = _rope(hf_cfg, where)
    arch = dict(
        num_layers=hf_cfg["num_hidden_layers"], hidden_size=hidden, ffn_hidden_size=hf_cfg["intermediate_size"],
        num_attention_heads=heads, num_query_groups=hf_cfg.get("num_key_value_heads", heads),
        vocab_size=hf_cfg["vocab_size"], rotary_base=theta, rope_scaling_factor=rope_factor,
        norm_eps=hf_cfg.get("rms_norm_eps", 1e-6),
        # Missing means equal to transformers' base default (True): save_pretrained writes a diff.
        tie_embeddings=bool(hf_cfg.get("tie_word_embeddings", True)),
        add_qkv_bias=family.model_type in ("qwen2", "qwen2_moe") if has_qkv_bias is None else has_qkv_bias,
        num_moe_experts=None, moe_shared_expert_intermediate_size=None, moe_shared_expert_gate=False,
        moe_router_pre_softmax=False, hf_path=None,
    )
    if family.model_type == "mixtral":
        arch.update(num_moe_experts=hf_cfg["num_local_experts"], moe_router_topk=hf_cfg["num_experts_per_tok"],
                    moe_ffn_hidden_size=hf_cfg["intermediate_size"],
                    moe_aux_loss_coeff=hf_cfg.get("router_aux_loss_coef", base.moe_aux_loss_coeff))
    elif family.model_type == "qwen2_moe":
        if hf_cfg.get("decoder_sparse_step", 1) != 1 or hf_cfg.get("mlp_only_layers"):
            raise UnsupportedHFFeature(f"{where}: decoder_sparse_step/mlp_only_layers (dense layers mixed with "
                                       "MoE layers) are not supported: every layer must be MoE")
        arch.update(num_moe_experts=hf_cfg["num_experts"], moe_router_topk=hf_cfg["num_experts_per_tok"],
                    moe_ffn_hidden_size=hf_cfg["moe_intermediate_size"],
                    moe_shared_expert_intermediate_size=hf_cfg["shared_expert_intermediate_size"] or None,
                    moe_shared_expert_gate=bool(hf_cfg["shared_expert_intermediate_size"]),
                    # Qwen2-MoE renormalises the top-k probabilities only with norm_topk_prob.
                    moe_router_pre_softmax=not hf_cfg.get("norm_topk_prob", False),
                    moe_aux_loss_coeff=hf_cfg.get("router_aux_loss_coef", base.moe_aux_loss_coeff))
    cfg = dataclasses.replace(base, **arch)
    cfg.validate()
    return cfg


def hf_config_from_model(model: ModelConfig, family: Family, dtype: str, template: Optional[dict] = None) -> dict:
    """config.json for an export: the imported one (``template``) with the architecture keys ours
    determines rewritten, or a fresh one."""
    cfg = dict(template or {})
    cfg.update(
        architectures=[family.architecture], model_type=family.model_type, hidden_act="silu",
        num_hidden_layers=model.num_layers, hidden_size=model.hidden_size,
        intermediate_size=model.ffn_hidden_size, num_attention_heads=model.num_attention_heads,
        num_key_value_heads=model.num_query_groups or model.num_attention_heads, vocab_size=model.vocab_size,
        max_position_embeddings=cfg.get("max_position_embeddings", model.max_seq_length),
        rms_norm_eps=model.norm_eps, tie_word_embeddings=model.tie_embeddings, dtype=dtype,
    )
    cfg.pop("torch_dtype", None)
    rope = {"rope_theta": model.rotary_base, "rope_type": "default"}
    if model.rope_scaling_factor is not None:
        rope.update(rope_type="llama3", factor=model.rope_scaling_factor, low_freq_factor=1.0,
                    high_freq_factor=4.0, original_max_position_embeddings=8192)
    cfg.pop("rope_scaling", None)
    cfg.update(rope_parameters=rope, rope_theta=model.rotary_base)
    if family.model_type == "mixtral":
        cfg.update(num_local_experts=model.num_moe_experts, num_experts_per_tok=model.moe_router_topk)
    elif family.model_type == "qwen2_moe":
        cfg.update(num_experts=model.num_moe_experts, num_experts_per_tok=model.moe_router_topk,
                   moe_intermediate_size=model.moe_ffn_hidden_size or model.ffn_hidden_size,
                   shared_expert_intermediate_size=model.moe_shared_expert_intermediate_size or 0,
                   norm_topk_prob=not model.moe_router_pre_softmax, decoder_sparse_step=1, mlp_only_layers=[])
    return cfg


def family_for_model(model: ModelConfig) -> Family:
    """The family an export writes when no imported config.json says which."""
    if model.is_moe:
        family = FAMILIES["qwen2_moe" if model.moe_shared_expert_intermediate_size or model.add_qkv_bias
                          or model.moe_router_pre_softmax else "mixtral"]
    else:
        family = FAMILIES["qwen2" if model.add_qkv_bias else "llama"]
    check_exportable(model, family)
    return family


def check_exportable(model: ModelConfig, family: Family) -> None:
    """Refuse an export the family's HF model would not run as ours does."""
    problems = []
    if model.is_moe != (family.moe_prefix is not None):
        problems.append("MoE" if model.is_moe else "a dense MLP")
    if model.add_qkv_bias and family.model_type in ("llama", "mixtral"):
        problems.append("Q/K/V biases (add_qkv_bias)")
    if not model.add_qkv_bias and family.model_type in ("qwen2", "qwen2_moe"):
        problems.append("no Q/K/V biases")
    if family.model_type == "mixtral" and (model.moe_shared_expert_intermediate_size or model.moe_router_pre_softmax):
        problems.append("a shared expert or pre-softmax routing")
    if family.model_type == "qwen2_moe" and bool(model.moe_shared_expert_intermediate_size) != model.moe_shared_expert_gate:
        problems.append("a shared expert without its sigmoid gate (or a gate without one)")
    if problems:
        raise UnsupportedHFFeature(f"the model cannot be written as HF {family.model_type!r}: it has "
                                   + "; ".join(problems))
