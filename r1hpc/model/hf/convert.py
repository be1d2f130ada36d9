"""``r1hpc convert hf-to-megatron`` and ``r1hpc convert megatron-to-hf``.

One process converts at TP=PP=EP=1 (the megatron checkpoint reshards on load, so that layout is
all a stored checkpoint needs); under torchrun or srun with ``parallel.*`` overrides every rank
reads or writes only its own shards, for models that do not fit one process.
"""
from __future__ import annotations

import dataclasses
from typing import Optional

from r1hpc.distributed import ParallelConfig
from r1hpc.model.config import ModelConfig


@dataclasses.dataclass
class ConvertConfig:
    """Overrides accepted on the command line: ``parallel.<key>=`` and ``model.<key>=`` (dtype,
    implementation, MoE dispatcher; the architecture comes from config.json), and for
    megatron-to-hf the dtype the safetensors are written in (null: the model's)."""

    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    parallel: ParallelConfig = dataclasses.field(default_factory=ParallelConfig)
    export_dtype: Optional[str] = None

    def validate(self) -> None:
        from r1hpc.config import ConfigError

        if self.export_dtype not in (None, "fp32", "bf16"):
            raise ConfigError(f"key 'export_dtype' must be fp32, bf16 or null, got {self.export_dtype!r}")


def run_convert(direction: str, src: str, dst: str, overrides: list[str]) -> dict:
    from r1hpc.config import load_config
    from r1hpc.distributed import destroy_distributed

    cfg = load_config(None, overrides, cls=ConvertConfig)
    try:
        if direction == "hf-to-megatron":
            from r1hpc.model.hf.importer import import_hf_checkpoint

            meta = import_hf_checkpoint(src, dst, cfg.model, cfg.parallel)
            return {"family": meta["family"], "out_dir": dst}
        from r1hpc.model.hf.exporter import export_hf_checkpoint

        return export_hf_checkpoint(src, dst, cfg.parallel, dtype=cfg.export_dtype)
    finally:
        destroy_distributed()
