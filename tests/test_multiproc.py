"""The multi-process test harness: a failing rank ends the run at once, a hung run names where it hangs."""
from __future__ import annotations

import time

import pytest

from tests.multiproc import run_workers


def _rank_1_fails_while_rank_0_waits() -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo")
    if dist.get_rank() == 1:
        raise ValueError("bad shard on rank 1")
    dist.barrier()  # never met: rank 1 is gone


def _wait_forever() -> None:
    while True:
        time.sleep(0.1)


def _rank_number() -> int:
    import torch.distributed as dist

    dist.init_process_group("gloo")
    rank = dist.get_rank()
    dist.barrier()
    dist.destroy_process_group()
    return rank


@pytest.mark.multiproc
def test_results_come_back_in_rank_order():
    assert run_workers(_rank_number, 2) == [0, 1]


@pytest.mark.multiproc
def test_a_failing_rank_ends_the_run_with_its_traceback_and_its_peers_stacks():
    with pytest.raises(RuntimeError) as failure:
        run_workers(_rank_1_fails_while_rank_0_waits, 2, timeout_s=120)  # a RuntimeError, not the TimeoutError
    message = str(failure.value)
    assert message.startswith("rank 1 failed") and "ValueError: bad shard on rank 1" in message
    # Rank 0 follows, stopped at the barrier (its stack) or failed there once rank 1 left (its traceback).
    assert "in barrier" in message.split("ValueError: bad shard on rank 1", 1)[1]


@pytest.mark.multiproc
def test_a_hung_run_times_out_with_every_live_ranks_stack():
    with pytest.raises(TimeoutError) as hang:
        run_workers(_wait_forever, 2, timeout_s=15)
    message = str(hang.value)
    assert "finished: ranks []" in message
    assert message.count("in _wait_forever") == 2
