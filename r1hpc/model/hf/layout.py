"""How each megatron-core parameter relates to HF tensors: its role, its tensor-parallel split, and
megatron's fused layouts.

megatron fuses Q, K and V into ``linear_qkv`` *interleaved per query group*: for each KV head g the
rows are [the q heads of group g, k_g, v_g], and tensor parallelism gives each rank a contiguous
block of whole groups. SwiGLU's ``linear_fc1`` stacks [gate; up], but each TP rank holds
[gate_r; up_r] (its own slice of both), so the full tensor is not the concatenation of the shards.
Vocabulary-parallel embeddings and output layers are padded (rows past the HF vocabulary are zero).
"""
from __future__ import annotations

import dataclasses
import re
from typing import Callable, Optional

import torch

from r1hpc.model.config import ModelConfig

# How a parameter is split over tensor-parallel ranks.
REPLICATED, ROWS, COLS, QKV, GLU, VOCAB = "replicated", "rows", "cols", "qkv", "glu", "vocab"


@dataclasses.dataclass(frozen=True)
class ParamSpec:
    role: tuple  # ("qkv_w", layer) etc.; see families.Family.hf_names
    split: str

    @property
    def is_expert(self) -> bool:
        return self.role[0].startswith("expert_")


# megatron suffix (inside decoder.layers.N.) -> (role kind, split). Both the local spec's names and
# Transformer Engine's (norms fused into the following linear) are listed.
_LAYER_PARAMS = {
    "input_layernorm.weight": ("attn_norm", REPLICATED),
    "self_attention.linear_qkv.layer_norm_weight": ("attn_norm", REPLICATED),
    "self_attention.linear_qkv.weight": ("qkv_w", QKV),
    "self_attention.linear_qkv.bias": ("qkv_b", QKV),
    "self_attention.linear_proj.weight": ("o_w", COLS),
    "pre_mlp_layernorm.weight": ("mlp_norm", REPLICATED),
    "mlp.linear_fc1.layer_norm_weight": ("mlp_norm", REPLICATED),
    "mlp.linear_fc1.weight": ("fc1", GLU),
    "mlp.linear_fc2.weight": ("fc2", COLS),
    "mlp.router.weight": ("router", REPLICATED),
    "mlp.shared_experts.linear_fc1.weight": ("shared_fc1", GLU),
    "mlp.shared_experts.linear_fc2.weight": ("shared_fc2", COLS),
    "mlp.shared_experts.gate_weight": ("shared_gate", REPLICATED),
}
_EXPERT = re.compile(r"mlp\.experts\.local_experts\.(\d+)\.(linear_fc1|linear_fc2)\.weight")
_TOP_PARAMS = {
    "embedding.word_embeddings.weight": (("embed",), VOCAB),
    "decoder.final_layernorm.weight": (("final_norm",), REPLICATED),
    "output_layer.weight": (("lm_head",), VOCAB),
}
_LAYER_NAME = re.compile(r"decoder\.layers\.(\d+)\.(.+)")


def param_spec(name: str, layer_offset: int, expert_offset: int) -> ParamSpec:
    """Role of a local megatron parameter. ``layer_offset``: global index of this stage's first layer;
    ``expert_offset``: global index of this EP rank's first expert."""
    if name in _TOP_PARAMS:
        role, split = _TOP_PARAMS[name]
        return ParamSpec(role, split)
    m = _LAYER_NAME.fullmatch(name)
    if m:
        layer, rest = layer_offset + int(m.group(1)), m.group(2)
        if rest in _LAYER_PARAMS:
            kind, split = _LAYER_PARAMS[rest]
            return ParamSpec((kind, layer), split)
        e = _EXPERT.fullmatch(rest)
        if e:
            fc1 = e.group(2) == "linear_fc1"
            return ParamSpec(("expert_fc1" if fc1 else "expert_fc2", layer, expert_offset + int(e.group(1))),
                             GLU if fc1 else COLS)
    raise KeyError(f"megatron parameter {name!r} has no Hugging Face counterpart in r1hpc.model.hf.layout")


# ---- import: the rows/columns of HF tensors one TP rank needs -------------------------------------

Reader = Callable[[str, Optional[slice], Optional[slice]], torch.Tensor]  # (name, rows, cols) -> tensor


def qkv_group_rows(model: ModelConfig, rank: int, size: int) -> list[tuple[str, int, int]]:
    """(which of q/k/v, first row, end row) in HF order for TP rank ``rank``: megatron's per-group
    interleave of this rank's query groups."""
    heads, groups = model.num_attention_heads, model.num_query_groups or model.num_attention_heads
    hd, per_group = model.hidden_size // heads, heads // groups
    local = groups // size
    out = []
    for g in range(rank * local, (rank + 1) * local):
        out += [("q", g * per_group * hd, (g + 1) * per_group * hd), ("k", g * hd, (g + 1) * hd),
                ("v", g * hd, (g + 1) * hd)]
    return out


