"""Routing replay for MoE RL (R3): the experts each token was routed to while the rollout sampled
it, recorded per MoE layer, so the trainer's forwards can route every token exactly alike.

Built on megatron-core's ``RouterReplay`` (``transformer/moe/router_replay.py``): a router holding
an instance consults it in ``compute_topk``; RECORD keeps the last forward's ``[tokens, topk]``
indices (tokens in the router's flattened ``[s, b]`` order, a TP rank's shard under sequence
parallelism) and REPLAY_FORWARD routes by given indices while gathering the router's scores at
them, so the gate probabilities stay differentiable. Each router gets its own instance, kept out of
megatron's process-wide list: a policy and a frozen reference in one process would both register
there and its ``set_replay_data`` could not tell them apart; r1hpc drives each instance itself.

A routing tensor is ``[positions, moe_layers, topk]`` int16 for one sequence, positions being those
the trainer feeds (the prompt and every response token but the last), or ``[B, L, layers, topk]``
for a packed batch (docs/algorithms.md, section 7).
"""
from __future__ import annotations

import dataclasses
from typing import Literal, Optional

import torch

from r1hpc.config import ConfigError
from r1hpc.device import HOST
from r1hpc.model.provider import unwrap

ROUTING_DTYPE = torch.int16  # expert ids; megatron's largest MoEs have 256 experts


@dataclasses.dataclass
class RoutingReplayConfig:
    """``replay: rollout`` replays the rollout's experts in the policy's old-log-prob and training
    forwards (and in the reference's with ``replay_reference``); ``agreement`` records them with
    replay off too, to report how often the trainer's recompute routes like the rollout did."""

    replay: Literal["off", "rollout"] = "off"
    replay_reference: bool = False
    agreement: bool = True

    def validate(self) -> None:
        if self.replay not in ("off", "rollout"):
            raise ConfigError(f"key 'replay' must be 'off' or 'rollout', got {self.replay!r}")
        if self.replay_reference and self.replay == "off":
            raise ConfigError("key 'replay_reference' needs replay: rollout (it replays the rollout's experts)")

    @property
    def records(self) -> bool:
        """Whether the rollout records routing (for replay or for the agreement metric)."""
        return self.replay == "rollout" or self.agreement


def moe_routers(model: torch.nn.Module) -> list:
    """The model's top-k routers in layer order (one per MoE layer)."""
    from megatron.core.transformer.moe.router import TopKRouter

    return [m for m in model.modules() if isinstance(m, TopKRouter)]


def check_replayable(model: torch.nn.Module, key: str = "routing.replay") -> None:
    """Refuse, naming ``key``, a model whose routing cannot be recorded or replayed."""
    from megatron.core import parallel_state

    if not moe_routers(model):
        raise ConfigError(f"{key} records and replays MoE routing, but the model is dense (model.num_moe_experts "
                          "is unset): set it to off")
    cfg = unwrap(model).config
    if getattr(cfg, "moe_router_fusion", False):
        raise ConfigError(f"{key} cannot apply: the fused top-k router (moe_router_fusion) bypasses megatron's "
                          "router replay")
    if getattr(cfg, "moe_router_load_balancing_type", None) == "sinkhorn":
        raise ConfigError(f"{key} cannot apply: sinkhorn routing bypasses megatron's router replay")
    if parallel_state.get_pipeline_model_parallel_world_size() > 1:
        raise ConfigError(f"{key} is not supported with pipeline parallelism > 1 (rollout needs PP = 1 too)")


def attach(model: torch.nn.Module) -> list:
    """Give each router of ``model`` a ``RouterReplay`` (kept out of megatron's global list); returns them."""
    from megatron.core.transformer.moe.router_replay import RouterReplay

    instances = []
    for router in moe_routers(model):
        if router.router_replay is None:
            router.router_replay = RouterReplay()
            RouterReplay.global_router_replay_instances.remove(router.router_replay)
        instances.append(router.router_replay)
    return instances


def replay_instances(model: torch.nn.Module) -> list:
    """The routers' ``RouterReplay`` instances, or [] when routing is not recorded on this model."""
    routers = moe_routers(model)
    if not routers or any(r.router_replay is None for r in routers):
        return []
    return [r.router_replay for r in routers]


