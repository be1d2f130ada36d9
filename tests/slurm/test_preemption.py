"""Preemption on the local Slurm: a requeued job and a job at its time limit both resume from the
step they checkpointed (the contract of r1hpc.checkpoint.preemption: flag on USR2/SIGTERM, all
ranks agree at a step boundary, save, exit 75; the template requeues; ``--resume auto``)."""
from __future__ import annotations

import json
import re
import subprocess
import time

import pytest

from tests.slurm.conftest import CONFIG, sbatch, tiny, wait_job

pytestmark = pytest.mark.slow
STEPS = 12
ENDLESS_STEPS = 100_000


def _steps(run_dir):
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return []
    complete = path.read_text().split("\n")[:-1]  # a running job may be writing the last line
    rows = [json.loads(line) for line in complete if line.strip()]
    return [r["step"] for r in rows if "reward/mean" in r]


def _logs(work, name, job) -> str:
    """The job's log and its rank logs (the training process prints to its rank log)."""
    files = [work / f"{name}-{job}.log", *sorted((work / "logs").glob(f"*-{job}-rank*.log"))]
    return "\n".join(f.read_text() for f in files if f.is_file())


def test_scontrol_requeue_resumes_at_the_checkpointed_step(slurm, base, work):
    run = tiny(work, "requeued", f"grpo.steps={STEPS}", "checkpoint.save_every=2")
    job = sbatch(slurm, "grpo.sbatch", [CONFIG, *run], "--nodes=1", "--ntasks-per-node=1",
                 f"--output={work}/requeued-%j.log", f"--export=ALL,R1HPC_LOG_DIR={work}/logs")
    run_dir = work / "runs" / "requeued"
    deadline = time.monotonic() + 300
    while len(_steps(run_dir)) < 3:
        assert time.monotonic() < deadline, "the job never reached step 3"
        time.sleep(1)
    subprocess.run(["scontrol", "requeue", job], check=True, env=slurm)
    rows = wait_job(slurm, job)
    log = _logs(work, "requeued", job)
    assert rows[job]["State"] == "COMPLETED", log
    assert _steps(run_dir) == list(range(1, STEPS + 1)), (_steps(run_dir), log)  # none repeated, none skipped
    assert "[preempt] saved step" in log or "resum" in log.lower(), log


def test_time_limit_signal_saves_requeues_and_resumes(slurm, base, work):
    # USR2 comes 90 s before a 3-minute limit (Slurm may send it up to a minute early, so 30-90 s
    # into each run): the guard saves at the next step boundary, the step exits 75 and the template
    # requeues the job, which resumes from the saved step. The run has more steps than any machine
    # does in 90 s (a fixed 200 finished first on a fast one), so the test cancels it once the
    # resumed run has taken a few steps.
    run = tiny(work, "timelimit", f"grpo.steps={ENDLESS_STEPS}", "checkpoint.save_every=0")
    job = sbatch(slurm, "grpo.sbatch", [CONFIG, *run], "--nodes=1", "--ntasks-per-node=1", "--time=3",
                 "--signal=USR2@90", f"--output={work}/timelimit-%j.log", f"--export=ALL,R1HPC_LOG_DIR={work}/logs")
    run_dir = work / "runs" / "timelimit"
    deadline = time.monotonic() + 600
    while True:
        log = _logs(work, "timelimit", job)
        resumed = re.search(r"\[resume\] continuing from step (\d+)", log)
        if resumed and len(_steps(run_dir)) >= int(resumed[1]) + 3:
            break
        assert time.monotonic() < deadline, f"no resumed run 3 steps on after 600 s:\n{log}"
        time.sleep(1)
    subprocess.run(["scancel", job], check=True, env=slurm)
    assert wait_job(slurm, job)[job]["State"].startswith("CANCELLED")  # not requeued once more
    log = _logs(work, "timelimit", job)
    saved = re.search(r"\[preempt\] saved step (\d+)", log)
    assert saved and "requeueing job" in log and saved[1] == resumed[1], log
    steps = _steps(run_dir)
    assert steps == list(range(1, len(steps) + 1)) and len(steps) >= int(saved[1]) + 3, (steps, log)
