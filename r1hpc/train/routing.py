"""The trainer's side of routing replay (R3, r1hpc.model.routing_replay): per micro-batch, before
each forward, the routers of the model being run get the rows' recorded experts as targets
(policy: old-log-prob and training forwards; reference: with ``routing.replay_reference``), or,
with replay off, record the trainer's own routing in the old-log-prob pass so that
``rollout_corr/router_agreement`` says how often it matches the rollout's.

Targets are set per router of the model passed to the forward step, never through megatron's
process-wide ``set_replay_data``, and cleared after the forward: nothing carries over between
micro-batches or steps. Under sequence parallelism a TP rank's routers see only its shard of the
sequence, so each gets that shard's slice of the rows' routing.
"""
from __future__ import annotations

import contextlib
from typing import Iterator, Optional

import torch

from r1hpc.device import HOST, collective_device
from r1hpc.model.routing_replay import (RoutingReplayConfig, attach, attach_for_rollout, check_replayable,
                                        replay_instances, set_action, valid_sets)
from r1hpc.model.provider import unwrap

AGREEMENT = "rollout_corr/router_agreement"


class TrainerRouting:
    """Which forwards replay and which measure; the step's agreement counts."""

    def __init__(self, cfg: RoutingReplayConfig, policy_instances: list, reference_instances: list) -> None:
        self.cfg = cfg
        self.policy, self.reference = policy_instances, reference_instances
        self.counts = torch.zeros(2, dtype=torch.float64, device=HOST)  # (equal top-k sets, compared) this step

    @classmethod
    def build(cls, cfg: Optional[RoutingReplayConfig], policy_module, reference_module) -> Optional["TrainerRouting"]:
        """None when the run neither replays nor measures routing (a dense policy without replay)."""
        if cfg is None or not attach_for_rollout(policy_module, cfg):
            return None
        reference = []
        if cfg.replay_reference and reference_module is not None:
            check_replayable(reference_module, "routing.replay_reference")
            reference = attach(reference_module)
        return cls(cfg, replay_instances(policy_module), reference)

    @contextlib.contextmanager
    def forward(self, model: torch.nn.Module, mb: dict) -> Iterator[None]:
        """Around one micro-batch's forward of ``model`` (a policy or reference chunk)."""
        instances = replay_instances(model)
        role = self._role(instances, training=model.training)
        if role is None:
            yield
            return
        if "routing" not in mb:
            raise RuntimeError("routing.replay is 'rollout' but the rollout batch carries no routing (a rollout "
                               "worker started without it?)")
        from megatron.core.transformer.moe.router_replay import RouterReplayAction

        shard = self._shard(model, mb["routing"].shape[1])
        routing = mb["routing"][:, shard]
        if role == "replay":
            set_action(instances, RouterReplayAction.REPLAY_FORWARD)
            for layer, inst in enumerate(instances):
                inst.set_target_indices(_flat(routing[:, :, layer]))
        else:
            set_action(instances, RouterReplayAction.RECORD)
        try:
            yield
            if role == "measure":
                self._count(instances, routing, mb["response_mask"][:, shard])
        finally:
            set_action(instances, None)

    def _role(self, instances: list, *, training: bool) -> Optional[str]:
        if not instances:
            return None
        if instances[0] is (self.policy or [None])[0]:
            if self.cfg.replay == "rollout":
                return "replay"
            return "measure" if not training else None  # the old-log-prob pass is the trainer's recompute
        if instances[0] is (self.reference or [None])[0]:
            return "replay"
        return None

    @staticmethod
    def _shard(model: torch.nn.Module, seq: int) -> slice:
        """The positions this rank's routers see: its sequence-parallel shard, or all of them."""
        from megatron.core import parallel_state

        if not unwrap(model).config.sequence_parallel:
            return slice(0, seq)
        tp = parallel_state.get_tensor_model_parallel_world_size()
        n = seq // tp
        rank = parallel_state.get_tensor_model_parallel_rank()
        return slice(rank * n, (rank + 1) * n)

    def _count(self, instances: list, routing: torch.Tensor, mask: torch.Tensor) -> None:
        """Add the (token, layer) pairs under ``mask`` whose recorded top-k set equals the rollout's."""
        b, s = mask.shape
        for layer, inst in enumerate(instances):
            got = inst.get_recorded_indices().view(s, b, -1).transpose(0, 1).sort(dim=-1).values
            want = routing[:, :, layer].long().sort(dim=-1).values
            same = (got == want.to(got.device)).all(dim=-1) & mask.to(got.device)
            self.counts += torch.tensor([float(same.sum()), float(mask.sum())], dtype=torch.float64, device=HOST)

    def step_metrics(self) -> dict[str, float]:
        """The step's router agreement over every rank (measured with replay off only); resets the counts.
        Every rank calls it: the counts are summed over the whole world (TP ranks hold shards or copies)."""
        counts, self.counts = self.counts, torch.zeros(2, dtype=torch.float64, device=HOST)
        if self.cfg.replay == "rollout":
            return {}
        if torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1:
            counts = counts.to(collective_device(None))
            torch.distributed.all_reduce(counts)
        equal, total = counts.tolist()
        return {AGREEMENT: equal / total} if total else {}


def _flat(routing: torch.Tensor) -> torch.Tensor:
    """[b, s, k] routing of one layer -> [s * b, k] long targets in the router's [s, b] token order."""
    return valid_sets(routing.transpose(0, 1).reshape(-1, routing.shape[-1]).long())
