"""The one metrics reducer. Each step metric states, where it is produced, how it reduces over the
data-parallel ranks, and the value logged is the global one, the same on every rank:

- ``mean``: the sum of every rank's values over the sum of their counts (ranks may hold different
  numbers of samples or tokens, so each element weighs one, not each rank);
- ``std``: the sample standard deviation of the union of every rank's values, from the global
  count, sum and sum of squares (float64);
- ``sum``, ``max``, ``min``: an all-reduce of that kind;
- ``same``: a value every rank already holds (computed from reduced sums, or agreed), taken as is.

A name may be declared on some ranks only (a rank whose samples lack a reward key, or that ran only
filler micro-batches): the names are joined over ranks first and a rank without one adds nothing.
One reduction costs three collectives (the names, the sums, the maxima); with one DP rank, none.
"""
from __future__ import annotations

import math
from typing import Any, Optional

import torch

from r1hpc.device import HOST, collective_device

_WIDTH = {"mean": 2, "std": 3, "sum": 1, "max": 1, "min": 1, "same": 0}  # local parts sent per metric
_BY_MAX = ("max", "min")  # reduced by MAX (a minimum as the maximum of its negation); the rest by SUM


def _flat(values) -> torch.Tensor:
    return torch.as_tensor(values, dtype=torch.float64, device=HOST).reshape(-1)


class StepMetrics:
    """A step's metrics as this rank's parts; ``reduce`` returns the global values."""

    def __init__(self, group: Optional[Any] = None) -> None:
        """``group``: the data-parallel process group, None with one data-parallel rank."""
        self.group = group
        self._kinds: dict[str, tuple[str, Optional[float]]] = {}  # name -> (kind, value when no rank has data)
        self._parts: dict[str, list[float]] = {}

    def _add(self, name: str, kind: str, parts: list[float], empty: Optional[float] = None) -> None:
        if name in self._kinds:
            raise ValueError(f"metric {name!r} declared twice in one step")
        self._kinds[name] = (kind, empty)
        self._parts[name] = parts

    def mean(self, name: str, values, empty: Optional[float] = 0.0) -> None:
        """The mean of every rank's ``values`` taken together; ``empty`` when no rank has any
        (None: the metric is left out)."""
        v = _flat(values)
        self.mean_of(name, float(v.sum()), float(v.numel()), empty)

    def mean_of(self, name: str, total: float, count: float, empty: Optional[float] = 0.0) -> None:
        """``total / count`` with both summed over ranks: a mean weighted by each rank's count."""
        self._add(name, "mean", [float(total), float(count)], empty)

    def std(self, name: str, values) -> None:
        """The sample standard deviation (n - 1) of every rank's ``values`` taken together; 0 for fewer than two."""
        v = _flat(values)
        self._add(name, "std", [float(v.numel()), float(v.sum()), float((v * v).sum())], 0.0)

    def sum(self, name: str, value: float) -> None:
        self._add(name, "sum", [float(value)])

    def max(self, name: str, values, empty: Optional[float] = None) -> None:
        v = _flat(values)
        self._add(name, "max", [float(v.max()) if v.numel() else -math.inf], empty)

    def min(self, name: str, values, empty: Optional[float] = None) -> None:
        v = _flat(values)
        self._add(name, "min", [-float(v.min()) if v.numel() else -math.inf], empty)

    def same(self, name: str, value: float) -> None:
        """A value that is already global: identical on every rank by construction."""
        self._add(name, "same", [float(value)])

    def reduce(self) -> dict[str, float]:
        """The global value of every metric declared on any rank, in declaration order (rank 0's first)."""
        kinds = self._joined_kinds()
        sums = [p for n, (k, _) in kinds.items() if k not in _BY_MAX + ("same",) for p in self._local(n, k)]
        maxes = [p for n, (k, _) in kinds.items() if k in _BY_MAX for p in self._local(n, k)]
        sums, maxes = iter(self._all_reduce(sums, "sum")), iter(self._all_reduce(maxes, "max"))
        out: dict[str, float] = {}
        for name, (kind, empty) in kinds.items():
            if kind == "same":
                if name in self._parts:
                    out[name] = self._parts[name][0]
                continue
            value = _finish(kind, [next(maxes if kind in _BY_MAX else sums) for _ in range(_WIDTH[kind])])
            value = empty if value is None else value
            if value is not None:
                out[name] = value
        return out

    def _local(self, name: str, kind: str) -> list[float]:
        """This rank's parts, or the reduction's identity for a name only other ranks declared."""
        if name in self._parts:
            return self._parts[name]
        return [-math.inf] if kind in _BY_MAX else [0.0] * _WIDTH[kind]

    def _joined_kinds(self) -> dict[str, tuple[str, Optional[float]]]:
        joined: dict[str, tuple[str, Optional[float]]] = {}
        for rank_kinds in _gather(list(self._kinds.items()), self.group):
            for name, (kind, empty) in rank_kinds:
                if joined.setdefault(name, (kind, empty))[0] != kind:
                    raise RuntimeError(f"metric {name!r} reduces by {joined[name][0]} on one data-parallel rank "
                                       f"and by {kind} on another")
        return joined

    def _all_reduce(self, values: list[float], op: str) -> list[float]:
        if self.group is None or not values:
            return values
        t = torch.tensor(values, dtype=torch.float64, device=collective_device(self.group))
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.SUM if op == "sum" else torch.distributed.ReduceOp.MAX,
                                     group=self.group)
        return t.tolist()


def union(names: list[str], group: Optional[Any] = None) -> list[str]:
    """The names any rank of ``group`` holds, in first-seen order (rank 0's first)."""
    return list(dict.fromkeys(n for rank_names in _gather(list(names), group) for n in rank_names))


def _gather(obj: list, group: Optional[Any]) -> list[list]:
    """Every rank's ``obj``, in rank order ([obj] without a group)."""
    if group is None:
        return [obj]
    every: list = [None] * torch.distributed.get_world_size(group)
    torch.distributed.all_gather_object(every, obj, group=group)
    return every


def _finish(kind: str, parts: list[float]) -> Optional[float]:
    """The global value from the reduced parts; None when no rank had data."""
    if kind == "sum":
        return parts[0]
    if kind in _BY_MAX:
        if parts[0] == -math.inf:
            return None
        return parts[0] if kind == "max" else -parts[0]
    if kind == "mean":
        total, count = parts
        return total / count if count else None
    n, s, sq = parts
    if n < 2:
        return 0.0
    return math.sqrt(max(sq - s * s / n, 0.0) / (n - 1))
