"""The R1 pipeline as launcher stages: one ``r1hpc`` job per step, each reading the files the step
before wrote, chained with ``afterok`` on Slurm or run in order here (r1hpc.launch.launcher).

    base -> [cold_start_data -> cold_start (SFT)] -> [reasoning_rl (GRPO)]
         -> [rejection_samples (array) -> rejection_filter -> rejection_sft (SFT from the base)]
         -> [all_scenarios_rl (GRPO)]
         -> [distill_samples (array, teacher) -> distill_filter -> student_base -> distill (SFT)]
    and after every stage that makes a model, eval_<stage> (``r1hpc evaluate``, an array); report last.

Every job gets the same recipe file plus overrides: the pipeline's root (``<output_dir>/<name>``)
as its output_dir, its stage name as run name, the model it starts from (``run.init_weights``)
and the stage's own ``pipeline.stage_overrides``. Paths are fixed when the chain is planned, so a
stage can name an RL run's checkpoints before they exist (``<run>/checkpoints`` = its latest).
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Optional

from r1hpc.config import ConfigError
from r1hpc.launch.launcher import Resources, Stage
from r1hpc.launch.rejection import dataset_path, rejection_stages
from r1hpc.run_config import load_run_config

COLD_START_STYLE = "rewards.format.style=cold_start"
# a job-array task is one process holding the whole model (weights reshard on load)
ONE_RANK = ["parallel.tensor_model_parallel_size=1", "parallel.pipeline_model_parallel_size=1",
            "parallel.expert_model_parallel_size=1", "parallel.context_parallel_size=1"]


@dataclasses.dataclass
class Model:
    """A model a stage produced: where its weights are and the overrides that describe it."""

    stage: str
    weights: str
    overrides: list[str]


def pipeline_root(cfg) -> Path:
    return Path(cfg.run.output_dir) / cfg.run.name


def plan(cfg, config_path: str, overrides: list[str], resources: Resources) -> list[Stage]:
    """The stages of ``cfg.pipeline`` in the order they run."""
    p = cfg.pipeline
    if "distill" in p.stages and not p.student:
        raise ConfigError("pipeline.student: the distill stage needs the student's overrides (at least its "
                          "model.* size)")
    chain = _Chain(cfg, config_path, overrides, resources)
    steps = {"cold_start": chain.cold_start, "reasoning_rl": chain.rl, "all_scenarios_rl": chain.rl,
             "rejection_sft": chain.rejection_sft, "distill": chain.distill}
    chain.base()
    for stage in p.stages:
        if stage in steps:
            steps[stage](stage)
        chain.evaluate(chain.current)
    chain.stages.append(Stage("report", "pipeline-report", config_path, list(overrides), resources,
                              after=chain.evaluated or [chain.last]))
    return chain.stages


class _Chain:
    """The stages planned so far, the last one (the next one's dependency) and the model it made."""

    def __init__(self, cfg, config_path: str, overrides: list[str], resources: Resources) -> None:
        self.p, self.config_path, self.resources = cfg.pipeline, config_path, resources
        self.root = pipeline_root(cfg)
        self.base_dir = cfg.pretrain.base_dir or str(self.root / "base")
        self.common = [*overrides, f"run.output_dir={self.root}", f"pretrain.base_dir={self.base_dir}"]
        self.stages: list[Stage] = []
        self.evaluated: list[str] = []
        self.formatted = False  # responses in the cold-start form from the cold-start SFT on
        self.last: Optional[str] = None
        self.current: Optional[Model] = None

    def add(self, name: str, command: str, extra: list[str], *, job_overrides: list[str]) -> None:
        """Appends a stage that runs after the last one and is the last one from now."""
        self.stages.append(Stage(name, command, self.config_path, job_overrides, self.resources,
                                 after=[self.last] if self.last else [], extra_args=extra))
        self.last = name

    def stage_overrides(self, stage: str) -> list[str]:
        return [*self.common, *([COLD_START_STYLE] if self.formatted else []), f"run.name={stage}",
                *self.p.stage_overrides.get(stage, [])]

    def evaluate(self, model: Model) -> None:
        if not self.p.evaluate:
            return
        name = f"eval_{model.stage}"
        self.stages.append(Stage(name, "evaluate", self.config_path, [*model.overrides, *ONE_RANK], self.resources,
                                 after=[model.stage], shards=self.p.shards, out=str(self.root / "eval" / model.stage),
                                 extra_args=["--weights", model.weights]))
        self.evaluated.append(name)

    def sample_and_filter(self, stage: str, prompts: int, k: int) -> str:
        """A job array sampling k responses per prompt from the current model, then the rejection
        filter (which becomes the last stage); returns the filtered data set's path."""
        model = self.current
        job = [*model.overrides, *ONE_RANK, f"eval.num_problems={prompts}", f"rollout.group_size={k}"]
        sampling, filtering = rejection_stages(self.config_path, job, model.weights, self.root / stage, self.p.shards,
                                               self.resources, after=[self.last], name=stage)
        self.stages.extend([sampling, filtering])
        self.last = filtering.name
        return str(dataset_path(self.root / stage))

    def made(self, stage: str, weights: str, extra: Optional[list[str]] = None) -> None:
        self.current = Model(stage, weights, [*self.stage_overrides(stage), *(extra or [])])

    def base(self) -> None:
        self.add("base", "pretrain", [], job_overrides=self.stage_overrides("base"))
        self.made("base", self.p.start_weights or str(Path(self.base_dir) / "weights"))
        self.evaluate(self.current)

    def cold_start(self, stage: str) -> None:
        data = str(dataset_path(self.root / "cold_start_data"))
        self.add("cold_start_data", "cold-start", ["--out", data, "--n", str(self.p.cold_start_examples)],
                 job_overrides=self.stage_overrides(stage))
        self.formatted = True
        self.add(stage, "sft", [], job_overrides=[*self.stage_overrides(stage), f"sft.data=[{data}]",
                                                  f"run.init_weights={self.current.weights}"])
        self.made(stage, str(self.root / stage / "weights"))

    def rl(self, stage: str) -> None:
        self.add(stage, "train", [],
                 job_overrides=[*self.stage_overrides(stage), f"run.init_weights={self.current.weights}"])
        self.made(stage, str(self.root / stage / "checkpoints"))

    def rejection_sft(self, stage: str) -> None:
        data = self.sample_and_filter("rejection", self.p.rejection_prompts, self.p.rejection_samples)
        # R1 fine-tunes the base (DeepSeek-V3-Base), not the RL checkpoint, on the rejection-sampled data
        init = [] if self.p.rejection_sft_init == "base" else [f"run.init_weights={self.current.weights}"]
        self.add(stage, "sft", [], job_overrides=[*self.stage_overrides(stage), f"sft.data=[{data}]", *init])
        self.made(stage, str(self.root / stage / "weights"))

    def distill(self, stage: str) -> None:
        data = self.sample_and_filter("distill", self.p.distill_prompts, self.p.distill_samples)
        student = [f"pretrain.base_dir={self.root / 'student_base'}", *self.p.student]
        load_run_config(self.config_path, [*self.common, *student])  # a bad student fails now, not hours into the chain
        self.add("student_base", "pretrain", [], job_overrides=[*self.stage_overrides("student_base"), *student])
        self.add(stage, "sft", [], job_overrides=[*self.stage_overrides(stage), *student, f"sft.data=[{data}]"])
        self.made(stage, str(self.root / stage / "weights"), student)
