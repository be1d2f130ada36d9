"""The learning-rate schedule: warm-up, then cosine or linear decay to min_lr."""
import math

import pytest

from r1hpc.config import ConfigError
from r1hpc.train.engine import OptimConfig, lr_at


def test_constant_after_warmup_without_decay():
    cfg = OptimConfig(lr=1.0, min_lr=0.5, warmup_steps=4)
    assert [lr_at(cfg, s) for s in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]


def test_cosine_decay_hits_midpoint_and_floor():
    cfg = OptimConfig(lr=1.0, min_lr=0.1, warmup_steps=10, decay_steps=110)
    assert lr_at(cfg, 10) == pytest.approx(1.0)
    assert lr_at(cfg, 60) == pytest.approx(0.55)  # half-way: cos(pi/2) = 0
    assert lr_at(cfg, 35) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi / 4)))
    assert lr_at(cfg, 110) == pytest.approx(0.1)
    assert lr_at(cfg, 500) == pytest.approx(0.1)


def test_linear_decay_is_monotone_to_floor():
    cfg = OptimConfig(lr=2.0, min_lr=0.0, decay_steps=8, decay_style="linear")
    lrs = [lr_at(cfg, s) for s in range(10)]
    assert lrs[:5] == pytest.approx([2.0, 1.75, 1.5, 1.25, 1.0])
    assert lrs[8:] == [0.0, 0.0]


@pytest.mark.parametrize("bad", [dict(min_lr=2.0), dict(decay_steps=-1), dict(decay_style="step")])
def test_bad_schedule_is_rejected(bad):
    with pytest.raises(ConfigError):
        OptimConfig(lr=1.0, **bad).validate()
