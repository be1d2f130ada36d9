"""Run a function on 2 CPU processes joined by a gloo group (tensor-parallel tests)."""
from __future__ import annotations

import os

import torch.distributed as dist

from tests.multiproc import run_workers


def _with_group(fn, args) -> None:
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{os.environ['MASTER_PORT']}",
                            rank=rank, world_size=world)
    try:
        fn(rank, world, *args)
    finally:
        dist.destroy_process_group()


def run_gloo(fn, *args, world: int = 2) -> None:
    """``fn(rank, world, *args)`` on ``world`` spawned processes; a failure in any raises here."""
    run_workers(_with_group, world, fn, args)
