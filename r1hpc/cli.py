"""The ``r1hpc`` command: one entry point, one sub-command per job."""
from __future__ import annotations

import argparse
import sys

from r1hpc.checkpoint.compat import ResumeError
from r1hpc.config import ConfigError


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="YAML recipe, e.g. configs/tiny_r1zero.yaml")
    p.add_argument("overrides", nargs="*", help="section.key=value overrides")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="r1hpc", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("info", help="versions, devices and what the CPU compatibility layer patched")
    train = sub.add_parser("train", help="R1-Zero: pretrain/reuse a base, evaluate, GRPO, evaluate")
    _add_config_args(train)
    train.add_argument("--resume", metavar="auto|none|PATH",
                       help="sets checkpoint.resume: auto = the newest complete checkpoint (docs/checkpointing.md)")
    args = parser.parse_args(argv)
    try:
        if args.command == "info":
            from r1hpc.info import print_info

            print_info()
            return 0
        if args.command == "train":
            from r1hpc.config import load_config
            from r1hpc.train.r1zero import run_r1zero

            overrides = list(args.overrides) + ([f"checkpoint.resume={args.resume}"] if args.resume else [])
            run_r1zero(load_config(args.config, overrides))
            return 0
    except ConfigError as e:
        print(f"r1hpc: config error: {e}", file=sys.stderr)
        return 2
    except ResumeError as e:
        print(f"r1hpc: cannot resume: {e}", file=sys.stderr)
        return 2
    return 1


if __name__ == "__main__":
    sys.exit(main())
