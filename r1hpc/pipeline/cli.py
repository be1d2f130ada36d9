"""``r1hpc pipeline``: the R1 stages as one chain of jobs (Slurm, or here), then the report."""
from __future__ import annotations

import sys

from r1hpc.launch.cli import add_resource_args, resources_from_args
from r1hpc.launch.launcher import ChainFailed, launch


def add_pipeline_parser(sub) -> None:
    p = sub.add_parser("pipeline", help="the R1 pipeline (cold start, reasoning RL, rejection sampling + SFT, RL for "
                       "all scenarios, distillation) as a chain of jobs, evaluated after every stage (docs/pipeline.md)")
    p.add_argument("config", help="YAML recipe with a pipeline section, e.g. configs/tiny_r1_pipeline.yaml")
    p.add_argument("overrides", nargs="*", help="section.key=value overrides (every job)")
    p.add_argument("--dry-run", action="store_true", help="print the jobs and exit")
    add_resource_args(p)


def add_pipeline_report_parser(sub) -> None:
    rep = sub.add_parser("pipeline-report", help="compare the evaluated stages of a pipeline: <root>/report.md")
    rep.add_argument("config")
    rep.add_argument("overrides", nargs="*")


def run_pipeline(args) -> int:
    from r1hpc.pipeline.plan import pipeline_root, plan
    from r1hpc.run_config import load_run_config

    cfg = load_run_config(args.config, args.overrides)
    stages = plan(cfg, args.config, list(args.overrides), resources_from_args(args))
    if args.dry_run:
        for st in stages:
            after = f"  (after {', '.join(st.after)})" if st.after else ""
            shards = f" [array of {st.shards}, merged in {st.out}]" if st.shards else ""
            print(f"{st.name}: r1hpc {' '.join(st.args())}{shards}{after}")
        return 0
    try:
        launch(stages, local=True if args.local else None, wait=not args.no_wait, folder=args.folder)
    except ChainFailed as e:
        print(f"r1hpc pipeline: {e}", file=sys.stderr)
        return 1
    if not args.no_wait:
        print(f"r1hpc pipeline: report in {pipeline_root(cfg) / 'report.md'}")
    return 0


def run_pipeline_report(args) -> int:
    from r1hpc.run_config import load_run_config
    from r1hpc.pipeline.report import write_report

    try:
        out = write_report(load_run_config(args.config, args.overrides))
    except FileNotFoundError as e:
        print(f"r1hpc pipeline-report: {e}", file=sys.stderr)
        return 2
    print(out.read_text())
    return 0
