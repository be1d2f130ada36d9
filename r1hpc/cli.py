"""The ``r1hpc`` command: one entry point, one sub-command per job."""
from __future__ import annotations

import argparse
import os
import sys
import warnings

from r1hpc.checkpoint.compat import ResumeError
from r1hpc.checkpoint.layout import CheckpointWriteError
from r1hpc.config import ConfigError
from r1hpc.model.mcore_compat import CheckpointCorruptError, CheckpointVersionError


# Third-party warnings a user cannot act on (the CPU stack has no Apex/TE by design; deprecations inside
# megatron's and torch's own checkpoint code). Filtered here at the entry, never in library code;
# R1HPC_SHOW_WARNINGS=1 shows them.
_KNOWN_HARMLESS = (
    (UserWarning, r"Transformer Engine and Apex are not installed"),
    (UserWarning, r"Apex is not installed"),
    (UserWarning, r"full scope is deprecated"),
    (FutureWarning, r"`load_state_dict` is deprecated"),
    (FutureWarning, r"Please use DTensor instead and we are deprecating ShardedTensor"),
)


def _quiet_known_warnings() -> None:
    if os.environ.get("R1HPC_SHOW_WARNINGS") == "1":
        return
    for category, message in _KNOWN_HARMLESS:
        warnings.filterwarnings("ignore", message=message, category=category)


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="YAML recipe, e.g. configs/tiny_r1zero.yaml")
    p.add_argument("overrides", nargs="*", help="section.key=value overrides")


