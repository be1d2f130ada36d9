"""Run a function on 2 CPU processes joined by a gloo group (tensor-parallel tests)."""
from __future__ import annotations

import os
import socket

import torch.distributed as dist
import torch.multiprocessing as mp


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(rank: int, world: int, port: int, fn, args) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        fn(rank, world, *args)
    finally:
        dist.destroy_process_group()


def run_gloo(fn, *args, world: int = 2) -> None:
    """``fn(rank, world, *args)`` on ``world`` spawned processes; a failure in any raises here."""
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    mp.spawn(_entry, args=(world, _free_port(), fn, args), nprocs=world, join=True)
