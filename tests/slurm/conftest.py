"""One throwaway Slurm for the whole session (slurm/local_slurm.sh: two fake nodes, slurmdbd +
MariaDB so sacct works), and a tiny base model trained once through the SFT template."""
from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "slurm" / "local_slurm.sh"
CONFIG = "configs/ci_r1zero.yaml"
DAEMONS = ("slurmctld", "slurmd", "slurmdbd", "munged", "mariadbd", "sbatch")


def _missing() -> list[str]:
    return [d for d in DAEMONS if not (shutil.which(d) or Path("/usr/sbin", d).exists())]


@pytest.fixture(scope="session")
def slurm(tmp_path_factory):
    """Environment (SLURM_CONF) of a running 2-node local cluster; stopped at the end."""
    if os.geteuid() != 0:
        pytest.skip("the local Slurm needs root (slurmd starts jobs as the submitting user)")
    if _missing():
        pytest.skip(f"Slurm packages missing ({', '.join(_missing())}): run scripts/install_system_deps.sh")
    state = tmp_path_factory.mktemp("slurm")
    up = subprocess.run(["bash", str(SCRIPT), "up", "--nodes", "2", "--dir", str(state)],
                        capture_output=True, text=True, timeout=300)
    assert up.returncode == 0, up.stderr
    env = dict(os.environ, SLURM_CONF=str(state / "etc" / "slurm.conf"))
    for k in [k for k in env if k.startswith("SLURM_") and k != "SLURM_CONF"] + ["RANK", "WORLD_SIZE", "MASTER_ADDR",
                                                                               "MASTER_PORT", "LOCAL_RANK"]:
        env.pop(k, None)
    env["PATH"] = f"{Path(os.sys.executable).parent}:{env['PATH']}"  # the jobs use this venv's r1hpc
    yield env
    subprocess.run(["bash", str(SCRIPT), "down", "--dir", str(state)], capture_output=True, timeout=120)


@pytest.fixture(scope="session")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("jobs")


def tiny(work: Path, name: str, *extra: str) -> list[str]:
    """Overrides that shrink configs/ci_r1zero.yaml to seconds and share one base."""
    return [f"run.output_dir={work}/runs", f"run.name={name}", f"pretrain.base_dir={work}/base",
            "pretrain.steps=20", "grpo.steps=3", "eval.num_problems=4", "eval.samples_per_problem=2",
            "rollout.group_size=4", "rollout.prompts_per_step=4", *extra]


def sbatch(env: dict, template: str, args: list[str], *options: str, cwd: Path = ROOT) -> str:
    """Submit a template from the repository root; returns the job id."""
    out = subprocess.run(["sbatch", "--parsable", "--gpus-per-node=0", "--cpus-per-task=1", "--time=10",
                          *options, str(ROOT / "slurm" / template), *args],
                         capture_output=True, text=True, env=env, cwd=cwd, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip().split(";")[0]


_ACTIVE = ("PENDING", "RUNNING", "REQUEUED", "COMPLETING", "RESIZING", "SUSPENDED")


def wait_job(env: dict, job_id: str, timeout: float = 600, started: bool = True) -> dict[str, dict]:
    """Block until every record of the job (array tasks included) is final; sacct rows by JobID.
    ``started=False`` is for a job cancelled before it ran: its array keeps one ``<id>_[..]`` row,
    and slurmdbd learns of the cancel a little after scancel returns."""
    deadline = time.monotonic() + timeout
    while True:
        rows = sacct(env, job_id)
        if rows and all(r["State"] not in _ACTIVE for r in rows.values()):
            # an array shows one pending row until its tasks start
            if not started or not any(k.endswith("]") for k in rows):
                return rows
        if time.monotonic() > deadline:
            raise TimeoutError(f"job {job_id} not finished after {timeout}s: {rows}")
        time.sleep(2)


def sacct(env: dict, job_id: str, fields: str = "JobID,State,ExitCode,NodeList,Start,End") -> dict[str, dict]:
    try:
        out = subprocess.run(["sacct", "-n", "-P", "-X", "-o", fields, "-j", job_id], capture_output=True, text=True,
                             env=env, timeout=60).stdout
    except subprocess.TimeoutExpired:  # slurmdbd slow on a loaded machine: the caller polls again
        return {}
    names = fields.split(",")
    rows = [dict(zip(names, line.split("|"))) for line in out.splitlines() if line.strip()]
    return {r["JobID"]: r for r in rows}


@pytest.fixture(scope="session")
def base(slurm, work) -> Path:
    """The shared tiny base, pretrained through slurm/sft.sbatch (2 ranks on one node)."""
    job = sbatch(slurm, "sft.sbatch", [CONFIG, *tiny(work, "base")], "--nodes=1", "--ntasks-per-node=2",
                 f"--output={work}/sft-%j.log", f"--export=ALL,R1HPC_LOG_DIR={work}/logs,R1HPC_SFT_COMMAND=pretrain")
    rows = wait_job(slurm, job)
    log = (work / f"sft-{job}.log").read_text()
    assert rows[job]["State"] == "COMPLETED", log
    return work / "base"
