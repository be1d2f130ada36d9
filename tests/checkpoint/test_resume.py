"""Whole-run checkpoint behaviour of ``r1hpc train`` on the CPU (real processes, real signals).

The reference is one uninterrupted run. Every interrupted run (SIGKILL at a random step, SIGKILL
inside a save, SIGUSR2 preemption) is resumed with ``--resume auto`` and must log per-step metrics
bitwise equal to the reference's: every key except wall-clock figures (``timing/*``, ``perf/*``
and ``eval/eval_s``, the evaluation's duration). Floats are compared with ``==`` after the JSON
round trip, which preserves every bit of a float64. All runs use one thread per process
(OMP_NUM_THREADS=1) so the CPU kernels reduce in the same order in every process.
"""
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from r1hpc import faults
from r1hpc.checkpoint.layout import newest_complete
from r1hpc.checkpoint.preemption import EXIT_CODE_REQUEUE

ROOT = Path(__file__).resolve().parents[2]
STEPS = 6
pytestmark = pytest.mark.slow


def _overrides(out: Path, base: Path) -> list[str]:
    return [f"run.output_dir={out}", f"pretrain.base_dir={base}", "pretrain.steps=120", "data.corpus.size=2000",
            f"grpo.steps={STEPS}", "checkpoint.save_every=2", "checkpoint.keep_last=2", "rewards.workers=1",
            "rollout.prompts_per_step=4", "rollout.group_size=4", "eval.num_problems=4", "eval.samples_per_problem=1"]


def _env(extra: dict | None = None) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RANK", "WORLD_SIZE", "SLURM_", "MASTER_"))}
    env.update(OMP_NUM_THREADS="1", **(extra or {}))
    return env


def _cmd(out: Path, base: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "r1hpc.cli", "train", str(ROOT / "configs/ci_r1zero.yaml"), *_overrides(out, base),
            *extra]


def _train(out: Path, base: Path, *extra: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(_cmd(out, base, *extra), cwd=ROOT, env=_env(env), capture_output=True, text=True,
                          timeout=900)


def _start(out: Path, base: Path, log: Path) -> subprocess.Popen:
    """A run in its own process group (so a kill reaches its reward workers too), output to ``log``
    (a pipe nobody reads would fill up and stall it)."""
    with log.open("w") as f:
        return subprocess.Popen(_cmd(out, base), cwd=ROOT, env=_env(), stdout=f, stderr=subprocess.STDOUT,
                                start_new_session=True)


def _wait_for_step(proc: subprocess.Popen, metrics: Path, step: int) -> None:
    deadline = time.monotonic() + 1800  # generous: a loaded shared machine may starve the run
    while time.monotonic() < deadline and proc.poll() is None:
        if metrics.exists() and any(json.loads(line)["step"] >= step
                                    for line in metrics.read_text().splitlines() if line.endswith("}")):
            return
        time.sleep(0.05)
    raise AssertionError(f"the run never logged step {step} (exit code {proc.poll()})")


def _comparable(run_dir: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if not k.startswith(("timing/", "perf/")) and k != "eval/eval_s"}
            for r in rows]


def _assert_same_metrics(run_dir: Path, reference: Path) -> None:
    got, want = _comparable(run_dir), _comparable(reference)
    assert [r["step"] for r in got] == [r["step"] for r in want]
    for g, w in zip(got, want):
        assert g == w, f"step {w['step']}: " + ", ".join(f"{k}: {g.get(k)!r} != {w.get(k)!r}"
                                                       for k in sorted(set(g) | set(w)) if g.get(k) != w.get(k))


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> tuple[Path, Path]:
    """(base dir, run dir) of the uninterrupted run; it also pretrains the base the others reuse."""
    root = tmp_path_factory.mktemp("ckpt")
    base = root / "base"
    proc = _train(root / "ref", base)
    assert proc.returncode == 0, proc.stderr[-4000:]
    rows = _comparable(root / "ref" / "ci_r1zero")
    assert [r["step"] for r in rows if "reward/mean" in r] == list(range(1, STEPS + 1))
    assert any(r.get("actor/updates", 0) > 0 for r in rows), "no optimizer update: the test would not cover Adam state"
    return base, root / "ref" / "ci_r1zero"


def test_sigkill_at_a_random_step_then_resume_is_bitwise_equal(reference, tmp_path):
    base, ref = reference
    kill_at = random.randint(1, STEPS - 1)
    proc = _start(tmp_path, base, tmp_path / "killed.log")
    _wait_for_step(proc, tmp_path / "ci_r1zero" / "metrics.jsonl", kill_at)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    last, _ = newest_complete(tmp_path / "ci_r1zero" / "checkpoints")  # None if killed before the first save
    resumed = _train(tmp_path, base, "--resume", "auto")
    assert resumed.returncode == 0, f"killed after step {kill_at}:\n{resumed.stderr[-4000:]}"
    if last is not None:
        assert f"[resume] continuing from step {last.step}" in resumed.stdout, resumed.stdout
    _assert_same_metrics(tmp_path / "ci_r1zero", ref)