def set_action(instances: list, action) -> None:
    """Set (``action`` an action) or clear (None) every instance's action, dropping stale indices."""
    for inst in instances:
        inst.clear_indices()
        if action is None:
            inst.clear_router_replay_action()
        else:
            inst.set_router_replay_action(action)


def valid_sets(idx: torch.Tensor) -> torch.Tensor:
    """``idx`` [N, k] with every row that is no top-k set (padding: negative or repeated experts)
    replaced by experts 0..k-1; such rows are positions the loss never reads."""
    k = idx.shape[-1]
    s = idx.sort(dim=-1).values
    ok = (s[:, :1] >= 0) & (s[:, 1:] != s[:, :-1]).all(dim=-1, keepdim=True)
    return torch.where(ok, idx, torch.arange(k, device=idx.device, dtype=idx.dtype)[None])


class RoutingRecorder:
    """Routing of a rollout, by (row, position). Static decode batch (positions padded on the left):
    the prefill fills positions [0, length), each decode call the position it feeds, for the rows
    still in the KV cache (``rows``: their original indices, in cache-row order, following the
    cache's row compaction). Dynamic engine: :meth:`scatter` after every step."""

    def __init__(self, instances: list, batch: int, width: int) -> None:
        from megatron.core.transformer.moe.router_replay import RouterReplayAction

        self.instances = instances
        self.buf: Optional[torch.Tensor] = None  # [batch, width, layers, topk], on the host
        self.batch, self.width = batch, width
        set_action(instances, RouterReplayAction.RECORD)

    @classmethod
    def start(cls, model: torch.nn.Module, batch: int, width: int) -> Optional["RoutingRecorder"]:
        """A recorder when ``model``'s routers carry replay instances (see :func:`attach`), else None."""
        instances = replay_instances(model)
        return cls(instances, batch, width) if instances else None

    def _recorded(self, tokens: int) -> torch.Tensor:
        """[layers, s * b, topk] from the last forward (all layers saw the same ``tokens``)."""
        idx = [inst.get_recorded_indices() for inst in self.instances]
        if any(i is None or i.shape[0] != tokens for i in idx):
            raise RuntimeError("a MoE router recorded no routing for the last forward (is the router fused?)")
        out = torch.stack(idx).to(HOST, ROUTING_DTYPE)
        if self.buf is None:
            self.buf = torch.full((self.batch, self.width, len(idx), out.shape[-1]), -1, dtype=ROUTING_DTYPE,
                                  device=HOST)
        return out

    def prefill(self, length: int, prefilled_row: torch.Tensor) -> None:
        """The prefill's routing; row ``i`` takes the routing of prefilled row ``prefilled_row[i]``
        (rows with the same prompt share one prefill)."""
        prefilled = int(prefilled_row.max()) + 1
        rec = self._recorded(length * prefilled).view(len(self.instances), length, prefilled, -1)
        self.buf[:, :length] = rec.permute(2, 1, 0, 3)[prefilled_row.to(HOST)]

    def decode(self, rows: torch.Tensor, position: int) -> None:
        rec = self._recorded(len(rows))  # [layers, b_active, topk]: a decode step feeds one token per row
        self.buf[rows.cpu(), position] = rec.permute(1, 0, 2)

    def scatter(self, rows: torch.Tensor, positions: torch.Tensor, fed: int) -> None:
        """Routing of a forward over a packed token stream (a dynamic-engine step: prefill chunks and
        decode tokens of many requests in one sequence of ``fed`` tokens, padding last): token ``j``
        belongs to row ``rows[j]`` at position ``positions[j]``."""
        rec = self._recorded(fed)[:, :len(rows)]
        self.buf[rows.to(HOST), positions.to(HOST)] = rec.permute(1, 0, 2)

    def take(self, row: int, start: int, end: int) -> torch.Tensor:
        """Row ``row``'s routing at padded positions [start, end), a fresh tensor."""
        return self.buf[row, start:end].clone()

    def stop(self) -> None:
        set_action(self.instances, None)


def attach_for_rollout(model: torch.nn.Module, cfg: RoutingReplayConfig) -> bool:
    """Make rollouts on ``model`` record routing when ``cfg`` asks for it; True when they will.
    Replay refuses a model it cannot apply to; the agreement metric alone is silently skipped there."""
    if not cfg.records:
        return False
    try:
        check_replayable(model)
    except ConfigError:
        if cfg.replay == "rollout":
            raise
        return False
    attach(model)
    return True