def main(argv: list[str] | None = None) -> int:
    _quiet_known_warnings()
    parser = argparse.ArgumentParser(prog="r1hpc", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("info", help="versions, devices and what the CPU compatibility layer patched")
    _add_config_args(sub.add_parser("pretrain", help="train (or reuse) the recipe's weak base model only"))
    _add_config_args(sub.add_parser("sft", help="supervised fine-tuning on sft.data JSONL (cold start, rejection "
                                    "sampling SFT, distillation); docs/sft.md"))
    cold = sub.add_parser("cold-start", help="write cold-start SFT data: clean worked solutions of the training "
                          "split in R1's |special_token|reasoning|special_token|summary form")
    _add_config_args(cold)
    cold.add_argument("--out", required=True, help="JSONL file to write (a .provenance.json is written beside it)")
    cold.add_argument("--n", type=int, required=True, help="number of examples")
    train = sub.add_parser("train", help="R1-Zero: pretrain/reuse a base, evaluate, GRPO, evaluate")
    _add_config_args(train)
    train.add_argument("--resume", metavar="auto|none|PATH",
                       help="sets checkpoint.resume: auto = the newest complete checkpoint (docs/checkpointing.md)")
    worker = sub.add_parser("rollout-worker", help="a rollout worker of a disaggregated run: serve the trainer's "
                            "orders from its newest weights until it finishes (docs/disaggregated.md)")
    _add_config_args(worker)
    worker.add_argument("--worker-id", help="default: w<SLURM_ARRAY_TASK_ID>, else <host>-<pid>")
    convert = sub.add_parser("convert", help="Hugging Face safetensors (or a GGUF file) <-> megatron checkpoint "
                             "(docs/hf_weights.md)")
    convert.add_argument("direction", choices=["hf-to-megatron", "megatron-to-hf"])
    convert.add_argument("src", help="HF folder (config.json + safetensors), a .gguf file, or a converted megatron folder")
    convert.add_argument("dst", help="output folder")
    convert.add_argument("overrides", nargs="*", help="parallel.<key>=.., model.<key>=.., export_dtype=bf16")
    bench = sub.add_parser("evaluate", help="pass@1 over k samples, cons@k, pass@k of the recipe's base (or --weights) "
                           "on GSM8K, MATH-500 and synthetic tasks (eval.sets); writes a results table")
    _add_config_args(bench)
    bench.add_argument("--out", required=True, help="folder for results.json, results.md and samples.jsonl")
    bench.add_argument("--weights", help="megatron weights to load (default: <pretrain.base_dir>/weights; "
                       "a GRPO checkpoint, or its checkpoints/ folder for the latest)")
    bench.add_argument("--shard", default="0/1", help="i/n: one job-array task (problems i, i+n, ... of every set); "
                       "`r1hpc merge <out>` then writes the results")
    rep = sub.add_parser("report", help="HTML page + PNG plots of a run directory (learning curves, aha-moment monitor)")
    rep.add_argument("run_dir", help="a run directory, e.g. runs/tiny_r1zero")
    rep.add_argument("--out", help="where to write (default: <run_dir>/report)")
    for kind, what in (("eval", "held-out pass@1"), ("rollout", "samples with rewards")):
        p = sub.add_parser(kind, help=f"{what} for one shard of the problems (a job-array task); see r1hpc merge")
        _add_config_args(p)
        p.add_argument("--out", required=True, help="directory for the shard files")
        p.add_argument("--shard", default="0/1", help="i/n: this task takes problems i, i+n, ... (default 0/1)")
        p.add_argument("--weights", help="megatron checkpoint to load (default: the recipe's base)")
    sub.add_parser("merge", help="join the shard files of an eval/rollout/evaluate array").add_argument("out")
    rej = sub.add_parser("reject", help="rejection sampling: the correct, readable samples of a merged rollout "
                         "as an SFT JSONL dataset with provenance (docs/rejection.md)")
    _add_config_args(rej)
    rej.add_argument("--samples", required=True, help="rollout directory holding merged.json (r1hpc rollout + merge)")
    rej.add_argument("--out", required=True, help="the dataset, e.g. data/sft.jsonl (its counts beside it: <name>.provenance.json)")
    from r1hpc.launch.cli import add_launch_parser

    add_launch_parser(sub)
    from r1hpc.pipeline.cli import add_pipeline_parsers

    add_pipeline_parsers(sub)
    args = parser.parse_args(argv)
    try:
        if args.command == "info":
            from r1hpc.info import print_info

            print_info()
            return 0
        if args.command == "pretrain":
            from r1hpc.run_config import load_run_config
            from r1hpc.train.pretrain import run_pretrain

            run_pretrain(load_run_config(args.config, args.overrides))
            return 0
        if args.command == "sft":
            from r1hpc.run_config import load_run_config
            from r1hpc.data.jsonl import DatasetError
            from r1hpc.train.sft import run_sft

            try:
                run_sft(load_run_config(args.config, args.overrides))
            except DatasetError as e:
                print(f"r1hpc: bad SFT data: {e}", file=sys.stderr)
                return 2
            return 0
        if args.command == "cold-start":
            from r1hpc.run_config import load_run_config
            from r1hpc.data.cold_start import build_cold_start

            path = build_cold_start(load_run_config(args.config, args.overrides), args.n, args.out)
            print(f"r1hpc: {args.n} cold-start examples in {path}")
            return 0
        if args.command == "train":
            from r1hpc.checkpoint.preemption import catch_signals_early

            catch_signals_early()
            from r1hpc.run_config import load_run_config
            from r1hpc.train.r1zero import run_r1zero

            overrides = list(args.overrides) + ([f"checkpoint.resume={args.resume}"] if args.resume else [])
            run_r1zero(load_run_config(args.config, overrides))
            return 0
        if args.command == "convert":
            from r1hpc.model.hf.convert import run_convert

            result = run_convert(args.direction, args.src, args.dst, args.overrides)
            print(f"r1hpc: converted {args.src} -> {args.dst} ({result['family']})")
            return 0
        if args.command == "evaluate":
            from r1hpc.run_config import load_run_config
            from r1hpc.eval.benchmarks import run_benchmarks

            from r1hpc.eval.shards import parse_shard

            shard = parse_shard(args.shard)
            run_benchmarks(load_run_config(args.config, args.overrides), args.out, args.weights, shard)
            print(f"r1hpc: results in {args.out}/results.md" if shard[1] == 1 else
                  f"r1hpc: shard {args.shard} in {args.out}; `r1hpc merge {args.out}` writes the results")
            return 0
        if args.command == "report":
            from r1hpc.monitor.report import build_report

            try:
                build_report(args.run_dir, args.out)
            except FileNotFoundError as e:
                print(f"r1hpc: {e}", file=sys.stderr)
                return 2
            return 0
        if args.command in ("eval", "rollout"):
            from r1hpc.run_config import load_run_config
            from r1hpc.eval.shards import parse_shard, run_shard

            shard = parse_shard(args.shard)
            print(run_shard(load_run_config(args.config, args.overrides), args.command, shard, args.out, args.weights))
            return 0
        if args.command == "merge":
            import json

            from r1hpc.eval.shards import merge

            result = merge(args.out)
            print(json.dumps({k: v for k, v in result.items() if k != "records"}, indent=1))
            return 0
        if args.command == "reject":
            from r1hpc.run_config import load_run_config
            from r1hpc.data.rejection import format_stats, run_rejection

            cfg = load_run_config(args.config, args.overrides)
            try:
                stats = run_rejection(cfg, args.samples, args.out)
            except (FileNotFoundError, ValueError) as e:
                print(f"r1hpc reject: {e}", file=sys.stderr)
                return 2
            print(f"r1hpc reject: {format_stats(stats)} -> {args.out}")
            return 0
        if args.command == "rollout-worker":
            from r1hpc.run_config import load_run_config
            from r1hpc.disagg.worker import run_rollout_worker

            return run_rollout_worker(load_run_config(args.config, ["disagg.enabled=true", *args.overrides]),
                                      args.worker_id)
        if args.command == "launch":
            from r1hpc.launch.cli import run_launch

            return run_launch(args)
        if args.command == "pipeline":
            from r1hpc.pipeline.cli import run_pipeline

            return run_pipeline(args)
        if args.command == "pipeline-report":
            from r1hpc.pipeline.cli import run_pipeline_report

            return run_pipeline_report(args)
    except ConfigError as e:
        print(f"r1hpc: config error: {e}", file=sys.stderr)
        return 2
    except ResumeError as e:
        print(f"r1hpc: cannot resume: {e}", file=sys.stderr)
        return 2
    except (CheckpointVersionError, CheckpointCorruptError) as e:
        print(f"r1hpc: cannot load a checkpoint: {e}", file=sys.stderr)
        return 2
    except CheckpointWriteError as e:
        print(f"r1hpc: cannot save a checkpoint: {e}", file=sys.stderr)
        return 2
    return 1


if __name__ == "__main__":
    sys.exit(main())
