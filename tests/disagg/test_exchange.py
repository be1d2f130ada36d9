"""The exchange protocol on a real filesystem with real processes: one taker per order, one batch
per order, nothing half-written ever visible, and earlier trainer lives voided."""
from __future__ import annotations

import json
import multiprocessing as mp
import os
import signal
import time
from pathlib import Path

import pytest
import torch

from r1hpc.data.problem import Problem
from r1hpc.disagg.batch import RolloutBatch, load_batch, save_batch
from r1hpc.disagg.exchange import Exchange, order_name, parse_order_name
from r1hpc.rollout.generate import Sample


def _batch(order: str, n: int = 3, G: int = 2, version: int = 0, worker: str = "w0") -> RolloutBatch:
    life, step, shard = parse_order_name(order)
    problems = [Problem(id=f"p{i}", question=f"{i}+1", answer=str(i + 1), data_source="arithmetic",
                        extra={"numbers": [i, 1]}) for i in range(n)]
    samples = [Sample(prompt_ids=[1, 2, k], response_ids=list(range(k + 1)), logprobs=-torch.rand(k + 1),
                      entropies=torch.rand(k + 1), truncated=k % 2 == 0) for k in range(n * G)]
    return RolloutBatch(order=order, life=life, step=step, shard=shard, version=version, worker=worker,
                        problems=problems, samples=samples, scores=[{"total": 1.0, "accuracy": 1.0}] * (n * G),
                        generate_s=0.5, score_s=0.1)


def test_batch_round_trip(tmp_path):
    b = _batch(order_name(2, 5, 1), version=4)
    save_batch(b, tmp_path / "b.pt")
    got = load_batch(tmp_path / "b.pt")
    assert (got.order, got.life, got.step, got.shard, got.version, got.worker) == ("L2-s0000005-001", 2, 5, 1, 4, "w0")
    assert got.problems == b.problems
    for x, y in zip(got.samples, b.samples):
        assert x.prompt_ids == y.prompt_ids and x.response_ids == y.response_ids and x.truncated == y.truncated
        assert torch.equal(x.logprobs, y.logprobs) and torch.equal(x.entropies, y.entropies)
        assert x.routing is None and y.routing is None


def test_batch_carries_routing(tmp_path):
    """Routing replay: each sample's MoE experts per fed position and layer survive the batch file."""
    b = _batch(order_name(0, 1, 0))
    gen = torch.Generator().manual_seed(0)
    for s in b.samples:
        s.routing = torch.randint(0, 8, (len(s.prompt_ids) + len(s.response_ids) - 1, 3, 2), generator=gen,
                                  dtype=torch.int16)
    save_batch(b, tmp_path / "b.pt")
    got = load_batch(tmp_path / "b.pt")
    for x, y in zip(got.samples, b.samples):
        assert x.routing.dtype == torch.int16 and torch.equal(x.routing, y.routing)


def test_batch_file_cannot_carry_code(tmp_path):
    """The trainer loads batches with weights_only: a pickled object is refused, not executed."""
    torch.save({"samples": [], "problems": [], "evil": os.system}, tmp_path / "b.pt")
    with pytest.raises(Exception, match="(?i)weights_only|unsupported|global"):
        load_batch(tmp_path / "b.pt")


def _claimer(root: str, worker: str, out: "mp.Queue") -> None:
    ex = Exchange(root)
    got = []
    for order in ex.open_orders():
        if ex.claim(order, worker) is not None:
            got.append(order.stem)
    out.put((worker, got))


def test_each_order_has_one_taker(tmp_path):
    ex = Exchange(tmp_path)
    ex.make_dirs()
    for step in range(40):
        ex.post_order(1, step, 0, {"min_version": 0})
    q = mp.get_context("spawn").Queue()
    procs = [mp.get_context("spawn").Process(target=_claimer, args=(str(tmp_path), f"w{i}", q)) for i in range(4)]
    for p in procs:
        p.start()
    taken = dict(q.get(timeout=60) for _ in procs)
    for p in procs:
        p.join()
    all_taken = [o for got in taken.values() for o in got]
    assert sorted(all_taken) == sorted(order_name(1, s, 0) for s in range(40))  # none lost, none twice
    assert not ex.open_orders()
    assert {w for _, _, w in ex.claimed()} <= set(taken)


