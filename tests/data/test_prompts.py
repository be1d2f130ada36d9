"""Prompt files (data.prompts): the held-out split by hash never reaches the training stream, the
stream is deterministic per seed and reshuffles every epoch, and bad settings fail at load time."""
from __future__ import annotations

import itertools
import json

import pytest

from r1hpc.config import ConfigError
from r1hpc.data.mix import is_heldout
from r1hpc.data.prompts import (PromptFilesConfig, file_split, file_stream, heldout_problems, run_data_sources,
                                training_stream)
from r1hpc.run_config import load_run_config


@pytest.fixture
def problems_file(tmp_path):
    path = tmp_path / "toy.jsonl"
    path.write_text("".join(json.dumps({"id": f"t{i}", "problem": f"What is {i} + 1?", "answer": str(i + 1)}) + "\n"
                            for i in range(200)))
    return str(path)


def test_split_is_disjoint_and_by_hash(problems_file):
    cfg = PromptFilesConfig(files=[problems_file], heldout_fraction=0.2)
    train, held = file_split(cfg, "train"), file_split(cfg, "heldout")
    assert len(train) + len(held) == 200 and not {p.id for p in train} & {p.id for p in held}
    assert 20 <= len(held) <= 60 and all(is_heldout(p, 0.2) for p in held)
    assert {p.data_source for p in train} == {"toy"}


def test_stream_is_deterministic_and_covers_the_training_split_each_epoch(problems_file):
    cfg = PromptFilesConfig(files=[problems_file], heldout_fraction=0.2)
    n = len(file_split(cfg, "train"))
    first = [p.id for p in itertools.islice(file_stream(cfg, seed=3), 2 * n)]
    assert first == [p.id for p in itertools.islice(file_stream(cfg, seed=3), 2 * n)]
    assert first != [p.id for p in itertools.islice(file_stream(cfg, seed=4), 2 * n)]
    assert sorted(first[:n]) == sorted(first[n:]) == sorted(p.id for p in file_split(cfg, "train"))
    assert first[:n] != first[n:]  # a new order every epoch


def test_run_config_dispatches_between_files_and_the_mix(problems_file):
    files = load_run_config(None, [f"data.prompts.files=[{problems_file}]"])
    assert next(training_stream(files.data, seed=0)).data_source == "toy"
    assert [p.id for p in heldout_problems(files.data, 5)] == [p.id for p in file_split(files.data.prompts, "heldout")[:5]]
    mix = load_run_config(None, ["data.mix.tasks=[arithmetic]"])
    assert next(training_stream(mix.data, seed=0)).data_source == "arithmetic"
    assert len(heldout_problems(mix.data, 5)) == 5


def test_bad_settings_fail_at_load_time(tmp_path):
    with pytest.raises(ConfigError, match="neither a shared set"):
        load_run_config(None, ["data.prompts.files=[gsm9k]"])
    with pytest.raises(ConfigError, match="heldout_fraction"):
        load_run_config(None, ["data.prompts.heldout_fraction=1.5"])
    with pytest.raises(FileNotFoundError, match="missing.jsonl"):
        file_split(PromptFilesConfig(files=[str(tmp_path / "missing.jsonl")]), "train")


def test_synthetic_share_mixes_the_task_mix_into_the_file_stream(problems_file):
    """R1's RL for all scenarios: reasoning prompts (the synthetic mix) alongside general files."""
    cfg = load_run_config(None, [f"data.prompts.files=[{problems_file}]", "data.prompts.synthetic_share=0.75",
                             "data.mix.tasks=[arithmetic]"])
    drawn = list(itertools.islice(training_stream(cfg.data, seed=3), 800))
    synthetic = sum(p.data_source == "arithmetic" for p in drawn)
    assert {p.data_source for p in drawn} == {"arithmetic", "toy"}
    assert abs(synthetic - 600) < 5 * (800 * 0.75 * 0.25) ** 0.5  # binomial(800, 0.75), 5 sigma
    assert [p.id for p in itertools.islice(training_stream(cfg.data, seed=3), 50)] == [p.id for p in drawn[:50]]
    held = heldout_problems(cfg.data, 8)
    assert [p.data_source for p in held] == ["arithmetic"] * 6 + ["toy"] * 2
    assert not {p.id for p in held} & {p.id for p in drawn if p.data_source == "toy"}
    assert run_data_sources(cfg.data) == {"arithmetic", "toy"}


def test_synthetic_share_needs_files():
    with pytest.raises(ConfigError, match="synthetic_share"):
        load_run_config(None, ["data.prompts.synthetic_share=0.5"])
