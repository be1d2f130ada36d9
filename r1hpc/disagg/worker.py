"""``r1hpc rollout-worker``: one task of the rollout job array.

Loop: take the oldest order whose weights exist, load the newest published weights if they changed
(no restart), sample G responses per problem, score them, write the batch, publish it. A worker
that dies mid-batch leaves a claim (re-posted by the trainer once its heartbeat stops) and a staged
file (never read, swept); a requeued worker gives back what its earlier run had claimed. With no
trainer heartbeat the worker sleeps (polls at ``disagg.max_poll_s``), and exits after
``disagg.trainer_lost_minutes``; it exits as soon as the trainer writes DONE.
"""
from __future__ import annotations

import dataclasses
import os
import signal
import socket
import time
from functools import partial
from pathlib import Path
from typing import Callable, Optional

from r1hpc import faults
from r1hpc.checkpoint.preemption import EXIT_CODE_REQUEUE
from r1hpc.data.problem import Problem
from r1hpc.disagg.batch import RolloutBatch, save_batch
from r1hpc.disagg.exchange import Exchange, read_json
from r1hpc.disagg.config import exchange_root
from r1hpc.disagg.source import Heartbeat


class Stopped(Exception):
    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def default_worker_id() -> str:
    task = os.environ.get("SLURM_ARRAY_TASK_ID")
    return f"w{task}" if task is not None else f"{socket.gethostname()}-{os.getpid()}"


