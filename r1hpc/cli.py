"""The ``r1hpc`` command: one entry point, one sub-command per job."""
from __future__ import annotations

import argparse
import os
import sys
import warnings
from functools import partial
from typing import Callable

from r1hpc.checkpoint.compat import ResumeError
from r1hpc.checkpoint.layout import CheckpointWriteError
from r1hpc.config import ConfigError
from r1hpc.launch.allocator import reexec_under_tcmalloc
from r1hpc.launch.cli import add_launch_parser, run_launch
from r1hpc.model.mcore_compat import CheckpointCorruptError, CheckpointVersionError
from r1hpc.pipeline.cli import add_pipeline_parser, add_pipeline_report_parser, run_pipeline, run_pipeline_report
from r1hpc.run_config import load_run_config


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


def _config_command(sub, name: str, help: str) -> argparse.ArgumentParser:
    p = sub.add_parser(name, help=help)
    _add_config_args(p)
    return p


def _cfg(args, *extra: str):
    return load_run_config(args.config, [*extra, *args.overrides])


# ---------------------------------------------------------------------- one function pair per command
def _info_parser(sub) -> None:
    sub.add_parser("info", help="versions, devices and what the CPU compatibility layer patched")


def _info(args) -> int:
    from r1hpc.info import print_info

    print_info()
    return 0


def _pretrain_parser(sub) -> None:
    _config_command(sub, "pretrain", "train (or reuse) the recipe's weak base model only")


def _pretrain(args) -> int:
    from r1hpc.train.pretrain import run_pretrain

    run_pretrain(_cfg(args))
    return 0


def _sft_parser(sub) -> None:
    _config_command(sub, "sft", "supervised fine-tuning on sft.data JSONL (cold start, rejection sampling SFT, "
                    "distillation); docs/sft.md")


def _sft(args) -> int:
    from r1hpc.data.jsonl import DatasetError
    from r1hpc.train.sft import run_sft

    try:
        run_sft(_cfg(args))
    except DatasetError as e:
        print(f"r1hpc: bad SFT data: {e}", file=sys.stderr)
        return 2
    return 0


def _cold_start_parser(sub) -> None:
    p = _config_command(sub, "cold-start", "write cold-start SFT data: clean worked solutions of the training "
                        "split in R1's |special_token|reasoning|special_token|summary form")
    p.add_argument("--out", required=True, help="JSONL file to write (a .provenance.json is written beside it)")
    p.add_argument("--n", type=int, required=True, help="number of examples")


def _cold_start(args) -> int:
    from r1hpc.data.cold_start import build_cold_start

    path = build_cold_start(_cfg(args), args.n, args.out)
    print(f"r1hpc: {args.n} cold-start examples in {path}")
    return 0


def _train_parser(sub) -> None:
    p = _config_command(sub, "train", "GRPO from the recipe's base (R1-Zero: pretrain/reuse a base, evaluate, "
                        "GRPO, evaluate)")
    p.add_argument("--resume", metavar="auto|none|PATH",
                   help="sets checkpoint.resume: auto = the newest complete checkpoint (docs/checkpointing.md)")


def _train(args) -> int:
    from r1hpc.checkpoint.preemption import catch_signals_early

    catch_signals_early()
    from r1hpc.train.trainer import Trainer

    overrides = list(args.overrides) + ([f"checkpoint.resume={args.resume}"] if args.resume else [])
    Trainer(load_run_config(args.config, overrides)).run()
    return 0


def _rollout_worker_parser(sub) -> None:
    p = _config_command(sub, "rollout-worker", "a rollout worker of a disaggregated run: serve the trainer's "
                        "orders from its newest weights until it finishes (docs/disaggregated.md)")
    p.add_argument("--worker-id", help="default: w<SLURM_ARRAY_TASK_ID>, else <host>-<pid>")


def _rollout_worker(args) -> int:
    from r1hpc.disagg.worker import run_rollout_worker

    return run_rollout_worker(_cfg(args, "disagg.enabled=true"), args.worker_id)


def _convert_parser(sub) -> None:
    p = sub.add_parser("convert", help="Hugging Face safetensors (or a GGUF file) <-> megatron checkpoint "
                       "(docs/hf_weights.md)")
    p.add_argument("direction", choices=["hf-to-megatron", "megatron-to-hf"])
    p.add_argument("src", help="HF folder (config.json + safetensors), a .gguf file, or a converted megatron folder")
    p.add_argument("dst", help="output folder")
    p.add_argument("overrides", nargs="*", help="parallel.<key>=.., model.<key>=.., export_dtype=bf16")


def _convert(args) -> int:
    from r1hpc.model.hf.convert import run_convert

    result = run_convert(args.direction, args.src, args.dst, args.overrides)
    print(f"r1hpc: converted {args.src} -> {args.dst} ({result['family']})")
    return 0


def _evaluate_parser(sub) -> None:
    p = _config_command(sub, "evaluate", "pass@1 over k samples, cons@k, pass@k of the recipe's base (or --weights) "
                        "on GSM8K, MATH-500 and synthetic tasks (eval.sets); writes a results table")
    p.add_argument("--out", required=True, help="folder for results.json, results.md and samples.jsonl")
    p.add_argument("--weights", help="megatron weights to load (default: <pretrain.base_dir>/weights; "
                   "a GRPO checkpoint, or its checkpoints/ folder for the latest)")
    p.add_argument("--shard", default="0/1", help="i/n: one job-array task (problems i, i+n, ... of every set); "
                   "`r1hpc merge <out>` then writes the results")


