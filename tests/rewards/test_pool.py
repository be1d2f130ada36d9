import os
import signal
import time

import pytest

from r1hpc.rewards.pool import WorkerPool


class FakeTimeout(BaseException):
    """Like math-verify's TimeoutException: not an Exception."""


def work(kind: str, x: int = 0):
    if kind == "ok":
        return x * 2
    if kind == "sleep":
        time.sleep(60)
    if kind == "die":
        os._exit(7)
    if kind == "raise":
        raise ValueError("bad input")
    if kind == "base":
        raise FakeTimeout()
    return os.getpid()


@pytest.fixture(scope="module")
def small_pool():
    with WorkerPool(2, memory_mb=1024) as p:
        p.start()
        yield p


def test_results_keep_order(small_pool):
    res = small_pool.map(work, [("ok", i) for i in range(20)], timeout_s=10)
    assert [r.value for r in res] == [2 * i for i in range(20)] and all(r.status == "ok" for r in res)


def test_errors_do_not_kill_workers(small_pool):
    pids = {w.proc.pid for w in small_pool._workers}
    res = small_pool.map(work, [("raise",), ("base",)], timeout_s=10)
    assert [r.status for r in res] == ["error", "error"] and "bad input" in res[0].value
    assert {r.value for r in small_pool.map(work, [("pid",)] * 4, timeout_s=10)} <= pids


def test_workers_ignore_the_schedulers_preemption_signals(small_pool):
    """Slurm signals every process of a job step; the trainer saves, its reward workers keep serving."""
    pids = {w.proc.pid for w in small_pool._workers}
    for pid in pids:
        os.kill(pid, signal.SIGUSR2)
        os.kill(pid, signal.SIGTERM)
    res = small_pool.map(work, [("pid",)] * 4, timeout_s=10)
    assert all(r.status == "ok" for r in res) and {r.value for r in res} <= pids
    assert {w.proc.pid for w in small_pool._workers} == pids


def test_hung_and_crashed_workers_are_replaced(small_pool):
    timeouts, crashes = small_pool.timeouts, small_pool.crashes
    t0 = time.monotonic()
    res = small_pool.map(work, [("sleep",), ("die",), ("ok", 21)], timeout_s=1.0)
    assert [r.status for r in res] == ["timeout", "error", "ok"] and res[2].value == 42
    assert time.monotonic() - t0 < 1.0 + 5  # + a replacement worker's start-up
    assert (small_pool.timeouts, small_pool.crashes) == (timeouts + 1, crashes + 1)
    assert [r.value for r in small_pool.map(work, [("ok", 1)] * 4, timeout_s=10)] == [2] * 4


def test_closed_pool_refuses_work():
    p = WorkerPool(1)
    p.close()
    with pytest.raises(RuntimeError, match="closed"):
        p.map(work, [("ok", 1)], timeout_s=1)
