"""Turn rollout samples into padded micro-batches for megatron's schedule.

Row i holds ``prompt + response`` right-padded; ``targets`` are the next tokens; ``response_mask``
marks positions whose *next* token is a response token (the tokens the policy is trained on).
Every data-parallel rank must run the same number of micro-batches (megatron's DDP reduces once per
step), so ranks with fewer rows get all-zero-weight filler micro-batches.
"""
from __future__ import annotations

from typing import Sequence

import torch

from r1hpc.device import HOST
from r1hpc.rollout.generate import Sample


def pack_rows(samples: Sequence[Sample], pad_id: int) -> dict[str, torch.Tensor]:
    """[B, L] tokens, targets, response_mask and rollout log-probs aligned with targets, on the host
    (the engine moves each micro-batch to its device as the schedule draws it)."""
    lengths = [len(s.prompt_ids) + len(s.response_ids) for s in samples]
    width = max(lengths) - 1
    B = len(samples)
    tokens = torch.full((B, width), pad_id, dtype=torch.long, device=HOST)
    targets = torch.full((B, width), pad_id, dtype=torch.long, device=HOST)
    mask = torch.zeros((B, width), dtype=torch.bool, device=HOST)
    rollout_logp = torch.zeros((B, width), device=HOST)
    for i, s in enumerate(samples):
        seq = torch.tensor(s.prompt_ids + s.response_ids, dtype=torch.long, device=HOST)
        n, p = len(seq) - 1, len(s.prompt_ids)
        tokens[i, :n] = seq[:-1]
        targets[i, :n] = seq[1:]
        mask[i, p - 1:n] = True
        rollout_logp[i, p - 1:n] = s.logprobs
    rows = {"tokens": tokens, "targets": targets, "response_mask": mask, "rollout_logp": rollout_logp}
    if samples and samples[0].routing is not None:  # routing replay: the rollout's experts per fed position
        rows["routing"] = pack_routing(samples, width)
    return rows


def pack_routing(samples: Sequence[Sample], width: int) -> torch.Tensor:
    """[B, width, layers, topk] routing aligned with ``tokens``; -1 past each row's end."""
    first = samples[0].routing
    out = torch.full((len(samples), width, *first.shape[1:]), -1, dtype=first.dtype, device=HOST)
    for i, s in enumerate(samples):
        if s.routing is None or s.routing.shape[1:] != first.shape[1:]:
            raise ValueError(f"sample {i} carries no routing of shape [*, {', '.join(map(str, first.shape[1:]))}]")
        out[i, :len(s.routing)] = s.routing
    return out


def split_rows(batch: dict[str, torch.Tensor], micro_batch_size: int, num_micro: int,
               width_multiple: int = 1) -> list[dict[str, torch.Tensor]]:
    """Split a row batch into exactly ``num_micro`` micro-batches, trimming each to its own longest
    row; missing ones are zero-weight filler (one padding row) so every DP rank runs the same count.
    Widths are rounded up to ``width_multiple`` (sequence parallelism splits the sequence over the
    TP ranks), padding with zeros, which the response mask leaves out."""
    rows = batch["tokens"].shape[0]
    out = []
    for m in range(num_micro):
        lo, hi = m * micro_batch_size, min((m + 1) * micro_batch_size, rows)
        if lo >= hi:
            out.append({k: torch.zeros((1, width_multiple, *v.shape[2:]), dtype=v.dtype, device=v.device)
                        for k, v in batch.items()})
            continue
        mb = {k: v[lo:hi] for k, v in batch.items()}
        used = int(mb["response_mask"].any(0).nonzero().max()) + 1 if mb["response_mask"].any() else 1
        out.append({k: (pad_width(v[:, :used], round_up(used, width_multiple)) if v.dim() >= 2 else v)
                    for k, v in mb.items()})
    return out


def round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def pad_width(t: torch.Tensor, width: int, value: float = 0) -> torch.Tensor:
    """``t`` [B, L, ...] right-padded along L with ``value`` to [B, width, ...] (unchanged when already that wide)."""
    if width <= t.shape[1]:
        return t
    return torch.nn.functional.pad(t, (0, 0) * (t.dim() - 2) + (0, width - t.shape[1]), value=value)
