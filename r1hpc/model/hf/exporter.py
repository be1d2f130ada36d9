"""Write a megatron GPT (any TP/PP/EP layout) as an HF safetensors checkpoint, one tensor at a time.

Rank 0 writes. For each parameter of the full model, in a fixed order every rank knows, the ranks
that hold its canonical copy (data-parallel replica 0; TP rank 0 for replicated tensors) send their
shard to rank 0, which merges the TP shards, splits megatron's fused tensors into HF ones and
appends them to the open safetensors file. Rank 0 holds one full tensor at a time.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import torch

from r1hpc.model.config import ModelConfig
from r1hpc.model.hf.families import Family, check_exportable, family_for_model, family_of, hf_config_from_model
from r1hpc.model.hf.importer import ASSETS_DIR, META_FILE, WEIGHTS_DIR, copy_assets, local_param_specs, tp_coords
from r1hpc.model.hf.layout import REPLICATED, global_plan, hf_shapes, merge_shards
from r1hpc.model.hf.safetensors_io import StreamingWriter

_DTYPE_NAMES = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}


def _canonical_owner(spec) -> bool:
    from megatron.core import parallel_state as ps

    replica0 = (ps.get_expert_data_parallel_rank() == 0 if spec.is_expert
                else ps.get_data_parallel_rank(with_context_parallel=True) == 0)
    return replica0 and (spec.split != REPLICATED or tp_coords(spec)[0] == 0)


def _owned_shards(chunks, model: ModelConfig) -> dict:
    """{role: (tp rank, parameter)} for the canonical copies this rank must send."""
    owned = {}
    for param, spec in local_param_specs(chunks):
        if spec.role == ("lm_head",) and model.tie_embeddings:
            continue
        if _canonical_owner(spec):
            owned[spec.role] = (tp_coords(spec)[0], param)
    return owned


@torch.no_grad()
def export_hf_weights(chunks, model: ModelConfig, out_dir: str | Path, *, family: Optional[Family] = None,
                      dtype: Optional[torch.dtype] = None, max_shard_bytes: int = 5 * 2**30) -> None:
    """Collective: write the model's weights as safetensors into ``out_dir`` (rank 0 writes)."""
    family = family or family_for_model(model)
    check_exportable(model, family)
    rank = torch.distributed.get_rank()
    owned = _owned_shards(chunks, model)
    table: list = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(
        table, {role: (tp, tuple(p.shape), p.dtype) for role, (tp, p) in owned.items()})
    plan = global_plan(model)
    param_dtype = next(iter(owned.values()))[1].dtype if owned else torch.float32
    dtype = dtype or param_dtype
    writer = None
    if rank == 0:
        writer = StreamingWriter(out_dir, [(n, s, dtype) for spec in plan for n, s in
                                           zip(family.hf_names(spec.role), hf_shapes(spec.role, model))],
                                 max_shard_bytes=max_shard_bytes)
    device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    for spec in plan:
        holders = sorted((entry[spec.role][0], src) for src, entry in enumerate(table) if spec.role in entry)
        if rank != 0:
            if spec.role in owned:
                torch.distributed.send(owned[spec.role][1].detach().to(device).contiguous(), dst=0)
            continue
        shards = []
        for tp, src in holders:
            if src == 0:
                shards.append(owned[spec.role][1].detach())
                continue
            _, shape, pdtype = table[src][spec.role]
            buf = torch.empty(shape, dtype=pdtype, device=device)
            torch.distributed.recv(buf, src=src)
            shards.append(buf)
        if [tp for tp, _ in holders] != list(range(len(holders))) or not holders:
            raise RuntimeError(f"export: no complete set of tensor-parallel shards for {spec.role}: {holders}")
        for name, tensor in merge_shards(spec, family.hf_names(spec.role), shards, model).items():
            writer.write(name, tensor.to(dtype))
    if rank == 0:
        writer.finish()
    torch.distributed.barrier()


def export_hf_checkpoint(in_dir: str | Path, out_dir: str | Path, parallel, dtype: Optional[str] = None) -> dict:
    """Collective: a converted (or trained) megatron checkpoint folder -> an HF folder that
    ``transformers`` loads: safetensors, config.json, and the tokenizer files that came with it."""
    from r1hpc.config import ConfigError, from_dict
    from r1hpc.distributed import init_distributed
    from r1hpc.model.provider import build_model
    from r1hpc.model.weights import load_model_weights

    in_dir, out_dir = Path(in_dir), Path(out_dir)
    meta_path = in_dir / META_FILE
    if not meta_path.is_file():
        raise ConfigError(f"{meta_path}: no such file (megatron-to-hf reads a folder written by "
                          "`r1hpc convert hf-to-megatron`: weights/, convert.json, hf_assets/)")
    meta = json.loads(meta_path.read_text())
    model = from_dict(ModelConfig, meta["model"], source=str(meta_path))
    init_distributed(parallel, model)
    chunk = build_model(model, parallel)
    load_model_weights(chunk, in_dir / WEIGHTS_DIR)
    assets = in_dir / ASSETS_DIR
    template = json.loads((assets / "config.json").read_text()) if (assets / "config.json").is_file() else None
    family = family_of(template) if template else family_for_model(model)
    torch_dtype = {"bf16": torch.bfloat16, "fp32": torch.float32, None: None}[dtype]
    export_hf_weights(chunk, model, out_dir, family=family, dtype=torch_dtype)
    if torch.distributed.get_rank() == 0:
        if assets.is_dir():
            copy_assets(assets, out_dir, skip=("config.json",))
        written = torch_dtype or next(chunk.parameters()).dtype
        hf_cfg = hf_config_from_model(model, family, _DTYPE_NAMES[written], template)
        (out_dir / "config.json").write_text(json.dumps(hf_cfg, indent=2) + "\n")
    torch.distributed.barrier()
    return {"family": family.model_type, "out_dir": str(out_dir)}
