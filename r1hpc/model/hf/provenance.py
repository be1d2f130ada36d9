"""Where a converted checkpoint came from: the source files' sha256, their format and dtype, written
into ``convert.json`` so a trained model can always be traced back to the exact bytes it started from."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path


def sha256_file(path: str | Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def sidecar_path(path: str | Path) -> Path:
    """``model.gguf`` -> ``model.gguf.provenance.json``: what a fetcher knows about a file (package,
    index, hashes) travels beside it and into the conversion's provenance."""
    p = Path(path)
    return p.with_name(p.name + ".provenance.json")


def read_sidecar(path: str | Path) -> dict | None:
    side = sidecar_path(path)
    return json.loads(side.read_text()) if side.is_file() else None


def safetensors_provenance(hf_dir: str | Path, weight_files: list[str], dtypes: list[str]) -> dict:
    """An HF folder: every weight file's sha256 and the dtypes stored in them."""
    hf_dir = Path(hf_dir)
    return {"source": str(hf_dir.resolve()), "format": "safetensors",
            "sha256": {f: sha256_file(hf_dir / f) for f in weight_files}, "dtype": sorted(set(dtypes))}
