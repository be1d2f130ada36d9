"""Every sbatch template on a real local Slurm (two fake nodes), on a tiny CPU config."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.slurm.conftest import CONFIG, ROOT, sacct, sbatch, tiny, wait_job

pytestmark = pytest.mark.slow


def _metrics(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_sft_template_trains_the_base_with_one_log_per_rank(base, work):
    assert (base / "weights" / "metadata.json").is_file() and (base / "meta.json").is_file()
    rank_logs = sorted(p.name for p in (work / "logs").glob("r1hpc-sft-*-rank*.log"))
    assert [n.rsplit("-", 1)[1] for n in rank_logs] == ["rank0.log", "rank1.log"]


def test_sft_template_fine_tunes_on_cold_start_data_across_two_nodes(slurm, base, work):
    """`r1hpc sft` (the template's default) with data-parallel ranks on n1 and n2."""
    from r1hpc.data.cold_start import build_cold_start
    from r1hpc.run_config import load_run_config

    data = build_cold_start(load_run_config(ROOT / CONFIG), 64, work / "cold_start.jsonl")
    job = sbatch(slurm, "sft.sbatch", [CONFIG, *tiny(work, "cold_start"), f"sft.data=[{data}]", "sft.batch_size=16",
                                       "sft.micro_batch_size=4"], "--nodes=2", "--ntasks-per-node=1",
                 "--exclusive=user", f"--output={work}/cold-%j.log", f"--export=ALL,R1HPC_LOG_DIR={work}/cold_logs")
    rows = wait_job(slurm, job)
    assert rows[job]["State"] == "COMPLETED", (work / f"cold-{job}.log").read_text()
    assert rows[job]["NodeList"] == "n[1-2]"
    run = work / "runs" / "cold_start"
    meta = json.loads((run / "sft_meta.json").read_text())
    assert meta["examples"] + meta["dropped_too_long"] == 64 and (run / "weights" / "metadata.json").is_file()
    assert meta["steps"] == -(-meta["examples"] // 16)  # 16 examples per step, both ranks together
    assert [m["step"] for m in _metrics(run)] == list(range(1, meta["steps"] + 1))


def test_grpo_two_nodes_equals_one_node(slurm, base, work):
    """The same 2-rank GRPO job, ranks on n1 and n2 (srun, gloo) vs both on one node: same numbers."""
    jobs = {
        "two_nodes": sbatch(slurm, "grpo.sbatch", [CONFIG, *tiny(work, "two_nodes")], "--nodes=2",
                            "--ntasks-per-node=1", "--exclusive=user", f"--output={work}/two-%j.log",
                            f"--export=ALL,R1HPC_LOG_DIR={work}/two_logs"),
        "one_node": sbatch(slurm, "grpo.sbatch", [CONFIG, *tiny(work, "one_node")], "--nodes=1",
                           "--ntasks-per-node=2", "--exclusive=user", f"--output={work}/one-%j.log",
                           f"--export=ALL,R1HPC_LOG_DIR={work}/one_logs"),
    }
    for name, job in jobs.items():
        rows = wait_job(slurm, job)
        log = next(work.glob(f"*-{job}.log")).read_text()
        assert rows[job]["State"] == "COMPLETED", log
    assert sacct(slurm, jobs["two_nodes"])[jobs["two_nodes"]]["NodeList"] == "n[1-2]"
    assert sacct(slurm, jobs["one_node"])[jobs["one_node"]]["NodeList"] in ("n1", "n2")
    two, one = (_metrics(work / "runs" / n) for n in ("two_nodes", "one_node"))
    assert [m["step"] for m in two] == [m["step"] for m in one]
    assert sum("actor/grad_norm" in m for m in two) >= 3  # train rows (eval rows carry eval/* only)
    for a, b in zip(two, one):  # every learning number (the loss enters through actor/grad_norm), no timings
        keys = [k for k in a if isinstance(a[k], float)
                and not k.startswith(("timing/", "perf/tokens_per_s")) and not k.endswith("_s")]
        for key in keys:
            assert a[key] == pytest.approx(b[key], rel=1e-6, abs=1e-7), (key, a["step"])
    s2, s1 = (json.loads((work / "runs" / n / "summary.json").read_text()) for n in ("two_nodes", "one_node"))
    assert s2["world_size"] == s1["world_size"] == 2
    assert s2["pass_at_1_after"] == s1["pass_at_1_after"]


def test_eval_array_merges_to_the_one_process_result(slurm, base, work):
    out = work / "eval_array"
    job = sbatch(slurm, "eval_array.sbatch", [CONFIG, str(out), *tiny(work, "base")], "--array=0-1",
                 "--nodes=1", "--ntasks-per-node=1", f"--output={work}/eval-%A_%a.log",
                 f"--export=ALL,R1HPC_LOG_DIR={work}/logs")
    rows = wait_job(slurm, job)
    assert {k: r["State"] for k, r in rows.items()} == {f"{job}_0": "COMPLETED", f"{job}_1": "COMPLETED"}, \
        [p.read_text() for p in work.glob(f"eval-{job}_*.log")]
    env = {k: v for k, v in slurm.items() if k != "SLURM_CONF"}
    merged = json.loads(subprocess.run([sys.executable, "-m", "r1hpc.cli", "merge", str(out)], check=True,
                                       capture_output=True, text=True, cwd=ROOT, env=env).stdout)
    assert merged["shards"] == 2 and merged["metrics"]["pass@1"] is not None
    single = work / "eval_single"
    subprocess.run([sys.executable, "-m", "r1hpc.cli", "eval", CONFIG, *tiny(work, "base"), "--out", str(single)],
                   check=True, cwd=ROOT, env=dict(env, OMP_NUM_THREADS="1"), capture_output=True)
    subprocess.run([sys.executable, "-m", "r1hpc.cli", "merge", str(single)], check=True, cwd=ROOT, env=env,
                   capture_output=True)
    a, b = (json.loads((d / "merged.json").read_text()) for d in (out, single))
    assert len(a["records"]) == 4
    assert a["records"] == b["records"]
    assert a["metrics"] == b["metrics"]


def test_rollout_array_template(slurm, base, work):
    out = work / "rollout_array"
    job = sbatch(slurm, "rollout_array.sbatch", [CONFIG, str(out), *tiny(work, "base", "eval.num_problems=2")],
                 "--array=0-1", "--nodes=1", "--ntasks-per-node=1", f"--output={work}/rollout-%A_%a.log",
                 f"--export=ALL,R1HPC_LOG_DIR={work}/logs")
    rows = wait_job(slurm, job)
    assert all(r["State"] == "COMPLETED" for r in rows.values()), rows
    from r1hpc.eval.shards import merge

    merged = merge(out)
    assert merged["kind"] == "rollout" and [r["index"] for r in merged["records"]] == [0, 1]
    assert all(len(r["responses"]) == len(r["scores"]) == 4 for r in merged["records"])  # rollout.group_size
