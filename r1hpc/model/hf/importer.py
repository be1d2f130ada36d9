"""Fill a megatron GPT (any TP/PP/EP layout) from an HF safetensors checkpoint, and convert one into
a megatron distributed checkpoint.

Every rank reads only the slices of the HF tensors that its own parameters hold (no communication,
no rank ever materialises a tensor it does not own, let alone the whole model).
"""
from __future__ import annotations

import dataclasses
import json
import logging
import shutil
from pathlib import Path
from typing import Iterator, Optional

import torch

from r1hpc.config import ConfigError
from r1hpc.model.config import ModelConfig
from r1hpc.model.hf.families import Family, family_of, model_config_from_hf, read_hf_config
from r1hpc.model.hf.layout import ParamSpec, global_plan, param_spec, read_shard
from r1hpc.model.hf.provenance import safetensors_provenance
from r1hpc.model.hf.safetensors_io import INDEX, SafetensorsReader
from r1hpc.model.provider import unwrap

log = logging.getLogger(__name__)

# What a converted checkpoint folder holds (readable by r1hpc.model.base.load_base: weights/).
WEIGHTS_DIR, ASSETS_DIR, META_FILE = "weights", "hf_assets", "convert.json"
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".h5", ".msgpack")
# Tensors some checkpoints carry that are recomputed, not learned.
_IGNORED = ("rotary_emb.inv_freq",)


def hf_model_config(hf_dir: str | Path, base: Optional[ModelConfig] = None) -> ModelConfig:
    """ModelConfig of an HF checkpoint folder (QKV bias read from the tensors themselves)."""
    hf_cfg = read_hf_config(hf_dir)
    with SafetensorsReader(hf_dir) as reader:
        has_bias = "model.layers.0.self_attn.q_proj.bias" in reader
    return model_config_from_hf(hf_cfg, base=base, has_qkv_bias=has_bias, where=str(Path(hf_dir) / "config.json"))


def is_converted(ckpt_dir: str | Path) -> bool:
    """Whether ``ckpt_dir`` is a folder written by ``r1hpc convert hf-to-megatron``."""
    return (Path(ckpt_dir) / META_FILE).is_file()


def converted_model_config(ckpt_dir: str | Path, base: ModelConfig) -> ModelConfig:
    """The architecture of a converted checkpoint (from the config.json it was converted from) with the
    run settings of ``base`` (dtype, implementation, dropout, max_seq_length, MoE dispatcher)."""
    ckpt_dir = Path(ckpt_dir)
    meta = json.loads((ckpt_dir / META_FILE).read_text())
    return model_config_from_hf(read_hf_config(ckpt_dir / ASSETS_DIR), base=base,
                                has_qkv_bias=meta["model"]["add_qkv_bias"], where=str(ckpt_dir / ASSETS_DIR / "config.json"))


def resolve_model_config(model: ModelConfig) -> ModelConfig:
    """``model`` itself, or with ``hf_path`` set: the architecture of that checkpoint (keeping hf_path)."""
    if not model.hf_path:
        return model
    return dataclasses.replace(hf_model_config(model.hf_path, base=model), hf_path=model.hf_path)


