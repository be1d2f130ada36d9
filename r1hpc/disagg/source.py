"""The trainer's side of the exchange: post orders, wait for their batches, publish weights.

Rank 0 alone writes to the exchange (orders, ledger, heartbeat, lease expiry); every rank reads the
step's batch files once rank 0 has checked them, and keeps its data-parallel slice, exactly as
colocated ranks slice the global prompt batch. The problems of each batch are checked against the
trainer's own prompt stream, so a batch can only ever be consumed at the step it was made for.
"""
from __future__ import annotations

import dataclasses
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Callable, Iterator, Optional

import torch

from r1hpc.data.problem import Problem
from r1hpc.disagg.batch import RolloutBatch, load_batch
from r1hpc.disagg.config import DisaggConfig
from r1hpc.disagg.exchange import Exchange, order_name


class ExchangeTimeout(RuntimeError):
    pass


class Heartbeat(threading.Thread):
    """Beats a record every ``period`` seconds from a daemon thread, so a long step still shows life."""

    def __init__(self, beat: Callable[[], None], period: float) -> None:
        super().__init__(daemon=True)
        self._beat, self._period, self._stopping = beat, period, threading.Event()

    def run(self) -> None:
        while not self._stopping.wait(self._period):
            try:
                self._beat()
            except OSError:  # a full or flaky filesystem must not kill the job from a side thread
                pass

    def stop(self) -> None:
        """Stop beating and wait for a beat in flight: a caller's own last beat then writes the same
        file alone (two writers of one temporary file lose a rename; seen as a worker exiting 1)."""
        self._stopping.set()
        if self.is_alive():
            self.join()


