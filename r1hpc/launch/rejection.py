"""Rejection sampling as launcher stages: a rollout job array on a checkpoint, then ``r1hpc reject``.

The R1 pipeline (SFT data after reasoning RL) and distillation (the teacher's data) both chain
these two stages; the dataset lands at ``dataset_path(out_dir)``.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Optional

from r1hpc.launch.launcher import Resources, Stage


def samples_dir(out_dir: str | Path) -> Path:
    """Where the rollout shards and their ``merged.json`` go."""
    return Path(out_dir) / "samples"


def dataset_path(out_dir: str | Path) -> Path:
    """The SFT JSONL the reject stage writes (its counts in ``dataset.provenance.json``)."""
    return Path(out_dir) / "dataset.jsonl"


def filter_resources(resources: Resources) -> Resources:
    """The reject stage reads one JSON file and writes one: a single CPU task of the same partition."""
    return dataclasses.replace(resources, nodes=1, ntasks_per_node=1, gpus_per_node=0, exclusive=False)


def rejection_stages(config: str, overrides: list[str], weights: str, out_dir: str | Path, shards: int,
                     resources: Resources, after: Optional[list[str]] = None, name: str = "rejection") -> list[Stage]:
    """``<name>_samples``: ``shards`` array tasks sampling ``rollout.group_size`` responses per
    prompt from ``weights`` (then merged); ``<name>_filter``: one CPU task filtering them into the
    dataset."""
    if shards < 1:
        raise ValueError(f"rejection sampling runs as a job array: shards must be >= 1, got {shards}")
    sampling = Stage(name=f"{name}_samples", command="rollout", config=config, overrides=list(overrides),
                     resources=resources, after=list(after or []), shards=shards, out=str(samples_dir(out_dir)),
                     extra_args=["--weights", str(weights)])
    filtering = Stage(name=f"{name}_filter", command="reject", config=config, overrides=list(overrides),
                      resources=filter_resources(resources),
                      after=[sampling.name],
                      extra_args=["--samples", str(samples_dir(out_dir)), "--out", str(dataset_path(out_dir))])
    return [sampling, filtering]
