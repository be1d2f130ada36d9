"""Submit r1hpc stages to Slurm with submitit (or run them here when there is no Slurm).

A stage is one ``r1hpc`` sub-command with its resources; a sharded stage (rollout, eval) becomes a
job array plus a one-task merge job. Stages are chained with ``afterok``: a stage starts only when
the stages it depends on succeeded. When one fails, Slurm would leave its dependents pending
forever; the launcher cancels them and reports which stage failed, why (state, exit code, log)
and which stages it stopped. The R1 pipeline builds its chain from ``Stage`` objects.
"""
from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Optional

from r1hpc.launch.task import R1hpcStep

SHARDED = ("eval", "rollout", "evaluate")
TERMINAL_OK = ("COMPLETED",)
TERMINAL_BAD = ("FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "BOOT_FAIL", "DEADLINE",
                "PREEMPTED")


@dataclasses.dataclass
class Resources:
    """Per-job Slurm resources; the defaults are a GPU node of 8 (override for CPU test clusters)."""

    nodes: int = 1
    ntasks_per_node: int = 8
    gpus_per_node: int = 8
    cpus_per_task: int = 8
    time_minutes: int = 24 * 60
    partition: Optional[str] = None
    exclusive: bool = True
    signal_delay_s: int = 120


@dataclasses.dataclass
class Stage:
    """One ``r1hpc <command> <config> <overrides> <extra_args>`` job. ``shards`` > 0 makes it a job
    array whose results ``r1hpc merge`` joins in ``out``; ``after`` names stages that must succeed
    first; ``extra_args`` are the command's own options (e.g. ``--weights W``)."""

    name: str
    command: str
    config: str
    overrides: list[str] = dataclasses.field(default_factory=list)
    resources: Resources = dataclasses.field(default_factory=Resources)
    after: list[str] = dataclasses.field(default_factory=list)
    shards: int = 0
    out: Optional[str] = None
    extra_args: list[str] = dataclasses.field(default_factory=list)

    def args(self) -> list[str]:
        args = [self.command, self.config, *self.overrides, *self.extra_args]
        if self.command == "train":
            args += ["--resume", "auto"]
        return args


@dataclasses.dataclass
class StageResult:
    name: str
    job_id: str
    state: str
    detail: str = ""
    cause: str = ""  # for a STOPPED stage: the failed stage that stopped it


def _stopped(name: str, dependency: str, cause: str, job_id: str) -> StageResult:
    why = f"its dependency {dependency} failed" if dependency == cause else \
        f"its dependency {dependency} was stopped ({cause} failed)"
    return StageResult(name, job_id, "STOPPED", why, cause)


class ChainFailed(RuntimeError):
    def __init__(self, report: str, results: dict[str, StageResult]):
        super().__init__(report)
        self.results = results


def slurm_available() -> bool:
    return shutil.which("sbatch") is not None and subprocess.run(
        ["scontrol", "ping"], capture_output=True).returncode == 0


def slurm_executor(folder: Path, name: str, res: Resources, *, ntasks: Optional[int] = None, array: int = 0,
                   dependency: Optional[str] = None):
    import submitit

    ex = submitit.AutoExecutor(folder=folder / name, cluster="slurm")
    extra = {"requeue": True}
    if res.exclusive:
        extra["exclusive"] = True
    if dependency:
        extra["dependency"] = dependency
        extra["kill_on_invalid_dep"] = "yes"
    params = dict(slurm_job_name=f"r1hpc-{name}", nodes=res.nodes,
                  tasks_per_node=ntasks if ntasks is not None else res.ntasks_per_node,
                  cpus_per_task=res.cpus_per_task, timeout_min=res.time_minutes,
                  slurm_signal_delay_s=res.signal_delay_s, slurm_additional_parameters=extra)
    # submitit writes --gpus-per-node only when asked; 0 means a CPU job
    if res.gpus_per_node:
        params["gpus_per_node"] = res.gpus_per_node
    if res.partition:
        params["slurm_partition"] = res.partition
    if array:
        params["slurm_array_parallelism"] = array
    ex.update_parameters(**params)
    return ex