def local_param_specs(chunks) -> Iterator[tuple[torch.nn.Parameter, ParamSpec]]:
    """(parameter, role) for every parameter this rank holds, global layer and expert indices resolved."""
    from megatron.core import parallel_state

    for chunk in chunks if isinstance(chunks, (list, tuple)) else [chunks]:
        chunk = unwrap(chunk)
        layers = chunk.decoder.layers
        layer_offset = layers[0].layer_number - 1 if len(layers) else 0
        num_experts = chunk.config.num_moe_experts or 0
        ep = parallel_state.get_expert_model_parallel_world_size()
        expert_offset = parallel_state.get_expert_model_parallel_rank() * (num_experts // ep) if num_experts else 0
        for name, param in chunk.named_parameters():
            yield param, param_spec(name, layer_offset, expert_offset)


def tp_coords(spec: ParamSpec) -> tuple[int, int]:
    """(rank, size) of the tensor-parallel group that splits this parameter (experts have their own)."""
    from megatron.core import parallel_state as ps

    if spec.is_expert:
        return ps.get_expert_tensor_parallel_rank(), ps.get_expert_tensor_parallel_world_size()
    return ps.get_tensor_model_parallel_rank(), ps.get_tensor_model_parallel_world_size()


def hf_names_for(spec: ParamSpec, family: Family, model: ModelConfig) -> list[str]:
    # A tied output layer (on the last pipeline stage) is a copy of the input embedding.
    role = ("embed",) if spec.role == ("lm_head",) and model.tie_embeddings else spec.role
    return family.hf_names(role)


def check_tensor_names(reader: SafetensorsReader, family: Family, model: ModelConfig) -> None:
    """Every tensor the model needs is there, and nothing is left over (a left-over tensor means
    the checkpoint has a feature our config did not capture)."""
    needed = {n for spec in global_plan(model) for n in family.hf_names(spec.role)}
    have = {n for n in reader.weight_map if not n.endswith(_IGNORED)}
    if model.tie_embeddings:
        have.discard("lm_head.weight")  # some tied checkpoints store the copy anyway
    missing, extra = sorted(needed - have), sorted(have - needed)
    if missing or extra:
        raise ConfigError(f"{reader.dir}: the checkpoint does not match its config.json for family "
                          f"{family.model_type!r}: missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
                          f"unexpected {extra[:5]}{'...' if len(extra) > 5 else ''}")


@torch.no_grad()
def load_hf_weights(chunks, hf_dir: str | Path, model: ModelConfig) -> None:
    """Copy an HF checkpoint into this rank's model chunks (no collectives; call on every rank)."""
    family = family_of(read_hf_config(hf_dir), str(Path(hf_dir) / "config.json"))
    with SafetensorsReader(hf_dir) as reader:
        check_tensor_names(reader, family, model)
        for param, spec in local_param_specs(chunks):
            rank, size = tp_coords(spec)
            shard = read_shard(spec, hf_names_for(spec, family, model), reader.read, model, rank, size, param.shape)
            if shard.shape != param.shape:
                raise ConfigError(f"{hf_dir}: {spec.role} gives a shard of shape {tuple(shard.shape)}, the model "
                                  f"expects {tuple(param.shape)} (config.json disagrees with the tensors?)")
            param.copy_(shard)


def copy_assets(src: Path, dst: Path, *, skip: tuple[str, ...] = ()) -> list[str]:
    """Copy the non-weight files (config, tokenizer, generation config, chat template) of a checkpoint."""
    dst.mkdir(parents=True, exist_ok=True)
    copied = []
    for f in sorted(src.iterdir()):
        if f.is_file() and not f.name.endswith(_WEIGHT_SUFFIXES) and f.name != INDEX and f.name not in skip:
            shutil.copy2(f, dst / f.name)
            copied.append(f.name)
    return copied


def folder_provenance(hf_dir: Path) -> dict:
    with SafetensorsReader(hf_dir) as reader:
        dtypes = [reader.dtype(n) for n in reader.weight_map]
        files = reader.files
    return safetensors_provenance(hf_dir, files + ([INDEX] if (hf_dir / INDEX).is_file() else []), dtypes)


def write_run_tokenizer(assets: Path, out_dir: Path) -> Optional[str]:
    """The checkpoint's tokenizer as runs read it (``out_dir/tokenizer.json`` + tokenizer_config.json
    with the chat template inline), or None with the reason logged when the assets hold none usable."""
    from r1hpc.data.tokenizer import TextTokenizer

    if not (assets / "tokenizer.json").is_file():
        log.warning("%s: no tokenizer.json in the source; the converted checkpoint has no tokenizer", assets)
        return None
    try:
        tok = TextTokenizer.load(assets)
    except ValueError as e:
        log.warning("%s: the tokenizer is not usable for runs (%s); only hf_assets/ holds it", assets, e)
        return None
    tok.save(out_dir)
    return "tokenizer.json"


def import_hf_checkpoint(hf_dir: str | Path, out_dir: str | Path, model_base: ModelConfig, parallel,
                         provenance: Optional[dict] = None) -> dict:
    """Collective: build the model at ``parallel``'s layout, fill it from ``hf_dir`` and save a megatron
    distributed checkpoint to ``out_dir/weights`` with the HF config and tokenizer beside it.
    ``provenance``: where the weights came from when ``hf_dir`` is an intermediate (a dequantized GGUF);
    by default the folder itself (its weight files' sha256 and dtypes)."""
    from r1hpc.distributed import init_distributed
    from r1hpc.model.provider import build_model
    from r1hpc.model.weights import save_model_weights

    hf_dir, out_dir = Path(hf_dir), Path(out_dir)
    model = hf_model_config(hf_dir, base=model_base)
    init_distributed(parallel, model)
    chunk = build_model(model, parallel)
    load_hf_weights(chunk, hf_dir, model)
    save_model_weights(chunk, out_dir / WEIGHTS_DIR)
    meta = {"source": provenance["source"] if provenance else str(hf_dir.resolve()),
            "family": read_hf_config(hf_dir)["model_type"],
            "model": dataclasses.asdict(model), "parallel_at_import": dataclasses.asdict(parallel)}
    if torch.distributed.get_rank() == 0:
        meta["provenance"] = provenance or folder_provenance(hf_dir)
        meta["assets"] = copy_assets(hf_dir, out_dir / ASSETS_DIR)
        meta["tokenizer"] = write_run_tokenizer(out_dir / ASSETS_DIR, out_dir)
        (out_dir / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    torch.distributed.barrier()
    return meta
