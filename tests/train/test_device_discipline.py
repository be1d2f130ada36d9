"""Device discipline, proven on the CPU (docs/megatron_cpu.md): on two gloo ranks (data parallel)
a pretrain step, an SFT step, a GRPO step (rollout, old and reference log-probs, two mini-batch
updates, the monitor's metrics), a held-out evaluation, a disaggregated trainer step (its batch from a
real rollout-worker process) and the preemption/time-limit agreements run
with every tensor factory call in r1hpc checked for an explicit device, and every collective's
tensors checked against the device the backend needs (gloo here: the CPU, the engine's device;
NCCL: CUDA). On a CPU an implicit allocation costs nothing; next to a CUDA model it is the first
step's crash, so each one found is listed with its file and line."""
from __future__ import annotations

import pytest

from tests.multiproc import run_workers
from tests.train import device_workers

pytestmark = pytest.mark.multiproc


@pytest.fixture(scope="module")
def reports(tmp_path_factory):
    return run_workers(device_workers.all_steps, 2, str(tmp_path_factory.mktemp("device")), timeout_s=400)


PHASES = ("pretrain", "sft", "grpo", "eval", "disagg", "stop_agreement")


@pytest.mark.parametrize("phase", PHASES)
def test_no_implicit_allocation_in_r1hpc(reports, phase):
    found = {}
    for rank, report in enumerate(reports):
        for where, n in report[phase]["implicit"].items():
            found.setdefault(where, []).append(f"rank {rank}: {n}x")
    assert not found, f"{phase}: tensors created without an explicit device:\n" + "\n".join(
        f"  {where} ({', '.join(v)})" for where, v in sorted(found.items()))


@pytest.mark.parametrize("phase", PHASES)
def test_collectives_run_on_the_backends_device(reports, phase):
    for rank, report in enumerate(reports):
        assert report[phase]["collectives"] > 0, f"{phase}: no collective ran on rank {rank}: the check saw nothing"
        assert not report[phase]["off_device"], f"{phase} rank {rank}:\n" + "\n".join(report[phase]["off_device"])


def test_the_steps_really_ran(reports):
    assert all(r["ran"] == {"updates": 2.0, "stop": False, "disagg_updates": 2.0} for r in reports)
