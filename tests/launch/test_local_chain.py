"""``r1hpc launch`` without Slurm: stages run here in order, and a failed stage stops its
dependents with the same report the Slurm path gives."""
from __future__ import annotations

import pytest

from r1hpc.launch.launcher import ChainFailed, Resources, Stage, launch

ONE = Resources(nodes=1, ntasks_per_node=1, gpus_per_node=0)


def test_failed_stage_stops_its_dependents_and_the_report_says_why(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    stages = [
        Stage("rl", "train", "configs/missing.yaml", [], ONE),  # no such recipe: the stage fails at once
        Stage("evaluate", "eval", "configs/missing.yaml", [], ONE, after=["rl"], shards=2, out=str(tmp_path / "e")),
        Stage("report", "rollout", "configs/missing.yaml", [], ONE, after=["evaluate"], shards=1,
              out=str(tmp_path / "r")),
    ]
    with pytest.raises(ChainFailed) as err:
        launch(stages, local=True, log=lambda *_: None)
    res, report = err.value.results, str(err.value)
    assert res["rl"].state == "FAILED" and res["rl"].detail == "exit code 2"  # a config error exits 2
    assert res["evaluate"].state == res["report"].state == "STOPPED"
    assert "stopped its dependents: evaluate, report" in report
    assert "stage evaluate (job -): not run, its dependency rl failed" in report
    assert "stage report (job -): not run, its dependency evaluate was stopped (rl failed)" in report
    assert not (tmp_path / "e").exists() and not (tmp_path / "r").exists()
