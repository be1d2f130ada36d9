"""Run a function on N CPU processes joined by gloo, the way torchrun would, and collect results.

A rank that fails ends the run at once with its traceback (its peers would otherwise wait in a
collective until the timeout); a run that hangs ends with every live rank's Python stack.
"""
from __future__ import annotations

import faulthandler
import os
import pickle
import signal
import tempfile
import time
import traceback
from pathlib import Path

import torch.multiprocessing as mp

from r1hpc.distributed import free_port

POLL_S = 0.5
STACK_DUMP_WAIT_S = 3.0


def _entry(rank: int, world: int, port: int, out_dir: str, fn, args) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), OMP_NUM_THREADS="1")
    stacks = open(Path(out_dir, f"{rank}.stacks"), "w")  # open for the process's life: faulthandler writes to its fd
    faulthandler.register(signal.SIGUSR1, file=stacks, all_threads=True)
    import torch

    torch.set_num_threads(1)  # spawned after torch was imported: the variable alone no longer applies
    try:
        result = ("ok", fn(*args), time.time())
    except BaseException:  # report any failure to the parent instead of hanging it
        result = ("error", traceback.format_exc(), time.time())
    tmp = Path(out_dir, f"{rank}.pkl.tmp")
    tmp.write_bytes(pickle.dumps(result))
    tmp.rename(Path(out_dir, f"{rank}.pkl"))  # the parent never reads half a result


def _collect(out_dir: str, world_size: int, reported: dict) -> None:
    """Add rank -> (status, value, time) for each rank that has newly written its result (each file is
    read once, however often the parent polls)."""
    for rank in range(world_size):
        path = Path(out_dir, f"{rank}.pkl")
        if rank not in reported and path.exists():
            reported[rank] = pickle.loads(path.read_bytes())


def _failures(reported: dict) -> str | None:
    """Every failed rank's traceback, earliest first: the first is the cause, later ones often its echo."""
    failed = sorted((when, rank, value) for rank, (status, value, when) in reported.items() if status == "error")
    return "\n".join(f"rank {rank} failed:\n{value}" for _, rank, value in failed) or None


def _stop_live_ranks(ctx, out_dir: str, reported: dict) -> str:
    """Ask each rank still working for its Python stacks, then kill every live rank; returns the stacks."""
    alive = {rank: p for rank, p in enumerate(ctx.processes) if p.is_alive()}
    working = [rank for rank in alive if rank not in reported]
    for rank in working:
        try:
            os.kill(alive[rank].pid, signal.SIGUSR1)
        except ProcessLookupError:  # it ended meanwhile
            pass
    time.sleep(STACK_DUMP_WAIT_S if working else 0.0)
    for p in alive.values():
        p.kill()
        p.join()
    stacks = []
    for rank in working:
        path = Path(out_dir, f"{rank}.stacks")
        stacks.append(f"--- rank {rank} ---\n{path.read_text() if path.exists() else '(not started)'}")
    return "\n".join(stacks)


def run_workers(fn, world_size: int, *args, timeout_s: float = 240.0) -> list:
    """``fn(*args)`` on every rank (importable, top-level function); returns per-rank results."""
    with tempfile.TemporaryDirectory() as out_dir:
        ctx = mp.start_processes(_entry, args=(world_size, free_port(), out_dir, fn, args),
                                 nprocs=world_size, join=False, start_method="spawn")
        deadline = time.monotonic() + timeout_s
        reported: dict = {}
        while not ctx.join(timeout=POLL_S):
            _collect(out_dir, world_size, reported)
            failures = _failures(reported)
            if failures:
                stacks = _stop_live_ranks(ctx, out_dir, reported)
                raise RuntimeError(failures + (f"\nthe other ranks were stopped here:\n{stacks}" if stacks else ""))
            if time.monotonic() >= deadline:
                stacks = _stop_live_ranks(ctx, out_dir, reported)
                raise TimeoutError(f"workers did not finish in {timeout_s}s (finished: ranks {sorted(reported)}); "
                                   f"the others were here:\n{stacks}")
        _collect(out_dir, world_size, reported)
        missing = [rank for rank in range(world_size) if rank not in reported]
        if missing:
            raise RuntimeError(f"ranks {missing} died without a result")
        failures = _failures(reported)
        if failures:
            raise RuntimeError(failures)
        return [reported[rank][1] for rank in range(world_size)]
