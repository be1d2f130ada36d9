"""``r1hpc launch --mode disaggregated`` on the local Slurm: a train job and a 2-task rollout array.

One rollout task is cancelled and the other requeued while the trainer runs: training must go on,
finish, and have consumed every step's batch exactly once (the trainer's ledger), with the
requeued task serving again under the same worker id.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from r1hpc.disagg.exchange import Exchange
from tests.slurm.conftest import CONFIG, ROOT, sacct, tiny

pytestmark = pytest.mark.slow
STEPS = 8


def _array_tasks(env: dict, folder) -> list[str]:
    """Job ids (``<array>_<i>``) of the rollout array, from the submitit folder."""
    out = subprocess.run(["squeue", "-h", "-r", "-n", "r1hpc-rollout", "-o", "%i"], capture_output=True, text=True,
                         env=env, timeout=60).stdout.split()
    return sorted(out)


def test_training_survives_a_cancelled_and_a_requeued_worker(slurm, base, work):
    name = "disagg"
    overrides = tiny(work, name, f"grpo.steps={STEPS}", "disagg.heartbeat_s=1", "disagg.lease_s=6",
                     "disagg.status_every_s=5", "disagg.max_poll_s=1")
    env = dict(slurm, OMP_NUM_THREADS="1")
    launch = subprocess.Popen(
        [sys.executable, "-m", "r1hpc.cli", "launch", CONFIG, *overrides, "--mode", "disaggregated",
         "--rollout-workers", "2", "--rollout-gpus", "0", "--rollout-cpus", "1", "--gpus-per-node", "0",
         "--ntasks-per-node", "1", "--cpus-per-task", "1", "--time", "15", "--no-exclusive",
         "--folder", str(work / "submitit-disagg")],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    exchange = Exchange(work / "runs" / name / "exchange")
    deadline = time.monotonic() + 600
    while len(exchange.read_ledger()) < 2:  # both workers up and serving
        assert launch.poll() is None and time.monotonic() < deadline, launch.communicate()[0][-3000:]
        time.sleep(1)
    tasks = _array_tasks(env, work)
    assert len(tasks) == 2, tasks
    subprocess.run(["scancel", tasks[0]], env=env, check=True, timeout=60)
    subprocess.run(["scontrol", "requeue", tasks[1]], env=env, check=True, timeout=60)
    served_before = len(exchange.read_ledger())
    log = launch.communicate(timeout=900)[0]
    assert launch.returncode == 0, log[-4000:]
    ledger = exchange.read_ledger()
    assert sorted(r["step"] for r in ledger) == list(range(STEPS)), ledger  # none lost, none twice
    assert "training goes on" in log  # the cancelled task was reported, not fatal
    # with one task cancelled, the later steps can only have come from the requeued task, back
    # under its own worker id (one batch may have been in flight at the requeue)
    requeued_id = "w" + tasks[1].split("_")[1]
    later = ledger[served_before + 1:]
    assert later and {r["worker"] for r in later} == {requeued_id}, ledger
    rows = [json.loads(x) for x in (work / "runs" / name / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "reward/mean" in r] == list(range(1, STEPS + 1))
    states = sacct(env, tasks[0].split("_")[0])
    assert states[tasks[0]]["State"].startswith("CANCELLED"), states
    assert os.path.exists(work / "runs" / name / "exchange" / "DONE")
