"""``r1hpc launch`` on the local Slurm: arrays with merged results, afterok chains, failure reports."""
from __future__ import annotations

import json
import os

import pytest

from r1hpc.launch.launcher import ChainFailed, Resources, Stage, launch
from tests.slurm.conftest import CONFIG, ROOT, sacct, tiny, wait_job

pytestmark = pytest.mark.slow
CPU = Resources(nodes=1, ntasks_per_node=1, gpus_per_node=0, cpus_per_task=1, time_minutes=10, exclusive=False)


@pytest.fixture
def in_cluster(slurm, monkeypatch):
    for k, v in slurm.items():
        monkeypatch.setenv(k, v)
    for k in [k for k in os.environ if k.startswith("SLURM_") and k != "SLURM_CONF"]:
        monkeypatch.delenv(k)
    monkeypatch.chdir(ROOT)
    return slurm


def test_chain_runs_in_order_and_merges_the_array(in_cluster, base, work):
    out = work / "chain"
    stages = [
        Stage("evaluate", "eval", CONFIG, tiny(work, "base", "eval.num_problems=2"), CPU, shards=2,
              out=str(out / "eval")),
        Stage("sample", "rollout", CONFIG, tiny(work, "base", "eval.num_problems=1"), CPU, after=["evaluate"],
              shards=1, out=str(out / "rollout")),
    ]
    results = launch(stages, local=False, folder=work / "submitit", log=print)
    assert {r.state for r in results.values()} == {"COMPLETED"}
    merged = json.loads((out / "eval" / "merged.json").read_text())
    assert merged["shards"] == 2 and [r["index"] for r in merged["records"]] == [0, 1]
    assert json.loads((out / "rollout" / "merged.json").read_text())["kind"] == "rollout"
    first_end = sacct(in_cluster, results["evaluate"].job_id)[results["evaluate"].job_id]["End"]
    second_start = sacct(in_cluster, results["sample"].job_id)[results["sample"].job_id]["Start"]
    assert second_start >= first_end  # ISO timestamps: the dependent started after its dependency ended


def test_failed_stage_stops_its_dependents_and_says_which(in_cluster, base, work, capsys):
    stages = [
        Stage("rl", "train", CONFIG, tiny(work, "bad", "grpo.stpes=3"), CPU),  # misspelt key: config error
        Stage("evaluate", "eval", CONFIG, tiny(work, "base"), CPU, after=["rl"], shards=2, out=str(work / "never")),
        Stage("report", "rollout", CONFIG, tiny(work, "base"), CPU, after=["evaluate"], shards=1,
              out=str(work / "never2")),
    ]
    with pytest.raises(ChainFailed) as err:
        launch(stages, local=False, folder=work / "submitit", log=print)
    report = str(err.value)
    res = err.value.results
    assert res["rl"].state == "FAILED" and "exit code 1:0" in res["rl"].detail
    assert res["evaluate"].state == res["report"].state == "STOPPED"
    assert "stage rl (job" in report and "FAILED" in report
    assert "stopped its dependents: evaluate, report" in report
    assert "stage evaluate (job" in report and "not run, its dependency rl failed" in report
    assert "stage report (job" in report and "not run, its dependency evaluate was stopped (rl failed)" in report
    for name in ("evaluate", "report"):  # the array's own id: tasks of an array that never ran have no rows
        rows = wait_job(in_cluster, res[name].job_id.split("_")[0], timeout=120, started=False)
        # never ran: no node was ever assigned (Start is None, or the cancel time on some slurmdbd writes)
        assert all(r["State"].startswith("CANCELLED") and r["NodeList"] == "None assigned" for r in rows.values()), rows
    assert not (work / "never").exists()