class ExchangeSource:
    """Rollout batches for ``GRPOTrainer`` from rollout workers instead of its own sampler."""

    def __init__(self, cfg: DisaggConfig, root: Path, *, policy_module, make_stream: Callable[[], Iterator[Problem]],
                 prompts_per_step: int, group_size: int, seed: int, say: Callable[[str], None] = print) -> None:
        from megatron.core import parallel_state

        self.cfg, self.ex, self.module = cfg, Exchange(root), policy_module
        self.make_stream, self.prompts_per_step, self.G, self.seed = make_stream, prompts_per_step, group_size, seed
        self.say = say
        self.rank0 = torch.distributed.get_rank() == 0
        self.dp = parallel_state.get_data_parallel_world_size()
        self.dp_rank = parallel_state.get_data_parallel_rank()
        self.life = 0
        self.version = 0
        self.posted_through = -1
        self._ahead: Optional[Iterator[Problem]] = None
        self._heartbeat: Optional[Heartbeat] = None
        self._state = "starting"
        self.totals = {"reposted": 0, "dropped_stale": 0, "idle_s": 0.0}
        self.staleness_hist: Counter = Counter()

    # ------------------------------------------------------------------ life cycle
    def start(self, step: int, drawn: int) -> None:
        """Collective. Begin a new trainer life at ``step`` (0, or the resumed checkpoint's step) with
        the prompt stream at position ``drawn``: void what earlier lives left and publish the
        weights the trainer holds as version ``step``."""
        if self.rank0:
            self.ex.make_dirs()
            self.ex.done_file.unlink(missing_ok=True)
            prev = self.ex.trainer()
            self.life = (prev or {}).get("life", 0) + 1
            removed = self.ex.sweep(keep_life=self.life)
            if removed:
                self.say(f"[disagg] life {self.life}: voided {removed} orders/claims/batches of earlier trainer lives")
        box = [self.life]
        torch.distributed.broadcast_object_list(box, src=0)
        self.life = box[0]
        self._ahead = self.make_stream()
        for _ in range(drawn):
            next(self._ahead)
        self.posted_through = step - 1
        self._state = f"publishing v{step}"
        if self.rank0:
            self._beat()
            self._heartbeat = Heartbeat(self._beat, self.cfg.heartbeat_s)
            self._heartbeat.start()
        self.publish(step)

    def finish(self, step: int) -> None:
        if self.rank0:
            self._state = "done"
            self._beat()
            self.ex.done_file.write_text(f'{{"life": {self.life}, "step": {step}}}\n')
            self.ex.sweep(keep_life=None)  # orders posted ahead that will never be trained on
        self.close()

    def close(self) -> None:
        if self._heartbeat is not None:
            self._heartbeat.stop()
            self._heartbeat = None

    def _beat(self) -> None:
        self.ex.beat(self.ex.trainer_file, {"life": self.life, "version": self.version, "state": self._state})

    def state_dict(self) -> dict:
        return {"totals": dict(self.totals), "staleness_hist": dict(self.staleness_hist)}

    def load_state_dict(self, state: dict) -> None:
        self.totals.update(state["totals"])
        self.staleness_hist = Counter({int(k): v for k, v in state["staleness_hist"].items()})

    # ------------------------------------------------------------------ weights
    def publish(self, version: int) -> float:
        """Collective: write the policy's weights as ``version`` and point workers at it."""
        from r1hpc.model.weights import save_model_weights

        t = time.perf_counter()
        tmp = self.ex.staging_version_dir(version, self.life)
        save_model_weights(self.module, tmp)
        if self.rank0:
            self.ex.commit_version(version, self.life, {"seed": self.seed}, keep=self.cfg.keep_versions)
        torch.distributed.barrier()
        self.version = version
        return time.perf_counter() - t

    # ------------------------------------------------------------------ batches
    def _post_ahead(self, step: int) -> None:
        """Orders for steps up to ``step + max_staleness``: each may be served by weights
        ``>= its step - max_staleness``, which exist by the time a worker looks."""
        J = self.cfg.shards_per_step
        while self.posted_through < step + self.cfg.max_staleness:
            u = self.posted_through + 1
            problems = [next(self._ahead) for _ in range(self.prompts_per_step)]
            if self.rank0:
                for j in range(J):
                    self._post(u, j, problems[j::J])
            self.posted_through = u

    def _post(self, step: int, shard: int, problems: list[Problem]) -> None:
        self.ex.post_order(self.life, step, shard, {
            "min_version": max(0, step - self.cfg.max_staleness), "num_shards": self.cfg.shards_per_step,
            "seed": self.seed, "problems": [dataclasses.asdict(p) for p in problems]})

    def collect(self, step: int, problems: Iterator[Problem]) -> tuple[list, list, list[Problem], dict]:
        """This rank's (samples, scores, problems) of ``step``, and the step's exchange metrics.
        ``problems`` is the trainer's own prompt stream; it advances by one step's prompts."""
        self._post_ahead(step)
        t0 = time.perf_counter()
        self._state = f"waiting for step {step}"
        checked = self._wait_for_step(step) if self.rank0 else None  # rank 0 read them to check them
        box = [[str(self.ex.batch_path(b.order)) for b in checked] if checked else None]
        torch.distributed.broadcast_object_list(box, src=0)
        batches = checked or [load_batch(Path(f)) for f in box[0]]
        idle = time.perf_counter() - t0
        self._state = f"training step {step}"
        expected = [next(problems) for _ in range(self.prompts_per_step)]
        J = self.cfg.shards_per_step
        ordered: list[tuple[Problem, list, list]] = [None] * self.prompts_per_step  # type: ignore[list-item]
        for b in batches:
            ids = [p.id for p in b.problems]
            want = [p.id for p in expected[b.shard::J]]
            if ids != want:
                raise RuntimeError(f"batch {b.order} holds problems {ids[:3]}... but step {step} shard {b.shard} "
                                   f"expects {want[:3]}...: the exchange {self.ex.root} is shared with another run")
            for k, p in enumerate(b.problems):
                ordered[b.shard + k * J] = (p, b.samples[k * self.G:(k + 1) * self.G], b.scores[k * self.G:(k + 1) * self.G])
        mine = ordered[self.dp_rank::self.dp]
        torch.distributed.barrier()  # every rank read the files before they go
        stale = [step - b.version for b in batches]
        if self.rank0:
            for b, f in zip(batches, box[0]):
                self.ex.append_ledger({"life": self.life, "step": step, "shard": b.shard, "order": b.order,
                                       "worker": b.worker, "version": b.version, "staleness": step - b.version})
                Path(f).unlink(missing_ok=True)
        self.totals["idle_s"] += idle
        self.staleness_hist.update(stale)
        metrics = {"disagg/idle_s": idle, "disagg/staleness_mean": sum(stale) / len(stale),
                   "disagg/staleness_max": float(max(stale)), "disagg/reposted": float(self.totals["reposted"]),
                   "disagg/dropped_stale": float(self.totals["dropped_stale"])}
        for k in range(self.cfg.max_staleness + 1):
            metrics[f"disagg/staleness_hist/{k}"] = float(self.staleness_hist.get(k, 0))
        for b in batches:
            busy = b.generate_s + b.score_s
            if busy > 0:
                metrics[f"disagg/worker/{b.worker}/samples_per_s"] = len(b.samples) / busy
        return ([s for _, ss, _ in mine for s in ss], [x for _, _, xs in mine for x in xs],
                [p for p, _, _ in mine], metrics)

    def _wait_for_step(self, step: int) -> list[RolloutBatch]:
        """Rank 0: block until every shard of ``step`` has a usable batch; re-post orders whose
        worker went silent, drop batches older than the staleness bound, report while waiting."""
        J = self.cfg.shards_per_step
        names = [order_name(self.life, step, j) for j in range(J)]
        start = time.monotonic()
        next_status = start + self.cfg.status_every_s
        pause = self.cfg.poll_s
        usable: dict[str, RolloutBatch] = {}
        while True:
            for n in names:
                if n not in usable and self.ex.batch_path(n).exists():
                    batch = self._checked(n, step)
                    if batch is not None:
                        usable[n] = batch
            if len(usable) == J:
                return [usable[n] for n in names]
            self._expire_leases()
            now = time.monotonic()
            if now - start > 60 * self.cfg.wait_timeout_minutes:
                raise ExchangeTimeout(f"[disagg] no complete batch for step {step} after "
                                      f"{self.cfg.wait_timeout_minutes:g} min; {self.status(names)}")
            if now >= next_status:
                self.say(f"[disagg] step {step}: waited {now - start:.0f} s; {self.status(names)}")
                next_status = now + self.cfg.status_every_s
            time.sleep(pause)
            pause = min(2 * pause, self.cfg.max_poll_s)

    def _checked(self, name: str, step: int) -> Optional[RolloutBatch]:
        """The batch when within the staleness bound; an older one is dropped and its order re-posted."""
        path = self.ex.batch_path(name)
        batch = load_batch(path)
        if step - batch.version <= self.cfg.max_staleness:
            return batch
        self.say(f"[disagg] dropping {name}: sampled by v{batch.version}, {step - batch.version} versions old "
                 f"(disagg.max_staleness={self.cfg.max_staleness}); re-posting it")
        path.unlink(missing_ok=True)
        self.totals["dropped_stale"] += 1
        self._post(step, batch.shard, batch.problems)
        return None

    def _expire_leases(self) -> None:
        now = time.time()
        workers = self.ex.worker_states()
        for claim, order, worker in self.ex.claimed():
            beat = workers.get(worker)
            silent = now - beat["time"] if beat else now - claim.stat().st_mtime
            if silent > self.cfg.lease_s and self.ex.repost(claim):
                self.totals["reposted"] += 1
                self.say(f"[disagg] re-posted {order}: worker {worker} silent for {silent:.0f} s "
                         f"(disagg.lease_s={self.cfg.lease_s:g})")

    def status(self, names: list[str]) -> str:
        """Who holds what: the waiting status line."""
        now = time.time()
        missing = [n for n in names if not self.ex.batch_path(n).exists()]
        claims = {order: worker for _, order, worker in self.ex.claimed()}
        parts = [f"{len(names) - len(missing)}/{len(names)} batches ready"]
        for n in missing:
            parts.append(f"{n} claimed by {claims[n]}" if n in claims else f"{n} not claimed")
        workers = self.ex.worker_states()
        if not workers:
            parts.append("no rollout worker has started")
        for w, rec in workers.items():
            parts.append(f"worker {w}: {rec.get('state', '?')}, last heard {now - rec['time']:.0f} s ago, "
                         f"{rec.get('batches', 0)} batches")
        return "; ".join(parts)

