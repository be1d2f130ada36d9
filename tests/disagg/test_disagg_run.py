"""A disaggregated run end to end on the CPU: a trainer process and rollout worker processes
exchanging weights and batches through a directory, against the colocated run with the same seed.

With ``disagg.max_staleness=0`` every batch is sampled by exactly the weights the colocated run
would sample it with, with the same seed, so the per-step training metrics are asserted equal to
the colocated run's (tolerance 1e-6: the only difference allowed is float noise, and there is
none on one thread). That holds even when a worker is SIGKILLed in the middle of writing a batch
and a replacement with the same id joins later: every step must be consumed exactly once.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from r1hpc import faults
from r1hpc.disagg.exchange import Exchange

ROOT = Path(__file__).resolve().parents[2]
CONFIG = str(ROOT / "configs/ci_r1zero.yaml")
STEPS = 4
pytestmark = pytest.mark.slow
# actor/* appear only on steps with a non-zero advantage (an update happened)
COMPARED = ("reward/mean", "reward/accuracy", "response_length/mean", "rollout/entropy", "actor/entropy",
            "actor/grad_norm", "actor/pg_clipfrac_high", "actor/updates")


def _env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RANK", "WORLD_SIZE", "SLURM_", "MASTER_"))}
    env.update(OMP_NUM_THREADS="1", **extra)  # one thread everywhere: bitwise-comparable float results
    return env


def _overrides(out: Path, name: str) -> list[str]:
    return [f"run.output_dir={out}", f"run.name={name}", f"pretrain.base_dir={out}/base", "pretrain.steps=300",
            f"grpo.steps={STEPS}", "grpo.eval_every=0", "eval.num_problems=8", "eval.samples_per_problem=2",
            "rollout.prompts_per_step=8", "disagg.heartbeat_s=0.5", "disagg.lease_s=4", "disagg.poll_s=0.05",
            "disagg.max_poll_s=0.5", "disagg.status_every_s=5"]


def _cli(args: list[str], env: dict, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "r1hpc.cli", *args], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, **kw)


def _finish(procs: list[subprocess.Popen], timeout: float) -> list[str]:
    """Each process's output once it exited; one still running at the deadline is killed and its log says
    so, so that a failure shows why a trainer or worker stalled instead of a bare TimeoutExpired."""
    deadline = time.monotonic() + timeout
    logs = []
    for p in procs:
        try:
            logs.append(p.communicate(timeout=max(deadline - time.monotonic(), 0.1))[0])
        except subprocess.TimeoutExpired:
            p.kill()
            logs.append(p.communicate()[0] + f"\n[test: killed, still running after {timeout:.0f} s]")
    return logs


def _steps(run_dir: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if "reward/mean" in r]


@pytest.fixture(scope="module")
def out(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("disagg")


@pytest.fixture(scope="module")
def colocated(out) -> list[dict]:
    p = _cli(["train", CONFIG, *_overrides(out, "colocated")], _env())
    log = p.communicate(timeout=900)[0]
    assert p.returncode == 0, log[-4000:]
    return _steps(out / "colocated")


def _assert_same_run(got: list[dict], want: list[dict]) -> None:
    assert [r["step"] for r in got] == [r["step"] for r in want] == list(range(1, STEPS + 1))
    assert any(w.get("actor/updates", 0) > 0 for w in want), "no step learned anything: nothing is compared"
    for g, w in zip(got, want):
        assert set(COMPARED) & set(g) == set(COMPARED) & set(w), g["step"]
        for k in set(COMPARED) & set(w):
            assert g[k] == pytest.approx(w[k], abs=1e-6), (g["step"], k)


def _assert_exactly_once(exchange: Path) -> list[dict]:
    ledger = Exchange(exchange).read_ledger()
    assert sorted((r["step"], r["shard"]) for r in ledger) == [(s, 0) for s in range(STEPS)]
    assert all(r["staleness"] == 0 for r in ledger)
    return ledger


def test_staleness_zero_reproduces_the_colocated_run(out, colocated):
    name = "disagg"
    env = _env()
    workers = [_cli(["rollout-worker", CONFIG, *_overrides(out, name), "--worker-id", f"w{i}"], env) for i in range(2)]
    trainer = _cli(["train", CONFIG, *_overrides(out, name), "disagg.enabled=true"], env)
    log = _finish([trainer], 900)[0]
    worker_logs = _finish(workers, 120 if trainer.returncode == 0 else 0)  # on DONE they leave within a poll
    assert trainer.returncode == 0, (log[-4000:], [w[-2000:] for w in worker_logs])
    assert [w.returncode for w in workers] == [0, 0], worker_logs  # both saw DONE and left
    _assert_same_run(_steps(out / name), colocated)
    ledger = _assert_exactly_once(out / name / "exchange")
    assert {r["worker"] for r in ledger} <= {"w0", "w1"}
    rows = _steps(out / name)
    assert all(r["disagg/staleness_max"] == 0 and r["disagg/idle_s"] >= 0 for r in rows)
    assert rows[-1]["disagg/staleness_hist/0"] == STEPS
    assert "the trainer finished" in worker_logs[0]


def test_a_worker_killed_mid_write_and_requeued_loses_and_repeats_nothing(out, colocated):
    """w0 SIGKILLs itself halfway through writing its second batch; w1 is slow to start, so the
    trainer must re-post w0's order when its lease lapses; a new w0 (a requeued array task) joins
    late. The run must finish, consume each step once, and equal the colocated run."""
    name = "killed"
    ov = _overrides(out, name) + ["disagg.status_every_s=2"]
    victim = _cli(["rollout-worker", CONFIG, *ov, "--worker-id", "w0"], _env(**{faults.ENV: "disagg.batch_write:2"}))
    trainer = _cli(["train", CONFIG, *ov, "disagg.enabled=true"], _env())
    victim_log = victim.communicate(timeout=600)[0]
    assert victim.returncode == -9, victim_log  # died by SIGKILL inside the write
    exchange = Exchange(out / name / "exchange")
    assert list(exchange.staging.glob("*@w0.*")), "the half-written batch should be left behind"
    survivor = _cli(["rollout-worker", CONFIG, *ov, "--worker-id", "w1"], _env())
    time.sleep(5)
    requeued = _cli(["rollout-worker", CONFIG, *ov, "--worker-id", "w0"], _env())
    log = _finish([trainer], 900)[0]
    logs = _finish([survivor, requeued], 120 if trainer.returncode == 0 else 0)
    assert trainer.returncode == 0, (log[-4000:], [w[-2000:] for w in logs])
    assert [p.returncode for p in (survivor, requeued)] == [0, 0], logs
    assert "re-posted" in log or "gave back" in logs[1], (log[-3000:], logs)
    assert "0/1 batches ready" in log and "claimed by w0" in log  # the waiting trainer said what it waited for
    _assert_same_run(_steps(out / name), colocated)
    _assert_exactly_once(out / name / "exchange")
    assert not list(exchange.staging.iterdir()) and not exchange.claimed() and not exchange.open_orders()


def test_staleness_one_overlaps_sampling_and_training(out, colocated):
    """With max_staleness 1 the worker samples step t+1 from v_t while the trainer trains step t.
    Started the way users start it without Slurm: ``r1hpc launch --mode disaggregated --local``."""
    name = "stale"
    ov = _overrides(out, name) + ["disagg.max_staleness=1", "algo.tis_cap=2.0"]
    launch = _cli(["launch", CONFIG, *ov, "--mode", "disaggregated", "--rollout-workers", "1", "--local"], _env())
    log = launch.communicate(timeout=900)[0]
    assert launch.returncode == 0, log[-4000:]
    assert "the trainer finished" in log  # the worker left on DONE, not by being killed
    ledger = Exchange(out / name / "exchange").read_ledger()
    assert sorted(r["step"] for r in ledger) == list(range(STEPS))
    assert {r["staleness"] for r in ledger} <= {0, 1} and any(r["staleness"] == 1 for r in ledger)
    rows = _steps(out / name)
    last = rows[-1]
    assert last["disagg/staleness_hist/0"] + last["disagg/staleness_hist/1"] == STEPS
    assert last["disagg/staleness_hist/1"] == sum(r["staleness"] == 1 for r in ledger)


def test_a_worker_without_trainer_idles_then_exits(tmp_path):
    """No trainer ever comes: the worker sleeps (CPU far below its wall time; spinning would use
    all of it) and leaves after disagg.trainer_lost_minutes."""
    ov = [f"run.output_dir={tmp_path}", "run.name=orphan", "disagg.trainer_lost_minutes=0.25"]
    start = time.monotonic()
    p = _cli(["rollout-worker", CONFIG, *ov, "--worker-id", "w5"], _env())
    _, status, usage = os.wait4(p.pid, 0)
    wall = time.monotonic() - start
    log = p.stdout.read()
    assert os.waitstatus_to_exitcode(status) == 0, log
    assert "no trainer heartbeat" in log
    assert wall >= 15
    assert (usage.ru_utime + usage.ru_stime) < 0.5 * wall, (usage, wall)
    beat = json.loads((tmp_path / "orphan" / "exchange" / "workers" / "w5.json").read_text())
    assert beat["state"] == "stopped" and beat["batches"] == 0
