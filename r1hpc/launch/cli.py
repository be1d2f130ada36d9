"""``r1hpc launch``: one stage, or several chained with afterok, on Slurm (submitit) or here."""
from __future__ import annotations

import sys

from r1hpc.launch.launcher import SHARDED, ChainFailed, Resources, Stage, launch
from r1hpc.launch.rejection import filter_resources

COMMANDS = ("train", "pretrain", "eval", "rollout", "evaluate", "reject")


def add_launch_parser(sub) -> None:
    p = sub.add_parser("launch", help="submit stages to Slurm with submitit (or run them here without Slurm)")
    p.add_argument("config", help="YAML recipe")
    p.add_argument("overrides", nargs="*", help="section.key=value overrides (every stage)")
    p.add_argument("--stages", default="train",
                   help=f"comma-separated, run in order, each afterok on the one before: {', '.join(COMMANDS)}")
    add_resource_args(p)
    p.add_argument("--shards", type=int, default=8, help="array tasks of eval/rollout/evaluate stages")
    p.add_argument("--out", default="runs/shards", help="eval/rollout results: <out>/<stage>/merged.json; "
                   "reject writes <out>/reject/dataset.jsonl from the rollout stage's samples")
    p.add_argument("--weights", help="megatron checkpoint the eval/rollout/evaluate stages load (default: the "
                   "recipe's base)")
    p.add_argument("--mode", choices=("colocated", "disaggregated"), default="colocated",
                   help="disaggregated: the train job takes its batches from a rollout job array "
                   "(docs/disaggregated.md); --stages must be train")
    p.add_argument("--rollout-workers", type=int, default=2, help="rollout array tasks (disaggregated)")
    p.add_argument("--rollout-partition", help="partition of the rollout tasks (default: --partition)")
    p.add_argument("--rollout-gpus", type=int, default=1, help="GPUs per rollout task (0 for CPU)")
    p.add_argument("--rollout-cpus", type=int, default=8, help="CPUs per rollout task")


def add_resource_args(p) -> None:
    """Slurm resources of every job, and where to run (shared by ``launch`` and ``pipeline``)."""
    p.add_argument("--nodes", type=int, default=1)
    p.add_argument("--ntasks-per-node", type=int, default=8, help="ranks per node (one per GPU)")
    p.add_argument("--gpus-per-node", type=int, default=8, help="0 for a CPU job")
    p.add_argument("--cpus-per-task", type=int, default=8)
    p.add_argument("--time", type=int, default=24 * 60, help="time limit in minutes")
    p.add_argument("--partition")
    p.add_argument("--no-exclusive", action="store_true", help="share nodes with other jobs")
    p.add_argument("--local", action="store_true", help="run here even when Slurm is present")
    p.add_argument("--no-wait", action="store_true", help="submit and return (Slurm only)")
    p.add_argument("--folder", default="logs/submitit", help="submitit's job folder (logs, pickles)")


def stages_from_args(args) -> list[Stage]:
    names = [s.strip() for s in args.stages.split(",") if s.strip()]
    bad = [n for n in names if n not in COMMANDS]
    if bad or not names:
        raise ValueError(f"--stages: unknown {bad}; choose from {', '.join(COMMANDS)}")
    res = resources_from_args(args)
    if "reject" in names and "rollout" not in names[:names.index("reject")]:
        raise ValueError("--stages: reject filters the samples of a rollout stage; list rollout before it")
    stages = []
    for i, name in enumerate(names):
        sharded = name in SHARDED
        extra = ["--weights", args.weights] if sharded and args.weights else []
        stage_res = res
        if name == "reject":
            extra = ["--samples", f"{args.out}/rollout", "--out", f"{args.out}/reject/dataset.jsonl"]
            stage_res = filter_resources(res)
        stages.append(Stage(name=name, command=name, config=args.config, overrides=list(args.overrides),
                            resources=stage_res, after=[names[i - 1]] if i else [],
                            shards=args.shards if sharded else 0,
                            out=f"{args.out}/{name}" if sharded else None, extra_args=extra))
    return stages


def resources_from_args(args) -> Resources:
    return Resources(nodes=args.nodes, ntasks_per_node=args.ntasks_per_node, gpus_per_node=args.gpus_per_node,
                     cpus_per_task=args.cpus_per_task, time_minutes=args.time, partition=args.partition,
                     exclusive=not args.no_exclusive)


def run_disaggregated(args) -> int:
    from r1hpc.launch.disaggregated import run_local_disaggregated, submit_disaggregated, watch_disaggregated
    from r1hpc.launch.launcher import slurm_available

    if args.stages.strip() != "train" or args.rollout_workers < 1:
        print("r1hpc launch: --mode disaggregated runs one train stage (--stages train) with "
              "--rollout-workers >= 1", file=sys.stderr)
        return 2
    if args.local or not slurm_available():
        return run_local_disaggregated(args.config, list(args.overrides), args.rollout_workers)
    trainer = resources_from_args(args)
    workers = Resources(nodes=1, ntasks_per_node=1, gpus_per_node=args.rollout_gpus, cpus_per_task=args.rollout_cpus,
                        time_minutes=args.time, partition=args.rollout_partition or args.partition, exclusive=False)
    jobs = submit_disaggregated(args.config, list(args.overrides), trainer, workers, args.rollout_workers, args.folder)
    print(f"[launch] trainer job {jobs.trainer.job_id}; rollout tasks {', '.join(t.job_id for t in jobs.workers)}")
    return 0 if args.no_wait else watch_disaggregated(jobs)


def run_launch(args) -> int:
    if args.mode == "disaggregated":
        return run_disaggregated(args)
    try:
        stages = stages_from_args(args)
    except ValueError as e:
        print(f"r1hpc launch: {e}", file=sys.stderr)
        return 2
    try:
        launch(stages, local=True if args.local else None, wait=not args.no_wait, folder=args.folder)
    except ChainFailed as e:
        print(f"r1hpc launch: {e}", file=sys.stderr)
        return 1
    return 0