def read_shard(spec: ParamSpec, hf_names: list[str], read: Reader, model: ModelConfig, rank: int, size: int,
               shape: torch.Size) -> torch.Tensor:
    """This rank's shard of a megatron parameter of local ``shape``, reading only the slices it needs."""
    if spec.split == REPLICATED:
        return read(hf_names[0], None, None)
    if spec.split == ROWS:
        n = shape[0]
        return read(hf_names[0], slice(rank * n, (rank + 1) * n), None)
    if spec.split == COLS:
        n = shape[1]
        return read(hf_names[0], None, slice(rank * n, (rank + 1) * n))
    if spec.split == GLU:
        n = shape[0] // 2
        return torch.cat([read(name, slice(rank * n, (rank + 1) * n), None) for name in hf_names])
    if spec.split == QKV:
        by = dict(zip("qkv", hf_names))
        return torch.cat([read(by[which], slice(a, b), None) for which, a, b in qkv_group_rows(model, rank, size)])
    if spec.split == VOCAB:
        n, start = shape[0], rank * shape[0]
        stop = min(start + n, model.vocab_size)
        out = torch.zeros(shape, dtype=torch.float32)
        if stop > start:
            out[: stop - start] = read(hf_names[0], slice(start, stop), None)
        return out
    raise ValueError(f"unknown split {spec.split!r}")


# ---- export: HF tensors from the shards of every TP rank ----------------------------------------

def merge_shards(spec: ParamSpec, hf_names: list[str], shards: list[torch.Tensor], model: ModelConfig) -> dict:
    """{hf name: full tensor} from the TP shards of one megatron parameter (rank order)."""
    if spec.split == REPLICATED:
        return {hf_names[0]: shards[0]}
    if spec.split == ROWS:
        return {hf_names[0]: torch.cat(shards)}
    if spec.split == COLS:
        return {hf_names[0]: torch.cat(shards, dim=1)}
    if spec.split == GLU:
        halves = [s.chunk(2) for s in shards]
        return {name: torch.cat([h[i] for h in halves]) for i, name in enumerate(hf_names)}
    if spec.split == QKV:
        parts: dict[str, list] = {"q": [], "k": [], "v": []}
        for rank, shard in enumerate(shards):
            row = 0
            for which, a, b in qkv_group_rows(model, rank, len(shards)):
                parts[which].append(shard[row: row + b - a])
                row += b - a
        return {name: torch.cat(parts[which]) for which, name in zip("qkv", hf_names)}
    if spec.split == VOCAB:
        return {hf_names[0]: torch.cat(shards)[: model.vocab_size]}
    raise ValueError(f"unknown split {spec.split!r}")


# ---- the whole model, rank independent (export order, header shapes, completeness checks) -------

def global_plan(model: ModelConfig) -> list[ParamSpec]:
    """Every megatron parameter of the full model as a role, in export order (tied output excluded)."""
    plan = [ParamSpec(("embed",), VOCAB)]
    for layer in range(model.num_layers):
        plan += [ParamSpec(("attn_norm", layer), REPLICATED), ParamSpec(("qkv_w", layer), QKV)]
        if model.add_qkv_bias:
            plan.append(ParamSpec(("qkv_b", layer), QKV))
        plan += [ParamSpec(("o_w", layer), COLS), ParamSpec(("mlp_norm", layer), REPLICATED)]
        if not model.is_moe:
            plan += [ParamSpec(("fc1", layer), GLU), ParamSpec(("fc2", layer), COLS)]
            continue
        plan.append(ParamSpec(("router", layer), REPLICATED))
        for e in range(model.num_moe_experts):
            plan += [ParamSpec(("expert_fc1", layer, e), GLU), ParamSpec(("expert_fc2", layer, e), COLS)]
        if model.moe_shared_expert_intermediate_size:
            plan += [ParamSpec(("shared_fc1", layer), GLU), ParamSpec(("shared_fc2", layer), COLS)]
            if model.moe_shared_expert_gate:
                plan.append(ParamSpec(("shared_gate", layer), REPLICATED))
    plan.append(ParamSpec(("final_norm",), REPLICATED))
    if not model.tie_embeddings:
        plan.append(ParamSpec(("lm_head",), VOCAB))
    return plan


def hf_shapes(role: tuple, model: ModelConfig) -> list[tuple]:
    """Shapes of the HF tensors of a role (same order as Family.hf_names)."""
    h, kind = model.hidden_size, role[0]
    hd = h // model.num_attention_heads
    kv = (model.num_query_groups or model.num_attention_heads) * hd
    moe_f = model.moe_ffn_hidden_size or model.ffn_hidden_size
    shared_f = model.moe_shared_expert_intermediate_size
    return {
        "embed": [(model.vocab_size, h)], "lm_head": [(model.vocab_size, h)], "final_norm": [(h,)],
        "attn_norm": [(h,)], "mlp_norm": [(h,)],
        "qkv_w": [(h, h), (kv, h), (kv, h)], "qkv_b": [(h,), (kv,), (kv,)], "o_w": [(h, h)],
        "fc1": [(model.ffn_hidden_size, h)] * 2, "fc2": [(h, model.ffn_hidden_size)],
        "router": [(model.num_moe_experts, h)],
        "expert_fc1": [(moe_f, h)] * 2, "expert_fc2": [(h, moe_f)],
        "shared_fc1": [(shared_f, h)] * 2, "shared_fc2": [(h, shared_f)], "shared_gate": [(1, h)],
    }[kind]
