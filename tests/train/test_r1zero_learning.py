"""End to end: the R1-Zero job (pretrain a flawed base, GRPO through megatron-core, evaluate)
really learns, with fixed seeds, on the CPU.

What is asserted and why it cannot pass by chance: the mean training reward (accuracy + 0.1 x
format) of the last 8 GRPO steps must exceed that of the first 8 by at least 0.08. Each mean
averages 8 x 128 = 1024 sampled responses; the binomial standard error of such a mean is below
0.015, so 0.08 is over five standard errors. A trainer that does nothing (zero gradient, wrong
sign, no optimizer step) leaves the reward flat or lowers it; with fixed seeds the run is
deterministic, so the check cannot flicker. The run also has to produce every artifact a user
gets: metrics, TensorBoard, the PNG and the summary. The same GRPO job then runs from the same base
with its rollouts on megatron's dynamic engine (rollout.engine=dynamic) and must learn by the same
margin.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from r1hpc.model import mcore_compat

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def _train(out: Path, *overrides: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RANK", "WORLD_SIZE", "SLURM_", "MASTER_"))}
    proc = subprocess.run(
        [sys.executable, "-m", "r1hpc.cli", "train", str(ROOT / "configs/ci_r1zero.yaml"), f"run.output_dir={out}",
         *overrides], cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-4000:]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs")
    _train(out)
    return out / "ci_r1zero"


@pytest.fixture(scope="module")
def dynamic_run_dir(run_dir, tmp_path_factory) -> Path:
    """The same GRPO job from the same base with rollouts on megatron's dynamic engine."""
    out = tmp_path_factory.mktemp("runs_dynamic")
    _train(out, "rollout.engine=dynamic", f"pretrain.base_dir={run_dir / 'base'}", "eval.num_problems=16")
    return out / "ci_r1zero"


def _steps(run_dir: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if "reward/mean" in r]


def _assert_reward_rises(steps: list[dict]) -> None:
    assert len(steps) == 24
    first = sum(r["reward/mean"] for r in steps[:8]) / 8
    last = sum(r["reward/mean"] for r in steps[-8:]) / 8
    assert last >= first + 0.08, (first, last)


def test_training_reward_rises(run_dir):
    _assert_reward_rises(_steps(run_dir))


@pytest.mark.skipif(not torch.cuda.is_available() and not mcore_compat.features().dynamic_engine_cpu,
                    reason="this megatron-core series' dynamic engine has no CPU patches")
def test_training_reward_rises_with_the_dynamic_engine(run_dir, dynamic_run_dir):
    """The learning check again with rollout.engine=dynamic. Its first step samples from the same base
    with the same keyed sampler, so its responses, and so its reward, are the static loop's."""
    steps = _steps(dynamic_run_dir)
    assert steps[0]["reward/mean"] == _steps(run_dir)[0]["reward/mean"]
    _assert_reward_rises(steps)


def test_run_directory_has_every_artifact(run_dir):
    summary = json.loads((run_dir / "summary.json").read_text())
    for key in ("pass_at_1_before", "pass_at_1_after", "grpo_steps_per_min", "per_task_after"):
        assert key in summary
    assert summary["grpo_steps"] == 24
    assert (run_dir / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert any((run_dir / "tensorboard").iterdir())
    assert (run_dir / "config.yaml").is_file()
    for r in _steps(run_dir):  # the metric names verl/TRL users look for, every step
        for key in ("reward/std", "reward/accuracy", "reward/format", "response_length/mean",
                    "response_length/clip_ratio", "rollout/entropy", "reward/frac_zero_std",
                    "timing/rollout_reward_s", "timing/train_s", "perf/tokens_per_s"):
            assert key in r, key


def test_monitor_metrics_and_report(run_dir):
    """The aha-moment monitor ran on every step and its report renders from the real run."""
    from r1hpc.monitor.report import build_report

    for r in _steps(run_dir):
        for key in ("monitor/entropy_mean", "monitor/marker_rate", "monitor/aha_events", "alarm/entropy_collapse",
                    "timing/monitor_s"):
            assert key in r, key
        assert r["monitor/entropy_mean"] == pytest.approx(r["rollout/entropy"], rel=1e-4)
    assert (run_dir / "monitor" / "examples.jsonl").is_file()
    index = build_report(run_dir)
    for stem in ("reward", "accuracy", "length", "entropy", "markers", "aha", "entropy_trajectories"):
        assert (index.parent / f"{stem}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