def _evaluate(args) -> int:
    from r1hpc.eval.benchmarks import run_benchmarks
    from r1hpc.eval.shards import parse_shard

    shard = parse_shard(args.shard)
    run_benchmarks(_cfg(args), args.out, args.weights, shard)
    print(f"r1hpc: results in {args.out}/results.md" if shard[1] == 1 else
          f"r1hpc: shard {args.shard} in {args.out}; `r1hpc merge {args.out}` writes the results")
    return 0


def _report_parser(sub) -> None:
    p = sub.add_parser("report", help="HTML page + PNG plots of a run directory (learning curves, aha-moment monitor)")
    p.add_argument("run_dir", help="a run directory, e.g. runs/tiny_r1zero")
    p.add_argument("--out", help="where to write (default: <run_dir>/report)")


def _report(args) -> int:
    from r1hpc.monitor.report import build_report

    try:
        build_report(args.run_dir, args.out)
    except FileNotFoundError as e:
        print(f"r1hpc: {e}", file=sys.stderr)
        return 2
    return 0


def _shard_parser(kind: str, what: str, sub) -> None:
    p = _config_command(sub, kind, f"{what} for one shard of the problems (a job-array task); see r1hpc merge")
    p.add_argument("--out", required=True, help="directory for the shard files")
    p.add_argument("--shard", default="0/1", help="i/n: this task takes problems i, i+n, ... (default 0/1)")
    p.add_argument("--weights", help="megatron checkpoint to load (default: the recipe's base)")


def _shard(args) -> int:
    from r1hpc.eval.shards import parse_shard, run_shard

    print(run_shard(_cfg(args), args.command, parse_shard(args.shard), args.out, args.weights))
    return 0


def _merge_parser(sub) -> None:
    sub.add_parser("merge", help="join the shard files of an eval/rollout/evaluate array").add_argument("out")


def _merge(args) -> int:
    import json

    from r1hpc.eval.shards import merge

    result = merge(args.out)
    print(json.dumps({k: v for k, v in result.items() if k != "records"}, indent=1))
    return 0


def _reject_parser(sub) -> None:
    p = _config_command(sub, "reject", "rejection sampling: the correct, readable samples of a merged rollout "
                        "as an SFT JSONL dataset with provenance (docs/rejection.md)")
    p.add_argument("--samples", required=True, help="rollout directory holding merged.json (r1hpc rollout + merge)")
    p.add_argument("--out", required=True, help="the dataset, e.g. data/sft.jsonl (its counts beside it: "
                   "<name>.provenance.json)")


def _reject(args) -> int:
    from r1hpc.data.rejection import format_stats, run_rejection

    try:
        stats = run_rejection(_cfg(args), args.samples, args.out)
    except (FileNotFoundError, ValueError) as e:
        print(f"r1hpc reject: {e}", file=sys.stderr)
        return 2
    print(f"r1hpc reject: {format_stats(stats)} -> {args.out}")
    return 0


# The commands, in the order `r1hpc --help` lists them: name -> (adds its sub-parser to the
# sub-parsers, runs it and returns the exit code). Heavy modules are imported by the command itself.
COMMANDS: dict[str, tuple[Callable[..., None], Callable[[argparse.Namespace], int]]] = {
    "info": (_info_parser, _info),
    "pretrain": (_pretrain_parser, _pretrain),
    "sft": (_sft_parser, _sft),
    "cold-start": (_cold_start_parser, _cold_start),
    "train": (_train_parser, _train),
    "rollout-worker": (_rollout_worker_parser, _rollout_worker),
    "convert": (_convert_parser, _convert),
    "evaluate": (_evaluate_parser, _evaluate),
    "report": (_report_parser, _report),
    "eval": (partial(_shard_parser, "eval", "held-out pass@1"), _shard),
    "rollout": (partial(_shard_parser, "rollout", "samples with rewards"), _shard),
    "merge": (_merge_parser, _merge),
    "reject": (_reject_parser, _reject),
    "launch": (add_launch_parser, run_launch),
    "pipeline": (add_pipeline_parser, run_pipeline),
    "pipeline-report": (add_pipeline_report_parser, run_pipeline_report),
}

# what a user can fix: one line and exit code 2 instead of a traceback (the first class that matches)
_USER_ERRORS = {ConfigError: "config error", ResumeError: "cannot resume",
                CheckpointVersionError: "cannot load a checkpoint", CheckpointCorruptError: "cannot load a checkpoint",
                CheckpointWriteError: "cannot save a checkpoint"}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="r1hpc", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for add_parser, _ in COMMANDS.values():
        add_parser(sub)
    return parser


# commands that train or decode on the host: run under tcmalloc (r1hpc.launch.allocator)
_COMPUTE_COMMANDS = ("pretrain", "sft", "cold-start", "train", "rollout-worker", "evaluate", "eval", "rollout")


def main(argv: list[str] | None = None) -> int:
    _quiet_known_warnings()
    args = build_parser().parse_args(argv)
    try:
        if argv is None and args.command in _COMPUTE_COMMANDS:  # a program run, not a call from Python
            reexec_under_tcmalloc(sys.argv[1:])
        return COMMANDS[args.command][1](args)
    except tuple(_USER_ERRORS) as e:
        what = next(w for cls, w in _USER_ERRORS.items() if isinstance(e, cls))
        print(f"r1hpc: {what}: {e}", file=sys.stderr)
        return 2

if __name__ == "__main__":
    sys.exit(main())
