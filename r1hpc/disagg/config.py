"""Settings of disaggregated mode, owned by the exchange between the trainer and its rollout workers."""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Optional

from r1hpc.config import ConfigError


@dataclasses.dataclass
class DisaggConfig:
    """``enabled`` makes ``r1hpc train`` take its rollout batches from workers (``r1hpc rollout-worker``)
    instead of generating them itself; ``r1hpc launch --mode disaggregated`` sets it.

    A batch for step t may come from weights no older than version ``t - max_staleness`` (version v =
    the policy after v updates); 0 gives exactly the colocated run's batches. ``shards_per_step``
    splits each step's prompts into that many orders, so several workers fill one step (shard j
    samples like data-parallel rank j of a colocated run with that many ranks)."""

    enabled: bool = False
    exchange_dir: Optional[str] = None  # null: <output_dir>/<run name>/exchange
    max_staleness: int = 0
    shards_per_step: int = 1
    lease_s: float = 60.0  # a claimed order whose worker has not beaten its heartbeat this long is re-posted
    heartbeat_s: float = 2.0
    # waits between looks at the exchange: poll_s, doubling up to max_poll_s. A look is a few stat()
    # calls, so a short cap costs nothing and bounds each hand-off's latency
    poll_s: float = 0.05
    max_poll_s: float = 0.5
    status_every_s: float = 30.0  # the trainer's waiting status line
    wait_timeout_minutes: float = 60.0  # the trainer fails (naming what it waited for) after this long
    trainer_lost_minutes: float = 30.0  # workers exit after this long without a trainer heartbeat
    keep_versions: int = 3  # published weight versions kept (>= max_staleness + 2)

    def validate(self) -> None:
        if self.max_staleness < 0:
            raise ConfigError(f"key 'max_staleness' must be >= 0, got {self.max_staleness}")
        if self.shards_per_step < 1:
            raise ConfigError(f"key 'shards_per_step' must be >= 1, got {self.shards_per_step}")
        for name in ("lease_s", "heartbeat_s", "poll_s", "max_poll_s", "status_every_s", "wait_timeout_minutes",
                     "trainer_lost_minutes"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"key '{name}' must be > 0, got {getattr(self, name)}")
        if self.heartbeat_s * 3 > self.lease_s:
            raise ConfigError(f"key 'lease_s' ({self.lease_s}) must be at least 3 x heartbeat_s ({self.heartbeat_s}): "
                              "a live worker would lose its orders")
        if self.keep_versions < self.max_staleness + 2:
            raise ConfigError(f"key 'keep_versions' ({self.keep_versions}) must be >= max_staleness + 2 "
                              f"({self.max_staleness + 2}): a worker may still be loading an older version")


def exchange_root(cfg) -> Path:
    """``disagg.exchange_dir``, or ``<output_dir>/<run name>/exchange``."""
    return Path(cfg.disagg.exchange_dir) if cfg.disagg.exchange_dir else \
        Path(cfg.run.output_dir) / cfg.run.name / "exchange"


def check_disagg(cfg) -> None:
    """Settings disaggregated mode cannot honour, named by key."""
    d = cfg.disagg
    if cfg.algo.dynamic_sampling:
        raise ConfigError("algo.dynamic_sampling is not supported with disagg.enabled: workers fill fixed orders")
    if cfg.data.curriculum.kind != "none":
        raise ConfigError("data.curriculum is not supported with disagg.enabled: orders are posted before the "
                          "rewards that would re-weight them")
    if d.max_staleness > 0 and not cfg.algo.corrects_rollout:
        raise ConfigError(f"disagg.max_staleness={d.max_staleness} needs algo.tis_cap (or algo.mis_low / mis_high): "
                          "samples from older weights must be corrected with importance weights")
    if cfg.rollout.prompts_per_step % d.shards_per_step:
        raise ConfigError(f"rollout.prompts_per_step ({cfg.rollout.prompts_per_step}) must be divisible by "
                          f"disagg.shards_per_step ({d.shards_per_step})")
