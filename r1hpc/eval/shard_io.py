"""The output folder of a sharded job (``r1hpc eval|rollout|evaluate --shard i/n --out DIR``): one
file per array task, ``merged.json`` once ``r1hpc merge`` joined them. Below both the sharded
rollout/eval (:mod:`r1hpc.eval.shards`) and ``r1hpc evaluate`` (:mod:`r1hpc.eval.benchmarks`), which
write these files, and rejection sampling, which reads the merged one."""
from __future__ import annotations

import json
import os
from pathlib import Path

MERGED = "merged.json"


def shard_path(out_dir: Path, i: int, n: int) -> Path:
    return Path(out_dir) / f"shard-{i:05d}-of-{n:05d}.json"


def write_json_atomic(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(obj, indent=1))
    os.replace(tmp, path)
