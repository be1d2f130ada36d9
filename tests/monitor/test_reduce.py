"""The metrics reducer (r1hpc.monitor.reduce) on two gloo ranks holding different numbers of values:
every rank gets the value over the union of both ranks' values; a name declared on one rank only is
reduced with nothing from the other; the same name reduced two ways fails loudly."""
from __future__ import annotations

import math

import pytest
import torch

from tests.multiproc import run_workers

pytestmark = pytest.mark.multiproc
VALUES = ([0.5, 2.0, -1.0], [3.0, 3.0, 0.25, 7.5, -2.0])  # rank 0, rank 1: unequal counts


def _reduce(kind_clash: bool) -> dict:
    from r1hpc.monitor.reduce import StepMetrics

    torch.distributed.init_process_group("gloo")
    rank = torch.distributed.get_rank()
    m = StepMetrics(torch.distributed.new_group([0, 1]))
    values = VALUES[rank]
    m.mean("mean", values)
    m.std("std", values)
    m.max("max", values)
    m.min("min", values)
    m.sum("sum", float(len(values)))
    m.mean_of("weighted", sum(values), len(values))
    m.same("same", 42.0)
    if rank == 1:
        m.mean("only_rank1", values)
        m.max("empty_here", [])
    if kind_clash:
        (m.mean if rank == 0 else m.max)("clash", values)
    try:
        return m.reduce()
    except RuntimeError as e:
        return {"error": str(e)}
    finally:
        torch.distributed.destroy_process_group()


def test_every_rank_gets_the_value_over_the_union_of_both_ranks():
    union = torch.tensor(VALUES[0] + VALUES[1], dtype=torch.float64)
    want = {"mean": float(union.mean()), "std": float(union.std()), "max": float(union.max()),
            "min": float(union.min()), "sum": float(len(union)), "weighted": float(union.mean()), "same": 42.0,
            "only_rank1": sum(VALUES[1]) / len(VALUES[1])}
    for got in run_workers(_reduce, 2, False):
        assert got.keys() == want.keys()  # "empty_here": no rank had a value, so it is left out
        for key, value in want.items():
            assert math.isclose(got[key], value, rel_tol=1e-12), (key, got[key], value)


def test_a_name_reduced_two_ways_fails_on_every_rank():
    for got in run_workers(_reduce, 2, True):
        assert got["error"] == "metric 'clash' reduces by mean on one data-parallel rank and by max on another"
