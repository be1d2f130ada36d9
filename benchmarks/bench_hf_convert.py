"""Benchmark HF <-> megatron conversion: seconds and MB/s for import (sliced safetensors reads into a
megatron GPT) and export (streamed safetensors write), plus the process's peak RSS, on a randomly
initialised Llama-shaped checkpoint written locally (nothing is downloaded).

  python benchmarks/bench_hf_convert.py                 # ~125M parameters (SmolLM2-135M's shape), fp32
  python benchmarks/bench_hf_convert.py --layers 2 --out /tmp/check.json   # quick plumbing check
Results go to benchmarks/results/hf_convert_<device>.json with the device named. Measure on an
idle machine: a figure taken under load is wrong.
"""
from __future__ import annotations

import argparse
import json
import platform
import resource
import tempfile
import time
from pathlib import Path

import torch


def write_checkpoint(path: Path, args) -> int:
    """A random Llama checkpoint with SmolLM2-135M's shape (width 576, 9 heads, 3 KV heads)."""
    from r1hpc.model.hf.families import FAMILIES, hf_config_from_model, model_config_from_hf
    from r1hpc.model.hf.layout import global_plan, hf_shapes
    from r1hpc.model.hf.safetensors_io import StreamingWriter

    hf_cfg = {"model_type": "llama", "hidden_size": 576, "intermediate_size": 1536, "num_attention_heads": 9,
              "num_key_value_heads": 3, "num_hidden_layers": args.layers, "vocab_size": 49152,
              "rms_norm_eps": 1e-5, "rope_theta": 100000.0, "tie_word_embeddings": True, "hidden_act": "silu"}
    model = model_config_from_hf(hf_cfg)
    family = FAMILIES["llama"]
    plan = [(n, s, torch.float32) for spec in global_plan(model)
            for n, s in zip(family.hf_names(spec.role), hf_shapes(spec.role, model))]
    writer = StreamingWriter(path, plan)
    g = torch.Generator().manual_seed(0)
    for name, shape, dtype in plan:
        writer.write(name, torch.randn(shape, generator=g, dtype=dtype) * 0.02)
    writer.finish()
    (path / "config.json").write_text(json.dumps(hf_config_from_model(model, family, "float32", hf_cfg)))
    return writer.total_bytes


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--layers", type=int, default=30)
    parser.add_argument("--out", help="result file (default benchmarks/results/hf_convert_<cpu|gpu>.json)")
    args = parser.parse_args()
    from r1hpc.distributed import ParallelConfig, destroy_distributed, init_distributed
    from r1hpc.model.hf.exporter import export_hf_weights
    from r1hpc.model.hf.importer import hf_model_config, load_hf_weights
    from r1hpc.model.provider import build_model

    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp, "src"), Path(tmp, "dst")
        nbytes = write_checkpoint(src, args)
        model = hf_model_config(src)
        parallel = ParallelConfig()
        init_distributed(parallel, model)
        chunk = build_model(model, parallel)
        t0 = time.perf_counter()
        load_hf_weights(chunk, src, model)
        t1 = time.perf_counter()
        export_hf_weights(chunk, model, dst)
        t2 = time.perf_counter()
        destroy_distributed()
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"cpu ({platform.processor() or 'cpu'})"
    result = {"device": device, "layers": args.layers, "checkpoint_mb": nbytes / 2**20,
              "import_s": t1 - t0, "import_mb_s": nbytes / 2**20 / (t1 - t0),
              "export_s": t2 - t1, "export_mb_s": nbytes / 2**20 / (t2 - t1),
              "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    print(json.dumps(result, indent=2))
    out = Path(args.out or Path(__file__).parent / "results" /
               f"hf_convert_{'gpu' if torch.cuda.is_available() else 'cpu'}.json")
    out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