def test_a_reposted_order_yields_one_batch(tmp_path):
    """Worker A is slow, its lease lapses, B serves the re-posted order; A's late batch is dropped."""
    ex = Exchange(tmp_path)
    ex.make_dirs()
    ex.post_order(1, 0, 0, {"min_version": 0})
    claim_a = ex.claim(ex.open_orders()[0], "a")
    assert ex.repost(claim_a)  # what the trainer does when a's heartbeat stops
    claim_b = ex.claim(ex.open_orders()[0], "b")
    name = order_name(1, 0, 0)
    staged_b = ex.staging_path(name, "b")
    save_batch(_batch(name, worker="b"), staged_b)
    assert ex.publish_batch(staged_b, name)
    staged_a = ex.staging_path(name, "a")
    save_batch(_batch(name, worker="a"), staged_a)
    assert not ex.publish_batch(staged_a, name)
    assert load_batch(ex.batch_path(name)).worker == "b"
    assert not any(ex.staging.iterdir())
    assert claim_b.exists() and not claim_a.exists()


def _write_and_die(root: str, name: str) -> None:
    ex = Exchange(root)
    save_batch(_batch(name, n=64, G=8), ex.staging_path(name, "w9"), crash_midway=True)


def test_a_worker_killed_mid_write_exposes_nothing(tmp_path):
    ex = Exchange(tmp_path)
    ex.make_dirs()
    name = order_name(3, 7, 0)
    p = mp.get_context("spawn").Process(target=_write_and_die, args=(str(tmp_path), name))
    p.start()
    p.join(60)
    assert p.exitcode == -signal.SIGKILL
    staged = list(ex.staging.iterdir())
    assert len(staged) == 1 and staged[0].stat().st_size > 0  # the half-written file exists...
    with pytest.raises(Exception):
        load_batch(staged[0])  # ...is unreadable...
    assert not ex.batch_path(name).exists()  # ...and was never published
    assert ex.sweep(keep_life=4) == 1 and not any(ex.staging.iterdir())


def _weights_reader(root: str, stop_at: int, out: "mp.Queue") -> None:
    """Read whatever LATEST points at, as fast as possible, until version stop_at."""
    ex = Exchange(root)
    seen, torn = set(), 0
    while True:
        latest = ex.latest_version()
        if latest is None:
            continue
        try:
            blob = (Path(latest["path"]) / "blob.bin").read_bytes()
            meta = json.loads((Path(latest["path"]) / "meta.json").read_text())
        except FileNotFoundError:  # pruned between pointer read and file read: look again
            continue
        if len(blob) != 1 << 20 or set(blob) != {latest["version"] % 251} or meta["version"] != latest["version"]:
            torn += 1
        seen.add(latest["version"])
        if latest["version"] >= stop_at:
            out.put((sorted(seen), torn))
            return


def test_weights_are_never_seen_half_written(tmp_path):
    ex = Exchange(tmp_path)
    ex.make_dirs()
    q = mp.get_context("spawn").Queue()
    reader = mp.get_context("spawn").Process(target=_weights_reader, args=(str(tmp_path), 30, q))
    reader.start()
    for v in range(31):
        tmp = ex.staging_version_dir(v, 1)
        tmp.mkdir()
        with open(tmp / "blob.bin", "wb") as f:  # written in pieces, as a real save is
            for _ in range(16):
                f.write(bytes([v % 251]) * (1 << 16))
                f.flush()
        ex.commit_version(v, 1, {}, keep=3)
        time.sleep(0.01)
    seen, torn = q.get(timeout=120)
    reader.join(30)
    assert torn == 0
    assert seen[-1] == 30
    assert sorted(p.name for p in ex.weights.iterdir() if p.is_dir()) == ["v0000028-L1", "v0000029-L1", "v0000030-L1"]


def test_a_new_trainer_life_voids_the_old_one(tmp_path):
    ex = Exchange(tmp_path)
    ex.make_dirs()
    ex.post_order(1, 4, 0, {})
    ex.post_order(1, 5, 0, {})
    ex.claim(ex.open_orders()[0], "w0")
    old = order_name(1, 3, 0)
    staged = ex.staging_path(old, "w1")
    save_batch(_batch(old), staged)
    ex.publish_batch(staged, old)
    ex.post_order(2, 4, 0, {})
    assert ex.sweep(keep_life=2) == 3
    assert [p.stem for p in ex.open_orders()] == [order_name(2, 4, 0)]
    assert not ex.claimed() and not ex.batch_path(old).exists()