class RolloutWorker:
    def __init__(self, cfg, worker_id: Optional[str] = None, say: Callable[[str], None] = print) -> None:
        self.cfg, self.d = cfg, cfg.disagg
        self.ex = Exchange(exchange_root(cfg))
        self.id = worker_id or default_worker_id()
        self.say = lambda msg: say(f"[worker {self.id}] {msg}")
        self.stats = {"state": "starting", "batches": 0, "samples": 0, "busy_s": 0.0, "version": None,
                      "claim": None, "duplicates": 0}
        self.started = time.time()
        self.loaded: Optional[tuple[int, int]] = None  # (life, version) in the model
        self.model = self.tok = self.scorer = None

    # ------------------------------------------------------------------ housekeeping
    def _beat(self) -> None:
        self.ex.beat(self.ex.workers / f"{self.id}.json",
                     {**self.stats, "samples_per_s": self.stats["samples"] / max(self.stats["busy_s"], 1e-9)})

    def _give_back_own(self) -> None:
        """A requeued worker restarts under the same id: its earlier run's claims go back to the queue
        and its half-written batches are deleted."""
        for claim, order, worker in self.ex.claimed():
            if worker == self.id and self.ex.repost(claim):
                self.say(f"gave back {order}, claimed by this worker's earlier run")
        for staged in self.ex.staging.glob(f"*@{self.id}.*"):
            staged.unlink(missing_ok=True)

    def _trainer_lost(self) -> bool:
        rec = self.ex.trainer()
        last = rec["time"] if rec else self.started
        return time.time() - last > 60 * self.d.trainer_lost_minutes

    # ------------------------------------------------------------------ model
    def _build(self) -> None:
        from r1hpc.data.prompts import run_data_sources
        from r1hpc.data.templates import render_prompt
        from r1hpc.distributed import init_distributed
        from r1hpc.model.routing_replay import attach_for_rollout
        from r1hpc.rewards.judge_model import build_judges
        from r1hpc.rewards.registry import RewardScorer
        from r1hpc.train.policy import load_policy

        single = dataclasses.replace(self.cfg.parallel, tensor_model_parallel_size=1, pipeline_model_parallel_size=1,
                                     expert_model_parallel_size=1, context_parallel_size=1, data_parallel_size=None,
                                     sequence_parallel=None)
        env = init_distributed(single, self.cfg.model, seed=self.cfg.run.seed)
        if env.world_size != 1:
            raise RuntimeError(f"a rollout worker is one process (got world size {env.world_size}); "
                               "scale out with more array tasks")
        # no weights yet: the newest published ones are loaded before the first order
        self.engine, self.tok, model_cfg = load_policy(self.cfg, None, trainable=False, parallel=single)
        self.max_seq_length = model_cfg.max_seq_length
        attach_for_rollout(self.engine.module, self.cfg.routing)  # the samples carry their MoE routing (R3)
        self.scorer = RewardScorer(self.cfg.rewards, models=build_judges(self.cfg, run_data_sources(self.cfg.data)))
        self.render = partial(render_prompt, cfg=self.cfg.data.template, chat_template=self.tok.chat_template)

    def _load_latest(self, latest: dict) -> bool:
        """Load the newest weights unless already held; False when they vanished mid-load (a newer
        version replaced them): the caller looks again."""
        from r1hpc.model.weights import load_model_weights

        key = (latest["life"], latest["version"])
        if self.loaded == key:
            return True
        try:
            load_model_weights(self.engine.module, latest["path"])
        except (FileNotFoundError, RuntimeError, OSError) as e:
            if Path(latest["path"]).is_dir():
                raise
            self.say(f"v{latest['version']} was removed while loading ({type(e).__name__}); looking again")
            return False
        self.loaded = key
        self.stats["version"] = latest["version"]
        return True

    # ------------------------------------------------------------------ the loop
    def _next_order(self, latest: dict) -> Optional[tuple[Path, dict]]:
        for order in self.ex.open_orders():
            rec = read_json(order)
            if rec is None or rec["life"] != latest["life"] or rec["min_version"] > latest["version"]:
                continue
            claim = self.ex.claim(order, self.id)
            if claim is not None:
                return claim, rec
        return None

    def _serve(self, claim: Path, order: dict) -> None:
        from r1hpc.rollout.generate import response_text
        from r1hpc.rollout.groups import rollout_groups

        problems = [Problem(**p) for p in order["problems"]]
        self.stats.update(state=f"generating {order['name']} with v{self.loaded[1]}", claim=order["name"])
        t0 = time.perf_counter()
        samples = rollout_groups(self.engine.module, self.tok, problems, render=self.render,
                                 rollout=self.cfg.rollout, seed=order["seed"], step=order["step"],
                                 shard=order["shard"], max_seq_length=self.max_seq_length)
        t1 = time.perf_counter()
        G = self.cfg.rollout.group_size
        scores = self.scorer.score_batch([response_text(self.tok, s) for s in samples],
                                         [p for p in problems for _ in range(G)])
        t2 = time.perf_counter()
        batch = RolloutBatch(order=order["name"], life=order["life"], step=order["step"], shard=order["shard"],
                             version=self.loaded[1], worker=self.id, problems=problems, samples=samples,
                             scores=scores, generate_s=t1 - t0, score_s=t2 - t1)
        staged = self.ex.staging_path(order["name"], self.id)
        self.stats["state"] = f"writing {order['name']}"
        # R1HPC_FAULT=disagg.batch_write:N (crash tests): die half-way through this worker's N-th batch
        save_batch(batch, staged, crash_midway=faults.armed("disagg.batch_write", self.stats["batches"] + 1))
        try:
            published = self.ex.publish_batch(staged, order["name"])
        except FileNotFoundError:  # swept: the trainer restarted and voided this order
            published = False
        claim.unlink(missing_ok=True)  # gone already if the trainer re-posted it after a lapse
        self.stats["busy_s"] += t2 - t0
        if published:
            self.stats["batches"] += 1
            self.stats["samples"] += len(samples)
            self.say(f"{order['name']}: {len(samples)} samples with v{self.loaded[1]} in {t2 - t0:.1f} s")
        else:
            self.stats["duplicates"] += 1
            self.say(f"{order['name']}: already served by another worker (or voided); dropped")
        self.stats.update(claim=None)

    def run(self) -> int:
        self.ex.make_dirs()
        self._give_back_own()
        heartbeat = Heartbeat(self._beat, self.d.heartbeat_s)
        self._beat()
        heartbeat.start()
        previous = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGUSR2)}

        def stop(signum, frame):
            raise Stopped(signum)

        for s in previous:
            signal.signal(s, stop)
        claim: Optional[Path] = None
        try:
            pause = self.d.poll_s
            while True:
                if self.ex.done_file.exists():
                    self.say(f"the trainer finished; {self.stats['batches']} batches served")
                    return 0
                if self._trainer_lost():
                    self.say(f"no trainer heartbeat for {self.d.trainer_lost_minutes:g} min; exiting idle")
                    return 0
                latest = self.ex.latest_version()
                got = self._next_order(latest) if latest else None
                if got is None:
                    self.stats["state"] = "idle: waiting for the trainer" if latest is None else \
                        f"idle: no order servable by v{latest['version']}"
                    time.sleep(pause)
                    pause = min(2 * pause, self.d.max_poll_s)
                    continue
                pause = self.d.poll_s
                claim, order = got
                if self.scorer is None:  # built on the first order: the base exists once weights do
                    self._build()
                if not self._load_latest(latest):
                    self.ex.repost(claim)
                    continue
                self._serve(claim, order)
                claim = None
        except Stopped as e:
            if claim is not None and self.ex.repost(claim):
                self.say(f"{e}: gave back {claim.name.partition('@')[0]}")
            for staged in self.ex.staging.glob(f"*@{self.id}.*"):
                staged.unlink(missing_ok=True)
            return EXIT_CODE_REQUEUE if e.signum == signal.SIGUSR2 else 128 + e.signum
        finally:
            heartbeat.stop()
            self.stats["state"] = "stopped"
            self._beat()
            for s, h in previous.items():
                signal.signal(s, h)
            if self.scorer is not None:
                self.scorer.close()


def run_rollout_worker(cfg, worker_id: Optional[str] = None) -> int:
    from r1hpc.distributed import destroy_distributed

    worker = RolloutWorker(cfg, worker_id)
    try:
        return worker.run()
    finally:
        if worker.scorer is not None:
            destroy_distributed()
