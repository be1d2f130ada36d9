"""The whole R1 pipeline end to end on the CPU (`r1hpc pipeline --local`), shrunk to a few minutes:
every stage runs as its own `r1hpc` process, reads what the stage before wrote, and the report
compares every stage's evaluated model."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from r1hpc.checkpoint.layout import model_weights_dir

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
# the recipe's base (500 steps: a weak base, but one that gets some additions right) and fewer of
# everything after it; rejection sampling and distillation keep the correct, well-formed samples of
# 64 prompts x 4, drawn at temperature 0.7 (at 1.0 the tiny model's cold-start form is right in only
# ~15% of samples, which would leave a handful; at 32 prompts x 4 they kept 10-38 by seed)
SHRINK = ["rollout.temperature=0.7", "grpo.steps=2", "rollout.prompts_per_step=4", "rollout.group_size=4", "eval.num_problems=6",
          "eval.samples_per_problem=2", "pipeline.rejection_prompts=64",
          "pipeline.rejection_samples=4", "pipeline.distill_prompts=64", "pipeline.distill_samples=4",
          "pipeline.shards=2", "rewards.judges.helpfulness.max_new_tokens=4",
          "rewards.judges.harmlessness.max_new_tokens=4",
          "pipeline.student=[model.num_layers=1, model.num_moe_experts=null, pretrain.steps=60]"]


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def pipeline_root(tmp_path_factory):
    out = tmp_path_factory.mktemp("pipeline")
    cmd = [sys.executable, "-m", "r1hpc.cli", "pipeline", "configs/tiny_r1_pipeline.yaml", f"run.output_dir={out}",
           *SHRINK, "--local", "--gpus-per-node", "0", "--ntasks-per-node", "1"]
    run = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=1500)
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-6000:]
    return out / "tiny_r1_pipeline"


def test_report_compares_every_stage(pipeline_root):
    report = json.loads((pipeline_root / "report.json").read_text())
    assert [s["stage"] for s in report["stages"]] == ["base", "cold_start", "reasoning_rl", "rejection_sft",
                                                      "all_scenarios_rl", "distill"]
    for s in report["stages"]:
        results = json.loads((pipeline_root / "eval" / s["stage"] / "results.json").read_text())
        assert s["sets"] == results["sets"] and results["settings"]["shards"] == 2  # merged from a 2-task array
        assert s["sets"]["arithmetic"]["problems"] == 6 and s["sets"]["arithmetic"]["k"] == 2
    table = (pipeline_root / "report.md").read_text()
    assert all(f"| {s['stage']} |" in table for s in report["stages"])


def test_each_stage_starts_from_the_model_the_stage_before_made(pipeline_root):
    def config(stage):
        return yaml.safe_load((pipeline_root / stage / "config.yaml").read_text())

    assert config("reasoning_rl")["run"]["init_weights"] == str(pipeline_root / "cold_start" / "weights")
    assert config("all_scenarios_rl")["run"]["init_weights"] == str(pipeline_root / "rejection_sft" / "weights")
    rl_model = model_weights_dir(pipeline_root / "reasoning_rl" / "checkpoints")
    teacher = model_weights_dir(pipeline_root / "all_scenarios_rl" / "checkpoints")
    rejection = _jsonl(pipeline_root / "rejection" / "dataset.jsonl")
    distill = _jsonl(pipeline_root / "distill" / "dataset.jsonl")
    # rejection sampling drew from the reasoning-RL model, distillation from the last RL model
    assert len(rejection) >= 8 and {r["checkpoint"] for r in rejection} == {str(rl_model)}
    assert len(distill) >= 8 and {r["checkpoint"] for r in distill} == {str(teacher)}
    assert all(r["rewards"]["accuracy"] >= 1.0 for r in rejection + distill)  # only correct samples kept
    # every response after the cold start is in R1's cold-start form
    assert all(r["response"].lstrip().startswith("|special_token|") for r in rejection)


def test_rl_for_all_scenarios_mixed_general_prompts_scored_by_the_judges(pipeline_root):
    rows = _jsonl(pipeline_root / "all_scenarios_rl" / "metrics.jsonl")
    assert any(key.endswith("helpfulness") for row in rows for key in row), sorted(rows[0])
    assert any(key.endswith("harmlessness") for row in rows for key in row)


def test_the_student_is_a_smaller_dense_model_with_its_own_base(pipeline_root):
    teacher = json.loads((pipeline_root / "base" / "meta.json").read_text())
    student = json.loads((pipeline_root / "student_base" / "meta.json").read_text())
    assert student["params"] < teacher["params"]
    assert (pipeline_root / "distill" / "weights").is_dir()
