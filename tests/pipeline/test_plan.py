"""The pipeline's chain of jobs: order, dependencies, and which model each stage starts from."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from r1hpc.checkpoint.layout import model_weights_dir
from r1hpc.config import ConfigError
from r1hpc.launch.launcher import Resources
from r1hpc.pipeline.plan import COLD_START_STYLE, plan
from r1hpc.run_config import load_run_config

RECIPE = "configs/tiny_r1_pipeline.yaml"
CPU = Resources(nodes=1, ntasks_per_node=1, gpus_per_node=0)


def _plan(*overrides):
    cfg = load_run_config(RECIPE, list(overrides))
    return {st.name: st for st in plan(cfg, RECIPE, list(overrides), CPU)}, cfg


def _value(stage, key):
    """The last override of ``key`` a job gets (later overrides win)."""
    found = [o.split("=", 1)[1] for o in stage.overrides if o.startswith(key + "=")]
    return found[-1] if found else None


def _opt(stage, flag):
    return stage.extra_args[stage.extra_args.index(flag) + 1]


def test_full_chain_runs_in_r1_order_each_stage_starting_from_the_one_before():
    stages, _ = _plan("run.output_dir=/r")
    names = list(stages)
    assert names == ["base", "eval_base", "cold_start_data", "cold_start", "eval_cold_start", "reasoning_rl",
                     "eval_reasoning_rl", "rejection_samples", "rejection_filter", "rejection_sft",
                     "eval_rejection_sft", "all_scenarios_rl", "eval_all_scenarios_rl", "distill_samples",
                     "distill_filter", "student_base", "distill", "eval_distill", "report"]
    root = "/r/tiny_r1_pipeline"
    # each model-making stage waits for the one before it, not for its evaluation
    assert stages["cold_start"].after == ["cold_start_data"] and stages["cold_start_data"].after == ["base"]
    assert stages["reasoning_rl"].after == ["cold_start"]
    assert stages["rejection_samples"].after == ["reasoning_rl"]
    assert stages["all_scenarios_rl"].after == ["rejection_sft"]
    assert stages["report"].after == [n for n in names if n.startswith("eval_")]
    # the weights each stage starts from
    assert _value(stages["cold_start"], "run.init_weights") == f"{root}/base/weights"
    assert _value(stages["reasoning_rl"], "run.init_weights") == f"{root}/cold_start/weights"
    assert _opt(stages["rejection_samples"], "--weights") == f"{root}/reasoning_rl/checkpoints"
    assert _value(stages["rejection_sft"], "run.init_weights") == f"{root}/reasoning_rl/checkpoints"  # the recipe's
    r1_way, _ = _plan("run.output_dir=/r", "pipeline.rejection_sft_init=base")
    assert _value(r1_way["rejection_sft"], "run.init_weights") is None  # R1: the base, not the RL model
    assert _value(stages["all_scenarios_rl"], "run.init_weights") == f"{root}/rejection_sft/weights"
    assert _opt(stages["distill_samples"], "--weights") == f"{root}/all_scenarios_rl/checkpoints"
    # data files flow from the sampler through the filter into SFT
    assert _opt(stages["rejection_filter"], "--samples") == stages["rejection_samples"].out
    assert _value(stages["rejection_sft"], "sft.data") == f"[{_opt(stages['rejection_filter'], '--out')}]"
    assert _value(stages["cold_start"], "sft.data") == f"[{_opt(stages['cold_start_data'], '--out')}]"
    assert stages["rejection_samples"].shards == 2 and _value(stages["rejection_samples"], "rollout.group_size") == "4"
    # every stage after the cold start checks the cold-start form; the base does not
    assert COLD_START_STYLE not in stages["base"].overrides + stages["eval_base"].overrides
    assert all(COLD_START_STYLE in stages[n].overrides for n in names[names.index("cold_start"):-1])
    # the student: its own smaller base, SFT on the teacher's data, evaluated as itself
    for n in ("student_base", "distill", "eval_distill"):
        assert _value(stages[n], "pretrain.base_dir") == f"{root}/student_base"
        assert _value(stages[n], "model.num_layers") == "1"
    assert _value(stages["distill"], "sft.data") == f"[{_opt(stages['distill_filter'], '--out')}]"
    assert _opt(stages["eval_distill"], "--weights") == f"{root}/distill/weights"
    # stage overrides reach only their stage
    assert _value(stages["all_scenarios_rl"], "data.prompts.synthetic_share") == "0.75"
    assert _value(stages["reasoning_rl"], "data.prompts.synthetic_share") is None
    assert stages["reasoning_rl"].args()[-2:] == ["--resume", "auto"]  # a requeued RL job resumes


def test_a_subset_starts_from_the_base_and_a_converted_base_is_kept():
    stages, _ = _plan("pipeline.stages=[reasoning_rl]", "pretrain.base_dir=/models/smol", "run.output_dir=/r")
    assert list(stages) == ["base", "eval_base", "reasoning_rl", "eval_reasoning_rl", "report"]
    assert _value(stages["reasoning_rl"], "run.init_weights") == "/models/smol/weights"
    assert COLD_START_STYLE not in stages["reasoning_rl"].overrides
    assert _plan("pipeline.stages=[cold_start]", "pipeline.evaluate=false")[0]["report"].after == ["cold_start"]


@pytest.mark.parametrize("overrides, message", [
    (["pipeline.stages=[reasoning_rl, cold_start]"], "in R1's order"),
    (["pipeline.stages=[rl]"], "unknown ['rl']"),
    (["pipeline.stage_overrides={rl: [grpo.steps=1]}"], "unknown stage(s) ['rl']"),
    (["pipeline.shards=0"], ">= 1"),
])
def test_bad_pipeline_sections_are_config_errors_naming_the_key(overrides, message):
    with pytest.raises(ConfigError, match="pipeline") as err:
        load_run_config(RECIPE, overrides)
    assert message in str(err.value)


def test_distill_without_a_student_is_refused():
    cfg = load_run_config(RECIPE, ["pipeline.student=[]"])
    with pytest.raises(ConfigError, match="pipeline.student"):
        plan(cfg, RECIPE, [], CPU)


def test_weights_dir_resolves_a_checkpoint_directory_to_its_latest_model(tmp_path: Path):
    ckpts = tmp_path / "checkpoints"
    for step in (2, 4):
        (ckpts / f"step_{step:08d}" / "model").mkdir(parents=True)
        (ckpts / f"step_{step:08d}" / "meta.json").write_text(json.dumps({"step": step}))
    (ckpts / "latest").write_text("step_00000002\n")  # latest, not the highest number, decides
    assert model_weights_dir(ckpts) == ckpts / "step_00000002" / "model"
    assert model_weights_dir(ckpts / "step_00000004") == ckpts / "step_00000004" / "model"
    assert model_weights_dir(tmp_path / "weights") == tmp_path / "weights"


@pytest.mark.parametrize("recipe", ["configs/r1_pipeline_moe16b_h800.yaml", "configs/r1_distill_7b.yaml"])
def test_cluster_recipes_plan_with_single_rank_array_tasks(recipe):
    cfg = load_run_config(recipe)
    stages = {st.name: st for st in plan(cfg, recipe, [], Resources(nodes=4))}
    arrays = [st for st in stages.values() if st.shards]
    assert arrays and all(_value(st, "parallel.expert_model_parallel_size") == "1" for st in arrays)
    assert all(_value(st, "parallel.expert_model_parallel_size") in (None, "1") or not st.shards
               for st in stages.values())
    if cfg.pipeline.stages == ["distill"]:  # distillation of a finished pipeline's RL model
        assert _opt(stages["distill_samples"], "--weights") == cfg.pipeline.start_weights
    assert _value(stages["distill"], "pretrain.base_dir") != cfg.pretrain.base_dir  # the student's own base


def test_a_bad_student_fails_when_the_chain_is_planned():
    with pytest.raises(ConfigError, match="num_layers"):
        _plan("pipeline.student=[model.num_layers=0]")


@pytest.mark.parametrize("recipe", ["configs/tiny_r1_pipeline.yaml", "configs/r1_pipeline_moe16b_h800.yaml",
                                    "configs/r1_distill_7b.yaml"])
def test_every_job_of_a_recipe_loads_its_config(recipe):
    """A stage override with a renamed key would otherwise fail only when that stage's job starts."""
    cfg = load_run_config(recipe)
    for stage in plan(cfg, recipe, [], Resources(nodes=1)):
        load_run_config(recipe, stage.overrides)
