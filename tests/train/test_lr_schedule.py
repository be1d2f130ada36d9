"""The learning-rate schedule: warm-up, then cosine or linear decay to lr * min_lr_ratio."""
import math

import pytest

from r1hpc.config import ConfigError
from r1hpc.train.engine import OptimConfig, lr_at


def test_constant_after_warmup_without_decay():
    cfg = OptimConfig(lr=1.0, min_lr_ratio=0.5, warmup_steps=4)
    assert [lr_at(cfg, s) for s in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]


def test_cosine_decay_hits_midpoint_and_floor():
    cfg = OptimConfig(lr=1.0, min_lr_ratio=0.1, warmup_steps=10, decay_steps=110)
    assert lr_at(cfg, 10) == pytest.approx(1.0)
    assert lr_at(cfg, 60) == pytest.approx(0.55)  # half-way: cos(pi/2) = 0
    assert lr_at(cfg, 35) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi / 4)))
    assert lr_at(cfg, 110) == pytest.approx(0.1)
    assert lr_at(cfg, 500) == pytest.approx(0.1)


def test_linear_decay_is_monotone_to_floor():
    cfg = OptimConfig(lr=2.0, min_lr_ratio=0.0, decay_steps=8, decay_style="linear")
    lrs = [lr_at(cfg, s) for s in range(10)]
    assert lrs[:5] == pytest.approx([2.0, 1.75, 1.5, 1.25, 1.0])
    assert lrs[8:] == [0.0, 0.0]


@pytest.mark.parametrize("bad", [dict(min_lr_ratio=2.0), dict(decay_steps=-1), dict(decay_style="step")])
def test_bad_schedule_is_rejected(bad):
    with pytest.raises(ConfigError):
        OptimConfig(lr=1.0, **bad).validate()


def test_floor_is_a_fraction_of_lr():
    cfg = OptimConfig(lr=4.0, min_lr_ratio=0.25, decay_steps=10)
    assert lr_at(cfg, 10) == pytest.approx(1.0)


def test_null_decay_steps_means_the_whole_stage():
    cfg = OptimConfig(lr=1.0, min_lr_ratio=0.0, decay_steps=None, decay_style="linear")
    with pytest.raises(ValueError, match="for_stage"):
        lr_at(cfg, 0)
    stage = cfg.for_stage(4)
    assert [lr_at(stage, s) for s in range(5)] == pytest.approx([1.0, 0.75, 0.5, 0.25, 0.0])
    assert OptimConfig(decay_steps=7).for_stage(4).decay_steps == 7  # an explicit length stays
