"""The ``r1hpc`` command: one entry point, one sub-command per job."""
from __future__ import annotations

import argparse
import sys

from r1hpc.config import ConfigError


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="YAML recipe, e.g. configs/tiny_r1zero.yaml")
    p.add_argument("overrides", nargs="*", help="section.key=value overrides")


def _pretrain(cfg) -> None:
    """The base alone, in the directory ``r1hpc train`` would reuse (pretrain.base_dir or <run>/base)."""
    from pathlib import Path

    from r1hpc.distributed import destroy_distributed, init_distributed
    from r1hpc.train.pretrain import pretrain

    env = init_distributed(cfg.parallel, cfg.model, seed=cfg.run.seed)
    base_dir = Path(cfg.pretrain.base_dir) if cfg.pretrain.base_dir else Path(cfg.run.output_dir) / cfg.run.name / "base"
    meta = pretrain(cfg, cfg.parallel, base_dir, log=print if env.rank == 0 else (lambda *a, **k: None))
    if env.rank == 0:
        print(f"[pretrain] base in {base_dir}: final loss {meta['final_loss']}")
    destroy_distributed()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="r1hpc", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("info", help="versions, devices and what the CPU compatibility layer patched")
    _add_config_args(sub.add_parser("train", help="R1-Zero: pretrain/reuse a base, evaluate, GRPO, evaluate"))
    _add_config_args(sub.add_parser("pretrain", help="supervised next-token training of the base on the corpus"))
    for kind, what in (("eval", "held-out pass@1"), ("rollout", "samples with rewards")):
        p = sub.add_parser(kind, help=f"{what} for one shard of the problems (a job-array task); see r1hpc merge")
        _add_config_args(p)
        p.add_argument("--out", required=True, help="directory for the shard files")
        p.add_argument("--shard", default="0/1", help="i/n: this task takes problems i, i+n, ... (default 0/1)")
        p.add_argument("--weights", help="megatron checkpoint to load (default: the recipe's base)")
    sub.add_parser("merge", help="join the shard files of an eval/rollout array").add_argument("out")
    from r1hpc.launch.cli import add_launch_parser

    add_launch_parser(sub)
    args = parser.parse_args(argv)
    try:
        if args.command == "info":
            from r1hpc.info import print_info

            print_info()
            return 0
        if args.command == "train":
            from r1hpc.config import load_config
            from r1hpc.train.r1zero import run_r1zero

            run_r1zero(load_config(args.config, args.overrides))
            return 0
        if args.command == "pretrain":
            from r1hpc.config import load_config

            _pretrain(load_config(args.config, args.overrides))
            return 0
        if args.command in ("eval", "rollout"):
            from r1hpc.config import load_config
            from r1hpc.eval.shards import parse_shard, run_shard

            shard = parse_shard(args.shard)
            print(run_shard(load_config(args.config, args.overrides), args.command, shard, args.out, args.weights))
            return 0
        if args.command == "merge":
            import json

            from r1hpc.eval.shards import merge

            result = merge(args.out)
            print(json.dumps({k: v for k, v in result.items() if k != "records"}, indent=1))
            return 0
        if args.command == "launch":
            from r1hpc.launch.cli import run_launch

            return run_launch(args)
    except ConfigError as e:
        print(f"r1hpc: config error: {e}", file=sys.stderr)
        return 2
    return 1


if __name__ == "__main__":
    sys.exit(main())
