"""GGUF files (llama.cpp's format) into a megatron checkpoint, through transformers' GGUF reader.

transformers (with the ``gguf`` package) reads the architecture, the tokenizer and the chat template
from the file's metadata, dequantizes every tensor to fp32 and undoes llama.cpp's reordering of the
Q and K rows (llama.cpp's RoPE rotates neighbouring pairs of dimensions, HF's the two halves of each
head, so its converter permutes those rows). The dequantized model is written as an HF safetensors
folder in a temporary directory and converted by the safetensors importer: the tensor mapping
lives in one place. Only the families that importer supports are accepted (GGUF Llama-architecture
files, e.g. SmolLM2, are ``llama``).
"""
from __future__ import annotations

import collections
import json
import tempfile
from pathlib import Path

from r1hpc.config import ConfigError
from r1hpc.model.config import ModelConfig
from r1hpc.model.hf.provenance import read_sidecar, sha256_file

# transformers' in-memory GGUF marker; a saved folder holds plain fp32 weights, so it must go.
_DROPPED_CONFIG_KEYS = ("quantization_config", "_name_or_path", "_model_name_or_path")


def is_gguf(path: str | Path) -> bool:
    return Path(path).is_file() and Path(path).suffix.lower() == ".gguf"


def _need(module: str, why: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise ConfigError(f"reading a GGUF file needs the {module!r} package ({why}); "
                          f"pip install -e '.[hf]' installs it") from None


def gguf_summary(path: str | Path) -> dict:
    """What the file says about itself: architecture, name, llama.cpp file type and the tensor types."""
    gguf = _need("gguf", "GGUF parser")
    reader = gguf.GGUFReader(str(path))

    def field(key: str):
        f = reader.fields.get(key)
        return f.contents() if f is not None else None

    file_type = field("general.file_type")
    try:
        file_type = gguf.LlamaFileType(file_type).name if file_type is not None else None
    except ValueError:
        pass  # a file type this gguf version does not know: keep the number
    return {"architecture": field("general.architecture"), "name": field("general.name"),
            "file_type": file_type,
            "tensor_types": dict(sorted(collections.Counter(t.tensor_type.name for t in reader.tensors).items()))}


def dequantize_to_hf(path: str | Path, out_dir: str | Path) -> None:
    """Write the GGUF model as an HF folder: fp32 safetensors, config.json, tokenizer with chat template."""
    import torch

    _need("gguf", "GGUF parser")
    _need("accelerate", "transformers loads GGUF files through it")
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path, out_dir = Path(path), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    kw = dict(gguf_file=path.name, local_files_only=True)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path.parent, **kw)
        model = AutoModelForCausalLM.from_pretrained(path.parent, dtype=torch.float32, **kw)
    except (ValueError, KeyError, NotImplementedError) as e:
        raise ConfigError(f"{path}: transformers cannot read this GGUF file: {e}") from None
    config = model.config.to_dict()
    for key in _DROPPED_CONFIG_KEYS:
        config.pop(key, None)
    config["dtype"] = "float32"
    tensors = model.state_dict()
    if config.get("tie_word_embeddings", True):
        tensors.pop("lm_head.weight", None)  # the same storage as the embedding: safetensors stores it once
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(out_dir / "model.safetensors"),
              metadata={"format": "pt"})
    (out_dir / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    tokenizer.save_pretrained(out_dir)


def gguf_provenance(path: str | Path) -> dict:
    import transformers

    gguf = _need("gguf", "GGUF parser")
    path = Path(path)
    summary = gguf_summary(path)
    prov = {"source": str(path.resolve()), "format": "gguf", "sha256": {path.name: sha256_file(path)},
            "dtype": sorted(summary["tensor_types"]), "dequantized_to": "F32", "gguf": summary,
            "dequantized_by": {"transformers": transformers.__version__,
                               "gguf": getattr(gguf, "__version__", None) or _dist_version("gguf")}}
    fetched = read_sidecar(path)
    if fetched:
        prov["fetched"] = fetched
    return prov


def _dist_version(name: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return None


def import_gguf_checkpoint(path: str | Path, out_dir: str | Path, model_base: ModelConfig, parallel) -> dict:
    """Collective: dequantize ``path`` (every rank into its own temporary folder beside ``out_dir``:
    GGUF models are small) and convert it as :func:`import_hf_checkpoint` does, with the GGUF file's
    provenance (sha256, llama.cpp file type, tensor types, fetch record) in convert.json."""
    from r1hpc.model.hf.importer import import_hf_checkpoint

    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    provenance = gguf_provenance(path)
    with tempfile.TemporaryDirectory(dir=out_dir.parent, prefix=f".{out_dir.name}.dequantized-") as tmp:
        dequantize_to_hf(path, tmp)
        return import_hf_checkpoint(tmp, out_dir, model_base, parallel, provenance=provenance)
