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
    root = pipeline_root(cfg)
    base_dir = cfg.pretrain.base_dir or str(root / "base")
    common = [*overrides, f"run.output_dir={root}", f"pretrain.base_dir={base_dir}"]
    stages: list[Stage] = []
    evaluated: list[str] = []

    def add(name: str, command: str, extra: list[str], after: Optional[str], *, job_overrides: list[str],
            shards: int = 0, out: Optional[str] = None) -> str:
        stages.append(Stage(name, command, config_path, job_overrides, resources,
                            after=[after] if after else [], shards=shards, out=out, extra_args=extra))
        return name

    def stage_overrides(stage: str, formatted: bool) -> list[str]:
        return [*common, *([COLD_START_STYLE] if formatted else []), f"run.name={stage}",
                *p.stage_overrides.get(stage, [])]

    def evaluate(model: Model) -> None:
        if p.evaluate:
            evaluated.append(add(f"eval_{model.stage}", "evaluate", ["--weights", model.weights], model.stage,
                                 job_overrides=[*model.overrides, *ONE_RANK], shards=p.shards,
                                 out=str(root / "eval" / model.stage)))

    def sample_and_filter(stage: str, model: Model, prompts: int, k: int, after: str) -> tuple[str, str]:
        """A job array sampling k responses per prompt from ``model``, then the rejection filter."""
        job = [*model.overrides, *ONE_RANK, f"eval.num_problems={prompts}", f"rollout.group_size={k}"]
        sampling, filtering = rejection_stages(config_path, job, model.weights, root / stage, p.shards, resources,
                                               after=[after], name=stage)
        stages.extend([sampling, filtering])
        return filtering.name, str(dataset_path(root / stage))

    formatted = False  # responses in the cold-start form from the cold-start SFT on
    last = add("base", "pretrain", [], None, job_overrides=stage_overrides("base", formatted))
    base = current = Model("base", p.start_weights or str(Path(base_dir) / "weights"), stage_overrides("base", formatted))
    evaluate(base)
    for stage in p.stages:
        if stage == "cold_start":
            data = str(dataset_path(root / "cold_start_data"))
            last = add("cold_start_data", "cold-start", ["--out", data, "--n", str(p.cold_start_examples)], last,
                       job_overrides=stage_overrides(stage, formatted))
            formatted = True
            last = add(stage, "sft", [], last, job_overrides=[*stage_overrides(stage, formatted), f"sft.data=[{data}]",
                                                              f"run.init_weights={current.weights}"])
            current = Model(stage, str(root / stage / "weights"), stage_overrides(stage, formatted))
        elif stage in ("reasoning_rl", "all_scenarios_rl"):
            last = add(stage, "train", [], last,
                       job_overrides=[*stage_overrides(stage, formatted), f"run.init_weights={current.weights}"])
            current = Model(stage, str(root / stage / "checkpoints"), stage_overrides(stage, formatted))
        elif stage == "rejection_sft":
            last, data = sample_and_filter("rejection", current, p.rejection_prompts, p.rejection_samples, last)
            # R1 fine-tunes the base (DeepSeek-V3-Base), not the RL checkpoint, on the rejection-sampled data
            init = [] if p.rejection_sft_init == "base" else [f"run.init_weights={current.weights}"]
            last = add(stage, "sft", [], last,
                       job_overrides=[*stage_overrides(stage, formatted), f"sft.data=[{data}]", *init])
            current = Model(stage, str(root / stage / "weights"), stage_overrides(stage, formatted))
        elif stage == "distill":
            last, data = sample_and_filter("distill", current, p.distill_prompts, p.distill_samples, last)
            student = [f"pretrain.base_dir={root / 'student_base'}", *p.student]
            load_run_config(config_path, [*common, *student])  # a bad student fails now, not hours into the chain
            last = add("student_base", "pretrain", [], last,
                       job_overrides=[*stage_overrides("student_base", formatted), *student])
            last = add(stage, "sft", [], last,
                       job_overrides=[*stage_overrides(stage, formatted), *student, f"sft.data=[{data}]"])
            current = Model(stage, str(root / stage / "weights"), [*stage_overrides(stage, formatted), *student])
        evaluate(current)
    stages.append(Stage("report", "pipeline-report", config_path, list(overrides), resources,
                        after=evaluated or [last]))
    return stages
