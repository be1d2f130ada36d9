"""The learnability curriculum: weights follow p(1 - p), keep their floor, and the stream is
deterministic and resumes exactly."""
from __future__ import annotations

import pytest

from r1hpc.config import ConfigError
from r1hpc.data.curriculum import CurriculumConfig, CurriculumStream
from r1hpc.data.mix import TaskMixConfig, is_heldout
from r1hpc.run_config import load_run_config

MIX = TaskMixConfig(tasks=["arithmetic", "countdown", "linear_equation"], seed=3)


def _stream(**kw) -> CurriculumStream:
    return CurriculumStream(MIX, CurriculumConfig(kind="learnability", **kw), seed=11)


def test_configured_mix_until_warmup_then_learnability_with_floor():
    s = _stream(floor=0.1, ema=0.0, warmup_steps=2)
    solved, learnable, hopeless = (8 * 1.0 * 0.0, 8), (8 * 0.5 * 0.5, 8), (8 * 0.02 * 0.98, 8)
    stats = {"arithmetic": solved, "linear_equation": learnable, "countdown": hopeless}
    s.observe(stats)
    assert s.weights() == pytest.approx([1 / 3] * 3)  # still warming up
    s.observe(stats)
    w = dict(zip(s.tasks, s.weights()))
    assert sum(w.values()) == pytest.approx(1.0)
    assert w["arithmetic"] == pytest.approx(0.1)  # saturated: only the floor
    expected_linear = 0.1 + 0.7 * 0.25 / (0.25 + 0.02 * 0.98)
    assert w["linear_equation"] == pytest.approx(expected_linear)
    assert w["linear_equation"] > w["countdown"] > w["arithmetic"]


def test_draws_follow_the_weights_and_never_the_heldout_split():
    s = _stream(floor=0.05, ema=0.0, warmup_steps=0)
    s.observe({"arithmetic": (0.0, 8), "countdown": (0.0, 8), "linear_equation": (2.0, 8)})
    drawn = [next(s) for _ in range(2000)]
    share = sum(p.data_source == "linear_equation" for p in drawn) / len(drawn)
    assert share == pytest.approx(0.9, abs=0.03)  # 0.05 + 0.85: 2000 draws, sd ~0.007
    assert not any(is_heldout(p, MIX.heldout_fraction) for p in drawn)


def test_resume_continues_the_same_stream():
    a = _stream(warmup_steps=1)
    for step in range(3):
        [next(a) for _ in range(16)]
        a.observe({"arithmetic": (0.5 * step, 8), "countdown": (0.1, 8), "linear_equation": (1.0, 8)})
    state = a.state_dict()
    want = [next(a) for _ in range(64)]
    b = _stream(warmup_steps=1)
    b.load_state_dict(state)
    assert [p.id for p in (next(b) for _ in range(64))] == [p.id for p in want]
    assert b.weights() == a.weights()


def test_curriculum_keys_are_checked(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("data:\n  curriculum:\n    kind: learnability\n    floor: 0.5\n")
    with pytest.raises(ConfigError, match="floor"):
        load_run_config(cfg)
    cfg.write_text("data:\n  curriculum:\n    kind: learnability\n  prompts:\n    files: [gsm8k]\n")
    with pytest.raises(ConfigError, match="prompts.files"):
        load_run_config(cfg)


def test_the_curriculum_does_not_change_the_base():
    from r1hpc.train.pretrain import base_fingerprint

    plain = load_run_config("configs/ci_r1zero.yaml")
    curriculum = load_run_config("configs/ci_r1zero.yaml", ["data.curriculum.kind=learnability"])
    assert base_fingerprint(plain) == base_fingerprint(curriculum)


def test_the_rl_seed_does_not_change_the_base_but_run_seed_does():
    """grpo.seed repeats RL from one base (the base is reused); run.seed also seeds the base."""
    from r1hpc.train.pretrain import base_fingerprint

    plain = load_run_config("configs/ci_r1zero.yaml")
    assert base_fingerprint(plain) == base_fingerprint(load_run_config("configs/ci_r1zero.yaml", ["grpo.seed=8"]))
    assert base_fingerprint(plain) != base_fingerprint(load_run_config("configs/ci_r1zero.yaml", ["run.seed=8"]))
