"""The learnability curriculum inside a real GRPO run: the trainer feeds each step's group rewards
back, the logged task weights are the curriculum's formula applied to the logged learnability,
and a run resumed from a checkpoint draws the same prompts as one that never stopped."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow
TASKS = ("arithmetic", "linear_equation")
# A base of 150 steps must solve some of its prompts, or every group scores alike and there is no
# learnability to weigh: at arithmetic difficulty 2 one such base solved none in 4 steps.


def _train(out: Path, name: str, *extra: str) -> list[dict]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RANK", "WORLD_SIZE", "SLURM_", "MASTER_"))}
    args = [f"run.output_dir={out}", f"run.name={name}", f"pretrain.base_dir={out}/base", "pretrain.steps=150",
            "data.mix.tasks=[arithmetic,linear_equation]", "data.mix.difficulty={arithmetic: 1, linear_equation: 1}",
            "data.curriculum.kind=learnability", "data.curriculum.warmup_steps=1", "data.curriculum.floor=0.2",
            "data.curriculum.ema=0.5", "grpo.steps=4", "eval.num_problems=4", "eval.samples_per_problem=1",
            *extra]
    p = subprocess.run([sys.executable, "-m", "r1hpc.cli", "train", "configs/ci_r1zero.yaml", *args], cwd=ROOT,
                       env=env, capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stderr[-4000:]
    rows = [json.loads(x) for x in (out / name / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if "reward/mean" in r]


def test_weights_follow_the_observed_learnability(tmp_path):
    rows = _train(tmp_path, "run")
    for r in rows:
        w = [r[f"curriculum/weight/{t}"] for t in TASKS]
        assert sum(w) == pytest.approx(1.0)
        if r["step"] >= 1 and all(f"curriculum/learnability/{t}" in r for t in TASKS):
            L = [r[f"curriculum/learnability/{t}"] for t in TASKS]
            if sum(L) > 0:
                assert w == pytest.approx([0.2 + 0.6 * x / sum(L) for x in L])
    assert any(abs(r["curriculum/weight/arithmetic"] - 0.5) > 1e-3 for r in rows), "the weights never moved"


def test_resume_draws_the_same_prompts(tmp_path):
    whole = _train(tmp_path, "whole", "checkpoint.save_every=2")
    _train(tmp_path, "cut", "grpo.steps=2")
    resumed = _train(tmp_path, "cut", "checkpoint.resume=auto")
    assert [r["step"] for r in resumed] == [1, 2, 3, 4]
    for a, b in zip(whole, resumed):
        for k in ("reward/mean", "curriculum/weight/arithmetic", "curriculum/weight/linear_equation"):
            assert a[k] == b[k], (a["step"], k)