def submit_chain(stages: list[Stage], folder: str | Path = "logs/submitit") -> dict[str, list]:
    """Submit every stage to Slurm, each held by ``afterok`` on the stages it names.
    Returns stage name -> submitit jobs (an array's tasks, then its merge job)."""
    folder = Path(folder)
    jobs: dict[str, list] = {}
    last_of: dict[str, str] = {}  # the job id a dependent waits on (an array's merge job)
    for st in stages:
        unknown = [a for a in st.after if a not in last_of]
        if unknown:
            raise ValueError(f"stage {st.name!r} depends on {unknown}, which are not earlier stages")
        dep = "afterok:" + ":".join(last_of[a] for a in st.after) if st.after else None
        if st.shards:
            if not st.out:
                raise ValueError(f"stage {st.name!r} is sharded and needs an output directory (out)")
            array_res = dataclasses.replace(st.resources, nodes=1, exclusive=False)
            ex = slurm_executor(folder, st.name, array_res, ntasks=1, array=st.shards, dependency=dep)
            with ex.batch():
                tasks = [ex.submit(R1hpcStep(st.args() + ["--out", st.out, "--shard", f"{i}/{st.shards}"],
                                             result=st.out)) for i in range(st.shards)]
            array_id = tasks[0].job_id.split("_")[0]
            merge_res = Resources(nodes=1, ntasks_per_node=1, gpus_per_node=0, cpus_per_task=1,
                                  time_minutes=30, partition=st.resources.partition, exclusive=False)
            mex = slurm_executor(folder, f"{st.name}-merge", merge_res, dependency=f"afterok:{array_id}")
            merge_job = mex.submit(R1hpcStep(["merge", st.out], result=str(Path(st.out) / "merged.json")))
            jobs[st.name] = tasks + [merge_job]
            last_of[st.name] = merge_job.job_id
        else:
            ex = slurm_executor(folder, st.name, st.resources, dependency=dep)
            job = ex.submit(R1hpcStep(st.args()))
            jobs[st.name] = [job]
            last_of[st.name] = job.job_id
    return jobs


def sacct_states(job_ids: list[str]) -> dict[str, tuple[str, str]]:
    """job id -> (state, exit code) from sacct (needs slurmdbd), array tasks as ``<id>_<i>``."""
    out = subprocess.run(["sacct", "-n", "-P", "-X", "-o", "JobID,State,ExitCode", "-j", ",".join(
        sorted({j.split("_")[0] for j in job_ids}))], capture_output=True, text=True).stdout
    states = {}
    for line in out.splitlines():
        parts = line.split("|")
        if len(parts) == 3:
            states[parts[0]] = (parts[1].split()[0], parts[2])
    return states


def watch_chain(stages: list[Stage], jobs: dict[str, list], poll_s: float = 5.0,
                log: Callable[[str], None] = print) -> dict[str, StageResult]:
    """Wait for every stage. On a failure, cancel the stages that can no longer run and raise
    ChainFailed with a report naming the failed stage, its state, exit code and log, and the
    stopped dependents."""
    dependents = {st.name: [d.name for d in stages if st.name in d.after] for st in stages}
    results: dict[str, StageResult] = {}
    while len(results) < len(stages):
        ids = [j.job_id for js in jobs.values() for j in js]
        states = sacct_states(ids)
        for st in stages:
            if st.name in results:
                continue
            got = [(j, states.get(j.job_id, ("PENDING", ""))) for j in jobs[st.name]]
            bad = [(j, s) for j, s in got if s[0] in TERMINAL_BAD]
            if bad:
                job, (state, code) = bad[0]
                results[st.name] = StageResult(st.name, job.job_id, state,
                                               f"exit code {code}; log {job.paths.stderr}")
                _stop_dependents(st.name, stages, dependents, jobs, results)
            elif all(s[0] in TERMINAL_OK for _, s in got):
                results[st.name] = StageResult(st.name, got[-1][0].job_id, "COMPLETED")
                log(f"[launch] stage {st.name} (job {got[-1][0].job_id}) completed")
        if len(results) < len(stages):
            time.sleep(poll_s)
    failed = [r for r in results.values() if r.state not in ("COMPLETED", "STOPPED")]
    if failed:
        raise ChainFailed(format_report(stages, results), results)
    return results


