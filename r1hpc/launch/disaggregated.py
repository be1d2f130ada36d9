"""``r1hpc launch <config> --mode disaggregated``: one training job and a rollout job array, started
together and watched until the trainer ends.

The run succeeds or fails with its trainer: a rollout task that dies, is cancelled or requeued only
slows training (its orders go back to the queue), so worker failures are reported, not fatal. When
the trainer ends, workers see DONE and exit; any still running after a grace period are cancelled.
"""
from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Optional

from r1hpc.launch.launcher import TERMINAL_BAD, TERMINAL_OK, Resources, slurm_executor, sacct_states
from r1hpc.launch.task import R1hpcStep

WORKER_GRACE_S = 120  # after the trainer ends, how long workers get to notice DONE


@dataclasses.dataclass
class DisaggJobs:
    """What ``launch_disaggregated`` started: the trainer and the workers, as submitit jobs (Slurm)
    or as processes (local)."""

    trainer: object
    workers: list


def trainer_args(config: str, overrides: list[str]) -> list[str]:
    return ["train", config, *overrides, "disagg.enabled=true", "--resume", "auto"]


def worker_args(config: str, overrides: list[str], worker_id: Optional[str] = None) -> list[str]:
    return ["rollout-worker", config, *overrides] + (["--worker-id", worker_id] if worker_id else [])


def submit_disaggregated(config: str, overrides: list[str], trainer_res: Resources, worker_res: Resources,
                         workers: int, folder: str | Path) -> DisaggJobs:
    """Submit the trainer and an array of ``workers`` one-task rollout jobs (no dependency between
    them: workers wait for the trainer's first weights)."""
    folder = Path(folder)
    trainer = slurm_executor(folder, "train", trainer_res).submit(R1hpcStep(trainer_args(config, overrides)))
    ex = slurm_executor(folder, "rollout", dataclasses.replace(worker_res, nodes=1), ntasks=1, array=workers)
    with ex.batch():
        tasks = [ex.submit(R1hpcStep(worker_args(config, overrides))) for _ in range(workers)]
    return DisaggJobs(trainer, tasks)


def watch_disaggregated(jobs: DisaggJobs, poll_s: float = 5.0, log: Callable[[str], None] = print) -> int:
    """Wait for the trainer; report worker failures as they happen; cancel workers that outlive the
    trainer by WORKER_GRACE_S. Returns 0 when the trainer completed."""
    seen: dict[str, str] = {}
    ended_at = None
    while True:
        ids = [jobs.trainer.job_id] + [t.job_id for t in jobs.workers]
        states = sacct_states(ids)
        for t in jobs.workers:
            state = states.get(t.job_id, ("PENDING", ""))[0]
            if state in TERMINAL_BAD and seen.get(t.job_id) != state:
                log(f"[launch] rollout task {t.job_id} ended {state} (log {t.paths.stderr}); training goes on")
            seen[t.job_id] = state
        trainer_state, code = states.get(jobs.trainer.job_id, ("PENDING", ""))
        if trainer_state in TERMINAL_OK + TERMINAL_BAD and ended_at is None:
            ended_at = time.monotonic()
            ok = trainer_state in TERMINAL_OK
            log(f"[launch] trainer {jobs.trainer.job_id} {trainer_state}" +
                ("" if ok else f", exit code {code}; log {jobs.trainer.paths.stderr}"))
        if ended_at is not None:
            running = [t.job_id for t in jobs.workers if seen.get(t.job_id) not in TERMINAL_OK + TERMINAL_BAD]
            if not running:
                break
            if trainer_state not in TERMINAL_OK or time.monotonic() - ended_at > WORKER_GRACE_S:
                subprocess.run(["scancel", *running], capture_output=True)
                log(f"[launch] cancelled rollout tasks {', '.join(running)}")
                break
        time.sleep(poll_s)
    return 0 if trainer_state in TERMINAL_OK else 1


def run_local_disaggregated(config: str, overrides: list[str], workers: int,
                            log: Callable[[str], None] = print) -> int:
    """No Slurm: the trainer and ``workers`` rollout workers as processes on this machine."""
    cli = [sys.executable, "-m", "r1hpc.cli"]
    env = os.environ.copy()
    log(f"[launch] local: trainer + {workers} rollout workers")
    procs = [subprocess.Popen(cli + worker_args(config, overrides, f"w{i}"), env=env) for i in range(workers)]
    try:
        rc = subprocess.run(cli + trainer_args(config, overrides), env=env).returncode
        deadline = time.monotonic() + (WORKER_GRACE_S if rc == 0 else 0)
        for p in procs:
            try:
                p.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
                p.wait()
    return rc
