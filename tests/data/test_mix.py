"""Task mix: config checks, determinism, and a held-out split that no training stream touches."""
import dataclasses
import itertools
import os
import random
import subprocess
import sys
from collections import Counter

import pytest

from r1hpc.config import ConfigError, from_dict
from r1hpc.data.mix import TaskMixConfig, heldout_set, is_heldout, stream, train_problems


def test_config_loads_and_defaults_cover_all_tasks():
    cfg = from_dict(TaskMixConfig, {"difficulty": {"countdown": 3}, "options": {"arithmetic": {"ops": ["+", "-"]}}})
    assert cfg.tasks == ["arithmetic", "countdown", "linear_equation"]
    assert Counter(p.data_source for p in train_problems(cfg, 600)).keys() == set(cfg.tasks)


@pytest.mark.parametrize(
    "data,match",
    [
        ({"tasks": []}, "at least one"),
        ({"tasks": ["sudoku"]}, "unknown task 'sudoku'"),
        ({"difficulty": {"sudoku": 1}}, "unknown task"),
        ({"weights": [1, 2]}, "weights"),
        ({"weights": [0, 0, 0]}, "weights"),
        ({"heldout_fraction": 1.0}, "heldout_fraction"),
        ({"difficulty": {"countdown": 9}}, "countdown"),
        ({"options": {"arithmetic": {"opz": ["+"]}}}, "arithmetic"),
    ],
)
def test_bad_config_is_refused_at_load(data, match):
    with pytest.raises(ConfigError, match=match):
        from_dict(TaskMixConfig, data)


def test_stream_is_deterministic_by_seed():
    cfg = TaskMixConfig(seed=5)
    first = list(itertools.islice(stream(cfg), 200))
    assert first == list(itertools.islice(stream(cfg), 200))
    assert first != list(itertools.islice(stream(cfg, seed=6), 200))
    assert train_problems(TaskMixConfig(seed=5, num_train=50)) == first[:50]


def test_weights_steer_the_mix():
    cfg = TaskMixConfig(tasks=["arithmetic", "countdown"], weights=[3, 1])
    counts = Counter(p.data_source for p in train_problems(cfg, 2000))
    assert 2.4 < counts["arithmetic"] / counts["countdown"] < 3.7
    only = TaskMixConfig(weights=[0, 1, 0])
    assert {p.data_source for p in train_problems(only, 100)} == {"countdown"}


def test_heldout_is_disjoint_from_training_for_every_seed():
    cfg = TaskMixConfig(difficulty={"arithmetic": 2, "countdown": 3, "linear_equation": 1}, heldout_fraction=0.2)
    held = heldout_set(cfg, 300)
    assert len({p.id for p in held}) == 300 and all(is_heldout(p, 0.2) for p in held)
    held_ids = {p.id for p in held}
    for seed in (0, 1, 2):
        train = train_problems(dataclasses.replace(cfg, seed=seed), 3000)
        assert not held_ids & {p.id for p in train}
        assert not any(is_heldout(p, 0.2) for p in train)
        assert heldout_set(dataclasses.replace(cfg, seed=seed), 300) == held  # one eval set for all seeds


def test_heldout_share_matches_the_fraction():
    rng = random.Random(0)
    problems = [TaskMixConfig().generate("countdown", rng) for _ in range(4000)]
    share = sum(is_heldout(p, 0.1) for p in problems) / len(problems)
    assert 0.085 < share < 0.115


def test_small_problem_space_fails_clearly():
    cfg = TaskMixConfig(tasks=["arithmetic"], difficulty={"arithmetic": 1})
    with pytest.raises(RuntimeError, match="distinct held-out"):
        heldout_set(cfg, 50)


def test_stream_is_the_same_in_another_process():
    """Ranks and Slurm jobs must draw the same problems: nothing may depend on PYTHONHASHSEED."""
    code = "from r1hpc.data.mix import *; print([p.id for p in train_problems(TaskMixConfig(), 20)])"
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert out.strip() == str([p.id for p in train_problems(TaskMixConfig(), 20)])
