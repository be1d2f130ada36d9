"""Launcher detection (torchrun, Slurm, single process), Slurm node lists, and per-rank seeding."""
from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from r1hpc.distributed import LaunchEnv, detect_launch_env, first_slurm_host, seed_everything


def test_torchrun_env():
    env = {"RANK": "3", "WORLD_SIZE": "8", "LOCAL_RANK": "1", "MASTER_ADDR": "node7", "MASTER_PORT": "29611",
           "SLURM_PROCID": "0", "SLURM_NTASKS": "2"}  # torchrun inside an allocation: torchrun wins
    assert detect_launch_env(env) == LaunchEnv(3, 8, 1, "node7", 29611, "torchrun")


def test_torchrun_env_defaults():
    assert detect_launch_env({"RANK": "0", "WORLD_SIZE": "1"}) == LaunchEnv(0, 1, 0, "127.0.0.1", 29500, "torchrun")


@pytest.mark.parametrize("nodelist, host", [("gpu-[003-005,010]", "gpu-003"), ("n1,n2", "n1"), ("node7", "node7")])
def test_slurm_env(nodelist, host):
    env = {"SLURM_PROCID": "5", "SLURM_NTASKS": "16", "SLURM_LOCALID": "1", "SLURM_JOB_NODELIST": nodelist,
           "SLURM_JOB_ID": "123456", "SLURM_STEP_ID": "0"}
    assert detect_launch_env(env) == LaunchEnv(5, 16, 1, host, 20000 + 123456 % 20000, "slurm")


def test_slurm_port_is_shared_by_a_job_and_differs_between_jobs():
    base = {"SLURM_PROCID": "0", "SLURM_NTASKS": "2", "SLURM_JOB_NODELIST": "n[1-2]", "SLURM_STEP_ID": "0"}
    ports = {job: detect_launch_env(dict(base, SLURM_JOB_ID=str(job))).master_port for job in (41, 42)}
    assert ports[41] != ports[42]
    assert all(20000 <= p < 40000 for p in ports.values())
    assert detect_launch_env(dict(base, SLURM_JOB_ID="41", SLURM_PROCID="1")).master_port == ports[41]


def test_slurm_env_prefers_step_nodelist_and_explicit_master():
    env = {"SLURM_PROCID": "0", "SLURM_NTASKS": "2", "SLURM_JOB_NODELIST": "a[1-4]", "SLURM_STEP_NODELIST": "a[3-4]",
           "SLURM_STEP_ID": "1"}
    assert detect_launch_env(env).master_addr == "a3"
    env.update(MASTER_ADDR="head", MASTER_PORT="30001")
    got = detect_launch_env(env)
    assert (got.master_addr, got.master_port) == ("head", 30001)


def test_single_process():
    env = detect_launch_env({})
    assert (env.rank, env.world_size, env.local_rank, env.master_addr, env.launcher) == (0, 1, 0, "127.0.0.1", "single")
    assert 0 < env.master_port < 65536  # a free port, so two single-process runs on one machine never collide
    assert detect_launch_env({"MASTER_PORT": "29611"}).master_port == 29611
    assert detect_launch_env({"MASTER_PORT": "31000"}).master_port == 31000
    assert detect_launch_env({"SLURM_PROCID": "0"}).launcher == "single"  # a login shell in an allocation
    # the batch script of a 2-task job (measured on Slurm 22.05: PROCID 0, NTASKS 2, no step id) is one process
    batch = {"SLURM_PROCID": "0", "SLURM_NTASKS": "2", "SLURM_JOB_NODELIST": "n[1-2]", "SLURM_JOB_ID": "7"}
    assert detect_launch_env(batch).world_size == 1


@pytest.mark.parametrize("nodelist, host", [
    ("node7", "node7"),
    ("n1,n2", "n1"),
    ("gpu-[003-005,010]", "gpu-003"),
    ("gpu-[010,003-005]", "gpu-010"),  # Slurm's order, not the smallest
    ("gpu-[003-005,010],login1", "gpu-003"),
    ("a[1-2],b[3]", "a1"),
    ("b[3],a[1-2]", "b3"),
    ("nid[0001-0004]", "nid0001"),
    ("node[7]", "node7"),
    ("rack[1-2]-n[01-04]", "rack1-n01"),
    ("n[1-2]-ib", "n1-ib"),
    ("10.0.0.[5-6]", "10.0.0.5"),
    ("  node3,node4\n", "node3"),
])
def test_first_slurm_host(nodelist, host):
    assert first_slurm_host(nodelist) == host


@pytest.mark.parametrize("nodelist", ["", ",n1", "n[1-2", "n]1[", "n[[1]]"])
def test_first_slurm_host_rejects_malformed_lists(nodelist):
    with pytest.raises(ValueError, match="cannot parse SLURM_JOB_NODELIST"):
        first_slurm_host(nodelist)


@given(prefix=st.from_regex(r"[a-z][a-z0-9-]{0,8}", fullmatch=True), width=st.integers(1, 4),
       start=st.integers(0, 999), extra=st.lists(st.integers(0, 999), max_size=3))
def test_first_slurm_host_takes_the_first_zero_padded_value(prefix, width, start, extra):
    items = [f"{start:0{width}d}-{start + 1:0{width}d}"] + [f"{e:0{width}d}" for e in extra]
    assert first_slurm_host(f"{prefix}[{','.join(items)}],other1") == f"{prefix}{start:0{width}d}"


def _draws() -> tuple:
    return random.random(), float(np.random.rand()), torch.rand(3).tolist()


def test_seed_everything_is_deterministic_and_seed_dependent():
    seed_everything(7)
    a = _draws()
    seed_everything(7)
    assert _draws() == a
    seed_everything(8)
    assert _draws() != a


def test_seed_everything_accepts_seeds_beyond_numpy_range():
    seed_everything(2**40 + 3)
    a = _draws()
    seed_everything(2**40 + 3)
    assert _draws() == a
