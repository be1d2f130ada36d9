"""The root of a run's configuration: one section per component, each owned by that component."""
from __future__ import annotations

import dataclasses

from r1hpc.config import ConfigError
from r1hpc.data.config import DataConfig
from r1hpc.distributed import ParallelConfig, check_layout
from r1hpc.model.config import ModelConfig
from r1hpc.train.engine import OptimConfig


@dataclasses.dataclass
class RunSection:
    """Where the run writes and how it is seeded."""

    name: str = "run"
    output_dir: str = "runs"
    seed: int = 1234

    def validate(self) -> None:
        if not self.name or "/" in self.name:
            raise ConfigError(f"key 'name' must be a non-empty name without '/', got {self.name!r}")


@dataclasses.dataclass
class RunConfig:
    run: RunSection = dataclasses.field(default_factory=RunSection)
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    parallel: ParallelConfig = dataclasses.field(default_factory=ParallelConfig)
    optim: OptimConfig = dataclasses.field(default_factory=OptimConfig)
    data: DataConfig = dataclasses.field(default_factory=DataConfig)

    def validate(self) -> None:
        check_layout(self.parallel, self.model)