def _stop_dependents(name, stages, dependents, jobs, results) -> None:
    todo = [(d, name) for d in dependents[name]]
    while todo:
        d, parent = todo.pop(0)
        if d in results:
            continue
        subprocess.run(["scancel", *[j.job_id for j in jobs[d]]], capture_output=True)
        results[d] = _stopped(d, parent, name, jobs[d][0].job_id)
        todo += [(x, d) for x in dependents[d]]


def format_report(stages: list[Stage], results: dict[str, StageResult]) -> str:
    lines = []
    for st in stages:
        r = results.get(st.name)
        if r is None:
            continue
        if r.state == "STOPPED":
            lines.append(f"  stage {st.name} (job {r.job_id}): not run, {r.detail}")
        elif r.state != "COMPLETED":
            lines.append(f"  stage {st.name} (job {r.job_id}) FAILED: {r.state}, {r.detail}")
            stopped = [d for d, x in results.items() if x.state == "STOPPED" and x.cause == st.name]
            lines.append(f"    stopped its dependents: {', '.join(stopped) if stopped else 'none'}")
        else:
            lines.append(f"  stage {st.name} (job {r.job_id}): completed")
    return "chain failed:\n" + "\n".join(lines)


def run_local(stages: list[Stage], log: Callable[[str], None] = print) -> dict[str, StageResult]:
    """No Slurm: run the stages here, in order (shards one after another, then the merge); a
    failing stage stops the rest. Several ranks per stage run under torchrun."""
    results: dict[str, StageResult] = {}
    for i, st in enumerate(stages):
        failed_dep = [a for a in st.after if results.get(a) and results[a].state != "COMPLETED"]
        if failed_dep:
            dep = results[failed_dep[0]]
            results[st.name] = _stopped(st.name, dep.name, dep.cause or dep.name, "-")
            continue
        runs = ([st.args() + ["--out", st.out, "--shard", f"{k}/{st.shards}"] for k in range(st.shards)]
                + [["merge", st.out]]) if st.shards else [st.args()]
        world = st.resources.nodes * st.resources.ntasks_per_node
        rc = 0
        for args in runs:
            prefix = [sys.executable, "-m", "r1hpc.cli"]
            if world > 1 and not st.shards:
                prefix = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={world}",
                          "-m", "r1hpc.cli"]
            log(f"[launch] local: {' '.join(prefix[2:] + args)}")
            rc = subprocess.run(prefix + args, env=os.environ.copy()).returncode
            if rc:
                break
        results[st.name] = StageResult(st.name, "-", "COMPLETED" if rc == 0 else "FAILED",
                                       "" if rc == 0 else f"exit code {rc}")
    if any(r.state != "COMPLETED" for r in results.values()):
        raise ChainFailed(format_report(stages, results), results)
    return results


def launch(stages: list[Stage], *, local: Optional[bool] = None, wait: bool = True,
           folder: str | Path = "logs/submitit", log: Callable[[str], None] = print):
    """Slurm when present (``local=None``), else here. Returns stage results (or, with
    ``wait=False`` on Slurm, the submitted jobs)."""
    if local is None:
        local = not slurm_available()
    if local:
        return run_local(stages, log=log)
    jobs = submit_chain(stages, folder)
    for name, js in jobs.items():
        log(f"[launch] stage {name}: job(s) {', '.join(j.job_id for j in js)}")
    return watch_chain(stages, jobs, log=log) if wait else jobs
