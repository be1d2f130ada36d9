"""The ``pipeline`` section of a recipe: which R1 stages run and how much data each makes."""
from __future__ import annotations

import dataclasses
from typing import Literal, Optional

from r1hpc.config import ConfigError

# DeepSeek-R1's order (paper section 2.3-2.4); any subsequence may run
STAGES = ("cold_start", "reasoning_rl", "rejection_sft", "all_scenarios_rl", "distill")


@dataclasses.dataclass
class PipelineConfig:
    """``stages`` run in R1's order, each starting from the model the one before produced (the
    rejection-sampling SFT starts from the base, as R1 fine-tunes DeepSeek-V3-Base on that data).
    ``stage_overrides`` are ``section.key=value`` overrides for one stage's jobs (e.g.
    ``reasoning_rl: [grpo.steps=2000]``); ``student`` are the overrides that turn the recipe into the
    distillation student (a smaller dense ``model.*``; its own base is pretrained or converted)."""

    stages: list[str] = dataclasses.field(default_factory=lambda: list(STAGES))
    # weights the first stage starts from instead of the base's, e.g. a finished pipeline's RL
    # checkpoints (a checkpoints/ folder means its latest) to distill into another student
    start_weights: Optional[str] = None
    cold_start_examples: int = 1000
    rejection_prompts: int = 256  # prompts sampled by the rejection-sampling stage
    rejection_samples: int = 4  # samples per prompt (k)
    distill_prompts: int = 256  # prompts the teacher answers for the student
    distill_samples: int = 2
    shards: int = 2  # job-array tasks of each sampling and evaluation stage
    # what the rejection-sampling SFT fine-tunes: "base" as R1 (DeepSeek-V3-Base on 800k samples), or
    # "previous", the reasoning-RL model, when the rejection data is too small to rebuild a model
    rejection_sft_init: Literal["base", "previous"] = "base"
    evaluate: bool = True  # `r1hpc evaluate` after every stage that makes a model
    stage_overrides: dict[str, list[str]] = dataclasses.field(default_factory=dict)
    student: list[str] = dataclasses.field(default_factory=list)

    def validate(self) -> None:
        unknown = [s for s in self.stages if s not in STAGES]
        if unknown or not self.stages:
            raise ConfigError(f"stages: unknown {unknown or 'none given'}; choose from {', '.join(STAGES)}")
        order = [STAGES.index(s) for s in self.stages]
        if order != sorted(set(order)):
            raise ConfigError(f"stages must be distinct and in R1's order ({', '.join(STAGES)}), got {self.stages}")
        bad = [s for s in self.stage_overrides if s not in STAGES]
        if bad:
            raise ConfigError(f"stage_overrides: unknown stage(s) {bad}; choose from {', '.join(STAGES)}")
        if min(self.cold_start_examples, self.rejection_prompts, self.rejection_samples, self.distill_prompts,
               self.distill_samples, self.shards) < 1:
            raise ConfigError("example, prompt, sample and shard counts must be >= 1")
