"""Run a function on N CPU processes joined by gloo, the way torchrun would, and collect results."""
from __future__ import annotations

import os
import pickle
import tempfile
import time
import traceback
from pathlib import Path

import torch.multiprocessing as mp

from r1hpc.distributed import free_port


def _entry(rank: int, world: int, port: int, out_dir: str, fn, args) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), OMP_NUM_THREADS="1")
    import torch

    torch.set_num_threads(1)  # spawned after torch was imported: the variable alone no longer applies
    try:
        result = ("ok", fn(*args))
    except BaseException:  # report any failure to the parent instead of hanging it
        result = ("error", traceback.format_exc())
    Path(out_dir, f"{rank}.pkl").write_bytes(pickle.dumps(result))


def run_workers(fn, world_size: int, *args, timeout_s: float = 240.0) -> list:
    """``fn(*args)`` on every rank (importable, top-level function); returns per-rank results."""
    with tempfile.TemporaryDirectory() as out_dir:
        ctx = mp.start_processes(_entry, args=(world_size, free_port(), out_dir, fn, args),
                                 nprocs=world_size, join=False, start_method="spawn")
        deadline = time.monotonic() + timeout_s
        while not ctx.join(timeout=max(0.0, deadline - time.monotonic())):
            if time.monotonic() >= deadline:
                for p in ctx.processes:
                    if p.is_alive():
                        p.kill()
                raise TimeoutError(f"workers did not finish in {timeout_s}s")
        results = []
        for rank in range(world_size):
            path = Path(out_dir, f"{rank}.pkl")
            if not path.exists():
                raise RuntimeError(f"rank {rank} died without a result")
            status, value = pickle.loads(path.read_bytes())
            if status == "error":
                raise RuntimeError(f"rank {rank} failed:\n{value}")
            results.append(value)
        return results