def test_kill_inside_a_save_skips_the_incomplete_checkpoint(reference, tmp_path):
    base, ref = reference
    killed = _train(tmp_path, base, env={faults.ENV: "checkpoint.save:4"})
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    ckpts = tmp_path / "ci_r1zero" / "checkpoints"
    assert (ckpts / "step_00000004.tmp" / "model").is_dir() and not (ckpts / "step_00000004").exists()
    resumed = _train(tmp_path, base, "--resume", "auto")
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    assert "WARNING: skipping incomplete checkpoint" in resumed.stdout and "step_00000004.tmp" in resumed.stdout
    assert "[resume] continuing from step 2" in resumed.stdout
    _assert_same_metrics(tmp_path / "ci_r1zero", ref)
    assert not (ckpts / "step_00000004.tmp").exists()  # pruned once a newer checkpoint was complete


def test_sigusr2_saves_exits_75_and_resume_continues(reference, tmp_path):
    base, ref = reference
    proc = _start(tmp_path, base, tmp_path / "preempted.log")
    _wait_for_step(proc, tmp_path / "ci_r1zero" / "metrics.jsonl", 2)
    os.kill(proc.pid, signal.SIGUSR2)
    proc.wait(timeout=900)
    out = (tmp_path / "preempted.log").read_text()
    assert proc.returncode == EXIT_CODE_REQUEUE, out[-4000:]
    saved = [int(m) for m in re.findall(r"^\[preempt\] saved step (\d+);", out, flags=re.M)]
    assert len(saved) == 1 and f"[preempt] saved step {saved[0]}; exiting for requeue" in out
    assert (tmp_path / "ci_r1zero" / "checkpoints" / f"step_{saved[0]:08d}" / "meta.json").is_file()
    if saved[0] < STEPS:  # a signal that lands in the last step is answered by the same save
        resumed = _train(tmp_path, base, "--resume", "auto")
        assert resumed.returncode == 0, resumed.stderr[-4000:]
        assert f"[resume] continuing from step {saved[0]}" in resumed.stdout
    _assert_same_metrics(tmp_path / "ci_r1zero", ref)


def test_resuming_a_finished_run_exits_0_without_training(reference, tmp_path):
    base, ref = reference
    run_dir = tmp_path / "ci_r1zero"
    shutil.copytree(ref, run_dir)
    before = (run_dir / "metrics.jsonl").read_bytes()
    proc = _train(tmp_path, base, "--resume", "auto")
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "the run already finished" in proc.stdout and f"final step {STEPS} of {STEPS}" in proc.stdout
    assert "[eval]" not in proc.stdout and "GRPO" not in proc.stderr
    assert (run_dir / "metrics.jsonl").read_bytes() == before


def test_a_resume_that_changes_the_model_fails_clearly(reference, tmp_path):
    base, ref = reference
    shutil.copytree(ref, tmp_path / "ci_r1zero")
    proc = _train(tmp_path, base, "model.hidden_size=64", "model.ffn_hidden_size=128", "--resume", "auto")
    assert proc.returncode == 2
    assert "cannot resume" in proc.stderr and "model.hidden_size: 96 -> 64" in proc.stderr
    assert "model.ffn_hidden_size: 192 -> 128" in proc.stderr



def test_a_corrupt_newest_checkpoint_falls_back_to_the_previous_one(reference, tmp_path):
    base, ref = reference
    run_dir = tmp_path / "ci_r1zero"
    shutil.copytree(ref, run_dir)
    ckpts = run_dir / "checkpoints"
    shard = ckpts / f"step_{STEPS:08d}" / "ranks" / "rank_00000.pt"
    shard.write_bytes(shard.read_bytes()[:100])  # a truncated shard: torch.load fails
    proc = _train(tmp_path, base, f"grpo.steps={STEPS + 1}", "--resume", "auto")  # the newest is final: extend
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert f"step_{STEPS:08d} does not load" in proc.stdout and f"[resume] continuing from step {STEPS - 2}" in proc.stdout
    kept = ckpts / f"step_{STEPS:08d}.unloadable"
    assert kept.is_dir() and len((kept / "ranks" / "rank_00000.pt").read_bytes()) == 100  # reported, never deleted
    per_step = lambda d: [r for r in _comparable(d) if "reward/mean" in r]  # noqa: E731
    assert per_step(run_dir)[:STEPS] == per_step(ref)  # the replayed steps are bitwise the reference's


def test_a_fresh_start_refuses_to_delete_an_earlier_runs_checkpoints(reference, tmp_path):
    base, ref = reference
    shutil.copytree(ref, tmp_path / "ci_r1zero")
    before = sorted(p.name for p in (tmp_path / "ci_r1zero" / "checkpoints").iterdir())
    proc = _train(tmp_path, base)
    assert proc.returncode == 2 and "checkpoint.overwrite=true" in proc.stderr, proc.stderr[-2000:]
    assert sorted(p.name for p in (tmp_path / "ci_r1zero" / "checkpoints").iterdir()) == before
