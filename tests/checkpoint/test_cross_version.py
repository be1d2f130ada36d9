"""Checkpoints across the two supported megatron-core series (0.16.1 on Python 3.11, 0.19.x on 3.12).

The run test needs the other series' interpreter: scripts/run_tests.sh's Python 3.12 leg sets
R1HPC_CROSS_PYTHON to the 3.11 venv's python. A GRPO run of two steps is written under one version
(its pretrained base too) and resumed for two more under the other. Upgrading (0.16 -> 0.19) the
model weights, the optimizer's sharded state and the per-rank files load and the resume says which
versions met; downgrading (0.19 -> 0.16) fails, as measured, with a message naming both versions.
That message is also tested on its own in one venv (a checkpoint relabelled as another version's,
loaded into a model whose parameters differ).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from r1hpc.checkpoint.compat import version_change
from r1hpc.model import mcore_compat
from tests.checkpoint.workers import load_as_if_from_another_version
from tests.multiproc import run_workers

ROOT = Path(__file__).resolve().parents[2]
CROSS_PYTHON = os.environ.get("R1HPC_CROSS_PYTHON")
SMALL = dict(vocab_size=64, num_layers=1, hidden_size=32, ffn_hidden_size=64, num_attention_heads=2, max_seq_length=32)


@pytest.mark.multiproc
def test_a_load_that_fails_across_versions_names_both(tmp_path):
    (error,) = run_workers(load_as_if_from_another_version, 1, SMALL, dict(SMALL, num_layers=2), str(tmp_path / "w"))
    here = mcore_compat.version_record()
    assert error.startswith("CheckpointVersionError: "), error
    assert "written with megatron-core 0.0.1 (torch 0.0.2" in error
    assert f"does not load with megatron-core {here['megatron_core']} (torch {here['torch']}" in error


def test_resume_notes_a_version_change_only_when_there_is_one():
    here = {"megatron_core": "0.19.2", "torch": "2.14.1", "python": "3.12.1"}
    assert version_change({}, here) is None  # written before versions were recorded
    assert version_change({"versions": dict(here, python="3.12.9")}, here) is None
    note = version_change({"versions": dict(here, megatron_core="0.16.1", torch="2.13.0")}, here)
    assert "megatron_core 0.16.1 -> 0.19.2; torch 2.13.0 -> 2.14.1" in note


def _train(python: str, out: Path, steps: int, *extra: str) -> subprocess.CompletedProcess:
    overrides = [f"run.output_dir={out}", f"pretrain.base_dir={out / 'base'}", "pretrain.steps=60",
                 "data.corpus.size=1000", f"grpo.steps={steps}", "checkpoint.save_every=2", "rewards.workers=1",
                 "rollout.prompts_per_step=4", "rollout.group_size=4", "eval.num_problems=4",
                 "eval.samples_per_problem=1"]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RANK", "WORLD_SIZE", "SLURM_", "MASTER_"))}
    return subprocess.run([python, "-m", "r1hpc.cli", "train", str(ROOT / "configs/ci_r1zero.yaml"), *overrides,
                           *extra], cwd=ROOT, env=dict(env, OMP_NUM_THREADS="1"), capture_output=True, text=True,
                          timeout=900)


def _megatron_version(python: str) -> str:
    return subprocess.run([python, "-c", "from r1hpc.model.mcore_compat import installed_version as v; print(v())"],
                          cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()


@pytest.mark.slow
@pytest.mark.skipif(not CROSS_PYTHON, reason="needs R1HPC_CROSS_PYTHON, the other megatron-core series' python "
                                             "(set by scripts/run_tests.sh's Python 3.12 leg)")
@pytest.mark.parametrize("writer_series", ["0.16", "0.19"])
def test_a_run_moves_between_megatron_versions(tmp_path, writer_series):
    """0.16 -> 0.19 resumes (0.19 reads 0.16's legacy common.pt); 0.19 -> 0.16 cannot (0.19 keeps the
    common state inside the torch_dist files, which 0.16 does not look for) and must say so."""
    versions = {p: _megatron_version(p) for p in (sys.executable, CROSS_PYTHON)}
    by_series = {f"{mcore_compat.release(v).rsplit('.', 1)[0]}": p for p, v in versions.items()}
    assert sorted(by_series) == ["0.16", "0.19"], versions
    writer = by_series[writer_series]
    resumer = next(p for p in versions if p != writer)
    written_by, resumed_by = versions[writer], versions[resumer]
    wrote = _train(writer, tmp_path, 2)
    assert wrote.returncode == 0, wrote.stderr[-4000:]
    run_dir = tmp_path / "ci_r1zero"
    meta = json.loads((run_dir / "checkpoints" / "step_00000002" / "meta.json").read_text())
    assert meta["versions"]["megatron_core"] == written_by
    resumed = _train(resumer, tmp_path, 4, "--resume", "auto")
    if writer_series == "0.19":
        assert resumed.returncode == 2, resumed.stderr[-4000:]
        assert (f"r1hpc: cannot load a checkpoint: {tmp_path / 'base' / 'weights'} was written with megatron-core "
                f"{written_by}") in resumed.stderr
        assert f"does not load with megatron-core {resumed_by}" in resumed.stderr
        return
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    assert "[resume] continuing from step 2" in resumed.stdout
    assert f"megatron_core {written_by} -> {resumed_by}" in resumed.stdout  # the note says which versions met
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "reward/mean" in r] == [1, 2, 3, 4]
    final = json.loads((run_dir / "checkpoints" / "step_00000004" / "meta.json").read_text())
    assert final["finished"] and final["versions"]["megatron_core"] == resumed_by
