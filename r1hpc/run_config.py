"""The root of a run's configuration: one section per component, each owned by that component.

It imports every component's config, so only the entry points at the top import it (the CLI, the
pipeline, the launchers); components take the sections they need as arguments."""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import ClassVar, Optional

from r1hpc.algo.loss import AlgoConfig
from r1hpc.checkpoint.config import CheckpointConfig
from r1hpc.config import ConfigError, load_config
from r1hpc.data.config import DataConfig
from r1hpc.data.rejection import RejectionConfig
from r1hpc.disagg.config import DisaggConfig, check_disagg
from r1hpc.distributed import ParallelConfig, check_layout
from r1hpc.eval.heldout import EvalConfig
from r1hpc.model.config import ModelConfig
from r1hpc.model.routing_replay import RoutingReplayConfig
from r1hpc.monitor.monitor import MonitorConfig
from r1hpc.pipeline.config import PipelineConfig
from r1hpc.rewards.registry import RewardsConfig
from r1hpc.rollout.generate import RolloutConfig
from r1hpc.train.grpo import GRPOConfig
from r1hpc.train.pretrain import PretrainConfig
from r1hpc.train.sft import SFTConfig


@dataclasses.dataclass
class RunSection:
    """Where the run writes and how it is seeded."""

    name: str = "run"
    output_dir: str = "runs"
    seed: int = 1234
    # megatron weights the job's model starts from instead of the base's own (pretrain.base_dir/weights):
    # a cold-start SFT or GRPO stage's output, so stages chain (r1hpc pipeline)
    init_weights: Optional[str] = None

    def validate(self) -> None:
        # the run dir is <output_dir>/<name>: a name must stay one level below output_dir
        if not self.name or self.name in (".", "..") or any(c in self.name for c in "/\\\0"):
            raise ConfigError(f"key 'name' must be a non-empty name without '/', '\\' or NUL and not '.' or '..' "
                              f"(the run dir is <output_dir>/<name>), got {self.name!r}")
        if not self.output_dir or "\0" in self.output_dir:
            raise ConfigError(f"key 'output_dir' must be a non-empty path, got {self.output_dir!r}")


@dataclasses.dataclass
class RunConfig:
    RENAMED_KEYS: ClassVar[dict[str, tuple[str, str]]] = {
        "optim": ("grpo.optim", "each training stage has its own: pretrain.optim, sft.optim, grpo.optim")}

    run: RunSection = dataclasses.field(default_factory=RunSection)
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    parallel: ParallelConfig = dataclasses.field(default_factory=ParallelConfig)
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    pretrain: PretrainConfig = dataclasses.field(default_factory=PretrainConfig)
    rollout: RolloutConfig = dataclasses.field(default_factory=RolloutConfig)
    algo: AlgoConfig = dataclasses.field(default_factory=AlgoConfig)
    rewards: RewardsConfig = dataclasses.field(default_factory=RewardsConfig)
    grpo: GRPOConfig = dataclasses.field(default_factory=GRPOConfig)
    sft: SFTConfig = dataclasses.field(default_factory=SFTConfig)
    eval: EvalConfig = dataclasses.field(default_factory=EvalConfig)
    monitor: MonitorConfig = dataclasses.field(default_factory=MonitorConfig)
    checkpoint: CheckpointConfig = dataclasses.field(default_factory=CheckpointConfig)
    pipeline: PipelineConfig = dataclasses.field(default_factory=PipelineConfig)
    rejection: RejectionConfig = dataclasses.field(default_factory=RejectionConfig)
    disagg: DisaggConfig = dataclasses.field(default_factory=DisaggConfig)
    routing: RoutingReplayConfig = dataclasses.field(default_factory=RoutingReplayConfig)

    def validate(self) -> None:
        check_layout(self.parallel, self.model)
        if self.algo.max_response_len != self.rollout.max_new_tokens and self.algo.overlong_buffer_len:
            raise ConfigError("algo.max_response_len must equal rollout.max_new_tokens when overlong shaping is on")
        self.algo = self.algo.with_sampling_temperature(self.rollout.temperature)
        if self.algo.temperature != self.rollout.temperature and self.rollout.temperature > 0 and not self.algo.corrects_rollout:
            raise ConfigError(f"algo.temperature ({self.algo.temperature}) differs from rollout.temperature "
                              f"({self.rollout.temperature}): the trainer would score another policy than the one "
                              "that sampled. Leave algo.temperature unset (it follows the rollout), or set "
                              "algo.tis_cap (or algo.mis_low / mis_high) to correct the gap with importance weights")
        if self.disagg.enabled:
            check_disagg(self)


def load_run_config(path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """A run's config: ``path`` (YAML; None for the defaults) with ``section.key=value`` overrides."""
    return load_config(path, overrides, cls=RunConfig)
