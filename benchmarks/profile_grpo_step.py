"""Where r1hpc's GRPO step time goes on the bench_vs_trl workload: torch.profiler operator tables
(by operator, and by operator and input shapes) of every step after the first, from ``r1hpc train``
run in this process with the same overrides as ``benchmarks/bench_vs_trl.py``.

    python benchmarks/bench_vs_trl.py ...            # once: converts SmolLM2 into --work
    python benchmarks/profile_grpo_step.py --work runs/bench_vs_trl --out runs/profile_grpo_step

Writes ``ops_step<N>.txt`` and ``ops_by_shape_step<N>.txt`` into ``--out`` and prints each step's
timing metrics. Runs under tcmalloc where installed, as ``r1hpc train`` does
(r1hpc.launch.allocator). Profiling adds per-operator overhead: read the tables for proportions, not
seconds.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_vs_trl import RECIPE, THREADS, prompt_file, r1hpc_overrides  # noqa: E402


def profiled_train_step(original, out: Path):
    """GRPOTrainer.train_step, profiled from the second step on (the first is warm-up)."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    def train_step(self):
        step = self.step + 1  # 1-based, as metrics.jsonl counts
        if step == 1:
            return original(self)
        with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
            metrics = original(self)
        table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=40)
        by_shape = prof.key_averages(group_by_input_shape=True).table(sort_by="self_cpu_time_total", row_limit=60)
        (out / f"ops_step{step}.txt").write_text(table)
        (out / f"ops_by_shape_step{step}.txt").write_text(by_shape)
        print({k: round(v, 3) for k, v in metrics.items() if k.startswith("timing/")}, flush=True)
        return metrics

    torch.set_num_threads(THREADS)
    return train_step


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work", default="runs/bench_vs_trl", help="bench_vs_trl.py's --work (the converted model)")
    p.add_argument("--out", default="runs/profile_grpo_step")
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--prompts", type=int, default=1)
    p.add_argument("--group", type=int, default=4)
    p.add_argument("--max-new-tokens", type=int, default=16)
    p.add_argument("--micro-batch", type=int, default=4)
    p.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32")
    p.add_argument("--r1hpc-set", action="append", default=[], metavar="KEY=VALUE", help="one more recipe override")
    args = p.parse_args()
    from r1hpc.launch.allocator import reexec_under_tcmalloc

    reexec_under_tcmalloc(sys.argv[1:], program=[sys.executable, str(Path(__file__).resolve())])  # as r1hpc train runs
    work, out = Path(args.work).resolve(), Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    ckpt = work / "smollm2_135m_instruct"
    if not (ckpt / "convert.json").is_file():
        raise SystemExit(f"{ckpt} is not a converted checkpoint: run benchmarks/bench_vs_trl.py --work {work} first")
    from r1hpc import cli
    from r1hpc.train import grpo

    grpo.GRPOTrainer.train_step = profiled_train_step(grpo.GRPOTrainer.train_step, out)
    overrides = r1hpc_overrides(args, out, ckpt, prompt_file(work, args.prompts * args.steps))
    cli.main(["train", str(RECIPE), *overrides])


if __name__ == "__main__":
    main()
