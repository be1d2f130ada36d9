"""Process-group start-up from torchrun or Slurm, megatron's parallel state, and per-rank seeding.

One code path for a laptop, a torchrun launch and ``srun`` on a Slurm cluster: the rank, world size
and rendezvous address are read from whichever launcher set them (torchrun's RANK/WORLD_SIZE/
MASTER_ADDR, else Slurm's SLURM_PROCID/SLURM_NTASKS/SLURM_JOB_NODELIST), so no Ray or extra
daemon is needed. NCCL on GPUs, gloo on CPUs.
"""
from __future__ import annotations

import dataclasses
import datetime
import os
import random
import re
import socket
import subprocess
from typing import Literal, Optional

import numpy as np
import torch

from r1hpc.config import ConfigError
from r1hpc.model.config import ModelConfig


@dataclasses.dataclass
class ParallelConfig:
    """How the model is split: tensor (TP), pipeline (PP), context (CP), expert (EP), data (DP).

    ``data_parallel_size`` null means "whatever the world size leaves"; a number is checked.
    ``sequence_parallel`` null means "on when TP > 1 and the model is MoE" (megatron requires it).
    """

    tensor_model_parallel_size: int = 1
    pipeline_model_parallel_size: int = 1
    context_parallel_size: int = 1
    expert_model_parallel_size: int = 1
    data_parallel_size: Optional[int] = None
    sequence_parallel: Optional[bool] = None
    backend: Literal["auto", "nccl", "gloo"] = "auto"
    timeout_minutes: int = 30

    def validate(self) -> None:
        for name in ("tensor_model_parallel_size", "pipeline_model_parallel_size",
                     "context_parallel_size", "expert_model_parallel_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"key '{name}' must be >= 1, got {getattr(self, name)}")
        if self.timeout_minutes < 1:
            raise ConfigError(f"key 'timeout_minutes' must be >= 1 (collectives time out after it), got {self.timeout_minutes}")
        if self.data_parallel_size is not None and self.data_parallel_size < 1:
            raise ConfigError(f"key 'data_parallel_size' must be >= 1 or null, got {self.data_parallel_size}")

    @property
    def model_parallel_size(self) -> int:
        return self.tensor_model_parallel_size * self.pipeline_model_parallel_size * self.context_parallel_size


def check_layout(parallel: ParallelConfig, model: ModelConfig, world_size: Optional[int] = None) -> int:
    """Check that the parallel layout fits the model (and the world size, when known).

    Returns the data-parallel size. Raises ConfigError naming the keys involved.
    """
    tp, pp, cp, ep = (parallel.tensor_model_parallel_size, parallel.pipeline_model_parallel_size,
                      parallel.context_parallel_size, parallel.expert_model_parallel_size)
    groups = model.num_query_groups or model.num_attention_heads
    if model.num_attention_heads % tp:
        raise ConfigError(f"parallel.tensor_model_parallel_size ({tp}) must divide model.num_attention_heads "
                          f"({model.num_attention_heads})")
    if groups % tp:
        raise ConfigError(f"parallel.tensor_model_parallel_size ({tp}) must divide the KV heads "
                          f"(model.num_query_groups = {groups})")
    if model.ffn_hidden_size % tp:
        raise ConfigError(f"parallel.tensor_model_parallel_size ({tp}) must divide model.ffn_hidden_size "
                          f"({model.ffn_hidden_size})")
    if model.num_layers % pp:
        raise ConfigError(f"parallel.pipeline_model_parallel_size ({pp}) must divide model.num_layers "
                          f"({model.num_layers})")
    if ep > 1 and not model.is_moe:
        raise ConfigError(f"parallel.expert_model_parallel_size is {ep} but the model is dense "
                          "(set model.num_moe_experts)")
    if model.is_moe and model.num_moe_experts % ep:
        raise ConfigError(f"model.num_moe_experts ({model.num_moe_experts}) must be divisible by "
                          f"parallel.expert_model_parallel_size ({ep})")
    if model.is_moe and tp > 1 and parallel.sequence_parallel is False:
        raise ConfigError("MoE with parallel.tensor_model_parallel_size > 1 needs parallel.sequence_parallel "
                          "(megatron-core requires it); set it to true or null")
    if world_size is None:
        return parallel.data_parallel_size or 1
    mp = tp * pp * cp
    if world_size % mp:
        raise ConfigError(f"world size {world_size} is not divisible by TP x PP x CP = {tp} x {pp} x {cp} = {mp}")
    dp = world_size // mp
    if parallel.data_parallel_size is not None and parallel.data_parallel_size != dp:
        raise ConfigError(
            f"TP x PP x CP x DP = {tp} x {pp} x {cp} x {parallel.data_parallel_size} = "
            f"{mp * parallel.data_parallel_size}, but the world size is {world_size} "
            "(set parallel.data_parallel_size to null to derive it)")
    if (dp * cp * tp) % ep:
        raise ConfigError(f"parallel.expert_model_parallel_size ({ep}) must divide DP x CP x TP = {dp * cp * tp} "
                          f"(world size {world_size}, PP {pp})")
    return dp


def sequence_parallel_enabled(parallel: ParallelConfig, model: ModelConfig) -> bool:
    if parallel.sequence_parallel is not None:
        return parallel.sequence_parallel and parallel.tensor_model_parallel_size > 1
    return model.is_moe and parallel.tensor_model_parallel_size > 1


@dataclasses.dataclass(frozen=True)
class LaunchEnv:
    """Rank, world and rendezvous as told by the launcher."""

    rank: int
    world_size: int
    local_rank: int
    master_addr: str
    master_port: int
    launcher: str  # "torchrun", "slurm" or "single"


def first_slurm_host(nodelist: str) -> str:
    """First host of a Slurm node list such as ``gpu-[003-005,010],login1`` -> ``gpu-003``.

    Commas inside brackets separate ranges, outside they separate hosts; a host may hold several
    bracket groups (``rack[1-2]-n[01-04]`` -> ``rack1-n01``), each contributing its first value.
    """
    host, depth = "", 0
    for ch in nodelist.strip():
        if ch == "," and depth == 0:
            break
        depth += (ch == "[") - (ch == "]")
        if depth < 0 or depth > 1:
            raise ValueError(f"cannot parse SLURM_JOB_NODELIST {nodelist!r}")
        host += ch
    if depth or not host:
        raise ValueError(f"cannot parse SLURM_JOB_NODELIST {nodelist!r}")
    return re.sub(r"\[([^\]]*)\]", lambda m: re.split(r"[,-]", m.group(1))[0], host)


def detect_launch_env(env: Optional[dict] = None) -> LaunchEnv:
    env = dict(os.environ if env is None else env)
    if "RANK" in env and "WORLD_SIZE" in env:
        return LaunchEnv(int(env["RANK"]), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", 0)),
                         env.get("MASTER_ADDR", "127.0.0.1"), int(env.get("MASTER_PORT", 29500)), "torchrun")
    # Only inside an srun step: the batch script itself also sees SLURM_PROCID=0 and the job's
    # SLURM_NTASKS, but is a single process (a python run there must not wait for absent ranks).
    if "SLURM_PROCID" in env and "SLURM_NTASKS" in env and "SLURM_STEP_ID" in env:
        nodelist = env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST") or "127.0.0.1"
        job_id = int(env.get("SLURM_JOB_ID", "0"))
        port = int(env.get("MASTER_PORT", 20000 + job_id % 20000))
        return LaunchEnv(int(env["SLURM_PROCID"]), int(env["SLURM_NTASKS"]), int(env.get("SLURM_LOCALID", 0)),
                         env.get("MASTER_ADDR", first_slurm_host(nodelist)), port, "slurm")
    port = int(env["MASTER_PORT"]) if "MASTER_PORT" in env else free_port()  # alone: any port will do
    return LaunchEnv(0, 1, 0, "127.0.0.1", port, "single")


def _rendezvous_host(env: LaunchEnv) -> str:
    return slurm_node_address(env.master_addr) if env.launcher == "slurm" else env.master_addr


def slurm_node_address(node: str) -> str:
    """The address to reach a Slurm node by: its name when that resolves, else the node's
    ``NodeAddr`` from ``scontrol`` (fake or renamed nodes, e.g. ``n1`` at 127.0.0.1)."""
    try:
        socket.getaddrinfo(node, None)
        return node
    except OSError:
        pass
    try:
        out = subprocess.run(["scontrol", "show", "node", node, "-o"], capture_output=True, text=True,
                             timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        out = ""
    m = re.search(r"\bNodeAddr=(\S+)", out)
    if not m:
        raise RuntimeError(f"cannot resolve Slurm node {node!r} (no DNS entry, no NodeAddr from scontrol); "
                           "set MASTER_ADDR")
    return m.group(1)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (CPU and CUDA) identically; megatron's named streams come after."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def init_distributed(parallel: ParallelConfig, model: ModelConfig, seed: int = 1234,
                     env: Optional[LaunchEnv] = None) -> LaunchEnv:
    """Start torch.distributed (if not already), megatron's parallel state, and seed every rank.

    Data-parallel replicas share the model seed (so they start identical); megatron derives the
    tensor- and expert-parallel streams from it (different per TP/EP rank, as weights differ there).
    """
    from megatron.core import parallel_state
    from megatron.core.tensor_parallel import model_parallel_cuda_manual_seed

    from r1hpc.model import cpu_compat

    cpu_compat.apply()
    env = env or detect_launch_env()
    check_layout(parallel, model, env.world_size)
    use_cuda = torch.cuda.is_available()
    if use_cuda:
        torch.cuda.set_device(env.local_rank % torch.cuda.device_count())
    if not torch.distributed.is_initialized():
        backend = parallel.backend if parallel.backend != "auto" else ("nccl" if use_cuda else "gloo")
        torch.distributed.init_process_group(
            backend=backend, init_method=f"tcp://{_rendezvous_host(env)}:{env.master_port}",
            rank=env.rank, world_size=env.world_size,
            timeout=datetime.timedelta(minutes=parallel.timeout_minutes))
    if parallel_state.model_parallel_is_initialized():
        parallel_state.destroy_model_parallel()
    parallel_state.initialize_model_parallel(
        tensor_model_parallel_size=parallel.tensor_model_parallel_size,
        pipeline_model_parallel_size=parallel.pipeline_model_parallel_size,
        context_parallel_size=parallel.context_parallel_size,
        expert_model_parallel_size=parallel.expert_model_parallel_size,
        distributed_timeout_minutes=parallel.timeout_minutes,
    )
    seed_everything(seed)
    model_parallel_cuda_manual_seed(seed)
    return env


def destroy_distributed() -> None:
    from megatron.core import parallel_state

    if parallel_state.model_parallel_is_initialized():
        parallel_state.destroy_model_parallel()
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
